"""The completion-time estimator: censored observations in, immutable snapshots out.

Plain synchronous tests (the estimator is pure bookkeeping). ``inspect`` plays what the
scheduler reports for one song polled at given times: running at each poll before it
finished, then finished between the last of those and the next.
"""

from __future__ import annotations

import heapq
import math
import random

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from aimlmusic._estimator import (
    BINS,
    EDGES,
    GRID_END,
    GRID_RATIO,
    GRID_START,
    MAX_COMPLETED,
    MEMORY,
    POOLED_SWEEPS,
    REFIT_EVERY,
    SMOOTHING,
    SUPPORT_SLACK,
    SURPRISE,
    SURPRISE_EVERY,
    SWEEPS,
    CompletionEstimator,
    Snapshot,
    _bin_of,
    _cdf_of,
    _interval,
    _support,
    _sweep,
    _tail,
)


def inspect(
    estimator: CompletionEstimator,
    song: str,
    duration: float,
    polls: list[float],
    *,
    start: float = 0.0,
    ordered: bool = False,
) -> None:
    """Report one song submitted at clock time ``start`` and finishing ``duration`` s in,
    polled at ``polls`` (sorted, seconds after its submission); ``ordered``: with its
    submission time, which the change test orders songs by."""
    after = 0.0
    since = start if ordered else None
    for t in polls:
        if t >= duration:
            estimator.observe_finished(song, after, t, at=start + t, since=since)
            return
        estimator.observe_running(song, t, at=start + t, since=since)
        after = t
    estimator.forget(song)


def geometric_polls(first: float, ratio: float, phase: float, count: int = 60) -> list[float]:
    """Polls ``ratio`` apart from ``first``, all moved by ``phase`` of a spacing."""
    start = first * ratio**phase
    return [start * ratio**k for k in range(count)]


def test_before_any_song_the_estimate_is_the_documented_50_to_60_seconds() -> None:
    """The prior: about 0 done by 49 s, about half by 55 s, nearly all by 61 s."""
    snapshot = CompletionEstimator().snapshot
    assert snapshot.done_by(49.0) < 0.05
    assert 0.4 < snapshot.done_by(55.0) < 0.6
    assert snapshot.done_by(61.0) > 0.9
    assert 50.0 <= snapshot.quantile(0.5) <= 60.0


def test_reading_a_snapshot_changes_nothing_and_observing_makes_a_new_one() -> None:
    """A snapshot is frozen; only observe_* publish a new one, with a new version."""
    estimator = CompletionEstimator()
    first = estimator.snapshot
    for _ in range(3):
        assert estimator.snapshot is first
        first.quantile(0.5), first.done_by(30.0), first.mean(), repr(estimator)
    estimator.observe_finished("a", 40.0, 41.0)
    second = estimator.snapshot
    assert second is not first
    assert second.version > first.version
    with pytest.raises(AttributeError):
        second.version = 0  # type: ignore[misc]


def test_songs_still_running_past_the_prior_move_the_estimate_later() -> None:
    """Twenty songs seen running at 90 s make 'done by 80 s' unlikely before any finishes."""
    estimator = CompletionEstimator()
    assert estimator.snapshot.done_by(80.0) > 0.9
    for n in range(20):
        estimator.observe_running(str(n), 90.0)
    assert estimator.snapshot.done_by(80.0) < 0.3


def test_songs_running_past_the_median_refit_soon_but_once_per_bunch() -> None:
    """A song seen running past the estimate's median refits within SURPRISE_EVERY, and the
    rest of its bunch waits for that; an unsurprising one waits for REFIT_EVERY."""
    estimator = CompletionEstimator()
    estimator.observe_running("early", 10.0, at=0.0)  # the clock's first refit
    version = estimator.snapshot.version
    estimator.observe_running("early", 20.0, at=REFIT_EVERY / 2)  # 10 s in: not surprising
    assert estimator.snapshot.version == version
    for n in range(10):  # a bunch of songs past 55 s, the prior's median, within the gap
        estimator.observe_running(str(n), 58.0, at=REFIT_EVERY / 2 + n * SURPRISE_EVERY / 20)
    assert estimator.snapshot.version == version + 1
    assert estimator.snapshot.done_by(58.0) >= SURPRISE  # still surprising after that refit
    late = REFIT_EVERY / 2 + 1.01 * SURPRISE_EVERY
    estimator.observe_running("late", 58.0, at=late)
    assert estimator.snapshot.version == version + 2
    estimator.observe_running("early", 21.0, at=late + 0.99 * REFIT_EVERY)  # not surprising
    assert estimator.snapshot.version == version + 2
    estimator.observe_running("early", 22.0, at=late + 1.01 * REFIT_EVERY)  # the timer's
    assert estimator.snapshot.version == version + 3


