"""The planner: schedules from a snapshot and the requests per song the budget pays for.

Snapshots come from a real estimator fed songs of a known law through polls 3 % apart, so
the planner is checked on the estimates it will meet in practice.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aimlmusic._estimator import CompletionEstimator, Snapshot
from aimlmusic._planner import (
    EXPLORE_SHARE,
    FIRST_EXPLORE_SHARE,
    MAX_SHARE,
    MIN_GAP,
    PHASE_SPAN,
    WINDOW,
    Schedule,
    _busiest_window,
    _Remembered,
    _time_in_flight,
    plan,
)


def learned(
    low: float,
    high: float,
    songs: int = 120,
    seed: int = 1,
    draw: Callable[[random.Random], float] | None = None,
) -> Snapshot:
    """The snapshot after ``songs`` uniform(low, high) songs (or ``draw``'s, all within
    [low, high]) seen through polls 3 % apart."""
    estimator = CompletionEstimator()
    rng = random.Random(seed)
    for n in range(songs):
        duration = rng.uniform(low, high) if draw is None else draw(rng)
        t, after = low / 3 * 1.03 ** rng.random(), 0.0
        start = n * high / 20  # songs submitted in turn, about 20 in flight
        while t < duration:
            estimator.observe_running(str(n), t, at=start + t)
            after, t = t, t * 1.03
        estimator.observe_finished(str(n), after, t, at=start + t)
    return estimator.snapshot


DOCUMENTED = learned(50.0, 60.0)


def true_lag_p95(schedule: Schedule, low: float, high: float, samples: int = 4000) -> float:
    """The 95th percentile of lag / duration of ``schedule`` (middle phase) on uniform(low,
    high) songs."""
    times = list(schedule.times)
    rng = random.Random(7)
    shares = []
    for _ in range(samples):
        duration = rng.uniform(low, high)
        index = bisect.bisect_left(times, duration)
        noticed = times[index] if index < len(times) else math.inf
        shares.append((noticed - duration) / duration)
    shares.sort()
    return shares[int(0.95 * samples)]


def test_with_room_to_spare_it_plans_the_lag_target() -> None:
    """No budget limit: the share is the lag target, and on the law it was learned from the
    lag p95 is about that share."""
    schedule = plan(DOCUMENTED, math.inf, 0.025)
    assert schedule.share == 0.025
    assert true_lag_p95(schedule, 50.0, 60.0) <= 0.03
    assert 50.0 < schedule.times[0] < 53.0


def fits(snapshot: Snapshot, schedule: Schedule, rate: float) -> bool:
    """Whether ``rate`` pays for the schedule's submission and polls per song over its
    songs' time in flight."""
    return 1.0 + schedule.polls <= rate * _time_in_flight(snapshot, list(schedule.times)) + 1e-9


#: Requests per second per song in flight at the default limits: 0.9 x 120/min, 20 songs.
DEFAULT_RATE = 0.9 * 2.0 / 20


def test_a_tight_budget_gets_the_finest_share_that_fits() -> None:
    """At 2/3 of the default rate per song, the schedule fits it and its share is coarser
    than the lag target."""
    schedule = plan(DOCUMENTED, DEFAULT_RATE * 2 / 3, 0.025)
    assert fits(DOCUMENTED, schedule, DEFAULT_RATE * 2 / 3)
    assert 0.025 < schedule.share < MAX_SHARE


def test_the_budget_counts_songs_until_they_are_seen_finished() -> None:
    """Songs are paid for until the poll that sees them finished: on a 50-60 s law a
    schedule's time in flight lies between the mean duration and 2.5 % past the longest, a
    coarser schedule holds songs longer, and on 20-40 s songs the plan spends more polls
    than their completion time alone would pay for."""
    fine, coarse = plan(DOCUMENTED, math.inf, 0.025), plan(DOCUMENTED, 0.0, 0.025)
    fine_time = _time_in_flight(DOCUMENTED, list(fine.times))
    coarse_time = _time_in_flight(DOCUMENTED, list(coarse.times))
    assert 55.0 < fine_time < 60.0 * 1.025
    assert fine_time < coarse_time
    medium = _LAWS[(20.0, 1.0)]
    schedule = plan(medium, DEFAULT_RATE, 0.025)
    assert fits(medium, schedule, DEFAULT_RATE)
    assert 1.0 + schedule.polls > DEFAULT_RATE * medium.mean(0.99) + 0.1


def test_when_nothing_fits_it_takes_the_cheapest_schedule() -> None:
    """At a tenth of the default rate per song (a service faster than the budget), it plans
    the coarsest share: about one poll a song, near the end of the durations."""
    schedule = plan(DOCUMENTED, DEFAULT_RATE / 10, 0.025)
    assert schedule.share == MAX_SHARE
    assert schedule.polls < 1.2


