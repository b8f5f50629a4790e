"""How long to wait before retrying a request: pure functions, no I/O, no httpx.

Two sources of a delay, in this order of preference:

1. the server's own hint, ``retry-after-ms`` (milliseconds, non-standard but precise) or
   ``Retry-After`` (seconds, or an HTTP date), capped at ``RetryPolicy.max_retry_after`` so a
   misbehaving server cannot park a client for hours;
2. otherwise full-jitter exponential back-off: a uniformly random wait in
   ``[0, min(max_delay, base_delay * 2**retries_done)]``. Full jitter (rather than a fixed
   exponential step) spreads many clients that failed together, so they do not retry in step.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import random
import time
from collections.abc import Mapping

from ._config import RetryPolicy

__all__ = ["backoff_delay", "capped", "parse_retry_after", "retry_delay"]

#: Exponents above this cannot change the result (any float delay is capped long before).
_MAX_EXPONENT = 64


def backoff_delay(
    retries_done: int,
    policy: RetryPolicy,
    *,
    rng: random.Random | None = None,
    least: float = 0.0,
) -> float:
    """Jittered exponential back-off before the next retry, given how many retries were
    already made: the library's one back-off.

    The first retry (``retries_done=0``) waits up to ``base_delay``, the second up to twice
    that, and so on, never more than ``max_delay``. The wait is uniformly random between
    ``least`` of that window and all of it: ``0.0`` is full jitter (retries of requests), ``0.5``
    equal jitter (the request budget's pause after a 429, which must be a pause).
    """
    if retries_done < 0:
        raise ValueError(f"retries_done must not be negative, got {retries_done!r}")
    if not 0.0 <= least <= 1.0:
        raise ValueError(f"least must be in [0, 1], got {least!r}")
    window = min(policy.max_delay, policy.base_delay * 2.0 ** min(retries_done, _MAX_EXPONENT))
    return (rng or random).uniform(least * window, window)


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """The wait in seconds a response asks for, or ``None`` when it gives no usable hint.

    ``headers`` must look names up case-insensitively (as HTTP header maps do); pass a dict
    with lower-case keys otherwise. ``retry-after-ms`` wins over ``Retry-After`` because it
    is more precise. An HTTP date is measured against ``now`` (seconds since the epoch,
    default: the wall clock); a date in the past means "retry now" (``0.0``). Negative,
    non-finite or unparseable values are ignored.
    """
    millis = _number(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000.0
    raw = headers.get("retry-after")
    if raw is None:
        return None
    seconds = _number(raw)
    if seconds is not None:
        return seconds
    return _seconds_until_http_date(raw, time.time() if now is None else now)


def capped(seconds: float, cap: float) -> float:
    """``seconds`` limited to ``[0, cap]``."""
    return min(max(0.0, seconds), cap)


def retry_delay(
    retries_done: int,
    policy: RetryPolicy,
    retry_after: float | None,
    *,
    rng: random.Random | None = None,
) -> float:
    """The wait before the next retry: the server's hint (capped) if any, else back-off."""
    if retry_after is not None:
        return capped(retry_after, policy.max_retry_after)
    return backoff_delay(retries_done, policy, rng=rng)


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return value


def _seconds_until_http_date(raw: str, now: float) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(raw.strip())
        if when.tzinfo is None:
            # RFC 9110 dates are always GMT; a "-0000" (zone-less) date is read the same way.
            when = when.replace(tzinfo=datetime.timezone.utc)
        return max(0.0, when.timestamp() - now)
    # OverflowError: a year too large for a datetime (a 20-digit one), or its timestamp.
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
