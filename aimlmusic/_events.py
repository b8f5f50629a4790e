"""What a batch reports while it runs: the :class:`BatchEvents` hook and its event types.

``generate_many(..., events=hook)`` calls ``hook.on_<event>(event)`` as things happen, from the
scheduler's own tasks, synchronously: a hook should be quick (update a progress bar, bump a
counter, write a journal row) and must not block. A hook that raises, or whose lookup raises
(a ``__getattr__``, a property), is logged on the ``aimlmusic`` logger and otherwise ignored:
observability never breaks a batch.

Every method is optional. Subclass :class:`BatchEvents` and override the ones you need (the
others do nothing), or pass any object that has some of them; one that has none (a function,
a dict) is refused with :class:`TypeError`.
"""

from __future__ import annotations

import inspect
import logging
from typing import Literal, Protocol

import attrs

from ._errors import AimlMusicError, SendingRefused
from ._models import Generation, GenerationStatus, SongRequest, SongResult

__all__ = [
    "BatchEvents",
    "RequestKind",
    "RequestRetried",
    "RequestSending",
    "RequestThrottled",
    "SongCompleted",
    "SongFailed",
    "SongStatusChanged",
    "SongSubmitted",
]

logger = logging.getLogger("aimlmusic")

RequestKind = Literal["submit", "poll"]


@attrs.frozen
class SongSubmitted:
    """A song's submission was accepted: it has a generation id (and may cost credits).

    ``at`` is the clock time the response arrived.
    """

    key: str
    request: SongRequest
    generation: Generation
    at: float

    @property
    def generation_id(self) -> str:
        """The id to fetch the song by later."""
        return self.generation.id


@attrs.frozen
class SongStatusChanged:
    """A poll saw a different status than the one before (``previous`` is ``None`` when the
    submission reported no status worth comparing)."""

    key: str
    generation_id: str
    previous: GenerationStatus | None
    status: GenerationStatus
    at: float


@attrs.frozen
class SongCompleted:
    """A song finished and its audio can be downloaded; ``result.ok`` is true."""

    key: str
    result: SongResult
    at: float


@attrs.frozen
class SongFailed:
    """A song ended without audio; ``result.error`` says why (failed generation, deadline,
    ambiguous or rejected submission, a response that could not be understood...)."""

    key: str
    result: SongResult
    at: float

    @property
    def error(self) -> AimlMusicError:
        """The reason, from ``result.error``."""
        assert self.result.error is not None
        return self.result.error


@attrs.frozen
class RequestRetried:
    """A request for a song failed and is tried again: ``attempt`` counts the failed
    tries so far, ``delay`` is the wait before the next one (API seconds)."""

    key: str
    kind: RequestKind
    attempt: int
    error: AimlMusicError
    delay: float
    at: float


@attrs.frozen
class RequestSending:
    """A request for a song is about to leave: its first bytes are being written to an open
    connection. Until then (no connection, cancelled before the first byte) it provably never
    reached the server; from then on a submission may be paid for.

    Reported once per attempt, synchronously, before the bytes go out, so a hook can make
    that fact durable first (the catalog's journal does). With a transport that cannot
    trace the moment (a mock, an in-process ASGI app) it is reported when the attempt ends,
    if it left.
    """

    key: str
    kind: RequestKind
    at: float


@attrs.frozen
class RequestThrottled:
    """The API answered 429 to a request for a song; the whole client slows down.

    ``retry_after`` is the server's hint in seconds, or ``None`` (the AI/ML API sends none).
    """

    key: str
    kind: RequestKind
    retry_after: float | None
    at: float


class BatchEvents(Protocol):
    """Receives what happens in :meth:`~aimlmusic.AsyncMusicClient.generate_many`.

    Subclass it and override what you need; the default methods do nothing (they return
    ``None`` explicitly, so a subclass need not implement all of them). Any object with some of
    these methods works too: missing ones are skipped (an object with none is a TypeError).
    """

    def on_submitted(self, event: SongSubmitted) -> None:
        """A submission was accepted (record ``event.generation_id`` durably here)."""
        return None

    def on_status_changed(self, event: SongStatusChanged) -> None:
        """A poll saw a new status (``queued`` -> ``generating``...)."""
        return None

    def on_completed(self, event: SongCompleted) -> None:
        """A song completed; its result is about to be delivered."""
        return None

    def on_failed(self, event: SongFailed) -> None:
        """A song ended in error; its result is about to be delivered."""
        return None

    def on_sending(self, event: RequestSending) -> None:
        """A request's bytes are about to go out (a submission may now be paid for)."""
        return None

    def on_retried(self, event: RequestRetried) -> None:
        """A request failed and will be retried."""
        return None

    def on_throttled(self, event: RequestThrottled) -> None:
        """The API throttled a request (429)."""
        return None


#: The methods :func:`emit` calls: ``BatchEvents``' own, so the check below follows the protocol.
HOOK_METHODS: tuple[str, ...] = tuple(name for name in vars(BatchEvents) if name.startswith("on_"))


def check_events(events: object | None) -> None:
    """Raise :class:`TypeError` unless ``events`` is ``None`` or has at least one of the
    hook methods: a function, a lambda or a dict of callbacks would otherwise be taken and
    never called."""
    if events is None or any(_has_hook(events, name) for name in HOOK_METHODS):
        return
    raise TypeError(
        f"events must be an object with at least one of the methods {', '.join(HOOK_METHODS)} "
        f"(a BatchEvents subclass, say); {type(events).__name__!r} has none"
    )


def _has_hook(events: object, name: str) -> bool:
    try:
        return callable(getattr(events, name, None))
    except Exception:
        # A lookup that raises (a __getattr__ over a dict raising KeyError) finds nothing,
        # unless the class itself declares the name (a lazy @property not ready yet): that
        # object means to be a hook, and emit logs what its lookups raise.
        return inspect.getattr_static(type(events), name, None) is not None


def emit(hook: object | None, method: str, event: object) -> None:
    """Call ``hook.<method>(event)`` if the hook has it; log and swallow what it raises,
    but for an ``on_sending`` hook's :class:`SendingRefused`, which keeps the request from
    leaving (the transport stops it before its first byte)."""
    if hook is None:
        return
    try:
        # The lookup is guarded too: a ``__getattr__`` over a dict of callbacks raises
        # KeyError for the ones not given, a lazy ``@property`` may raise anything.
        handler = getattr(hook, method, None)
        if handler is None:
            return
        outcome = handler(event)
    except Exception as exc:
        if method == "on_sending" and isinstance(exc, SendingRefused):
            raise
        logger.exception("event hook %s.%s raised; the batch goes on", type(hook).__name__, method)
        return
    if inspect.iscoroutine(outcome):
        # An ``async def`` hook would never run: close it (no "never awaited" warning) and
        # say so.
        outcome.close()
        logger.error(
            "event hook %s.%s is a coroutine function; hooks must be plain functions "
            "(it was not run)",
            type(hook).__name__,
            method,
        )
