"""The command line speaks command line: flags and variables in its advice, -v shows requests,
its defaults agree with the emulator's, and its commands treat existing files alike."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from aimlmusic import ConfigurationError
from aimlmusic.catalog import load_catalog
from aimlmusic.cli._app import cli
from aimlmusic.cli._backend import DEFAULT_EMULATOR_TIME_SCALE
from aimlmusic.cli._messages import _REWRITES, for_the_command_line
from aimlmusic.emulator import TEST_API_KEY, Emulator, EmulatorConfig, serving
from aimlmusic.emulator._cli import build_parser, config_from_args

LYRICS = "[Verse]\nNeon rain on empty streets\n[Chorus]\nWe keep on walking home"
#: --timeout for songs at 1000x: 1000 real seconds, which only a hung client reaches (the
#: default 600 API seconds would be 0.6 real ones, too little on a loaded machine).
NO_TIMEOUT = "1000000"
#: Python advice a CLI user cannot follow.
PYTHON_ADVICE = ("api_key=", "allow_insecure_http", "tag_mp3=", "=True", "=False")


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run the command in process with no key, base URL or verbosity from the machine."""
    base_env = {"AIML_API_KEY": "", "AIMLAPI_API_KEY": "", "AIMLMUSIC_BASE_URL": ""}
    runner = CliRunner()
    return runner.invoke(cli, list(args), env={**base_env, **(env or {})}, catch_exceptions=False)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLI configures the aimlmusic loggers; put them back after each test."""
    loggers = [logging.getLogger(name) for name in ("aimlmusic", "aimlmusic.http")]
    saved = [(log, log.level, list(log.handlers)) for log in loggers]
    yield
    for log, level, handlers in saved:
        log.setLevel(level)
        log.handlers[:] = handlers


@pytest.fixture
def served() -> Iterator[tuple[Emulator, str]]:
    """An emulator on a loopback socket, 1000x faster than real time."""
    emulator = Emulator(EmulatorConfig(time_scale=1000, audio_seconds=0.3))
    with serving(emulator) as base_url:
        yield emulator, base_url


def _generate(out: Path, *extra: str) -> Result:
    return invoke(
        *extra, "generate", "--emulator", "--time-scale", "1000", "-p", "A calm ambient piece",
        "-l", LYRICS, "-o", str(out), "--timeout", NO_TIMEOUT,
    )  # fmt: skip


# --------------------------------------------------------------------------- messages


@pytest.mark.parametrize(
    ("args", "env", "names"),
    [
        (["status", "some-id"], {}, ["--api-key", "AIML_API_KEY", "aimlmusic demo"]),
        (
            ["generate", "-p", "A calm ambient piece", "-l", LYRICS],
            {},
            ["--api-key", "AIML_API_KEY", "--emulator"],
        ),
        (["status", "some-id", "--api-key", " "], {}, ["--api-key", "AIML_API_KEY"]),
        (["status", "some-id", "--api-key", "short"], {}, ["--api-key", "8"]),
        (
            ["status", "some-id", "--base-url", "http://api.example.com"],
            {"AIML_API_KEY": "test-key"},
            ["--base-url", "AIMLMUSIC_BASE_URL", "https://"],
        ),
        (
            ["download", "some-id", "x.mp3", "--base-url", "ftp://nowhere"],
            {"AIML_API_KEY": "test-key"},
            ["--base-url"],
        ),
    ],
)
def test_configuration_errors_name_flags_and_variables(
    args: list[str], env: dict[str, str], names: list[str], tmp_path: Path
) -> None:
    """A configuration problem is reported with the flags and variables that fix it, never
    with Python keyword arguments; nothing is sent and the status is 2."""
    result = invoke(*args, env=env)
    assert result.exit_code == 2
    if args[0] in ("status", "download"):
        assert "--emulator" not in result.stderr  # they have no such option
    for name in names:
        assert name in result.stderr
    for advice in PYTHON_ADVICE:
        assert advice not in result.stderr


def _library_messages(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """The library's configuration errors that a CLI user can run into, as raised."""
    import anyio

    import aimlmusic
    from aimlmusic.catalog import _runner, run_catalog

    for name in ("AIML_API_KEY", "AIMLAPI_API_KEY", "AIMLMUSIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    messages = []
    for make in (
        lambda: aimlmusic.AsyncMusicClient(),
        lambda: aimlmusic.AsyncMusicClient(" "),
        lambda: aimlmusic.AsyncMusicClient("short"),
        lambda: aimlmusic.AsyncMusicClient("test-key", base_url="http://api.example.com"),
        lambda: aimlmusic.AsyncMusicClient("test-key", base_url="ftp://nowhere"),
    ):
        with pytest.raises(ConfigurationError) as info:
            make()
        messages.append(str(info.value))
    monkeypatch.setattr(_runner, "mutagen_available", lambda: False)
    with pytest.raises(ConfigurationError) as info:
        anyio.run(run_catalog, None, tmp_path / "c.jsonl", tmp_path / "out")
    messages.append(str(info.value))
    return messages


def test_every_library_advice_is_translated(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Each configuration error the library raises reads, once translated, without Python
    advice (a reworded library message would otherwise slip through)."""
    for message in _library_messages(monkeypatch, tmp_path):
        translated = for_the_command_line(message)
        for advice in PYTHON_ADVICE:
            assert advice not in translated, message
    assert all(
        python in " ".join(_library_messages(monkeypatch, tmp_path)) for python, _ in _REWRITES
    )


def test_help_mentions_emulator_only_where_the_command_has_it() -> None:
    """``status`` and ``download`` have no --emulator, and their help does not mention it;
    ``generate`` and ``batch`` have it and say so."""
    for command in ("status", "download"):
        assert "--emulator" not in invoke(command, "--help").output
    for command in ("generate", "batch"):
        assert "--emulator" in invoke(command, "--help").output


# --------------------------------------------------------------------------- logging


def test_v_logs_each_request_unwrapped(tmp_path: Path) -> None:
    """``-v`` logs every request's outcome, one line each however long (stderr is not a
    terminal here); without it nothing is logged."""
    quiet = _generate(tmp_path / "quiet.mp3")
    assert quiet.exit_code == 0, quiet.output
    assert "/v2/generate/audio" not in quiet.stderr

    verbose = _generate(tmp_path / "loud.mp3", "-v")
    assert verbose.exit_code == 0, verbose.output
    lines = verbose.stderr.splitlines()
    submits = [line for line in lines if "POST http://127.0.0.1/v2/generate/audio -> 200" in line]
    polls = [line for line in lines if "GET http://127.0.0.1/v2/generate/audio?" in line]
    downloads = [line for line in lines if "/files/" in line and "-> 200" in line]
    assert (len(submits), len(downloads)) == (1, 1)
    assert polls
    assert any(len(line) > 80 for line in polls)  # not wrapped at 80 columns
    assert all(" INFO " in line for line in lines if line)  # requests show as INFO
    assert all(" INFO aimlmusic.http: " in line for line in submits + polls + downloads)
    assert TEST_API_KEY not in verbose.stderr


def test_vv_logs_everything(tmp_path: Path) -> None:
    """``-vv`` adds the library's debug lines (attempts, saved files) to the requests."""
    result = _generate(tmp_path / "song.mp3", "-vv")
    assert result.exit_code == 0, result.output
    assert "(attempt 1 of" in result.stderr
    assert "saved " in result.stderr


# --------------------------------------------------------------------------- emulator time


def test_served_and_embedded_emulators_default_to_the_same_speed() -> None:
    """``aimlmusic emulator`` and ``--emulator``/``demo`` run at the same default scale."""
    served = config_from_args(build_parser().parse_args([]))
    assert served.time_scale == DEFAULT_EMULATOR_TIME_SCALE == 100


def test_commands_follow_a_served_emulator_without_time_scale(
    served: tuple[Emulator, str], tmp_path: Path
) -> None:
    """``generate --base-url`` of an emulator served at 1000x, without --time-scale,
    finishes a 50-60 s song as the emulator runs it, then ``download`` fetches it again."""
    emulator, base_url = served
    target = tmp_path / "song.mp3"
    connection = ["--base-url", base_url, "--api-key", TEST_API_KEY]
    result = invoke(
        "generate", "-p", "A calm ambient piece", "-l", LYRICS, "-o", str(target), "--timeout",
        NO_TIMEOUT, *connection,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    generation_id = result.stdout.split("Generation id: ")[1].strip()
    (record,) = emulator.jobs.values()
    assert record.completed_at is not None
    assert record.first_seen_terminal_at is not None
    # Seen done within 5000 API seconds (5 real seconds: room for a loaded machine). On real
    # time the client would first look after tens of real seconds, tens of thousands here.
    assert record.first_seen_terminal_at - record.submitted_at < 5000
    again = invoke("download", generation_id, str(tmp_path / "again.mp3"), *connection)
    assert again.exit_code == 0, again.output


def test_emulator_command_accepts_every_documented_fault() -> None:
    """``--fault truncate_download=P`` is accepted, as the testing guide's table lists it."""
    args = build_parser().parse_args(["--fault", "truncate_download=0.25"])
    assert config_from_args(args).faults.truncate_download == 0.25


# --------------------------------------------------------------------------- files


def test_download_refuses_to_overwrite_without_the_flag(
    served: tuple[Emulator, str], tmp_path: Path
) -> None:
    """Like ``generate``, ``download`` keeps an existing file unless given --overwrite."""
    _, base_url = served
    connection = ["--base-url", base_url, "--api-key", TEST_API_KEY]
    first = tmp_path / "first.mp3"
    made = invoke("generate", "-p", "A calm ambient piece", "-l", LYRICS, "-o", str(first),
                  "--timeout", NO_TIMEOUT, *connection)  # fmt: skip
    assert made.exit_code == 0, made.output
    generation_id = made.stdout.split("Generation id: ")[1].strip()
    existing = tmp_path / "mine.mp3"
    existing.write_bytes(b"precious")

    refused = invoke("download", generation_id, str(existing), *connection)
    assert refused.exit_code == 2
    assert "--overwrite" in refused.stderr
    assert existing.read_bytes() == b"precious"

    replaced = invoke("download", generation_id, str(existing), "--overwrite", *connection)
    assert replaced.exit_code == 0, replaced.output
    assert existing.stat().st_size > len(b"precious")


def test_catalog_accepts_whole_numbers_written_as_floats(tmp_path: Path) -> None:
    """``44100.0`` (JSON) and ``"44100.0"`` are 44100, like ``44100`` and ``"44100"``;
    ``44100.5`` is still a problem."""
    rows = [
        {"key": k, "prompt": "Warm lo-fi ballad, soft piano", "lyrics": LYRICS, **setting}
        for k, setting in [
            ("a", {"sample_rate": 44100.0, "bitrate": 256000.0}),
            ("b", {"sample_rate": "44100.0", "bitrate": "256000"}),
        ]
    ]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    loaded = load_catalog(path)
    settings = [row.request.audio_setting for row in loaded]
    assert all(s is not None and (s.sample_rate, s.bitrate) == (44100, 256000) for s in settings)

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**rows[0], "sample_rate": 44100.5}) + "\n", encoding="utf-8")
    result = invoke("batch", str(bad), "-o", str(tmp_path / "out"), "--emulator")
    assert result.exit_code == 2
    assert "sample_rate" in result.stderr
