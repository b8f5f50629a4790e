"""What 429s show of a server that allows fewer requests a minute than configured.

Such a server refuses near the same count of requests in its minute each time, and lets the
first request after the pause through. A storm refuses that request too; a server counting
with a token bucket refuses bursts at whatever count the minute holds. So a 429 to paced
requests (no ``Retry-After``, the first of its episode) only makes the count it came at a
*suspect*; the first request after the pause gives the verdict; and two verdicts near the
same count *learn* the limit: the minute's window comes down to ``LIMIT_SHARE`` of it, and
grows back one request every ``probe_every`` seconds, probed ever more rarely while the
server keeps refusing near it.

While a suspect waits, the minute is held at ``LIMIT_SHARE`` of its count, so that the
first request after the pause waits for the server's minute to make room. After a burst it
is not: a bucket's 429 is answered by the budget's smaller burst, and holding would stop
every request while the burst's songs finish; only a refusal right after the pause (a
bucket would have refilled) holds it then. Near a limit already learned, a 429 is that
limit again, burst or not: it is held at once, and the budget waits for the minute to make
room. Deferring it let the first request after a short pause hit the full minute, a refusal
then taken for a storm, which halves the rate again.

:class:`ServerLimit` is that state, with its phase named (:class:`LimitPhase`); the request
budget (:mod:`aimlmusic._ratelimit`) owns one, reads ``limit`` as the most requests it sends
in any minute, and reports each 429 and each first success after a pause to it.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Sequence

import attrs

__all__ = ["LimitPhase", "ServerLimit", "Suspect"]

logger = logging.getLogger("aimlmusic")

#: A 429 after fewer requests in the minute than this share of the configured rate says
#: nothing about a limit (a server allowing so few would be misconfigured, not counting).
LIMIT_FROM = 1 / 4
#: A learned limit, and the hold while a suspect awaits its verdict, is this share of the
#: count the server refused at: a margin for requests whose latencies differ.
LIMIT_SHARE = 0.9
#: Seconds per request of regrowth of a limit learned for the first time.
PROBE_FIRST = 10.0
#: Two counts within this share of each other are the same limit.
SAME_LIMIT = 0.1
#: The longest a suspect's hold may stop requests for the server's minute to make room
#: (after a burst sent at once, the minute would hold it all until the burst leaves), but
#: near a limit already learned, which is held however long it takes.
HOLD_AT_MOST = 30.0
#: A 429 this many seconds or less after a pause ended answers the first requests sent after
#: it (a round trip or two); a later one starts an episode of its own.
REFUSED_AT_ONCE = 5.0


class LimitPhase(enum.Enum):
    """Where the server's minute limit stands."""

    #: No verdict has shown a limit: the minute holds the configured rate.
    UNKNOWN = "unknown"
    #: A paced 429 came at ``Suspect.count`` requests in the minute; the first request
    #: after the pause says whether that is the server's limit.
    SUSPECTED = "suspected"
    #: One verdict showed a limit at ``shown``: once could be a bucket refusing a burst, so
    #: the minute is left as it was (the configured rate, or a limit learned before and
    #: growing back) until a second verdict near the same count.
    SHOWN = "shown"
    #: Two verdicts near one count: the limit came down to ``LIMIT_SHARE`` of it, and grows
    #: back (it stays learned once grown back: a 429 near it again is held at once).
    LEARNED = "learned"


@attrs.frozen
class Suspect:
    """A 429 at ``count`` requests in the minute, awaiting its verdict."""

    count: float
    limit_before: float  # the limit to go back to if the verdict is "a storm"
    #: The 429 followed a burst: the smaller burst answers it (a bucket's), and the minute is
    #: held only if the first request after the pause is refused too (a minute's).
    deferred: bool


