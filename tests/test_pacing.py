"""The songs' pace: no faster than the request budget can serve them, with its bursts.

A real :class:`RequestBudget` on a virtual clock stands for the budget; its burst allowance
is cut the way a small token bucket cuts it in a batch, by a 429 after a burst.
"""

from __future__ import annotations

import pytest

from aimlmusic import _pacing
from aimlmusic._pacing import (
    COST_MEMORY,
    PRIOR_REQUESTS_PER_SONG,
    PRIOR_TIME_IN_FLIGHT,
    SubmissionPace,
)
from aimlmusic._ratelimit import RequestBudget
from aimlmusic.testing import VirtualClock

pytestmark = pytest.mark.anyio


async def small_burst_budget(clock: VirtualClock) -> RequestBudget:
    """A 120/minute budget that sent 12 requests at once and was answered 429: it now
    allows bursts of about 6 and paces to the halved rate, 60 a minute."""
    budget = RequestBudget(120, clock)
    for _ in range(12):
        await budget.acquire("poll")
    budget.on_throttled(None)
    assert budget.burst < 10
    return budget


async def test_a_minute_s_burst_lets_a_whole_wave_of_songs_go_at_once() -> None:
    """With a minute's burst (120 requests, 5 a song), 24 songs may be submitted at one
    instant, and the 25th waits for one song's worth of the rate (2.5 s)."""
    budget = RequestBudget(120, VirtualClock())
    pace = SubmissionPace(slots=1)
    assert submit_while_free(pace, budget, 0.0) == 24
    assert pace.delay(budget, 0.0) == pytest.approx(PRIOR_REQUESTS_PER_SONG * 60 / 120)


async def test_a_smaller_wave_share_lets_fewer_songs_go_at_once() -> None:
    """With a wave share of 0.084 (a share docs/polling.md measures), a minute's burst (120
    requests, 5 a song) lets two songs go at one instant instead of 24 (its bucket holds
    2.016), and the next one waits for the rest of a song's worth of the rate (2.46 s)."""
    budget = RequestBudget(120, VirtualClock())
    pace = SubmissionPace(slots=1, wave_share=0.084)
    assert submit_while_free(pace, budget, 0.0) == 2
    assert pace.delay(budget, 0.0) == pytest.approx(
        (3 - 0.084 * 120 / 5) * PRIOR_REQUESTS_PER_SONG * 60 / 120
    )


async def test_a_policy_planning_within_the_budget_sends_half_a_burst_at_once() -> None:
    """At WAVE_SHARE (for a policy that plans within the budget), a minute's burst (120
    requests, 5 a song) lets 12 songs go at one instant, half the 24 of any other policy."""
    budget = RequestBudget(120, VirtualClock())
    planned = SubmissionPace(slots=1, wave_share=_pacing.WAVE_SHARE)
    assert submit_while_free(planned, budget, 0.0) == 12
    assert submit_while_free(SubmissionPace(slots=1), budget, 0.0) == 24


def submit_while_free(pace: SubmissionPace, budget: RequestBudget, now: float) -> int:
    """Submit songs at ``now`` until the pace says wait; how many went."""
    count = 0
    while pace.delay(budget, now) == 0.0 and count < 1000:
        pace.take(budget, now)
        count += 1
    return count


def steady_spacing(pace: SubmissionPace, budget: RequestBudget, start: float) -> float:
    """Submit songs, each as soon as the pace allows, from ``start``: the mean gap between
    ten of them once the leftover of any burst is spent."""
    now = start
    now += pace.delay(budget, now)
    pace.take(budget, now)
    first = now
    for _ in range(10):
        now += pace.delay(budget, now)
        pace.take(budget, now)
    return (now - first) / 10


async def test_after_429s_show_small_bursts_songs_go_one_at_a_time_at_the_served_pace() -> None:
    """Once a 429 cut the burst allowance to about a song's cost, one song goes at once and
    the next ones each wait for one song's requests at the budget's rate (5 requests at 60 a
    minute: 5 s); songs that waited a long time are not owed a burst."""
    clock = VirtualClock()
    budget = await small_burst_budget(clock)
    pace = SubmissionPace(slots=1)
    per_song = PRIOR_REQUESTS_PER_SONG * 60 / budget.effective_rate
    assert submit_while_free(pace, budget, 100.0) == 1
    assert steady_spacing(pace, budget, 100.0) == pytest.approx(per_song)
    assert submit_while_free(pace, budget, 10_000.0) == 1


async def test_a_song_s_cost_is_learned_from_the_songs_that_ended() -> None:
    """Songs that cost two requests each (a submission and one poll) bring the cost from the
    prior's five to two within three memories' worth of songs, and the pace follows it: more
    songs fit in the burst allowance, and each next one waits for two requests' time."""
    clock = VirtualClock()
    budget = await small_burst_budget(clock)
    pace = SubmissionPace(slots=1)
    for _ in range(int(3 * COST_MEMORY)):
        pace.song_ended(2, PRIOR_TIME_IN_FLIGHT)
    assert pace.requests_per_song == pytest.approx(2.0, abs=0.1)
    assert submit_while_free(pace, budget, 0.0) == int(budget.burst / pace.requests_per_song)
    expected = pace.requests_per_song * 60 / budget.effective_rate
    assert steady_spacing(pace, budget, 0.0) == pytest.approx(expected)


async def test_a_song_never_counts_as_costing_less_than_its_submission() -> None:
    """A song that ended before any request (0 reported) counts as one request, so the
    pace never runs ahead of the submissions themselves."""
    pace = SubmissionPace(slots=1)
    for _ in range(100):
        pace.song_ended(0, 1.0)
    assert pace.requests_per_song == pytest.approx(1.0, abs=0.01)


async def test_songs_never_go_slower_than_the_slots_free_up() -> None:
    """Songs that cost 10 requests each (a fixed interval's polls, more than the budget
    serves: 60 a minute makes one song per 10 s) still go at the slots' turnover, 20 slots
    per 40 s in flight: one per 2 s, not one per 10 s (which would only keep slots empty)."""
    clock = VirtualClock()
    budget = await small_burst_budget(clock)
    pace = SubmissionPace(slots=20)
    for _ in range(int(3 * COST_MEMORY)):
        pace.song_ended(10, 40.0)
    assert pace.time_in_flight == pytest.approx(40.0, rel=0.01)
    assert steady_spacing(pace, budget, 0.0) == pytest.approx(pace.time_in_flight / 20)


async def test_a_batch_needs_a_slot() -> None:
    """A pace for no slots at all is refused, naming the argument."""
    with pytest.raises(ValueError, match="slots"):
        SubmissionPace(slots=0)
