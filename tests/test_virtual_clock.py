"""The virtual clock: time stands still while tasks run, and jumps when they all wait."""

from __future__ import annotations

import math
import time

import anyio
import httpx
import pytest

from aimlmusic import AsyncMusicClient, Clock, SongRequest, _virtual_clock
from aimlmusic.emulator import TEST_API_KEY, Emulator, EmulatorConfig, Faults
from aimlmusic.testing import EMULATED_BASE_URL, VirtualClock, VirtualClockDeadlock

pytestmark = pytest.mark.anyio


async def test_a_long_sleep_takes_no_real_time() -> None:
    """An hour of virtual sleep returns at once, with the clock exactly an hour later."""
    clock = VirtualClock(start=10.0)
    started = time.monotonic()
    async with clock:
        await clock.sleep(3600.0)
        assert clock.now() == 3610.0
    assert time.monotonic() - started < 2.0  # generous: a loaded machine, not a real hour


async def test_sleepers_wake_in_deadline_order_then_start_order() -> None:
    """Sleepers wake by deadline, and those with equal deadlines in the order they slept."""
    woke: list[tuple[float, int]] = []

    async def nap(seconds: float, order: int) -> None:
        await clock.sleep(seconds)
        woke.append((clock.now(), order))

    # Eight sleepers on each of five deadlines, started in shuffled deadline order (trio
    # runs tasks woken together in a random order, so waking them all at once would show).
    deadlines = [30.0, 10.0, 50.0, 20.0, 40.0] * 8
    async with VirtualClock() as clock, anyio.create_task_group() as tg:
        for order, seconds in enumerate(deadlines):
            tg.start_soon(nap, seconds, order)
            await anyio.lowlevel.checkpoint()  # each starts (and sleeps) before the next
    assert woke == sorted((seconds, order) for order, seconds in enumerate(deadlines))


