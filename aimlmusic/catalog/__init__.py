"""Generate a whole catalog of songs: validated, journaled, resumable, never paying twice.

::

    import anyio
    import aimlmusic
    from aimlmusic.catalog import run_catalog

    async def main() -> None:
        async with aimlmusic.AsyncMusicClient() as client:
            summary = await run_catalog(client, "songs.jsonl", "out/")
            print(summary.downloaded, "of", summary.total, "songs downloaded")

    anyio.run(main)

A catalog is a JSONL or CSV file of songs (``key``, ``title``, ``prompt``, ``lyrics`` or
``lyrics_file``, ``format``, ``sample_rate``, ``bitrate``). :func:`load_catalog` validates it
and reports every bad row at once; :func:`run_catalog` generates it into an output directory
holding the audio files, ``manifest.jsonl`` and the SQLite journal that lets a rerun resume
where a crash left off. See the "Generate a catalog" guide. With ``journal_url`` the journal
is in PostgreSQL (:class:`PgJournal`) and many workers drain one catalog together.
"""

from __future__ import annotations

from ._journal import JOURNAL_NAME, Journal, JournalEntry, JournalError, SongState
from ._journal_api import CatalogJournal, SharedJournal
from ._manifest import MANIFEST_NAME
from ._pg_journal import DEFAULT_LEASE_SECONDS, PgJournal
from ._progress import CatalogEvent, EventKind, RunProgress, RunSummary
from ._rows import (
    CatalogError,
    CatalogFormat,
    CatalogProblem,
    CatalogRow,
    iter_catalog,
    load_catalog,
    song_key,
)
from ._runner import MAX_CONNECT_FAILURES, RunStopped, read_summary, run_catalog

__all__ = [
    "CatalogError",
    "CatalogJournal",
    "DEFAULT_LEASE_SECONDS",
    "CatalogEvent",
    "CatalogFormat",
    "CatalogProblem",
    "CatalogRow",
    "EventKind",
    "MAX_CONNECT_FAILURES",
    "RunStopped",
    "iter_catalog",
    "Journal",
    "JOURNAL_NAME",
    "JournalEntry",
    "JournalError",
    "load_catalog",
    "MANIFEST_NAME",
    "PgJournal",
    "read_summary",
    "run_catalog",
    "RunProgress",
    "RunSummary",
    "SharedJournal",
    "song_key",
    "SongState",
]
