"""The library's own client against the emulator, through the ``aimlmusic.testing`` fixtures:
in process and over a real socket, one song and a small batch."""

from __future__ import annotations

import wave
from pathlib import Path

import pytest

import aimlmusic
from aimlmusic.emulator import TEST_API_KEY, Emulator, EmulatorConfig

pytestmark = pytest.mark.anyio

LYRICS = "[Verse]\nA line to sing\n[Chorus]\nAnother line"


def songs(count: int) -> list[tuple[str, aimlmusic.SongRequest]]:
    """``count`` distinct WAV songs keyed ``song-N``."""
    setting = aimlmusic.AudioSetting(format="wav", sample_rate=16000)
    return [
        (f"song-{n}", aimlmusic.SongRequest(f"Emulated song number {n}", LYRICS, setting))
        for n in range(count)
    ]


async def run_batch(
    client: aimlmusic.AsyncMusicClient, count: int
) -> dict[str, aimlmusic.SongResult]:
    """Generate ``count`` songs with ``generate_many`` and collect the results by key."""
    results: dict[str, aimlmusic.SongResult] = {}
    # No per-song deadline: at the fixtures' 1000x the default 600 API s is 0.6 real s, which
    # a loaded machine can spend on one song over a socket; these tests are not about time.
    async with client.generate_many(songs(count), deadline=None) as stream:
        async for result in stream:
            results[result.key] = result
    return results


def assert_clean_batch(
    emulator: Emulator, results: dict[str, aimlmusic.SongResult], count: int
) -> None:
    """Every song completed, each submitted exactly once, nothing throttled."""
    assert len(results) == count
    assert all(result.ok for result in results.values()), [r.error for r in results.values()]
    stats = emulator.stats()
    assert stats.requests["submit"] == count
    assert stats.duplicate_submissions == 0
    assert stats.jobs["completed"] == count


async def test_the_fixture_client_generates_and_downloads_a_song(
    emulated_client: aimlmusic.AsyncMusicClient, music_emulator: Emulator, tmp_path: Path
) -> None:
    """``emulated_client`` generates a song in process and downloads a valid WAV file."""
    request = songs(1)[0][1]
    generation = await emulated_client.generate(request)
    assert generation.status == aimlmusic.GenerationStatus.COMPLETED
    path = await emulated_client.download(generation, tmp_path / "song.wav")
    with wave.open(str(path)) as reader:
        assert reader.getframerate() == 16000
    info = generation.music_info
    assert info is not None
    assert info.size == path.stat().st_size
    assert music_emulator.job(generation.id).downloads == 1


async def test_a_batch_in_process(
    emulated_client: aimlmusic.AsyncMusicClient, music_emulator: Emulator
) -> None:
    """A 30-song batch through ``generate_many`` completes with one submission per song."""
    results = await run_batch(emulated_client, 30)
    assert_clean_batch(music_emulator, results, 30)


async def test_a_batch_over_a_socket(music_emulator: Emulator, music_emulator_url: str) -> None:
    """The same batch over a real loopback socket (uvicorn), on the emulator's clock."""
    pytest.importorskip("uvicorn")
    async with aimlmusic.AsyncMusicClient(
        TEST_API_KEY, base_url=music_emulator_url, clock=music_emulator.clock
    ) as client:
        results = await run_batch(client, 30)
    assert_clean_batch(music_emulator, results, 30)


class TestOverriddenConfig:
    """``music_emulator_config`` can be overridden to change the fixtures' emulator."""

    @pytest.fixture
    def music_emulator_config(self) -> EmulatorConfig:
        """The real request budget and 3 slots, at 1000x."""
        return EmulatorConfig(time_scale=1000, max_concurrent=3)

    async def test_the_override_reaches_the_emulator(
        self, emulated_client: aimlmusic.AsyncMusicClient, music_emulator: Emulator
    ) -> None:
        """The emulator behind ``emulated_client`` uses the overriding configuration."""
        assert music_emulator.config.max_concurrent == 3
        assert music_emulator.config.requests_per_minute == 120
        results = await run_batch(emulated_client, 6)
        assert_clean_batch(music_emulator, results, 6)


async def test_the_client_rides_out_failed_polls(
    emulated_client: aimlmusic.AsyncMusicClient, music_emulator: Emulator
) -> None:
    """Ten polls answered 5xx (500 JSON or 502 HTML) are retried: every song completes and
    none is submitted twice."""
    music_emulator.inject("error_before", route="poll", count=10)
    results = await run_batch(emulated_client, 10)
    assert_clean_batch(music_emulator, results, 10)
    assert music_emulator.stats().faults == {"error_before": 10}