def test_a_song_that_ends_otherwise_stops_counting_as_running() -> None:
    """forget() drops a running song, so an abandoned one does not hold the estimate up."""
    estimator = CompletionEstimator()
    for n in range(8):
        estimator.observe_running(str(n), 90.0)
    assert estimator.running == 8
    for n in range(8):
        estimator.forget(str(n))
    assert estimator.running == 0


@pytest.mark.parametrize("referenced", [True, False])
def test_long_songs_still_running_weigh_no_more_than_their_short_cohort(referenced: bool) -> None:
    """Half 20 s, half 80 s songs, one every 3 s, polled every 5 s: half done by 50 s, with
    or without reference times."""
    # Songs aged from their own finish would leave the short ones of a cohort aged by the
    # time its long ones (still running, or just done) count in full: 40 % by 50 s.
    estimator = CompletionEstimator()
    in_flight: dict[str, tuple[float, float]] = {}
    for now in range(900):
        if now % 3 == 0:
            in_flight[f"s{now}"] = (float(now), 20.0 if now % 6 == 0 else 80.0)
        for song, (start, duration) in list(in_flight.items()):
            elapsed, since = now - start, start if referenced else None
            if elapsed >= duration:
                estimator.observe_finished(song, duration - 1.0, duration, at=now, since=since)
                del in_flight[song]
            elif elapsed > 0 and elapsed % 5 == 0:
                estimator.observe_running(song, elapsed, at=now, since=since)
    assert estimator.snapshot.done_by(50.0) == pytest.approx(0.5, abs=0.03)


def poll_together(
    estimator: CompletionEstimator, songs: int, rng: random.Random, *, start: float = 0.0
) -> None:
    """``songs`` songs of 50-60 s submitted together at ``start`` (one reference time for
    all), polled every 2 s from 30 s until all are seen done (the last round refits at
    once)."""
    durations = {f"{start:g}s{n}": rng.uniform(50.0, 60.0) for n in range(songs)}
    for poll in range(30, 62, 2):
        at = None if poll == 60 else start + poll  # the last round (all done) refits at once
        for song, duration in durations.items():
            if duration > poll:
                estimator.observe_running(song, poll, at=at, since=start)
            elif duration > poll - 2:
                estimator.observe_finished(song, poll - 2, poll, at=at, since=start)


def test_more_songs_in_flight_than_its_memory_still_weigh_a_memory_s_worth() -> None:
    """150 songs of 50-60 s polled together every 2 s from 30 s: once all are seen done, they
    weigh MEMORY songs' worth (none aged away by its own cohort) and the estimate is theirs."""
    estimator = CompletionEstimator()
    poll_together(estimator, 150, random.Random(8))
    snapshot = estimator.snapshot
    assert snapshot.songs == pytest.approx(MEMORY, rel=0.05)
    assert 49.0 < snapshot.quantile(0.05) < 52.0
    assert 58.0 < snapshot.quantile(0.95) < 62.0


def test_more_songs_finishing_together_than_it_keeps_leave_a_fair_sample() -> None:
    """400 songs of 50-60 s polled together: the MAX_COMPLETED kept are the latest observed,
    not the latest to finish (the longest), so the estimate still spans 50-60 s."""
    estimator = CompletionEstimator()
    poll_together(estimator, 2 * MAX_COMPLETED, random.Random(9))
    snapshot = estimator.snapshot
    assert 49.0 < snapshot.quantile(0.05) < 52.0
    assert 53.0 < snapshot.quantile(0.5) < 57.0


