"""When to poll a generation next.

A :class:`PollPolicy` turns what is known about one song (:class:`PollState`) into the delay
before its next poll, and may learn from songs that started or finished (``observe_*``).
The scheduler and ``AsyncMusicClient.wait`` both ask the same policy.

Three policies ship:

- :class:`LearnedPolling` (the default) learns how long the service takes and polls each song
  first at the early edge of that distribution, then at a spacing that keeps the detection lag
  a small share of the song's duration;
- :class:`FixedInterval` is the documented example's loop (``FixedInterval(10, first=0)``), the
  baseline for every comparison;
- :class:`ExponentialBackoff` is the classic growing-interval poller.
"""

from __future__ import annotations

import bisect
import math
import random
import statistics
from collections import deque
from typing import Protocol, runtime_checkable

import attrs

from . import _limits
from ._models import GenerationStatus

__all__ = [
    "ExponentialBackoff",
    "FixedInterval",
    "LearnedPolling",
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
    return status is not None and status.value in _WAITING_STATUSES


@attrs.frozen
class PollState:
    """What a policy knows about one song, in API seconds on the client's clock.

    ``now`` is the moment the decision is taken from: when the submission returned, or when
    the last poll was sent (the scheduler spaces polls by when the server saw them, whatever
    their round trips took). ``polls`` is how many polls were already made; ``status`` is the
    last status seen (``None`` before the first poll, or the submission's own status);
    ``started_at`` is when the song was first seen ``generating`` (``None`` if not yet);
    ``last_poll_at`` is when the last poll that saw the song unfinished was sent;
    ``queued_at`` is when the last poll that saw the song ``queued`` was sent (``None`` if no
    poll did). ``budget_load`` is how much of the client's request budget
    is in use: requests sent in the last minute plus those waiting, over the allowance (0.0
    when unknown; above 1.0 means requests are queueing). ``budget_rate`` is the requests per
    minute the budget allows now and ``in_flight`` how many songs of the batch are submitted
    and unfinished (both 0 when unknown): together with how long songs take, they say how
    many polls per song the budget can sustain. ``replanning`` is set when the scheduler asks
    again about a poll it already planned (the policy learned something since): nothing was
    observed, so a learning policy must not learn from the question.
    """

    submitted_at: float
    now: float
    polls: int = 0
    status: GenerationStatus | None = None
    started_at: float | None = None
    last_poll_at: float | None = None
    queued_at: float | None = None
    budget_load: float = 0.0
    budget_rate: float = 0.0
    in_flight: int = 0
    replanning: bool = False


@runtime_checkable
class PollPolicy(Protocol):
    """Decides when to poll; may learn from what it observes.

    Times are API seconds on the client's clock. Callers report only what they saw:
    ``observe_started`` once per song, on the first poll that saw it ``generating``, and
    ``observe_finished`` once per song that *completed* (a failed generation says nothing
    about how long a good one takes).
    """

    def next_delay(self, state: PollState) -> float:
        """Seconds from ``state.now`` until the next poll of this song."""
        ...

    def observe_started(self, submitted_at: float, after: float, by: float) -> None:
        """A song submitted at ``submitted_at`` started generating between ``after`` and ``by``
        (the last poll that saw it queued, or its submission, and the first that saw it
        generating)."""
        ...

    def observe_finished(
        self, submitted_at: float, started_at: float | None, after: float, by: float
    ) -> None:
        """A song finished between ``after`` (last poll that saw it unfinished, or its
        submission) and ``by`` (the poll that saw it finished)."""
        ...


@attrs.frozen
class FixedInterval:
    """Poll after ``first`` seconds, then every ``interval`` seconds; learns nothing.

    ``FixedInterval(interval=10.0, first=0.0)`` is the documented example's loop.
    """

    interval: float = 10.0
    first: float = 0.0

    def __attrs_post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError(f"interval must be positive, got {self.interval!r}")
        if self.first < 0:
            raise ValueError(f"first must not be negative, got {self.first!r}")

    def next_delay(self, state: PollState) -> float:
        """``first`` before the first poll, ``interval`` after every other."""
        return self.first if state.polls == 0 else self.interval

    def observe_started(self, submitted_at: float, after: float, by: float) -> None:
        """Ignored: a fixed interval learns nothing."""

    def observe_finished(
        self, submitted_at: float, started_at: float | None, after: float, by: float
    ) -> None:
        """Ignored: a fixed interval learns nothing."""


@attrs.frozen
class ExponentialBackoff:
    """Wait ``initial`` seconds, then ``factor`` times longer before each further poll, never
    more than ``maximum``; learns nothing. The defaults (1 s, x1.5, 20 s) are those of
    google-api-core's long-running-operation poller."""

    initial: float = 1.0
    factor: float = 1.5
    maximum: float = 20.0

    def __attrs_post_init__(self) -> None:
        if self.initial <= 0:
            raise ValueError(f"initial must be positive, got {self.initial!r}")
        if self.factor < 1:
            raise ValueError(f"factor must be at least 1, got {self.factor!r}")
        if self.maximum < self.initial:
            raise ValueError(f"maximum must be at least initial, got {self.maximum!r}")

    def next_delay(self, state: PollState) -> float:
        """``min(maximum, initial * factor ** polls)``."""
        if self.factor == 1:
            return self.initial
        # Past this many polls the delay is capped anyway; avoids float overflow.
        cap = math.log(self.maximum / self.initial) / math.log(self.factor) + 1
        exponent = min(float(state.polls), cap)
        return float(min(self.maximum, self.initial * self.factor**exponent))

    def observe_started(self, submitted_at: float, after: float, by: float) -> None:
        """Ignored: back-off learns nothing."""

    def observe_finished(
        self, submitted_at: float, started_at: float | None, after: float, by: float
    ) -> None:
        """Ignored: back-off learns nothing."""


# --------------------------------------------------------------------------- learning


class _Window:
    """The most recent ``size`` values, with order statistics on demand (bounded memory)."""

    __slots__ = ("_sorted", "_values")

    def __init__(self, size: int) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._sorted: list[float] | None = None

    def __len__(self) -> int:
        return len(self._values)

    def add(self, value: float) -> None:
        self._values.append(value)
        self._sorted = None

    def sorted(self) -> list[float]:
        if self._sorted is None:
            self._sorted = sorted(self._values)
        return self._sorted


#: Step of the first-poll tracker, in log seconds: small, so it holds still on a steady
#: service (its noise is about +-1 % of the first-poll time).
_FIRST_STEP = 0.003
#: When, over at least _EVIDENCE_MIN recent first polls, the songs found already done
#: exceed the target by _EVIDENCE_Z standard deviations, the first poll steps down at once
#: (by _MIN_STEP_DOWN to _MAX_STEP_DOWN of itself) instead of creeping.
_EVIDENCE_MIN = 8
_EVIDENCE_Z = 3.5
#: How far from the first-poll time (in spacings) a first poll still counts as evidence.
_EVIDENCE_BAND = 4
_MAX_STEP_DOWN = 0.7
_MIN_STEP_DOWN = 0.95
_SCARCE_STEP_DOWN = 0.85
#: After _DONE_RUN first polls in a row that found the song done, made no later than
#: _RELEVANT spacings after the first-poll time, it steps down at once (later ones were held
#: back by the budget or brought forward after a step down: they find songs done anyway).
_DONE_RUN = 10
_RELEVANT = 1
#: How many spacings the data must lie above the first poll to raise it at once (only
#: ever considered when hardly any first poll finds its song done).
_SLOWER_GAP = 1
#: Spacings over which the density of completions after the first poll is measured.
_DENSITY_BAND = 3
#: Recent songs whose first polls decide whether the first-poll time jumps up or down.
_RECENT_FIRST_POLLS = 40

#: Until the first song finishes, up to this many songs at a time are *scouts*: polled from
#: _SCOUT_START of the prior's low end every _SCOUT_RATIO of their time, so that a service
#: faster than the prior shows before the first poll of everyone else is due.
_SCOUTS = 2
_SCOUT_START = 0.8
_SCOUT_RATIO = 0.05
#: The first scout of a client climbs a *ladder* before that: first polled at
#: _LADDER_START of the prior's low end, each poll then twice as late as the one before, up
#: to where the other scouts start. A service much faster than the prior shows within
#: seconds instead of at the prior's edge: measured with benchmarks/simulate_polling.py (16
#: runs, with the budget's cycle below), uniform 10-20 s lag p95 185 % -> 93 %, makespan
#: 1.66 -> 1.42 x optimum; 5-10 s 470 % -> 286 %. It costs three polls per client.
_LADDER_START = 0.1

#: Each song costs a submission and at least one poll, so the request budget lets a slot
#: turn over no faster than _CYCLE_REQUESTS requests per song allow: a song first polled
#: sooner than ``in_flight * _CYCLE_REQUESTS / rate`` after its submission only makes its
#: poll, and everyone else's, wait for the budget (and be seen still running).
_CYCLE_REQUESTS = 2.0

#: Before the first song finishes: when the prior gave the songs seen still running, taken
#: together, less than exp(-_REFUTED) of a chance to all be running, the prior is refuted
#: (the service is slower). From then until _SEARCH_UNTIL songs have finished, the scouts
#: go on every _SCOUT_RATIO of their time and the other songs are polled every
#: _SEARCH_RATIO of their time or more, so that between them they send no faster than
#: _SEARCH_SHARE of the budget's rate: the prior's dense spacing would spend the minute's
#: budget in a burst on songs far from done, and leave none for when they do finish. The
#: first song to finish sets the first-poll time, and polls already planned are re-planned
#: from it. Measured with benchmarks/simulate_polling.py (10 runs each, lag p95): uniform
#: 70-80 s 33 % -> 9 %, 90-120 s 14 % -> 10 %, 60-90 s 17 % -> 14 %, 55-65 s and 60-75 s
#: and the documented 50-60 s unchanged within noise.
_REFUTED = 4.0
_SEARCH_RATIO = 0.1
_SEARCH_SHARE = 1.0
_SEARCH_UNTIL = 3

#: Completion times needed before gaps in them may stretch the spacing.
_MASS_DATA = 20

#: From this many values on, a quantile ignores the single most extreme one.
_ROBUST_FROM = 5


#: Share of the request budget that songs' submissions and polls may take in the long run
#: before every song's spacing widens (the rest absorbs bursts and retries).
_SUSTAINED_SHARE = 0.9
#: The widest spacing the budget alone imposes, as a share of the time.
_WIDEST_SUSTAINED = 0.5


def _remember(memory: dict[float, float], key: float, value: float, size: int) -> None:
    """Store ``value`` under ``key``, forgetting the oldest entry beyond ``size``."""
    if len(memory) >= size:
        del memory[next(iter(memory))]
    memory[key] = value


def _low_quantile(values: list[float], p: float) -> float:
    """The ``p`` quantile of sorted ``values`` from below, never the single smallest value
    once there are several (one outlier must not drag every later song's first poll)."""
    n = len(values)
    index = math.floor(p * n)
    if n >= _ROBUST_FROM:
        index = max(1, index)
    return values[min(index, n - 1)]


def _high_quantile(values: list[float], p: float) -> float:
    """The ``p`` quantile of sorted ``values`` from above, ignoring the single largest."""
    n = len(values)
    from_top = math.floor((1 - p) * n)
    if n >= _ROBUST_FROM:
        from_top = max(1, from_top)
    return values[max(0, n - 1 - from_top)]


class LearnedPolling:
    """Polls each song near the moment it is predicted to finish, learning the timing online.

    How it decides, for a song submitted ``t`` seconds ago:

    * **First poll** at a learned time ``F`` after submission (spread by ``jitter`` of one
      spacing so songs submitted together do not poll together). ``F`` is tracked online so
      that about ``start_quantile`` of songs plus those finishing within the following
      spacing are already done when it comes: early enough that the first songs to finish are
      noticed within about ``lag_ratio`` of their duration, late enough not to waste polls.
      It starts from the documented 50-60 s (``prior``), jumps up at once when songs take
      clearly longer than that, and comes down quickly (faster with every song in a row
      found already done) when the service is faster. Each first poll is weighed by when it
      was actually made, so polls held back by a busy budget do not drag it down.
    * **Cold start**: until a song finishes, two *scouts* are polled from 0.8 of the
      prior's low end, every 5 % of their time: a scout seen done before ``F`` brings ``F``
      down to just after it at once, and the scheduler brings forward the first polls it
      had already planned (``replan_epoch``). When the songs seen still running make the
      prior implausible (the service is slower), the scouts go on and the other songs are
      polled every 10 % of their time or sparser, no faster between them than the budget's
      rate, until a few have finished (the prior's dense spacing would spend the minute's
      budget on songs far from done); the first to finish sets ``F``, and the scheduler
      re-plans every poll already planned. The first scout of a client starts lower still,
      on a *ladder* (a tenth of the prior's low end, then twice as late each time up to the
      other scouts), so that a service several times faster than the prior shows at once.
    * **Later polls** every ``lag_ratio * t`` seconds (less up to ``jitter`` of that, at
      random): a song that finishes between two polls is noticed at most ``lag_ratio`` of its
      duration late.
    * **Wide distributions**: the spacing never drops below what covers the first poll to
      the ``tail_quantile`` in ``max_polls`` polls, so a wide spread costs a coarser lag
      bound rather than endless polls.
    * **Stragglers**: past the ``tail_quantile`` of completion times the spacing grows by
      ``tail_growth`` for each multiple of that quantile, up to ``max_interval``.
    * **Queued songs** cannot finish before they start: a song seen ``queued`` is next polled
      after the learned remaining queue wait plus the shortest learned generation time.
    * **Budget**: when the songs in flight would need more polls than the request budget
      sustains (``budget_rate`` and ``in_flight``, with the learned timing: a service
      faster than the budget, say), every song's spacing widens evenly to what it does, a
      coarser lag for all rather than bursts that fill the minute and stall every poll.
      And when ``budget_load`` exceeds ``budget_target`` the spacing widens in proportion,
      so polls do not pile up behind the request budget, where they would be late anyway.
      No song is polled before the budget can turn its slot over (``in_flight`` songs, each
      a submission and a poll, at ``budget_rate``): against a service faster than the
      budget, songs are polled about once, when that poll can be afforded.

    What it learns, each in a sliding window of the last ``window`` songs (fixed memory; the
    policy follows a service whose speed drifts): completion times since submission, from
    songs that finished between two close polls (intervals wider than ``narrow`` of the time
    are too vague to be points); which songs were already done at their first poll; and the
    generation time and queue wait of songs seen ``queued`` shortly before ``generating``.
    Until ``prior_weight`` songs have finished, the ``prior`` stands in for the data.

    One instance is meant to be shared by every song of a client (that is how it learns); it
    is not thread-safe, which is fine within one event loop.
    """

    def __init__(
        self,
        *,
        # 0.03 with jitter 0.02, measured with benchmarks/simulate_polling.py on the default
        # workload (25 runs): 3.57 polls/song and lag p95 2.94 % of duration, against 3.69
        # and 3.10 % for 0.028 with jitter 0.05, whose extra polls crowd the request budget.
        lag_ratio: float = 0.03,
        start_quantile: float = 0.01,
        jitter: float = 0.02,
        tail_quantile: float = 0.98,
        tail_growth: float = 0.25,
        min_interval: float = 0.5,
        max_interval: float = 30.0,
        # 30, not 12: measured with benchmarks/simulate_polling.py on the heavy-tailed
        # workload (5 % of songs 2-4 min), 12 left lag p95 at ~11 % of duration, 30 at ~5 %,
        # still with fewer polls than the documented loop; uniform timings are unaffected.
        max_polls: float = 30.0,
        min_share: float = 0.05,
        budget_target: float = 1.0,
        prior: tuple[float, float] = _limits.DOCUMENTED_DURATION_RANGE,
        prior_weight: int = 3,
        window: int = 256,
        narrow: float = 0.2,
        seed: int | None = None,
    ) -> None:
        _check_share("lag_ratio", lag_ratio, upper=1.0)
        _check_share("start_quantile", start_quantile, upper=0.5)
        _check_share("jitter", jitter, upper=1.0, allow_zero=True)
        _check_share("tail_quantile", tail_quantile, upper=1.0)
        _check_share("narrow", narrow, upper=1.0)
        if tail_growth < 0:
            raise ValueError(f"tail_growth must not be negative, got {tail_growth!r}")
        if not 0 < min_interval <= max_interval:
            raise ValueError(
                f"need 0 < min_interval <= max_interval, got {min_interval!r} and {max_interval!r}"
            )
        if max_polls <= 1:
            raise ValueError(f"max_polls must be more than 1, got {max_polls!r}")
        _check_share("min_share", min_share, upper=1.0, allow_zero=True)
        if budget_target <= 0:
            raise ValueError(f"budget_target must be positive, got {budget_target!r}")
        low, high = prior
        if not 0 < low <= high:
            raise ValueError(f"prior must be (low, high) with 0 < low <= high, got {prior!r}")
        # With no finished song and no prior weight there would be nothing to predict from.
        if prior_weight < 1 or window < 1:
            raise ValueError(
                f"prior_weight and window must be >= 1, got {prior_weight!r} and {window!r}"
            )
        self.lag_ratio = lag_ratio
        self.start_quantile = start_quantile
        self.jitter = jitter
        self.tail_quantile = tail_quantile
        self.tail_growth = tail_growth
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.max_polls = max_polls
        self.min_share = min_share
        self.budget_target = budget_target
        self.prior = (float(low), float(high))
        self.prior_weight = prior_weight
        self.window = window
        self.narrow = narrow
        self._random = random.Random(seed)
        self._total = _Window(window)  # submission -> completion, close observations only
        self._done_first: deque[bool] = deque(maxlen=window)  # already done at first poll?
        self._generation = _Window(window)  # start -> completion
        self._queue_wait = _Window(window)  # submission -> start
        # Starts seen closely (a queued poll right before a generating one), and when each
        # song's first poll found it running, by submission time, until the song finishes;
        # bounded like the windows.
        self._starts: dict[float, float] = {}
        self._first_polls: dict[float, float] = {}
        self._done_run = 0  # first polls in a row (on time or not) that found the song done
        # For songs whose first poll found them running: when each finished (the middle of
        # its last interval), with the time of that first poll. All the songs first polled
        # at or before some time, done or not, are a sample with nothing cut off above it.
        self._after_first: deque[tuple[float, float]] = deque(maxlen=window)
        # The first-poll tracker, in log seconds since submission, and whether the last few
        # songs were already done at their first poll.
        self._first_log = math.log(low * (1 + lag_ratio))
        # (when, already done?) for the last few first polls made near the first-poll time.
        self._recent_first: deque[tuple[float, bool]] = deque(maxlen=_RECENT_FIRST_POLLS)
        self._model: tuple[float, float, float] | None = None
        self._costs: tuple[float, float, float] | None = None
        #: Changes whenever the first-poll time jumps earlier: the scheduler then brings
        #: forward the first polls it planned with the old time.
        self.replan_epoch = 0
        self._scouts: set[float] = set()  # submission times of the scouts in flight
        self._laddered = False  # whether a scout has climbed the ladder yet
        # Until the first song finishes: per song seen running, -log of the prior's chance
        # that it would still be running then.
        self._survival: dict[float, float] = {}
        self._prior_refuted = False
        self._raised_from: float | None = None  # log first-poll time before the last raise

    # ------------------------------------------------------------------ learning

    def observe_started(self, submitted_at: float, after: float, by: float) -> None:
        """Learn a queue wait when the start is known closely enough."""
        low, high = after - submitted_at, by - submitted_at
        if high > 0 and high - low <= self.narrow * high:
            self._queue_wait.add(max(0.0, (low + high) / 2))
            _remember(self._starts, submitted_at, (after + by) / 2, self.window)

    def observe_finished(
        self, submitted_at: float, started_at: float | None, after: float, by: float
    ) -> None:
        """Learn a completion time (and a generation time when the start was seen closely)."""
        started = self._starts.pop(submitted_at, None)
        first_poll = self._first_polls.pop(submitted_at, None)
        self._survival.pop(submitted_at, None)  # no longer searched
        low, high = after - submitted_at, by - submitted_at
        if high <= 0:
            return
        if submitted_at in self._scouts:
            self._scouts.discard(submitted_at)
            self._scout_finished(high)
        if self._prior_refuted and not self._done_first:
            self._found_after_search(max(low, high / (1 + _SEARCH_RATIO)))
        done_first = after <= submitted_at
        if done_first:
            self._note_first_poll(high, done=True)
        self._done_first.append(done_first)
        if first_poll is not None:
            self._after_first.append(((low + high) / 2, first_poll))
        if high - low <= self.narrow * high:
            self._total.add((low + high) / 2)
            if started is not None:
                self._generation.add(max(0.0, (after + by) / 2 - started))
        self._model = None

    def _note_first_poll(self, at: float, *, done: bool) -> None:
        """Move the first-poll time by what a first poll made ``at`` seconds after its
        submission found: a Robbins-Monro step towards the target share of songs already
        done, or a jump when recent first polls show it far off."""
        first = math.exp(self._first_log)
        self._done_run = self._done_run + 1 if done else 0
        if self._done_run >= _DONE_RUN and at <= first * (1 + _RELEVANT * self.lag_ratio):
            # Song after song already done at its first poll: far too late. Come down
            # without waiting for first polls planned at the new time.
            self._first_log += math.log(_SCARCE_STEP_DOWN)
            self._no_lower_than_before_raise()
            self.replan_epoch += 1
            self._done_run = 0
            self._recent_first.clear()
            self._model = None
            return
        # Only first polls made about now say something about this first-poll time: one
        # planned for another (the tracker moved since), or one held back by a busy budget
        # that found the song done (it would more often), does not.
        density = self._density_after(first)
        target = self._done_first_target(first, density)
        late = (1 + self.lag_ratio / 2) if done else (1 + 2 * self.lag_ratio)
        if first / (1 + 2 * self.lag_ratio) <= at <= first * late:
            self._first_log += _FIRST_STEP * (target - done)
        # The evidence test below weighs each poll by when it was made, so it can take in
        # polls made further from the tracker's time (but not far: it extrapolates linearly).
        band = 1 + _EVIDENCE_BAND * self.lag_ratio
        if not first / band <= at <= first * band:
            self._model = None
            return
        recent = self._recent_first
        recent.append((at, done))
        if len(recent) >= _EVIDENCE_MIN:
            # What each of those first polls should have found, had the target held where
            # it was made: the tracker moves between polls, and a poll made a little later
            # finds more songs done without saying that the first poll is too late.
            expected = [
                min(0.99, max(0.01, target + density * (when - first))) for when, _ in recent
            ]
            found = sum(was_done for _, was_done in recent)
            excess = found - sum(expected)
            spread = math.sqrt(sum(e * (1 - e) for e in expected))
            if excess > _EVIDENCE_Z * spread:
                # Clearly more songs are done at their first poll than it aims for (the
                # service is faster, or spread wider, than the tracker thinks): step at once
                # to where the density just after the first poll puts the target share.
                self._first_log += math.log(self._step_down(first, excess / len(recent)))
                self._no_lower_than_before_raise()
                self.replan_epoch += 1
                recent.clear()
        self._model = None

    def _no_lower_than_before_raise(self) -> None:
        """A step down right after a raise goes back no further than where the raise came
        from: the songs that showed the first poll too late are the same sample of a few
        that showed it too early (a first wave of long songs, then one of short ones)."""
        if self._raised_from is not None:
            self._first_log = max(self._first_log, self._raised_from)
            self._raised_from = None

    def _step_down(self, first: float, excess: float) -> float:
        """Factor that moves the first poll earlier by ``excess`` of all songs, by the
        density of completions just after it (at most by _MAX_STEP_DOWN)."""
        if len(self._total) < _MASS_DATA:
            return _SCARCE_STEP_DOWN  # too little data to say how far: a fixed step
        density = self._density_after(first)
        if density <= 0:
            return _MAX_STEP_DOWN
        return min(_MIN_STEP_DOWN, max(_MAX_STEP_DOWN, 1.0 - excess / density / first))

    def _density_after(self, first: float) -> float:
        """Share of all songs finishing per second just after ``first``: from the prior
        until enough songs have finished, then from the data, over a few spacings to steady
        it."""
        if len(self._total) < _MASS_DATA:
            # The prior's density, wherever the first poll is now: a service that turned
            # out faster or slower than the prior is assumed about as spread.
            low, high = self.prior
            return 1.0 / max(high - low, 1e-9)
        band = first * _DENSITY_BAND * self.lag_ratio
        values = self._total.sorted()
        count = bisect.bisect_right(values, first + band) - bisect.bisect_right(values, first)
        return count / max(1, len(self._done_first)) / band

    def _done_first_target(self, first: float, density: float) -> float:
        """Share of songs the first poll should find done: ``start_quantile`` plus the share
        that finish within the spacing after it (finding fewer would waste that poll)."""
        within = density * first * self.lag_ratio
        return min(0.5, self.start_quantile + within)

    # ------------------------------------------------------------------ the model

    def _samples(self, window: _Window) -> list[float]:
        """Window values, padded with the prior while there are fewer than ``prior_weight``."""
        values = window.sorted()
        missing = self.prior_weight - len(values)
        if missing <= 0:
            return values
        low, high = self.prior
        if missing == 1:
            pseudo = [(low + high) / 2]
        else:
            pseudo = [low + (high - low) * i / (missing - 1) for i in range(missing)]
        return sorted([*values, *pseudo])

    def _first_poll_time(self) -> float:
        """The tracker's first-poll time, raised at once to what the data clearly show."""
        recent = self._recent_first
        first = math.exp(self._first_log)
        if len(recent) < _EVIDENCE_MIN:
            return first
        done_share = sum(was_done for _, was_done in recent) / len(recent)
        if done_share >= self.start_quantile:
            return first
        # Hardly any song is done at its first poll. Songs first polled no later than now
        # are a fair sample of what happens after it (those finished before would show up
        # as done); their low quantile is a safe first poll if it is clearly later.
        band = first * (1 + 2 * self.lag_ratio)
        values = sorted(point for point, polled in self._after_first if polled <= band)
        # One or two songs say little: the first of them to finish may simply have been
        # submitted first, not be short. Nor do the eight of a first wave that happened to
        # be long (a fifth of the time none of eight is done at a first poll placed where a
        # fifth of songs are): the raise waits for a second wave's worth, unless the songs
        # already outlived the prior (a slower service, where waiting costs more). Measured
        # end to end on the default workload (bench_polling's run_one, seeds 1-12): lag p95
        # 4.5-7.1 % on two seeds in ten before this and the step-down guard, 2.8-3.3 % on
        # every seed after.
        if len(values) < (_EVIDENCE_MIN if self._prior_refuted else _MASS_DATA):
            return first
        level = (self.start_quantile - done_share) / (1 - done_share)
        # From few songs, only the earliest seen is a safe guess of the early edge.
        low = values[0] if len(values) < _MASS_DATA else _low_quantile(values, level)
        floor = low * (1 + self.lag_ratio)
        # Songs not yet done at the first poll finish a little after it, so a gap of one
        # spacing is what says the service is slower than the tracker thinks.
        if floor > first * (1 + _SLOWER_GAP * self.lag_ratio):
            self._raised_from = self._first_log
            self._first_log = math.log(floor)
            recent.clear()
        return math.exp(self._first_log)

    def _current_model(self) -> tuple[float, float, float]:
        """(first-poll time, tail of completion, shortest generation), in seconds."""
        if self._model is None:
            self._costs = None
            first = self._first_poll_time()
            tail = max(first, _high_quantile(self._samples(self._total), self.tail_quantile))
            generation = _low_quantile(self._samples(self._generation), self.start_quantile)
            self._model = (first, tail, min(generation, first))
        return self._model

    # ------------------------------------------------------------------ deciding

    def next_delay(self, state: PollState) -> float:
        """Seconds until the next poll of the song described by ``state``."""
        elapsed = max(0.0, state.now - state.submitted_at)
        if state.polls == 1 and not is_waiting(state.status) and not state.replanning:
            # The first poll found it running.
            _remember(self._first_polls, state.submitted_at, elapsed, self.window)
            self._note_first_poll(elapsed, done=False)
        first, tail, generation = self._current_model()
        scouting = self._scouting(state, elapsed, first)
        if scouting is not None:
            return scouting
        pressure = max(0.0, state.budget_load / self.budget_target - 1.0)
        ratio = max(self.lag_ratio, self._width_ratio(first, tail), self._sustainable_ratio(state))
        ratio *= 1.0 + 4.0 * pressure
        if state.polls > 0 and not is_waiting(state.status) and self._searching(state, elapsed):
            ratio = max(ratio, _SEARCH_RATIO, self._search_budget_ratio(state, elapsed))

        earliest = max(first, self._budget_cycle(state))
        if state.polls > 0 and is_waiting(state.status):
            # It cannot finish before it starts and then generates for a while.
            queued_at = state.queued_at if state.queued_at is not None else state.now
            queued_for = queued_at - state.submitted_at
            start = self._queue_wait_after(queued_for)
            earliest = max(earliest, (start + generation) * (1 + self.lag_ratio))

        if elapsed > tail:
            ratio += self.tail_growth * (elapsed - tail) / tail
        spacing = elapsed * ratio * (1.0 - self.jitter * self._random.random())
        spacing = max(spacing, self._until_enough_mass(elapsed))
        if elapsed < earliest:
            # Nothing to see before then: wait for it, however long that is (after a first
            # poll, only if that is longer than the usual spacing).
            spread = self.jitter * self.lag_ratio * (2 * self._random.random() - 1)
            until_earliest = earliest * (1 + spread) - elapsed
            if state.polls == 0 or until_earliest > spacing:
                return max(self.min_interval, until_earliest)
        return min(self.max_interval, max(self.min_interval, spacing))

    def _searching(self, state: PollState, elapsed: float) -> bool:
        """True from when the songs seen running refute the prior until _SEARCH_UNTIL songs
        have finished."""
        if not self._done_first and not state.replanning:
            self._refutes_prior(state.submitted_at, elapsed)
        return self._prior_refuted and len(self._done_first) < _SEARCH_UNTIL

    def _search_budget_ratio(self, state: PollState, elapsed: float) -> float:
        """The spacing at which the songs being searched take ``_SEARCH_SHARE`` of the
        budget's rate between them, evenly: no faster, so that they do not spend the
        minute's budget in a burst before any of them finishes."""
        if state.budget_rate <= 0 or elapsed <= 0:
            return 0.0
        allowance = _SEARCH_SHARE * state.budget_rate / 60.0
        return len(self._survival) / (elapsed * allowance)

    def _refutes_prior(self, submitted_at: float, elapsed: float) -> bool:
        """Count a song seen running ``elapsed`` s after submission, before any song has
        finished; True once the songs seen running make the prior implausible (and from
        then on)."""
        low, high = self.prior
        done = min(0.999, max(0.0, (elapsed - low) / max(high - low, 1e-9)))
        # Every song seen running is kept (also once refuted): they are the songs searched.
        _remember(self._survival, submitted_at, -math.log1p(-done), self.window)
        if not self._prior_refuted:
            self._prior_refuted = sum(self._survival.values()) > _REFUTED
        return self._prior_refuted

    def _scouting(self, state: PollState, elapsed: float, first: float) -> float | None:
        """The delay for a scout (or a song that becomes one), else ``None``."""
        key = state.submitted_at
        if state.polls == 0:
            # Not judged by status: the service answers every submission "queued".
            if self._done_first or state.replanning or len(self._scouts) >= _SCOUTS:
                return None
            self._scouts.add(key)
            start = _SCOUT_START
            if not self._laddered:
                self._laddered = True  # the first scout of the client climbs the ladder
                start = _LADDER_START
            return max(self.min_interval, self.prior[0] * start - elapsed)
        if key not in self._scouts:
            return None
        # While songs outlive the prior, scouts go on (they will show where songs end);
        # otherwise a scout past the first-poll time is an ordinary song from then on.
        if (elapsed >= first and not self._prior_refuted) or is_waiting(state.status):
            if not state.replanning:
                self._scouts.discard(key)
            return None
        if self._prior_refuted:
            return max(self.min_interval, elapsed * _SCOUT_RATIO)
        ladder_top = self.prior[0] * _SCOUT_START
        if elapsed < ladder_top * (1 - _SCOUT_RATIO):
            # On the ladder: twice as late each time, up to where the other scouts start.
            return max(self.min_interval, min(elapsed, ladder_top - elapsed))
        step = max(self.min_interval, elapsed * _SCOUT_RATIO)
        return min(step, max(self.min_interval, first - elapsed))

    def _scout_finished(self, by: float) -> None:
        """A scout was seen finished ``by`` seconds after its submission: if that is before
        the first-poll time, songs finish sooner than believed; poll them all that early.
        (From the ladder, that is as late as the songs that scout saw may take: the ones
        that take less are seen done at their first poll, and the first poll comes down.)"""
        first = math.exp(self._first_log)
        sooner = by * (1 + self.lag_ratio)
        if sooner < first:
            self._first_log = math.log(sooner)
            self._recent_first.clear()
            self.replan_epoch += 1
            self._model = None

    def _found_after_search(self, finished: float) -> None:
        """The first song to finish, after songs outlived the prior: it finished about
        ``finished`` seconds after submission. The songs submitted with it are about as
        old and likely close to done: poll from there as usual, at once (re-planning)."""
        self._first_log = math.log(finished)
        self._recent_first.clear()
        self.replan_epoch += 1
        self._model = None

    def _budget_cycle(self, state: PollState) -> float:
        """The soonest a song is worth polling after its submission when the request
        budget, not the service, sets the pace: ``in_flight`` songs each costing a
        submission and a poll take that long to go through at ``budget_rate``.

        Against a service faster than the budget (songs of 10-20 s, 20 slots, 120 requests
        a minute) polling sooner finds songs still running and spends requests on polling
        them again, so every slot turns over more slowly: the songs wait for the budget
        instead of for a poll. Measured with benchmarks/simulate_polling.py (16 runs, with
        the ladder): uniform 10-20 s lag p95 141 % -> 93 %, makespan 1.54 -> 1.42 x optimum
        (one poll at 20 s, the best fixed schedule there, gets 95 % and 1.35 x); 5-10 s
        605 % -> 286 %. The documented 50-60 s, with its first poll past 20 s, is untouched.
        """
        if state.budget_rate <= 0 or state.in_flight <= 0:
            return 0.0
        return state.in_flight * _CYCLE_REQUESTS * 60.0 / state.budget_rate

    def _sustainable_ratio(self, state: PollState) -> float:
        """The narrowest spacing (as a share of the time) whose polls the budget sustains.

        Songs go through at ``in_flight`` over their mean time (Little's law), each costing
        a submission and its polls; a song first polled at ``F`` and then every ``r`` of
        its time costs about ``1 + P(d > F) / 2 + E[ln+(d / F)] / ln(1 + r)`` polls. When
        the budget cannot carry that at ``lag_ratio``, every song's spacing widens evenly:
        a service faster than the budget then costs a coarser lag for all songs, instead of
        bursts that fill the minute and stall every poll until it rolls over.
        """
        if state.budget_rate <= 0 or state.in_flight <= 0:
            return 0.0
        mean_time, running_share, log_excess = self._cost_model()
        songs_per_second = state.in_flight / mean_time
        allowed = _SUSTAINED_SHARE * state.budget_rate / 60.0 / songs_per_second - 1.0
        spare = allowed - 1.0 - running_share / 2
        if log_excess <= 0:
            return 0.0
        if spare <= log_excess / math.log(1.0 + _WIDEST_SUSTAINED):
            return _WIDEST_SUSTAINED
        return math.expm1(log_excess / spare)

    def _cost_model(self) -> tuple[float, float, float]:
        """(mean completion time, share of songs running at their first poll, mean of
        ln+(completion / first poll)), from the model."""
        first = self._current_model()[0]  # refreshes the costs when the model changed
        if self._costs is None:
            values = self._samples(self._total)
            finished = len(self._done_first)
            done_first = sum(self._done_first) / finished if finished else 0.0
            # The close observations are all songs running at their first poll: weigh
            # them by that share (songs done at it cost no more polls).
            log_excess = sum(math.log(v / first) for v in values if v > first) / len(values)
            running = (1.0 - done_first) * sum(v > first for v in values) / len(values)
            mean_time = done_first * first + (1.0 - done_first) * statistics.fmean(values)
            self._costs = (mean_time, running, (1.0 - done_first) * log_excess)
        return self._costs

    def _width_ratio(self, first: float, tail: float) -> float:
        """The spacing (as a share of the time) that covers first poll to tail in
        ``max_polls`` polls: a wide distribution gets a coarser lag bound, not endless polls."""
        return float((tail / first) ** (1.0 / (self.max_polls - 1.0)) - 1.0)

    def _until_enough_mass(self, elapsed: float) -> float:
        """Seconds until at least ``min_share`` of the songs still running at ``elapsed``
        have finished, by the data: polling sooner would mostly find nothing (in a gap
        between two modes, say, or a sparse tail)."""
        values = self._total.sorted()
        if len(values) < _MASS_DATA:
            return 0.0
        above = bisect.bisect_right(values, elapsed)
        remaining = len(values) - above
        if remaining == 0:
            return 0.0  # past everything seen: the straggler rule decides
        needed = max(1, math.ceil(self.min_share * remaining))
        return values[above + needed - 1] - elapsed

    def chance_done(self, state: PollState) -> float:
        """The chance that a poll now finds the song finished, given that the last poll did
        not (the scheduler polls the likeliest songs first when the budget is short)."""
        if is_waiting(state.status):
            return 0.0
        elapsed = state.now - state.submitted_at
        last = 0.0
        if state.polls and state.last_poll_at is not None:
            last = state.last_poll_at - state.submitted_at
        done_before = self._cdf(last)
        if done_before >= 1.0:
            return 1.0
        return max(0.0, (self._cdf(elapsed) - done_before) / (1.0 - done_before))

    def _cdf(self, elapsed: float) -> float:
        """Share of songs finished ``elapsed`` seconds after submission, by the model: those
        done at their first poll spread just before it, the rest as the data show."""
        first = self._current_model()[0]
        finished = len(self._done_first)
        done_first = sum(self._done_first) / finished if finished else 0.0
        if elapsed < first:
            spread = first * _DENSITY_BAND * self.lag_ratio
            return done_first * max(0.0, 1.0 - (first - elapsed) / spread)
        values = self._samples(self._total)
        later = bisect.bisect_right(values, elapsed) / len(values)
        return done_first + (1.0 - done_first) * later

    def _queue_wait_after(self, waited: float) -> float:
        """Early edge of the queue wait of a song still queued after ``waited`` seconds."""
        values = self._queue_wait.sorted()
        longer = values[bisect.bisect_right(values, waited) :]
        if not longer:
            return waited
        return max(waited, _low_quantile(longer, self.start_quantile))

    # ------------------------------------------------------------------ reading

    @property
    def observations(self) -> int:
        """How many finished songs the model currently holds."""
        return len(self._done_first)

    def predicted_times(self) -> tuple[float, float]:
        """The first-poll time and the tail of completion times (seconds since submission)
        that the next decisions will use."""
        first, tail, _ = self._current_model()
        return first, tail

    def __repr__(self) -> str:
        first, tail = self.predicted_times()
        return (
            f"LearnedPolling(lag_ratio={self.lag_ratio:g}, observations={self.observations}, "
            f"first_poll={first:.1f}s, tail={tail:.1f}s)"
        )


def _check_share(name: str, value: float, *, upper: float, allow_zero: bool = False) -> None:
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value <= upper):
        raise ValueError(
            f"{name} must be in {'[' if allow_zero else '('}0, {upper:g}], got {value!r}"
        )


def default_policy() -> PollPolicy:
    """The policy a client uses when none is given: a fresh :class:`LearnedPolling`."""
    return LearnedPolling()
