"""When to poll: the cheapest schedule that notices songs within a lag share, from a snapshot.

A song is noticed at the first poll at or after it finishes, so a schedule whose polls are
``(1 + share)`` apart over a range of completion times notices every song in that range
within ``share`` of its duration. The lag is judged over songs (its 95th percentile), so a
schedule need only cover ``COVERAGE`` of them: which ones to leave out is the choice, the
shortest (saving the early polls every song pays for) or the longest (which then need only
sparse polls). With the estimated distribution ``F``, a schedule's mean polls per song is
``1 + sum(1 - F(t))`` over its polls (every poll before a song finishes, plus the one that
sees it).

:func:`plan` searches that family for the smallest ``share`` (down to the lag target) that
the request budget pays for. The budget is a rate per song in flight, and a song holds its
place from its submission until a poll sees it finished, so a schedule fits when its
requests per song (a submission and its polls) are at most that rate times its expected
time in flight (Little's law). The time in flight depends on the schedule: a coarser one
notices songs later and so has more time to spend per song. When even the coarsest share
does not fit, :func:`plan` takes the cheapest schedule there is, and the budget sets the pace.
Schedules are cached per snapshot version and rate, so replanning every song in flight
after a snapshot changes costs one search.
"""

from __future__ import annotations

import functools
import math
from typing import Protocol

import attrs

from ._estimator import Snapshot

__all__ = ["Schedule", "plan"]

#: Share of songs the dense part of a schedule covers: the lag is judged at the 95th
#: percentile, and the two points above it absorb the estimate's error.
COVERAGE = 0.97
#: Ways of splitting the uncovered songs between the short and the long end.
SPLITS = 4
#: The coarsest share searched: a poll at twice the shortest covered time.
MAX_SHARE = 1.0
#: Bisection steps on the share (log scale): to 2**-7 of the range, about 3 % of the share.
SEARCH_STEPS = 7
#: Spacing past the covered range: the uncovered long songs are found, not timed.
TAIL_RATIO = 1.25
#: Never two polls of one song closer than this (API seconds): a round trip takes about as long.
MIN_GAP = 1.0
#: One stretch of completion times where fewer than this share of songs finish is not polled
#: through (it costs every song a poll per spacing and would notice next to none); one per
#: chain, so the songs it leaves late stay this few however thin the estimate runs.
GAP_MASS = 0.002
#: Songs' time in flight is counted up to this quantile: past it lies the estimate's thin
#: floor over every duration (a regulariser, not a prediction) and rare stragglers.
IN_FLIGHT_QUANTILE = 0.99
#: A poll made by fewer than this share of songs adds nothing worth counting.
NEGLIGIBLE = 1e-4
#: Polls planned past the covered range; later ones follow ``TAIL_RATIO`` without planning.
TAIL_POLLS = 8
#: Share of songs (by phase) that explore once the estimate rests on data: they are first
#: polled on a ladder halving back from the first planned poll. Songs found done at their
#: first poll say only "done by then"; explorers say how much earlier songs finish (a faster
#: service) or that they do not (so the estimate cannot drift below where songs are seen
#: running).
EXPLORE_SHARE = 1 / 32
#: Share that explores while the estimate rests on no song (none seen running or finished,
#: nothing adopted): while it is mostly the prior, where songs really finish is worth more
#: polls...
FIRST_EXPLORE_SHARE = 1 / 8
#: ... falling by e every this many songs' worth of evidence (``Snapshot.evidence``: a wave),
#: down to EXPLORE_SHARE.
EXPLORE_SONGS = 20.0
#: Rungs of that ladder: the earliest is 2**-LADDER_STEPS of the first planned poll.
LADDER_STEPS = 3
#: The ladder's last rung is this share below the first planned poll: the halving rungs find
#: a much faster service, this one whether songs finish just below the plan's start (where
#: the start is decided), a few schedule spacings down.
NEAR_RUNG = 0.1
#: The request budget's window (seconds): the API counts requests per minute, in any minute.
WINDOW = 60.0
#: The widest spread of songs' phases, in log time (polls move by up to 7 % either way): a
#: phase moves a song's whole chain, so at the coarse shares of a tight budget half a
#: spacing later would leave the shortest songs a spacing and a half late.
PHASE_SPAN = 0.14