def test_songs_submitted_together_are_never_split_by_the_change_test() -> None:
    """Five batches of 150 songs of 50-60 s, each sharing one reference time: a change can
    only fall between reference times, so a steady service keeps its songs."""
    estimator = CompletionEstimator()
    rng = random.Random(5)
    for batch in range(5):
        poll_together(estimator, 150, rng, start=100.0 * batch)
    assert estimator.changes == 0


def test_it_follows_a_service_that_slows_down_within_a_wave_or_two() -> None:
    """200 songs of 35-45 s, then 40 of 80-100 s: the median moves past 80 s."""
    estimator = CompletionEstimator()
    rng = random.Random(4)
    for n in range(200):
        inspect(
            estimator,
            str(n),
            rng.uniform(35, 45),
            geometric_polls(30.0, 1.03, rng.random()),
            start=n * 3.0,
        )
    assert 35.0 < estimator.snapshot.quantile(0.5) < 45.0
    for n in range(200, 240):
        inspect(
            estimator,
            str(n),
            rng.uniform(80, 100),
            geometric_polls(30.0, 1.03, rng.random()),
            start=n * 3.0,
        )
    assert 80.0 < estimator.snapshot.quantile(0.5) < 100.0


def wave_after_wave(
    estimator: CompletionEstimator,
    laws: list[tuple[int, tuple[float, float]]],
    *,
    seed: int = 4,
    ordered: bool = True,
) -> None:
    """Songs of each ``(count, (low, high))`` in turn, 20 in flight (a song submitted
    every twentieth of a song's mean time), each polled 3 % apart from 20 s; what the polls
    see is reported in the order it is seen, as the scheduler reports it."""
    rng = random.Random(seed)
    seen: list[tuple[float, int, float, float, bool]] = []  # (clock, song, after, by, done)
    start, n = 0.0, 0
    for count, (low, high) in laws:
        for _ in range(count):
            duration, after = rng.uniform(low, high), 0.0
            for t in geometric_polls(20.0, 1.03, rng.random()):
                seen.append((start + t, n, after, t, t >= duration))
                if t >= duration:
                    break
                after = t
            start += (low + high) / 2 / 20
            n += 1
    starts = {}
    for clock, song, after, by, done in sorted(seen):
        since = clock - by
        starts.setdefault(song, since)
        reference = starts[song] if ordered else None
        if done:
            estimator.observe_finished(str(song), after, by, at=clock, since=reference)
        else:
            estimator.observe_running(str(song), by, at=clock, since=reference)


def test_a_service_that_slows_down_at_once_loses_its_old_pace_within_a_wave() -> None:
    """200 songs of 35-45 s, then 20 of 80-100 s: the older songs are dropped, so under 5 %
    of songs are expected before 60 s (forgetting alone leaves most of them there)."""
    changed, forgetting = CompletionEstimator(), CompletionEstimator()
    laws = [(200, (35.0, 45.0)), (20, (80.0, 100.0))]
    wave_after_wave(changed, laws)
    wave_after_wave(forgetting, laws, ordered=False)
    assert changed.changes == 1
    assert changed.snapshot.done_by(60.0) < 0.05
    assert forgetting.changes == 0
    assert forgetting.snapshot.done_by(60.0) > 0.3


