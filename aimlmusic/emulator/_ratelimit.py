"""The account's request budget as the emulated service enforces it: a sliding window by
default, or a token bucket (the other common way a gateway counts, which tolerates smaller
bursts) when a burst size is configured."""

from __future__ import annotations

from collections import deque

__all__ = ["SlidingWindow", "TokenBucket"]


class SlidingWindow:
    """At most ``limit`` admitted requests in any ``window`` seconds.

    Only admitted requests count: a request answered 429 does not use up budget (the real
    service documents nothing here; this is the forgiving reading). O(1) amortised per call.
    """

    def __init__(self, limit: int, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self._admitted: deque[float] = deque()

    def admit(self, now: float) -> float | None:
        """Admit a request at ``now`` and return ``None``, or refuse it and return the seconds
        until the window would admit one."""
        horizon = now - self.window
        admitted = self._admitted
        while admitted and admitted[0] <= horizon:
            admitted.popleft()
        if len(admitted) < self.limit:
            admitted.append(now)
            return None
        return max(0.0, admitted[0] + self.window - now)


class TokenBucket:
    """Holds at most ``burst`` requests' worth of tokens, refilled at ``limit`` per
    ``window`` seconds; each admitted request takes one.

    The same average rate as :class:`SlidingWindow`, but a burst larger than ``burst`` is
    refused even when the last minute was quiet. Only admitted requests take a token.
    """

    def __init__(self, limit: int, burst: int, window: float = 60.0) -> None:
        self.limit = limit
        self.burst = burst
        self.window = window
        self._tokens = float(burst)
        self._at: float | None = None

    def admit(self, now: float) -> float | None:
        """Admit a request at ``now`` and return ``None``, or refuse it and return the seconds
        until a token is back."""
        rate = self.limit / self.window
        if self._at is not None:
            self._tokens = min(float(self.burst), self._tokens + max(0.0, now - self._at) * rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        return (1.0 - self._tokens) / rate