@attrs.define
class ServerLimit:
    """The most requests to send in any minute, as 429s have shown the server counts.

    ``limit`` starts at ``configured``; see the module's documentation for the phases."""

    configured: float
    #: The budget's window, seconds: how long a request counts against the minute.
    window: float
    limit: float = attrs.field(init=False)
    #: The phase a verdict left (unknown, shown or learned): a suspect pending does not
    #: change it, and a storm leaves it as it was.
    settled: LimitPhase = LimitPhase.UNKNOWN
    probe_every: float = PROBE_FIRST
    shown: float | None = None  # the count at the last limit a verdict showed
    suspect: Suspect | None = None

    def __attrs_post_init__(self) -> None:
        self.limit = self.configured

    @property
    def phase(self) -> LimitPhase:
        """Suspected while a 429 awaits its verdict, else what the last verdict left."""
        return LimitPhase.SUSPECTED if self.suspect is not None else self.settled

    def regrow(self, elapsed: float) -> None:
        """``elapsed`` seconds went by: the limit grows back towards the configured rate."""
        self.limit = min(self.configured, self.limit + elapsed / self.probe_every)

    def refused(
        self,
        *,
        now: float,
        sent: Sequence[float],
        paused_until: float,
        retry_after: float | None,
        first_of_streak: bool,
        smaller_burst: bool,
    ) -> bool:
        """A 429 at ``now`` outside any pause, after the requests ``sent`` in the window
        (oldest first); ``first_of_streak`` when no 429 came since the last success, and
        ``smaller_burst`` when the 429 brought the budget's burst allowance down.

        True when this 429 is answered by holding the minute alone, the budget waiting for
        the minute to make room without slowing down (the server's minute, not an
        overload): near the limit learned, or a suspect that followed a burst refused again
        right after its pause (a bucket would have refilled, so the server counts a minute
        after all)."""
        suspect = self.suspect
        if suspect is not None:
            at_once = now - paused_until <= REFUSED_AT_ONCE
            if suspect.deferred and at_once and retry_after is None:
                # Held now, as that 429 would have been; refusals still on their way belong
                # to this episode, since nothing goes before the minute makes room.
                self.limit = min(self.limit, self._hold(suspect.count))
                self.suspect = attrs.evolve(suspect, deferred=False)
                return True
            # Refused again right after the pause: a storm, not a limit.
            self.limit = max(self.limit, suspect.limit_before)
            self.suspect = None
        count = float(len(sent))
        if retry_after is None and first_of_streak and count >= self.configured * LIMIT_FROM:
            hold = self._hold(count)
            # The limit learned, again: held at once, burst or not, for as long as the
            # minute takes to make room (any request before then would be refused, and that
            # refusal taken for a storm). The verdict still comes after the pause.
            again = self.settled is LimitPhase.LEARNED and self._near_shown(count)
            leaving = int(count - math.floor(hold))  # requests that must leave the minute first
            soon = leaving < 1 or sent[leaving - 1] + self.window - now <= HOLD_AT_MOST
            # Otherwise, after a burst, the smaller burst answers a bucket, and holding would
            # stop every request for seconds while its songs finish: the verdict tells. And
            # not held when the minute would take long to make room.
            deferred = soon and smaller_burst and not again
            self.suspect = Suspect(count, self.limit, deferred)
            if again or (soon and not deferred):
                # Held at the suspect until the verdict, so that the first request after the
                # pause waits for the server's minute to make room.
                self.limit = min(self.limit, hold)
            return again
        return False

    def passed(self) -> None:
        """The first request after a suspect's pause got through: the verdict. Refused
        twice near the same count, the server counts about that many a minute."""
        suspect = self.suspect
        if suspect is None:
            return
        self.suspect = None
        count, near = suspect.count, self._near_shown(suspect.count)
        self.shown = count
        if not near:
            self.limit = max(self.limit, suspect.limit_before)
            self.settled = LimitPhase.SHOWN
            return
        if suspect.limit_before < self.configured:
            self.probe_every *= 2.0  # refused again at the limit it had learned
        else:
            self.probe_every = PROBE_FIRST
        self.limit = min(self.limit, self._hold(count))
        self.settled = LimitPhase.LEARNED
        logger.info(
            "the server refused again near %d requests in a minute: sending at most %d a "
            "minute, one more every %g s while it allows them",
            count,
            math.floor(self.limit),
            self.probe_every,
        )

    def _near_shown(self, count: float) -> bool:
        """Whether ``count`` is within ``SAME_LIMIT`` of the limit a verdict last showed."""
        return self.shown is not None and abs(count - self.shown) <= SAME_LIMIT * self.shown

    @staticmethod
    def _hold(count: float) -> float:
        return max(1.0, LIMIT_SHARE * count)
