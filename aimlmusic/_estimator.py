"""How long songs take: one estimator of the completion-time distribution from censored polls.

A poll never sees a song finish; it sees it finished or not. So every song is a censored
observation of its completion time ``T`` (seconds from its reference: the submission, or the
last poll that saw it ``queued``, since a queued song has its whole generation ahead of it):

- finished between two polls: ``T`` in ``(after, by]`` (interval-censored);
- finished at its first poll: ``T`` in ``(0, by]`` (left-censored, the same thing with 0);
- still running when last seen: ``T > seen`` (right-censored).

:class:`CompletionEstimator` takes all three in one likelihood, on a fixed grid of log-spaced
bins, and maximises it with Turnbull's self-consistency (EM) iteration: each observation's
unit of probability is spread over the bins its interval covers, in proportion to their
current mass, and the masses are re-estimated from those shares. Two pseudo-observations
regularise it (a maximum a posteriori estimate with Dirichlet pseudo-counts): the documented
50-60 s worth a few songs, which ages like any observation, and a thin log-uniform floor
that never ages, so no duration is ever ruled out for good (EM cannot revive a bin at zero).
Observations are weighted by exponential forgetting: each song seen finished ages every song
first observed before it, finished or running, and no song is aged by its own finish (that
would favour the long songs), so the estimate follows a service that drifts within about one
wave of songs. Mass is kept on the bins of Turnbull's innermost intervals (the only places
the likelihood can want it) and a little below them; the smoothing (EMS) shapes the estimate
within them, never outside. Below the earliest song seen done, where the likelihood cannot
tell where songs finished, the density seen above goes on, falling geometrically
(``_tail``): songs found done at their first poll are not all put just below it.

Each fit is a few EM sweeps warm-started from the last one, run when an observation arrives
(never when the estimate is read), and published as an immutable :class:`Snapshot` whose
``version`` says when it changed. One sweep is O(bins + observations): coverage is summed
with prefix sums and spread with a difference array, and the smoothing and normalising
skip the bins below and above those with mass or support (most of the grid, usually): they
are empty and stay so.
"""

from __future__ import annotations

import bisect
import itertools
import math
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from . import _limits
from ._change import logrank_score, strongest_split

__all__ = ["ESTIMATE_FORMAT", "CompletionEstimator", "Snapshot"]

