"""The in-flight cap shared through a real Redis: leases across clients, renewal, expiry.

Leases of one account on one Redis stand for several processes; they share one
:class:`VirtualClock` ("now" from it, Redis called inline), so lease lengths of minutes take
milliseconds.
"""

from __future__ import annotations

import contextlib

import anyio
import anyio.lowlevel
import httpx
import pytest
from _servers import redis_down, shared_client

import aimlmusic
from aimlmusic._shared_leases import LEASE_LENGTH, SharedLeases
from aimlmusic._shared_redis import SharedStore
from aimlmusic.emulator import TEST_API_KEY, Emulator, EmulatorConfig
from aimlmusic.testing import VirtualClock

pytestmark = pytest.mark.anyio

KEY = "sk-test-shared-leases-0123456789"
LYRICS = "[Verse]\nA line to sing\n[Chorus]\nAnother line"
#: Times a race is run: it went the wrong way in 20 of 20 on asyncio, 11 of 40 on trio.
RACES = 20


def leases(
    cap: int, clock: VirtualClock, redis_url: str, prefix: str, key: str = KEY
) -> SharedLeases:
    """Leases of one account (``key``) under the test's own prefix, with a connection of
    their own: another process of the account."""
    store = SharedStore(redis_url, key, key_prefix=prefix, offload=False)
    return SharedLeases(cap, clock, store, use_clock_time=True)


async def test_the_cap_holds_across_holders_and_a_release_frees_a_slot(
    redis_url: str, redis_prefix: str
) -> None:
    """With 3 slots held by one holder, another waits until one is given back."""
    clock = VirtualClock()
    first = leases(3, clock, redis_url, redis_prefix)
    second = leases(3, clock, redis_url, redis_prefix)
    got_at: list[float] = []

    async def take() -> None:
        await second.acquire()
        got_at.append(clock.now())

    async with clock, anyio.create_task_group() as tg:
        held = [await first.acquire() for _ in range(3)]
        tg.start_soon(take)
        await clock.sleep(20.0)
        assert got_at == []
        await first.release(held[0])
        await clock.sleep(5.0)
    assert len(got_at) == 1
    assert 20.0 <= got_at[0] <= 22.0
    assert second.held == 1


async def test_a_dead_holders_slots_come_back_after_the_lease_length(
    redis_url: str, redis_prefix: str
) -> None:
    """Leases that nobody renews (a dead process) expire: the slot is free after
    LEASE_LENGTH, not before."""
    clock = VirtualClock()
    dead = leases(2, clock, redis_url, redis_prefix)
    alive = leases(2, clock, redis_url, redis_prefix)
    async with clock:
        await dead.acquire()
        await dead.acquire()
        await alive.acquire()
        waited = clock.now()
    assert LEASE_LENGTH <= waited <= LEASE_LENGTH + 2.0


async def test_renewed_leases_do_not_expire(redis_url: str, redis_prefix: str) -> None:
    """A holder that keeps its leases alive keeps its slots for three lease lengths."""
    clock = VirtualClock()
    holder = leases(1, clock, redis_url, redis_prefix)
    other = leases(1, clock, redis_url, redis_prefix)
    got = False

    async def take() -> None:
        nonlocal got
        await other.acquire()
        got = True

    async with clock, anyio.create_task_group() as tg:
        await holder.acquire()
        tg.start_soon(holder.keep_alive)
        tg.start_soon(take)
        await clock.sleep(3 * LEASE_LENGTH)
        assert not got
        tg.cancel_scope.cancel()


async def test_leases_redis_lost_are_put_back_at_the_next_renewal(
    redis_url: str, redis_prefix: str
) -> None:
    """Leases a Redis lost (restarted, flushed, evicted) come back at their holder's next
    renewal, so the count says how many songs run and a newcomer waits for it to fall."""
    clock = VirtualClock()
    holder = leases(2, clock, redis_url, redis_prefix)
    newcomer = leases(2, clock, redis_url, redis_prefix)
    key = holder.store.key("leases")
    async with clock:
        await holder.acquire()
        await holder.acquire()
        holder.store.redis.delete(key)  # Redis lost its data: the cap looks free
        await newcomer.acquire()
        await newcomer.acquire()
        assert await holder.renew() == 0  # none was still there
        assert holder.store.redis.zcard(key) == 4  # the four songs that run
        await newcomer.release(next(iter(newcomer._held)))
        started = clock.now()
        await newcomer.acquire()  # waits for the holder's songs, not the count Redis lost
        waited = clock.now() - started
    assert waited >= LEASE_LENGTH - 1.0


