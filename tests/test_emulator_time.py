"""A client of an emulator served on this machine runs at the emulator's time scale unaided."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
from _http_fakes import GEN_ID, ScriptedAPI, ok

import aimlmusic
from aimlmusic import ScaledClock, SongRequest
from aimlmusic._emulator_time import INFO_PATH, EmulatorPacedClock, TimeScaleProbe
from aimlmusic.emulator import TEST_API_KEY, Emulator, EmulatorConfig, serving

pytestmark = pytest.mark.anyio

#: API seconds per real second of the served emulator.
TIME_SCALE = 1000.0
BASE_URL = "http://127.0.0.1:8123"
SONG = SongRequest(prompt="Calm acoustic guitar by the sea", lyrics="[Verse]\nLa la la la")


async def test_a_client_of_a_served_emulator_runs_at_its_scale() -> None:
    """Given only the base URL, the client reads the emulator's scale before its first
    request: a 50-60 s song completes with a handful of polls, and the question itself is
    not counted as a request."""
    emulator = Emulator(EmulatorConfig(time_scale=TIME_SCALE, requests_per_minute=None))
    with serving(emulator) as base_url:
        async with aimlmusic.AsyncMusicClient(TEST_API_KEY, base_url=base_url) as client:
            assert isinstance(client.clock, EmulatorPacedClock)
            generation = await client.generate(SONG)
    assert generation.status == aimlmusic.GenerationStatus.COMPLETED
    assert client.clock.scale == TIME_SCALE
    stats = emulator.stats()
    assert stats.requests["submit"] == 1
    assert stats.requests["other"] == 0


async def test_a_given_clock_or_transport_is_left_alone() -> None:
    """An explicit clock, or a transport of the caller's, means no question is asked."""
    client = aimlmusic.AsyncMusicClient(TEST_API_KEY, base_url=BASE_URL, clock=ScaledClock(5))
    other = aimlmusic.AsyncMusicClient(
        TEST_API_KEY,
        base_url=BASE_URL,
        transport=httpx.MockTransport(lambda r: httpx.Response(404)),
    )
    remote = aimlmusic.AsyncMusicClient(TEST_API_KEY, base_url="https://api.example.com")
    assert isinstance(client.clock, ScaledClock)
    assert not isinstance(other.clock, EmulatorPacedClock)
    assert not isinstance(remote.clock, EmulatorPacedClock)
    for each in (client, other, remote):
        await each.aclose()


def _server(info: httpx.Response | Exception) -> tuple[httpx.MockTransport, list[str]]:
    """A loopback server answering ``info`` on the info route and 200 elsewhere; it records
    the paths asked."""
    asked: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        if request.url.path == INFO_PATH:
            if isinstance(info, Exception):
                raise info
            # A fresh answer each time: the probe reads it as a stream, once.
            return httpx.Response(info.status_code, headers=info.headers, content=info.content)
        return httpx.Response(200, json={"ok": True})

    return httpx.MockTransport(handle), asked


EMULATOR_INFO = {"emulator": "aimlmusic", "time_scale": 250, "now": 1.0}


@pytest.mark.parametrize(
    ("answer", "scale"),
    [
        (httpx.Response(200, json=EMULATOR_INFO), 250.0),
        (httpx.Response(404, json={"message": "Cannot GET"}), 1.0),
        (httpx.Response(200, json={"time_scale": 250}), 1.0),  # not an aimlmusic emulator
        (httpx.Response(200, json={**EMULATOR_INFO, "time_scale": -3}), 1.0),
        (httpx.Response(200, text="<html>"), 1.0),
        (httpx.ConnectError("refused"), 1.0),
        (RuntimeError("a proxy's own bug"), 1.0),  # not an httpx error: real time all the same
    ],
)
async def test_the_probe_adopts_only_an_emulators_answer(
    answer: httpx.Response | Exception, scale: float
) -> None:
    """Only an aimlmusic emulator's positive scale is adopted; anything else (another
    server, garbage, no answer) leaves real time, and the request goes through regardless."""
    inner, asked = _server(answer)
    clock = EmulatorPacedClock()
    async with httpx.AsyncClient(transport=TimeScaleProbe(inner, clock, BASE_URL)) as http:
        first = await http.get(f"{BASE_URL}/v2/generate/audio")
        second = await http.get(f"{BASE_URL}/v2/generate/audio")
    assert (first.status_code, second.status_code) == (200, 200)
    assert asked == [INFO_PATH, "/v2/generate/audio", "/v2/generate/audio"]  # asked once
    assert clock.scale == scale