@attrs.frozen
class Schedule:
    """Poll times, in seconds after a song's reference, and the figures they were chosen by."""

    times: tuple[float, ...]
    share: float
    polls: float  # expected polls per song
    explore_share: float = EXPLORE_SHARE  # share of songs (by phase) that climb the ladder

    @property
    def ladder(self) -> tuple[float, ...]:
        """Where explorers are polled before the first planned poll: halving back from it,
        then ``NEAR_RUNG`` below it."""
        return _ladder(self.times[0])

    def after(self, elapsed: float, phase: float = 0.0, *, explore: bool = True) -> float:
        """The first planned poll later than ``elapsed`` (and at least ``MIN_GAP`` after
        it) for a song of this ``phase`` (0-1); past the plan, the tail's spacing continues.

        A song's phase moves all its polls by up to half a spacing (``PHASE_SPAN`` at
        most), earlier or later (the plan is for the middle phase). Songs of different
        phases are polled at different times, so that together they show the estimator
        where songs finish at every time, not only at the planned ones. A song whose phase
        is below the schedule's ``explore_share`` first climbs the explorers' ladder, if
        ``explore`` (not after its clock restarted).
        """
        scale = math.pow(_phase_reach(self.share), 1.0 - 2.0 * phase)
        earliest = elapsed + MIN_GAP if elapsed > 0 else 0.0
        if explore and phase < self.explore_share:
            for t in self.ladder:
                if t > elapsed and t >= earliest:
                    return t
        for t in self.times:
            if t * scale > elapsed and t * scale >= earliest:
                return t * scale
        return max(earliest, elapsed * TAIL_RATIO)


def _phase_reach(share: float) -> float:
    """How far a song's phase may move its polls later (as a ratio; as far earlier by its
    inverse): half a spacing, at most half of ``PHASE_SPAN``."""
    return math.exp(min(math.log1p(share), PHASE_SPAN) / 2)


def _ladder(first: float) -> tuple[float, ...]:
    """The explorers' rungs below a first planned poll at ``first`` (see Schedule.ladder)."""
    halving = (first / 2**k for k in range(LADDER_STEPS, 0, -1))
    return (*halving, first / (1.0 + NEAR_RUNG))


class _Law(Protocol):
    """What planning reads of a completion-time distribution."""

    def done_by(self, t: float) -> float: ...

    def quantile(self, p: float) -> float: ...


class _Remembered:
    """A snapshot's ``done_by`` with the answers kept, for one plan: a plan reads the same
    times over and over (a chain's next poll is its following step, and each candidate's
    polls are read again for its polls per song, its time in flight and its busiest
    window). Kept only while the plan is made: nothing stays on the snapshot."""

    __slots__ = ("done_by", "quantile")

    def __init__(self, snapshot: Snapshot) -> None:
        self.done_by = functools.cache(snapshot.done_by)
        self.quantile = snapshot.quantile


def _chain(snapshot: _Law, low: float, high: float, share: float) -> list[float]:
    """Polls that notice every song finishing in ``[low, high]`` within ``share``, fewest
    first: the greedy cover of those completion times by windows ``[d, (1 + share) * d]``
    (each poll is one spacing past the earliest completion time not yet covered). Where
    hardly any song finishes (between the modes of a service that drifted, before a heavy
    tail), no poll is spent: the next one is one spacing past where songs finish again
    (once per chain, see ``GAP_MASS``)."""
    times: list[float] = []
    t = low
    skipped = False
    grow, reach = 1.0 + share, _phase_reach(share)
    # Polls held apart by the gap alone (a service of a few seconds) are ``reach`` further
    # apart as planned, so that they are still MIN_GAP apart at the phase that brings them
    # closest.
    gap = MIN_GAP * reach
    # The last poll lands on ``end``, not up to a spacing past it: no covered song finishes
    # after it, and the longest covered ones are noticed sooner for the same polls.
    end = high * reach  # covers ``high`` at any phase
    while True:
        t = max(min(t * grow, end), t + gap)
        times.append(t)
        if t >= end:
            break
        if skipped:
            continue
        done = snapshot.done_by(t)
        if snapshot.done_by(t * grow) - done < GAP_MASS:
            # Next to no song finishes in the next spacing: go on from where they do again.
            t = max(t, min(high, snapshot.quantile(done + GAP_MASS)))
            skipped = True
    for _ in range(TAIL_POLLS):
        t = max(t * TAIL_RATIO, t + gap)
        times.append(t)
    return times


def _explore_share(snapshot: Snapshot) -> float:
    """The share of songs that explore: more while the estimate rests on few songs (its
    own, or those an adopted estimate summarises)."""
    decay = math.exp(-snapshot.evidence / EXPLORE_SONGS)
    return max(EXPLORE_SHARE, FIRST_EXPLORE_SHARE * decay)


def _expected_polls(snapshot: _Law, times: list[float], explore: float) -> float:
    # At the middle phase, for songs' phases spread evenly around it (see Schedule.after),
    # and with the explorers' ladder, climbed by a share ``explore`` of songs.
    ladder = sum(1.0 - snapshot.done_by(t) for t in _ladder(times[0]))
    polls = 1.0 + explore * ladder
    for t in times:
        running = 1.0 - snapshot.done_by(t)
        if running < NEGLIGIBLE:
            break  # the polls after it hardly ever happen
        polls += running
    return polls


