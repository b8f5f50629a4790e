"""The request budget: one client-wide allowance shared by submissions and polls.

The account allows ``requests_per_minute`` requests. Servers count that in different ways
(a sliding minute, a token bucket, ...) and the AI/ML API documents neither. The budget never
sends more than the limit in any minute (a quarter second longer, so that a request is not
sent the instant an old one leaves the server's window: latencies differ). It allows bursts
within that minute, because a batch needs them: songs submitted together finish together
and are polled together (measured with ``benchmarks/simulate_polling.py``: also capping any
10 s at a sixth of the limit raises the default batch's lag p95 from about 3.5 % to 13 % of
a song's duration). For a server known to count with a small bucket, ``burst_share`` adds
that cap: never more than this share of the limit in any 10 s. Otherwise 429s tell. A rate
below one request a minute sends one request at a time, each once the rate has made room.

On a 429 the whole client pauses: for the server's ``Retry-After`` when it sends one, else for
its own growing back-off, and the paced rate is halved once per episode (multiplicative
decrease; for a 429 that a burst may explain, see below). Every success gives back a
twentieth of the configured rate (additive increase), so throughput returns soon after
throttling stops. The rate is paced by a token bucket, not by shrinking the minute's window:
a window shrunk below what it already holds would stall every request for up to a minute.

A 429 also says how large a burst the server takes: a server that counts with a token bucket
refuses a burst that the minute allows. The bucket's size then comes down to half the
largest excess over the rate among the requests sent just before the 429 (an upper bound on
the server's burst, as the 429 came within it), and grows back by one request a minute
without a 429. Such a 429 does not halve the rate at once: the smaller burst answers a
bucket, and halving too would leave the requests queued behind the burst waiting twice as
long. The first request after the pause says which it was: refused as well, the server's
minute was at fault (a bucket would have refilled), and the halving is due then. Against a
sliding-window server that the budget mirrors, no 429 comes and bursts stay a whole
minute's worth. A server that counts fewer requests a minute than configured refuses near
the same count each time, and lets the first request after the pause through: the minute's
limit then comes down below that count (``minute_limit``). That limit is an explicit state
of its own, in named phases (unknown, suspected, shown, learned:
:mod:`aimlmusic._server_limit`); the budget reports each 429 and each verdict to it. A 429
near a limit already learned is that limit again: the client pauses until the minute makes
room, and the rate is not halved. The rate the budget reports as sustained (what polls are
planned for) is the lower of the paced rate and that limit.

Waiting requests are served by priority: a submission before any poll, so polls never
starve submissions; within a priority, first come first served.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from typing import Literal, Protocol, runtime_checkable

import anyio

from ._clock import Clock
from ._config import RetryPolicy
from ._retry import backoff_delay
from ._server_limit import ServerLimit

__all__ = ["Budget", "RequestBudget", "RequestKind"]

RequestKind = Literal["submit", "poll"]


@runtime_checkable
class Budget(Protocol):
    """What the transport and the scheduler need of a request budget.

    The transport calls :meth:`acquire` before every request and reports the answer with
    :meth:`on_success` or :meth:`on_throttled`; the scheduler reads the rest to hold due polls
    while the budget is busy and to tell the poll planner the rate it can count on.
    :class:`RequestBudget` is the budget of one process; a budget shared by several
    processes implements the same protocol.
    """

    async def acquire(self, kind: RequestKind) -> None:
        """Wait until one more request of ``kind`` may be sent, and count it as sent
        (submissions go before polls)."""
        ...

    def on_success(self) -> None:
        """The server accepted a request."""
        ...

    def on_throttled(self, retry_after: float | None) -> None:
        """The server answered 429 (``retry_after``: its hint in seconds, if any)."""
        ...

    @property
    def effective_rate(self) -> float:
        """Requests per minute the budget sustains now (what polls may be planned for)."""
        ...

    @property
    def burst(self) -> float:
        """The most requests the budget lets go at once (a minute's worth, unless the
        server showed it takes less): with ``effective_rate``, how fast songs may be
        submitted."""
        ...

    @property
    def paused_until(self) -> float:
        """Clock time until which no request is sent (``-inf`` when not paused)."""
        ...

    @property
    def waiting(self) -> int:
        """How many requests are waiting in :meth:`acquire` now."""
        ...

    def delay(self) -> float:
        """Seconds until one more request could be sent, ignoring those waiting."""
        ...


_PRIORITY: dict[str, int] = {"submit": 0, "poll": 1}

#: Seconds of the long window (a minute and a margin) and of the optional short one.
_LONG_WINDOW = 60.25
_SHORT_WINDOW = 10.0

#: Own back-off after a 429 without Retry-After: the first pause 1-2 s, each next one twice
#: as long, never over a minute (the longest a server's window lasts).
_PAUSES = RetryPolicy(base_delay=2.0, max_delay=60.0)
#: Lowest paced rate, as a share of the configured one.
_MIN_RATE_SHARE = 1 / 16
#: Share of the configured rate given back by each success.
_RECOVERY_SHARE = 1 / 20
#: Below this share of the configured rate, each success also gives back a token.
_SLOW_START_BELOW = 1 / 2
#: A 429 that came after fewer requests than this above the rate says nothing about bursts
#: (a storm, or a rate lower than configured, which the rate's halving answers).
_BURST_EVIDENCE = 4.0
#: The bucket holds at least one whole request: capped at a rate below one a minute, it
#: would never fill to a request, and nothing would be sent.
_LEAST_BURST = 1.0
#: How fast a burst allowance cut by a 429 grows back (requests per second without a 429):
#: one a minute, so that a server's bucket is probed again rarely.
_BURST_REGROWTH = 1 / 60


class _Waiter:
    __slots__ = ("event", "key")

    def __init__(self, key: tuple[int, int]) -> None:
        self.key = key
        self.event: anyio.Event | None = None

    def __lt__(self, other: _Waiter) -> bool:
        return self.key < other.key


class RequestBudget:
    """Paces every request of one client to the account's request rate.

    ``acquire(kind)`` waits until one more request may be sent and counts it as sent.
    ``on_success()`` and ``on_throttled(retry_after)`` feed back what the server answered.
    """

    def __init__(
        self,
        requests_per_minute: float,
        clock: Clock,
        *,
        seed: int | None = None,
        burst_share: float | None = None,
    ) -> None:
        if not math.isfinite(requests_per_minute):
            raise ValueError(f"requests_per_minute must be finite, got {requests_per_minute!r}")
        if requests_per_minute <= 0:
            raise ValueError(f"requests_per_minute must be positive, got {requests_per_minute!r}")
        if burst_share is not None and not 0 < burst_share <= 1:
            raise ValueError(f"burst_share must be in (0, 1], got {burst_share!r}")
        self.requests_per_minute = float(requests_per_minute)
        self.burst_share = burst_share
        self._clock = clock
        self._rate = self.requests_per_minute
        # The token bucket that paces requests: at most ``_burst`` at once, refilled at the
        # paced rate. A whole minute's worth (at least one request) until a 429 says the
        # server takes less.
        self._most_burst = max(_LEAST_BURST, self.requests_per_minute)
        self._burst = self._most_burst
        self._tokens = self._burst
        self._tokens_at: float | None = None  # set at first use: a client is made outside a loop
        # The most requests sent in any minute: the configured rate, unless 429s to paced
        # requests showed that the server counts fewer.
        self._limit = ServerLimit(self.requests_per_minute, _LONG_WINDOW)
        self._sent: deque[float] = deque()
        self._paused_until = -math.inf
        self._streak = 0
        self._queue: list[_Waiter] = []
        self._seq = itertools.count()
        self._random = random.Random(seed)
        #: Requests let through, and 429s reported, since the budget was made.
        self.sent_total = 0
        self.throttled_total = 0

    # ------------------------------------------------------------------ reading

    @property
    def effective_rate(self) -> float:
        """The rate (requests/minute) the budget sustains now: the configured one, after
        any slow-down, and never more than the server's minute showed it allows."""
        return min(self._rate, self._limit.limit)

    @property
    def paced_rate(self) -> float:
        """The rate (requests/minute) the token bucket refills at: the configured one after
        any slow-down (halved by each 429 episode, given back by successes)."""
        return self._rate

    @property
    def burst(self) -> float:
        """The most requests sent at once: the configured rate (at least one), unless 429s
        showed less."""
        return self._burst

    @property
    def minute_limit(self) -> float:
        """The most requests sent in any minute: the configured rate, unless 429s to paced
        requests showed that the server allows fewer."""
        return self._limit.limit

    @property
    def server_limit(self) -> ServerLimit:
        """What 429s have shown of the server's minute limit (its phase, and the count a
        suspect 429 came at), for logs and tests; the budget's own state, not a copy."""
        return self._limit

    @property
    def paused_until(self) -> float:
        """Clock time until which no request is sent (``-inf`` when not paused)."""
        return self._paused_until

    @property
    def waiting(self) -> int:
        """How many requests are waiting for the budget now."""
        return len(self._queue)

    def utilisation(self) -> float:
        """Share of the current long-window allowance already spent (0.0-1.0 and beyond)."""
        now = self._clock.now()
        self._forget_before(now - _LONG_WINDOW)
        return (len(self._sent) + len(self._queue)) / max(1.0, math.floor(self.effective_rate))

    def delay(self) -> float:
        """Seconds until one more request could be sent, ignoring anyone already waiting."""
        return self._delay(self._clock.now())

    # ------------------------------------------------------------------ feedback

    def on_success(self) -> None:
        """The server accepted a request: end any back-off streak and recover the rate."""
        if self._limit.suspect is not None and self._clock.now() >= self._paused_until:
            self._limit.passed()
        self._streak = 0
        if self._rate < self.requests_per_minute:
            deep = self._rate < self.requests_per_minute * _SLOW_START_BELOW
            self._rate = min(
                self.requests_per_minute, self._rate + self.requests_per_minute * _RECOVERY_SHARE
            )
            if deep:
                # Far below the configured rate (after a storm halved it again and again),
                # each success also hands back its token, within the burst allowance: the
                # requests in flight double every round trip, as in TCP's slow start, instead
                # of creeping up at the rate the storm left. Not nearer the configured rate,
                # where a server that counts with a small bucket would answer it with 429s.
                self._refill(self._clock.now())
                self._tokens = min(self._burst, self._tokens + 1.0)

    def on_throttled(self, retry_after: float | None) -> None:
        """The server answered 429: pause everyone, slow down, and take smaller bursts."""
        now = self._clock.now()
        self.throttled_total += 1
        if now < self._paused_until:
            # 429s to requests that were already on their way when we reacted belong to the
            # same episode: only a 429 after the pause ended deepens the back-off.
            if retry_after is not None:
                self._paused_until = max(self._paused_until, now + max(0.0, retry_after))
            return
        # A burst's 429 that the server limit deferred (a bucket's, until the first request
        # after its pause says otherwise) put off halving the rate: a refusal now makes it due.
        before = self._limit.suspect
        owed = before is not None and before.deferred
        smaller_burst = self._learn_burst(now)
        self._forget_before(now - _LONG_WINDOW)
        held = self._limit.refused(
            now=now,
            sent=self._sent,
            paused_until=self._paused_until,
            retry_after=retry_after,
            first_of_streak=self._streak == 0,
            smaller_burst=smaller_burst,
        )
        if held:
            # The server's minute, not an overload (near the limit learned, or refused
            # again right after a burst's pause): wait for the minute to make room, without
            # slowing down. Refusals to requests already on their way fall in that pause.
            self._paused_until = now + self._delay(now)
            if owed:
                # Refused again right after a burst's pause: the minute, not the burst, was
                # at fault, and the slow-down the burst's 429 put off is due.
                self._slow_down()
            return
        if owed:
            # Refused, and no minute held: the burst was not all the server refused (a
            # storm, or a Retry-After), so the halving put off is due.
            self._slow_down()
        after = self._limit.suspect
        if after is None or not after.deferred:
            # Slow down (once per episode) even when told how long to wait: otherwise every
            # request that queued during the pause goes out the moment it ends, and a
            # server still throttling answers the whole burst with 429 again. Not after a
            # burst (a bucket's 429, which the smaller burst answers), until the first
            # request after the pause says whether the minute was at fault.
            self._slow_down()
        if retry_after is not None:
            self._paused_until = now + max(0.0, retry_after)
            return
        # The library's one back-off; the jitter keeps several clients out of step.
        pause = backoff_delay(self._streak, _PAUSES, rng=self._random, least=0.5)
        self._streak += 1
        self._paused_until = now + pause

    def _slow_down(self) -> None:
        """Halve the paced rate (multiplicative decrease), not below its floor."""
        self._rate = max(self.requests_per_minute * _MIN_RATE_SHARE, self._rate / 2)

    def _learn_burst(self, now: float) -> bool:
        """Bring the burst allowance down to half the largest excess over the rate among
        the requests sent before this 429 (when there was a burst at all), and empty the
        bucket (the server's is empty). True when the allowance came down."""
        self._forget_before(now - _LONG_WINDOW)
        per_second = self._rate / 60.0
        excess = 0.0
        for count, sent_at in enumerate(reversed(self._sent), start=1):
            excess = max(excess, count - per_second * (now - sent_at))
        smaller = excess >= _BURST_EVIDENCE and excess / 2 < self._burst
        if smaller:
            self._burst = max(_LEAST_BURST, excess / 2)
        self._refill(now)  # what grew back until now (the minute's limit) is not lost
        self._tokens, self._tokens_at = 0.0, now
        return smaller

    # ------------------------------------------------------------------ waiting

    async def acquire(self, kind: RequestKind = "poll") -> None:
        """Wait until a request of ``kind`` may be sent, then count it as sent."""
        waiter = _Waiter((_PRIORITY[kind], next(self._seq)))
        heapq.heappush(self._queue, waiter)
        try:
            while True:
                if self._queue[0] is waiter:
                    now = self._clock.now()
                    delay = self._delay(now)
                    if delay <= 0:
                        heapq.heappop(self._queue)
                        self._sent.append(now)
                        self._tokens = max(0.0, self._tokens - 1.0)
                        self.sent_total += 1
                        self._wake_head()
                        return
                    # The head sleeps; it re-checks afterwards, as a pause or a new
                    # higher-priority waiter may have changed things meanwhile.
                    await self._clock.sleep(delay)
                else:
                    waiter.event = anyio.Event()
                    await waiter.event.wait()
        except BaseException:
            if waiter in self._queue:
                self._queue.remove(waiter)
                heapq.heapify(self._queue)
                self._wake_head()
            raise

    def _wake_head(self) -> None:
        if self._queue and self._queue[0].event is not None:
            self._queue[0].event.set()

    def _forget_before(self, cutoff: float) -> None:
        sent = self._sent
        while sent and sent[0] <= cutoff:
            sent.popleft()

    def _refill(self, now: float) -> None:
        elapsed = 0.0 if self._tokens_at is None else max(0.0, now - self._tokens_at)
        self._tokens_at = now
        self._burst = min(self._most_burst, self._burst + elapsed * _BURST_REGROWTH)
        self._limit.regrow(elapsed)
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate / 60.0)

    def _delay(self, now: float) -> float:
        self._forget_before(now - _LONG_WINDOW)
        self._refill(now)
        delay = self._paused_until - now
        # Within a rounding error of a whole token is a token: waiting for the last 1e-15
        # would be a sleep too short for the clock to move.
        if self._tokens < 1.0 - 1e-9:
            delay = max(delay, (1.0 - self._tokens) * 60.0 / self._rate)
        long_limit = max(1, math.floor(self._limit.limit))
        sent = self._sent
        if len(sent) >= long_limit:
            delay = max(delay, sent[len(sent) - long_limit] + _LONG_WINDOW - now)
        if self.burst_share is not None:
            short_limit = max(1, math.floor(self.requests_per_minute * self.burst_share))
            if len(sent) >= short_limit:
                oldest_in_short = sent[len(sent) - short_limit]
                delay = max(delay, oldest_in_short + _SHORT_WINDOW - now)
        return delay

    def __repr__(self) -> str:
        return (
            f"RequestBudget(requests_per_minute={self.requests_per_minute:g}, "
            f"effective_rate={self.effective_rate:g}, paced_rate={self._rate:g}, "
            f"waiting={len(self._queue)})"
        )
