"""Clocks: where "now" and "sleep" come from, so time can be compressed in tests and demos.

Everything that waits (polling, back-off, the request budget) asks a :class:`Clock`, never
``anyio.sleep`` directly. :class:`ScaledClock` runs API time faster than real time; paired
with an emulator using the same scale, a 55-second song takes 55 ms.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

import anyio

__all__ = ["Clock", "ScaledClock", "SystemClock", "api_seconds", "finished_by"]


@runtime_checkable
class Clock(Protocol):
    """A source of time in API seconds."""

    def now(self) -> float:
        """Seconds on a monotonic clock (the origin is arbitrary)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of API time."""
        ...


class SystemClock:
    """Real time, from the running event loop."""

    def now(self) -> float:
        """The event loop's clock (``anyio.current_time()``)."""
        return anyio.current_time()

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of real time (negative counts as zero)."""
        await anyio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "SystemClock()"


class ScaledClock:
    """API time running ``scale`` times faster than real time.

    Uses :func:`time.monotonic` so that an emulator in another thread (a served socket) and the
    client agree on "now" when given the same scale and origin.
    """

    def __init__(self, scale: float, origin: float | None = None) -> None:
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale!r}")
        self.scale = float(scale)
        self.origin = time.monotonic() if origin is None else origin

    def now(self) -> float:
        """API seconds since ``origin`` (real seconds times ``scale``)."""
        return (time.monotonic() - self.origin) * self.scale

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of API time, that is ``seconds / scale`` of real time."""
        await anyio.sleep(max(0.0, seconds) / self.scale)

    def __repr__(self) -> str:
        return f"ScaledClock(scale={self.scale:g})"


async def finished_by(clock: Clock, at: float, wait: Callable[[], Awaitable[None]]) -> bool:
    """Run ``wait()`` until it returns or ``clock`` reaches ``at``, whichever comes first;
    True when it returned. The event loop's deadlines (``anyio.move_on_after``) cannot
    follow a compressed or virtual clock, so the clock itself rings the alarm."""
    finished = False
    error: Exception | None = None
    async with anyio.create_task_group() as task_group:

        async def alarm() -> None:
            await clock.sleep(at - clock.now())
            task_group.cancel_scope.cancel()

        task_group.start_soon(alarm)
        try:
            await wait()
            finished = True
        except Exception as exc:
            error = exc  # raised below as itself, not in an ExceptionGroup
        task_group.cancel_scope.cancel()
    if error is not None:
        raise error
    return finished


def api_seconds(clock: Clock, real_seconds: float) -> float:
    """The API seconds ``clock`` counts while ``real_seconds`` of real time pass: as many on
    a clock of real time, ``scale`` times as many on one that runs API time faster (a
    :class:`ScaledClock`, or the clock that follows an emulator's pace, whose scale is known
    only once learned: so ask at the moment it is needed)."""
    scale = getattr(clock, "scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 < scale < math.inf:
        scale = 1.0
    return real_seconds * scale
