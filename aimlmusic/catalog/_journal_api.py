"""The one journal interface a catalog run talks to, and the extra calls of a shared one.

Two implementations: :class:`~aimlmusic.catalog.Journal` (SQLite, a file in the output
directory, one run at a time: the zero-setup default) and
:class:`~aimlmusic.catalog.PgJournal` (PostgreSQL, one catalog drained by many workers on
many hosts). Both keep the same life cycle and the same guarantees; the shared one adds
claims under leases so that workers never drive the same song at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .._models import Generation
from ._journal import JournalEntry, SongState
from ._rows import CatalogProblem, CatalogRow

__all__ = ["CatalogJournal", "SharedJournal"]


class CatalogJournal(Protocol):
    """What a catalog run needs from its journal: every ``mark_*`` is one durable
    transaction that checks the song's current state (see :class:`Journal`)."""

    @property
    def location(self) -> str | Path:
        """Where the journal is, fit to show (a path, or a URL without its password)."""

    @property
    def endpoint(self) -> str:
        """The server this journal's generation ids belong to."""

    def close(self) -> None:
        """Release the journal."""

    def timing_estimate(self) -> str | None:
        """The learned timing a run saved, as it was saved, or None."""

    def save_timing_estimate(self, data: str) -> None:
        """Keep ``data`` as the learned timing, replacing the one saved before."""

    def sync_catalog(
        self, rows: Iterable[CatalogRow], files_present: Iterable[str] = ()
    ) -> list[CatalogProblem]:
        """Record the catalog's songs; return the conflicts (then nothing is changed).
        ``files_present``: names of the files already in the output directory, which no
        new song is given."""

    def recover_interrupted(self) -> list[str]:
        """Turn songs a crash left ``submitting`` into ``ambiguous``; return their keys."""

    def forget_generations(self) -> int:
        """Put every unfinished song back to ``pending`` (an ephemeral server)."""

    def adopt(self, key: str, generation_id: str) -> None:
        """Attach a generation id found elsewhere to a song."""

    def mark_submitting(self, key: str) -> None:
        """The intent to submit, committed before the POST's first byte."""

    def mark_submitted(self, key: str, generation_id: str) -> None:
        """The POST returned this generation id."""

    def mark_completed(
        self,
        key: str,
        generation: Generation,
        *,
        polls: int = 0,
        generation_seconds: float | None = None,
    ) -> None:
        """The generation completed."""

    def mark_downloaded(
        self,
        key: str,
        *,
        sha256: str,
        size: int,
        tagged: bool,
        duration: float | None = None,
        sample_rate: int | None = None,
    ) -> None:
        """The file is in place."""

    def note_download_attempt(self, key: str) -> None:
        """Count one download attempt."""

    def mark_failed(
        self, key: str, error: BaseException | str, *, generation_id: str | None = None
    ) -> None:
        """A definitive failure."""

    def mark_ambiguous(self, key: str, error: BaseException | str) -> None:
        """The POST may or may not have landed."""

    def mark_pending(self, key: str, error: BaseException | str | None = None) -> None:
        """The song provably never reached the server."""

    def mark_not_sent(self, key: str, state: SongState, error: BaseException | str) -> None:
        """An attempt of a song being sent was refused (a 429) or never arrived: the song
        goes back to ``state``, the one it had before (``pending``, ``failed`` or
        ``ambiguous``: an earlier attempt may still have been accepted) until its next
        attempt leaves; a shared journal keeps it this worker's."""

    def note_error(self, key: str, error: BaseException | str) -> None:
        """A problem that leaves the state as it is; the song is done for this run."""

    def start_run(self) -> int:
        """Record the start of a run."""

    def finish_run(self, outcome: str) -> None:
        """Record how the run ended."""

    def entry(self, key: str) -> JournalEntry | None:
        """The song ``key``, or ``None``."""

    def entries(
        self, states: Iterable[SongState] | None = None, *, in_catalog: bool = True
    ) -> Iterator[JournalEntry]:
        """Songs in catalog order, optionally only those in ``states``."""

    def counts(self) -> dict[SongState, int]:
        """Songs of the current catalog per state (every state listed)."""

    def credits_used(self) -> float:
        """Credits reported for the songs of the current catalog."""


@runtime_checkable
class SharedJournal(CatalogJournal, Protocol):
    """A journal several workers drain at once: each song is claimed by one worker under a
    lease that the worker's heartbeat renews; an expired lease lets another worker take the
    song over (adopting its generation id when it has one)."""

    @property
    def worker_id(self) -> str:
        """This worker's name in the journal (host, process id and a random part)."""

    @property
    def lease_seconds(self) -> float:
        """How long a claim lasts without a renewal."""

    def claim(self, *, resubmit_ambiguous: bool, retry_failed: bool) -> JournalEntry | None:
        """Claim the next song this worker may drive (never one another live worker holds,
        nor one this worker already had in this run), or ``None``."""

    def renew(self) -> int:
        """Extend this worker's leases; return how many it holds."""

    def release_all(self) -> int:
        """Give up every claim this worker holds; return how many."""

    def others_working(self) -> int:
        """How many songs other workers hold under live leases."""

    def workers(self) -> list[dict[str, Any]]:
        """Per worker: songs held by state, leases alive and expired, songs downloaded, its
        last run, and whether that run is still ``running`` (heartbeat not overdue)."""