@pytest.mark.parametrize(
    "body",
    [
        "[]",
        '"ok"',
        "null",
        "42",
        '{"emulator": ["aimlmusic"], "time_scale": "250"}',
        '{"emulator": "aimlmusic", "time_scale": "fast"}',
        '{"emulator": "aimlmusic", "time_scale": true}',
        '{"emulator": "aimlmusic", "time_scale": Infinity}',
        '{"emulator": "aimlmusic", "time_scale": 1' + "0" * 400 + "}",
        "[" * 100_000 + "]" * 100_000,
        '{"emulator": "aimlmusic", "time_scale": 1e300}',
        '{"emulator": "aimlmusic", "time_scale": 1e-300}',
        '{"emulator": "aimlmusic", "time_scale": 250, "padding": "' + "x" * 10_000 + '"}',
    ],
    ids=[
        "array",
        "string",
        "null",
        "number",
        "wrong-types",
        "text-scale",
        "bool-scale",
        "infinite-scale",
        "scale-beyond-float",
        "too-deep",
        "scale-far-too-fast",
        "scale-far-too-slow",
        "too-long",
    ],
)
async def test_a_probe_answered_with_anything_else_leaves_real_time_and_sends(
    body: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loopback server answering the probe 200 with a JSON value that is not a usable
    emulator object is asked once, leaves real time, and the submissions go out and succeed."""
    api = ScriptedAPI(httpx.Response(200, text=body), ok())
    monkeypatch.setattr("aimlmusic._emulator_time.OwnNetwork", lambda: api.transport)
    async with aimlmusic.AsyncMusicClient(TEST_API_KEY, base_url=BASE_URL) as client:
        first = await client.submit(SONG)
        second = await client.submit(SONG)
        assert isinstance(client.clock, EmulatorPacedClock)
        assert client.clock.scale == 1.0
    assert (first.id, second.id) == (GEN_ID, GEN_ID)
    paths = [(r.method, r.url.path) for r in api.requests]
    assert paths == [
        ("GET", INFO_PATH),
        ("POST", "/v2/generate/audio"),
        ("POST", "/v2/generate/audio"),
    ]


class _Drip(httpx.AsyncByteStream):
    """A body of ``size`` bytes sent one a (real) millisecond."""

    def __init__(self, size: int) -> None:
        self.size = size

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.size):
            await anyio.sleep(0.001)
            yield b" "


async def test_a_probe_answer_dripped_slowly_ends_at_its_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An answer to the probe dripped a byte at a time is given up at the probe's one bound
    (each byte within any read timeout), leaving real time; it used to hold every request."""
    monkeypatch.setattr("aimlmusic._emulator_time.PROBE_TIMEOUT", 0.05)

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == INFO_PATH:
            return httpx.Response(200, stream=_Drip(100_000))
        return ok()

    network = httpx.MockTransport(handle)
    monkeypatch.setattr("aimlmusic._emulator_time.OwnNetwork", lambda: network)
    async with aimlmusic.AsyncMusicClient(TEST_API_KEY, base_url=BASE_URL) as client:
        with anyio.fail_after(10):  # real seconds: the drip alone lasts a hundred
            generation = await client.submit(SONG)
        assert client.clock.scale == 1.0
    assert generation.id == GEN_ID


async def test_concurrent_first_requests_ask_once() -> None:
    """Requests racing to be first wait for one answer rather than each asking."""
    inner, asked = _server(httpx.Response(200, json=EMULATOR_INFO))
    probe = TimeScaleProbe(inner, EmulatorPacedClock(), BASE_URL)
    async with httpx.AsyncClient(transport=probe) as http, anyio.create_task_group() as group:
        for _ in range(5):
            group.start_soon(http.get, f"{BASE_URL}/x")
    assert asked.count(INFO_PATH) == 1
    assert len(asked) == 6


async def test_the_clock_goes_on_from_where_it_was() -> None:
    """Adopting a scale does not make ``now()`` jump: durations across it stay right."""
    clock = EmulatorPacedClock()
    before = clock.now()
    clock.adopt(1e6)
    after = clock.now()
    assert 0 <= after - before < 1e3  # under a millisecond of real time, scaled
    assert repr(clock) == "EmulatorPacedClock(scale=1e+06)"


def test_the_info_answer_is_json_an_emulator_serves() -> None:
    """The route the probe reads is the one the emulator serves (same path, same fields)."""
    emulator = Emulator(EmulatorConfig(time_scale=42))
    with serving(emulator) as base_url:
        info = json.loads(httpx.get(base_url + INFO_PATH).text)
    assert {key: info[key] for key in ("emulator", "time_scale")} == {
        "emulator": "aimlmusic",
        "time_scale": 42,
    }
