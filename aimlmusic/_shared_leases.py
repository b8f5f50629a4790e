"""The account's cap on generations in flight, shared through Redis as expiring leases.

The account runs at most ``max_in_flight`` generations at once, whichever process submitted
them. Before a submission a client takes a lease: a member of a sorted set scored with its
expiry. A Lua script drops the expired ones, counts the rest and adds the new one in one
atomic step, so two processes never both take the last slot. The holder renews its leases
every ``RENEW_EVERY`` while the songs run and gives each back when its song ends; a process
that dies stops renewing, and its slots come back when its leases expire.

Times are Redis's own (``TIME``), in real seconds; lengths are API seconds turned into real
ones by the client's time scale, as in the shared budget.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

import anyio

from ._clock import Clock
from ._errors import AimlMusicError, SharedStateError
from ._shared_redis import LUA_NOW, SharedStore

__all__ = ["LEASE_LENGTH", "RENEW_EVERY", "SharedLeases", "give_back"]

logger = logging.getLogger("aimlmusic")

#: API seconds a lease lasts without renewal: longer than a typical song (50-60 s), so that
#: a dead process's generations, which go on running on the server, mostly finish before
#: their slots are handed to someone else; short enough that the slots come back soon.
LEASE_LENGTH = 90.0
#: API seconds between renewals: a third of a lease, so two late or failed renewals in a
#: row still leave a live holder's lease standing.
RENEW_EVERY = LEASE_LENGTH / 3
#: The longest a waiting client sleeps before asking again (API seconds): a slot freed by
#: another process is not announced, so it is looked for.
_RECHECK_AT_MOST = 1.0

# KEYS: the lease set. ARGV: now ('' = Redis TIME), time scale, cap, lease id, lease length
# (API seconds). Returns {taken 0/1, wait until the earliest lease expires (real s)}.
_TAKE = (
    """
local leases = KEYS[1]
"""
    + LUA_NOW
    + """
local scale, cap = tonumber(ARGV[2]), tonumber(ARGV[3])
local length = tonumber(ARGV[5]) / scale
redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
if redis.call('ZCARD', leases) < cap then
  redis.call('ZADD', leases, now + length, ARGV[4])
  redis.call('PEXPIRE', leases, math.ceil(length * 1000))
  return {1, '0'}
end
local first = redis.call('ZRANGE', leases, 0, 0, 'WITHSCORES')
return {0, tostring(tonumber(first[2]) - now)}
"""
)

# KEYS: the lease set. ARGV: now, scale, lease length, then the ids to renew. A lease held
# here is a generation running on the server, so one missing from Redis (expired while
# renewals failed, or lost by a Redis that restarted, was flushed or evicted the set) is put
# back: the count then says how many run, even past the cap, and others wait for it to fall.
# Returns how many were missing.
_RENEW = (
    """
local leases = KEYS[1]
"""
    + LUA_NOW
    + """
local length = tonumber(ARGV[3]) / tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
local missing = 0
for i = 4, #ARGV do
  missing = missing + redis.call('ZADD', leases, now + length, ARGV[i])
