"""Learned timing shared through a real Redis: export, adopt, refuse, and a new client that
polls well from its first song."""

from __future__ import annotations

import json
import math

import httpx
import pytest

import aimlmusic
from aimlmusic._estimator import BINS, CompletionEstimator
from aimlmusic._planner import FIRST_EXPLORE_SHARE, plan
from aimlmusic._shared_redis import SharedStore
from aimlmusic.emulator import TEST_API_KEY, Emulator, EmulatorConfig, Fixed
from aimlmusic.testing import VirtualClock

pytestmark = pytest.mark.anyio

LYRICS = "[Verse]\nA line to sing\n[Chorus]\nAnother line"
#: A service much faster than the documented 50-60 s: a prior-based plan is far off.
SONG_SECONDS = 20.0


def trained(seconds: float, songs: int) -> CompletionEstimator:
    """An estimator that saw ``songs`` songs finish just before ``seconds``."""
    estimator = CompletionEstimator()
    for n in range(songs):
        estimator.observe_finished(f"song-{n}", seconds - 1.0, seconds + 1.0)
    return estimator


def test_an_adopted_estimate_replaces_the_prior() -> None:
    """A fresh estimator adopting a trained one's export has its median, not the prior's."""
    fresh = CompletionEstimator()
    assert fresh.snapshot.quantile(0.5) > 50.0
    exported = trained(SONG_SECONDS, 30).export()
    assert len(json.dumps(exported)) < 8_000  # small enough to read at every start
    assert fresh.adopt(exported)
    assert abs(fresh.snapshot.quantile(0.5) - SONG_SECONDS) < 2.0


def test_a_client_that_adopted_an_estimate_explores_as_one_that_learned_it() -> None:
    """The adopted estimate's songs count as evidence: a fresh client explores with an
    eighth of its songs, one that adopted 30 songs' worth as little as the one it learned
    from."""
    source = trained(SONG_SECONDS, 30)
    adopted = CompletionEstimator()
    assert adopted.adopt(source.export())
    assert adopted.snapshot.evidence == pytest.approx(source.snapshot.songs, rel=0.01)
    fresh = plan(CompletionEstimator().snapshot, math.inf, 0.025).explore_share
    assert fresh == FIRST_EXPLORE_SHARE
    learned = plan(source.snapshot, math.inf, 0.025).explore_share
    assert plan(adopted.snapshot, math.inf, 0.025).explore_share == pytest.approx(learned, rel=1e-3)
    assert learned < fresh / 2


def test_own_songs_take_over_from_an_adopted_estimate() -> None:
    """After a wave of its own songs at 40 s, an estimator that adopted 20 s follows its own."""
    estimator = CompletionEstimator()
    estimator.adopt(trained(SONG_SECONDS, 30).export())
    for n in range(40):
        estimator.observe_finished(f"own-{n}", 39.0, 41.0)
    assert abs(estimator.snapshot.quantile(0.5) - 40.0) < 3.0


@pytest.mark.parametrize(
    "change",
    [
        {"format": 2},
        {"grid": [1.0, 7200.0, 1.03]},
        {"mass": [1.0, 2.0]},
        {"mass": "not a list"},
        {"songs": -1},
        {"songs": 0},
        {"songs": True},
        {"songs": 10**400},  # a JSON integer too large for a float
        {"mass": [10**400] + [0.0] * (BINS - 1)},
    ],
)
def test_an_estimate_of_another_format_or_shape_is_refused(change: dict[str, object]) -> None:
    """adopt() refuses an estimate it cannot read and changes nothing."""
    estimate = trained(SONG_SECONDS, 30).export() | change
    fresh = CompletionEstimator()
    before = fresh.snapshot
    assert not fresh.adopt(estimate)
    assert fresh.snapshot is before


def test_a_negative_mass_is_refused() -> None:
    """adopt() refuses a mass that is not a distribution (a negative bin)."""
    estimate = trained(SONG_SECONDS, 30).export()
    estimate["mass"][5] = -0.5
    assert not CompletionEstimator().adopt(estimate)


