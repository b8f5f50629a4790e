"""The blocking ``MusicClient``: the async client's behaviour without ``await``.

Plain sync tests against the in-process emulator on its compressed clock. The background
loop runs asyncio or trio (``backend``), so the behavioural tests run on both.
"""

from __future__ import annotations

import _thread
import asyncio
import gc
import logging
import random
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import aimlmusic
from aimlmusic import FixedInterval, MusicClient, SongRequest
from aimlmusic.emulator import TEST_API_KEY, Emulator, EmulatorConfig
from aimlmusic.testing import EMULATED_BASE_URL

#: API seconds per real second: a 50-60 s song takes 50-60 ms.
TIME_SCALE = 1000.0
#: A song that does not finish while a test runs (about 11 real days at TIME_SCALE).
NEVER = 1e9
#: Polls at 20 API seconds (the first song, 10 s long, is then done), then never again.
PARKED_POLLS = FixedInterval(interval=NEVER, first=20.0)
#: Real seconds a test waits for the background loop to reach a point (only on failure).
REACH_TIMEOUT = 30.0
#: Real seconds (hundreds of API seconds at TIME_SCALE) after which a call that should have
#: been cancelled but was not has visibly gone on (checks of absence only: never flaky).
SETTLE = 0.3
#: Real seconds the loop is held up just after a Ctrl-C, to widen a race on purpose.
RACE_WINDOW = 0.05
#: Name prefixes of the threads anyio and trio keep in their thread pools.
POOL_THREADS = ("AnyIO worker thread", "Trio thread")


class WatchedClock:
    """The emulator's clock, counting the sleeps in progress and the cancelled ones (from
    the client's background thread)."""

    def __init__(self, emulator: Emulator) -> None:
        self.inner = emulator.clock
        self.active = 0
        self.cancelled = 0
        self.long_active = 0  # sleeps of NEVER or more in progress (a poll planned never)

    def now(self) -> float:
        return self.inner.now()

    async def sleep(self, seconds: float) -> None:
        long = seconds >= NEVER / 2
        self.active += 1
        self.long_active += long
        try:
            await self.inner.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        finally:
            self.active -= 1
            self.long_active -= long


def _song(n: int = 0) -> SongRequest:
    return SongRequest(prompt=f"Calm acoustic guitar, take {n}", lyrics="[Verse]\nLa la la la")


def _client(emulator: Emulator, backend: str, **options: object) -> MusicClient:
    return MusicClient(
        TEST_API_KEY,
        base_url=EMULATED_BASE_URL,
        transport=options.pop("transport", httpx.ASGITransport(app=emulator.app)),  # type: ignore[arg-type]
        clock=options.pop("clock", emulator.clock),  # type: ignore[arg-type]
        backend=backend,
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    """The event loop library the client's background thread runs."""
    return str(request.param)


@pytest.fixture
def emulator() -> Emulator:
    """A fresh emulator at TIME_SCALE without the per-minute budget."""
    return Emulator(EmulatorConfig(time_scale=TIME_SCALE, requests_per_minute=None))


@pytest.fixture
def no_leaked_threads() -> Iterator[None]:
    """Fails the test if a thread it started is still running at its end (except idle
    workers of the event loops' thread pools: trio keeps them for 10 s, asyncio's end a
    moment after their loop, and neither holds anything of ours)."""
    before = set(threading.enumerate())
    yield
    leaked = [
        t
        for t in threading.enumerate()
        if t not in before and t.is_alive() and not t.name.startswith(POOL_THREADS)
    ]
    assert leaked == []


@pytest.fixture
def sigint_raises() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt in the main thread, as in a plain script."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _wait_until(condition: Callable[[], bool]) -> None:
    """Return once ``condition()`` holds (checked every millisecond; fails after
    REACH_TIMEOUT, which only a broken client reaches)."""
    deadline = time.monotonic() + REACH_TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, "the client never got there"
        time.sleep(0.001)


def _ctrl_c_when(condition: Callable[[], bool]) -> threading.Thread:
    """Press Ctrl-C (SIGINT to the main thread) as soon as ``condition()`` holds (at the
    latest after REACH_TIMEOUT)."""
    main = threading.main_thread().ident
    assert main is not None

    def press() -> None:
        # Pressed at REACH_TIMEOUT even if the condition never held: the main thread is
        # blocked waiting for a result that will not come, and must be interrupted (the
        # test then fails on its own assertions, rather than hanging the suite).
        deadline = time.monotonic() + REACH_TIMEOUT
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.001)
        signal.pthread_kill(main, signal.SIGINT)

    thread = threading.Thread(target=press, daemon=True)
    thread.start()
    return thread


