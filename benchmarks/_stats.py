"""Small statistics shared by the benchmarks: percentiles, the makespan optimum, targets."""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence

import attrs

__all__ = ["Target", "list_schedule_makespan", "percentile"]


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation; NaN for no values."""
    data = sorted(values)
    if not data:
        return math.nan
    if len(data) == 1:
        return data[0]
    rank = (len(data) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


def list_schedule_makespan(durations: Sequence[float], slots: int) -> float:
    """Makespan when songs start, in the given order, on the first free of ``slots`` slots,
    and each is noticed the instant it completes (no submission cost, zero lag).

    This is the best any client can do without knowing durations in advance: the yardstick
    for "makespan against the optimum the limits allow".
    """
    if not durations:
        return 0.0
    free_at = [0.0] * min(slots, len(durations))
    heapq.heapify(free_at)
    end = 0.0
    for duration in durations:
        start = heapq.heappop(free_at)
        finish = start + duration
        end = max(end, finish)
        heapq.heappush(free_at, finish)
    return end


@attrs.frozen
class Target:
    """A figure's target: ``value <= limit`` (or ``<`` when ``strict``)."""

    limit: float
    label: str
    strict: bool = False

    def met(self, value: float, digits: int | None = None) -> bool:
        """Whether ``value`` meets the target (NaN never does). With ``digits``, the value is
        judged as printed, rounded to that many decimals, so "1.30 ✗ (≤ 1.3)" cannot happen."""
        if math.isnan(value):
            return False
        if digits is not None:
            value = round(value, digits)
        return value < self.limit if self.strict else value <= self.limit

    def mark(self, value: float, digits: int | None = None) -> str:
        """``✓`` or ``✗`` followed by the target, for printing next to the figure."""
        return f"{'✓' if self.met(value, digits) else '✗'} ({self.label})"
