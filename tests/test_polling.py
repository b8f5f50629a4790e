"""Poll policies: the baselines, and LearnedPolling as the scheduler drives it.

These are plain synchronous tests: a policy is pure bookkeeping. ``drive`` plays one song at
a time against a policy exactly as the scheduler does (decide from the submission, poll,
report what the poll saw, decide from the moment the poll was sent...), so the learning can
be checked on known completion times without any clock. The estimator and the planner have
their own tests (``test_estimator.py``, ``test_planner.py``).
"""

from __future__ import annotations

import math
import random
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
from aimlmusic._planner import _busiest_window, _time_in_flight
from aimlmusic._polling import default_policy, is_waiting

GENERATING = GenerationStatus.GENERATING
QUEUED = GenerationStatus.QUEUED


def drive(
    policy: PollPolicy,
    duration: float,
    *,
    start: float = 0.0,
    song: str = "song",
    **context: Any,
) -> tuple[int, float]:
    """Play one song finishing ``duration`` s after submission; return (polls, lag).
    ``context`` is what the scheduler would add to every decision (budget_rate, phase...)."""
    submitted = start
    state = PollState(submitted_at=submitted, now=submitted, **context)
    polls, last_unfinished = 0, None
    while True:
        at = state.now + policy.next_delay(state)
        polls += 1
        if at - submitted >= duration:
            after = last_unfinished if last_unfinished is not None else submitted
            policy.observe_finished(song, submitted, after, at)
            return polls, at - submitted - duration
        last_unfinished = at
        policy.observe_running(song, submitted, at)
        state = PollState(
            submitted_at=submitted,
            now=at,
            polls=polls,
            status=GENERATING,
            last_poll_at=at,
            **context,
        )


def first_poll(policy: PollPolicy, *, phase: float = 0.0) -> float:
    """Seconds from submission to a fresh song's first poll."""
    return policy.next_delay(PollState(submitted_at=0.0, now=0.0, phase=phase))


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
        (lambda: FixedInterval(math.inf), "interval must be positive and finite"),
        (lambda: FixedInterval(1.0, first=-1.0), "first must be finite and not negative"),
        (lambda: FixedInterval(1.0, first=math.nan), "first must be finite"),
        (lambda: ExponentialBackoff(initial=0.0), "initial must be positive"),
        (lambda: ExponentialBackoff(factor=0.5), "factor must be at least 1"),
        (lambda: ExponentialBackoff(maximum=math.inf), "maximum must be finite"),
        (lambda: LearnedPolling(lag_target=0.0), "lag_target must be in"),
        (lambda: LearnedPolling(headroom=1.5), "headroom must be in"),
        (lambda: LearnedPolling(prior=(60.0, 50.0)), "prior must be"),
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


def test_waiting_is_read_in_any_letter_case() -> None:
    """The undocumented waiting is waiting in any letter case, as documented statuses are."""
    assert is_waiting(GenerationStatus("WAITING"))
    assert is_waiting(GenerationStatus(" Waiting "))


@pytest.mark.parametrize("text", ["queued\xa0", "QUEUED\u2028", "\u3000waiting", "waiting\x1c"])
def test_waiting_forgives_only_what_the_documented_statuses_do(text: str) -> None:
    """Only ASCII letter case and JSON whitespace are forgiven: other look-alikes of a
    waiting status are undocumented statuses, not waiting (Unicode strip() took them)."""
    assert not is_waiting(GenerationStatus(text))


# --------------------------------------------------------------------------- learned polling


def test_cold_start_polls_first_just_after_the_documented_50_seconds() -> None:
    """Before any song, the plan is the prior's: first poll within a few % after 50 s."""
    first = first_poll(LearnedPolling(), phase=0.5)
    assert 50.0 < first <= 50.0 * 1.06


def test_on_the_documented_workload_it_stays_within_the_lag_target() -> None:
    """With no budget limit, 200 songs of 50-60 s: lag within ~lag target, 4-5 polls each
    (a chain 2.5 % apart over 50-60 s is up to 8 polls; most songs finish half way)."""
    policy = LearnedPolling()
    rng = random.Random(1)
    shares, counts = [], []
    for n in range(200):
        duration = rng.uniform(50.0, 60.0)
        polls, lag = drive(policy, duration, start=n * 70.0, song=str(n), phase=rng.random())
        if n >= 40:  # once learned
            shares.append(lag / duration)
            counts.append(polls)
    shares.sort()
    assert shares[int(0.95 * len(shares))] <= 0.03
    assert sum(counts) / len(counts) <= 5.25


def test_it_learns_a_much_faster_service() -> None:
    """Songs of 10-12 s against the 50-60 s prior: the explorers' ladder and the songs found
    done at their first poll bring the first poll down near 10 s within a few dozen songs."""
    policy = LearnedPolling()
    rng = random.Random(2)
    for n in range(60):
        drive(policy, rng.uniform(10.0, 12.0), start=n * 100.0, song=str(n), phase=n / 60)
    assert 9.0 < first_poll(policy, phase=0.5) < 14.0


