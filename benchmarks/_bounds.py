"""How few polls any policy could spend for a given lag, if it knew the durations' law.

A song is noticed at the first poll at or after it finishes; its lag is within ``share`` of
its duration ``d`` only if a poll falls in ``[d, (1 + share) * d]``. Songs cannot be told
apart before they finish, so an omniscient policy still polls every song on one schedule,
and the cheapest schedule that keeps lag within ``share`` for a ``coverage`` fraction of songs
chains polls ``(1 + share)`` apart across the durations it covers. Which songs to leave
uncovered is the one choice: the shortest ones (saving the polls every song pays for) or the
longest ones (which then need only sparse polls). :func:`fewest_polls` tries every split and
returns the cheapest, by sampling the workload: the bar no learning policy can beat, which
says whether a lag target and a polls target can be met together at all. :func:`best_share`
turns it round: the least lag p95 (as a share of duration) such a policy reaches with a
given number of polls per song.
"""

from __future__ import annotations

import bisect
import math
import random

from workloads import Workload

__all__ = ["best_share", "fewest_polls"]

#: Spacing of the sparse polls after the covered range (they only find the uncovered tail).
_SPARSE_RATIO = 1.5
#: How many ways of leaving the uncovered songs out (shortest ones, longest ones, between).
_SPLITS = 51
#: Lag shares the bisection searches between: 0.01 % (beyond any schedule's precision) and
#: 1000 % (a poll every 11 durations, cheaper than any run spends).
_SHARE_RANGE = (1e-4, 10.0)
#: Bisection steps on the log of the share: the bound comes out within 1e-6 of itself.
_BISECTION_STEPS = 24
#: Sorted samples of each law already drawn (a bisection asks for one law 26 times).
_SAMPLED: dict[tuple[object, int, int], list[float]] = {}


def _expected_polls(durations: list[float], schedule: list[float]) -> float:
    """Mean polls per song: every poll before a song finishes, plus the one that sees it."""
    n = len(durations)
    before = sum(1.0 - bisect.bisect_left(durations, t) / n for t in schedule)
    return before + 1.0


def _schedule(low: float, high: float, longest: float, share: float) -> list[float]:
    times = []
    t = low * (1.0 + share)
    while True:
        times.append(t)
        if t >= high:
            break
        t *= 1.0 + share
    while t < longest:
        t *= _SPARSE_RATIO
        times.append(t)
    return times


def fewest_polls(
    workload: Workload,
    *,
    share: float,
    coverage: float = 0.95,
    samples: int = 100_000,
    seed: int = 1,
) -> float:
    """The fewest mean polls per song for which a ``coverage`` fraction of songs is noticed
    within ``share`` of its duration, for a policy that knows ``workload`` exactly."""
    durations = _sorted_durations(workload, samples, seed)
    n = len(durations)
    best = float("inf")
    for step in range(_SPLITS):
        skipped_short = (1.0 - coverage) * step / (_SPLITS - 1)
        first = min(n - 1, int(skipped_short * n))
        last = min(n - 1, int((skipped_short + coverage) * n))
        schedule = _schedule(durations[first], durations[last], durations[-1], share)
        best = min(best, _expected_polls(durations, schedule))
    return best


def _sorted_durations(workload: Workload, samples: int, seed: int) -> list[float]:
    key = (workload.draw, samples, seed)
    if key not in _SAMPLED:
        rng = random.Random(seed)
        _SAMPLED[key] = sorted(workload.draw(rng) for _ in range(samples))
    return _SAMPLED[key]


def best_share(
    workload: Workload, polls: float, *, coverage: float = 0.95, samples: int = 100_000
) -> float:
    """The smallest lag share (of duration, 0.03 = 3 %) that a ``coverage`` fraction of songs
    keeps for a policy that knows ``workload`` exactly and spends at most ``polls`` mean polls
    per song: what the best single geometric schedule achieves at these polls/song.

    Infinite when even the widest spacing costs more polls than ``polls``."""
    low, high = _SHARE_RANGE
    if fewest_polls(workload, share=high, coverage=coverage, samples=samples) > polls:
        return float("inf")
    if fewest_polls(workload, share=low, coverage=coverage, samples=samples) <= polls:
        return low
    for _ in range(_BISECTION_STEPS):
        middle = math.sqrt(low * high)  # shares span decades: bisect their logarithm
        if fewest_polls(workload, share=middle, coverage=coverage, samples=samples) <= polls:
            high = middle
        else:
            low = middle
    return high
