"""The polling strategies the benchmark compares: ours and the baselines from DESIGN §5.

Each entry builds a fresh policy per run, so a learning policy never carries what it learned
from one workload into the next.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

import aimlmusic
from aimlmusic import _polling

__all__ = ["BASELINE", "LEARNED", "STRATEGIES", "Strategy"]


@attrs.frozen
class Strategy:
    """A named way to build a poll policy."""

    name: str
    description: str
    build: Callable[[], aimlmusic.PollPolicy] = attrs.field(repr=False)


def _exponential() -> aimlmusic.PollPolicy:
    return aimlmusic.ExponentialBackoff(initial=1.0, factor=1.5, maximum=20.0)


LEARNED = "learned"
BASELINE = "documented loop"

STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy(
            LEARNED, "aimlmusic's default policy (learns the timing)", _polling.default_policy
        ),
        Strategy(
            BASELINE,
            "the documented example: poll at once, then every 10 s",
            lambda: aimlmusic.FixedInterval(interval=10.0, first=0.0),
        ),
        Strategy(
            "fixed 0.5 s",
            "every 0.5 s from the start (replicate-python's interval)",
            lambda: aimlmusic.FixedInterval(interval=0.5, first=0.0),
        ),
        Strategy(
            "exponential",
            "1 s, x1.5 each poll, at most 20 s (google-api-core's poller)",
            _exponential,
        ),
    )
}