@pytest.mark.parametrize("law", [(35.0, 45.0), (50.0, 60.0), (20.0, 120.0)])
def test_the_pooled_estimate_at_one_sweep_ends_within_1_percent_of_three(
    law: tuple[float, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pooled estimate the change test scores under, at POOLED_SWEEPS a refit, ends
    within 1 % of where SWEEPS a refit take it (warm starts carry it the rest of the way)."""
    assert POOLED_SWEEPS < SWEEPS
    lean = CompletionEstimator()
    wave_after_wave(lean, [(150, law)])
    monkeypatch.setattr("aimlmusic._estimator.POOLED_SWEEPS", SWEEPS)
    full = CompletionEstimator()
    wave_after_wave(full, [(150, law)])
    assert lean.changes == full.changes == 0
    lean_pooled, full_pooled = _cdf_of(lean._pooled), _cdf_of(full._pooled)
    for p in (0.05, 0.25, 0.5, 0.75, 0.95):
        assert lean_pooled.quantile(p) == pytest.approx(full_pooled.quantile(p), rel=0.01)
    assert lean.snapshot.cdf == full.snapshot.cdf  # the published estimate is not touched


def test_the_pooled_estimate_at_one_sweep_still_finds_a_slowdown_within_a_wave(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With POOLED_SWEEPS a refit, as with SWEEPS, 200 songs of 35-45 s then 20 of 80-100 s
    show one change, and afterwards under 5 % of songs are expected before 60 s."""
    laws = [(200, (35.0, 45.0)), (20, (80.0, 100.0))]
    for sweeps in (POOLED_SWEEPS, SWEEPS):
        monkeypatch.setattr("aimlmusic._estimator.POOLED_SWEEPS", sweeps)
        estimator = CompletionEstimator()
        wave_after_wave(estimator, laws)
        assert estimator.changes == 1
        assert estimator.snapshot.done_by(60.0) < 0.05


def test_an_adopted_estimate_of_the_old_pace_goes_with_the_older_songs() -> None:
    """An adopted estimate of 35-45 s songs goes when the service is found slowed to 80-100 s."""
    source = CompletionEstimator()
    wave_after_wave(source, [(100, (35.0, 45.0))])
    adopted = CompletionEstimator()
    assert adopted.adopt(source.export())
    wave_after_wave(adopted, [(40, (35.0, 45.0)), (20, (80.0, 100.0))], seed=5)
    assert adopted.changes == 1
    # Kept, the adopted estimate would still hold about a third of the songs before 60 s.
    assert adopted.snapshot.done_by(60.0) < 0.02
    assert adopted.export()["songs"] == pytest.approx(adopted.snapshot.songs, abs=1e-3)


def stream(estimator: CompletionEstimator, durations: list[float], in_flight: int) -> None:
    """Songs of these ``durations`` through a client keeping ``in_flight`` at once (each
    submitted when a slot frees), each polled every 3 s from 30 s; what the polls see is
    reported as it is seen."""
    polls: list[tuple[float, int, float]] = []  # (clock, song, submitted at)
    for song in range(min(in_flight, len(durations))):
        heapq.heappush(polls, (30.0 + song * 0.1, song, song * 0.1))
    submitted = len(polls)
    while polls:
        clock, song, since = heapq.heappop(polls)
        seen = clock - since
        if seen < durations[song]:
            estimator.observe_running(str(song), seen, at=clock, since=since)
            heapq.heappush(polls, (clock + 3.0, song, since))
            continue
        after = seen - 3.0 if seen - 3.0 >= 30.0 else 0.0  # the last poll that saw it running
        estimator.observe_finished(str(song), after, seen, at=clock, since=since)
        if submitted < len(durations):
            heapq.heappush(polls, (clock + 30.0, submitted, clock))
            submitted += 1


def test_a_change_of_pace_is_found_with_more_songs_in_flight_than_it_keeps() -> None:
    """150 songs in flight, 600 lognormal songs (median 55 s) then 600 taking 1.8 times as
    long: the songs it lets go (past MAX_COMPLETED) still leave the songs referenced after
    them to the change test, which finds the change."""
    rng = random.Random(1)
    durations = [rng.lognormvariate(math.log(55.0), 0.35) for _ in range(1200)]
    estimator = CompletionEstimator()
    stream(estimator, durations[:600] + [d * 1.8 for d in durations[600:]], in_flight=150)
    assert estimator.changes >= 1


def test_a_service_that_speeds_up_at_once_is_followed_too() -> None:
    """100 songs of 80-100 s, then 40 of 35-45 s: the older songs are dropped and half the
    songs are expected done by 50 s."""
    estimator = CompletionEstimator()
    wave_after_wave(estimator, [(100, (80.0, 100.0)), (40, (35.0, 45.0))])
    assert estimator.changes == 1
    assert estimator.snapshot.quantile(0.5) < 50.0


@pytest.mark.parametrize("law", [(50.0, 60.0), (20.0, 40.0), (30.0, 120.0)])
def test_a_steady_service_keeps_its_songs(law: tuple[float, float]) -> None:
    """400 songs of one law, in four seeds: no change of pace is ever found."""
    for seed in range(4):
        estimator = CompletionEstimator()
        wave_after_wave(estimator, [(400, law)], seed=seed)
        assert estimator.changes == 0


def test_songs_that_have_just_started_do_not_make_a_change() -> None:
    """200 songs of 35-45 s, then 3,000 more seen running 0-20 s in (thousands in flight):
    songs that say nothing are left out of the test, so no change is found."""
    estimator = CompletionEstimator()
    wave_after_wave(estimator, [(200, (35.0, 45.0))], seed=0)
    rng = random.Random(0)
    end = 500.0
    for n in range(3000):
        age = rng.random() * 20
        estimator.observe_running(f"r{n}", age, at=end, since=end - age)
    estimator.observe_running("last", 1.0, since=end - 1.0)  # at=None: refit now
    assert estimator.changes == 0


def test_a_song_s_reference_must_be_a_finite_time() -> None:
    """An infinite or NaN reference time is refused, naming it, before it is kept."""
    estimator = CompletionEstimator()
    for since in (math.inf, math.nan):
        with pytest.raises(ValueError, match="since"):
            estimator.observe_finished("a", 1.0, 2.0, since=since)
        with pytest.raises(ValueError, match="since"):
            estimator.observe_running("a", 1.0, since=since)
    assert estimator.running == 0


def test_no_song_is_put_earlier_than_the_innermost_intervals_allow() -> None:
    """Songs all seen running at 13 s (and found done at polls from 26 s on) leave nothing
    done by 10 s, below the innermost intervals and their slack, however many refits."""
    estimator = CompletionEstimator()
    rng = random.Random(5)
    for n in range(120):
        polls = [13.0, *geometric_polls(26.0, 1.25, rng.random())]
        inspect(estimator, str(n), rng.uniform(20, 40), polls, start=n * 2.0)
    snapshot = estimator.snapshot
    assert 13.0 / GRID_RATIO ** (SUPPORT_SLACK + 1) > 10.0
    assert snapshot.done_by(10.0) == 0.0
    assert 20.0 < snapshot.quantile(0.5) < 40.0


def test_songs_found_done_at_their_first_poll_stay_near_it() -> None:
    """Songs found done at their first polls (50 s), none seen running lower, put no song
    below the slack under those polls (not at a second or two, where the floor is).

    The observations are the first of a simulated batch: an explorer seen running on its
    ladder, two songs seen running at their first polls, two found done at theirs."""
    estimator = CompletionEstimator()
    estimator.observe_running("explorer", 6.39, at=6.6)
    estimator.observe_running("explorer", 46.12, at=46.3)
    estimator.observe_running("b", 50.5, at=51.2)
    estimator.observe_running("explorer", 51.23, at=51.4)
    estimator.observe_finished("c", 0.0, 50.15, at=51.8)
    estimator.observe_finished("d", 0.0, 50.85, at=52.0)
    slack_below = 50.15 / GRID_RATIO ** (SUPPORT_SLACK + 1)
    assert estimator.snapshot.done_by(slack_below) == 0.0
    assert estimator.snapshot.quantile(0.01) > slack_below


def test_songs_found_done_below_the_polls_spread_as_the_density_above_them() -> None:
    """Songs found done at their first polls (41-47 s), others seen running at 32-35 s and
    two explorers at 25 s (a lognormal service's first wave): the left tail continues the
    density seen above the polls, its 1.5th percentile under 31 s (the truth: 25.7 s), not
    piled up at 35 s just below the polls, where EM alone puts it."""
    estimator = CompletionEstimator()
    finished = [(0.0, 41.1), (0.0, 44.1), (0.0, 45.5), (0.0, 47.0), (25.2, 42.1), (25.5, 45.8)]
    finished += [(45.7, 56.0), (48.0, 54.5), (49.9, 53.2), (52.5, 56.0), (53.9, 61.9)]
    for n, (after, by) in enumerate(finished):
        estimator.observe_finished(f"done-{n}", after, by)
    for n, seen in enumerate([32.2, 33.0, 33.9, 34.1, 34.9, 71.7, 74.4, 76.4, 77.9]):
        estimator.observe_running(f"running-{n}", seen)
    for _ in range(30):  # refits, as the songs in flight report again
        estimator.observe_running("running-0", 32.2)
    assert estimator.snapshot.quantile(0.015) < 31.0


def test_the_tail_keeps_its_mass_and_falls_by_the_ratio_of_mass_to_density() -> None:
    """Below the resolved bin the mass is kept (0.3) but falls per bin by below / (below +
    density): 0.3 / (0.3 + 0.1); bins outside the support get none; above, nothing moves."""
    mass = [0.0] * 20 + [0.3] + [0.0] * 9 + [0.1] * 7 + [0.0] * 3
    support = [k >= 5 for k in range(len(mass))]
    reshaped = _tail(mass, 30, support)
    assert sum(reshaped[:30]) == pytest.approx(0.3)
    assert reshaped[30:] == mass[30:]
    assert reshaped[:5] == [0.0] * 5
    ratios = [reshaped[k - 1] / reshaped[k] for k in range(6, 30)]
    assert ratios == pytest.approx([0.75] * len(ratios))


@pytest.mark.parametrize(
    ("resolved", "supported_from"),
    [(0, 0), (40, 0), (50, 0), (30, 30), (10, 0)],
    ids=["none-seen-done", "at-the-end", "past-the-end", "no-support-below", "no-mass-below"],
)
def test_the_tail_leaves_the_mass_alone_when_there_is_nothing_to_reshape(
    resolved: int, supported_from: int
) -> None:
    """No song seen done, a bin past the mass, no supported bin below it, or no mass below
    it: the mass comes back unchanged (no division by zero, nothing lost)."""
    mass = [0.0] * 10 + [0.05] * 20 + [0.0] * 10
    support = [k >= supported_from for k in range(len(mass))]
    assert _tail(mass, resolved, support) == mass


def test_a_sharp_lower_edge_seen_by_the_polls_stays_sharp() -> None:
    """Songs of 50-60 s polled 3 % apart from 30 s (seen running up to the edge): the tail
    makes up no songs below 50 s, under 0.5 % done by 48 s (a guard for the documented law:
    it fails if the tail is reshaped after the sweep from a bin above the edge)."""
    estimator = CompletionEstimator()
    rng = random.Random(3)
    for n in range(120):
        polls = geometric_polls(30.0, 1.03, rng.random(), count=40)
        inspect(estimator, str(n), rng.uniform(50, 60), polls, start=n * 3.0)
    assert estimator.snapshot.done_by(48.0) < 0.005
    assert 49.0 < estimator.snapshot.quantile(0.02) < 52.0


def test_songs_seen_only_queued_say_nothing_of_long_durations() -> None:
    """Songs seen queued (running 0 s after their reference) leave the estimate's 99th
    percentile near the documented 50-60 s, not hours away where the floor is."""
    estimator = CompletionEstimator()
    for n in range(5):
        estimator.observe_running(f"queued-{n}", 0.0, at=float(n))
    assert estimator.snapshot.quantile(0.99) < 400.0


def test_what_it_keeps_stays_bounded() -> None:
    """Thousands of songs keep at most MAX_COMPLETED intervals."""
    estimator = CompletionEstimator()
    for n in range(MAX_COMPLETED * 3):
        estimator.observe_finished(str(n), 50.0, 52.0)
    assert len(estimator._completed) == MAX_COMPLETED


@pytest.mark.parametrize(
    ("after", "by"),
    [(-1.0, 5.0), (5.0, 4.0), (1.0, math.inf), (math.nan, 1.0)],
)
def test_impossible_intervals_are_refused(after: float, by: float) -> None:
    """An interval that is not 0 <= after <= by < inf is a ValueError, not a silent skew."""
    with pytest.raises(ValueError, match="after"):
        CompletionEstimator().observe_finished("a", after, by)


def test_a_bad_prior_is_refused() -> None:
    """prior=(high, low) is refused, naming the parameter."""
    with pytest.raises(ValueError, match="prior"):
        CompletionEstimator(prior=(60.0, 50.0))


@settings(max_examples=12, deadline=None)
@given(
    low=st.floats(min_value=5.0, max_value=300.0),
    width=st.floats(min_value=0.05, max_value=1.0),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_it_is_consistent_on_censored_samples_of_a_known_law(
    low: float, width: float, seed: int
) -> None:
    """Uniform(low, low * (1 + width)) songs seen only through polls 3 % apart (random
    phases, first at a third of low, as an explorer would): the estimated quartiles and
    median land within a poll spacing and a bin or two of the law's, plus what a memory of
    about 40 songs leaves of sampling noise (a sixth of the law's width)."""
    high = low * (1 + width)
    estimator = CompletionEstimator()
    rng = random.Random(seed)
    for n in range(150):
        polls = geometric_polls(low / 3, 1.03, rng.random(), count=200)
        inspect(estimator, str(n), rng.uniform(low, high), polls, start=n * high / 20)
    snapshot = estimator.snapshot
    for p in (0.25, 0.5, 0.75):
        truth = low + p * (high - low)
        allowed = 0.06 * truth + (high - low) / 6
        assert abs(snapshot.quantile(p) - truth) < allowed, (p, snapshot.quantile(p), truth)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=10_000.0), min_size=1, max_size=30))
