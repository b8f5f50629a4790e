"""Downloads under attack: a store that drips a byte at a time, an endless body, a body
larger than the API said. Each is a DownloadError in bounded time and space, and no
partial file is left behind."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import httpx
import pytest

from aimlmusic import (
    AsyncMusicClient,
    DownloadError,
    Generation,
    RetryPolicy,
    SizeLimits,
    Timeout,
)
from aimlmusic._converter import structure_generation
from aimlmusic.testing import VirtualClock

from ._support import CANARY_KEY, InstantClock

pytestmark = pytest.mark.anyio

API = "https://api.store.test"
URL = "https://store.test/song.mp3?X-Amz-Signature=SIG"
PIECE = b"\xff" * 65536


def _completed(**extra: Any) -> Generation:
    return structure_generation(
        {
            "id": "gen-1:minimax/music-1.5",
            "status": "completed",
            "audio_file": {"url": URL},
            **extra,
        }
    )


class Drip(httpx.AsyncByteStream):
    """One byte per ``interval`` of the test's clock, for ever (the read timeout, which
    restarts with every byte, never fires)."""

    def __init__(self, clock: VirtualClock, interval: float = 1.0) -> None:
        self.clock = clock
        self.interval = interval
        self.sent = 0
        self.closed = False

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        while not self.closed:
            await self.clock.sleep(self.interval)
            self.sent += 1
            yield b"\x00"
        raise httpx.ReadError("closed")  # as a closed socket does

    async def aclose(self) -> None:
        self.closed = True


class Endless(httpx.AsyncByteStream):
    """64 kB pieces without end, and no Content-Length; stops when closed."""

    def __init__(self) -> None:
        self.sent = 0
        self.closed = False

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        for _ in itertools.count():
            if self.closed:
                raise httpx.ReadError("closed")
            self.sent += len(PIECE)
            yield PIECE

    async def aclose(self) -> None:
        self.closed = True


def _client(handler: Any, clock: Any, **kwargs: Any) -> AsyncMusicClient:
    return AsyncMusicClient(
        CANARY_KEY,
        base_url=API,
        transport=httpx.MockTransport(handler),
        clock=clock,
        retry=RetryPolicy(attempts=2),
        **kwargs,
    )


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def test_a_store_dripping_a_byte_a_second_ends_at_the_download_deadline(
    tmp_path: Path,
) -> None:
    """1 byte per virtual second, for ever: DownloadError naming Timeout.download about 60 s
    in (not never), no file left behind."""
    clock = VirtualClock()
    async with clock:
        drip = Drip(clock)
        client = _client(
            lambda request: httpx.Response(200, stream=drip), clock, timeout=Timeout(download=60)
        )
        async with client:
            with pytest.raises(DownloadError, match=r"within 60 s \(Timeout.download\)"):
                await client.download(_completed(), tmp_path / "song.mp3")
        ended = clock.now()
    assert 60 <= ended <= 62, ended
    assert drip.sent <= 62
    assert _leftovers(tmp_path) == []


async def test_an_endless_body_stops_at_the_reported_size_plus_margin(tmp_path: Path) -> None:
    """extra_info.music_size says 100 kB; the store sends without end: DownloadError once
    the cap (size plus margin, about 1.1 MB) is passed, no file left behind."""
    endless = Endless()
    client = _client(lambda request: httpx.Response(200, stream=endless), InstantClock())
    generation = _completed(extra_info={"music_size": 100_000})
    async with client:
        with pytest.raises(DownloadError, match="larger than expected") as caught:
            await client.download(generation, tmp_path / "song.mp3")
    assert "SIG" not in str(caught.value)
    assert endless.sent < 1_300_000, endless.sent
    assert _leftovers(tmp_path) == []


async def test_without_a_reported_size_the_configured_cap_applies(tmp_path: Path) -> None:
    """No music_size: SizeLimits.download_bytes (here 2 MB) bounds what is read and written."""
    endless = Endless()
    client = _client(
        lambda request: httpx.Response(200, stream=endless),
        InstantClock(),
        size_limits=SizeLimits(download_bytes=2_000_000),
    )
    async with client:
        with pytest.raises(DownloadError, match="cap is 2,000,000 bytes"):
            await client.download(_completed(), tmp_path / "song.mp3")
    assert endless.sent < 2_200_000
    assert _leftovers(tmp_path) == []


async def test_an_announced_length_over_the_cap_is_refused_before_reading(tmp_path: Path) -> None:
    """A Content-Length of 5 GB for a song the API said is 100 kB: refused at once."""
    endless = Endless()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=endless, headers={"Content-Length": "5000000000"})

    client = _client(handler, InstantClock())
    async with client:
        with pytest.raises(DownloadError, match="announced 5,000,000,000 bytes"):
            await client.download(_completed(extra_info={"music_size": 100_000}), tmp_path / "a")
    assert endless.sent == 0
    assert _leftovers(tmp_path) == []


async def test_a_body_within_the_margin_is_saved(tmp_path: Path) -> None:
    """A body somewhat larger than the reported size (a container's overhead) still saves."""
    audio = b"ID3" + b"\x01" * 120_000
    client = _client(lambda request: httpx.Response(200, content=audio), InstantClock())
    async with client:
        path = await client.download(
            _completed(extra_info={"music_size": 100_000}), tmp_path / "song.mp3"
        )
    assert path.read_bytes() == audio