def _parked(emulator: Emulator, clock: WatchedClock, songs: int) -> Callable[[], bool]:
    """True once ``songs`` songs were submitted and polled once and the client sleeps:
    with ``PARKED_POLLS`` the next poll is ages away, so it sleeps until cancelled."""

    def parked() -> bool:
        requests = emulator.stats().requests
        return requests["submit"] == songs and requests["poll"] >= songs and clock.active > 0

    return parked


@pytest.mark.usefixtures("no_leaked_threads")
def test_generate_and_download_write_the_song(
    emulator: Emulator, backend: str, tmp_path: Path
) -> None:
    """generate() returns the completed generation and download() writes its audio."""
    with _client(emulator, backend) as client:
        generation = client.generate(_song())
        path = client.download(generation, tmp_path / "song.mp3")
    assert generation.status == aimlmusic.GenerationStatus.COMPLETED
    assert path == tmp_path / "song.mp3"
    assert generation.music_info is not None
    assert path.stat().st_size == generation.music_info.size
    assert emulator.stats().duplicate_submissions == 0


def test_submit_get_and_wait_follow_one_generation(emulator: Emulator, backend: str) -> None:
    """submit(), get() and wait() see the same generation through to completion."""
    with _client(emulator, backend) as client:
        submitted = client.submit(_song())
        fetched = client.get(submitted.id)
        finished = client.wait(submitted.id)
    assert fetched.id == submitted.id == finished.id
    assert finished.status == aimlmusic.GenerationStatus.COMPLETED


def test_errors_keep_their_type(emulator: Emulator, backend: str) -> None:
    """A failed song raises GenerationFailedError, a deadline GenerationTimeoutError."""
    emulator.inject("generation_failure", route="submit")
    with _client(emulator, backend) as client:
        with pytest.raises(aimlmusic.GenerationFailedError):
            client.generate(_song(1))
        with pytest.raises(aimlmusic.GenerationTimeoutError):
            client.generate(_song(2), timeout=1.0)


@pytest.mark.usefixtures("no_leaked_threads")
def test_bad_settings_raise_before_any_thread_starts() -> None:
    """A configuration error raises in the caller, naming the problem; no thread is left."""
    with pytest.raises(aimlmusic.ConfigurationError, match="timeout"):
        MusicClient(TEST_API_KEY, base_url=EMULATED_BASE_URL, timeout=-1)


@pytest.mark.usefixtures("no_leaked_threads")
def test_closed_client_refuses_calls_and_closing_twice_is_fine(
    emulator: Emulator, backend: str
) -> None:
    """After close() the thread is gone, calls raise RuntimeError, close() again is a no-op."""
    client = _client(emulator, backend)
    client.close()
    client.close()
    assert client.closed
    assert "closed" in repr(client)
    with pytest.raises(RuntimeError, match="closed"):
        client.get("anything")


def test_repr_and_properties_show_no_key(emulator: Emulator) -> None:
    """The properties mirror the async client's; the repr never shows the key."""
    with _client(emulator, "asyncio", limits=aimlmusic.Limits(max_in_flight=3)) as client:
        assert client.base_url == EMULATED_BASE_URL
        assert client.limits.max_in_flight == 3
        assert client.poll_policy is client.async_client.poll_policy
        assert client.budget is client.async_client.budget
        assert client.clock is client.async_client.clock
        assert TEST_API_KEY not in repr(client)


@pytest.mark.usefixtures("no_leaked_threads")
def test_generate_many_yields_every_song_in_completion_order(
    emulator: Emulator, backend: str
) -> None:
    """A plain for loop gets every song once, in the order the songs were seen finished."""
    songs = [(f"song-{n}", _song(n)) for n in range(6)]
    with _client(emulator, backend) as client:
        results = list(client.generate_many(songs, max_in_flight=6, deadline=None))
    assert sorted(r.key for r in results) == [key for key, _ in songs]
    assert all(r.ok for r in results)
    finished = [r.timings.noticed_at for r in results]
    assert finished == sorted(finished)
    assert emulator.stats().duplicate_submissions == 0


