"""The workloads the polling benchmark runs: issue 6's three generation-time distributions,
the documented one against a server that counts requests with a small token bucket, and a
service several times faster than documented, whose pace the request budget sets.

Each workload draws one song's generating time, in API seconds, from a seeded
:class:`random.Random`, so two strategies in the same run see the same durations.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import attrs

__all__ = [
    "FAST",
    "HEAVY_TAIL",
    "LOGNORMAL",
    "SMALL_BURSTS",
    "UNIFORM",
    "WORKLOADS",
    "Workload",
]


@attrs.frozen
class Workload:
    """A named distribution of generating times; calling it draws one duration."""

    name: str
    description: str
    draw: Callable[[random.Random], float] = attrs.field(repr=False)
    #: The server's token bucket, in requests (``None``: a sliding minute).
    burst: int | None = None
    #: Whether issue 6 sets lag and makespan targets for it (else they are only reported).
    judged: bool = True

    def __call__(self, rng: random.Random) -> float:
        return self.draw(rng)

    def sample(self, rng: random.Random) -> float:
        """One duration (the emulator's ``Distribution`` protocol)."""
        return self.draw(rng)

    def durations(self, count: int, seed: int) -> list[float]:
        """``count`` durations from a generator seeded with ``seed``."""
        rng = random.Random(seed)
        return [self.draw(rng) for _ in range(count)]


def _uniform_50_60(rng: random.Random) -> float:
    return rng.uniform(50.0, 60.0)


def _lognormal_55(rng: random.Random) -> float:
    # median 55 s: the median of a lognormal is exp(mu).
    return rng.lognormvariate(math.log(55.0), 0.35)


def _uniform_10_20(rng: random.Random) -> float:
    return rng.uniform(10.0, 20.0)


def _heavy_tail(rng: random.Random) -> float:
    if rng.random() < 0.05:
        return rng.uniform(120.0, 240.0)
    return rng.uniform(50.0, 60.0)


UNIFORM = Workload("uniform", "documented: uniform 50-60 s", _uniform_50_60)
LOGNORMAL = Workload("lognormal", "lognormal, median 55 s, sigma 0.35", _lognormal_55)
HEAVY_TAIL = Workload("heavy-tail", "95 % uniform 50-60 s, 5 % uniform 2-4 min", _heavy_tail)

SMALL_BURSTS = Workload(
    "bucket-10",
    "uniform 50-60 s, the server counting 120/min with a token bucket of 10",
    _uniform_50_60,
    burst=10,
    judged=False,
)
# 20 slots of 10-20 s songs would turn over faster than 120 requests a minute can submit and
# poll them: the budget, not the service, sets the pace.
FAST = Workload("fast", "uniform 10-20 s (faster than the budget)", _uniform_10_20, judged=False)

#: In the order the report lists them.
WORKLOADS: dict[str, Workload] = {
    w.name: w for w in (UNIFORM, LOGNORMAL, HEAVY_TAIL, SMALL_BURSTS, FAST)
}
