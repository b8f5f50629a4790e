"""The shared budget's queue of waiting requests when a submission overtakes a poll.

Within a client, a submission goes before any poll; it can arrive while a poll is already
asking Redis, and both are then asking at once. Whichever answer comes first, every waiter
must stay queued until it is itself granted (real Redis; Redis calls held at a gate so the
interleaving is exact, on a :class:`VirtualClock`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from aimlmusic import SharedBudget
from aimlmusic._shared_redis import SharedStore
from aimlmusic.testing import VirtualClock

pytestmark = pytest.mark.anyio

KEY = "sk-test-shared-budget-queue-0123"
#: Virtual seconds the overtaking submission may wait: the window (a minute) and a margin.
PATIENCE = 120.0


class GatedStore(SharedStore):
    """A store whose first calls each wait at a gate that the test opens, one at a time."""

    def __init__(self, redis_url: str, prefix: str, gated: int) -> None:
        super().__init__(redis_url, KEY, key_prefix=prefix, offload=False)
        self.reached = [anyio.Event() for _ in range(gated)]
        self.gates = [anyio.Event() for _ in range(gated)]
        self.calls = 0

    async def run(self, call: Callable[[Any], Any]) -> Any:
        index, self.calls = self.calls, self.calls + 1
        if index < len(self.gates):
            self.reached[index].set()
            await self.gates[index].wait()
        return await super().run(call)


async def test_a_poll_granted_after_a_submission_overtook_it_leaves_the_submission_queued(
    redis_url: str, redis_prefix: str
) -> None:
    """A poll granted while a later submission asks Redis too does not drop the submission
    from the queue: refused (the minute's one request is gone), it is sent a minute later."""
    clock = VirtualClock()
    store = GatedStore(redis_url, redis_prefix, gated=2)
    budget = SharedBudget(1, clock, store, use_clock_time=True, seed=0)
    sent: dict[str, float] = {}
    poll_sent = anyio.Event()

    async def send(kind: str) -> None:
        await budget.acquire(kind)  # type: ignore[arg-type]
        sent[kind] = clock.now()
        if kind == "poll":
            poll_sent.set()

    async with clock, anyio.create_task_group() as tg:
        tg.start_soon(send, "poll")
        await store.reached[0].wait()  # the poll is asking Redis
        tg.start_soon(send, "submit")
        await store.reached[1].wait()  # the submission went ahead of it and asks too
        store.gates[0].set()  # the poll's call is answered first: it takes the request
        with anyio.fail_after(5):  # real seconds; the clock runs virtual time meanwhile
            await poll_sent.wait()
            store.gates[1].set()  # the submission's: refused, the window is full
            while "submit" not in sent and clock.now() < PATIENCE:
                await clock.sleep(1.0)
    store.close()
    assert sent["poll"] == 0.0
    assert 60.0 <= sent.get("submit", float("inf")) <= PATIENCE
    assert budget.waiting == 0
