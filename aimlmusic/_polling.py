"""When to poll a generation next.

A :class:`PollPolicy` turns what is known about one song (:class:`PollState`) into the delay
before its next poll, and may learn from what polls saw (``observe_*``). Every poll of a
client (``wait``, ``generate`` and ``generate_many``) goes through one scheduler that asks one
policy.

Three policies ship:

- :class:`LearnedPolling` (the default): an estimator of how long songs take
  (:mod:`aimlmusic._estimator`) and a planner that turns its estimate and the polls the
  request budget sustains into a schedule (:mod:`aimlmusic._planner`);
- :class:`FixedInterval` is the documented example's loop (``FixedInterval(10, first=0)``), the
  baseline for every comparison;
- :class:`ExponentialBackoff` is the classic growing-interval poller.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import attrs

from . import _limits
from ._estimator import CompletionEstimator, Snapshot
from ._models import GenerationStatus
from ._planner import MIN_GAP, WINDOW, Schedule, plan

__all__ = [
    "ExponentialBackoff",
    "FixedInterval",
    "LearnedPolling",
    "PlansWithinBudget",
    "PollPolicy",
    "PollState",
    "default_policy",
    "is_waiting",
]

#: Statuses meaning "not started yet": the documented one, and the one the documented
#: example's loop also expects.
_WAITING_STATUSES = frozenset({"queued", "waiting"})


def is_waiting(status: GenerationStatus | None) -> bool:
    """True for a status that means the song has not started generating yet."""
    # "waiting" is no documented member: an undocumented status keeps its own text, read
    # as the documented ones are (ASCII letter case and JSON whitespace forgiven).
    return status is not None and status.word in _WAITING_STATUSES


@attrs.frozen
class PollState:
    """What a policy knows about one song, in API seconds on the client's clock.

    ``now`` is the moment the decision is taken from: when the submission returned, when the
    last poll was sent (the scheduler spaces polls by when the server saw them), or the
    present when a planned poll is reconsidered. ``polls`` is how many polls were made;
    ``status`` is the last status seen (``None`` before any); ``last_poll_at`` is when the last
    poll that saw the song unfinished was sent (``None`` before any); ``queued_at`` is when the
    last poll that saw it ``queued`` was sent (``None`` if none did): the song had its whole
    generation ahead of it then. ``budget_rate`` is the requests per minute the request
    budget sustains now and ``in_flight`` how many songs the client keeps submitted and
    unfinished (both 0 when unknown): together with how long songs take, they say how many
    polls per song the budget can pay for. ``phase`` is a number in ``[0, 1)`` drawn once per
    song: a policy may use it to spread songs' polls (see :meth:`Schedule.after`).
    """

    submitted_at: float
    now: float
    polls: int = 0
    status: GenerationStatus | None = None
    last_poll_at: float | None = None
    queued_at: float | None = None
    budget_rate: float = 0.0
    in_flight: int = 0
    phase: float = 0.0

    @property
    def reference_at(self) -> float:
        """Where the song's completion time is counted from: the last poll that saw it
        queued, else its submission."""
        return self.queued_at if self.queued_at is not None else self.submitted_at

    @property
    def seen_running_at(self) -> float:
        """When the song was last seen unfinished (its reference, before any poll)."""
        if self.last_poll_at is None:
            return self.reference_at
        return max(self.last_poll_at, self.reference_at)


@runtime_checkable
class PollPolicy(Protocol):
    """Decides when to poll; may learn from what polls see.

    Times are API seconds on the client's clock. The scheduler reports, for songs whose
    submission it saw: ``observe_running`` for every poll that found a song unfinished,
    ``observe_finished`` once per song that *completed* (a failed generation says nothing
    about how long a good one takes), and ``forget`` for a song that ended otherwise.
    ``reference_at`` is :attr:`PollState.reference_at`. When ``version`` changes, the
    scheduler asks again about every poll it has planned.
    """

    @property
    def version(self) -> int:
        """Changes whenever ``next_delay`` may answer differently for the same state."""
        ...

    def next_delay(self, state: PollState) -> float:
        """Seconds from ``state.now`` until the next poll of this song (0, or less: now).

        A delay that is not a finite number (NaN, infinity), or an exception, ends the
        song with a :class:`~aimlmusic.ConfigurationError` naming its generation: it is
        never polled "never"."""
        ...

    def chance_done(self, state: PollState) -> float:
        """The chance that a poll at ``state.now`` finds the song finished; when the request
        budget is short, the scheduler polls the likeliest songs first."""
        ...

    def observe_running(self, song: str, reference_at: float, seen_at: float) -> None:
        """Song ``song`` was still running at ``seen_at``."""
        ...

    def observe_finished(self, song: str, reference_at: float, after: float, by: float) -> None:
        """Song ``song`` completed between ``after`` (the last poll that saw it unfinished,
        or its reference) and ``by`` (the poll that saw it finished)."""
        ...

    def forget(self, song: str) -> None:
        """Song ``song`` ended without completing (failed, timed out, abandoned)."""
        ...


@runtime_checkable
class PlansWithinBudget(Protocol):
    """A policy that fits each song's polls to its share of the request budget: ``headroom``
    of the rate :attr:`PollState.budget_rate` reports, shared by :attr:`PollState.in_flight`
    songs (:class:`LearnedPolling`).

    For such a policy a batch lets the polls waiting for the budget when a slot came free go
    before the next song, and lets only part of a wave go at once (:mod:`aimlmusic._pacing`):
    the polls it planned then go when planned. A policy whose polls do not shrink with the
    budget (a fixed interval) would spend what was held on more polls, and leave slots
    empty meanwhile, so for it submissions go first.
    """

    @property
    def headroom(self) -> float:
        """The share of the request budget its plans use."""
        ...


class _LearnsNothing:
    """The observing half of :class:`PollPolicy` for policies that do not learn."""

    @property
    def version(self) -> int:
        """Always 0: a policy that learns nothing never changes its mind."""
        return 0

    def chance_done(self, state: PollState) -> float:
        """Unknown: 0.0 for every song, so the longest waiting goes first."""
        return 0.0

    def observe_running(self, song: str, reference_at: float, seen_at: float) -> None:
        """Ignored."""

    def observe_finished(self, song: str, reference_at: float, after: float, by: float) -> None:
        """Ignored."""

    def forget(self, song: str) -> None:
        """Ignored."""


@attrs.frozen
class FixedInterval(_LearnsNothing):
    """Poll after ``first`` seconds, then every ``interval`` seconds; learns nothing.

    ``FixedInterval(interval=10.0, first=0.0)`` is the documented example's loop.
    """

    interval: float = 10.0
    first: float = 0.0

    def __attrs_post_init__(self) -> None:
        # Finite: a song polled "never again" would keep its caller waiting for ever.
        if not 0 < self.interval < math.inf:
            raise ValueError(f"interval must be positive and finite, got {self.interval!r}")
        if not 0 <= self.first < math.inf:
            raise ValueError(f"first must be finite and not negative, got {self.first!r}")

    def next_delay(self, state: PollState) -> float:
        """``first`` before the first poll, ``interval`` after every other."""
        return self.first if state.polls == 0 else self.interval


@attrs.frozen
class ExponentialBackoff(_LearnsNothing):
    """Wait ``initial`` seconds, then ``factor`` times longer before each further poll, never
    more than ``maximum``; learns nothing. The defaults (1 s, x1.5, 20 s) are those of
    google-api-core's long-running-operation poller."""

    initial: float = 1.0
    factor: float = 1.5
    maximum: float = 20.0

    def __attrs_post_init__(self) -> None:
        if not 0 < self.initial < math.inf:
            raise ValueError(f"initial must be positive and finite, got {self.initial!r}")
        if not 1 <= self.factor < math.inf:
            raise ValueError(f"factor must be at least 1 and finite, got {self.factor!r}")
        if not self.initial <= self.maximum < math.inf:
            raise ValueError(f"maximum must be finite and at least initial, got {self.maximum!r}")

    def next_delay(self, state: PollState) -> float:
        """``min(maximum, initial * factor ** polls)``."""
        if self.factor == 1:
            return self.initial
        # Past this many polls the delay is capped anyway; avoids float overflow.
        cap = math.log(self.maximum / self.initial) / math.log(self.factor) + 1
        exponent = min(float(state.polls), cap)
        return float(min(self.maximum, self.initial * self.factor**exponent))