def test_songs_longer_than_the_window_are_not_polled_past_it_when_they_move_together() -> None:
    """On 70-110 s songs, the average alone pays for about 7 polls a song, 8 requests within
    one minute; with a song's share of 90 % of the budget's minute (``peak``: 5.4), the
    schedule's busiest minute fits it, at a coarser share."""
    slow = learned(70.0, 110.0)
    peak = DEFAULT_RATE * WINDOW  # a song's share of the headroom of the budget's minute
    average = plan(slow, DEFAULT_RATE, 0.025)
    windowed = plan(slow, DEFAULT_RATE, 0.025, peak)
    assert _busiest_window(slow, list(average.times)) > peak + 1.5
    assert _busiest_window(slow, list(windowed.times)) <= peak
    assert windowed.share > average.share
    assert fits(slow, windowed, DEFAULT_RATE)


def test_when_no_schedule_fits_the_window_the_average_decides() -> None:
    """A minute's share below a submission and a poll fits no schedule: the plan is then
    the one the average rate pays for, not the coarsest there is."""
    assert plan(DOCUMENTED, DEFAULT_RATE, 0.025, 1.5) == plan(DOCUMENTED, DEFAULT_RATE, 0.025)
    assert plan(DOCUMENTED, DEFAULT_RATE, 0.025, 1.5).share < MAX_SHARE


def test_more_songs_explore_while_the_estimate_rests_on_few_songs() -> None:
    """Before any song, an eighth of songs (by phase) climb the explorers' ladder; once the
    estimate rests on two waves of songs (about 40 songs' worth), one in 32 does."""
    cold = plan(CompletionEstimator().snapshot, math.inf, 0.025)
    warm = plan(DOCUMENTED, math.inf, 0.025)
    assert cold.explore_share == FIRST_EXPLORE_SHARE
    assert warm.explore_share == EXPLORE_SHARE
    first = cold.times[0]
    assert cold.after(0.0, 0.1) == first / 8  # an explorer: the ladder's first rung
    assert warm.after(0.0, 0.1) > warm.times[0] / 2  # the same phase no longer explores


def test_polls_are_in_order_and_never_closer_than_the_minimum_gap() -> None:
    """Planned polls stay at least MIN_GAP apart at every phase, even on a 2-3 s service."""
    for snapshot in (DOCUMENTED, learned(2.0, 3.0)):
        schedule = plan(snapshot, math.inf, 0.025)
        for phase in (0.0, 0.5, 0.999):
            scale = schedule.after(0.0, phase, explore=False) / schedule.times[0]
            planned = [t * scale for t in schedule.times]
            assert all(b - a >= MIN_GAP - 1e-9 for a, b in itertools.pairwise(planned))
            # and a song is polled at every one of them: none is skipped as too close
            seen = [schedule.after(0.0, phase, explore=False)]
            while len(seen) < len(planned):
                seen.append(schedule.after(seen[-1], phase, explore=False))
            assert seen == pytest.approx(planned, rel=1e-12)


def test_a_coarse_schedule_polls_again_just_past_the_longest_songs() -> None:
    """At the coarsest share a second poll comes just past the longest songs, not a spacing on."""
    for low, high, by in ((10.0, 20.0, 24.0), (20.0, 40.0, 48.0)):  # a spacing on: 40, 80
        schedule = plan(learned(low, high), 0.0, 0.025)  # nothing fits: the cheapest
        assert schedule.share == MAX_SHARE
        for phase in (0.0, 0.25, 0.5, 0.75, 0.999):
            first = schedule.after(0.0, phase, explore=False)
            second = schedule.after(first, phase, explore=False)
            assert first + MIN_GAP <= second < by, (low, phase, first, second)


def test_after_gives_the_next_poll_and_the_tail_past_the_plan() -> None:
    """after() returns the first planned poll after the last one (phase 0.5: as planned) and
    keeps going 25 % apart past the plan."""
    schedule = plan(DOCUMENTED, math.inf, 0.025)
    first, second = schedule.times[0], schedule.times[1]
    assert schedule.after(0.0, 0.5) == first
    assert schedule.after(first, 0.5) == second
    last = schedule.times[-1]
    assert schedule.after(last * 2, 0.5) == last * 2 * 1.25


def test_a_phase_moves_a_song_s_polls_by_up_to_half_a_spacing() -> None:
    """Phases 0.1 and 0.9 put a song's first poll up to half a spacing later and earlier."""
    schedule = plan(DOCUMENTED, math.inf, 0.025)
    first = schedule.times[0]
    assert first < schedule.after(0.0, 0.1) < first * 1.025**0.5
    assert first * 1.025**-0.5 < schedule.after(0.0, 0.9) < first


