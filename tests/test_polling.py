"""Poll policies: the baselines, and how LearnedPolling places and spaces polls and learns.

These are plain synchronous tests: a policy is pure bookkeeping. ``drive`` plays one song at
a time against a policy exactly as the scheduler does (decide from the submission, poll,
decide from the moment the poll was sent...), so the learning can be checked on known
completion times without any clock.
"""

from __future__ import annotations

import random
import statistics
from typing import Any

import pytest

from aimlmusic import (
    ExponentialBackoff,
    FixedInterval,
    GenerationStatus,
    LearnedPolling,
    PollPolicy,
    PollState,
)
from aimlmusic._polling import default_policy, is_waiting

GENERATING = GenerationStatus.GENERATING
QUEUED = GenerationStatus.QUEUED


def drive(
    policy: LearnedPolling, duration: float, *, start: float = 0.0, **context: Any
) -> tuple[int, float]:
    """Play one song finishing ``duration`` s after submission; return (polls, lag).
    ``context`` is what the scheduler would add to every decision (budget_rate, ...)."""
    submitted = start
    state = PollState(submitted_at=submitted, now=submitted, **context)
    polls, last_unfinished = 0, None
    while True:
        at = state.now + policy.next_delay(state)
        polls += 1
        if at - submitted >= duration:
            after = last_unfinished if last_unfinished is not None else submitted
            policy.observe_finished(submitted, None, after, at)
            return polls, at - submitted - duration
        last_unfinished = at
        state = PollState(
            submitted_at=submitted,
            now=at,
            polls=polls,
            status=GENERATING,
            last_poll_at=at,
            **context,
        )


def first_poll(policy: PollPolicy) -> float:
    """Seconds from submission to a fresh song's first poll."""
    return policy.next_delay(PollState(submitted_at=0.0, now=0.0))


# --------------------------------------------------------------------------- baselines


def test_fixed_interval_is_the_documented_loop() -> None:
    """FixedInterval(10, first=0) polls at once, then every 10 s."""
    policy = FixedInterval(10.0, first=0.0)
    assert first_poll(policy) == 0.0
    assert policy.next_delay(PollState(0.0, now=40.0, polls=4)) == 10.0


def test_exponential_backoff_grows_and_caps_without_overflow() -> None:
    """ExponentialBackoff gives 1, 1.5, 2.25... s, capped at 20 s even after 10,000 polls."""
    policy = ExponentialBackoff()
    delays = [policy.next_delay(PollState(0.0, now=0.0, polls=n)) for n in range(12)]
    assert delays[:3] == [1.0, 1.5, 2.25]
    assert max(delays) == 20.0
    assert policy.next_delay(PollState(0.0, now=0.0, polls=10_000)) == 20.0


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: FixedInterval(0.0), "interval must be positive"),
        (lambda: FixedInterval(1.0, first=-1.0), "first must not be negative"),
        (lambda: ExponentialBackoff(initial=0.0), "initial must be positive"),
        (lambda: ExponentialBackoff(factor=0.5), "factor must be at least 1"),
        (lambda: LearnedPolling(lag_ratio=0.0), "lag_ratio must be in"),
        (lambda: LearnedPolling(max_polls=1.0), "max_polls must be more than 1"),
        (lambda: LearnedPolling(prior=(60.0, 50.0)), "prior must be"),
        (lambda: LearnedPolling(min_interval=5.0, max_interval=1.0), "min_interval"),
    ],
)
def test_bad_parameters_are_refused_with_their_value(factory: object, message: str) -> None:
    """Each policy refuses nonsense parameters, naming the parameter."""
    with pytest.raises(ValueError, match=message):
        factory()  # type: ignore[operator]


def test_every_policy_satisfies_the_protocol_and_the_default_learns() -> None:
    """The three policies are PollPolicy instances; default_policy() is a LearnedPolling."""
    for policy in (FixedInterval(), ExponentialBackoff(), LearnedPolling()):
        assert isinstance(policy, PollPolicy)
    assert isinstance(default_policy(), LearnedPolling)
    assert default_policy() is not default_policy()  # each client learns on its own


def test_waiting_statuses_are_the_queued_ones() -> None:
    """queued and the undocumented waiting mean 'not started'; other statuses do not."""
    assert is_waiting(QUEUED)
    assert is_waiting(GenerationStatus("waiting"))
    assert not is_waiting(GENERATING)
    assert not is_waiting(GenerationStatus("processing"))
    assert not is_waiting(None)


# --------------------------------------------------------------------------- learned polling