#: The grid: log-spaced bin edges from half a second to two hours, 3 % apart (about the finest
#: lag target; within a bin, mass is spread evenly, so the grid does not decide where a poll
#: goes). About 300 bins: a sweep of EM costs about half a millisecond.
GRID_START = 0.5
GRID_END = 7200.0
GRID_RATIO = 1.03
#: Songs' worth of the documented 50-60 s in the prior: enough to plan the first songs, few
#: enough that one wave of real songs outweighs it.
PRIOR_SONGS = 3.0
#: The prior ages faster than songs do (its weight falls by e every PRIOR_MEMORY completed
#: songs): it stands in for data only until there are data.
PRIOR_MEMORY = 10.0
#: Songs' worth of the log-uniform floor over the grid: keeps every duration possible.
FLOOR_SONGS = 0.1
#: Memory, in songs: each song seen finished multiplies by 1 - 1/MEMORY the weight of every
#: song first observed before it, finished or running. Ageing songs by their own finish
#: instead would tilt the estimate long: songs that finish later are the longer ones.
MEMORY = 40.0
#: Completed songs kept, the latest observed (by ``first_seen``); older ones weigh less than
#: 1 % (exp(-200 / 40)).
MAX_COMPLETED = 200
#: EM sweeps per refit, warm-started: the estimate keeps converging across observations.
SWEEPS = 3
#: EM sweeps per refit of the change test's pooled estimate: warm-started, one ends within 1 %
#: of where three take it, and the test's threshold is coarse.
POOLED_SWEEPS = 1
#: Share of a bin's mass moved to each neighbour after every sweep (EMS smoothing).
SMOOTHING = 0.02
#: Bins (3 % each, 23 % together) the support reaches below each innermost interval: songs
#: found done at their first poll land just below the latest song seen running, an edge the
#: polls set rather than the songs, and the slack lets the estimate (so the polls) go lower.
SUPPORT_SLACK = 7
#: Bins (23 %) above the earliest song seen done whose mean density the tail below it
#: continues: about a poll spacing, so one poll's bunch of songs does not set it alone.
TAIL_WINDOW = 7
#: A refit (a few milliseconds, and a new plan for every song in flight) is due when an
#: observation comes this many API seconds after the last refit: a third of a song's time at
#: the documented pace (refitting at every song replans in flight songs to and fro)...
REFIT_EVERY = 20.0
#: ... or sooner for a song still running where the estimate has this share of songs done
#: (the service is slower than believed, and the plan must follow now), or at once for the
#: first songs to finish.
SURPRISE = 0.5
#: Such a song refits when the last refit is this many API seconds old: in a steady service
#: half the songs pass the median, so these refits were most of the estimator's CPU, and
#: one per few seconds' bunch of them follows a slower service as fast as one per song.
SURPRISE_EVERY = 5.0
#: Songs' worth of data (a wave) below which every completed song refits: learning fast
#: matters most at first.
FIRST_SONGS = 20.0
#: Songs (by when their clocks started) tested against the older ones for a change of pace:
#: a wave, so that a change is seen within one.
RECENT_SONGS = 5
#: Older songs seen finished before a test is made: fewer say too little about the old pace.
OLDER_SONGS = 10
#: The strongest split's statistic (about standard normal for one split of a steady
#: service) past which the older songs are dropped. Songs of one law never passed 3.8 in
#: 1,895 tests; a service changing from 35-45 s to 80-100 s passes 11. The scores are skewed
#: (a straggler scores -6.9), so the strongest of 200 splits passes 5 about once in 2,000
#: tests of a steady service, not once in millions: a wrong drop costs a noisier estimate
#: for a wave, a missed change one for every song after it.
CHANGE_Z = 5.0
#: Songs still running where fewer than this share of songs is done are not tested.
INFORMATIVE = 0.01
#: The version of the exported estimate's layout (``export``/``adopt``): an estimate of
#: another version, or on another grid, is refused rather than misread.
ESTIMATE_FORMAT = 1
#: The most songs' worth an adopted estimate counts for: what a long-running client's own
#: songs weigh at most (the sum of the forgetting weights), so a new client starts as sure
#: as the one that published; it ages like real songs, so its own take over in a wave or two.
ADOPTED_SONGS = MEMORY
#: Significant digits of each bin's mass in an export: the planner never needs more, and
#: the estimate stays a few kilobytes.
EXPORT_DIGITS = 4