#: Lag share below which one more poll is not worth its request: the lag target.
DEFAULT_LAG_TARGET = 0.025
#: Share of the request budget that submissions and polls may plan to use; the rest absorbs
#: bursts of completions and retries.
DEFAULT_HEADROOM = 0.9
#: Budget rates are rounded down to steps of this ratio (3 %), so that schedules are cached
#: and reused while the rate wavers.
_RATE_STEP = 1.03


class LearnedPolling:
    """Polls each song on the schedule that notices it soonest for the requests it can spend.

    An estimator learns the distribution of completion times from what polls see (songs
    found finished between two polls, at their first poll, or still running), starting from
    the documented 50-60 s, and forgets old songs so that a drifting service is followed.
    A planner turns its latest snapshot into a schedule: polls ``(1 + share)`` apart over the
    completion times of most songs, with ``share`` as small as the request budget allows
    (never below ``lag_target``; a finished song is then noticed within that share of its
    duration). The budget allows ``headroom`` of its rate, shared by the songs in flight: a
    submission and the polls of each song per song's time in flight (from its submission
    until a poll sees it finished).

    One instance is meant to be shared by every song of a client (that is how it learns); it
    is not thread-safe, which is fine within one event loop.
    """

    def __init__(
        self,
        *,
        lag_target: float = DEFAULT_LAG_TARGET,
        headroom: float = DEFAULT_HEADROOM,
        prior: tuple[float, float] = _limits.DOCUMENTED_DURATION_RANGE,
    ) -> None:
        if not 0 < lag_target <= 1:
            raise ValueError(f"lag_target must be in (0, 1], got {lag_target!r}")
        if not 0 < headroom <= 1:
            raise ValueError(f"headroom must be in (0, 1], got {headroom!r}")
        self.lag_target = lag_target
        self.headroom = headroom
        self._estimator = CompletionEstimator(prior)

    @property
    def prior(self) -> tuple[float, float]:
        """The completion times assumed before any song is seen (seconds)."""
        return self._estimator.prior

    @property
    def snapshot(self) -> Snapshot:
        """The current estimate of completion times (immutable)."""
        return self._estimator.snapshot

    @property
    def version(self) -> int:
        """The snapshot's version: it changes when an observation changes the estimate."""
        return self._estimator.snapshot.version

    def schedule(self, budget_rate: float = 0.0, in_flight: int = 0) -> Schedule:
        """The schedule for songs of a client with this budget rate and songs in flight
        (0: unknown, no budget limit)."""
        rate = peak = math.inf
        if 0 < budget_rate < math.inf and in_flight > 0:
            # Requests per second each song in flight may spend.
            rate = self.headroom * budget_rate / 60.0 / in_flight
            rate = _RATE_STEP ** math.floor(math.log(rate, _RATE_STEP))
            # In any window, at most the song's headroom share of the budget's minute, as
            # for the average: when the songs in flight move together (a wave after a change
            # of pace), their busiest windows coincide, and planned to the full minute they
            # would spend it in half of it, then wait out the rest, finished songs unseen.
            peak = rate * WINDOW
        return plan(self._estimator.snapshot, rate, self.lag_target, peak)

    def next_delay(self, state: PollState) -> float:
        """Seconds until the schedule's next poll after the last one that saw the song
        running (0 when it is already due)."""
        reference = state.reference_at
        schedule = self.schedule(state.budget_rate, state.in_flight)
        # A song seen queued restarts its clock: it explores only from its submission.
        explore = state.queued_at is None
        due = reference + schedule.after(
            state.seen_running_at - reference, state.phase, explore=explore
        )
        if state.last_poll_at is not None:
            due = max(due, state.last_poll_at + MIN_GAP)
        return max(0.0, due - state.now)

    def chance_done(self, state: PollState) -> float:
        """P(finished by now | running when last seen), by the current snapshot."""
        snapshot = self._estimator.snapshot
        reference = state.reference_at
        before = snapshot.done_by(state.seen_running_at - reference)
        if before >= 1.0:
            return 1.0
        return max(0.0, (snapshot.done_by(state.now - reference) - before) / (1.0 - before))

    def observe_running(self, song: str, reference_at: float, seen_at: float) -> None:
        """Teach the estimator that ``song`` was running ``seen_at - reference_at`` in."""
        self._estimator.observe_running(
            song, max(0.0, seen_at - reference_at), at=seen_at, since=reference_at
        )

    def observe_finished(self, song: str, reference_at: float, after: float, by: float) -> None:
        """Teach the estimator that ``song`` finished in ``(after, by]``."""
        start = max(0.0, after - reference_at)
        self._estimator.observe_finished(
            song, start, max(start, by - reference_at), at=by, since=reference_at
        )

    def forget(self, song: str) -> None:
        """Stop counting ``song`` as running."""
        self._estimator.forget(song)

    def export_estimate(self) -> dict[str, Any]:
        """The learned completion times as JSON-able data (see
        :meth:`CompletionEstimator.export`), for another client to adopt."""
        return self._estimator.export()

    def adopt_estimate(self, estimate: Mapping[str, Any]) -> bool:
        """Start from another client's exported estimate instead of the documented prior;
        False (nothing changed) if it cannot be read."""
        return self._estimator.adopt(estimate)

    def __repr__(self) -> str:
        snapshot = self._estimator.snapshot
        return (
            f"LearnedPolling(lag_target={self.lag_target:g}, version={snapshot.version}, "
            f"songs={snapshot.songs:.1f}, median={snapshot.quantile(0.5):.1f}s)"
        )


def default_policy() -> PollPolicy:
    """The policy a client uses when none is given: a fresh :class:`LearnedPolling`."""
    return LearnedPolling()