async def first_song_wait(
    clock: VirtualClock, emulator: Emulator, redis_url: str, *, shared: bool
) -> float:
    """API seconds from submission until a new client noticed its first song finished."""
    setting = aimlmusic.AudioSetting(format="wav", sample_rate=16000)
    async with aimlmusic.AsyncMusicClient(
        TEST_API_KEY,
        base_url="http://127.0.0.1",
        transport=httpx.ASGITransport(app=emulator.app),
        clock=clock,
        shared_url=redis_url if shared else "",
    ) as client:
        song = aimlmusic.SongRequest("The first song of a new replica", LYRICS, setting)
        async with client.generate_many([song]) as results:
            result = await results.receive()
    assert result.ok, result.error
    noticed, submitted = result.timings.noticed_at, result.timings.submitted_at
    assert noticed is not None
    assert submitted is not None
    return noticed - submitted


async def test_a_new_client_starts_from_the_published_estimate(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After one client learned that songs take 20 s (not 50-60), a new client on the same
    Redis notices its very first song within 8 % of its duration, where a client without the
    shared estimate is seconds late; the estimate is published under the account's namespace."""
    monkeypatch.setattr("aimlmusic._shared_redis.DEFAULT_KEY_PREFIX", redis_prefix)
    clock = VirtualClock()
    emulator = Emulator(
        EmulatorConfig(requests_per_minute=None, durations=Fixed(SONG_SECONDS)), clock=clock
    )
    setting = aimlmusic.AudioSetting(format="wav", sample_rate=16000)
    async with clock:
        async with aimlmusic.AsyncMusicClient(
            TEST_API_KEY,
            base_url="http://127.0.0.1",
            transport=httpx.ASGITransport(app=emulator.app),
            clock=clock,
            shared_url=redis_url,
        ) as teacher:
            songs = [
                aimlmusic.SongRequest(f"A song that teaches number {n}", LYRICS, setting)
                for n in range(12)
            ]
            async with teacher.generate_many(songs) as results:
                async for result in results:
                    assert result.ok, result.error
        shared = await first_song_wait(clock, emulator, redis_url, shared=True)
        alone = await first_song_wait(clock, emulator, redis_url, shared=False)
    # Noticed within 8 % of its duration (1.2 s: songs the teacher found done at their first
    # polls make a tail below 20 s, see _estimator._tail), against five seconds late with the
    # prior's plan (its first song explores a ladder below the documented 50 s).
    assert shared - SONG_SECONDS < 0.08 * SONG_SECONDS
    assert alone - SONG_SECONDS > 3.0
    store = SharedStore(redis_url, TEST_API_KEY, key_prefix=redis_prefix, offload=False)
    try:
        published = json.loads(store.redis.get(store.key("timing")))
    finally:
        store.close()
    assert published["format"] == 1
    assert published["songs"] >= 3


@pytest.mark.parametrize(
    "unreadable",
    [
        json.dumps({"format": 99, "anything": [1, 2]}),
        "[" * 50_000,  # nested past the JSON parser's depth (and under the size limit)
    ],
)
async def test_an_unreadable_shared_estimate_is_ignored(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch, unreadable: str
) -> None:
    """A client finding something it cannot read under the timing key keeps the prior."""
    monkeypatch.setattr("aimlmusic._shared_redis.DEFAULT_KEY_PREFIX", redis_prefix)
    store = SharedStore(redis_url, TEST_API_KEY, key_prefix=redis_prefix, offload=False)
    try:
        store.redis.set(store.key("timing"), unreadable)
    finally:
        store.close()
    clock = VirtualClock()
    emulator = Emulator(
        EmulatorConfig(requests_per_minute=None, durations=Fixed(SONG_SECONDS)), clock=clock
    )
    async with clock:
        waited = await first_song_wait(clock, emulator, redis_url, shared=True)
    assert waited - SONG_SECONDS > 3.0  # as late as with the prior's plan
