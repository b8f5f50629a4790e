"""``MusicClient``: the blocking client, an :class:`AsyncMusicClient` run on a background loop.

Scripts, notebooks and WSGI apps cannot ``await``. Rather than a second implementation, the
blocking client starts an event loop in a daemon thread (an anyio blocking portal) and runs
the async client there; each method hands its coroutine to that loop and waits for the
answer. The calling thread may have an event loop of its own running (a Jupyter cell): the
two never meet.

Ctrl-C: a ``KeyboardInterrupt`` arrives in the calling thread while it waits. The call in
flight on the background loop is then cancelled, and the interrupt propagates only once that
call has unwound (so a download's temporary file is gone, a batch's polls have stopped). A
submission on its way is let land first (cut, it could be paid for with no id to find it
by), and its generation id is logged; a second Ctrl-C stops waiting for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from ._client import AsyncMusicClient, submitted_note, warn_submitted
from ._config import Limits, RetryPolicy, SizeLimits, Timeout
from ._errors import AimlMusicError, SendingRefused
from ._events import BatchEvents
from ._models import Generation, SongRequest, SongResult
from ._transport import SUBMISSION_WATCH

if TYPE_CHECKING:
    import httpx
    from anyio.streams.memory import MemoryObjectReceiveStream

    from ._clock import Clock
    from ._polling import PollPolicy
    from ._ratelimit import Budget

__all__ = ["MusicClient", "SongResults"]

logger = logging.getLogger("aimlmusic")

T = TypeVar("T")

#: Real seconds to wait for the background loop to start, or to stop when closing.
_THREAD_TIMEOUT = 10.0
#: Real seconds to wait for a cancelled call to unwind after Ctrl-C before giving up on it
#: (a second Ctrl-C ends the wait at once).
_CANCEL_TIMEOUT = 10.0
#: The event loop the background thread runs unless told otherwise.
DEFAULT_BACKEND = "asyncio"
#: Real seconds the calling thread blocks at a time while it waits for the loop. A SIGINT
#: that arrives just as the thread goes to sleep on a lock does not wake it (seen about once
#: in 400 presses on Python 3.13); waking this often runs the pending Ctrl-C handler soon.
_SIGNAL_CHECK_INTERVAL = 0.1


def _wait_for(future: Future[T]) -> T:
    """``future.result()``, waiting in short slices so that a pending Ctrl-C is raised."""
    # exception() raises TimeoutError only when the wait timed out (a call that raised
    # TimeoutError itself returns it), so the two cannot be confused.
    while True:
        try:
            future.exception(timeout=_SIGNAL_CHECK_INTERVAL)
        except FutureTimeoutError:
            continue
        return future.result()


def _call_on(portal: BlockingPortal, func: Callable[..., Any], *args: Any) -> Any:
    """``portal.call(func, *args)``, with :func:`_wait_for`'s wait."""
    return _wait_for(portal.start_task_soon(func, *args))


