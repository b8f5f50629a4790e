"""Attacks on the ``aimlmusic`` command (issue-style: what a new user or a hostile server
does), each against a real socket: hostile text reaching the terminal, paying before the
output can be written, losing a paid song to Ctrl-C, files made private, broken tags."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from aimlmusic.cli._app import cli
from aimlmusic.cli._display import PlainDisplay
from aimlmusic.emulator import TEST_API_KEY, Emulator, EmulatorConfig, Uniform, serving
from aimlmusic.emulator._audio import AudioRenderer, AudioSpec

from ._hostile_server import HostileServer, hostile_server

PROMPT = "Warm lo-fi ballad with soft piano"
LYRICS = "[Verse]\nStreetlights flicker\n[Chorus]\nHome again"
#: A generation id that would retitle the terminal window and ring its bell if printed raw.
HOSTILE_ID = "gen-\x1b]0;owned\x07-\x9b2J-1"
#: Real seconds a child process may take before the test gives up on it.
PROCESS_TIMEOUT = 60.0
#: API seconds per real second for a `generate` whose song the server completes at once: the
#: client's first poll comes in about half a second rather than six. The song's deadline
#: (600 API seconds) scales too, to a minute, as long as PROCESS_TIMEOUT.
FAST_CLOCK = ("--time-scale", "10")


def mp3_bytes() -> bytes:
    return AudioRenderer(0.5).render(PROMPT, AudioSpec("mp3", 44100, 128000)).data


def invoke(*args: str) -> Result:
    env = {"AIML_API_KEY": "sk-test-key", "AIMLAPI_API_KEY": "", "AIMLMUSIC_BASE_URL": ""}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def generate_args(base_url: str, output: Path, *extra: str) -> list[str]:
    return ["generate", "-p", PROMPT, "-l", LYRICS, "-o", str(output), "--base-url", base_url,
            *extra]  # fmt: skip


def completing_api(generation_id: str, audio: bytes) -> Any:
    """An API whose one song completes at once; its audio is served on the same socket."""
    server: dict[str, HostileServer] = {}

    def answer(method: str, path: str, body: bytes) -> tuple[int, Any]:
        if path.startswith("/audio"):
            return 200, audio
        if method == "POST":
            return 200, {"id": generation_id, "status": "queued"}
        url = f"{server['self'].base_url}/audio.mp3"
        return 200, {"id": generation_id, "status": "completed", "audio_file": {"url": url}}

    return answer, server


@pytest.fixture
def hostile_id_api() -> Iterator[HostileServer]:
    answer, holder = completing_api(HOSTILE_ID, mp3_bytes())
    with hostile_server(answer) as server:
        holder["self"] = server
        yield server


def assert_no_raw_controls(text: str) -> None:
    raw = [c for c in text if c in "\x1b\x07\x9b"]
    assert not raw, f"raw terminal controls reached the output: {text!r}"


def test_terminal_safe_escapes_c0_c1_and_lone_surrogates() -> None:
    """ESC, BEL, C1 controls and lone surrogates become visible escapes; text stays."""
    from aimlmusic.cli._display import terminal_safe

    assert terminal_safe("a\x1b[31mb\x07c\x9bd\ud800e") == "a\\x1b[31mb\\x07c\\x9bd\\ud800e"
    assert terminal_safe("héllo, wörld") == "héllo, wörld"
    assert terminal_safe("two\nlines", keep_newlines=True) == "two\nlines"
    assert terminal_safe("two\nlines") == "two\\x0alines"


def test_generate_escapes_a_hostile_generation_id(
    tmp_path: Path, hostile_id_api: HostileServer
) -> None:
    """A generation id carrying ESC/BEL/CSI never reaches the terminal raw, from `generate`
    (which cannot poll such an id: it fails, once) or from `status`."""
    result = invoke(*generate_args(hostile_id_api.base_url, tmp_path / "song.mp3"))
    assert result.exit_code == 1, result.output
    assert hostile_id_api.posts == 1
    assert_no_raw_controls(result.output)
    assert "Traceback" not in result.output
    result = invoke("status", HOSTILE_ID, "--base-url", hostile_id_api.base_url)
    assert result.exit_code != 0
    assert_no_raw_controls(result.output)


def test_api_error_message_with_escapes_is_escaped(tmp_path: Path) -> None:
    """An API error message carrying terminal escapes reaches stderr escaped, on one line."""

    def answer(method: str, path: str, body: bytes) -> tuple[int, Any]:
        return 400, {"message": "bad\x1b[2J\x1b]0;owned\x07 request", "statusCode": 400}

    with hostile_server(answer) as server:
        result = invoke(*generate_args(server.base_url, tmp_path / "song.mp3"))
    assert result.exit_code == 1
    assert_no_raw_controls(result.output)
    assert "bad\\x1b[2J" in result.output


def test_plain_batch_lines_escape_server_text() -> None:
    """--plain lines carry server text (ids, error messages) escaped."""
    from aimlmusic.catalog import CatalogEvent, RunProgress, SongState

    lines: list[str] = []

    class Sink:
        def write(self, text: str) -> None:
            lines.append(text)

        def flush(self) -> None:
            return None

    display = PlainDisplay(Sink())  # type: ignore[arg-type]
    display(
        CatalogEvent(
            kind="state",
            progress=RunProgress(total=1, counts={}),
            key="k",
            title="t",
            state=SongState.SUBMITTED,
            message=HOSTILE_ID,
        )
    )
    assert_no_raw_controls("".join(lines))
    assert "\\x1b]0;owned\\x07" in "".join(lines)


@pytest.mark.parametrize(
    "case",
    ["existing directory", "parent is a file", "under /proc", "read-only parent"],
)
def test_generate_checks_the_output_path_before_paying(tmp_path: Path, case: str) -> None:
    """`generate` refuses an output it could not write (exit 2, one line) before any POST."""
    if case == "existing directory":
        output = tmp_path / "adir"
        output.mkdir()
    elif case == "parent is a file":
        (tmp_path / "afile").write_text("x")
        output = tmp_path / "afile" / "sub" / "song.mp3"
    elif case == "under /proc":
        output = Path("/proc/aimlmusic-no-such/song.mp3")
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only directories")
        parent = tmp_path / "ro"
        parent.mkdir()
        parent.chmod(0o555)
        output = parent / "song.mp3"

    def answer(method: str, path: str, body: bytes) -> tuple[int, Any]:
        return 200, {"id": "gen-1", "status": "queued"}

    with hostile_server(answer) as server:
        result = invoke(*generate_args(server.base_url, output))
    assert server.posts == 0
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert str(output.name) in result.output or str(output) in result.output


@pytest.fixture
def plain_api() -> Iterator[HostileServer]:
    answer, holder = completing_api("gen-1", mp3_bytes())
    with hostile_server(answer) as server:
        holder["self"] = server
        yield server


def test_output_files_get_the_umask_mode(tmp_path: Path, plain_api: HostileServer) -> None:
    """Songs and manifests are created 0666 & ~umask (here 0644), not 0600."""
    old = os.umask(0o022)
    try:
        result = invoke(*generate_args(plain_api.base_url, tmp_path / "song.mp3", *FAST_CLOCK))
        assert result.exit_code == 0, result.output
        demo = invoke("demo", "-o", str(tmp_path / "demo"), "--time-scale", "2000", "--plain")
        assert demo.exit_code == 0, demo.output
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "song.mp3").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "demo" / "manifest.jsonl").stat().st_mode) == 0o644
    for song in (tmp_path / "demo").glob("*.wav"):
        assert stat.S_IMODE(song.stat().st_mode) == 0o644


def test_generate_keeps_a_song_whose_tags_mutagen_cannot_read(tmp_path: Path) -> None:
    """An MP3 with an ID3v2.9 header is saved untagged with a warning; exit 0, no traceback."""
    hostile = b"ID3\x09\x00\x00\x00\x00\x00\x10" + b"\x00" * 16 + mp3_bytes()
    answer, holder = completing_api("gen-1", hostile)
    with hostile_server(answer) as server:
        holder["self"] = server
        result = invoke(*generate_args(server.base_url, tmp_path / "song.mp3", *FAST_CLOCK))
    assert result.exit_code == 0, result.output
    assert "warning: cannot tag song.mp3" in result.output
    assert (tmp_path / "song.mp3").read_bytes() == hostile


@pytest.mark.slow
def test_ctrl_c_after_submitting_prints_the_id_and_how_to_fetch_it(tmp_path: Path) -> None:
    """Ctrl-C while `generate` waits for a submitted song prints its id and the exact
    `aimlmusic status` / `aimlmusic download` commands, never "run the same command again"."""
    # The song lasts ten minutes of API time (a minute at 10x): the process is surely
    # still waiting when it is interrupted.
    emulator = Emulator(
        EmulatorConfig(time_scale=10, audio_seconds=0.3, durations=Uniform(600.0, 600.0))
    )
    output = tmp_path / "song.mp3"
    with serving(emulator) as base_url:
        env = {**os.environ, "AIML_API_KEY": TEST_API_KEY, "PYTHONUNBUFFERED": "1"}
        args = generate_args(base_url, output, "--time-scale", "10")
        process = subprocess.Popen(
            [sys.executable, "-m", "aimlmusic.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        # Interrupt once the client has polled the song: it then surely holds the id. (The
        # server counting the submission is not enough: its answer may still be on its way,
        # and Ctrl-C then rightly says "stopped while submitting".)
        deadline = time.monotonic() + PROCESS_TIMEOUT
        while emulator.stats().requests.get("poll", 0) == 0 and process.poll() is None:
            assert time.monotonic() < deadline, "the song was never polled"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=PROCESS_TIMEOUT)
        (job,) = emulator.jobs.values()
    assert process.returncode == 130, out + err
    assert "Traceback" not in err
    assert "run the same command again" not in err
    assert f"aimlmusic status {job.id}" in err.replace("\n", "")
    assert f"aimlmusic download {job.id} {output}" in err.replace("\n", "")
    assert emulator.stats().jobs_submitted == 1


def test_ctrl_c_before_anything_was_sent_says_nothing_was_charged() -> None:
    """The advice after an interruption depends on how far `generate` got."""
    from aimlmusic.cli._app import _GenerateProgress

    progress = _GenerateProgress(Path("song.mp3"))
    assert "nothing was charged" in progress.interrupted_advice()
    progress.sending = True
    assert "may or may not" in progress.interrupted_advice()
    progress.generation_id = "gen 1"
    advice = progress.interrupted_advice()
    assert "aimlmusic download 'gen 1' song.mp3" in advice
    assert json.dumps(advice)  # one plain string


def write_catalog(path: Path, count: int) -> Path:
    rows = [
        {"key": f"song-{i:02d}", "prompt": f"{PROMPT} {i}", "lyrics": LYRICS} for i in range(count)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_batch_with_a_wrong_key_stops_at_once_and_says_how_to_set_it(tmp_path: Path) -> None:
    """401 on every POST: exit 2, one message naming AIML_API_KEY / --api-key, at most the
    songs in flight sent (not all 30), nothing printed says rerunning resends."""

    def answer(method: str, path: str, body: bytes) -> tuple[int, Any]:
        return 401, {"message": "Unauthorized", "statusCode": 401}

    catalog = write_catalog(tmp_path / "songs.jsonl", 30)
    with hostile_server(answer) as server:
        result = invoke(
            "batch", str(catalog), "-o", str(tmp_path / "out"), "--base-url", server.base_url,
            "--max-in-flight", "3", "--plain",
        )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert server.posts <= 3
    assert "check AIML_API_KEY (or --api-key)" in result.output
    assert "sent again by rerunning" not in result.output
    assert "Traceback" not in result.output


def test_batch_against_an_unreachable_api_stops_fast(tmp_path: Path) -> None:
    """Nothing listening: exit 1 within seconds (not the 10-minute song deadline), one
    message, every song still pending (no --resubmit-ambiguous advice)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        base_url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    catalog = write_catalog(tmp_path / "songs.jsonl", 10)
    started = time.monotonic()
    result = invoke(
        "batch", str(catalog), "-o", str(tmp_path / "out"), "--base-url", base_url, "--plain"
    )
    assert time.monotonic() - started < PROCESS_TIMEOUT
    assert result.exit_code == 1, result.output
    assert "could not be reached" in result.output
    assert "ambiguous" not in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("case", ["corrupt journal", "parent is a file", "under /proc"])