def test_a_snapshot_is_a_distribution(times: list[float]) -> None:
    """Whatever it saw, done_by is a cdf (0 at 0, non-decreasing, at most 1) and quantile
    inverts it."""
    estimator = CompletionEstimator()
    for n, t in enumerate(times):
        if n % 2:
            estimator.observe_running(str(n), t)
        else:
            estimator.observe_finished(str(n), t / 2, t)
    snapshot: Snapshot = estimator.snapshot
    grid = [0.0, 0.1, 1.0, 10.0, 50.0, 100.0, 1000.0, 7000.0, 1e6]
    values = [snapshot.done_by(t) for t in grid]
    assert values[0] == 0.0
    assert values == sorted(values)
    assert values[-1] <= 1.0 + 1e-9
    for p in (0.1, 0.5, 0.9):
        if p <= snapshot.done_by(GRID_END):  # past the grid, mass has no place in time
            assert snapshot.done_by(snapshot.quantile(p)) == pytest.approx(p, abs=0.02)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.floats(min_value=1e-6, max_value=4 * GRID_END),
        st.sampled_from(EDGES[1:]),  # the edges themselves, where rounding would bite
    )
)
def test_every_time_falls_in_the_bin_whose_edges_hold_it(t: float) -> None:
    """_bin_of(t) is the k with EDGES[k] <= t < EDGES[k + 1] (0 up to GRID_START)."""
    k = _bin_of(t)
    if t <= GRID_START:
        assert k == 0
    elif k == BINS - 1:
        assert t >= EDGES[-1]
    else:
        assert EDGES[k] <= t < EDGES[k + 1]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=BINS, max_size=BINS))