def test_the_results_of_a_client_nobody_keeps_still_arrive(
    emulator: Emulator, backend: str
) -> None:
    """``for r in MusicClient(...).generate_many(...)`` gets every song: the results keep
    their client alive. Its finalizer closed the loop under them ("this MusicClient is
    closed", or songs paid for and lost mid-batch)."""
    results = _client(emulator, backend).generate_many([_song(n) for n in range(3)])
    gc.collect()  # the client is unreachable but through its results
    assert [r.ok for r in results] == [True, True, True]
    assert emulator.stats().jobs_submitted == 3


def test_one_batch_read_from_two_threads_gives_each_song_once(
    emulator: Emulator, backend: str
) -> None:
    """Two threads iterating one SongResults (a pool of consumers) share its songs, each
    once. Both entered the batch, the second entry crashed, and neither got a result."""
    with _client(emulator, backend) as client:
        results = client.generate_many([_song(n) for n in range(6)], deadline=None)
        got: list[str | None] = []
        errors: list[BaseException] = []
        start = threading.Barrier(2)

        def consume() -> None:
            start.wait()
            try:
                got.extend(r.generation_id for r in results)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=consume) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(REACH_TIMEOUT)
    assert errors == []
    assert len(got) == len(set(got)) == 6
    assert emulator.stats().jobs_submitted == 6


def test_generate_many_raises_the_source_error_at_the_end(emulator: Emulator, backend: str) -> None:
    """An error of the request source surfaces after the songs already started are in."""

    def songs() -> Iterator[SongRequest]:
        yield _song(1)
        raise ValueError("catalog broken")

    received: list[aimlmusic.SongResult] = []
    with _client(emulator, backend) as client, pytest.raises(ValueError, match="catalog broken"):
        received.extend(client.generate_many(songs(), deadline=None))
    assert [r.ok for r in received] == [True]


def _first_song_fast() -> object:
    """Durations: the first song takes 10 API seconds, every other one never finishes."""
    draws = iter([10.0])

    def duration(rng: random.Random) -> float:
        return next(draws, NEVER)

    return duration


@pytest.mark.usefixtures("no_leaked_threads")
def test_leaving_generate_many_early_cancels_the_batch(backend: str) -> None:
    """Breaking out of a with block cancels the songs still polled: no sleep is left."""
    emulator = Emulator(
        EmulatorConfig(
            time_scale=TIME_SCALE, requests_per_minute=None, durations=_first_song_fast()
        )
    )
    clock = WatchedClock(emulator)
    with _client(emulator, backend, clock=clock, poll=PARKED_POLLS) as client:
        with client.generate_many([_song(n) for n in range(4)], deadline=None) as results:
            first = next(results)
            _wait_until(_parked(emulator, clock, 4))
        assert first.ok
        assert clock.active == 0
        assert clock.cancelled >= 1
        assert list(results) == []  # closed: the iteration is over
        assert client.get(first.generation_id).id == first.generation_id  # still usable


@pytest.mark.usefixtures("no_leaked_threads")
def test_breaking_out_of_a_plain_for_loop_cancels_the_batch(backend: str) -> None:
    """``break`` drops the iterator, which cancels the songs still polled."""
    emulator = Emulator(
        EmulatorConfig(
            time_scale=TIME_SCALE, requests_per_minute=None, durations=_first_song_fast()
        )
    )
    clock = WatchedClock(emulator)
    with _client(emulator, backend, clock=clock, poll=PARKED_POLLS) as client:
        for result in client.generate_many([_song(n) for n in range(4)], deadline=None):
            assert result.ok
            _wait_until(_parked(emulator, clock, 4))
            break
        gc.collect()  # (CPython has already dropped it; other interpreters may need this)
        _wait_until(lambda: clock.active == 0)
        assert clock.cancelled >= 1


@pytest.mark.usefixtures("no_leaked_threads", "sigint_raises")
def test_ctrl_c_in_the_loop_body_cancels_the_batch_and_the_thread_ends(backend: str) -> None:
    """KeyboardInterrupt raised while handling a result cancels the batch, and leaving the
    client's block ends its thread."""
    emulator = Emulator(
        EmulatorConfig(
            time_scale=TIME_SCALE, requests_per_minute=None, durations=_first_song_fast()
        )
    )
    clock = WatchedClock(emulator)
    seen: list[aimlmusic.SongResult] = []

    def script(client: MusicClient) -> None:
        with client:
            for result in client.generate_many([_song(n) for n in range(4)], deadline=None):
                seen.append(result)
                _wait_until(_parked(emulator, clock, 4))
                raise KeyboardInterrupt

    client = _client(emulator, backend, clock=clock, poll=PARKED_POLLS)
    with pytest.raises(KeyboardInterrupt):
        script(client)
    assert len(seen) == 1
    assert client.closed
    assert clock.active == 0
    assert clock.cancelled >= 1


