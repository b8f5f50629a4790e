"""When to poll a generation next.

A :class:`PollPolicy` turns what is known about one song (:class:`PollState`) into the delay
before its next poll, and may learn from songs that started or finished (``observe_*``).
The scheduler and ``AsyncMusicClient.wait`` both ask the same policy.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import attrs

from ._models import GenerationStatus

__all__ = ["FixedInterval", "PollPolicy", "PollState"]


@attrs.frozen
class PollState:
    """What a policy knows about one song, in API seconds on the client's clock.

    ``polls`` is how many polls were already made; ``status`` is the last status seen
    (``None`` before the first poll, or the submission's own status); ``started_at`` is when
    the song was first seen ``generating`` (``None`` if not yet); ``last_poll_at`` is when the
    last poll returned.
    """

    submitted_at: float
    now: float
    polls: int = 0
    status: GenerationStatus | None = None
    started_at: float | None = None
    last_poll_at: float | None = None


@runtime_checkable
class PollPolicy(Protocol):
    """Decides when to poll; may learn from what it observes."""

    def next_delay(self, state: PollState) -> float:
        """Seconds from ``state.now`` until the next poll of this song."""
        ...

    def observe_started(self, submitted_at: float, after: float, by: float) -> None:
        """A song submitted at ``submitted_at`` started generating between ``after`` and ``by``
        (the last poll that saw it queued and the first that saw it generating)."""
        ...

    def observe_finished(
        self, submitted_at: float, started_at: float | None, after: float, by: float
    ) -> None:
        """A song finished between ``after`` (last poll that saw it unfinished) and ``by``."""
        ...


@attrs.frozen
class FixedInterval:
    """Poll after ``first`` seconds, then every ``interval`` seconds; learns nothing.

    ``FixedInterval(interval=10.0, first=0.0)`` is the documented example's loop.
    """

    interval: float = 10.0
    first: float = 0.0

    def __attrs_post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError(f"interval must be positive, got {self.interval!r}")
        if self.first < 0:
            raise ValueError(f"first must not be negative, got {self.first!r}")

    def next_delay(self, state: PollState) -> float:
        return self.first if state.polls == 0 else self.interval

    def observe_started(self, submitted_at: float, after: float, by: float) -> None:
        return None

    def observe_finished(
        self, submitted_at: float, started_at: float | None, after: float, by: float
    ) -> None:
        return None


def default_policy() -> PollPolicy:
    """The policy a client uses when none is given."""
    return FixedInterval(interval=5.0, first=45.0)