def test_on_a_coarse_schedule_a_phase_moves_polls_by_at_most_seven_percent() -> None:
    """When the budget forces a coarse share, phases still move a song's first poll by at
    most PHASE_SPAN / 2 in log time (not half the spacing), so the shortest songs a
    schedule covers are not left a spacing and a half late."""
    schedule = plan(DOCUMENTED, 0.0, 0.025)  # nothing fits: the cheapest schedule
    assert math.log1p(schedule.share) > PHASE_SPAN
    first = schedule.times[0]
    latest, earliest = schedule.after(0.0, 0.05), schedule.after(0.0, 0.999)
    assert first < latest <= first * math.exp(PHASE_SPAN / 2)
    assert first * math.exp(-PHASE_SPAN / 2) <= earliest < first


def test_no_poll_is_spent_where_no_song_finishes() -> None:
    """With two modes (35-45 s and 80-100 s), no poll falls in the empty stretch between
    them, and songs of both modes are still noticed within the share (lag p95)."""

    def two_modes(rng: random.Random) -> float:
        return rng.uniform(35.0, 45.0) if rng.random() < 0.5 else rng.uniform(80.0, 100.0)

    snapshot = learned(35.0, 100.0, songs=200, draw=two_modes)
    schedule = plan(snapshot, math.inf, 0.025)
    in_gap = [t for t in schedule.times if 47.0 < t < 79.0]
    assert in_gap == [], schedule.times
    rng = random.Random(3)
    shares = []
    for _ in range(4000):
        duration = two_modes(rng)
        noticed = next(t for t in schedule.times if t >= duration)
        shares.append((noticed - duration) / duration)
    shares.sort()
    assert shares[int(0.95 * len(shares))] <= 0.03


@settings(max_examples=25, deadline=None)
@given(
    low=st.sampled_from([5.0, 20.0, 50.0, 120.0]),
    width=st.sampled_from([0.1, 0.5, 1.0]),
    fewer=st.floats(min_value=0.005, max_value=0.5),
    extra=st.floats(min_value=0.001, max_value=0.5),
)
def test_fewer_polls_never_give_less_lag(
    low: float, width: float, fewer: float, extra: float
) -> None:
    """For any learned law and two budget rates, the smaller one never plans a finer share
    or more polls than the larger."""
    snapshot = _LAWS[(low, width)]
    tight, loose = plan(snapshot, fewer, 0.025), plan(snapshot, fewer + extra, 0.025)
    assert tight.share >= loose.share - 1e-12
    assert tight.polls <= loose.polls + 1e-9


@settings(max_examples=25, deadline=None)
@given(
    low=st.sampled_from([5.0, 20.0, 50.0, 120.0]),
    width=st.sampled_from([0.1, 0.5, 1.0]),
    rate=st.floats(min_value=0.005, max_value=0.5),
)
def test_schedules_are_monotone_and_fit_when_they_can(
    low: float, width: float, rate: float
) -> None:
    """Every schedule's times increase; the rate pays for it unless even the coarsest share
    does not fit; its share is at least the lag target."""
    snapshot = _LAWS[(low, width)]
    schedule = plan(snapshot, rate, 0.025)
    assert list(schedule.times) == sorted(set(schedule.times))
    assert schedule.share >= 0.025
    assert fits(snapshot, schedule, rate) or schedule.share == MAX_SHARE


_LAWS = {
    (low, width): learned(low, low * (1 + width), songs=60, seed=int(low * 10 + width * 100))
    for low in (5.0, 20.0, 50.0, 120.0)
    for width in (0.1, 0.5, 1.0)
}


def test_a_plan_reads_each_time_from_the_snapshot_once_and_sees_what_it_says() -> None:
    """_Remembered answers done_by as the snapshot does, reading the snapshot once per time."""
    reads: list[float] = []

    class Counted(Snapshot):
        def done_by(self, t: float) -> float:
            reads.append(t)
            return super().done_by(t)

    counted = Counted(
        version=0, cdf=DOCUMENTED.cdf, songs=DOCUMENTED.songs, evidence=DOCUMENTED.evidence
    )
    law = _Remembered(counted)
    times = [0.0, 30.0, 50.0, 55.5, 60.0, 1e4] * 3
    assert [law.done_by(t) for t in times] == [DOCUMENTED.done_by(t) for t in times]
    assert sorted(reads) == sorted(set(times))
    assert law.quantile(0.5) == DOCUMENTED.quantile(0.5)
