"""The aimlmusic command in process (CliRunner), against the embedded or a served emulator."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from mutagen.id3 import ID3

from aimlmusic.catalog import CatalogEvent, RunProgress, SongState
from aimlmusic.cli import main
from aimlmusic.cli._app import _adopt_pairs, cli
from aimlmusic.cli._display import LiveDisplay, PlainDisplay
from aimlmusic.emulator import TEST_API_KEY, Emulator, EmulatorConfig, serving

LYRICS = "[Verse]\nNeon rain on empty streets\n[Chorus]\nWe keep on walking home"
NO_CREDIT_KEY = "broke-key"


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    runner = CliRunner()
    base_env = {"AIML_API_KEY": "", "AIMLAPI_API_KEY": "", "AIMLMUSIC_BASE_URL": ""}
    return runner.invoke(cli, list(args), env={**base_env, **(env or {})}, catch_exceptions=False)


def status_of(*args: str, monkeypatch: pytest.MonkeyPatch) -> int:
    """The exit status main() returns (what the console script exits with)."""
    for name in ("AIML_API_KEY", "AIMLAPI_API_KEY", "AIMLMUSIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return main(list(args))


def write_catalog(path: Path, count: int) -> Path:
    rows = [
        {
            "key": f"song-{i}",
            "title": f"Track {i}",
            "prompt": f"Synthwave night drive number {i}, warm pads",
            "lyrics": LYRICS,
            "format": ("mp3", "wav")[i % 2],
        }
        for i in range(count)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def served() -> Iterator[tuple[Emulator, str]]:
    """An emulator on a loopback socket that knows a no-credit key too."""
    emulator = Emulator(
        EmulatorConfig(
            time_scale=1000,
            audio_seconds=0.3,
            api_keys={TEST_API_KEY, NO_CREDIT_KEY},
            no_credit_keys={NO_CREDIT_KEY},
        )
    )
    with serving(emulator) as base_url:
        yield emulator, base_url


def test_demo_writes_playable_files_and_a_manifest(tmp_path: Path) -> None:
    """`aimlmusic demo` generates the bundled catalog into real files without a key."""
    out = tmp_path / "demo"
    result = invoke("demo", "-o", str(out), "--time-scale", "1000")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 12
    assert {r["status"] for r in records} == {"downloaded"}
    assert {Path(str(r["file"])).suffix for r in records} == {".mp3", ".wav"}
    assert f"Manifest: {out / 'manifest.jsonl'}" in result.output
    assert "Downloaded 12 of 12 songs" in result.output
    mp3 = next(out / str(r["file"]) for r in records if str(r["file"]).endswith(".mp3"))
    assert ID3(mp3)["TIT2"].text


def test_batch_with_the_embedded_emulator_then_resume(tmp_path: Path) -> None:
    """batch --emulator prints one line per step when not on a terminal; a rerun has nothing
    left to do and exits 0."""
    catalog = write_catalog(tmp_path / "songs.jsonl", 3)
    out = tmp_path / "out"
    result = invoke("batch", str(catalog), "-o", str(out), "--emulator", "--time-scale", "1000")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "3 songs in the catalog: 3 to do, 0 already downloaded"
    assert any(line.endswith("downloaded song-0 (Track 0.mp3)") for line in lines)
    assert sum("submitting" in line for line in lines) == 3
    again = invoke("batch", str(catalog), "-o", str(out), "--emulator", "--time-scale", "1000")
    assert again.exit_code == 0
    assert again.output.splitlines()[0] == "3 songs in the catalog: 0 to do, 3 already downloaded"


def test_an_invalid_catalog_exits_2_listing_every_problem(tmp_path: Path) -> None:
    """Every bad row is printed with its line; nothing is created or sent."""
    catalog = tmp_path / "songs.csv"
    catalog.write_text(
        "key,prompt,lyrics,format\n"
        'a,"A fine prompt for a song","' + LYRICS + '",ogg\n'
        'b,short,"' + LYRICS + '",mp3\n'
        'a,"A fine prompt for a song","' + LYRICS + '",mp3\n',
        encoding="utf-8",
    )
    out = tmp_path / "out"
    result = invoke("batch", str(catalog), "-o", str(out), "--emulator")
    assert result.exit_code == 2
    assert "nothing was sent" in result.stderr
    assert f"{catalog}:line 2: audio_setting.format: must be one of" in result.stderr
    assert f"{catalog}:line 6: prompt: must be 10-300 characters long" in result.stderr
    assert "duplicate key 'a' (first used on line 2)" in result.stderr
    assert not out.exists()


def test_failed_songs_exit_1_with_advice(
    tmp_path: Path, served: tuple[Emulator, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An account the API refuses (403, no credits) stops the batch with exit status 2 and
    one message naming the key's variable; the songs stay pending for the next run."""
    _, base_url = served
    catalog = write_catalog(tmp_path / "songs.jsonl", 2)
    args = ["batch", str(catalog), "-o", str(tmp_path / "out"), "--base-url", base_url]
    result = invoke(*args, "--api-key", NO_CREDIT_KEY, "--time-scale", "1000")
    assert result.exit_code == 2
    assert "check AIML_API_KEY (or --api-key)" in result.output
    assert " failed: " not in result.output
    assert "sent again by rerunning" not in result.output
    ok = invoke(*args, "--time-scale", "1000", env={"AIML_API_KEY": TEST_API_KEY})
    assert ok.exit_code == 0, ok.output
    assert "Downloaded 2 of 2 songs" in ok.output


