"""Letting a batch's submissions on their way land when the batch is left early.

A caller that breaks out of ``generate_many``'s loop, or raises in its block, cancels the
batch's tasks. A POST cut after its first byte may still create a generation, paid for and
with no id to find it by. So a batch that is left first refuses every new POST (before its
first byte: nothing is sent), waits for the answers of those on their way, and only then is
cancelled; each answered one reaches the batch's ``on_submitted`` hook and the WARNING that
names the songs the caller leaves behind. The transport tells each task's
:class:`~aimlmusic._transport.SubmissionWatch` when a POST is on its way; a batch gives each
submission task a watch of its own, which passes everything on to the watch of the task that
runs the batch (the blocking client's, the CLI's), so those still see every POST. A
cancellation from outside the block (a timeout around it) reaches the submission tasks
directly, as it does any ``await``: a POST it cuts on its way is logged as such (by the
batch, which knows the song). A batch whose key the API refused goes on with the songs in
flight but refuses new POSTs the same way (:meth:`Landing.refuse_new`).
"""

from __future__ import annotations

import logging
import math
from contextvars import ContextVar

import anyio

from ._errors import SendingRefused
from ._transport import SubmissionWatch

__all__ = ["LEFT_BEHIND_KEPT", "Landing", "TaskWatch", "tell_left_behind"]

logger = logging.getLogger("aimlmusic")


class Landing:
    """Counts one batch's POSTs on their way; :meth:`leave` refuses new ones and waits until
    those on their way are answered."""

    __slots__ = ("_landed", "_leaving", "_on_their_way", "_refusing")

    def __init__(self) -> None:
        self._leaving = False
        self._refusing: str | None = None  # why new POSTs are refused, the batch not left
        self._on_their_way = 0
        self._landed: anyio.Event | None = None

    @property
    def leaving(self) -> bool:
        """Whether the batch is being left: no new song is taken, no new POST leaves."""
        return self._leaving

    def watch(self, outer: SubmissionWatch | None) -> TaskWatch:
        """The watch of one submission task, passing everything on to ``outer`` (the watch
        of the task that runs the batch, if any)."""
        return TaskWatch(self, outer)

    def refuse_new(self, reason: str) -> None:
        """Refuse every new POST from now on, for ``reason``, the batch going on."""
        self._refusing = reason

    def start_leaving(self) -> None:
        """Refuse new POSTs from now on (before anyone waits in :meth:`leave`)."""
        self._leaving = True

    async def leave(self) -> None:
        """Refuse new POSTs and wait, shielded from cancellation, for the answers of those
        on their way (each is bounded by the transport's timeouts). Returns at once, without
        a checkpoint, when none is. Any number of tasks may wait: they wait for one event."""
        self._leaving = True
        if self._on_their_way:
            if self._landed is None:
                logger.warning(
                    "leaving the batch while a submission is on its way: waiting for the "
                    "answers of %d so that no generation id is lost",
                    self._on_their_way,
                )
                self._landed = anyio.Event()
            with anyio.CancelScope(shield=True):
                await self._landed.wait()

    def _changed(self, delta: int) -> None:
        self._on_their_way += delta
        if self._on_their_way == 0 and self._landed is not None:
            self._landed.set()


class TaskWatch:
    """The watch of one submission task of a batch: counts its POST while on its way, and
    whether the last one stopped being on its way because its task was cancelled (:attr:`cut`:
    cut, unless its answer had come as the cancellation did)."""

    __slots__ = ("_landing", "_outer", "cut")

    def __init__(self, landing: Landing, outer: SubmissionWatch | None) -> None:
        self._landing = landing
        self._outer = outer
        self.cut = False

    def on_its_way(self, leaving: bool) -> None:
        if not leaving:
            # Counted off first: an outer watch that raised here must not hold the batch.
            self._landing._changed(-1)
            self.cut = anyio.current_effective_deadline() == -math.inf
            if self._outer is not None:
                self._outer.on_its_way(False)
            return
        if self._landing.leaving:
            raise SendingRefused("the batch is being left")
        if self._landing._refusing is not None:
            raise SendingRefused(self._landing._refusing)
        if self._outer is not None:
            self._outer.on_its_way(True)  # may refuse it too: then it is not on its way
        self.cut = False
        self._landing._changed(1)

    def submitted(self, generation_id: str) -> None:
        if self._outer is not None:
            self._outer.submitted(generation_id)


#: Set by a caller that keeps the ids of the songs it leaves behind itself (the catalog
#: runner's journal, which resumes them): they are then not logged one by one.
LEFT_BEHIND_KEPT: ContextVar[bool] = ContextVar("aimlmusic_left_behind_kept", default=False)


def tell_left_behind(left: list[tuple[str, str | None]]) -> None:
    """Log a WARNING for each song a batch was left with: its key and generation id, or
    (``None``) that its submission was ambiguous, so that the caller can find it again."""
    if LEFT_BEHIND_KEPT.get():
        return
    for key, generation_id in left:
        if generation_id is None:
            logger.warning(
                "song %r may have been submitted (its submission was ambiguous), and its batch "
                "was left before its result was read: look for it before submitting it again",
                key,
            )
        else:
            # A raw id the client refused (a control character in it) is shown escaped.
            shown = generation_id if generation_id.isprintable() else ascii(generation_id)
            logger.warning(
                "song %r was submitted as generation %s and may still finish, but its batch "
                "was left before its result was read: fetch it later with wait(%r)",
                key,
                shown,
                generation_id,
            )
