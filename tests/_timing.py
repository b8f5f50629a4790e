"""Helpers for tests that check request timing against a budget."""

from __future__ import annotations

__all__ = ["max_in_window"]


def max_in_window(times: list[float], window: float) -> int:
    """The most timestamps that fall in any half-open window of ``window`` seconds."""
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - window:
            start += 1
        best = max(best, end - start + 1)
    return best