def test_generate_status_and_download(tmp_path: Path, served: tuple[Emulator, str]) -> None:
    """generate saves a tagged file; status and download work by generation id."""
    emulator, base_url = served
    target = tmp_path / "ballad.mp3"
    connection = ["--base-url", base_url, "--api-key", TEST_API_KEY, "--time-scale", "1000"]
    result = invoke(
        "generate", "-p", "Warm lo-fi ballad, soft piano", "-l", LYRICS, "-t", "Ballad",
        "-o", str(target), *connection,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert ID3(target)["TIT2"].text == ["Ballad"]
    (generation_id,) = emulator.jobs
    assert f"Generation id: {generation_id}" in result.output

    shown = invoke("status", generation_id, *connection)
    assert shown.exit_code == 0
    assert "status:  completed" in shown.output
    as_json = invoke("status", generation_id, "--json", *connection)
    assert json.loads(as_json.output)["id"] == generation_id

    copy = tmp_path / "copy.mp3"
    fetched = invoke("download", generation_id, str(copy), *connection)
    assert fetched.exit_code == 0
    assert copy.stat().st_size > 1000

    missing = invoke("status", "no-such-id", *connection)
    assert missing.exit_code == 1
    assert "HTTP 404" in missing.stderr


def test_generate_refuses_to_overwrite_before_sending(tmp_path: Path) -> None:
    """An existing output file stops generate with status 2 before anything is paid."""
    target = tmp_path / "song.mp3"
    target.write_bytes(b"keep me")
    result = invoke(
        "generate", "--emulator", "-p", "A fine prompt", "-l", LYRICS, "-o", str(target)
    )
    assert result.exit_code == 2
    assert "--overwrite" in result.output
    assert target.read_bytes() == b"keep me"


def test_generate_with_the_embedded_emulator(tmp_path: Path) -> None:
    """generate --emulator needs no key and writes a WAV as delivered."""
    target = tmp_path / "tune.wav"
    lyrics_file = tmp_path / "lyrics.txt"
    lyrics_file.write_text(LYRICS + "\r\n", encoding="utf-8")
    result = invoke(
        "generate", "--emulator", "--time-scale", "1000", "-p", "A calm ambient piece",
        "--lyrics-file", str(lyrics_file), "-f", "wav", "--sample-rate", "32000",
        "-o", str(target),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert target.read_bytes()[:4] == b"RIFF"
    assert "32000 Hz" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "-p", "A fine prompt", "--emulator"], "exactly one of --lyrics"),
        (["generate", "-p", "tiny", "-l", LYRICS, "--emulator"], "prompt: must be 10-300"),
        (["batch", "x.jsonl", "-o", "out", "--emulator", "--base-url", "http://x"], "cannot be"),
        (["batch", "x.jsonl", "-o", "out", "--emulator", "--adopt", "nokey"], "KEY=GENERATION_ID"),
        (["status", "some-id"], "AIML_API_KEY"),
        (["nonsense"], "No such command"),
    ],
)
def test_bad_usage_exits_2(
    args: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Usage and configuration errors give status 2 and say what is wrong."""
    assert status_of(*args, monkeypatch=monkeypatch) == 2
    captured = capsys.readouterr()
    assert message in captured.err + captured.out


def test_help_and_version(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--help and --version exit 0; `emulator --help` is the emulator's own help."""
    assert status_of("--version", monkeypatch=monkeypatch) == 0
    assert "aimlmusic, version" in capsys.readouterr().out
    assert status_of("--help", monkeypatch=monkeypatch) == 0
    assert "demo" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:  # argparse exits itself after printing help
        status_of("emulator", "--help", monkeypatch=monkeypatch)
    assert info.value.code == 0
    assert "--time-scale" in capsys.readouterr().out


def _event(kind: str, **progress: object) -> CatalogEvent:
    counts = dict.fromkeys(SongState, 0)
    counts.update(progress.pop("counts", {}))  # type: ignore[call-overload]
    snapshot = RunProgress(total=4, counts=counts, **progress)  # type: ignore[arg-type]
    return CatalogEvent(kind=kind, progress=snapshot, key="k1", state=SongState.DOWNLOADED)  # type: ignore[arg-type]


def test_live_display_shows_counts_credits_eta_and_throttling() -> None:
    """The live view renders the bar, every state's count, credits, ETA and THROTTLED."""
    import io

    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120, color_system=None)
    with LiveDisplay(console) as display:
        display(
            _event(
                "state",
                counts={SongState.DOWNLOADED: 2, SongState.SUBMITTED: 2},
                todo=4,
                done=2,
                elapsed=30.0,
                credits_used=250.0,
                throttled=True,
                throttled_responses=3,
            )
        )
    text = buffer.getvalue()
    assert "2/4 downloaded" in text
    assert "submitted 2" in text
    assert "downloaded 2" in text
    assert "credits used 250" in text
    assert "ETA 0:00:30" in text
    assert "THROTTLED" in text


