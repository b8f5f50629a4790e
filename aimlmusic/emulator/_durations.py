"""How long a song takes: small seeded distributions of API seconds.

A distribution is anything with ``sample(rng) -> float``; a plain callable taking a
:class:`random.Random` works too. The emulator passes its own seeded generator, so the same
seed and the same request sequence give the same timings.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Protocol, TypeAlias, runtime_checkable

import attrs

__all__ = [
    "Distribution",
    "DurationSource",
    "Fixed",
    "LogNormal",
    "Mixture",
    "Uniform",
    "draw",
]


@runtime_checkable
class Distribution(Protocol):
    """A source of random durations in API seconds."""

    def sample(self, rng: random.Random) -> float:
        """Draw one duration using ``rng``."""
        ...


#: What the configuration accepts: a :class:`Distribution` or ``callable(rng) -> seconds``.
DurationSource: TypeAlias = Distribution | Callable[[random.Random], float]


def draw(source: DurationSource, rng: random.Random) -> float:
    """One non-negative duration from ``source``."""
    value = source.sample(rng) if isinstance(source, Distribution) else source(rng)
    return max(0.0, float(value))


def _non_negative(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must not be negative, got {value!r}")


@attrs.frozen
class Fixed:
    """Always ``seconds``."""

    seconds: float = attrs.field(validator=_non_negative)

    def sample(self, rng: random.Random) -> float:
        """Return ``seconds``."""
        return self.seconds


@attrs.frozen
class Uniform:
    """Uniform between ``low`` and ``high`` seconds (the documented 50-60 s by default)."""

    low: float = attrs.field(default=50.0, validator=_non_negative)
    high: float = attrs.field(default=60.0)

    @high.validator
    def _check_high(self, _: attrs.Attribute[float], value: float) -> None:
        if value < self.low:
            raise ValueError(f"high ({value!r}) must not be below low ({self.low!r})")

    def sample(self, rng: random.Random) -> float:
        """Draw uniformly from ``[low, high]``."""
        return rng.uniform(self.low, self.high)


@attrs.frozen
class LogNormal:
    """Log-normal with the given ``median`` and shape ``sigma``, clipped to ``[low, high]``:
    a long right tail, like a service under load."""

    median: float = attrs.field(validator=_non_negative)
    sigma: float = attrs.field(default=0.25, validator=_non_negative)
    low: float = attrs.field(default=0.0, validator=_non_negative)
    high: float = math.inf

    def sample(self, rng: random.Random) -> float:
        """Draw one value and clip it."""
        value = rng.lognormvariate(math.log(self.median), self.sigma) if self.median > 0 else 0.0
        return min(self.high, max(self.low, value))


@attrs.frozen
class Mixture:
    """Pick a component with probability proportional to its weight, then draw from it.

    ``Mixture(((0.9, Uniform(50, 60)), (0.1, Uniform(120, 240))))`` models a service where one
    song in ten is stuck behind a slow worker.
    """

    components: tuple[tuple[float, DurationSource], ...] = attrs.field(converter=tuple)

    @components.validator
    def _check(self, _: attrs.Attribute[object], value: tuple[tuple[float, object], ...]) -> None:
        if not value or any(weight < 0 for weight, _ in value) or sum(w for w, _ in value) <= 0:
            raise ValueError("a Mixture needs components with non-negative weights summing above 0")

    def sample(self, rng: random.Random) -> float:
        """Choose a component by weight and draw from it."""
        total = sum(weight for weight, _ in self.components)
        pick = rng.random() * total
        for weight, source in self.components:
            pick -= weight
            if pick < 0:
                return draw(source, rng)
        return draw(self.components[-1][1], rng)
