"""The account's request budget as the emulated service enforces it: a sliding window."""

from __future__ import annotations

from collections import deque

__all__ = ["SlidingWindow"]


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