def test_plain_display_survives_a_closed_pipe() -> None:
    """When the reader of stdout goes away, the display falls silent instead of failing."""

    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError

        def fileno(self) -> int:
            raise OSError("not a real file")

    display = PlainDisplay(ClosedPipe())
    display(_event("throttled"))
    assert display.closed
    display(_event("state"))  # no error


def test_plain_display_lines() -> None:
    """Plain lines: one per state change, with the downloaded count, and throttling notes."""
    stream = io.StringIO()
    display = PlainDisplay(stream)
    display(_event("state", counts={SongState.DOWNLOADED: 3}))
    display(_event("throttled"))
    display(_event("unthrottled"))
    display(_event("tick"))
    assert stream.getvalue().splitlines() == [
        "[3/4] downloaded k1",
        "throttled: the API asked us to slow down; pausing requests",
        "throttling over: requests resume",
    ]


def test_adopt_takes_a_key_holding_equals_and_can_be_run_again(
    tmp_path: Path, served: tuple[Emulator, str]
) -> None:
    """`--adopt KEY=ID` takes a key holding '=', and running the very same --adopt command
    again is no error: the song already carries that id."""
    emulator, base_url = served
    emulator.inject("error_after", route="submit", count=1)  # created, then a 5xx: ambiguous
    catalog = tmp_path / "songs.jsonl"
    row = {"key": "mix=final", "title": "Mix", "prompt": "Synthwave, warm analog pads",
           "lyrics": LYRICS, "format": "wav"}  # fmt: skip
    catalog.write_text(json.dumps(row) + "\n", encoding="utf-8")
    args = ["batch", str(catalog), "-o", str(tmp_path / "out"), "--base-url", base_url]
    args += ["--time-scale", "1000"]
    env = {"AIML_API_KEY": TEST_API_KEY}
    first = invoke(*args, env=env)
    assert first.exit_code == 1
    assert "1 ambiguous" in first.output
    (orphan,) = emulator.jobs
    for _ in range(2):
        result = invoke(*args, "--adopt", f"mix=final={orphan}", env=env)
        assert result.exit_code == 0, result.output
        assert "Downloaded 1 of 1 songs" in result.output
    assert emulator.stats().jobs_submitted == 1