@pytest.mark.usefixtures("no_leaked_threads", "sigint_raises")
def test_ctrl_c_while_waiting_cancels_the_call_in_flight(emulator: Emulator, backend: str) -> None:
    """SIGINT while wait() blocks raises KeyboardInterrupt only once the wait has been
    cancelled on the background loop; the client stays usable."""
    clock = WatchedClock(emulator)
    with _client(emulator, backend, clock=clock, poll=PARKED_POLLS) as client:
        generation = client.submit(_song())
        presser = _ctrl_c_when(_parked(emulator, clock, 1))
        with pytest.raises(KeyboardInterrupt):
            client.wait(generation, timeout=None)
        presser.join(REACH_TIMEOUT)
        assert clock.cancelled == 1
        assert clock.active == 0
        assert client.get(generation.id).id == generation.id


@pytest.mark.usefixtures("no_leaked_threads", "sigint_raises")
def test_ctrl_c_while_waiting_for_a_batch_result_cancels_the_batch(
    emulator: Emulator, backend: str
) -> None:
    """SIGINT while the loop waits for the next result cancels the whole batch."""
    clock = WatchedClock(emulator)
    with _client(
        emulator, backend, clock=clock, poll=FixedInterval(interval=NEVER, first=NEVER)
    ) as client:
        # Pressed once the scheduler waits for the polls planned never (not while a short
        # pacing sleep between submissions, which may end before the press lands, runs).
        presser = _ctrl_c_when(
            lambda: emulator.stats().requests["submit"] == 3 and clock.long_active > 0
        )
        with pytest.raises(KeyboardInterrupt):
            for _ in client.generate_many([_song(n) for n in range(3)], deadline=None):
                pass
        presser.join(REACH_TIMEOUT)
        # The batch unwinds on the client's thread: give it a moment (bounded) to get there.
        deadline = time.monotonic() + REACH_TIMEOUT
        while (clock.cancelled < 1 or clock.active) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert clock.cancelled >= 1
        assert clock.active == 0


@pytest.mark.usefixtures("no_leaked_threads", "sigint_raises")
def test_a_ctrl_c_that_does_not_wake_the_waiting_thread_still_stops_it(
    emulator: Emulator, backend: str
) -> None:
    """A Ctrl-C pending while the caller sleeps on a lock (the signal came just before it
    went to sleep) is raised without waiting for the result."""
    clock = WatchedClock(emulator)
    backup_pressed = threading.Event()

    def press_without_waking() -> None:
        _wait_until(lambda: clock.long_active > 0)
        # Runs the SIGINT handler at the main thread's next check, but sends no signal: a
        # thread asleep on a lock stays asleep, as after a signal that came just too early.
        _thread.interrupt_main()
        deadline = time.monotonic() + REACH_TIMEOUT
        while not caught.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not caught.is_set():  # a client that never looks: end the test with a real one
            backup_pressed.set()
            signal.pthread_kill(main, signal.SIGINT)

    caught = threading.Event()
    main = threading.main_thread().ident
    assert main is not None
    never = FixedInterval(interval=NEVER, first=NEVER)
    with _client(emulator, backend, clock=clock, poll=never) as client:
        generation = client.submit(_song())
        presser = threading.Thread(target=press_without_waking, daemon=True)
        presser.start()
        with pytest.raises(KeyboardInterrupt):
            client.wait(generation, timeout=None)
        caught.set()
        presser.join(REACH_TIMEOUT)
        assert not backup_pressed.is_set()
        assert clock.active == 0


