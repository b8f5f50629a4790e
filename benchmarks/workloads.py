"""The workloads the polling benchmark runs: the timing laws the polling targets cover.

The documented law (uniform 50-60 s) against a server counting with a sliding minute and
against one counting with a small token bucket; a lognormal law and a heavy tail around it;
services faster than documented (20-40 s, and 10-20 s, whose pace the request budget sets);
and a service that slows down half way through a run.

Each workload draws one song's generating time, in API seconds, from a seeded
:class:`random.Random`, so two strategies in the same run see the same durations.
"""

from __future__ import annotations

import math
import random
import weakref
from collections.abc import Callable

import attrs

__all__ = [
    "DRIFT",
    "FAST",
    "HEAVY_TAIL",
    "LOGNORMAL",
    "MEDIUM",
    "SMALL_BURSTS",
    "UNIFORM",
    "WORKLOADS",
    "Shift",
    "Workload",
]

Draw = Callable[[random.Random], float]


@attrs.frozen(eq=False)
class Shift:
    """Durations from ``before`` for the first ``switch_after`` songs a generator draws, from
    ``after`` then: a service that slows down part-way through a run.

    The count is kept per generator, so it restarts with every run (each emulator, and each
    simulated server, seeds a generator of its own).
    """

    before: Draw
    after: Draw
    switch_after: int
    _drawn: weakref.WeakKeyDictionary[random.Random, int] = attrs.field(
        factory=weakref.WeakKeyDictionary, init=False, repr=False
    )

    def __call__(self, rng: random.Random) -> float:
        drawn = self._drawn.get(rng, 0)
        self._drawn[rng] = drawn + 1
        return (self.before if drawn < self.switch_after else self.after)(rng)


@attrs.frozen
class Workload:
    """A named distribution of generating times; calling it draws one duration."""

    name: str
    description: str
    draw: Draw = attrs.field(repr=False)
    #: The server's token bucket, in requests (``None``: a sliding minute).
    burst: int | None = None

    def __call__(self, rng: random.Random) -> float:
        return self.draw(rng)

    def sample(self, rng: random.Random) -> float:
        """One duration (the emulator's ``Distribution`` protocol)."""
        return self.draw(rng)

    def durations(self, count: int, seed: int) -> list[float]:
        """``count`` durations from a generator seeded with ``seed``."""
        rng = random.Random(seed)
        return [self.draw(rng) for _ in range(count)]

    @property
    def shift_at(self) -> int | None:
        """The first song (by submission index) drawn from the law after a shift, if any."""
        return self.draw.switch_after if isinstance(self.draw, Shift) else None

    def for_run(self, songs: int) -> Workload:
        """This workload for a run of ``songs`` songs: a shifting service shifts half way."""
        if not isinstance(self.draw, Shift):
            return self
        return attrs.evolve(self, draw=attrs.evolve(self.draw, switch_after=songs // 2))

    def settled(self) -> Workload:
        """The law the bounds are computed on: after the shift for a shifting service."""
        if not isinstance(self.draw, Shift):
            return self
        return attrs.evolve(self, name=f"{self.name} (after)", draw=self.draw.after)


def _uniform(low: float, high: float) -> Draw:
    def draw(rng: random.Random) -> float:
        return rng.uniform(low, high)

    return draw


def _lognormal_55(rng: random.Random) -> float:
    # median 55 s: the median of a lognormal is exp(mu).
    return rng.lognormvariate(math.log(55.0), 0.35)


def _heavy_tail(rng: random.Random) -> float:
    if rng.random() < 0.05:
        return rng.uniform(120.0, 240.0)
    return rng.uniform(50.0, 60.0)


_DOCUMENTED = _uniform(50.0, 60.0)

#: Songs per run the shifting service assumes until :meth:`Workload.for_run` says otherwise.
_DEFAULT_RUN_SONGS = 200

UNIFORM = Workload("uniform", "documented: uniform 50-60 s", _DOCUMENTED)
LOGNORMAL = Workload("lognormal", "lognormal, median 55 s, sigma 0.35", _lognormal_55)
HEAVY_TAIL = Workload("heavy-tail", "95 % uniform 50-60 s, 5 % uniform 2-4 min", _heavy_tail)
DRIFT = Workload(
    "drift",
    "uniform 35-45 s for the first half of the songs, 80-100 s for the second half",
    Shift(_uniform(35.0, 45.0), _uniform(80.0, 100.0), _DEFAULT_RUN_SONGS // 2),
)
MEDIUM = Workload("medium", "uniform 20-40 s", _uniform(20.0, 40.0))
# 20 slots of 10-20 s songs would turn over faster than 120 requests a minute can submit and
# poll them: the budget, not the service, sets the pace.
FAST = Workload("fast", "uniform 10-20 s (faster than the budget)", _uniform(10.0, 20.0))
SMALL_BURSTS = Workload(
    "bucket-10",
    "uniform 50-60 s, the server counting 120/min with a token bucket of 10",
    _DOCUMENTED,
    burst=10,
)

#: In the order the report lists them.
WORKLOADS: dict[str, Workload] = {
    w.name: w for w in (UNIFORM, LOGNORMAL, HEAVY_TAIL, DRIFT, MEDIUM, FAST, SMALL_BURSTS)
}
