"""Whether the service changed pace: a log-rank test of recent songs against older ones.

The estimator forgets old songs gradually, which follows a service that drifts slowly but
not one that changes at once (a model update, a load spike, a new hardware pool): after a
wave of songs at the new pace, the old pace still weighs more than the new one, and the
planner keeps polling where songs used to finish. So every refit also asks whether the most
recent songs (by when their clocks started) take as long as the older ones, and when they
clearly do not, the older ones are dropped.

That is the two-sample question for censored durations, and the log-rank test is its
standard answer. Polls see songs only between two polls, so this is its form for
interval-censored data (Finkelstein, 1986; Fay, 1999): under "no change", with ``S`` the
survival function estimated from all songs, a song known to finish in ``(a, b]`` scores

    (S(a) log S(a) - S(b) log S(b)) / (S(a) - S(b))

(a song still running at ``a`` scores ``log S(a)``, as if ``S(b) = 0``). Whatever the polls that
bracket a song, its score has mean zero when it follows ``S`` (the terms telescope), so the
recent songs' scores sum to about zero. Songs that finish later than ``S`` predicts score
low (a wave seen running well past where older songs finished is evidence before any of it
finishes); songs found finished at a late first poll, saying little, score near zero. The
sum is compared with its spread over random splits of the same scores into groups of the
same sizes (the permutation variance), which makes it about standard normal. Where the
recent songs begin is not known in advance, so every split is tried (in the order the
songs' clocks started) and the strongest one is the change, if it is strong enough: the
standard way to find a change point, at the cost of a higher bar than one test would need.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["logrank_score", "strongest_split"]

#: The least survival a score reads: a song finishing past every song seen counts as one in
#: a thousand, not as impossible, so that one straggler cannot make a change on its own.
MIN_SURVIVAL = 1e-3
#: Survivals closer than this are one point: the score is its limit there.
_POINT = 1e-9
#: A spread at most this share of the scores' sum of squares is rounding, not variation:
#: equal scores leave about 1e-31 of it, a change of pace far more than 1e-12.
_FLAT = 1e-12


def logrank_score(survival_after: float, survival_by: float | None) -> float:
    """The log-rank score of a song that finished in ``(a, b]``, from ``S(a)`` and ``S(b)``
    (``None``: still running at ``a``)."""
    high = min(1.0, max(survival_after, MIN_SURVIVAL))
    if survival_by is None:
        return math.log(high)
    low = min(high, max(survival_by, MIN_SURVIVAL))
    if high - low <= _POINT:
        return math.log(high) + 1.0  # the derivative of S log S
    return (high * math.log(high) - low * math.log(low)) / (high - low)


def strongest_split(
    scores: Sequence[float], first: int, last: int, starts: Sequence[float] | None = None
) -> tuple[int, float]:
    """Where the scores (in the order the songs' clocks started) most clearly change: the
    split ``k`` in ``[first, last]`` whose later songs (``scores[k:]``) sum furthest from
    what the same number of songs drawn at random from all would, and that distance in
    standard deviations of such a draw (the permutation variance): negative when the later
    songs take longer. ``(first, 0.0)`` when there is no such split or the scores do not
    vary (beyond rounding). All splits cost one pass, with prefix sums.

    ``starts`` (sorted, one per score): when the songs' clocks started. A change happens at
    a time, so songs that started together are on one side of it: splits fall only where
    the start time moves on."""
    count = len(scores)
    first, last = max(first, 1), min(last, count - 1)
    if first > last:
        return first, 0.0
    mean = math.fsum(scores) / count
    spread = math.fsum((score - mean) ** 2 for score in scores)
    if spread <= _FLAT * sum(score * score for score in scores):  # inf, not an error, past 1e154
        return first, 0.0
    best, best_z = first, 0.0
    later = math.fsum(score - mean for score in scores[first:])  # the songs from ``first`` on
    for split in range(first, last + 1):
        size = count - split
        z = later / math.sqrt(size * split / (count * (count - 1)) * spread)
        tied = starts is not None and starts[split - 1] == starts[split]
        if abs(z) > abs(best_z) and not tied:
            best, best_z = split, z
        later -= scores[split] - mean
    return best, best_z
