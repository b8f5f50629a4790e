"""The request budget of one account, shared through Redis by every client of its key.

The same :class:`~aimlmusic._ratelimit.Budget` protocol as the local ``RequestBudget``; the
state that must be one for the whole account lives in Redis and is changed by one Lua
script, so that reading, deciding and recording happen in one atomic round trip:

- a **moving-window log** (a sorted set: one member per request, scored with its time):
  never more than ``requests_per_minute`` in any window of a minute and a quarter second,
  whichever process sent them;
- the **429 pause** and the **AIMD rate** (a hash): a 429 seen by one client pauses all and
  halves the rate they pace to (a token bucket refilled at that rate); each success gives a
  twentieth of the configured rate back.

A Redis that loses the log (a restart, a flush, an eviction) would let the fleet send a
second minute's worth at once: each client keeps its own requests of the last minute, and
when the script finds the client's latest one gone, the client puts them all back first.

Why a script rather than the ``limits`` library: ``limits`` counts whole seconds (a minute
of a 50x emulator is 1.2 real seconds), only answers "yes/no now" (a waiting request needs
"how long"), and has no pause or AIMD state to keep with the window in one step.

Time is Redis's own (``TIME`` in the script): one clock for every host. Scores are real
seconds; the client's time scale (a :class:`~aimlmusic.ScaledClock` following a compressed
emulator) turns API seconds (the window, a ``Retry-After``) into real ones, and the wait
the script returns back into API seconds for the client's clock. On a
:class:`~aimlmusic.testing.VirtualClock` (tests) the clock's own time is used instead.

``on_success`` and ``on_throttled`` are synchronous (the transport calls them between
awaits): they are recorded here and sent with the next script call. The transport's retry
after a 429 calls ``acquire`` at once, so a 429 reaches Redis within the same step; a waiting
request re-checks at least every ``_RECHECK_AT_MOST`` API seconds so nothing stays unsent.

What the local budget learns beyond that (a server's smaller burst or minute limit) stays
local to each client: it is not shared.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import math
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from ._clock import Clock
from ._ratelimit import RequestKind
from ._shared_redis import LUA_NOW, SharedStore

__all__ = ["SharedBudget"]

logger = logging.getLogger("aimlmusic")

_PRIORITY: dict[str, int] = {"submit": 0, "poll": 1}

#: API seconds of the window (a minute and a margin, as the local budget: latencies differ,
#: so a request is not sent the instant an old one leaves the server's window).
WINDOW = 60.25
#: The pause after a 429 without Retry-After: equal jitter over a window that starts at
#: PAUSE_BASE API seconds and doubles with each 429 in a row, never over PAUSE_MAX (the
#: local budget's back-off).
PAUSE_BASE = 2.0
PAUSE_MAX = 60.0
#: Lowest shared rate, as a share of the configured one (as the local budget).
MIN_RATE_SHARE = 1 / 16
#: Share of the configured rate given back by each success (as the local budget).
RECOVERY_SHARE = 1 / 20
#: API seconds the shared state outlives its last use: long enough to remember a pause and
#: a slowed rate across a lull, short enough that an idle account leaves nothing behind.
STATE_LIFETIME = 600.0
#: Real seconds added to the window: a request let through by Redis reaches the server some
#: milliseconds later (a thread hop, the event loop, the network), and under a compressed
#: clock (50x) those milliseconds are whole API seconds, more than the window's margin.
REAL_MARGIN = 0.02
#: The longest a waiting request sleeps before asking Redis again (API seconds): feedback
#: recorded meanwhile is sent then, and a slot another process freed is seen.
_RECHECK_AT_MOST = 1.0

# KEYS: window log, state hash. ARGV: now ('' = Redis TIME), time scale, configured rate,
# window, member to add ('' = only apply the feedback), feedback ("s:N" successes, "t:R"
# a 429 with Retry-After R API seconds, R < 0: none), uniform random in [0, 1), pause base,
# pause max, min rate share, recovery share, state lifetime (API seconds), real margin,
# this client's latest request still in the window ('' = none) and its score.
# Returns {granted 0/1 (-1: that request is missing, nothing done), wait (real s), rate (per
# API minute), pause left (real s), now (real s)}; numbers as strings, since Redis would
# truncate Lua numbers to integers.
_ACQUIRE = (
    """
local log, state = KEYS[1], KEYS[2]
"""
    + LUA_NOW
    + """