def test_cold_start_polls_first_just_after_the_documented_50_seconds() -> None:
    """Before any song finished, all but two scouts are first polled at ~50 s x (1 + ratio);
    the first scout at 5 s (the ladder), the second at 40 s."""
    policy = LearnedPolling(seed=1)
    # The service answers every submission "queued": that must not stop the scouts.
    delays = [policy.next_delay(PollState(submitted_at=t, now=t, status=QUEUED)) for t in range(50)]
    scouts, others = delays[:2], delays[2:]
    assert scouts == [pytest.approx(5.0), pytest.approx(40.0)]  # 0.1 and 0.8 x the prior's 50 s
    assert all(50.0 < d < 52.0 for d in others)
    assert len(set(others)) > 1  # jittered, so songs submitted together do not poll together


def test_the_first_scout_climbs_a_ladder_doubling_up_to_the_other_scouts() -> None:
    """The ladder scout is polled at 5, 10, 20 and 40 s, then every 5 % like any scout."""
    policy = LearnedPolling(seed=1)
    at = policy.next_delay(PollState(submitted_at=0.0, now=0.0, status=QUEUED))
    times = [at]
    for polls in range(1, 6):
        at += policy.next_delay(PollState(0.0, now=at, polls=polls, status=GENERATING))
        times.append(at)
    assert times[:4] == [pytest.approx(t) for t in (5.0, 10.0, 20.0, 40.0)]
    assert times[4] == pytest.approx(42.0)  # 5 % of 40 s
    assert times[5] == pytest.approx(44.1)


def test_a_scout_that_finishes_early_brings_everyone_s_first_poll_forward() -> None:
    """A scout seen running at 40 s and done at 42 s (the prior says 50-60 s) moves the first
    poll to ~43 s."""
    policy = LearnedPolling(seed=2)
    policy.next_delay(PollState(submitted_at=-1.0, now=-1.0, status=QUEUED))  # the ladder
    scout = policy.next_delay(PollState(submitted_at=0.0, now=0.0, status=QUEUED))
    assert scout == pytest.approx(40.0)
    epoch = policy.replan_epoch
    policy.next_delay(PollState(submitted_at=0.0, now=scout, polls=1, status=GENERATING))
    policy.observe_finished(0.0, None, scout, 42.0)
    assert policy.replan_epoch != epoch  # the scheduler re-plans first polls already set
    later = policy.next_delay(PollState(submitted_at=100.0, now=100.0))
    assert 42.0 < later < 44.0


def test_a_service_far_faster_than_the_prior_shows_on_the_ladder() -> None:
    """The ladder scout, running at 5 and 10 s, is seen done at 20 s: the first poll moves
    to ~20.6 s at once (not the prior's 51.5 s, nor after the other scouts' 40 s)."""
    policy = LearnedPolling(seed=3)
    at = policy.next_delay(PollState(submitted_at=0.0, now=0.0, status=QUEUED))
    before, polls = 0.0, 1
    while at < 20.0 - 1e-9:
        before = at
        at += policy.next_delay(PollState(0.0, now=at, polls=polls, status=GENERATING))
        polls += 1
    assert (before, at) == (pytest.approx(10.0), pytest.approx(20.0))
    epoch = policy.replan_epoch
    policy.observe_finished(0.0, None, before, at)
    assert policy.replan_epoch == epoch + 1
    assert first_poll(policy) == pytest.approx(20.6, abs=0.1)


def test_no_song_is_polled_sooner_than_the_budget_can_turn_its_slot_over() -> None:
    """20 songs in flight on 120 requests/min, each a submission and a poll: a service of
    ~10 s is first polled at 20 s (sooner would queue polls behind the budget), and the
    documented 50-60 s is left alone (its first poll is later than that anyway)."""
    fast = LearnedPolling(seed=4, jitter=0.0)
    fast.next_delay(PollState(submitted_at=0.0, now=0.0, status=QUEUED))
    fast.next_delay(PollState(0.0, now=5.0, polls=1, status=GENERATING))
    fast.observe_finished(0.0, None, 5.0, 10.0)
    assert first_poll(fast) < 11.0
    state = PollState(submitted_at=100.0, now=100.0, budget_rate=120.0, in_flight=20)
    assert fast.next_delay(state) == pytest.approx(20.0)
    # More songs in flight: a longer cycle; twice the rate: 10 s, and the first poll decides.
    state = PollState(submitted_at=100.0, now=100.0, budget_rate=120.0, in_flight=30)
    assert fast.next_delay(state) == pytest.approx(30.0)
    state = PollState(submitted_at=100.0, now=100.0, budget_rate=240.0, in_flight=20)
    assert fast.next_delay(state) == pytest.approx(10.3)
    documented = LearnedPolling(seed=4, jitter=0.0)
    for t in (0.0, 1.0):  # the two scouts
        documented.next_delay(PollState(submitted_at=t, now=t, status=QUEUED))
    state = PollState(submitted_at=100.0, now=100.0, budget_rate=120.0, in_flight=20)
    assert documented.next_delay(state) == pytest.approx(50.0 * 1.03)