async def test_a_lease_given_back_during_a_renewal_stays_gone(
    redis_url: str, redis_prefix: str
) -> None:
    """A renewal running as a lease is given back (on connections of their own) never puts
    that lease back: it would hold a slot nobody renews until it expired."""
    store = SharedStore(redis_url, KEY, key_prefix=redis_prefix)  # real concurrent calls
    holder = SharedLeases(1, aimlmusic.SystemClock(), store)
    key = store.key("leases")
    try:
        for _ in range(RACES):
            lease = await holder.acquire()
            # An empty script cache (a Redis that restarted) makes the renewal's first call
            # the slow one, and the give-back overtook it every time.
            store.redis.script_flush()
            async with anyio.create_task_group() as tg:
                tg.start_soon(holder.renew)
                tg.start_soon(holder.release, lease)
            assert store.redis.zcard(key) == 0
    finally:
        await store.aclose()


async def test_two_clients_together_keep_to_the_accounts_in_flight_cap(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two clients of one key with max_in_flight=3 and shared_url, each generating 6 songs,
    never have more than 3 songs in flight together; every slot is given back at the end."""
    monkeypatch.setattr("aimlmusic._shared_redis.DEFAULT_KEY_PREFIX", redis_prefix)
    clock = VirtualClock()
    emulator = Emulator(EmulatorConfig(requests_per_minute=None), clock=clock)
    setting = aimlmusic.AudioSetting(format="wav", sample_rate=16000)
    limits = aimlmusic.Limits(max_in_flight=3)
    in_flight = 0
    most = 0

    class Counting(aimlmusic.BatchEvents):
        def on_submitted(self, event: aimlmusic.SongSubmitted) -> None:
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)

        def on_completed(self, event: aimlmusic.SongCompleted) -> None:
            nonlocal in_flight
            in_flight -= 1

    clients: list[aimlmusic.AsyncMusicClient] = []

    async def run(number: int) -> None:
        async with aimlmusic.AsyncMusicClient(
            TEST_API_KEY,
            base_url="http://127.0.0.1",
            transport=httpx.ASGITransport(app=emulator.app),
            clock=clock,
            limits=limits,
            shared_url=redis_url,
        ) as client:
            clients.append(client)
            songs = [
                aimlmusic.SongRequest(f"Client {number} song number {n}", LYRICS, setting)
                for n in range(6)
            ]
            async with client.generate_many(songs, events=Counting()) as results:
                async for result in results:
                    assert result.ok, result.error

    async with clock, anyio.create_task_group() as tg:
        for number in range(2):
            tg.start_soon(run, number)
    assert emulator.stats().jobs["completed"] == 12
    assert most == 3
    probe = leases(3, VirtualClock(), redis_url, redis_prefix)
    store = probe.store
    assert store.redis.zcard(store.key("leases")) == 0


async def test_generate_holds_a_slot_of_the_account(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """generate() on a shared client waits for a slot that another holder has, then
    gives its own back."""
    monkeypatch.setattr("aimlmusic._shared_redis.DEFAULT_KEY_PREFIX", redis_prefix)
    clock = VirtualClock()
    emulator = Emulator(EmulatorConfig(requests_per_minute=None), clock=clock)
    other = leases(1, clock, redis_url, redis_prefix, key=TEST_API_KEY)
    song = aimlmusic.SongRequest(
        "A song that waits", LYRICS, aimlmusic.AudioSetting(format="wav", sample_rate=16000)
    )
    async with clock, shared_client(emulator, clock, redis_url, 1) as client:
        held = await other.acquire()
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.generate, song)
            await clock.sleep(30.0)
            assert emulator.stats().requests.get("submit", 0) == 0
            await other.release(held)
        assert emulator.stats().jobs["completed"] == 1
        assert other.store.redis.zcard(other.store.key("leases")) == 0


async def test_the_time_scale_is_learned_before_the_first_lease(
    redis_url: str, redis_prefix: str
) -> None:
    """before_first_use (a served emulator's scale probe) runs once, before the first lease
    is taken, so the first lease's length is in the emulator's seconds."""
    clock = VirtualClock()
    calls: list[float] = []

    async def learn_scale() -> None:
        calls.append(clock.now())

    store = SharedStore(redis_url, KEY, key_prefix=redis_prefix, offload=False)
    holder = SharedLeases(2, clock, store, use_clock_time=True, before_first_use=learn_scale)
    async with clock:
        await holder.acquire()
        await holder.acquire()
    assert calls == [0.0]
    assert holder.held == 2


async def test_a_slot_that_cannot_be_given_back_keeps_the_song(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """generate() whose song completed, then whose slot cannot be given back (Redis gone),
    returns the completed song; the slot is left to expire."""
    monkeypatch.setattr("aimlmusic._shared_redis.DEFAULT_KEY_PREFIX", redis_prefix)
    clock = VirtualClock()
    emulator = Emulator(EmulatorConfig(requests_per_minute=None), clock=clock)
    song = aimlmusic.SongRequest(
        "A song that completes", LYRICS, aimlmusic.AudioSetting(format="wav", sample_rate=16000)
    )
    async with clock, shared_client(emulator, clock, redis_url, 2) as client:
        leases = client._leases
        assert leases is not None
        give_back = leases.release

        async def release_while_down(lease: str) -> None:
            with redis_down(client):
                await give_back(lease)

        monkeypatch.setattr(leases, "release", release_while_down)
        generation = await client.generate(song)
    assert generation.status is aimlmusic.GenerationStatus.COMPLETED
    assert emulator.stats().jobs["completed"] == 1


async def test_a_batch_cancelled_while_redis_fails_renews_none_of_its_slots(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch holding three slots, cancelled while Redis cannot be reached, leaves none of
    them to its client's renewals: once Redis is back they expire, and later batches of the
    client get every slot."""
    monkeypatch.setattr("aimlmusic._shared_redis.DEFAULT_KEY_PREFIX", redis_prefix)
    clock = VirtualClock()
    emulator = Emulator(EmulatorConfig(requests_per_minute=None), clock=clock)
    songs = [aimlmusic.SongRequest(f"Cancelled song number {i}", LYRICS) for i in range(3)]
    async with clock, shared_client(emulator, clock, redis_url, 3) as client:
        assert client._leases is not None

        async def batch() -> None:
            async with client.generate_many(songs) as results:
                async for _ in results:
                    pass

        with contextlib.ExitStack() as outage:  # until the batch has given up its slots
            async with anyio.create_task_group() as tg:
                tg.start_soon(batch)
                await clock.sleep(20.0)
                assert client._leases.held == 3
                outage.enter_context(redis_down(client))
                tg.cancel_scope.cancel()
        assert client._leases.held == 0  # nothing renews them: they expire
        await clock.sleep(LEASE_LENGTH + 1.0)
        free_from = clock.now()
        for _ in songs:
            await client._leases.acquire()
        assert clock.now() == free_from  # every slot free again, none waited for


async def test_generate_timeout_covers_the_wait_for_a_slot_and_sends_nothing(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """generate(timeout=10) while another holder keeps the account's only slot gives up
    at 10 s with SubmissionTimeoutError, nothing sent, rather than waiting for the slot."""
    monkeypatch.setattr("aimlmusic._shared_redis.DEFAULT_KEY_PREFIX", redis_prefix)
    clock = VirtualClock()
    emulator = Emulator(EmulatorConfig(requests_per_minute=None), clock=clock)
    other = leases(1, clock, redis_url, redis_prefix, key=TEST_API_KEY)
    song = aimlmusic.SongRequest("A song that never gets a slot", LYRICS)
    async with clock, shared_client(emulator, clock, redis_url, 1) as client:
        await other.acquire()
        async with anyio.create_task_group() as tg:
            tg.start_soon(other.keep_alive)
            with pytest.raises(aimlmusic.SubmissionTimeoutError) as caught:
                await client.generate(song, timeout=10)
            assert clock.now() == pytest.approx(10.0)
            tg.cancel_scope.cancel()
    assert "in-flight slots" in str(caught.value)
    assert caught.value.timeout == 10
    assert emulator.stats().requests.get("submit", 0) == 0


async def test_generate_cancelled_as_it_takes_its_slot_gives_the_slot_back(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """generate(timeout=600) whose caller cancels it the moment its slot is taken gives the
    slot back: the client's other work would otherwise renew it for ever."""
    monkeypatch.setattr("aimlmusic._shared_redis.DEFAULT_KEY_PREFIX", redis_prefix)
    clock = VirtualClock()
    emulator = Emulator(EmulatorConfig(requests_per_minute=None), clock=clock)
    song = aimlmusic.SongRequest("A song cancelled at once", LYRICS)
    async with clock, shared_client(emulator, clock, redis_url, 2) as client:
        slots = client._leases
        assert slots is not None
        take = slots.acquire
        with anyio.CancelScope() as scope:

            async def take_then_cancel() -> str:
                lease = await take()
                scope.cancel()
                return lease

            monkeypatch.setattr(slots, "acquire", take_then_cancel)
            await client.generate(song, timeout=600)
        assert scope.cancelled_caught
        assert slots.held == 0
        assert slots.store.redis.zcard(slots.store.key("leases")) == 0
    assert emulator.stats().requests.get("submit", 0) == 0


async def test_a_take_cut_while_its_script_runs_gives_the_slot_back(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """acquire() cancelled after Redis ran the take but before its answer was read gives
    that slot back: untracked, nothing would renew or release it, and it would keep one of
    the account's slots until its lease ran out."""
    clock = VirtualClock()
    holder = leases(1, clock, redis_url, redis_prefix)
    run_script = holder.store.run_script
    async with clock:
        with anyio.CancelScope() as scope:

            async def taken_then_cut(*args: object) -> object:
                answer = await run_script(*args)  # type: ignore[arg-type]
                scope.cancel()
                await anyio.lowlevel.checkpoint()  # the cut lands before the answer is read
                return answer

            monkeypatch.setattr(holder.store, "run_script", taken_then_cut)
            await holder.acquire()
    assert scope.cancelled_caught
    assert holder.held == 0
    assert holder.store.redis.zcard(holder.store.key("leases")) == 0