def _time_in_flight(snapshot: _Law, times: list[float]) -> float:
    """The mean time until a song is seen finished on ``times`` (at the middle phase, each
    song counted at most until the ``IN_FLIGHT_QUANTILE``). Explorers, seen finished a
    little earlier, are not told apart: that errs on the side of fewer polls."""
    cap = snapshot.quantile(IN_FLIGHT_QUANTILE)
    total, before = 0.0, 0.0
    for t in times:
        if t >= cap:
            break
        done = snapshot.done_by(t)
        total += (done - before) * t  # the songs finishing since the last poll, seen now
        before = done
    return total + (1.0 - before) * cap


def _cheapest(snapshot: _Law, share: float, explore: float) -> tuple[float, list[float]]:
    """The split with the fewest polls per song for ``share`` (a share ``explore`` of songs
    exploring), and its poll times."""
    best: tuple[float, list[float]] = (math.inf, [])
    uncovered = 1.0 - COVERAGE
    for step in range(SPLITS):
        # Some songs at the long end always stay uncovered: past the last ones seen lies
        # only the estimate's floor, which a dense chain would poll for ever.
        skipped_short = uncovered * step / SPLITS
        low = snapshot.quantile(skipped_short)
        high = snapshot.quantile(skipped_short + COVERAGE)
        times = _chain(snapshot, low, high, share)
        polls = _expected_polls(snapshot, times, explore)
        if polls < best[0]:
            best = (polls, times)
    return best


def _busiest_window(snapshot: _Law, times: list[float]) -> float:
    """The expected requests of one song's slot in its busiest ``WINDOW``: the song's polls
    on ``times`` (each made while it was still running at the poll before), and one
    submission (the song's own, or the next one in its slot, once the song is seen
    finished)."""
    requests: list[tuple[float, float]] = []
    running = 1.0  # the first poll is always made
    for t in times:
        if running < NEGLIGIBLE:
            break
        requests.append((t, running))
        running = 1.0 - snapshot.done_by(t)
    busiest, load, first = 0.0, 0.0, 0
    for t, weight in requests:
        load += weight
        while requests[first][0] <= t - WINDOW:
            load -= requests[first][1]
            first += 1
        busiest = max(busiest, load)
    return 1.0 + busiest


def _fits(snapshot: _Law, polls: float, times: list[float], rate: float, peak: float) -> bool:
    """Whether ``rate`` (requests per second per song in flight) pays for a submission and
    ``polls`` polls per song over the time songs spend in flight on ``times`` (Little's
    law), and ``peak`` (requests per song in any ``WINDOW``) for the requests of a song's
    busiest window: songs in flight move together (a batch's first wave, songs refilled
    after a stall), and then their busiest windows coincide, whatever the average."""
    if rate == math.inf:
        return True
    if 1.0 + polls > rate * _time_in_flight(snapshot, times):
        return False
    return peak == math.inf or _busiest_window(snapshot, times) <= peak


@functools.lru_cache(maxsize=64)
def plan(snapshot: Snapshot, rate: float, target: float, peak: float = math.inf) -> Schedule:
    """The schedule with the smallest lag share, no smaller than ``target``, that ``rate``
    and ``peak`` pay for (see :func:`_fits`; ``inf``: no budget), or the cheapest
    schedule, when none fits.

    A schedule that fits the busiest window is preferred. When none does (a budget so
    tight that even songs moving together could not all be polled once a window), the
    average alone decides: songs rarely move together all the time, and the budget's
    queue takes the likeliest polls first when they do."""
    explore = _explore_share(snapshot)
    law = _Remembered(snapshot)
    for limit in dict.fromkeys((peak, math.inf)):  # the busiest window's, then none
        found = _finest(law, rate, target, explore, limit)
        if found is not None:
            return found
    polls, times = _cheapest(law, MAX_SHARE, explore)
    return Schedule(tuple(times), MAX_SHARE, polls, explore)


def _finest(
    snapshot: _Law, rate: float, target: float, explore: float, peak: float
) -> Schedule | None:
    """The finest share (down to ``target``) that fits, by bisection; None when even the
    coarsest does not."""
    polls, times = _cheapest(snapshot, target, explore)
    if _fits(snapshot, polls, times, rate, peak):
        return Schedule(tuple(times), target, polls, explore)
    polls, times = _cheapest(snapshot, MAX_SHARE, explore)
    if not _fits(snapshot, polls, times, rate, peak):
        return None
    fits = (MAX_SHARE, polls, times)
    low, high = math.log(target), math.log(MAX_SHARE)
    for _ in range(SEARCH_STEPS):
        middle = (low + high) / 2
        polls, times = _cheapest(snapshot, math.exp(middle), explore)
        if _fits(snapshot, polls, times, rate, peak):
            fits, high = (math.exp(middle), polls, times), middle
        else:
            low = middle
    share, polls, times = fits
    return Schedule(tuple(times), share, polls, explore)
