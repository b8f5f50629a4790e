"""The emulator's sense of time: API seconds, their wall-clock mapping, and the client clock.

API time runs ``time_scale`` times faster than :func:`time.monotonic` (so it agrees across
threads with a :class:`~aimlmusic.ScaledClock` of the same scale and origin), or comes from an
injected function or :class:`~aimlmusic.Clock`. Wall-clock values the service shows
(``Expires``, error timestamps) are the creation time plus elapsed API time, so URLs expire
on the compressed clock too.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable

import anyio

from .._clock import Clock, ScaledClock

__all__ = ["EmulatorTime"]


class _CallableClock:
    """A :class:`~aimlmusic.Clock` over an injected ``now`` function."""

    def __init__(self, now: Callable[[], float], scale: float) -> None:
        self._now = now
        self._scale = scale

    @property
    def scale(self) -> float:
        """API seconds per real second (the client's bounds in real time read it)."""
        return self._scale

    def now(self) -> float:
        return self._now()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds) / self._scale)

    def __repr__(self) -> str:
        return f"EmulatorClock(scale={self._scale:g})"


class EmulatorTime:
    """Where "now" comes from, in API seconds, and how it maps to wall-clock time."""

    def __init__(self, scale: float, function: Callable[[], float] | Clock | None = None) -> None:
        self.scale = scale
        # A whole Clock (a test's virtual clock, say) is shared as is: the client then sleeps
        # on it too, rather than in real time.
        self._shared = function if isinstance(function, Clock) else None
        if isinstance(function, Clock):
            function = function.now
        self._function = function
        self._origin = time.monotonic()
        self._api_origin = function() if function is not None else 0.0
        self._unix_origin = time.time()

    def now(self) -> float:
        """The current API time (near 0 at creation with the built-in clock)."""
        if self._function is not None:
            return self._function()
        return (time.monotonic() - self._origin) * self.scale

    def clock(self) -> Clock:
        """A client-side clock on this time: same scale, same origin."""
        if self._shared is not None:
            return self._shared
        if self._function is not None:
            return _CallableClock(self._function, self.scale)
        return ScaledClock(self.scale, origin=self._origin)

    def unix(self, now: float) -> float:
        """The emulated wall-clock time (unix seconds) at API time ``now``."""
        return self._unix_origin + (now - self._api_origin)

    def timestamp(self, now: float) -> str:
        """ISO 8601 in UTC with milliseconds, as the service's error bodies show it."""
        moment = datetime.datetime.fromtimestamp(self.unix(now), tz=datetime.timezone.utc)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def real_seconds(self, api_seconds: float) -> float:
        """How long ``api_seconds`` last in real time."""
        return api_seconds / self.scale