class _Spawned(Generic[T]):
    """``await func(*args)`` handed to the loop, which the calling thread can cancel
    whatever point a Ctrl-C interrupted it at.

    The portal's hand-over itself blocks until the loop has taken the task, so a
    KeyboardInterrupt can land inside it, before any future is returned: the task then runs
    on unseen. Here the task publishes its own cancel scope as its first step, and checks a
    flag the canceller sets first; whichever of the two comes second sees the other.

    It is also the task's :class:`~aimlmusic._transport.SubmissionWatch`: a cancellation
    asked for while a POST is on its way waits for it to land. Whether one is on its way is
    decided on the loop's thread, where POSTs start, so none can start between the look and
    the cancellation.
    """

    def __init__(self, func: Callable[..., Awaitable[T]], *args: Any) -> None:
        self._call = (func, args)
        self.future: Future[T | None] | None = None
        self.unwound = threading.Event()
        self._scope: anyio.CancelScope | None = None
        self._abandoned = False
        # Changed on the loop's thread only:
        self._posts = 0  # POSTs on their way
        self._cancel_when_landed = False
        self.landed = threading.Event()  # set while no POST is on its way
        self.landed.set()
        self.submitted_ids: list[str] = []  # what the call's submissions were answered with
        self.notes: list[str] = []  # what the call's own error says, for the interruption
        # What the call returned, set before ``unwound`` (the future is set after it).
        self.returned: list[T] = []

    def start(self, portal: BlockingPortal) -> None:
        self.future = portal.start_task_soon(self._run)

    def result(self) -> T:
        assert self.future is not None, "result() before start()"
        return _wait_for(self.future)  # type: ignore[return-value]  # None only if cancelled

    def cancel(self, portal: BlockingPortal) -> None:
        """Cancel the task if it runs or is still to start, and wait (boundedly) until it
        has unwound."""
        self._abandoned = True
        if self.unwound.is_set():
            return
        scope = self._scope
        if scope is not None:
            _call_on(portal, scope.cancel)
        self.unwound.wait(_CANCEL_TIMEOUT)

    def cancel_once_landed(self, portal: BlockingPortal) -> None:
        """Cancel the task once no POST of it is on its way, waiting for that (a second
        Ctrl-C stops the wait); then :meth:`cancel`."""
        self._abandoned = True
        if not self.unwound.is_set():
            _call_on(portal, self._cancel_unless_posting)
            if not self.landed.is_set():
                logger.warning(
                    "a submission is on its way: waiting for its answer so that its "
                    "generation id is not lost (press Ctrl-C again to stop waiting)"
                )
                while not self.landed.wait(_SIGNAL_CHECK_INTERVAL):
                    pass
        self.cancel(portal)

    def raised(self, error: BaseException) -> bool:
        """Whether the call itself ended with ``error``."""
        future = self.future
        if future is None or not future.done() or future.cancelled():
            return False
        return future.exception() is error

    def cancel_soon(self) -> None:
        """Ask for the cancellation without waiting (for finalizers, which must not block)."""
        self._abandoned = True
        if self.future is not None and not self.future.done():
            self.future.cancel()

    # ------------------------------------------------------------------ on the loop

    def _cancel_unless_posting(self) -> None:
        self._cancel_when_landed = True
        if not self._posts and self._scope is not None:
            self._scope.cancel()

    def on_its_way(self, leaving: bool) -> None:
        if leaving and self._cancel_when_landed:
            raise SendingRefused("the call is being cancelled")  # no new POST leaves
        self._posts += 1 if leaving else -1
        if self._posts:
            self.landed.clear()
            return
        if self._cancel_when_landed and self._scope is not None:
            self._scope.cancel()  # before the next POST can start
        self.landed.set()

    def submitted(self, generation_id: str) -> None:
        self.submitted_ids.append(generation_id)

    async def _run(self) -> T | None:
        func, args = self._call
        SUBMISSION_WATCH.set(self)  # this task's context only
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                if self._abandoned:
                    scope.cancel()
                try:
                    self.returned = [await func(*args)]
                    return self.returned[0]
                except AimlMusicError as exc:  # its text is redacted and bounded
                    self.notes = [f"the call ended with {type(exc).__name__}: {exc}"]
                    raise
            return None  # cancelled through our own scope: nobody reads the result
        finally:
            self.unwound.set()


class _LoopThread:
    """An event loop in a daemon thread with a blocking portal into it.

    A daemon thread, not an executor's: a client that is never closed must not keep the
    interpreter from exiting.
    """

    def __init__(self, backend: str) -> None:
        ready: Future[BlockingPortal] = Future()

        async def serve() -> None:
            async with BlockingPortal() as portal:
                ready.set_result(portal)
                await portal.sleep_until_stopped()

        def target() -> None:
            try:
                anyio.run(serve, backend=backend)
            except BaseException as exc:  # the loop could not start: tell the creator
                if not ready.done():
                    ready.set_exception(exc)

        self.thread = threading.Thread(target=target, name="aimlmusic-client", daemon=True)
        # The tasks of batches dropped while their iteration ran, leaving (their POSTs on
        # their way landing): the client closes only once they are done.
        self.leaving: set[_Spawned[None]] = set()
        self.thread.start()
        self.portal = ready.result(timeout=_THREAD_TIMEOUT)
        self.stopped = False

    def call(
        self,
        func: Callable[..., Awaitable[T]],
        *args: Any,
        landed: Callable[[T, BaseException], None] | None = None,
    ) -> T:
        """``await func(*args)`` on the loop; on any interruption of the wait (Ctrl-C),
        let a submission on its way land, cancel the call there and wait for it to unwind
        before re-raising. ``landed(result, interruption)`` is told of a call that
        finished all the same."""
        _refuse_the_loop_thread(self)
        task: _Spawned[T] = _Spawned(func, *args)
        try:
            task.start(self.portal)
            return task.result()
        except BaseException as interruption:
            if task.raised(interruption):
                raise  # the call's own error, not an interruption of the wait
            try:
                if isinstance(interruption, KeyboardInterrupt):
                    task.cancel_once_landed(self.portal)
            finally:
                task.cancel(self.portal)
            add_note = getattr(interruption, "add_note", None)  # Python 3.11 on
            if add_note is not None:
                for generation_id in task.submitted_ids:
                    add_note(submitted_note(generation_id))
                for note in task.notes:
                    add_note(note)
            if landed is not None and task.unwound.is_set():
                for result in task.returned:  # it finished after all
                    landed(result, interruption)
            raise

    def stop(self) -> None:
        """Cancel whatever still runs on the loop, end it and join the thread."""
        if self.stopped:
            return
        self.stopped = True
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            _call_on(self.portal, self.portal.stop, True)
            self.thread.join(_THREAD_TIMEOUT)


