"""A song's deadline in ``generate_many`` bounds its polls in flight, never its submission."""

from __future__ import annotations

import json

import anyio
import httpx
import pytest

from aimlmusic import (
    AsyncMusicClient,
    GenerationTimeoutError,
    Limits,
    ScaledClock,
    SongRequest,
    SongResult,
)
from aimlmusic._scheduler import DEADLINE_POLL_GRACE
from aimlmusic.testing import VirtualClock

from ._support import CANARY_KEY

pytestmark = pytest.mark.anyio

API = "https://api.slow.test"
DEADLINE = 5.0
#: How long the slow server takes to answer a poll (API seconds): far past the deadline.
SLOW_ANSWER = 1_000.0


def _songs(*names: str) -> list[tuple[str, SongRequest]]:
    return [
        (name, SongRequest(prompt=f"Song called {name}, warm", lyrics="[Verse]\nla la la"))
        for name in names
    ]


class SlowServer:
    """POST answers at once (after ``post_delay``); a poll of a song named "slow" takes
    ``SLOW_ANSWER`` to come back, others answer "completed" at once. ``pause`` is how the
    handler waits: on the test's clock."""

    def __init__(self, pause, post_delay: float = 0.0) -> None:  # type: ignore[no-untyped-def]
        self.pause = pause
        self.post_delay = post_delay
        self.prompt_of: dict[str, str] = {}
        self.posts = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            self.posts += 1
            await self.pause(self.post_delay)
            gid = f"gen-{len(self.prompt_of)}:minimax/music-1.5"
            self.prompt_of[gid] = json.loads(request.content)["prompt"]
            return httpx.Response(200, json={"id": gid, "status": "queued"})
        gid = request.url.params["generation_id"]
        if "slow" in self.prompt_of[gid]:
            await self.pause(SLOW_ANSWER)
        body = {"id": gid, "status": "completed", "audio_file": {"url": "https://s.test/a"}}
        return httpx.Response(200, json=body)


async def _run(
    client: AsyncMusicClient, songs: list[tuple[str, SongRequest]]
) -> dict[str, tuple[SongResult, float]]:
    results: dict[str, tuple[SongResult, float]] = {}
    async with client, client.generate_many(songs, deadline=DEADLINE) as stream:
        async for result in stream:
            results[result.key] = (result, client.clock.now())
    return results


async def test_a_poll_answered_slowly_is_cut_at_the_songs_deadline_in_virtual_time() -> None:
    """A poll that would take 1000 s is cut at the 5-s deadline (plus one round trip of
    grace): GenerationTimeoutError with the song's id; the other song completes."""
    clock = VirtualClock()
    async with clock:
        server = SlowServer(clock.sleep)
        client = AsyncMusicClient(
            CANARY_KEY,
            base_url=API,
            transport=httpx.MockTransport(server),
            clock=clock,
            limits=Limits(requests_per_minute=100_000),
        )
        started = clock.now()
        results = await _run(client, _songs("slow", "quick"))
    slow, ended = results["slow"]
    assert isinstance(slow.error, GenerationTimeoutError), slow.error
    assert slow.error.generation_id == "gen-0:minimax/music-1.5"
    assert ended - started <= DEADLINE + DEADLINE_POLL_GRACE + 1.0, ended - started
    assert results["quick"][0].ok


async def test_a_poll_answered_slowly_is_cut_on_a_scaled_clock() -> None:
    """The same on a compressed real clock (the event loop's deadline path): the song ends
    in well under a real second instead of waiting ten for the answer."""
    clock = ScaledClock(100)
    server = SlowServer(lambda seconds: anyio.sleep(seconds / 100))
    client = AsyncMusicClient(
        CANARY_KEY, base_url=API, transport=httpx.MockTransport(server), clock=clock
    )
    with anyio.fail_after(8):  # SLOW_ANSWER is 10 real seconds: only a cut ends sooner
        results = await _run(client, _songs("slow"))
    slow, _ = results["slow"]
    assert isinstance(slow.error, GenerationTimeoutError), slow.error
    assert slow.error.generation_id == "gen-0:minimax/music-1.5"


async def test_a_slow_submission_is_never_cut_by_the_deadline() -> None:
    """A POST that takes 60 s with a 5-s deadline is waited for (cutting it could pay and
    lose the id): the song is submitted once and completes."""
    clock = VirtualClock()
    async with clock:
        server = SlowServer(clock.sleep, post_delay=60.0)
        client = AsyncMusicClient(
            CANARY_KEY, base_url=API, transport=httpx.MockTransport(server), clock=clock
        )
        results = await _run(client, _songs("patient"))
    result, _ = results["patient"]
    assert result.ok, result.error
    assert server.posts == 1
