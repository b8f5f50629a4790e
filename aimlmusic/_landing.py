"""Letting a batch's submissions on their way land when the batch is left early.

A caller that breaks out of ``generate_many``'s loop, or is cancelled in it, cancels the
batch's tasks. A POST cut after its first byte may still create a generation, paid for and
with no id to find it by. So a batch that is left first refuses every new POST (before its
first byte: nothing is sent), waits for the answers of those on their way, and only then is
cancelled; each answered one reaches the batch's ``on_submitted`` hook and the WARNING that
names the songs the caller leaves behind. The transport tells each task's
:class:`~aimlmusic._transport.SubmissionWatch` when a POST is on its way; a batch gives each
submission task a watch of its own, which passes everything on to the watch of the task that
runs the batch (the blocking client's, the CLI's), so those still see every POST.
"""

from __future__ import annotations

import logging

import anyio

from ._errors import SendingRefused
from ._transport import SubmissionWatch

__all__ = ["Landing"]

logger = logging.getLogger("aimlmusic")


class Landing:
    """Counts one batch's POSTs on their way; :meth:`leave` refuses new ones and waits until
    those on their way are answered."""

    __slots__ = ("_landed", "_leaving", "_on_their_way")

    def __init__(self) -> None:
        self._leaving = False
        self._on_their_way = 0
        self._landed: anyio.Event | None = None

    @property
    def leaving(self) -> bool:
        """Whether the batch is being left: no new song is taken, no new POST leaves."""
        return self._leaving

    def watch(self, outer: SubmissionWatch | None) -> SubmissionWatch:
        """The watch of one submission task, passing everything on to ``outer`` (the watch
        of the task that runs the batch, if any)."""
        return _TaskWatch(self, outer)

    async def leave(self) -> None:
        """Refuse new POSTs and wait, shielded from cancellation, for the answers of those
        on their way (each is bounded by the transport's timeouts). Returns at once, without
        a checkpoint, when none is."""
        self._leaving = True
        if self._on_their_way:
            logger.warning(
                "leaving the batch while a submission is on its way: waiting for the answers "
                "of %d so that no generation id is lost",
                self._on_their_way,
            )
            self._landed = anyio.Event()
            with anyio.CancelScope(shield=True):
                await self._landed.wait()

    def _changed(self, delta: int) -> None:
        self._on_their_way += delta
        if self._on_their_way == 0 and self._landed is not None:
            self._landed.set()


class _TaskWatch:
    """The watch of one submission task of a batch."""

    __slots__ = ("_landing", "_outer")

    def __init__(self, landing: Landing, outer: SubmissionWatch | None) -> None:
        self._landing = landing
        self._outer = outer

    def on_its_way(self, leaving: bool) -> None:
        if not leaving:
            # Counted off first: an outer watch that raised here must not hold the batch.
            self._landing._changed(-1)
            if self._outer is not None:
                self._outer.on_its_way(False)
            return
        if self._landing.leaving:
            raise SendingRefused("the batch is being left")
        if self._outer is not None:
            self._outer.on_its_way(True)  # may refuse it too: then it is not on its way
        self._landing._changed(1)

    def submitted(self, generation_id: str) -> None:
        if self._outer is not None:
            self._outer.submitted(generation_id)