def _refuse_the_loop_thread(loop: _LoopThread) -> None:
    """Raise if called on ``loop``'s own thread (from a batch's event hook, say), which
    cannot wait for the loop it runs."""
    if threading.current_thread() is loop.thread:
        raise RuntimeError(
            "a MusicClient cannot be called from its own event loop (for example from a "
            "batch's event hook); use the AsyncMusicClient there"
        )


def _shut_down(loop: _LoopThread, client: AsyncMusicClient) -> None:
    """Close ``client`` on ``loop`` and stop it (also run when a client is garbage
    collected unclosed)."""
    if loop.stopped:
        return
    if threading.current_thread() is loop.thread:
        # The garbage collector ran on the loop's own thread, which cannot wait for itself:
        # a short-lived thread closes the client and stops the loop instead (skipping it
        # left the loop, its thread and the connections running until the process ended).
        threading.Thread(
            target=_shut_down, args=(loop, client), name="aimlmusic-close", daemon=True
        ).start()
        return
    try:
        if threading.current_thread() is not loop.thread and loop.thread.is_alive():
            for holder in list(loop.leaving):
                # Bounded by the transport's timeouts on the POSTs it waits for; a Ctrl-C
                # here stops waiting (and the loop stops below, cutting them).
                while not holder.unwound.wait(_SIGNAL_CHECK_INTERVAL):
                    pass
            loop.call(client.aclose)
    finally:
        loop.stop()