def finite_number(value: object) -> float | None:
    """``value`` as a finite float, or None: a JSON value read from elsewhere may be a bool,
    a string, infinite, or an integer too large for a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _grid() -> tuple[float, ...]:
    count = math.ceil(math.log(GRID_END / GRID_START) / math.log(GRID_RATIO))
    return (0.0, *(GRID_START * GRID_RATIO**k for k in range(count + 1)))


#: Bin 0 holds (0, GRID_START]; bin k > 0 holds [EDGES[k], EDGES[k + 1]); the last bin, past
#: the grid, is open-ended. (Mass is spread evenly within a bin, so which bin holds an edge
#: itself changes no estimate.)
EDGES = _grid()
BINS = len(EDGES)  # the grid's bins plus the open one past GRID_END


@attrs.frozen(eq=False)  # compared and hashed by identity: one per version of one estimator
class Snapshot:
    """An immutable estimate: the completion-time distribution at one ``version``.

    ``cdf[k]`` is the probability that a song is done by ``EDGES[k]`` seconds; mass is spread
    evenly within a bin. ``songs`` is the weight of real observations behind it;
    ``evidence`` adds what an adopted estimate still weighs (the songs it summarises).
    """

    version: int
    cdf: tuple[float, ...] = attrs.field(repr=False)
    songs: float
    evidence: float = 0.0

    def done_by(self, t: float) -> float:
        """P(T <= t): the chance a song is finished ``t`` seconds after its reference."""
        if t <= 0:
            return 0.0
        # _bin_of, inlined: the planner reads this hundreds of times per plan.
        k = 0 if t <= GRID_START else bisect.bisect_right(EDGES, t) - 1
        cdf = self.cdf
        if k >= BINS - 1:
            return cdf[-1]
        low, high = EDGES[k], EDGES[k + 1]
        return cdf[k] + (cdf[k + 1] - cdf[k]) * (t - low) / (high - low)

    def quantile(self, p: float) -> float:
        """The time by which a share ``p`` of songs is done (``GRID_END`` at most)."""
        k = bisect.bisect_left(self.cdf, p)
        if k == 0:
            return 0.0
        if k >= len(self.cdf):
            return GRID_END
        low, high = self.cdf[k - 1], self.cdf[k]
        share = 0.0 if high <= low else (p - low) / (high - low)
        return EDGES[k - 1] + share * (EDGES[k] - EDGES[k - 1])

    def mean(self, upto: float = 1.0) -> float:
        """The mean completion time, each song counted at most until the ``upto`` quantile
        (``1.0``: mass past the grid counts at its end)."""
        cap = self.quantile(upto) if upto < 1.0 else GRID_END
        total = 0.0
        for k in range(len(self.cdf) - 1):
            low, high = EDGES[k], min(EDGES[k + 1], cap)
            if low >= cap:
                break
            total += (self.cdf[k + 1] - self.cdf[k]) * (low + high) / 2
        return total + (1.0 - self.done_by(cap)) * cap


@attrs.frozen
class _Interval:
    """One observation, as the bins it covers: whole bins ``lo+1..hi-1`` and a share of the
    end bins (``lo == hi``: one bin, share ``lo_share``)."""

    lo: int
    hi: int
    lo_share: float
    hi_share: float
    after: float  # the observation itself, in seconds: ``T`` in ``(after, by]``
    by: float
    since: float = math.nan  # the clock time of the song's reference (NaN: not given)
    #: The song's place in the order the estimator first observed songs.
    first_seen: int = 0


@attrs.frozen
class _Pseudo:
    """What a fit adds to the observations: the bins mass may go in, and pseudo-counts."""

    support: list[bool]
    counts: list[float]
    resolved: int = 0  # the bin of the earliest song seen done (see _tail)


def _bin_of(t: float) -> int:
    """The bin holding ``t`` (> 0), by a binary search of the edges (in C: faster than a
    logarithm, and exact at the edges)."""
    if t <= GRID_START:
        return 0
    return bisect.bisect_right(EDGES, t) - 1  # at most BINS - 1: EDGES has BINS values


def _position(t: float) -> tuple[int, float]:
    """The bin holding ``t`` and how far into it ``t`` lies (0-1)."""
    k = _bin_of(t) if t > 0 else 0
    if k == BINS - 1:
        return k, 0.0
    return k, (t - EDGES[k]) / (EDGES[k + 1] - EDGES[k])


def _interval(after: float, by: float) -> _Interval:
    """``T`` in ``(after, by]``; ``by = inf`` for a song still running at ``after``."""
    after = max(0.0, after)
    lo, lo_at = _position(after)
    if by == math.inf:
        return _Interval(lo, BINS - 1, 1.0 - lo_at, 1.0, after, by)
    by = max(by, after)
    hi, hi_at = _position(by)
    if hi == lo:
        return _Interval(lo, hi, max(hi_at - lo_at, 1e-9), 0.0, after, by)
    return _Interval(lo, hi, 1.0 - lo_at, hi_at, after, by)


def _stamped(interval: _Interval, since: float | None, first_seen: int) -> _Interval:
    """``interval`` with the song's reference time (checked; None: not given) and its place
    in the order songs were first observed."""
    if since is not None and not math.isfinite(since):
        raise ValueError(f"since must be a finite clock time, got {since!r}")
    since = math.nan if since is None else float(since)
    return attrs.evolve(interval, since=since, first_seen=first_seen)


def _support(intervals: list[_Interval]) -> list[bool]:
    """The bins the estimate may put mass in: those of Turnbull's innermost intervals, and
    ``SUPPORT_SLACK`` bins below each.

    An innermost interval is a ``(left, right]`` with ``left`` some observation's left end,
    ``right`` some observation's right end, and no end of any observation between. The
    likelihood never prefers mass anywhere else (moving mass into an innermost interval
    inside the same observations never lowers it). Without this bound, the smoothing would
    spread the mass of songs found done at their first poll far below the earliest polls.
    The slack is a hedge for what the bound cannot see (how far below the earliest polls
    songs really finish), not an estimate of it. An innermost interval starting at 0 (songs
    found done at their first poll, none seen running earlier) gets only the slack below
    its end: nothing in the data reaches further down."""
    lefts = sorted({interval.after for interval in intervals})
    rights = sorted(interval.by for interval in intervals)
    touched = [False] * BINS
    for k, left in enumerate(lefts):
        # The first end after ``left`` is a right one (at one time, right ends come first:
        # (a, b] and (b, c] do not overlap), or ``left`` begins no innermost interval.
        j = bisect.bisect_right(rights, left)
        if j == len(rights) or (k + 1 < len(lefts) and lefts[k + 1] < rights[j]):
            continue
        right = rights[j]
        hi = BINS - 1 if right == math.inf else _position(right)[0]
        # A song found done at its first poll, with no song seen running below it: the
        # slack below its poll, not every duration down to the grid's start (the floor's
        # share there would put songs at a second or two after a few songs). Not (0, inf],
        # songs seen only queued so far: they say nothing yet.
        lo = _position(left)[0] if left > 0 or right == math.inf else hi
        lo = max(0, lo - SUPPORT_SLACK)
        touched[lo : hi + 1] = [True] * (hi + 1 - lo)
    return touched


def _uniform_over(low: float, high: float) -> list[float]:
    """Pseudo-counts of one song spread evenly over ``[low, high]`` seconds."""
    shares = [0.0] * BINS
    interval = _interval(low, high)
    total = (high - low) or 1.0
    for k in range(interval.lo, interval.hi + 1):
        start, end = max(EDGES[k], low), min(EDGES[k + 1] if k + 1 < BINS else high, high)
        shares[k] = max(0.0, end - start) / total
    return shares


def _log_uniform() -> list[float]:
    """Pseudo-counts of one song spread evenly in log time over the grid."""
    shares = [0.0] + [1.0] * (BINS - 2) + [0.0]
    return [share / (BINS - 2) for share in shares]


class CompletionEstimator:
    """The completion-time distribution, learned online from censored observations.

    ``observe_finished`` and ``observe_running`` teach it (keyed by a song id, so a song's
    latest right-censored time replaces its earlier one and a finished song's interval
    replaces both); ``forget`` drops a song that ended otherwise. ``snapshot`` only reads.
    """

    def __init__(self, prior: tuple[float, float] = _limits.DOCUMENTED_DURATION_RANGE) -> None:
        low, high = prior
        if not 0 < low <= high:
            raise ValueError(f"prior must be (low, high) with 0 < low <= high, got {prior!r}")
        self.prior = (float(low), float(high))
        self._prior = _uniform_over(*self.prior)
        self._prior_songs = PRIOR_SONGS  # the prior's weight (an adopted estimate's: more)
        self._adopted = False
        self._floor = _log_uniform()
        self._completed: list[_Interval] = []
        self._running: dict[str, _Interval] = {}
        self._finished = 0  # songs seen finished, ever: what ages the prior
        self._changes = 0  # changes of pace found (older songs dropped)
        self._tested_from = -math.inf  # songs referenced earlier are not tested (eviction)
        self._fitted_at = -math.inf
        self._versions = itertools.count()
        self._songs_seen = itertools.count()  # songs first observed, in order
        self._mass = self._prior_mass()
        self._pooled = self._mass  # the same estimate, every song weighing alike (_change)
        self._snapshot = self._publish(0.0)

    def _prior_mass(self) -> list[float]:
        total = self._prior_songs + FLOOR_SONGS
        return [
            (self._prior_songs * p + FLOOR_SONGS * f) / total
            for p, f in zip(self._prior, self._floor, strict=True)
        ]

    # ------------------------------------------------------------------ sharing

    def export(self) -> dict[str, Any]:
        """The current estimate as plain JSON-able data, for another client to
        :meth:`adopt`: the format version, the grid, each bin's mass and the songs' worth
        behind it (this client's own songs plus what remains of an adopted estimate)."""
        mass = [float(f"{m:.{EXPORT_DIGITS}g}") for m in self._mass]
        return {
            "format": ESTIMATE_FORMAT,
            "grid": [GRID_START, GRID_END, GRID_RATIO],
            "songs": round(self._snapshot.songs + self._adopted_weight(), 3),
            "mass": mass,
        }

    def adopt(self, estimate: Mapping[str, Any]) -> bool:
        """Start from another client's exported estimate instead of the documented prior:
        it becomes the prior, worth its songs (at most ``ADOPTED_SONGS``), and fades as this
        client's own songs arrive, at the pace of real songs (``MEMORY``), or goes at once
        with the older songs when the service is found to change pace. Returns False,
        changing nothing, for an estimate of another format or grid, or one that is not a
        distribution."""
        if estimate.get("format") != ESTIMATE_FORMAT:
            return False
        if estimate.get("grid") != [GRID_START, GRID_END, GRID_RATIO]:
            return False
        raw_mass, songs = estimate.get("mass"), finite_number(estimate.get("songs"))
        if not isinstance(raw_mass, list) or len(raw_mass) != BINS:
            return False
        mass = [m for m in map(finite_number, raw_mass) if m is not None and m >= 0]
        if len(mass) != BINS or songs is None or songs <= 0:
            return False  # a bin that is not a finite mass, or no songs behind it
        total = sum(mass)
        if not 0 < total < math.inf:
            return False
        self._prior = [m / total for m in mass]
        self._prior_songs = min(songs, ADOPTED_SONGS)
        self._adopted = True
        self._mass = self._pooled = self._prior_mass()
        self._snapshot = self._publish(self._snapshot.songs)
        return True

    def _adopted_weight(self) -> float:
        """What an adopted estimate still weighs (0 with the documented prior)."""
        if not self._adopted:
            return 0.0
        return self._prior_songs * math.exp(-self._finished / MEMORY)

    # ------------------------------------------------------------------ observing

    def observe_finished(
        self,
        song: str,
        after: float,
        by: float,
        *,
        at: float | None = None,
        since: float | None = None,
    ) -> None:
        """Song ``song`` finished ``(after, by]`` seconds after its reference; ``at`` is the
        clock time of the observation, which paces refits (``None``: refit now), and
        ``since`` that of the reference, which orders songs for the change test (``None``:
        the song is not tested)."""
        if not 0 <= after <= by < math.inf:
            raise ValueError(f"need 0 <= after <= by < inf, got {after!r} and {by!r}")
        interval = _stamped(_interval(after, by), since, self._first_seen(song))
        self._running.pop(song, None)
        self._completed.append(interval)
        if len(self._completed) > MAX_COMPLETED:
            self._evict_earliest_observed()
        self._finished += 1
        if self._snapshot.songs < FIRST_SONGS or self._due(at, REFIT_EVERY):
            self._refit(at)

    def observe_running(
        self, song: str, seen: float, *, at: float | None = None, since: float | None = None
    ) -> None:
        """Song ``song`` was still running ``seen`` seconds after its reference (``at`` and
        ``since``: as for :meth:`observe_finished`)."""
        if not 0 <= seen < math.inf:
            raise ValueError(f"need 0 <= seen < inf, got {seen!r}")
        self._running[song] = _stamped(_interval(seen, math.inf), since, self._first_seen(song))
        surprising = self._snapshot.done_by(seen) >= SURPRISE
        if self._due(at, SURPRISE_EVERY if surprising else REFIT_EVERY):
            self._refit(at)

    def _first_seen(self, song: str) -> int:
        """``song``'s place in the order songs were first observed (see ``MEMORY``)."""
        running = self._running.get(song)
        return running.first_seen if running is not None else next(self._songs_seen)

    def _evict_earliest_observed(self) -> None:
        """Drop the completed song first observed earliest: the one that weighs least.

        Not the one that finished earliest: when more songs than ``MAX_COMPLETED`` finish
        together (more in flight, a large first wave), that would keep their longest."""
        completed = self._completed
        earliest = min(range(len(completed)), key=lambda k: completed[k].first_seen)
        gone = completed.pop(earliest)
        # Songs referenced no later than a song let go may have lost finished cohort-mates
        # and kept the running ones: only songs referenced after every such song are all
        # still here, a fair sample to test. (Cutting at its finish instead would follow
        # the latest long song let go to the present, and leave nothing to test.)
        self._tested_from = max(self._tested_from, math.nextafter(gone.since, math.inf))

    def _due(self, at: float | None, every: float) -> bool:
        return at is None or at - self._fitted_at >= every

    def forget(self, song: str) -> None:
        """Song ``song`` ended without telling when it would have finished (failed, timed
        out, abandoned): it stops counting as running."""
        self._running.pop(song, None)

    # ------------------------------------------------------------------ reading

    @property
    def snapshot(self) -> Snapshot:
        """The latest estimate (the same object until an observation changes it)."""
        return self._snapshot

    @property
    def running(self) -> int:
        """Songs currently counted as still running."""
        return len(self._running)

    @property
    def changes(self) -> int:
        """Changes of pace found so far (each time, the songs before it were dropped)."""
        return self._changes

    def __repr__(self) -> str:
        snap = self._snapshot
        return (
            f"CompletionEstimator(version={snap.version}, songs={snap.songs:.1f}, "
            f"median={snap.quantile(0.5):.1f}s)"
        )

    # ------------------------------------------------------------------ fitting

    def _drop_if_changed(self, everyone: list[_Interval], pseudo: _Pseudo) -> bool:
        """Drop the songs seen finished before the latest ones (by reference) if those take
        clearly longer or shorter than the older ones (see :mod:`aimlmusic._change`): they
        describe a service that is no more.

        The songs are scored under an estimate that weighs them all alike (the pooled one
        the test assumes), kept beside the published one and refitted with it: under the
        published estimate, which leans to recent songs, the older ones would look changed
        whenever recent ones strayed a little. An adopted estimate goes with the older
        songs. True when songs were dropped."""
        unweighted = [(interval, 1.0) for interval in everyone]
        self._pooled = self._fit(self._pooled, unweighted, pseudo, POOLED_SWEEPS)
        done_by = _cdf_of(self._pooled).done_by
        # Each tested song, by when its clock started: its survival at ``after`` and at
        # ``by`` (None: still running) under the pooled estimate. A song still running
        # where next to none have finished says nothing (it scores about 0), and many such
        # songs (a batch's first moments, thousands in flight) would shrink the spread the
        # test expects of the songs that do say something.
        songs: list[tuple[float, float, float | None]] = []
        for interval in everyone:
            if not interval.since >= self._tested_from:  # NaN: never tested
                continue
            done = done_by(interval.after)
            if interval.by < math.inf:
                songs.append((interval.since, 1.0 - done, 1.0 - done_by(interval.by)))
            elif done >= INFORMATIVE:
                songs.append((interval.since, 1.0 - done, None))
        if not songs:
            return False
        songs.sort(key=operator.itemgetter(0))
        # The older songs must include OLDER_SONGS seen finished, the recent RECENT_SONGS.
        finished = list(
            itertools.accumulate(survival_by is not None for _, _, survival_by in songs)
        )
        first = bisect.bisect_left(finished, OLDER_SONGS) + 1
        split, z = strongest_split(
            [
                logrank_score(survival_after, survival_by)
                for _, survival_after, survival_by in songs
            ],
            first,
            len(songs) - RECENT_SONGS,
            [since for since, _, _ in songs],
        )
        if abs(z) < CHANGE_Z:
            return False
        cutoff = songs[split][0]
        self._completed = [interval for interval in self._completed if interval.since >= cutoff]
        # Songs that began before the change and still run are the slow ones of their time
        # (the others were dropped): they stay in the estimate but not in the test.
        self._tested_from = max(self._tested_from, cutoff)
        self._changes += 1
        if self._adopted:
            # An adopted estimate summarises songs older still, of the pace that is no more.
            self._prior_songs = 0.0
        return True

    def _refit(self, at: float | None) -> None:
        if at is not None:
            self._fitted_at = at
        # The pseudo-counts depend on which songs there are, not on their weights: the
        # change test's pooled fit and the published one share them, unless songs dropped.
        everyone = [*self._completed, *self._running.values()]
        pseudo = self._pseudo_counts(everyone)
        if self._drop_if_changed(everyone, pseudo):
            pseudo = self._pseudo_counts([*self._completed, *self._running.values()])
        keep = 1.0 - 1.0 / MEMORY
        # A song's age: the songs first observed after it that finished since. Songs
        # observed before it do not age it, so however many are in flight the latest
        # observed keep their weight (counting every finish would age them all away
        # with more songs in flight than MEMORY); nor does its own finish.
        finished = sorted(interval.first_seen for interval in self._completed)
        weighted = [
            (interval, keep ** (len(finished) - bisect.bisect_right(finished, interval.first_seen)))
            for interval in [*self._completed, *self._running.values()]
        ]
        self._mass = self._fit(self._mass, weighted, pseudo, SWEEPS)
        self._snapshot = self._publish(sum(weight for _, weight in weighted))

    def _pseudo_counts(self, intervals: list[_Interval]) -> _Pseudo:
        """The bins ``intervals`` let the estimate put mass in, and the pseudo-observations
        (the prior, as aged, and the floor over those bins)."""
        # An adopted estimate summarises real songs: it ages as they do, not as the prior.
        memory = MEMORY if self._adopted else PRIOR_MEMORY
        prior_weight = self._prior_songs * math.exp(-self._finished / memory)
        # Mass stays where the data can put it (and where the prior does); the floor is
        # spread over those bins, so that EM can move mass into any of them.
        support = _support(intervals)
        for k in itertools.compress(range(BINS), self._prior):  # the bins with prior mass
            support[k] = True
        # Outside the support's first and last bins every pseudo-count is 0.
        start, end = _extent(support)
        floor = [
            f if inside else 0.0
            for f, inside in zip(self._floor[start:end], support[start:end], strict=True)
        ]
        floor_total = sum(floor) or 1.0  # no floor bin in the support: no floor
        within = [
            prior_weight * p + FLOOR_SONGS * f / floor_total
            for p, f in zip(self._prior[start:end], floor, strict=True)
        ]
        pseudo = _padded(within, start, end)
        # Where the data begin to say when songs finish: the earliest song seen done.
        seen_done = (interval.hi for interval in intervals if interval.by < math.inf)
        return _Pseudo(support, pseudo, min(seen_done, default=0))

    @staticmethod
    def _fit(
        mass: list[float], weighted: list[tuple[_Interval, float]], pseudo: _Pseudo, sweeps: int
    ) -> list[float]:
        """``sweeps`` of EM from ``mass`` on the ``weighted`` observations and ``pseudo``."""
        total = sum(pseudo.counts) + sum(weight for _, weight in weighted)
        # Read once for every sweep: each observation's bins and shares, and its weight.
        rows = [
            (interval.lo, interval.hi, interval.lo_share, interval.hi_share, weight)
            for interval, weight in weighted
        ]
        for _ in range(sweeps):
            # The tail first: the sweep then spreads songs found done over its shape, and
            # takes mass back out of it (in part) where songs seen running say none finished.
            mass = _tail(mass, pseudo.resolved, pseudo.support)
            mass = _sweep(mass, rows, pseudo.counts, total, pseudo.support)
        return mass

    def _publish(self, songs: float) -> Snapshot:
        evidence = songs + self._adopted_weight()
        cdf = _cdf_of(self._mass).cdf
        return Snapshot(version=next(self._versions), cdf=cdf, songs=songs, evidence=evidence)


def _tail(mass: list[float], resolved: int, support: list[bool]) -> list[float]:
    """``mass`` with what lies below bin ``resolved`` (that of the earliest song seen done)
    reshaped as the density just above it continued downwards, falling by a constant ratio
    per bin so that the tail holds the same mass, on the bins of the ``support`` only.

    Songs found done at a poll above that bin say only "done by then": EM spreads them in
    proportion to whatever shape the mass had and piles them up just below the polls
    (Turnbull's innermost intervals), the most hopeful place, so the polls never go lower
    to find out. A density that goes on as it was is the plainest guess; the ratio
    ``below / (below + density)`` gives a geometric tail of exactly the mass below. The
    support still bounds it (``SUPPORT_SLACK`` under the lowest songs seen running): when
    the mass below far outweighs the density above (songs that all take the same time),
    the tail is a flat step over those few bins, not a continuation. Songs seen running
    below the bin take mass back out of the tail in the sweep that follows, in part."""
    if resolved <= 0 or resolved >= len(mass):
        return mass
    below = sum(mass[:resolved])
    if below <= 0:
        return mass
    window = mass[resolved : resolved + TAIL_WINDOW]
    ratio = below / (below + sum(window) / len(window))
    shape = [0.0] * resolved
    weight = 1.0
    for k in range(resolved - 1, _extent(support)[0] - 1, -1):  # below the support: nothing
        weight *= ratio
        if support[k]:
            shape[k] = weight
    total = sum(shape)
    if total <= 0:
        return mass
    return [w / total * below for w in shape] + mass[resolved:]


def _cdf_of(mass: list[float]) -> Snapshot:
    """The distribution of bin masses ``mass``, to read (its version and songs are 0)."""
    cdf = [0.0, *itertools.accumulate(mass)]
    del cdf[BINS:]  # bin k ends at EDGES[k + 1]; the open bin's mass never reaches a finite edge
    # Rounding can carry the sum a hair past 1; the masses are not negative, so the cdf
    # rises, and past its first value above 1 every value is.
    over = bisect.bisect_right(cdf, 1.0)
    cdf[over:] = [1.0] * (BINS - over)
    return Snapshot(version=0, cdf=tuple(cdf), songs=0.0)


def _sweep(
    mass: list[float],
    rows: list[tuple[int, int, float, float, float]],
    pseudo: list[float],
    total: float,
    support: list[bool],
) -> list[float]:
    """One EM (self-consistency) sweep: spread each observation (``rows``: its first and
    last bins, its shares of them, its weight) over the bins it covers in proportion to
    ``mass``, then re-estimate the masses with the pseudo-counts."""
    prefix = [0.0, *itertools.accumulate(mass)]
    share = [0.0] * (BINS + 1)  # difference array of weight / coverage, for whole bins
    counts = list(pseudo)
    for lo, hi, lo_share, hi_share, weight in rows:
        if lo == hi:
            counts[lo] += weight  # all of its probability is in this one bin
            continue
        low_part = lo_share * mass[lo]
        high_part = hi_share * mass[hi]
        covered = low_part + prefix[hi] - prefix[lo + 1] + high_part
        if covered <= 0:
            continue
        ratio = weight / covered
        counts[lo] += ratio * low_part
        counts[hi] += ratio * high_part
        share[lo + 1] += ratio
        share[hi] -= ratio
    # Outside the bins with mass or support, and one bin more either way, every bin is and
    # stays empty: no mass to spread there, no pseudo-count, no smoothing into it. (A song
    # finished within a single bin counts there whatever its mass, and the smoothing passes
    # a share of that to the neighbours: the one bin more.) The passes below skip them.
    start, end = _span(support, mass)
    scale = 1.0 / total
    fitted = [
        (count + spread * m) * scale
        for count, spread, m in zip(
            counts[start:end],
            itertools.islice(itertools.accumulate(share), start, end),
            mass[start:end],
            strict=True,
        )
    ]
    # The smoothing step of EMS (Silverman et al., 1990): below the earliest poll, songs
    # found done say nothing of when they finished, and plain EM would keep whatever shape
    # the mass had there for ever; a little diffusion gives it the shape of its neighbours.
    # The smoothing must not carry mass out of the support, and the grid's end bins, with
    # one neighbour, keep what they do not pass on.
    edge, keep = SMOOTHING, 1.0 - 2.0 * SMOOTHING
    padded = [0.0, *fitted, 0.0]  # the empty bins on either side of the window
    smoothed = [
        m * keep + (before + after) * edge if inside else 0.0
        for before, m, after, inside in zip(
            padded[:-2], fitted, padded[2:], support[start:end], strict=True
        )
    ]
    if start == 0 and support[0]:
        smoothed[0] = fitted[0] * (1.0 - edge) + padded[2] * edge
    if end == BINS and support[-1]:
        smoothed[-1] = fitted[-1] * (1.0 - edge) + padded[-3] * edge
    kept = sum(smoothed)
    if kept > 0:
        return _padded([m / kept for m in smoothed], start, end)
    # Nothing left in the support (no fit ever gets here: the prior's bins are in it).
    spread = itertools.accumulate(share)
    return [(c + s * m) * scale for c, s, m in zip(counts, spread, mass, strict=False)]


def _span(support: list[bool], mass: list[float]) -> tuple[int, int]:
    """The bins ``[start, end)`` from one before the first to one past the last bin that
    is in the ``support`` or holds mass (masses are never negative)."""
    (first_in, end_in), (first_held, end_held) = _extent(support), _extent(mass)
    return max(0, min(first_in, first_held) - 1), min(BINS, max(end_in, end_held) + 1)


def _extent(values: Sequence[object]) -> tuple[int, int]:
    """The bins ``[start, end)`` from the first to the last true value of ``values``, one
    per bin (``(BINS, 0)``: none)."""
    start = next(itertools.compress(itertools.count(), values), BINS)
    end = BINS - next(itertools.compress(itertools.count(), reversed(values)), BINS)
    return start, end


def _padded(window: list[float], start: int, end: int) -> list[float]:
    """The values of bins ``[start, end)``, with zeros for every other bin."""
    return [0.0] * start + window + [0.0] * (BINS - end)