async def test_an_event_loop_without_a_ready_queue_falls_back_to_anyio(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where the loop's ready queue cannot be read (uvloop, say), anyio's slower check of
    every task keeps the same order and times."""
    monkeypatch.setattr(_virtual_clock, "_ready_queue", lambda loop: None)
    woke: list[tuple[float, str]] = []

    async def nap(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((clock.now(), name))

    seen: list[float] = []

    async def busy() -> None:
        for _ in range(20):
            seen.append(clock.now())
            await anyio.lowlevel.checkpoint()

    async with VirtualClock() as clock, anyio.create_task_group() as tg:
        for name, seconds in [("b", 2.0), ("a", 1.0), ("c", 2.0)]:
            tg.start_soon(nap, name, seconds)
            await anyio.lowlevel.checkpoint()
        tg.start_soon(busy)
    assert woke == [(1.0, "a"), (2.0, "b"), (2.0, "c")]
    assert seen == [0.0] * 20


async def test_time_stands_still_while_any_task_can_run() -> None:
    """A sleeper does not wake while another task still has work, however long it takes."""
    seen: list[float] = []

    async def busy() -> None:
        for _ in range(200):
            seen.append(clock.now())
            await anyio.lowlevel.checkpoint()  # runnable again at once: time must not move

    async with VirtualClock() as clock, anyio.create_task_group() as tg:
        tg.start_soon(clock.sleep, 1.0)
        tg.start_soon(busy)
    assert seen == [0.0] * 200
    assert clock.now() == 1.0


async def test_nothing_wakes_before_its_deadline() -> None:
    """Each sleeper sees at least its deadline on waking, even with many interleaved."""
    late: list[float] = []

    async def nap(seconds: float) -> None:
        deadline = clock.now() + seconds
        await clock.sleep(seconds)
        late.append(clock.now() - deadline)

    async with VirtualClock() as clock, anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(nap, (i * 7919 % 97) / 3.0 + 0.001)
    assert len(late) == 50
    assert min(late) >= 0.0
    assert max(late) == pytest.approx(0.0, abs=1e-9)  # woken exactly at the deadline


async def cancel_a_sleeper_then_wait_forever(clock: VirtualClock) -> None:
    """Under ``clock``: cancel a 100 s sleeper at 5 s, then wait for what never comes."""
    async with clock:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(clock.sleep, 100.0)
                await clock.sleep(5.0)
                scope.cancel()
        await anyio.Event().wait()


async def test_a_cancelled_sleeper_neither_wakes_nor_moves_time() -> None:
    """Cancelling a sleeper removes it: time never jumps to its deadline."""
    clock = VirtualClock(deadlock_after=0.05)
    with pytest.raises(VirtualClockDeadlock, match="at virtual time 5"):
        await cancel_a_sleeper_then_wait_forever(clock)
    assert clock.now() == 5.0  # nothing was left to wake: not moved on to 100


async def test_sleep_of_zero_or_less_does_not_move_time() -> None:
    """``sleep(0)`` and negative sleeps return without moving the clock."""
    async with VirtualClock(start=3.0) as clock:
        await clock.sleep(0.0)
        await clock.sleep(-5.0)
        assert clock.now() == 3.0


async def sleep_forever_on(clock: VirtualClock) -> None:
    """Under ``clock``, sleep an infinite time."""
    async with clock:
        await clock.sleep(math.inf)


async def test_an_endless_sleep_never_moves_time_and_nan_is_refused() -> None:
    """``sleep(inf)`` waits with the clock unmoved (here: a deadlock, reported at 0 s);
    ``sleep(nan)`` is an error."""
    clock = VirtualClock(deadlock_after=0.05)
    with pytest.raises(VirtualClockDeadlock):
        await sleep_forever_on(clock)
    assert clock.now() == 0.0
    async with clock:
        with pytest.raises(ValueError, match="got nan"):
            await clock.sleep(math.nan)


async def test_a_deadlock_with_no_sleeper_is_reported() -> None:
    """Every task waiting on an event nobody sets, with nothing sleeping: an error, no hang."""
    never = anyio.Event()
    started = time.monotonic()
    with pytest.raises(VirtualClockDeadlock, match="nothing sleeping on the virtual clock"):
        async with VirtualClock(deadlock_after=0.05):
            await never.wait()
    assert time.monotonic() - started < 5.0


async def test_a_wait_that_ends_before_the_deadlock_report_is_not_one() -> None:
    """A task blocked on a worker thread for a moment, with no sleeper, is not a deadlock."""
    async with VirtualClock(deadlock_after=5.0) as clock:
        await anyio.to_thread.run_sync(time.sleep, 0.05)
        await clock.sleep(1.0)
    assert clock.now() == 1.0


async def raise_in_the_block(clock: VirtualClock) -> None:
    """Under ``clock``, after a sleep, raise a ValueError."""
    async with clock:
        await clock.sleep(1.0)
        raise ValueError("my mistake")


async def test_an_error_in_the_block_comes_out_as_itself() -> None:
    """A ValueError raised under the clock is raised as is, not in an ExceptionGroup."""
    with pytest.raises(ValueError, match="my mistake") as caught:
        await raise_in_the_block(VirtualClock())
    assert type(caught.value) is ValueError


async def test_sleep_outside_the_running_clock_says_how_to_run_it() -> None:
    """Sleeping on a clock that is not running is an error naming the fix, not a hang."""
    with pytest.raises(RuntimeError, match="async with clock"):
        await VirtualClock().sleep(1.0)


def test_is_a_clock_and_rejects_a_bad_deadlock_setting() -> None:
    """It satisfies the Clock protocol, and a non-positive ``deadlock_after`` is refused."""
    assert isinstance(VirtualClock(), Clock)
    with pytest.raises(ValueError, match="deadlock_after must be positive, got 0"):
        VirtualClock(deadlock_after=0)


async def test_a_client_and_the_emulator_share_virtual_time() -> None:
    """Given the clock, the emulator hands it to the client as its own, and a song it takes
    50-60 s to make completes at 50-60 s of virtual time."""
    clock = VirtualClock()
    emulator = Emulator(EmulatorConfig(requests_per_minute=None), clock=clock)
    assert emulator.clock is clock
    async with (
        clock,
        AsyncMusicClient(
            TEST_API_KEY,
            base_url=EMULATED_BASE_URL,
            transport=httpx.ASGITransport(app=emulator.app),
            clock=emulator.clock,
        ) as client,
    ):
        generation = await client.generate(SongRequest("Calm piano", "[Verse]\nla la"))
    assert generation.status == "completed"
    assert 50.0 <= clock.now() <= 60.0 + 30.0  # done, and seen within a poll interval


async def test_a_delayed_answer_from_the_emulator_takes_its_delay_in_virtual_time() -> None:
    """With the clock shared, the emulator's delay fault holds an answer 30 virtual seconds
    (not 30 real ones, nor none)."""
    clock = VirtualClock()
    faults = Faults(delay=1.0, delay_seconds=30.0)
    emulator = Emulator(EmulatorConfig(requests_per_minute=None, faults=faults), clock=clock)
    started = time.monotonic()
    async with (
        clock,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=emulator.app), base_url=EMULATED_BASE_URL
        ) as http,
    ):
        response = await http.get(
            "/v2/generate/audio",
            params={"generation_id": "nothing"},
            headers={"Authorization": f"Bearer {TEST_API_KEY}"},
        )
    assert response.status_code == 404
    assert clock.now() == 30.0
    assert time.monotonic() - started < 5.0