def test_songs_outliving_the_prior_are_polled_sparsely_until_some_finish() -> None:
    """No song done by 55 s of a 50-60 s prior: polls go every ~10 % of the time, not 3 %."""
    policy = LearnedPolling(seed=3, jitter=0.0)
    spacings = []
    for t in range(20):
        state = PollState(submitted_at=float(t), now=t + 55.0, polls=2, status=GENERATING)
        spacings.append(policy.next_delay(state))
    assert spacings[0] == pytest.approx(55.0 * 0.03)  # one song running proves nothing
    assert spacings[-1] == pytest.approx(55.0 * 0.1)


def test_songs_outliving_the_prior_are_searched_no_faster_than_the_budget_rate() -> None:
    """20 songs running at 65 s on 60/min: each is polled every ~20 s (the budget's rate
    between them), not every 6.5 s (10 %), which would spend the minute before any ends."""
    policy = LearnedPolling(seed=4, jitter=0.0)
    spacings = []
    for t in range(20):
        state = PollState(
            submitted_at=float(t), now=t + 65.0, polls=2, status=GENERATING, budget_rate=60.0
        )
        spacings.append(policy.next_delay(state))
    # One request a second shared by 20 songs: one poll per song every 20 s.
    assert spacings[-1] == pytest.approx(20.0, rel=0.1)  # and a little straggler growth


def test_the_first_song_to_finish_after_the_prior_failed_sets_the_first_poll() -> None:
    """Songs still running at 65 s, one seen done between 71 and 72 s: the first poll moves
    to about 71 s and the policy asks the scheduler to re-plan (replan_epoch)."""
    policy = LearnedPolling(seed=5, jitter=0.0)
    for t in range(20):
        policy.next_delay(PollState(float(t), now=t + 65.0, polls=2, status=GENERATING))
    epoch = policy.replan_epoch
    policy.observe_finished(0.0, None, 71.0, 72.0)
    assert policy.replan_epoch == epoch + 1
    assert 70.0 <= first_poll(policy) <= 73.0


def long_wave(policy: LearnedPolling, start: float, count: int) -> None:
    """``count`` songs submitted a second apart, all running at their first poll (at the
    first-poll time), then seen done between 53 and 60 s."""
    first = policy.predicted_times()[0]
    for n in range(count):
        t = start + n
        policy.next_delay(PollState(t, now=t + first, polls=1, status=GENERATING))
    for n in range(count):
        t = start + n
        done = 53.0 + 7.0 * n / count
        policy.observe_finished(t, None, t + done - 1.0, t + done)


def test_one_wave_of_long_songs_does_not_raise_the_first_poll() -> None:
    """Eight songs all still running at their first poll, done at 53-60 s: the first poll
    stays (a fifth of first waves look like that by chance); twenty such songs raise it."""
    policy = LearnedPolling(seed=7, jitter=0.0)
    first = policy.predicted_times()[0]
    long_wave(policy, 0.0, 8)
    assert policy.predicted_times()[0] == pytest.approx(first, rel=0.01)
    long_wave(policy, 100.0, 12)
    assert policy.predicted_times()[0] > first * 1.02


def test_a_step_down_after_a_raise_goes_no_lower_than_before_it() -> None:
    """Raised by twenty long songs, then ten songs in a row done at their first poll: the
    first poll comes back down to where it was before the raise, not 15 % below it."""
    policy = LearnedPolling(seed=8, jitter=0.0)
    long_wave(policy, 0.0, 8)
    before = policy.predicted_times()[0]
    long_wave(policy, 100.0, 12)
    raised = policy.predicted_times()[0]
    assert raised > before * 1.02
    for n in range(10):
        t = 200.0 + n
        policy.observe_finished(t, None, t, t + raised)  # done at its first poll
    assert before * 0.99 <= policy.predicted_times()[0] < raised


