"""Client settings: plain frozen attrs classes with documented, sane defaults."""

from __future__ import annotations

from typing import Any

import attrs

from . import _limits
from ._errors import ConfigurationError

__all__ = ["Limits", "RetryPolicy", "Timeout"]


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ConfigurationError(f"{attribute.name} must be positive, got {value!r}")


def _non_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ConfigurationError(f"{attribute.name} must not be negative, got {value!r}")


def _at_least_one(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{attribute.name} must be a whole number >= 1, got {value!r}")


@attrs.frozen
class Timeout:
    """HTTP timeouts in seconds (real time): connecting, reading a response, writing a
    request body and waiting for a free connection from the pool."""

    connect: float = attrs.field(default=10.0, validator=_positive)
    read: float = attrs.field(default=30.0, validator=_positive)
    write: float = attrs.field(default=30.0, validator=_positive)
    pool: float = attrs.field(default=30.0, validator=_positive)


@attrs.frozen
class RetryPolicy:
    """How failed requests are retried: full-jitter exponential back-off.

    The n-th retry waits a random time in ``[0, min(max_delay, base_delay * 2**n)]``; a
    server's ``Retry-After`` / ``retry-after-ms`` is honoured instead, up to
    ``max_retry_after`` seconds. ``attempts`` counts the first try: ``attempts=1`` disables
    retries. What is safe to retry is fixed by the method, not by this policy: GETs retry on
    connection errors, timeouts, 429 and 5xx; POSTs only when the request never reached the
    server, or on 429.
    """

    attempts: int = attrs.field(default=6, validator=_at_least_one)
    base_delay: float = attrs.field(default=0.5, validator=_positive)
    max_delay: float = attrs.field(default=30.0, validator=_positive)
    max_retry_after: float = attrs.field(default=120.0, validator=_non_negative)


@attrs.frozen
class Limits:
    """The account's limits, shared by every call of one client.

    ``requests_per_minute`` is one budget for submissions and polls together;
    ``max_in_flight`` caps generations submitted and not yet finished. The defaults are the
    published paid-tier limits (120 requests/minute, 20 generations at once); the free tier
    is 6 and 3.
    """

    requests_per_minute: float = attrs.field(
        default=_limits.REQUESTS_PER_MINUTE, validator=_positive
    )
    max_in_flight: int = attrs.field(
        default=_limits.CONCURRENT_GENERATIONS, validator=_at_least_one
    )