def test_a_cdf_never_passes_one_however_its_masses_round(raw: list[float]) -> None:
    """A cdf of masses summing to 1 rises from 0, is their exact running sum, and never passes 1."""
    total = sum(raw)
    assume(total > 0)
    mass = [m / total for m in raw]
    cdf = _cdf_of(mass).cdf
    assert len(cdf) == BINS
    assert cdf[0] == 0.0
    assert list(cdf) == sorted(cdf)
    assert max(cdf) <= 1.0
    running = 0.0
    for k in range(1, BINS):
        running += mass[k - 1]
        assert cdf[k] == min(1.0, running)


#: Times observations start and end at in the support and sweep properties: few, so that
#: ends coincide (the ties the innermost intervals must get right), and spread over the grid.
_SOME_TIMES = [0.0, 0.3, 5.0, 20.0, 45.0, 50.0, 52.5, 55.0, 60.0, 66.0, 300.0, 7000.0, 9000.0]


@st.composite
def observations(draw: st.DrawFn) -> list[tuple[float, float]]:
    """Up to 12 observations ``(after, by)``: finished in ``(after, by]`` or, with ``by``
    infinite, still running at ``after``."""
    drawn = []
    for _ in range(draw(st.integers(min_value=0, max_value=12))):
        after = draw(st.sampled_from(_SOME_TIMES) | st.floats(0.0, 9000.0))
        by = draw(st.sampled_from([*_SOME_TIMES, math.inf]) | st.floats(0.0, 9000.0))
        drawn.append((after, max(after, by)))
    return drawn