def test_re_planning_teaches_the_policy_nothing() -> None:
    """Asking again about planned polls (replanning=True) moves neither the first-poll time
    nor the scouts: only real polls are observations."""
    policy = LearnedPolling(seed=6)
    before = (policy.predicted_times(), policy.replan_epoch, set(policy._scouts))
    for t in range(1, 30):
        asked = PollState(float(t), now=t + 52.0, polls=1, status=GENERATING, replanning=True)
        policy.next_delay(asked)
        policy.next_delay(PollState(float(t), now=t + 1.0, replanning=True))
    assert (policy.predicted_times(), policy.replan_epoch, set(policy._scouts)) == before


def test_later_polls_keep_the_lag_under_lag_ratio_of_the_time() -> None:
    """After the first poll, each spacing is at most lag_ratio of the time since submission."""
    policy = LearnedPolling(lag_ratio=0.03, jitter=0.1, seed=2)
    for elapsed in (52.0, 55.0, 58.0):
        state = PollState(0.0, now=elapsed, polls=2, status=GENERATING, last_poll_at=elapsed)
        delay = policy.next_delay(state)
        assert 0.9 * 0.03 * elapsed <= delay <= 0.03 * elapsed


def test_on_the_documented_workload_it_polls_about_four_times_within_the_lag_bound() -> None:
    """Songs of 50-60 s: after a warm-up, < 4.6 polls per song and lag <= 3.1 % of each."""
    rng = random.Random(3)
    policy = LearnedPolling(seed=3)
    for _ in range(60):
        drive(policy, rng.uniform(50, 60))
    results = [(drive(policy, d), d) for d in (rng.uniform(50, 60) for _ in range(300))]
    polls = statistics.fmean(p for (p, _), _ in results)
    shares = sorted(lag / d for (_, lag), d in results)
    assert polls < 4.6, polls
    assert shares[int(0.95 * len(shares))] <= 0.031, shares[-10:]


def test_it_learns_a_much_faster_service() -> None:
    """Songs of 20-30 s (the prior says 50-60): within 60 songs the first poll is < 26 s."""
    rng = random.Random(4)
    policy = LearnedPolling(seed=4)
    for _ in range(60):
        drive(policy, rng.uniform(20, 30))
    assert first_poll(policy) < 26.0
    lags = [drive(policy, d)[1] / d for d in (rng.uniform(20, 30) for _ in range(100))]
    assert statistics.median(lags) < 0.03


def test_it_learns_a_much_slower_service_at_once() -> None:
    """Songs of 90-100 s: after ten, the first poll waits until about 90 s."""
    rng = random.Random(5)
    policy = LearnedPolling(seed=5)
    durations = [rng.uniform(90, 100) for _ in range(10)]
    for duration in durations:
        drive(policy, duration)
    assert 85.0 < first_poll(policy) <= 100.0
    polls = [drive(policy, d)[0] for d in (rng.uniform(90, 100) for _ in range(50))]
    assert statistics.fmean(polls) < 6.0


def test_one_slow_song_does_not_raise_the_first_poll_for_everyone() -> None:
    """Ten songs running at their first poll, one of them done at 95 s: the first poll stays."""
    policy = LearnedPolling(seed=6)
    for submitted in range(10):
        planned = policy.next_delay(PollState(submitted_at=submitted, now=submitted))
        at = submitted + planned
        policy.next_delay(PollState(submitted, now=at, polls=1, status=GENERATING, last_poll_at=at))
    # The first song submitted finishes first; that says nothing about the others.
    policy.observe_finished(0.0, None, 93.0, 95.0)
    assert first_poll(policy) < 55.0


def test_a_gap_between_two_modes_is_not_polled_through() -> None:
    """With songs of ~55 s or ~110 s, a song still running at 61 s is not polled at 62 s."""
    rng = random.Random(6)
    policy = LearnedPolling(seed=6)
    for _ in range(200):
        drive(policy, rng.uniform(53, 57) if rng.random() < 0.5 else rng.uniform(105, 115))
    state = PollState(0.0, now=61.0, polls=5, status=GENERATING, last_poll_at=61.0)
    assert policy.next_delay(state) >= 25.0


def test_a_queued_song_is_not_polled_before_it_could_have_generated() -> None:
    """A song seen queued at 60 s is next polled after about the shortest generation time."""
    policy = LearnedPolling(seed=7)
    state = PollState(0.0, now=60.0, polls=1, status=QUEUED, queued_at=60.0, last_poll_at=60.0)
    assert policy.next_delay(state) >= 45.0