local scale = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local window = tonumber(ARGV[4]) / scale + tonumber(ARGV[13])
local member = ARGV[5]
local u = tonumber(ARGV[7])
local pause_base, pause_max = tonumber(ARGV[8]), tonumber(ARGV[9])
local min_rate = limit * tonumber(ARGV[10])
local recovery = limit * tonumber(ARGV[11])
local lifetime_ms = math.ceil(tonumber(ARGV[12]) / scale * 1000)

-- The client's latest request must still be in the log: gone, the log was lost (a restart,
-- a flush, an eviction), and the client puts its own requests back before anyone goes on.
if ARGV[14] ~= '' and tonumber(ARGV[15]) > now - window
    and not redis.call('ZSCORE', log, ARGV[14]) then
  return {-1, '0', '0', '0', string.format('%.17g', now)}
end

-- The bucket holds at least one whole request: below one a minute, it would never fill.
local most = math.max(1, limit)
local s = redis.call('HMGET', state, 'rate', 'tokens', 'tokens_at', 'paused_until', 'streak')
local rate = tonumber(s[1]) or limit
local tokens = tonumber(s[2]) or most
local tokens_at = tonumber(s[3]) or now
local paused_until = tonumber(s[4]) or 0
local streak = tonumber(s[5]) or 0
if now > tokens_at then
  tokens = math.min(most, tokens + (now - tokens_at) * scale * rate / 60)
  tokens_at = now
end

for kind, value in string.gmatch(ARGV[6], '(%a):([^ ]+)') do
  local number = tonumber(value)
  if kind == 's' then
    streak = 0
    rate = math.min(limit, rate + number * recovery)
  elseif now < paused_until then
    -- a 429 to a request sent before the pause began: the same episode
    if number >= 0 then paused_until = math.max(paused_until, now + number / scale) end
  else
    rate = math.max(min_rate, rate / 2)
    tokens = 0
    if number >= 0 then
      paused_until = now + number / scale
    else
      local w = math.min(pause_max, pause_base * 2 ^ math.min(streak, 30))
      paused_until = now + (0.5 + 0.5 * u) * w / scale
      streak = streak + 1
    end
  end
end

redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
local wait = 0
if paused_until > now then wait = paused_until - now end
if tokens < 1 - 1e-9 then wait = math.max(wait, (1 - tokens) * 60 / rate / scale) end
local cap = math.max(1, math.floor(limit))
local count = redis.call('ZCARD', log)
if count >= cap then
  local oldest = redis.call('ZRANGE', log, count - cap, count - cap, 'WITHSCORES')
  wait = math.max(wait, tonumber(oldest[2]) + window - now)
end
local granted = 0
if member ~= '' and wait <= 0 then
  redis.call('ZADD', log, now, member)
  tokens = math.max(0, tokens - 1)
  granted = 1
end
redis.call('HSET', state, 'rate', rate, 'tokens', tokens, 'tokens_at', tokens_at,
  'paused_until', paused_until, 'streak', streak)