@settings(max_examples=300, deadline=None)
@given(observations())
def test_the_support_is_the_innermost_intervals_and_their_slack(
    observed: list[tuple[float, float]],
) -> None:
    """_support marks exactly the bins of every innermost interval (a left end, then a right
    end above it with no end strictly between) and SUPPORT_SLACK bins below each."""
    afters = [after for after, _ in observed]
    bys = [by for _, by in observed]
    expected = [False] * BINS
    for left in afters:
        for right in bys:
            between = [t for t in (*afters, *bys) if left < t < right]
            if right <= left or between:
                continue
            hi = BINS - 1 if right == math.inf else _bin_of(right)
            lo = _bin_of(left) if left > 0 else (0 if right == math.inf else hi)
            for k in range(max(0, lo - SUPPORT_SLACK), hi + 1):
                expected[k] = True
    assert _support([_interval(after, by) for after, by in observed]) == expected


def _full_grid_sweep(
    mass: list[float],
    rows: list[tuple[int, int, float, float, float]],
    pseudo: list[float],
    total: float,
    support: list[bool],
) -> list[float]:
    """One EM sweep written plainly over every bin of the grid, to check _sweep against."""
    counts = list(pseudo)
    for first, last, first_share, last_share, weight in rows:
        # Within one bin, mass is spread evenly: the whole observation falls in it.
        parts = {first: 1.0}
        if first < last:
            parts = {k: mass[k] for k in range(first + 1, last)}
            parts[first], parts[last] = first_share * mass[first], last_share * mass[last]
        covered = sum(parts.values())
        if covered <= 0:
            continue
        for k, part in parts.items():
            counts[k] += weight * part / covered
    fitted = [count / total for count in counts]
    smoothed = []
    for k in range(BINS):
        neighbours = [fitted[j] for j in (k - 1, k + 1) if 0 <= j < BINS]
        passed_on = SMOOTHING * len(neighbours)
        smoothed.append(
            fitted[k] * (1 - passed_on) + SMOOTHING * sum(neighbours) if support[k] else 0.0
        )
    kept = sum(smoothed)
    return [m / kept for m in smoothed] if kept > 0 else fitted


