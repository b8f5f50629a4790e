"""The emulator on a real loopback socket (uvicorn in a thread) and its command line."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from aimlmusic.emulator import TEST_API_KEY, Emulator, EmulatorConfig, Faults, main, serving
from aimlmusic.emulator._cli import build_parser, config_from_args

pytest.importorskip("uvicorn")
pytestmark = pytest.mark.anyio

PATH = "/v2/generate/audio"
AUTH = {"Authorization": f"Bearer {TEST_API_KEY}"}
SONG = {"model": "minimax/music-1.5", "prompt": "Socket song, warm and slow", "lyrics": "la " * 10}


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Emulator, str]]:
    """One emulator at 1000x served on 127.0.0.1 for the whole module (starting is cheap,
    stopping takes uvicorn ~0.1 s)."""
    emulator = Emulator(EmulatorConfig(time_scale=1000, requests_per_minute=None))
    with serving(emulator) as base_url:
        yield emulator, base_url


@pytest.fixture
def emulator(served: tuple[Emulator, str]) -> Emulator:
    """The served emulator, reset for this test."""
    served[0].reset()
    return served[0]


@pytest.fixture
def base_url(served: tuple[Emulator, str]) -> str:
    """The served emulator's base URL."""
    return served[1]


async def test_serving_binds_loopback_and_serves_a_song(emulator: Emulator, base_url: str) -> None:
    """The base URL is http://127.0.0.1:<port>; a song goes from submission to a download
    whose URL points back at the same server."""
    assert base_url.startswith("http://127.0.0.1:")
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        generation_id = (await client.post(PATH, json=SONG, headers=AUTH)).json()["id"]
        for _ in range(500):  # bounded: the song takes ~60 ms at 1000x
            done = (
                await client.get(PATH, params={"generation_id": generation_id}, headers=AUTH)
            ).json()
            if done["status"] == "completed":
                break
            await emulator.clock.sleep(5.0)
        url = done["audio_file"]["url"]
        assert url.startswith(base_url + "/files/")
        audio = await client.get(url)
    assert audio.status_code == 200
    assert len(audio.content) == done["extra_info"]["music_size"]


@pytest.mark.parametrize("fault", ["drop_before", "drop_after"])
async def test_a_drop_closes_the_socket_without_a_response(
    emulator: Emulator, base_url: str, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A dropped connection reaches the client as a hang-up with no status line at all, the
    server logs no error, and the next request on a new connection works."""
    emulator.inject(fault, route="submit")
    with caplog.at_level(logging.WARNING):
        async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:
            with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
                await client.post(PATH, json=SONG, headers=AUTH)
            assert (await client.post(PATH, json=SONG, headers=AUTH)).status_code == 200
    assert [record for record in caplog.records if record.levelno >= logging.WARNING] == []
    assert emulator.stats().jobs_submitted == (2 if fault == "drop_after" else 1)


async def test_a_truncated_download_is_cut_off(emulator: Emulator, base_url: str) -> None:
    """``truncate_download`` over a socket: the headers promise the full size, half arrives."""
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:
        generation_id = (await client.post(PATH, json=SONG, headers=AUTH)).json()["id"]
        await emulator.clock.sleep(61.0)
        done = (
            await client.get(PATH, params={"generation_id": generation_id}, headers=AUTH)
        ).json()
        emulator.inject("truncate_download", route="download")
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(done["audio_file"]["url"])


async def test_a_slow_response_trips_the_read_timeout() -> None:
    """A ``delay`` longer than the client's read timeout is a read timeout on the client."""
    # 500 API s of delay = 0.5 s real, 500 times the 1 ms read timeout: a loaded machine that
    # stalls the client for a few milliseconds cannot let the answer arrive in time.
    faults = Faults(delay_seconds=500.0)
    emulator = Emulator(EmulatorConfig(time_scale=1000, requests_per_minute=None, faults=faults))
    emulator.inject("delay", route="poll")
    with serving(emulator) as base_url:
        timeout = httpx.Timeout(5, read=0.001)
        async with httpx.AsyncClient(base_url=base_url, timeout=timeout) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.get(PATH, params={"generation_id": "x"}, headers=AUTH)


def test_a_served_emulator_with_faults_keeps_serving() -> None:
    """Under a 30% mix of every fault, a plain sync client gets answers or hang-ups, and the
    server thread survives to answer the stats route."""
    faults = Faults(error_before=0.1, error_after=0.1, drop_after=0.1, malformed_json=0.1)
    emulator = Emulator(EmulatorConfig(time_scale=1000, requests_per_minute=None, faults=faults))
    outcomes: list[object] = []
    with serving(emulator) as base_url, httpx.Client(base_url=base_url, timeout=5) as client:
        for _ in range(40):
            try:
                outcomes.append(client.post(PATH, json=SONG, headers=AUTH).status_code)
            except httpx.RemoteProtocolError:
                outcomes.append("dropped")
        stats = client.get("/_emulator/stats").json()
    assert "dropped" in outcomes
    assert any(status == 200 for status in outcomes)
    assert stats["requests"]["submit"] == 40
    assert stats["dropped"] == outcomes.count("dropped")


# --------------------------------------------------------------------------- command line


def test_the_options_build_the_config() -> None:
    """Command-line options map onto EmulatorConfig fields (0 disables a limit)."""
    args = build_parser().parse_args(
        [
            "--time-scale",
            "500",
            "--rpm",
            "0",
            "--max-concurrent",
            "3",
            "--retry-after",
            "auto",
            "--duration",
            "1",
            "2",
            "--fault",
            "error_after=0.25",
            "--no-credit-key",
            "sk-broke-0001",
        ]
    )
    config = config_from_args(args)
    assert (config.time_scale, config.requests_per_minute, config.max_concurrent) == (500, None, 3)
    assert config.retry_after == "auto"
    assert (config.durations.low, config.durations.high) == (1.0, 2.0)  # type: ignore[union-attr]
    assert config.faults.error_after == 0.25
    assert config.no_credit_keys == {"sk-broke-0001"}
    assert config.api_keys == {TEST_API_KEY}


def test_a_key_no_client_could_send_is_refused_at_start(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--api-key`` too short exits 2 before serving, naming the option's field and the
    limit, not the key."""
    assert main(["--api-key", "sk-shor"]) == 2
    error = capsys.readouterr().err
    assert "api_keys" in error
    assert "fewer than the 8" in error
    assert "sk-shor" not in error


def test_help_exits_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    """``main(["--help"])`` prints the options and exits 0 (what ``aimlmusic emulator`` wraps)."""
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    assert "--time-scale" in capsys.readouterr().out


def test_python_m_prints_its_url_and_serves() -> None:
    """``python -m aimlmusic.emulator --port 0`` prints only its base URL on stdout, answers
    requests there, and stops on SIGINT."""
    command = [sys.executable, "-m", "aimlmusic.emulator", "--port", "0", "--time-scale", "1000"]
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as process:
        try:
            assert process.stdout is not None
            base_url = process.stdout.readline().strip()
            assert base_url.startswith("http://127.0.0.1:")
            health = httpx.get(f"{base_url}/_emulator/health", timeout=5)
            assert health.json()["status"] == "ok"
            submitted = httpx.post(f"{base_url}{PATH}", json=SONG, headers=AUTH, timeout=5)
            assert submitted.json()["status"] == "queued"
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
    assert process.returncode == 0
