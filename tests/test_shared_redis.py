"""How the shared store reaches a real Redis on each loop: the asyncio client on asyncio,
the blocking client in a worker thread on trio, and both closed by ``aclose``."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import pytest

from aimlmusic import ConfigurationError, LearnedPolling, ScaledClock, SharedStateError
from aimlmusic._shared_budget import SharedBudget
from aimlmusic._shared_leases import SharedLeases
from aimlmusic._shared_redis import SharedStore
from aimlmusic._shared_timing import SharedTiming

pytestmark = pytest.mark.anyio

KEY = "sk-test-shared-redis-0123456789"


async def use_every_shared_part(store: SharedStore) -> None:
    """One budget acquire, one lease taken, renewed and given back, and one timing estimate
    published and read back, all through ``store`` at 600x real time."""
    clock = ScaledClock(600.0)
    budget = SharedBudget(60, clock, store, seed=1)
    with anyio.fail_after(10):  # a hang guard only
        await budget.acquire("submit")
    assert budget.sent_total == 1

    leases = SharedLeases(2, clock, store)
    lease = await leases.acquire()
    assert await leases.renew() == 1
    await leases.release(lease)
    assert await store.run(lambda client: client.zcard(store.key("leases"))) == 0

    learned = LearnedPolling()
    for n in range(5):
        learned.observe_finished(f"song-{n}", 0.0, 19.0, 21.0)
    assert await SharedTiming(store, learned, clock).publish(force=True)
    assert await SharedTiming(store, LearnedPolling(), clock).load()


def count_thread_hops(monkeypatch: pytest.MonkeyPatch, *, forbidden: bool) -> Callable[[], int]:
    """Wrap ``anyio.to_thread.run_sync``: count its calls, and fail them if ``forbidden``."""
    hops = 0
    real = anyio.to_thread.run_sync

    async def counted(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        nonlocal hops
        hops += 1
        if forbidden:
            raise AssertionError("a worker thread was used to reach Redis")
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    return lambda: hops


async def test_each_loop_reaches_redis_its_own_way(
    redis_url: str, redis_prefix: str, anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On asyncio the budget, leases and timing reach Redis with no worker thread at all
    (threads are made to fail); on trio they still work, through worker threads."""
    on_asyncio = anyio_backend == "asyncio"
    hops = count_thread_hops(monkeypatch, forbidden=on_asyncio)
    store = SharedStore(redis_url, KEY, key_prefix=redis_prefix)
    try:
        await use_every_shared_part(store)
    finally:
        await store.aclose()
    assert hops() == (0 if on_asyncio else 7)  # one hop per call on trio


async def test_inline_mode_uses_neither_a_thread_nor_the_asyncio_client(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With offload=False (virtual-time tests) every call runs on the blocking client in
    the loop's thread, on either loop."""
    hops = count_thread_hops(monkeypatch, forbidden=True)
    store = SharedStore(redis_url, KEY, key_prefix=redis_prefix, offload=False)
    seen: list[type] = []

    def record(client: Any) -> Any:
        seen.append(type(client))
        return client.ping()

    try:
        assert await store.run(record) is True
        await use_every_shared_part(store)
    finally:
        await store.aclose()
    assert hops() == 0
    assert seen == [type(store.redis)]


async def test_a_failure_on_either_path_names_the_url_without_the_password() -> None:
    """A refused connection is a SharedStateError naming the redacted URL, whichever
    client the loop uses; aclose afterwards is safe, twice."""
    store = SharedStore("redis://worker:s3cret-pass@127.0.0.1:1/0", KEY)
    try:
        with anyio.fail_after(30), pytest.raises(SharedStateError) as caught:
            await store.run(lambda client: client.ping())
    finally:
        await store.aclose()
        await store.aclose()
    assert "redis://worker:<redacted>@127.0.0.1:1/0" in str(caught.value)
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("mark", ["/", "?", "#", "@"])
async def test_a_password_with_an_unencoded_delimiter_is_never_shown(mark: str) -> None:
    """A password holding '/', '?', '#' or '@' unencoded is hidden from the shown URL, and a
    URL redis-py cannot read is refused without quoting it."""
    url = f"redis://worker:s3cret{mark}tail-part@127.0.0.1:1/0"
    try:
        store = SharedStore(url, KEY)
    except ConfigurationError as exc:  # redis-py's own parse fails on most of them
        shown = str(exc)
        assert "percent-encode" in shown
    else:
        shown = f"{store.redacted_url} {store!r}"
        await store.aclose()
    assert "s3cret" not in shown
    assert "tail-part" not in shown
    assert "worker:<redacted>@127.0.0.1:1/0" in shown


# The first loop's connections are abandoned unclosed (nothing can close them once their loop
# is gone): asyncio rightly warns when they are collected, which this test makes happen here.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_a_store_used_again_on_a_new_event_loop_still_reaches_redis(
    redis_url: str, redis_prefix: str, anyio_backend: str
) -> None:
    """A store left open after one event loop ends (``anyio.run`` twice, as a script calling
    ``asyncio.run`` per job does) works on the next loop: its asyncio client is remade for
    the running loop instead of reusing connections that belong to the dead one."""
    store = SharedStore(redis_url, KEY, key_prefix=redis_prefix)

    async def ping_and_count() -> Any:
        with anyio.fail_after(10):  # a hang guard only
            assert await store.run(lambda client: client.ping()) is True
            return await store.run(lambda client: client.incr(store.key("runs")))

    try:
        first = anyio.run(ping_and_count, backend=anyio_backend)
        second = anyio.run(ping_and_count, backend=anyio_backend)
    finally:
        anyio.run(store.aclose, backend=anyio_backend)
        gc.collect()
    assert (first, second) == (1, 2)