def test_adopt_finds_the_key_when_the_id_holds_equals_signs_too(tmp_path: Path) -> None:
    """Ids are the API's and may hold '=' as keys may: the split is the one whose key is in
    the catalog, and a value two keys could claim is refused, naming them."""
    catalog = tmp_path / "songs.jsonl"
    rows = [{"key": key, "prompt": "Synthwave, warm analog pads", "lyrics": LYRICS}
            for key in ("a", "mix=final", "b", "b=c")]  # fmt: skip
    catalog.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    pairs = _adopt_pairs(["a=Zm9vYmFy=:minimax/music-1.5", "mix=final=x=y", "a2=dGVzdA=="], catalog)
    assert pairs == {"a": "Zm9vYmFy=:minimax/music-1.5", "mix=final": "x=y", "a2": "dGVzdA=="}
    with pytest.raises(click.BadParameter, match="'b', 'b=c'"):
        _adopt_pairs(["b=c=d"], catalog)


def test_command_hints_quote_paths_for_the_shell(
    tmp_path: Path, served: tuple[Emulator, str]
) -> None:
    """The command a message tells to run again is quoted for the shell, so it can be pasted
    as it is when a path holds spaces or quotes."""
    _, base_url = served
    folder = tmp_path / "it's my music"
    folder.mkdir()
    catalog = write_catalog(folder / "songs.jsonl", 1)
    out = folder / "out"
    args = ["batch", str(catalog), "-o", str(out), "--base-url", base_url]
    result = invoke(*args, "--api-key", NO_CREDIT_KEY, "--time-scale", "1000")
    assert result.exit_code == 2
    hint = f"aimlmusic batch {shlex.quote(str(catalog))} -o {shlex.quote(str(out))}"
    assert f"then run `{hint}` again" in " ".join(result.output.split())


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("a=gen-1\x1b[2Jx", "control character (U+001B)"),
        ("a=gen-\udcff", "lone surrogate"),
        ("a=gen 1\r\nx", "control character (U+000D)"),
    ],
)
def test_adopt_refuses_an_id_the_client_could_never_send(
    tmp_path: Path, value: str, problem: str
) -> None:
    """An --adopt id that could never be sent back to the API is a usage error naming
    --adopt and the problem (exit 2) before anything is made or sent."""
    catalog = write_catalog(tmp_path / "songs.jsonl", 1)
    out = tmp_path / "out"
    result = invoke("batch", str(catalog), "-o", str(out), "--emulator", "--adopt", value)
    assert result.exit_code == 2
    assert "--adopt" in result.stderr
    assert problem in result.stderr
    assert not out.exists()