end
redis.call('PEXPIRE', leases, math.ceil(length * 1000))
return missing
"""
)


class SharedLeases:
    """Leases on the account's ``max_in_flight`` generation slots, shared through Redis.

    ``acquire()`` waits for a slot and returns the lease's id; ``release(id)`` gives it
    back; ``keep_alive()`` (run it in a task while leases are held) renews every lease this
    object holds. ``use_clock_time=True`` takes "now" from ``clock`` (tests);
    ``before_first_use`` is awaited before the first lease (as for ``SharedBudget``).
    """

    def __init__(
        self,
        max_in_flight: int,
        clock: Clock,
        store: SharedStore,
        *,
        use_clock_time: bool = False,
        before_first_use: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int):
            raise TypeError(f"max_in_flight must be an int, got {max_in_flight!r}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight!r}")
        self.max_in_flight = max_in_flight
        self.store = store
        self._clock = clock
        self._use_clock_time = use_clock_time
        # Learns the clock's time scale (from a served emulator) before the first lease.
        self._before_first_use = before_first_use
        self._take = store.script(_TAKE)
        self._renew = store.script(_RENEW)
        self._keys = [store.key("leases")]
        self._held: set[str] = set()
        # Renewals put back every lease held; one running as a lease is given back could put
        # it back after its removal, holding a slot nobody renews. The two take turns (made
        # at first use, on the loop: the client may be built before any loop runs).
        self._writing_lock: anyio.Lock | None = None

    @property
    def held(self) -> int:
        """How many leases this object holds now."""
        return len(self._held)

    @property
    def _writing(self) -> anyio.Lock:
        if self._writing_lock is None:
            self._writing_lock = anyio.Lock()
        return self._writing_lock

    def _now_and_scale(self) -> tuple[str, float]:
        scale = float(getattr(self._clock, "scale", 1.0))
        return (repr(self._clock.now()) if self._use_clock_time else ""), scale

    async def acquire(self) -> str:
        """Wait until the account runs fewer than ``max_in_flight`` generations, take a
        slot and return the lease's id."""
        if self._before_first_use is not None:
            await self._before_first_use()
            self._before_first_use = None
        lease = uuid.uuid4().hex
        while True:
            now, scale = self._now_and_scale()
            args: list[Any] = [now, repr(scale), self.max_in_flight, lease, repr(LEASE_LENGTH)]
            try:
                answer = await self.store.run_script(self._take, self._keys, args)
            except anyio.get_cancelled_exc_class():
                # Cut while the take ran (a caller's timeout, a cancelled batch): Redis may
                # have taken the slot, and untracked it would be neither renewed nor given
                # back. Removing a lease never taken changes nothing; a Redis out of reach
                # lets it expire (the cut, not the lost Redis, is what the caller hears).
                await give_back(self, lease)
                raise
            if int(answer[0]):
                self._held.add(lease)
                return lease
            wait = max(float(answer[1]) * scale, 1e-6)
            await self._clock.sleep(min(wait, _RECHECK_AT_MOST))

    async def release(self, lease: str) -> None:
        """Give ``lease`` back (a lease already expired or released is fine)."""
        self._held.discard(lease)
        key = self._keys[0]
        async with self._writing:  # after any renewal that could still put it back
            await self.store.run(lambda client: client.zrem(key, lease))

    async def renew(self) -> int:
        """Extend every lease this object holds by a lease length, putting back any that
        Redis no longer had; return how many were still there."""
        async with self._writing:  # a release waits, so a lease it gives back stays gone
            held = sorted(self._held)
            if not held:
                return 0
            now, scale = self._now_and_scale()
            args: list[Any] = [now, repr(scale), repr(LEASE_LENGTH), *held]
            missing = int(await self.store.run_script(self._renew, self._keys, args))
        if missing:
            logger.warning(
                "%d of this client's %d shared in-flight leases were missing in Redis (they "
                "expired while renewals failed, or Redis lost its data): put back, as their "
                "songs still run",
                missing,
                len(held),
            )
        return len(held) - missing

    async def keep_alive(self) -> None:
        """Renew the leases held every ``RENEW_EVERY`` API seconds, until cancelled."""
        while True:
            await self._clock.sleep(RENEW_EVERY)
            try:
                await self.renew()
            except SharedStateError as exc:
                # The next renewal may get through before the leases expire; submissions
                # meanwhile fail loudly at acquire() if Redis stays away.
                logger.warning("could not renew shared in-flight leases: %s", exc)

    def abandon(self, leases: Iterable[str]) -> None:
        """Stop renewing ``leases`` without giving them back (Redis cannot be reached): they
        expire by themselves after ``LEASE_LENGTH``."""
        self._held.difference_update(leases)

    async def release_all(self) -> None:
        """Give back every lease this object holds (shielded: runs during cancellation)."""
        held, self._held = sorted(self._held), set()
        if held:
            key = self._keys[0]
            with anyio.CancelScope(shield=True):
                async with self._writing:
                    await self.store.run(lambda client: client.zrem(key, *held))

    def __repr__(self) -> str:
        return (
            f"SharedLeases(max_in_flight={self.max_in_flight}, held={len(self._held)}, "
            f"store={self.store!r})"
        )


class _Releasing(Protocol):
    async def release(self, lease: str) -> None: ...


async def give_back(leases: _Releasing, lease: str) -> None:
    """Give ``lease`` back, shielded from the caller's cancel scopes (a slot is never kept by
    a cancellation). When Redis fails (or a second native cancel interrupts it), the lease is
    no longer renewed and expires: logged, not raised, for the song's outcome stands."""
    with anyio.CancelScope(shield=True):
        try:
            await leases.release(lease)
        except AimlMusicError as exc:
            logger.warning("could not give a shared in-flight slot back: %s", exc)