class MusicClient:
    """A blocking client for the AI/ML API music endpoint, for scripts, notebooks and
    WSGI apps: the same methods and arguments as :class:`AsyncMusicClient`, without
    ``await``.

    It runs an :class:`AsyncMusicClient` (built from the same arguments, see there) on an
    event loop in a background thread, so it also works where an event loop is already
    running, as in a Jupyter cell. ``backend`` names that loop's library (``"asyncio"`` or
    ``"trio"``). Use it as a context manager, or call :meth:`close`; Ctrl-C during a call
    cancels it cleanly.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float | Timeout | None = None,
        retry: RetryPolicy | None = None,
        poll: PollPolicy | None = None,
        limits: Limits | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
        clock: Clock | None = None,
        allow_insecure_http: bool = False,
        size_limits: SizeLimits | None = None,
        backend: str = DEFAULT_BACKEND,
        shared_url: str | None = None,
    ) -> None:
        # Built here, in the caller's thread, so that bad settings raise before any thread
        # starts; the constructor does no I/O and needs no running loop.
        self._client = AsyncMusicClient(
            api_key,
            base_url=base_url,
            timeout=timeout,
            retry=retry,
            poll=poll,
            limits=limits,
            transport=transport,
            http_client=http_client,
            clock=clock,
            allow_insecure_http=allow_insecure_http,
            size_limits=size_limits,
            shared_url=shared_url,
        )
        self._loop = _LoopThread(backend)
        self._batches: weakref.WeakSet[SongResults] = weakref.WeakSet()
        self._finalizer = weakref.finalize(self, _shut_down, self._loop, self._client)

    # ------------------------------------------------------------------ properties

    @property
    def async_client(self) -> AsyncMusicClient:
        """The :class:`AsyncMusicClient` doing the work (use it only from its own loop)."""
        return self._client

    @property
    def base_url(self) -> str:
        """The API's base URL, without a trailing slash."""
        return self._client.base_url

    @property
    def limits(self) -> Limits:
        """The account limits this client paces itself to."""
        return self._client.limits

    @property
    def key_fingerprint(self) -> str:
        """The first 16 hex digits of the API key's SHA-256 (see
        :attr:`AsyncMusicClient.key_fingerprint`)."""
        return self._client.key_fingerprint

    @property
    def clock(self) -> Clock:
        """The clock every wait of this client uses."""
        return self._client.clock

    @property
    def poll_policy(self) -> PollPolicy:
        """The poll policy shared by ``wait``, ``generate`` and ``generate_many``."""
        return self._client.poll_policy

    @property
    def budget(self) -> Budget:
        """The request budget shared by every request of this client."""
        return self._client.budget

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._loop.stopped

    # ------------------------------------------------------------------ calls

    def submit(self, request: SongRequest) -> Generation:
        """Submit one song and return the new generation (see
        :meth:`AsyncMusicClient.submit`)."""
        return self._call(self._client.submit, request, landed=_submitted_anyway)

    def get(self, generation_id: str) -> Generation:
        """Fetch a generation's current state (see :meth:`AsyncMusicClient.get`)."""
        return self._call(self._client.get, generation_id)

    def wait(self, generation: str | Generation, *, timeout: float | None = None) -> Generation:
        """Poll until the generation is finished and return it (see
        :meth:`AsyncMusicClient.wait`)."""

        async def wait() -> Generation:
            return await self._client.wait(generation, timeout=timeout)

        return self._call(wait)

    def generate(self, request: SongRequest, *, timeout: float | None = None) -> Generation:
        """Submit ``request`` and wait for it (see :meth:`AsyncMusicClient.generate`)."""

        async def generate() -> Generation:
            return await self._client.generate(request, timeout=timeout)

        return self._call(generate)

    def download(
        self,
        generation: Generation | SongResult | str | None,
        path: str | os.PathLike[str],
    ) -> Path:
        """Download a completed generation's audio to ``path`` (see
        :meth:`AsyncMusicClient.download`)."""
        return self._call(self._client.download, generation, path)

    def generate_many(
        self,
        requests: Iterable[SongRequest | tuple[str, SongRequest]],
        *,
        max_in_flight: int | None = None,
        deadline: float | None = 600.0,
        poll: PollPolicy | None = None,
        events: BatchEvents | None = None,
    ) -> SongResults:
        """Generate many songs at once; iterate the returned :class:`SongResults` for their
        :class:`SongResult` in completion order.

        The arguments are those of :meth:`AsyncMusicClient.generate_many`. ``requests`` is
        read lazily and, like ``events``' methods, from the client's background thread.
        Leaving a ``with`` block around the results (or :meth:`SongResults.close`, or
        closing the client) cancels the songs still running; so does Ctrl-C. Submissions on
        their way are let land first, and a WARNING names each song left running.
        """
        self._check_open()
        batch = self._client.generate_many(
            requests, max_in_flight=max_in_flight, deadline=deadline, poll=poll, events=events
        )
        results = SongResults(self._loop, batch, self)
        self._batches.add(results)
        return results

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Cancel open batches, release the connection pool and stop the background
        thread. Safe to call twice."""
        _refuse_the_loop_thread(self._loop)
        for results in list(self._batches):
            results.close()
        self._finalizer()

    def __enter__(self) -> MusicClient:
        self._check_open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = ", closed" if self.closed else ""
        return f"MusicClient(base_url={self.base_url!r}{state})"

    def _check_open(self) -> None:
        if self._loop.stopped:
            raise RuntimeError("this MusicClient is closed; create a new one")

    def _call(
        self,
        func: Callable[..., Awaitable[T]],
        *args: Any,
        landed: Callable[[T, BaseException], None] | None = None,
    ) -> T:
        self._check_open()
        return self._loop.call(func, *args, landed=landed)


def _submitted_anyway(generation: Generation, interruption: BaseException) -> None:
    """A submission that was answered as a Ctrl-C came: the caller never sees its id (the
    note on the interruption is added from the task's watch)."""
    warn_submitted(generation.id, interruption)


class SongResults(Iterator[SongResult]):
    """The results of :meth:`MusicClient.generate_many`, in completion order.

    Iterate it (the batch starts at the first item), optionally inside ``with``: leaving
    the block, or :meth:`close`, cancels the songs still running, once the submissions on
    their way have landed (and so does dropping the iterator, as ``break`` out of a plain
    ``for`` loop does, without waiting: closing the client waits for it). The iteration
    ends when every song has a result; an error of the request source is raised at the end.
    """

    def __init__(
        self,
        loop: _LoopThread,
        batch: Any,  # AbstractAsyncContextManager[MemoryObjectReceiveStream[SongResult]]
        client: MusicClient,
    ) -> None:
        self._loop = loop
        self._batch = batch
        # Keeps the client alive while its results are read: dropped, its finalizer would
        # close the loop under them (``for r in MusicClient(...).generate_many(...)``).
        self._client = client
        # One thread at a time enters the batch or leaves it; results may be read from
        # several (the loop's stream serves them one each).
        self._lock = threading.Lock()
        self._stream: MemoryObjectReceiveStream[SongResult] | None = None
        # Filled on the loop with the event that lets the batch's block exit.
        self._leave: list[anyio.Event] = []
        # The task on the loop that holds the batch's block open.
        self._holder: _Spawned[None] | None = None
        self._done = False

    def __iter__(self) -> SongResults:
        return self

    def __next__(self) -> SongResult:
        if self._done:
            raise StopIteration
        try:
            stream = self._start()
            try:
                return self._loop.call(stream.receive)
            except anyio.EndOfStream:
                pass
        except BaseException:
            self.close()
            raise
        self.close()  # raises the source's error, if any
        raise StopIteration

    def close(self) -> None:
        """Cancel the songs still running (those already delivered are kept) and end the
        iteration. Safe to call twice."""
        _refuse_the_loop_thread(self._loop)  # before any state changes: it must be retried
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._done:
            return
        self._done = True
        holder, portal = self._holder, self._loop.portal
        if holder is None or self._loop.stopped:
            return
        leave = self._leave[0] if self._leave else None
        if leave is None or holder.future is None:
            # Interrupted before the batch was entered, or while it was handed to the loop
            # (whose batch may be submitting already): cancelled once its POSTs landed.
            try:
                holder.cancel_once_landed(portal)
            finally:
                holder.cancel(portal)
            return
        # Leaving the batch's block cancels its songs and raises what the source raised.
        _call_on(portal, leave.set)
        try:
            holder.result()
        except BaseException:
            holder.cancel(portal)
            raise

    def __enter__(self) -> SongResults:
        return self

    def __del__(self) -> None:
        # A for loop left with break drops its iterator: leave the batch, which lets its
        # submissions on their way land and names the songs left behind, then cancels the
        # rest. Only the request is sent (a finalizer must not wait); on the loop's own
        # thread, where the portal cannot be used, the batch is cancelled outright.
        holder = getattr(self, "_holder", None)
        if holder is None or self._done:
            return
        leave = self._leave[0] if self._leave else None
        loop = self._loop
        if (
            leave is not None
            and holder.future is not None
            and threading.current_thread() is not loop.thread
        ):
            with contextlib.suppress(RuntimeError):  # the loop stopped meanwhile
                loop.portal.start_task_soon(leave.set)
                loop.leaving.add(holder)
                holder.future.add_done_callback(lambda _: loop.leaving.discard(holder))
                return
        holder.cancel_soon()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _start(self) -> MemoryObjectReceiveStream[SongResult]:
        """Enter the batch on the loop, where a task keeps it open until :meth:`close`."""
        if self._stream is not None:
            return self._stream
        with self._lock:
            if self._done:
                raise StopIteration  # closed meanwhile (by another thread)
            return self._enter()

    def _enter(self) -> MemoryObjectReceiveStream[SongResult]:
        if self._stream is not None:  # entered by another thread while this one waited
            return self._stream
        if self._loop.stopped:
            raise RuntimeError("this MusicClient is closed; create a new one")
        entered: Future[MemoryObjectReceiveStream[SongResult]] = Future()
        # The task must not hold on to self: dropping the iterator cancels it (__del__).
        batch, leave_box = self._batch, self._leave

        async def hold() -> None:
            leave = anyio.Event()
            leave_box.append(leave)
            try:
                async with batch as stream:
                    entered.set_result(stream)
                    await leave.wait()
            except BaseException as exc:
                if not entered.done():
                    entered.set_exception(exc)
                raise

        # Kept before the hand-over, which a Ctrl-C may interrupt: close() cancels it then.
        self._holder = _Spawned(hold)
        self._holder.start(self._loop.portal)
        self._stream = _wait_for(entered)
        return self._stream