def test_batch_on_a_broken_output_directory_is_one_line_exit_2(tmp_path: Path, case: str) -> None:
    """A corrupt journal or an impossible output directory: exit 2, one error line, no
    traceback, nothing sent."""
    if case == "corrupt journal":
        out = tmp_path / "out"
        out.mkdir()
        (out / "aimlmusic-journal.sqlite").write_bytes(b"this is not SQLite" * 300)
        expected = "not a usable journal"
    elif case == "parent is a file":
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "sub"
        expected = "cannot use"
    else:
        out = Path("/proc/aimlmusic-no-such/out")
        expected = "cannot use"

    def answer(method: str, path: str, body: bytes) -> tuple[int, Any]:
        return 200, {"id": "gen-1", "status": "queued"}

    catalog = write_catalog(tmp_path / "songs.jsonl", 3)
    with hostile_server(answer) as server:
        result = invoke(
            "batch", str(catalog), "-o", str(out), "--base-url", server.base_url, "--plain"
        )
    assert result.exit_code == 2, result.output
    assert server.posts == 0
    assert expected in result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1


def test_batch_beside_a_manifest_the_journal_does_not_know_exits_2(tmp_path: Path) -> None:
    """A manifest listing downloaded songs and no journal: exit 2, one line, 0 POSTs."""
    out = tmp_path / "out"
    out.mkdir()
    record = {"key": "song-00", "generation_id": "gen-1", "status": "downloaded", "file": "a.mp3"}
    (out / "manifest.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")

    def answer(method: str, path: str, body: bytes) -> tuple[int, Any]:
        return 200, {"id": "gen-1", "status": "queued"}

    catalog = write_catalog(tmp_path / "songs.jsonl", 3)
    with hostile_server(answer) as server:
        result = invoke(
            "batch", str(catalog), "-o", str(out), "--base-url", server.base_url, "--plain"
        )
    assert result.exit_code == 2, result.output
    assert server.posts == 0
    assert "does not know" in result.output
    assert "Traceback" not in result.output
