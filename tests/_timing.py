"""Helpers for tests that check request timing against a budget, makespans, and for
running code in virtual time."""

from __future__ import annotations

import contextlib
import heapq
from contextlib import AbstractAsyncContextManager

from aimlmusic import Clock
from aimlmusic.testing import VirtualClock

__all__ = ["list_schedule", "max_in_window", "virtual_time"]


def max_in_window(times: list[float], window: float) -> int:
    """The most timestamps that fall in any half-open window of ``window`` seconds."""
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - window:
            start += 1
        best = max(best, end - start + 1)
    return best


def list_schedule(durations: list[float], slots: int) -> float:
    """The makespan of songs taken in order by the first free of ``slots``, each seen
    finished the moment it is: the optimum the account's slots allow, with no lag."""
    free = [0.0] * slots
    for duration in durations:
        heapq.heappush(free, heapq.heappop(free) + duration)
    return max(free)


def virtual_time(clock: Clock) -> AbstractAsyncContextManager[object]:
    """``clock`` running for the block if it is a :class:`VirtualClock` not running yet (so
    helpers can start it for tests that do nothing else in virtual time); else nothing."""
    if isinstance(clock, VirtualClock) and not clock.running:
        return clock
    return contextlib.nullcontext()