def test_a_busy_budget_widens_the_spacing() -> None:
    """With the budget over its allowance, polls are spaced wider than when it is idle."""
    idle, busy = LearnedPolling(jitter=0.0), LearnedPolling(jitter=0.0)
    common = {"submitted_at": 0.0, "now": 55.0, "polls": 3, "status": GENERATING}
    assert busy.next_delay(PollState(**common, budget_load=1.5)) > 1.5 * idle.next_delay(
        PollState(**common, budget_load=0.2)
    )


def test_songs_cost_no_more_polls_than_the_budget_sustains() -> None:
    """20 songs of 50-60 s in flight on 75 requests/min: ~2.1 polls each (0.9 of it), not ~3.7."""
    rng = random.Random(11)
    tight = {"budget_rate": 75.0, "in_flight": 20}
    for context in ({}, tight):
        policy = LearnedPolling(seed=11)
        for _ in range(60):
            drive(policy, rng.uniform(50, 60), **context)
        polls = [drive(policy, rng.uniform(50, 60), **context)[0] for _ in range(300)]
        # 20 songs per ~55 s is ~21.8 songs/min; 0.9 * 75 / 21.8 = 3.1 requests per song,
        # one of them the submission: 2.1 polls.
        if context:
            assert statistics.fmean(polls) <= 2.2, statistics.fmean(polls)
        else:
            assert statistics.fmean(polls) >= 3.3, statistics.fmean(polls)


def test_a_budget_with_room_or_unknown_leaves_the_spacing_at_lag_ratio() -> None:
    """With the budget unknown, or ample for the songs in flight, spacing stays lag_ratio."""
    rng = random.Random(12)
    policy = LearnedPolling(jitter=0.0, seed=12)
    for _ in range(60):
        drive(policy, rng.uniform(50, 60))
    common = {"submitted_at": 0.0, "now": 55.0, "polls": 3, "status": GENERATING}
    for context in ({}, {"budget_rate": 120.0, "in_flight": 20}, {"budget_rate": 120.0}):
        assert policy.next_delay(PollState(**common, **context)) == pytest.approx(0.03 * 55.0)
    crowded = PollState(**common, budget_rate=120.0, in_flight=60)
    assert policy.next_delay(crowded) > 3 * 0.03 * 55.0


def test_stragglers_are_polled_less_and_less_often_up_to_max_interval() -> None:
    """Far past every completion seen, the spacing grows but never beyond max_interval."""
    rng = random.Random(8)
    policy = LearnedPolling(seed=8, max_interval=20.0)
    for _ in range(50):
        drive(policy, rng.uniform(50, 60))
    spacing = [
        policy.next_delay(PollState(0.0, now=t, polls=9, status=GENERATING, last_poll_at=t))
        for t in (65.0, 120.0, 600.0)
    ]
    assert spacing[0] < spacing[1] <= spacing[2] == 20.0


def test_chance_done_grows_with_time_and_is_zero_while_queued() -> None:
    """The chance that a poll finds the song done rises with time; a queued song has none."""
    rng = random.Random(9)
    policy = LearnedPolling(seed=9)
    for _ in range(100):
        drive(policy, rng.uniform(50, 60))
    chances = [
        policy.chance_done(PollState(0.0, now=t, polls=1, status=GENERATING, last_poll_at=51.0))
        for t in (52.0, 55.0, 59.0, 61.0)
    ]
    assert chances == sorted(chances)
    assert chances[0] < 0.3 < chances[-1]
    queued = PollState(0.0, now=58.0, polls=1, status=QUEUED, queued_at=51.0)
    assert policy.chance_done(queued) == 0.0


def test_what_it_learns_stays_bounded() -> None:
    """After 5,000 songs (and 5,000 starts) the policy keeps at most ``window`` of each."""
    rng = random.Random(10)
    policy = LearnedPolling(window=64, seed=10)
    for n in range(5_000):
        policy.observe_started(float(n), float(n) + 5.0, float(n) + 6.0)
        drive(policy, rng.uniform(50, 60), start=float(n))
    assert policy.observations == 64
    assert len(policy._total) <= 64
    assert len(policy._starts) <= 64


def test_repr_shows_what_it_believes() -> None:
    """The repr names the lag ratio, the observations and the first-poll time."""
    text = repr(LearnedPolling())
    assert "lag_ratio=0.03," in text
    assert "observations=0" in text
    assert "first_poll=51.5s" in text


def test_a_zero_prior_weight_is_refused_rather_than_crashing_later() -> None:
    """prior_weight=0 would leave nothing to predict the first songs from: refused up front."""
    with pytest.raises(ValueError, match="prior_weight and window must be >= 1, got 0"):
        LearnedPolling(prior_weight=0)