def test_a_pasted_adopt_id_is_stripped_and_a_mistaken_adoption_corrected(
    tmp_path: Path, served: tuple[Emulator, str]
) -> None:
    """An --adopt id pasted with a CR or spaces around it is taken without them, and a song
    adopted with the wrong id (still waiting for it) takes the right one: one POST in all."""
    emulator, base_url = served
    emulator.inject("error_after", route="submit", count=1)  # created, then a 5xx: ambiguous
    catalog = write_catalog(tmp_path / "songs.jsonl", 1)
    out = tmp_path / "out"
    args = ["batch", str(catalog), "-o", str(out), "--base-url", base_url]
    args += ["--time-scale", "1000"]
    env = {"AIML_API_KEY": TEST_API_KEY}
    assert invoke(*args, env=env).exit_code == 1
    (orphan,) = emulator.jobs
    # A mistaken adoption, cut off by a short deadline: the song is left waiting for it.
    wrong = invoke(*args, "--adopt", "song-0=gen-wrong", "--deadline", "0.001", env=env)
    assert wrong.exit_code == 1, wrong.output
    with contextlib.closing(sqlite3.connect(out / "aimlmusic-journal.sqlite")) as db:
        state = db.execute("SELECT state, generation_id FROM songs").fetchone()
    assert state == ("submitted", "gen-wrong")
    result = invoke(*args, "--adopt", f"song-0= {orphan}\r\n", env=env)
    assert result.exit_code == 0, result.output
    assert "Downloaded 1 of 1 songs" in result.output
    assert emulator.stats().jobs_submitted == 1


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"[Verse]\nCaf\xe9 au lait, la la la\n", "is not valid UTF-8 (its line 2)"),
        (b"la " * 30_000, "is larger than 65536 bytes"),
    ],
)
def test_generate_refuses_a_lyrics_file_it_cannot_read(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    """A --lyrics-file that is not UTF-8, or too large, is a usage error naming
    --lyrics-file (exit 2) before anything is sent or written."""
    lyrics_file = tmp_path / "lyrics.txt"
    lyrics_file.write_bytes(content)
    target = tmp_path / "song.mp3"
    result = invoke(
        "generate", "--emulator", "-p", "Synthwave, warm analog pads",
        "--lyrics-file", str(lyrics_file), "-o", str(target),
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--lyrics-file" in result.stderr
    assert problem in result.stderr
    assert "nothing was sent" in result.stderr
    assert not target.exists()


def test_generate_reads_lyrics_from_a_pipe_and_any_line_ends(tmp_path: Path) -> None:
    """--lyrics-file may name a pipe (as <(...) does), and old Macs' lone \r line ends
    become \n as Windows' do: the song is made with the lyrics as written."""
    fifo = tmp_path / "lyrics.fifo"
    os.mkfifo(fifo)

    def write() -> None:
        with fifo.open("wb") as pipe:
            pipe.write(b"[Verse]\rNeon lights on the water\r\n[Chorus]\rHold on\r")

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    target = tmp_path / "song.mp3"
    result = invoke(
        "generate", "--emulator", "-p", "Synthwave, warm analog pads",
        "--lyrics-file", str(fifo), "-o", str(target),
    )  # fmt: skip
    writer.join(timeout=30)
    assert result.exit_code == 0, result.output + result.stderr
    (lyrics,) = ID3(target).getall("USLT")
    assert lyrics.text == "[Verse]\nNeon lights on the water\n[Chorus]\nHold on"


def test_a_journal_whose_content_cannot_be_parsed_exits_2(tmp_path: Path) -> None:
    """batch on a journal SQLite reads but whose content cannot be parsed says it may be
    corrupt (exit 2, no traceback)."""
    catalog = write_catalog(tmp_path / "songs.jsonl", 1)
    out = tmp_path / "out"
    args = ("batch", str(catalog), "-o", str(out), "--emulator", "--time-scale", "1000")
    assert invoke(*args).exit_code == 0
    with contextlib.closing(sqlite3.connect(out / "aimlmusic-journal.sqlite")) as db:
        db.execute("""UPDATE songs SET request_json = '{"prompt": 1'""")
        db.commit()
    result = invoke(*args)
    assert result.exit_code == 2
    assert "the entry of song 'song-0' cannot be read" in result.stderr
    assert "may be corrupt" in result.stderr
