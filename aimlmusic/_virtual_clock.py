"""Virtual time for tests: a clock that stands still while any task can run, then jumps.

A :class:`VirtualClock` answers ``now()`` from a number it keeps, and ``sleep()`` parks the
task until a driver task wakes it. The driver waits until every other task of the event loop
is blocked, then moves the clock to the earliest pending deadline and wakes that one sleeper;
then waits again. So a test of minutes of API time takes milliseconds, never depends on how
loaded the machine is, and runs the same on asyncio and on trio (trio's ``MockClock`` with
autojump does this for trio alone, and for the whole event loop's clock).

Only waits that go through the clock are virtual. A task blocked on something else (a real
socket, a worker thread, ``anyio.sleep``) counts as blocked, so the clock may jump while it
waits: use it with in-process transports (``httpx.MockTransport``, ``httpx.ASGITransport``).

This module imports only the standard library and anyio (it is re-exported by the pytest
plugin :mod:`aimlmusic.testing`).
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import math
from collections.abc import Sized
from contextlib import AsyncExitStack
from types import TracebackType

import anyio
import anyio.lowlevel

__all__ = ["VirtualClock", "VirtualClockDeadlock"]

#: Real seconds every task may stay blocked with nobody sleeping on the clock before that is
#: reported as a deadlock: far longer than any in-process step, short enough not to hang CI.
DEFAULT_DEADLOCK_AFTER = 5.0


class VirtualClockDeadlock(RuntimeError):
    """Every task waited with nothing sleeping on the :class:`VirtualClock` to wake one."""


class _Sleeper:
    """One pending :meth:`VirtualClock.sleep`: its deadline and what wakes it."""

    __slots__ = ("deadline", "gone", "order", "woken")

    def __init__(self, deadline: float, order: int) -> None:
        self.deadline = deadline
        self.order = order
        self.woken = anyio.Event()
        self.gone = False  # cancelled: skipped, and time never jumps to its deadline

    def __lt__(self, other: _Sleeper) -> bool:
        return (self.deadline, self.order) < (other.deadline, other.order)


class VirtualClock:
    """A :class:`~aimlmusic.Clock` whose time moves only when every task waits.

    Run it around the code under test; a client built with ``clock=clock`` then polls,
    backs off and paces its requests in virtual time::

        clock = VirtualClock()
        async with clock:
            async with AsyncMusicClient(key, transport=..., clock=clock) as client:
                await client.generate(song)  # a minute of API time, milliseconds of real time

    While the ``async with`` block runs, a driver task waits until all other tasks are
    blocked, then sets the time to the earliest pending deadline and wakes that sleeper
    alone; sleepers with equal deadlines wake one at a time in the order they started to
    sleep. Nothing wakes before its deadline and time never goes back. ``sleep(0)`` (or a
    negative time) is a checkpoint that lets other tasks run without moving time.

    If every task stays blocked for ``deadlock_after`` real seconds with no sleeper pending,
    the block is cancelled and :class:`VirtualClockDeadlock` raised instead of hanging. An
    exception raised in the block comes out as itself.

    One clock drives one event loop at a time. ``now()`` starts at ``start``.
    """

    def __init__(self, start: float = 0.0, *, deadlock_after: float = DEFAULT_DEADLOCK_AFTER):
        if deadlock_after <= 0:
            raise ValueError(f"deadlock_after must be positive, got {deadlock_after!r}")
        self._now = float(start)
        self._deadlock_after = deadlock_after
        self._sleepers: list[_Sleeper] = []
        self._order = itertools.count()
        self._sleeper_added: anyio.Event | None = None
        self._stack: AsyncExitStack | None = None
        self._deadlocked = False

    def now(self) -> float:
        """The virtual time in seconds."""
        return self._now

    @property
    def running(self) -> bool:
        """Whether the driver runs (inside ``async with clock``)."""
        return self._stack is not None

    async def sleep(self, seconds: float) -> None:
        """Wait until the clock reaches ``now() + seconds``; ``seconds <= 0`` only yields, and
        an infinite time waits until cancelled (without moving the clock)."""
        if math.isnan(seconds):
            raise ValueError("VirtualClock.sleep() needs a number of seconds, got nan")
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        if self._stack is None:
            raise RuntimeError(
                "VirtualClock.sleep() needs the clock running: wrap the code in `async with clock:`"
            )
        if math.isinf(seconds):
            await anyio.sleep_forever()
        sleeper = _Sleeper(self._now + seconds, next(self._order))
        heapq.heappush(self._sleepers, sleeper)
        if self._sleeper_added is not None:
            self._sleeper_added.set()
        try:
            await sleeper.woken.wait()
        finally:
            if not sleeper.woken.is_set():
                sleeper.gone = True

    async def __aenter__(self) -> VirtualClock:
        if self._stack is not None:
            raise RuntimeError("this VirtualClock is already running")
        stack = AsyncExitStack()
        task_group = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(task_group.cancel_scope.cancel)  # runs first: stops the driver
        self._deadlocked = False
        self._stack = stack
        task_group.start_soon(self._drive, task_group.cancel_scope)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        stack, self._stack = self._stack, None
        assert stack is not None, "__aexit__ without __aenter__"
        if isinstance(exc, Exception):
            # An error of the block comes out as itself, not in the task group's
            # ExceptionGroup: the driver is only stopped (cancellations pass through).
            exc_type, exc, traceback = None, None, None
        try:
            suppressed = await stack.__aexit__(exc_type, exc, traceback)
        finally:
            for sleeper in self._sleepers:
                sleeper.gone = True
            self._sleepers.clear()
        if self._deadlocked:
            raise VirtualClockDeadlock(
                f"every task has been blocked for {self._deadlock_after:g} real seconds "
                "with nothing sleeping on the virtual clock (at virtual time "
                f"{self._now:g}): a deadlock, or a wait the clock cannot see"
            )
        return bool(suppressed)

    async def _drive(self, scope: anyio.CancelScope) -> None:
        """Wake the earliest sleeper each time every other task is blocked, forever."""
        while True:
            await _all_other_tasks_blocked()
            sleeper = self._next_sleeper()
            if sleeper is not None:
                self._now = max(self._now, sleeper.deadline)
                sleeper.woken.set()
                continue
            self._sleeper_added = anyio.Event()
            with anyio.move_on_after(self._deadlock_after):
                await self._sleeper_added.wait()
            self._sleeper_added = None
            await _all_other_tasks_blocked()
            if self._next_sleeper(pop=False) is None:
                self._deadlocked = True
                scope.cancel()
                return

    def _next_sleeper(self, *, pop: bool = True) -> _Sleeper | None:
        """The earliest sleeper still waiting (removed from the queue if ``pop``)."""
        while self._sleepers and self._sleepers[0].gone:
            heapq.heappop(self._sleepers)
        if not self._sleepers:
            return None
        return heapq.heappop(self._sleepers) if pop else self._sleepers[0]

    def __repr__(self) -> str:
        pending = sum(not sleeper.gone for sleeper in self._sleepers)
        return f"VirtualClock(now={self._now:g}, sleepers={pending})"


async def _all_other_tasks_blocked() -> None:
    """Return once every other task of the event loop waits on something."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio: trio, whose own check is exact and cheap
        await anyio.wait_all_tasks_blocked()
        return
    ready = _ready_queue(loop)
    if ready is None:  # an event loop other than the standard library's (uvloop, say)
        await anyio.wait_all_tasks_blocked()
        return
    # anyio's asyncio version sleeps 0.1 real seconds whenever a task is runnable, and scans
    # every task: far too slow for thousands of jumps. On asyncio every wake-up (a task's
    # first step, a future's result, a thread's answer, a timer or socket that fired) goes
    # through the loop's ready queue before the task runs, so a turn of the loop that ends
    # with that queue empty leaves no task that can run.
    while True:
        await asyncio.sleep(0)
        if not ready:
            return


def _ready_queue(loop: asyncio.AbstractEventLoop) -> Sized | None:
    """The standard event loop's queue of callbacks ready to run (private, hence checked)."""
    ready = getattr(loop, "_ready", None)
    return ready if isinstance(ready, collections.deque) else None