redis.call('PEXPIRE', state, lifetime_ms)
redis.call('PEXPIRE', log, lifetime_ms)
local left = 0
if paused_until > now then left = paused_until - now end
return {granted, tostring(wait), tostring(rate), tostring(left), string.format('%.17g', now)}
"""
)

# KEYS: window log. ARGV: state lifetime (real ms), then score and member pairs: requests of
# one client put back into a log that lost them (ZADD of a member already there changes
# nothing but its score, which is the same).
_RESTORE = """
local log = KEYS[1]
for i = 2, #ARGV, 2 do
  redis.call('ZADD', log, ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', log, tonumber(ARGV[1]))
return 0
"""


class _Waiter:
    __slots__ = ("event", "key")

    def __init__(self, key: tuple[int, int]) -> None:
        self.key = key
        self.event: anyio.Event | None = None

    def __lt__(self, other: _Waiter) -> bool:
        return self.key < other.key


class SharedBudget:
    """Paces every request of every client of one API key on one Redis to the account's rate.

    Implements the same protocol as the local budget (``acquire``, ``on_success``,
    ``on_throttled``, ``effective_rate``, ``burst``, ``paused_until``, ``waiting``,
    ``delay``).
    ``before_first_use`` is awaited before the first call to Redis (the client passes
    what learns a served emulator's time scale).
    Within one client, submissions still go before polls; across clients, whoever asks
    Redis first when room appears goes first. ``use_clock_time=True`` takes "now" from
    ``clock`` instead of Redis (for clients sharing one virtual clock in tests).
    """

    def __init__(
        self,
        requests_per_minute: float,
        clock: Clock,
        store: SharedStore,
        *,
        use_clock_time: bool = False,
        seed: int | None = None,
        before_first_use: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if not math.isfinite(requests_per_minute):
            raise ValueError(f"requests_per_minute must be finite, got {requests_per_minute!r}")
        if requests_per_minute <= 0:
            raise ValueError(f"requests_per_minute must be positive, got {requests_per_minute!r}")
        self.requests_per_minute = float(requests_per_minute)
        self.store = store
        self._clock = clock
        self._use_clock_time = use_clock_time
        # Learns the clock's time scale (from a served emulator) before the first call.
        self._before_first_use = before_first_use
        self._script = store.script(_ACQUIRE)
        self._restore = store.script(_RESTORE)
        # This client's requests still in the window, as (score, member): what it puts back
        # into a log Redis lost. At most a window's worth: requests_per_minute or so.
        self._mine: collections.deque[tuple[float, str]] = collections.deque()
        self._keys = [store.key("window"), store.key("budget")]
        self._rate = self.requests_per_minute
        self._paused_until = -math.inf
        self._free_at = -math.inf  # when the last answer said room would appear
        self._successes = 0  # not yet sent to Redis
        self._events: list[str] = []  # feedback not yet sent, in order ("s:N", "t:R")
        self._queue: list[_Waiter] = []
        self._seq = itertools.count()
        self._random = random.Random(seed)
        #: Requests let through, and 429s reported, by this client.
        self.sent_total = 0
        self.throttled_total = 0

    # ------------------------------------------------------------------ reading

    @property
    def effective_rate(self) -> float:
        """The shared rate (requests/minute) as Redis last said, after any slow-down."""
        return self._rate

    @property
    def burst(self) -> float:
        """A minute's worth of requests: the shared window lets that many go at once (what
        a client learns of a server's smaller bursts is not shared)."""
        return self.requests_per_minute

    @property
    def paused_until(self) -> float:
        """Clock time until which no request is sent (``-inf`` when not paused), as Redis
        last said or a 429 this client saw since."""
        return self._paused_until

    @property
    def waiting(self) -> int:
        """How many requests of this client are waiting for the budget now."""
        return len(self._queue)

    def delay(self) -> float:
        """Seconds until one more request could be sent, as far as this client knows."""
        now = self._clock.now()
        return max(0.0, self._paused_until - now, self._free_at - now)

    # ------------------------------------------------------------------ feedback

    def on_success(self) -> None:
        """The server accepted a request: recorded, sent to Redis with the next call."""
        self._successes += 1

    def on_throttled(self, retry_after: float | None) -> None:
        """The server answered 429: recorded, sent to Redis with the next call (the
        transport's retry makes that call at once); this client pauses meanwhile."""
        self.throttled_total += 1
        if self._successes:  # successes before this 429 are applied before it
            self._events.append(f"s:{self._successes}")
            self._successes = 0
        self._events.append(f"t:{-1.0 if retry_after is None else max(0.0, retry_after)!r}")
        now = self._clock.now()
        guess = PAUSE_BASE / 2 if retry_after is None else max(0.0, retry_after)
        self._paused_until = max(self._paused_until, now + guess)

    # ------------------------------------------------------------------ waiting

    async def acquire(self, kind: RequestKind = "poll") -> None:
        """Wait until the account may send one more request of ``kind``, and count it in
        Redis as sent."""
        waiter = _Waiter((_PRIORITY[kind], next(self._seq)))
        heapq.heappush(self._queue, waiter)
        try:
            while True:
                if self._queue[0] is waiter:
                    wait = await self._ask(take=True)
                    if wait <= 0:
                        self._leave(waiter)
                        self.sent_total += 1
                        self._wake_head()
                        return
                    await self._clock.sleep(min(wait, _RECHECK_AT_MOST))
                else:
                    waiter.event = anyio.Event()
                    await waiter.event.wait()
        except BaseException:
            if waiter in self._queue:
                self._queue.remove(waiter)
                heapq.heapify(self._queue)
                self._wake_head()
            raise

    async def flush(self) -> None:
        """Send the feedback recorded so far to Redis without taking a request."""
        if self._successes or self._events:
            await self._ask(take=False)

    async def _ask(self, *, take: bool) -> float:
        """One script call: send the feedback, take a request if ``take`` and there is
        room; return how long to wait (API seconds; ``<= 0``: taken)."""
        if self._before_first_use is not None:
            await self._before_first_use()
            self._before_first_use = None
        scale = float(getattr(self._clock, "scale", 1.0))
        events, successes = self._events, self._successes
        self._events, self._successes = [], 0
        feedback = " ".join(events + ([f"s:{successes}"] if successes else []))
        member = uuid.uuid4().hex if take else ""
        try:
            answer = await self._call(scale, member, feedback)
            if int(answer[0]) < 0:  # the log lost this client's requests: put them back
                await self._put_back(scale, float(answer[4]))
                answer = await self._call(scale, member, feedback)
                if int(answer[0]) < 0:
                    # Lost again at once (Redis evicting as fast as it is filled): nothing
                    # was taken or applied; the feedback goes with the next call.
                    self._events = events + ([f"s:{successes}"] if successes else []) + self._events
                    self._free_at = self._clock.now() + _RECHECK_AT_MOST
                    return _RECHECK_AT_MOST
        except BaseException:
            # Not applied (or not known to be): sent again with the next call.
            self._events = events + ([f"s:{successes}"] if successes else []) + self._events
            raise
        granted, wait, rate, left = int(answer[0]), float(answer[1]), float(answer[2]), answer[3]
        if granted > 0:
            self._remember(member, float(answer[4]), scale)
        now = self._clock.now()
        self._rate = rate
        pause = float(left) * scale
        self._paused_until = now + pause if pause > 0 else -math.inf
        if granted > 0:
            self._free_at = -math.inf
            return 0.0
        wait_api = max(wait * scale, 1e-6)  # a wait too short for the clock is still a wait
        self._free_at = now + wait_api
        return wait_api

    async def _call(self, scale: float, member: str, feedback: str) -> Any:
        """One call of the acquire script (see ``_ACQUIRE`` for its arguments)."""
        latest_score, latest = self._mine[-1] if self._mine else (0.0, "")
        args: list[Any] = [
            repr(self._clock.now()) if self._use_clock_time else "",
            repr(scale),
            repr(self.requests_per_minute),
            repr(WINDOW),
            member,
            feedback,
            repr(self._random.random()),
            repr(PAUSE_BASE),
            repr(PAUSE_MAX),
            repr(MIN_RATE_SHARE),
            repr(RECOVERY_SHARE),
            repr(STATE_LIFETIME),
            repr(REAL_MARGIN),
            latest,
            repr(latest_score),
        ]
        return await self.store.run_script(self._script, self._keys, args)

    def _remember(self, member: str, score: float, scale: float) -> None:
        """Keep request ``member``, let through at ``score``, and forget those out of the
        window."""
        self._mine.append((score, member))
        self._forget_before(score, scale)

    def _forget_before(self, now: float, scale: float) -> None:
        window = WINDOW / scale + REAL_MARGIN
        while self._mine and self._mine[0][0] <= now - window:
            self._mine.popleft()

    async def _put_back(self, scale: float, now: float) -> None:
        """Put this client's requests of the last window back into a log that lost them
        (``now``: the script's time, real seconds)."""
        self._forget_before(now, scale)
        logger.warning(
            "the shared request log in Redis lost this client's %d requests of the last "
            "minute (a restart, a flush or an eviction): put back",
            len(self._mine),
        )
        pairs = [part for score, member in self._mine for part in (repr(score), member)]
        lifetime_ms = math.ceil(STATE_LIFETIME / scale * 1000)
        await self.store.run_script(self._restore, self._keys[:1], [lifetime_ms, *pairs])

    def _leave(self, waiter: _Waiter) -> None:
        # Not always the head: a submission that arrived while this waiter was asking Redis
        # went ahead of it (and may be asking too). Popping the head would drop that one
        # from the queue, still waiting, and leave this one in it: nobody would wake the rest.
        if self._queue[0] is waiter:
            heapq.heappop(self._queue)
        else:
            self._queue.remove(waiter)
            heapq.heapify(self._queue)

    def _wake_head(self) -> None:
        if self._queue and self._queue[0].event is not None:
            self._queue[0].event.set()

    def __repr__(self) -> str:
        return (
            f"SharedBudget(requests_per_minute={self.requests_per_minute:g}, "
            f"effective_rate={self._rate:g}, store={self.store!r})"
        )
