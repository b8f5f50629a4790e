"""The server's minute limit as 429s show it: each phase and each transition, without I/O."""

from __future__ import annotations

import logging

import pytest

from aimlmusic._server_limit import (
    HOLD_AT_MOST,
    LIMIT_SHARE,
    PROBE_FIRST,
    REFUSED_AT_ONCE,
    LimitPhase,
    ServerLimit,
)

WINDOW = 60.25
#: 30 requests paced over the minute, then a burst of 10 at 100 s: a 429 to that burst.
BURST = [50.0 + k for k in range(30)] + [100.0] * 10


def paced(count: int, end: float) -> list[float]:
    """``count`` requests a second apart, the last at ``end``."""
    return [end - (count - 1 - k) for k in range(count)]


def refuse(
    limit: ServerLimit,
    count: int,
    now: float,
    *,
    paused_until: float = float("-inf"),
    retry_after: float | None = None,
    first_of_streak: bool = True,
    smaller_burst: bool = False,
    sent: list[float] | None = None,
) -> bool:
    return limit.refused(
        now=now,
        sent=paced(count, now) if sent is None else sent,
        paused_until=paused_until,
        retry_after=retry_after,
        first_of_streak=first_of_streak,
        smaller_burst=smaller_burst,
    )


def test_a_paced_429_makes_its_count_a_suspect_held_until_the_verdict() -> None:
    """A 429 at the 60th paced request: suspected, and the minute held at 90 % of 60."""
    limit = ServerLimit(120.0, WINDOW)
    assert limit.phase is LimitPhase.UNKNOWN
    assert refuse(limit, 60, now=100.0) is False
    assert limit.phase is LimitPhase.SUSPECTED
    assert limit.suspect is not None
    assert limit.suspect.count == 60
    assert limit.limit == pytest.approx(LIMIT_SHARE * 60)


def test_one_verdict_shows_a_limit_but_leaves_the_minute_alone() -> None:
    """Passed after one suspect: shown at 60, the minute back to the configured 120."""
    limit = ServerLimit(120.0, WINDOW)
    refuse(limit, 60, now=100.0)
    limit.passed()
    assert (limit.phase, limit.shown, limit.suspect) == (LimitPhase.SHOWN, 60, None)
    assert limit.limit == 120.0


def test_two_verdicts_near_one_count_learn_the_limit(caplog: pytest.LogCaptureFixture) -> None:
    """Refused at 60 and then at 58 (within 10 %), each passed: learned at 90 % of 58, and said."""
    limit = ServerLimit(120.0, WINDOW)
    refuse(limit, 60, now=100.0)
    with caplog.at_level(logging.INFO, logger="aimlmusic"):
        limit.passed()
        assert not caplog.records  # one verdict teaches nothing worth a line
        refuse(limit, 58, now=200.0)
        limit.passed()
    assert [r.getMessage() for r in caplog.records] == [
        "the server refused again near 58 requests in a minute: sending at most 52 a minute, "
        "one more every 10 s while it allows them"
    ]
    assert limit.phase is LimitPhase.LEARNED
    assert limit.limit == pytest.approx(LIMIT_SHARE * 58)
    assert limit.probe_every == PROBE_FIRST


def test_two_verdicts_at_different_counts_learn_nothing() -> None:
    """Refused at 60 and then at 90 (a bucket's refusals wander): shown at 90, no limit."""
    limit = ServerLimit(120.0, WINDOW)
    refuse(limit, 60, now=100.0)
    limit.passed()
    refuse(limit, 90, now=200.0)
    limit.passed()
    assert (limit.phase, limit.shown, limit.limit) == (LimitPhase.SHOWN, 90, 120.0)


@pytest.mark.parametrize(
    ("count", "retry_after", "first_of_streak"),
    [(60, 5.0, True), (60, None, False), (29, None, True)],
    ids=["retry-after", "not-first-of-streak", "under-a-quarter-of-the-rate"],
)
def test_a_429_that_says_nothing_of_a_limit_makes_no_suspect(
    count: int, retry_after: float | None, first_of_streak: bool
) -> None:
    """A Retry-After, a streak's later 429, or a 429 under a quarter of the rate: no suspect."""
    limit = ServerLimit(120.0, WINDOW)
    refuse(limit, count, now=100.0, retry_after=retry_after, first_of_streak=first_of_streak)
    assert (limit.phase, limit.suspect, limit.limit) == (LimitPhase.UNKNOWN, None, 120.0)


def test_refused_again_after_the_pause_is_a_storm_that_undoes_the_suspect() -> None:
    """A suspect whose first request after the pause is refused too: back where it was."""
    limit = ServerLimit(120.0, WINDOW)
    refuse(limit, 60, now=100.0)
    limit.passed()  # shown at 60
    refuse(limit, 60, now=200.0)
    assert limit.limit == pytest.approx(LIMIT_SHARE * 60)
    assert refuse(limit, 1, now=203.0, paused_until=202.0, first_of_streak=False) is False
    assert (limit.phase, limit.suspect, limit.limit) == (LimitPhase.SHOWN, None, 120.0)