def test_it_learns_a_much_slower_service() -> None:
    """Songs of 100-110 s: songs seen still running push the plan past 100 s."""
    policy = LearnedPolling()
    rng = random.Random(3)
    for n in range(40):
        drive(policy, rng.uniform(100.0, 110.0), start=n * 200.0, song=str(n), phase=n / 40)
    assert 95.0 < first_poll(policy, phase=0.5) < 115.0


def test_a_tighter_budget_gives_fewer_polls_and_a_coarser_share() -> None:
    """The planner spends no more polls per song than the budget sustains."""
    policy = LearnedPolling()
    free = policy.schedule()
    tight = policy.schedule(budget_rate=120.0, in_flight=30)
    assert tight.polls < free.polls
    assert tight.share > free.share
    # 0.9 x 120/min over 30 songs, for each second a song is in flight (about 57 s here).
    in_flight = _time_in_flight(policy.snapshot, list(tight.times))
    assert 55.0 < in_flight < 65.0
    assert 1 + tight.polls <= 0.9 * 120 / 60 / 30 * in_flight


def test_songs_moving_together_plan_their_busiest_minute_within_the_headroom() -> None:
    """On 80-100 s songs, 20 in flight at 120/min: the polls and submissions the songs'
    busiest minutes expect stay within 90 % of the minute, not all 120."""
    policy = LearnedPolling()
    rng = random.Random(5)
    for n in range(60):
        drive(policy, rng.uniform(80.0, 100.0), start=n * 200.0, song=str(n), phase=n / 60)
    schedule = policy.schedule(budget_rate=120.0, in_flight=20)
    busiest = _busiest_window(policy.snapshot, list(schedule.times))
    assert 20 * busiest <= 0.9 * 120


def test_reading_never_changes_what_it_believes() -> None:
    """repr, schedule, next_delay and chance_done leave the snapshot and version as they were."""
    policy = LearnedPolling()
    drive(policy, 55.0, song="a", phase=0.3)
    version, snapshot = policy.version, policy.snapshot
    state = PollState(submitted_at=0.0, now=52.0, polls=1, last_poll_at=51.0, phase=0.1)
    before = (policy.next_delay(state), policy.chance_done(state))
    repr(policy)
    policy.schedule(budget_rate=120.0, in_flight=20)
    assert (policy.next_delay(state), policy.chance_done(state)) == before
    assert policy.version == version
    assert policy.snapshot is snapshot


def test_only_observations_change_the_version() -> None:
    """A finished song changes the version (the scheduler then replans); forget does not."""
    policy = LearnedPolling()
    version = policy.version
    policy.observe_finished("a", 0.0, 50.0, 52.0)
    assert policy.version != version
    version = policy.version
    policy.forget("never-seen")
    assert policy.version == version


def test_a_queued_song_restarts_its_clock() -> None:
    """A song seen queued at 100 s is next polled about a generation time later."""
    policy = LearnedPolling()
    state = PollState(
        submitted_at=0.0,
        now=100.0,
        polls=3,
        status=QUEUED,
        last_poll_at=100.0,
        queued_at=100.0,
        phase=0.5,
    )
    assert 150.0 < 100.0 + policy.next_delay(state) < 155.0


def test_chance_done_grows_with_time_and_is_zero_before_the_earliest_finish() -> None:
    """P(done by now | running at the last poll) rises from ~0 at 20 s to ~1 past 60 s."""
    policy = LearnedPolling()

    def chance(now: float) -> float:
        return policy.chance_done(PollState(submitted_at=0.0, now=now, polls=1, last_poll_at=1.0))

    values = [chance(t) for t in (20.0, 50.0, 55.0, 60.0, 70.0)]
    assert values == sorted(values)
    assert values[0] < 0.05
    assert values[-1] > 0.9


def test_explorers_are_polled_on_a_ladder_before_the_plan() -> None:
    """A song with a phase under the explorers' share is first polled at an eighth of the
    first planned poll, then a quarter, a half, and 10 % below it."""
    policy = LearnedPolling()
    planned = first_poll(policy, phase=0.5)
    state = PollState(submitted_at=0.0, now=0.0, phase=0.0)
    ladder = []
    for _ in range(4):
        at = state.now + policy.next_delay(state)
        ladder.append(at)
        state = PollState(submitted_at=0.0, now=at, polls=len(ladder), last_poll_at=at, phase=0.0)
    first = policy.schedule().times[0]
    assert ladder == pytest.approx([first / 8, first / 4, first / 2, first / 1.1])
    assert ladder[-1] < planned


def test_repr_shows_what_it_believes() -> None:
    """repr names the lag target, the version and the median completion time."""
    text = repr(LearnedPolling())
    assert "lag_target=0.025" in text
    assert "median=5" in text  # 5x s: the documented 50-60 s