def _interrupt_the_hand_over(client: MusicClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next hand-over of a coroutine to the client's loop raise KeyboardInterrupt
    just after the loop took the task, as a Ctrl-C landing inside the hand-over does."""
    portal = client._loop.portal
    real = portal.start_task_soon

    def start_then_interrupt(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(portal, "start_task_soon", real)
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(portal, "start_task_soon", start_then_interrupt)


@pytest.mark.usefixtures("no_leaked_threads")
def test_ctrl_c_inside_the_hand_over_of_a_wait_still_cancels_it(
    emulator: Emulator, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C that lands while wait() is being handed to the loop cancels that wait too."""
    clock = WatchedClock(emulator)
    with _client(emulator, backend, clock=clock, poll=PARKED_POLLS) as client:
        generation = client.submit(_song())
        _interrupt_the_hand_over(client, monkeypatch)
        with pytest.raises(KeyboardInterrupt):
            client.wait(generation, timeout=None)
        time.sleep(SETTLE)
        assert clock.active == 0  # a wait left running would be parked in its next sleep


@pytest.mark.usefixtures("no_leaked_threads")
def test_ctrl_c_inside_the_hand_over_of_a_batch_still_cancels_it(
    emulator: Emulator, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C that lands while a batch is being handed to the loop cancels the batch."""
    clock = WatchedClock(emulator)
    with _client(emulator, backend, clock=clock, poll=PARKED_POLLS) as client:
        _interrupt_the_hand_over(client, monkeypatch)
        with pytest.raises(KeyboardInterrupt):
            for _ in client.generate_many([_song(n) for n in range(3)], deadline=None):
                pass
        time.sleep(SETTLE)
        assert clock.active == 0  # a batch left running would be parked in its polls' sleeps


class _HeldSubmissions(httpx.AsyncBaseTransport):
    """The emulator over ASGI, with each POST's answer held back (its job already created)
    until ``release`` is set, as a slow network holds a submission on its way."""

    def __init__(
        self, emulator: Emulator, status: int | None = None, answered_at_once: int = 0
    ) -> None:
        self.inner = httpx.ASGITransport(app=emulator.app)
        self.status = status  # answer the POST with this status instead of the emulator's
        self.answered_at_once = answered_at_once  # the first POSTs are not held
        self.posts = 0
        self.reached = threading.Event()  # a POST's job exists, its answer is held
        self.release = threading.Event()
        self.cut = threading.Event()  # a held answer was cancelled

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "POST":
            self.posts += 1
            if self.posts <= self.answered_at_once:
                return response
            self.reached.set()
            try:
                deadline = time.monotonic() + REACH_TIMEOUT
                # Set from another thread, so not an anyio.Event: looked at every millisecond.
                while not self.release.is_set() and time.monotonic() < deadline:  # noqa: ASYNC110
                    await anyio.sleep(0.001)
            except anyio.get_cancelled_exc_class():
                self.cut.set()
                raise
            if self.status is not None:
                await response.aclose()
                return httpx.Response(self.status, request=request)
        return response


class _Told(logging.Handler):
    """The aimlmusic logger's records while installed; ``waiting`` is set once the client
    says it waits for a submission on its way."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.waiting = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.messages.append(message)
        if "submission is on its way" in message:
            self.waiting.set()


@pytest.fixture
def told() -> Iterator[_Told]:
    """What the client logs at WARNING, from any thread."""
    handler = _Told()
    logger = logging.getLogger("aimlmusic")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def _release_once_waiting(held: _HeldSubmissions, told: _Told) -> threading.Thread:
    """Release the held POST once the client waits for it (or once it was cut)."""

    def release() -> None:
        deadline = time.monotonic() + REACH_TIMEOUT
        while not (told.waiting.is_set() or held.cut.is_set()) and time.monotonic() < deadline:
            time.sleep(0.001)
        held.release.set()

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    return thread


def _the_one_job(emulator: Emulator) -> str:
    (generation_id,) = emulator.jobs
    return generation_id


@pytest.mark.usefixtures("no_leaked_threads", "sigint_raises")
@pytest.mark.parametrize("call", ["submit", "generate", "generate, shared"])
def test_ctrl_c_during_a_submission_lets_it_land_and_names_the_song(
    emulator: Emulator,
    backend: str,
    told: _Told,
    call: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C while a POST is on its way waits for its answer, then names the song it made
    (also holding a slot of a shared Redis, whose task group replaces the cancellation)."""
    held = _HeldSubmissions(emulator)
    clock = WatchedClock(emulator)
    options: dict[str, Any] = {}
    if call.endswith("shared"):
        monkeypatch.setattr(
            "aimlmusic._shared_redis.DEFAULT_KEY_PREFIX", request.getfixturevalue("redis_prefix")
        )
        options["shared_url"] = request.getfixturevalue("redis_url")
        call = call.partition(",")[0]
    with _client(
        emulator, backend, clock=clock, poll=PARKED_POLLS, transport=held, **options
    ) as client:
        presser = _ctrl_c_when(held.reached.is_set)
        releaser = _release_once_waiting(held, told)
        with pytest.raises(KeyboardInterrupt) as caught:
            getattr(client, call)(_song())
        presser.join(REACH_TIMEOUT)
        releaser.join(REACH_TIMEOUT)
    generation_id = _the_one_job(emulator)
    assert not held.cut.is_set()
    assert any(generation_id in message for message in told.messages)
    if sys.version_info >= (3, 11):
        assert any(generation_id in note for note in caught.value.__notes__)
    assert emulator.stats().requests["submit"] == 1


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes came in 3.11")
@pytest.mark.usefixtures("no_leaked_threads", "sigint_raises")
def test_ctrl_c_during_a_submission_that_ends_ambiguous_says_so(
    emulator: Emulator, backend: str, told: _Told
) -> None:
    """A submission let land that ends ambiguous says so in a note on the KeyboardInterrupt."""
    held = _HeldSubmissions(emulator, status=502)
    with _client(emulator, backend, transport=held) as client:
        presser = _ctrl_c_when(held.reached.is_set)
        releaser = _release_once_waiting(held, told)
        with pytest.raises(KeyboardInterrupt) as caught:
            client.submit(_song())
        presser.join(REACH_TIMEOUT)
        releaser.join(REACH_TIMEOUT)
    assert any("AmbiguousSubmissionError" in note for note in caught.value.__notes__)


@pytest.mark.usefixtures("no_leaked_threads", "sigint_raises")
def test_ctrl_c_while_a_batch_submits_lets_the_submission_land(
    emulator: Emulator, backend: str, told: _Told
) -> None:
    """Ctrl-C while waiting for a batch's first result, its POST on its way, waits for the
    answer and names the song it made."""
    held = _HeldSubmissions(emulator)
    with _client(emulator, backend, poll=PARKED_POLLS, transport=held) as client:
        presser = _ctrl_c_when(held.reached.is_set)
        releaser = _release_once_waiting(held, told)
        with pytest.raises(KeyboardInterrupt):
            next(client.generate_many([_song()], deadline=None))
        presser.join(REACH_TIMEOUT)
        releaser.join(REACH_TIMEOUT)
    assert not held.cut.is_set()
    generation_id = _the_one_job(emulator)
    assert any(generation_id in message for message in told.messages)


@pytest.mark.usefixtures("no_leaked_threads")
def test_closing_the_client_after_a_break_lets_the_batchs_submission_land(
    backend: str, told: _Told
) -> None:
    """A break out of a plain for loop, then closing the client (a with block's end), waits
    for the batch's POST on its way and names the song it made; the close cut it."""
    emulator = Emulator(
        EmulatorConfig(
            time_scale=TIME_SCALE, requests_per_minute=None, durations=_first_song_fast()
        )
    )
    held = _HeldSubmissions(emulator, answered_at_once=1)
    with _client(emulator, backend, poll=PARKED_POLLS, transport=held) as client:
        releaser = _release_once_waiting(held, told)
        for result in client.generate_many([_song(0), _song(1)], deadline=None):
            assert result.ok
            _wait_until(held.reached.is_set)
            break
    releaser.join(REACH_TIMEOUT)
    assert not held.cut.is_set()
    second = next(job for job in emulator.jobs if job != result.generation_id)
    assert any(second in message for message in told.messages)


class _SilentTLS:
    """A TCP server on 127.0.0.1 that accepts and never answers: a TLS handshake with it
    never ends, so no byte of an HTTP request ever leaves the client."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connected = threading.Event()
        self.received = bytearray()
        self.connection: socket.socket | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            self.connection, _ = self.server.accept()
        except OSError:  # closed before anyone came
            return
        self.connected.set()
        self.connection.settimeout(REACH_TIMEOUT)
        try:
            while chunk := self.connection.recv(65536):
                self.received += chunk
        except OSError:  # closed by close()
            return

    def close(self) -> None:
        self.server.close()
        connection = self.connection
        if connection is not None:
            connection.shutdown(socket.SHUT_RDWR)  # ends the recv() the thread waits in
            connection.close()


@pytest.mark.usefixtures("no_leaked_threads", "sigint_raises")
def test_ctrl_c_while_a_submission_is_still_connecting_cuts_it_at_once(
    backend: str, told: _Told
) -> None:
    """Ctrl-C while a POST's connection is still being made (nothing sent) does not wait."""
    server = _SilentTLS()
    try:
        client = MusicClient(
            TEST_API_KEY,
            base_url=f"https://127.0.0.1:{server.port}/v2",
            timeout=aimlmusic.Timeout(connect=NEVER),
            clock=aimlmusic.SystemClock(),
            backend=backend,
        )
        with client:
            presser = _ctrl_c_when(server.connected.is_set)
            with pytest.raises(KeyboardInterrupt):
                client.submit(_song())
            presser.join(REACH_TIMEOUT)
    finally:
        server.close()
        server.thread.join(REACH_TIMEOUT)
        # httpcore leaves the socket of a TLS handshake cut by a cancellation to the garbage
        # collector (it closes it on Exception, and a cancellation is not one): collected
        # here, quietly, rather than warned about in whichever test runs next.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
    assert not told.waiting.is_set()
    assert b"POST" not in server.received  # the handshake's first bytes, at most


class _CtrlCAsTheBudgetLetsGo(aimlmusic.Clock):
    """``inner``, pressing Ctrl-C as a sleep ends once ``armed``: just before a request the
    budget held goes out."""

    def __init__(self, inner: aimlmusic.Clock) -> None:
        self.inner = inner
        self.armed = False

    def now(self) -> float:
        return self.inner.now()

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)
        if self.armed:
            self.armed = False
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
            # The loop held up a moment (a GC pause, say): the calling thread takes the
            # interrupt and decides before the POST starts. Only widens the race; whatever
            # the order, no song may go unnamed.
            time.sleep(RACE_WINDOW)  # noqa: ASYNC251  (holding the loop up is the point)


@pytest.mark.usefixtures("no_leaked_threads", "sigint_raises")
def test_ctrl_c_just_before_a_submission_leaves_never_loses_its_song(
    emulator: Emulator, backend: str, told: _Told
) -> None:
    """A Ctrl-C that comes as the budget lets a POST go either stops it or names its song."""
    held = _HeldSubmissions(emulator)
    held.release.set()
    clock = _CtrlCAsTheBudgetLetsGo(emulator.clock)
    limits = aimlmusic.Limits(requests_per_minute=1)
    with _client(emulator, backend, clock=clock, transport=held, limits=limits) as client:
        client.submit(_song(0))
        held.release.clear()  # the next answer waits until the client waits for it (or cut)
        releaser = _release_once_waiting(held, told)
        clock.armed = True
        with pytest.raises(KeyboardInterrupt) as caught:
            client.submit(_song(1))
        releaser.join(REACH_TIMEOUT)
    named = "\n".join([*told.messages, *getattr(caught.value, "__notes__", [])])
    for generation_id in list(emulator.jobs)[1:]:
        assert generation_id in named


@pytest.mark.usefixtures("no_leaked_threads", "sigint_raises")
def test_a_second_ctrl_c_stops_waiting_for_the_submission(
    emulator: Emulator, backend: str, told: _Told
) -> None:
    """A second Ctrl-C while the client waits for a submission's answer cuts it at once."""
    held = _HeldSubmissions(emulator)
    with _client(emulator, backend, transport=held) as client:
        first = _ctrl_c_when(held.reached.is_set)
        second = _ctrl_c_when(told.waiting.is_set)
        try:
            with pytest.raises(KeyboardInterrupt):
                client.submit(_song())
            assert held.cut.is_set()  # cut, not answered: the wait did stop
        finally:
            held.release.set()
            first.join(REACH_TIMEOUT)
            second.join(REACH_TIMEOUT)


def test_works_under_a_running_event_loop(emulator: Emulator) -> None:
    """Called synchronously from inside asyncio.run (as in a Jupyter cell), it works."""

    async def cell() -> aimlmusic.Generation:
        with _client(emulator, "asyncio") as client:
            return client.generate(_song())

    generation = asyncio.run(cell())
    assert generation.status == aimlmusic.GenerationStatus.COMPLETED


def test_event_hook_calling_the_client_is_refused(emulator: Emulator) -> None:
    """A hook calling the blocking client from its own loop gets a clear error, not a
    deadlock (the error is logged and the batch goes on)."""
    errors: list[BaseException] = []

    class Hook:
        def on_submitted(self, event: aimlmusic.SongSubmitted) -> None:
            try:
                client.get(event.generation_id)
            except RuntimeError as exc:
                errors.append(exc)

    with _client(emulator, "asyncio") as client:
        results = list(client.generate_many([_song()], events=Hook(), deadline=None))
    assert [r.ok for r in results] == [True]
    assert len(errors) == 1
    assert "AsyncMusicClient" in str(errors[0])


def test_closing_from_an_event_hook_is_refused_and_changes_nothing(
    emulator: Emulator, backend: str
) -> None:
    """close() of the batch or of the client, from a hook on the client's own loop, raises
    a clear error before changing anything: the batch still gives every song, and closing
    later from the caller's thread stops the loop's thread. The batch's close() used to mark
    it done first (its results ended after one), and the client's to mark it closed while
    its loop and thread ran on."""
    errors: list[BaseException] = []

    class Hook:
        def on_submitted(self, event: aimlmusic.SongSubmitted) -> None:
            for close in (results.close, client.close):
                try:
                    close()
                except RuntimeError as exc:
                    errors.append(exc)

    client = _client(emulator, backend)
    results = client.generate_many([_song(n) for n in range(2)], events=Hook(), deadline=None)
    assert [r.ok for r in results] == [True, True]
    assert len(errors) == 4
    assert not client.closed
    loop_thread = client._loop.thread
    client.close()
    assert client.closed
    loop_thread.join(REACH_TIMEOUT)
    assert not loop_thread.is_alive()


def test_a_client_collected_on_its_own_loop_thread_still_stops_it(
    emulator: Emulator, backend: str
) -> None:
    """A client whose finalizer runs on its loop's own thread (the garbage collector met it
    there, in a reference cycle) still closes and stops that thread: it cannot wait for
    itself, so another thread does. It used to mark the client closed and leave the loop
    and its thread running until the process ended."""
    client = _client(emulator, backend)
    loop_thread = client._loop.thread
    client._loop.portal.call(client._finalizer)  # the finalizer, run on the loop's thread
    loop_thread.join(REACH_TIMEOUT)
    assert not loop_thread.is_alive()
    assert client.closed


def test_takes_the_async_clients_arguments() -> None:
    """MusicClient's constructor and methods take every argument AsyncMusicClient's do, so
    the two cannot drift apart."""
    import inspect

    pairs = [(MusicClient.__init__, aimlmusic.AsyncMusicClient.__init__)]
    for name in ("submit", "get", "wait", "generate", "download", "generate_many"):
        pairs.append((getattr(MusicClient, name), getattr(aimlmusic.AsyncMusicClient, name)))
    for blocking, async_ in pairs:
        wanted = inspect.signature(async_).parameters
        given = inspect.signature(blocking).parameters
        assert set(wanted) <= set(given), blocking.__name__
        for name, parameter in wanted.items():
            assert given[name].kind == parameter.kind, (blocking.__name__, name)
            assert given[name].default == parameter.default, (blocking.__name__, name)


#: A script that iterates a batch whose songs never finish, and reports the client's
#: threads still alive once Ctrl-C has come through.
_INTERRUPTED_SCRIPT = """
import sys, threading, httpx, aimlmusic
from aimlmusic.emulator import TEST_API_KEY, Emulator, EmulatorConfig

emulator = Emulator(EmulatorConfig(time_scale=1000, requests_per_minute=None,
                                   durations=lambda rng: 1e9))
songs = [aimlmusic.SongRequest(f"Song number {i} here", "[Verse]\\nla la la") for i in range(3)]
try:
    with aimlmusic.MusicClient(TEST_API_KEY, base_url="http://127.0.0.1", clock=emulator.clock,
                               transport=httpx.ASGITransport(app=emulator.app)) as client:
        print("iterating", flush=True)
        for result in client.generate_many(songs, deadline=None):
            print("a song finished?", flush=True)
except KeyboardInterrupt:
    alive = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    print("interrupted", [name for name in alive if name.startswith("aimlmusic")], flush=True)
    sys.exit(130)
"""


@pytest.mark.slow
def test_ctrl_c_to_a_script_stops_it_cleanly() -> None:
    """SIGINT to a script blocked on a batch: KeyboardInterrupt reaches the script's own
    handler, and by then the client's thread has ended."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    with subprocess.Popen(
        [sys.executable, "-c", _INTERRUPTED_SCRIPT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as process:
        assert process.stdout is not None
        try:
            assert process.stdout.readline() == "iterating\n"
            process.send_signal(signal.SIGINT)
            output, errors = process.communicate(timeout=REACH_TIMEOUT)
        finally:
            process.kill()
    assert process.returncode == 130, errors
    assert output == "interrupted []\n"
