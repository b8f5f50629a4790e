"""Making the client a command talks to: the real API, a served emulator, or one in process.

Also the one place that runs a command's coroutine, so Ctrl-C (and SIGTERM) stop every
command the same way: the work is cancelled, its cleanup runs (the catalog journal is always
consistent), and :class:`Interrupted` is raised. A submission on its way is let land first
(cut, it could be paid for with no generation id recorded); a second Ctrl-C cancels at once.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio
import attrs

from .. import AsyncMusicClient, Limits, ScaledClock
from .._clock import Clock
from .._errors import SendingRefused
from .._transport import SUBMISSION_WATCH
from ..emulator._config import DEFAULT_SERVED_TIME_SCALE

__all__ = ["DEFAULT_EMULATOR_TIME_SCALE", "Connection", "Interrupted", "open_client", "run_async"]

T = TypeVar("T")

logger = logging.getLogger("aimlmusic")

#: API seconds per real second for ``--emulator`` and ``demo``: the same as ``aimlmusic
#: emulator``'s default, so both run a 55 s song in about half a second.
DEFAULT_EMULATOR_TIME_SCALE = DEFAULT_SERVED_TIME_SCALE


#: What an interruption tells the user when the command says nothing more specific: true of
#: every command that is journaled or costs nothing (``generate`` says more).
RESUME_ADVICE = "stopped cleanly; run the same command again to resume"


class Interrupted(Exception):
    """The user pressed Ctrl-C (or the process got SIGTERM); the work was stopped cleanly.

    ``advice`` tells the user what to do next.
    """

    def __init__(self, advice: str = RESUME_ADVICE) -> None:
        self.advice = advice
        super().__init__(advice)


@attrs.frozen
class Connection:
    """Where a command sends its requests.

    ``emulator`` runs an emulator inside this process (no key, no network); otherwise the
    client reads ``api_key``/``base_url`` or the environment. ``time_scale`` compresses time:
    for the in-process emulator it is the emulator's own scale; with ``base_url`` it
    overrides the scale a client reads from an emulator served on this machine (it is
    meaningless against the real API).
    """

    api_key: str | None = attrs.field(default=None, repr=False)
    base_url: str | None = None
    emulator: bool = False
    time_scale: float | None = None
    requests_per_minute: float | None = None
    max_in_flight: int | None = None

    def limits(self) -> Limits:
        """The client's account limits: the defaults, with what the options override."""
        default = Limits()
        return Limits(
            requests_per_minute=self.requests_per_minute or default.requests_per_minute,
            max_in_flight=self.max_in_flight or default.max_in_flight,
        )


@asynccontextmanager
async def open_client(connection: Connection) -> AsyncIterator[AsyncMusicClient]:
    """An open client for ``connection`` (closed on exit)."""
    if connection.emulator:
        import httpx

        from ..emulator import TEST_API_KEY, Emulator, EmulatorConfig

        scale = connection.time_scale or DEFAULT_EMULATOR_TIME_SCALE
        emulator = Emulator(EmulatorConfig(time_scale=scale))
        client = AsyncMusicClient(
            TEST_API_KEY,
            base_url="http://127.0.0.1",
            transport=httpx.ASGITransport(app=emulator.app),
            clock=emulator.clock,
            limits=connection.limits(),
        )
    else:
        clock: Clock | None = (
            ScaledClock(connection.time_scale) if connection.time_scale is not None else None
        )
        client = AsyncMusicClient(
            connection.api_key,
            base_url=connection.base_url,
            clock=clock,
            limits=connection.limits(),
        )
    async with client:
        yield client


class _Landing:
    """The command's :class:`~aimlmusic._transport.SubmissionWatch`: cancels ``scope`` once
    no POST is on its way. A POST's generation id is recorded as its answer arrives, before
    the cancellation can land (the catalog journals it in the scheduler's event hook)."""

    def __init__(self, scope: anyio.CancelScope) -> None:
        self._scope = scope
        self._posts = 0
        self.cancelling = False

    def on_its_way(self, leaving: bool) -> None:
        if leaving and self.cancelling:
            # Stopping: no new POST leaves (a batch frees slots as songs end, and would
            # otherwise go on sending while the earlier POSTs land).
            raise SendingRefused("the command is stopping")
        self._posts += 1 if leaving else -1
        if self.cancelling and not self._posts:
            self._scope.cancel()

    def submitted(self, generation_id: str) -> None:
        """Nothing to do: the command records or prints the id itself."""

    def cancel_once_landed(self) -> None:
        self.cancelling = True
        if not self._posts:
            self._scope.cancel()
            return
        logger.warning(
            "waiting for %d submission(s) on their way, so that their generation ids are "
            "not lost (press Ctrl-C again to stop now)",
            self._posts,
        )


def run_async(work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work()`` to completion; raise :class:`Interrupted` on Ctrl-C or SIGTERM.

    The first signal cancels the work once no submission is on its way, and the work then
    cleans up; a second one cancels it at once; one more during the cleanup falls back to
    Python's default (an immediate ``KeyboardInterrupt``).
    """

    async def supervised() -> tuple[bool, T | None, Exception | None]:
        interrupted = False
        result: T | None = None
        error: Exception | None = None
        async with anyio.create_task_group() as task_group:
            landing = _Landing(task_group.cancel_scope)
            SUBMISSION_WATCH.set(landing)  # seen by every task the work starts from here

            async def watch_signals() -> None:
                nonlocal interrupted
                try:
                    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                        async for _ in signals:
                            interrupted = True
                            if landing.cancelling:
                                task_group.cancel_scope.cancel()
                                return
                            landing.cancel_once_landed()
                except NotImplementedError:  # no signal handlers here (Windows): rely on
                    await anyio.sleep_forever()  # KeyboardInterrupt instead

            task_group.start_soon(watch_signals)
            try:
                result = await work()
            except Exception as exc:
                # Raised after the task group, unwrapped: a task group would wrap it in an
                # exception group, and the commands catch specific errors.
                error = exc
            task_group.cancel_scope.cancel()
        return interrupted, result, error

    try:
        interrupted, result, error = anyio.run(supervised)
    except KeyboardInterrupt as exc:
        raise Interrupted() from exc
    if interrupted:
        raise Interrupted()
    if error is not None:
        raise error
    return result  # type: ignore[return-value]