def test_a_suspect_after_a_burst_is_not_held_until_refused_again_at_once() -> None:
    """After a burst the minute is not held; refused again at once, it is held after all."""
    limit = ServerLimit(120.0, WINDOW)
    refuse(limit, 40, now=100.0, sent=BURST, smaller_burst=True)
    assert limit.suspect is not None
    assert limit.suspect.deferred
    assert limit.limit == 120.0
    held = refuse(limit, 41, now=103.0, paused_until=102.0, first_of_streak=False)
    assert held is True
    assert limit.phase is LimitPhase.SUSPECTED
    assert limit.suspect is not None
    assert not limit.suspect.deferred
    assert limit.limit == pytest.approx(LIMIT_SHARE * 40)


def test_a_deferred_suspect_refused_long_after_its_pause_is_a_storm() -> None:
    """Refused again more than REFUSED_AT_ONCE after the pause: not held, the suspect gone."""
    limit = ServerLimit(120.0, WINDOW)
    refuse(limit, 40, now=100.0, sent=BURST, smaller_burst=True)
    late = 102.0 + REFUSED_AT_ONCE + 1.0
    assert refuse(limit, 3, now=late, paused_until=102.0, first_of_streak=False) is False
    assert (limit.phase, limit.suspect, limit.limit) == (LimitPhase.UNKNOWN, None, 120.0)


def test_a_hold_that_would_take_too_long_is_not_made() -> None:
    """A 429 right after 100 requests sent at once: holding 90 would wait most of a minute."""
    limit = ServerLimit(120.0, WINDOW)
    refuse(limit, 100, now=100.0, sent=[100.0] * 100)
    assert 100.0 + WINDOW - 100.0 > HOLD_AT_MOST  # the burst leaves the minute too late
    assert limit.phase is LimitPhase.SUSPECTED
    assert limit.limit == 120.0


def test_the_limit_grows_back_ever_more_slowly_while_it_holds() -> None:
    """Learned, it regrows a request per 10 s; refused again below 120, per 20 s."""
    limit = ServerLimit(120.0, WINDOW)
    for now in (100.0, 200.0):
        refuse(limit, 60, now=now)
        limit.passed()
    learned = limit.limit
    limit.regrow(50.0)
    assert limit.limit == pytest.approx(learned + 50.0 / PROBE_FIRST)
    refuse(limit, 60, now=300.0)
    limit.passed()
    assert limit.probe_every == 2 * PROBE_FIRST
    limit.regrow(10_000.0)
    assert limit.limit == 120.0  # never past the configured rate


def learned_at(count: int) -> ServerLimit:
    """A limit learned from two verdicts at ``count`` and grown back to the configured 120."""
    limit = ServerLimit(120.0, WINDOW)
    for now in (100.0, 200.0):
        refuse(limit, count, now=now)
        limit.passed()
    limit.regrow(1_000.0)
    return limit


def test_a_429_near_the_limit_learned_is_held_at_once_burst_or_not() -> None:
    """Learned near 40, a 429 to a burst at the 40th request is the minute again: held now."""
    limit = learned_at(40)
    assert limit.limit == 120.0
    held = refuse(limit, 40, now=300.0, sent=[s + 200.0 for s in BURST], smaller_burst=True)
    assert held is True
    assert limit.suspect is not None
    assert not limit.suspect.deferred
    assert limit.limit == pytest.approx(LIMIT_SHARE * 40)
    limit.passed()
    assert limit.phase is LimitPhase.LEARNED


def test_the_limit_learned_is_held_however_long_the_minute_takes() -> None:
    """Learned near 40, 40 requests sent at once then a 429: held, though the burst leaves late."""
    limit = learned_at(40)
    assert refuse(limit, 40, now=300.0, sent=[300.0] * 40, smaller_burst=True) is True
    assert limit.limit == pytest.approx(LIMIT_SHARE * 40)


def test_a_429_near_a_limit_shown_only_once_is_still_deferred_after_a_burst() -> None:
    """Shown once near 40 (could be a bucket), a 429 to a burst at 40 is not held yet."""
    limit = ServerLimit(120.0, WINDOW)
    refuse(limit, 40, now=100.0)
    limit.passed()
    assert limit.phase is LimitPhase.SHOWN
    held = refuse(limit, 40, now=300.0, sent=[s + 200.0 for s in BURST], smaller_burst=True)
    assert held is False
    assert limit.suspect is not None
    assert limit.suspect.deferred
    assert limit.limit == 120.0


def test_a_429_after_a_burst_far_from_the_limit_shown_is_still_deferred() -> None:
    """Shown at 80, a 429 to a burst at the 40th request may be a bucket's: not held yet."""
    limit = ServerLimit(120.0, WINDOW)
    refuse(limit, 80, now=100.0)
    limit.passed()
    refuse(limit, 40, now=300.0, sent=[s + 200.0 for s in BURST], smaller_burst=True)
    assert limit.suspect is not None
    assert limit.suspect.deferred
    assert limit.limit == 120.0