@settings(max_examples=200, deadline=None)
@example(  # a song finished in an instant, in the bin just below the support and the mass
    observed=[(EDGES[149] * 1.001, EDGES[149] * 1.001)],
    supported=(150, 5),
    massive=(150, 5),
    rng=random.Random(0),
)
@given(
    observations(),
    st.tuples(st.integers(0, BINS - 1), st.integers(1, 60)),
    st.tuples(st.integers(0, BINS - 1), st.integers(1, 60)),
    st.randoms(),
)
def test_a_sweep_skips_only_bins_that_stay_empty(
    observed: list[tuple[float, float]],
    supported: tuple[int, int],
    massive: tuple[int, int],
    rng: random.Random,
) -> None:
    """A sweep over the bins with mass or support gives the masses a plain sweep over the
    whole grid does: the bins it skips are empty before and after. (The support, as in a
    fit, holds the observations' innermost intervals, here with a band of bins besides; the
    mass lies on a band of its own, inside or outside the support, as the prior's does and
    as it may when the support shrinks; songs may finish in a single instant.)"""
    intervals = [_interval(after, by) for after, by in observed]
    first, width = supported
    support = [inside or first <= k < first + width for k, inside in enumerate(_support(intervals))]
    first, width = massive
    mass = [0.1 + rng.random() if first <= k < first + width else 0.0 for k in range(BINS)]
    total_mass = sum(mass)
    mass = [m / total_mass for m in mass]
    pseudo = [0.01 * (0.1 + rng.random()) if inside else 0.0 for inside in support]
    rows = []
    for interval in intervals:
        weight = rng.random()
        rows.append((interval.lo, interval.hi, interval.lo_share, interval.hi_share, weight))
    total = sum(pseudo) + sum(row[-1] for row in rows)
    assert _sweep(mass, rows, pseudo, total, support) == pytest.approx(
        _full_grid_sweep(mass, rows, pseudo, total, support), rel=1e-9, abs=1e-12
    )
