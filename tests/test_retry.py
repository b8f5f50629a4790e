"""Back-off and Retry-After parsing (pure functions, no I/O)."""

from __future__ import annotations

import email.utils
import random

import httpx
import pytest

from aimlmusic import RetryPolicy
from aimlmusic._retry import backoff_delay, capped, parse_retry_after, retry_delay

POLICY = RetryPolicy(attempts=10, base_delay=0.5, max_delay=8.0, max_retry_after=60.0)
NOW = 1_762_460_000.0  # a fixed wall-clock instant (seconds since the epoch)


def http_date(offset: float) -> str:
    """An RFC 9110 date ``offset`` seconds after NOW."""
    return email.utils.formatdate(NOW + offset, usegmt=True)


@pytest.mark.parametrize(("retries_done", "window"), [(0, 0.5), (1, 1.0), (2, 2.0), (4, 8.0)])
def test_backoff_stays_inside_its_growing_window(retries_done: int, window: float) -> None:
    """The n-th retry waits within [0, base * 2**n]."""
    rng = random.Random(7)
    delays = [backoff_delay(retries_done, POLICY, rng=rng) for _ in range(500)]
    assert all(0.0 <= d <= window for d in delays)
    assert max(delays) > window * 0.9  # the whole window is used ...
    assert min(delays) < window * 0.1  # ... down to nearly zero: full jitter


def test_backoff_never_exceeds_max_delay_even_for_huge_retry_counts() -> None:
    """The window is capped at max_delay and a huge exponent does not overflow."""
    rng = random.Random(3)
    delays = [backoff_delay(n, POLICY, rng=rng) for n in (5, 50, 5000, 10**9)]
    assert all(0.0 <= d <= POLICY.max_delay for d in delays)


def test_backoff_rejects_a_negative_retry_count() -> None:
    """A negative count is a programming error, not a zero delay."""
    with pytest.raises(ValueError, match="retries_done"):
        backoff_delay(-1, POLICY)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": " 2.5 "}, 2.5),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"Retry-After": "30", "retry-after-ms": "250"}, 0.25),  # the precise one wins
        ({"Retry-After": http_date(42)}, 42.0),
        ({"Retry-After": http_date(-42)}, 0.0),  # a date in the past: retry now
        ({}, None),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "-3"}, None),
        ({"Retry-After": "nan"}, None),
        ({"retry-after-ms": "bogus", "Retry-After": "4"}, 4.0),  # falls back to the standard one
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    """Seconds, HTTP dates and milliseconds are read; junk and negatives are ignored."""
    assert parse_retry_after(httpx.Headers(headers), now=NOW) == expected


def test_parse_retry_after_reads_a_zoneless_http_date_as_gmt() -> None:
    """A '-0000' date (no zone information) is taken as GMT, as RFC 9110 dates are."""
    date = email.utils.formatdate(NOW + 10, localtime=False)
    assert date.endswith("-0000")
    assert parse_retry_after({"retry-after": date}, now=NOW) == pytest.approx(10.0)


def test_retry_delay_prefers_the_server_hint_but_caps_it() -> None:
    """A server hint replaces the back-off and is limited to max_retry_after."""
    assert retry_delay(0, POLICY, 12.0) == 12.0
    assert retry_delay(0, POLICY, 3600.0) == POLICY.max_retry_after
    assert 0.0 <= retry_delay(3, POLICY, None, rng=random.Random(1)) <= 4.0


def test_capped_clamps_to_zero_and_the_cap() -> None:
    """Negative waits become zero and long ones the cap."""
    assert capped(-5.0, 10.0) == 0.0
    assert capped(5.0, 10.0) == 5.0
    assert capped(50.0, 10.0) == 10.0
