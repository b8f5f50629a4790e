"""Client settings: plain frozen attrs classes with documented, sane defaults."""

from __future__ import annotations

import math
from typing import Any

import attrs

from . import _limits
from ._errors import ConfigurationError

__all__ = ["Limits", "RetryPolicy", "SizeLimits", "Timeout"]


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ConfigurationError(f"{attribute.name} must be positive, got {value!r}")


def _positive_finite(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not math.isfinite(value):
        raise ConfigurationError(f"{attribute.name} must be finite, got {value!r}")
    _positive(_, attribute, value)


def _non_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ConfigurationError(f"{attribute.name} must not be negative, got {value!r}")


def _at_least_one(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{attribute.name} must be a whole number >= 1, got {value!r}")


@attrs.frozen
class Timeout:
    """Timeouts in seconds.

    ``connect``, ``read``, ``write`` and ``pool`` are HTTP timeouts in real time: connecting,
    waiting for the next bytes of a response, writing a request body and waiting for a free
    connection from the pool. ``read`` also bounds the whole body of an API answer, so a
    server that drips one byte at a time cannot hold a song for ever (a submission so cut is
    ambiguous, a poll is retried). ``download`` bounds one whole :meth:`download` (every attempt,
    redirect and refresh together), so a storage host that drips one byte at a time cannot
    hold it for ever; it is measured on the client's clock, in real seconds too (on a
    :class:`ScaledClock` it spans ``scale`` times as many API seconds).
    """

    connect: float = attrs.field(default=10.0, validator=_positive)
    read: float = attrs.field(default=30.0, validator=_positive)
    write: float = attrs.field(default=30.0, validator=_positive)
    pool: float = attrs.field(default=30.0, validator=_positive)
    download: float = attrs.field(default=600.0, validator=_positive)


#: An API answer is a few hundred bytes; a megabyte leaves room for any honest error page.
DEFAULT_RESPONSE_BYTES = 1_000_000
#: A song of several minutes as 44.1 kHz stereo WAV is well below this.
DEFAULT_DOWNLOAD_BYTES = 200_000_000


@attrs.frozen
class SizeLimits:
    """Caps on how much one answer may make the client read, hold or write.

    ``response_bytes`` caps an API answer (success or error) after content decoding, so
    a compressed "bomb" is stopped as soon as it expands past it; an answer over it is a
    :class:`~aimlmusic.ResponseValidationError` (for a submission:
    :class:`~aimlmusic.AmbiguousSubmissionError`, as it may have been accepted), and an error
    body over it is cut at the cap. ``download_bytes`` caps an audio file when the API did
    not report its size; when it did (``extra_info.music_size``), the cap is that size plus
    a margin, never more than ``download_bytes``.
    """

    response_bytes: int = attrs.field(default=DEFAULT_RESPONSE_BYTES, validator=_at_least_one)
    download_bytes: int = attrs.field(default=DEFAULT_DOWNLOAD_BYTES, validator=_at_least_one)


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
    is 6 and 3. A rate below one request a minute sends one request at a time, at that rate.
    """

    requests_per_minute: float = attrs.field(
        default=_limits.REQUESTS_PER_MINUTE, validator=_positive_finite
    )
    max_in_flight: int = attrs.field(
        default=_limits.CONCURRENT_GENERATIONS, validator=_at_least_one
    )
