"""``manifest.jsonl``: one JSON line per song of the catalog, for people and pipelines.

The manifest is derived from the journal and rewritten whole, atomically (a temporary file in
the same directory, fsync, ``os.replace``, fsync of the directory), so a reader never sees a
half-written file, even if the process dies mid-write. While a run is going, rewrites are
spaced out (:class:`ManifestWriter`) so a catalog of thousands of songs does not rewrite the
file thousands of times.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .._filemode import file_mode_from_umask
from ._journal import JournalEntry, SongState
from ._journal_api import CatalogJournal
from ._store import fsync_directory

__all__ = ["MANIFEST_NAME", "ManifestWriter", "manifest_record", "write_manifest"]

MANIFEST_NAME = "manifest.jsonl"


def manifest_record(entry: JournalEntry) -> dict[str, Any]:
    """The manifest line of one song.

    ``file`` is the file name inside the output directory once the song is downloaded (else
    ``null``); ``duration`` is in seconds; ``bytes`` and ``sha256`` describe the final file
    (after tagging); ``timings`` holds UTC wall-clock times and the seconds from submission
    to noticing completion on the client's clock.
    """
    downloaded = entry.state is SongState.DOWNLOADED
    error = (
        {"type": entry.error_type, "message": entry.error}
        if entry.error is not None and not downloaded
        else None
    )
    return {
        "key": entry.key,
        "title": entry.title,
        "generation_id": entry.generation_id,
        "status": entry.state.value,
        "file": entry.file_name if downloaded else None,
        "format": entry.request.format,
        "duration": entry.duration,
        "sample_rate": entry.sample_rate,
        "bytes": entry.size,
        "sha256": entry.sha256,
        "tagged": entry.tagged,
        "credits_used": entry.credits_used,
        "timings": {
            "submitted_at": entry.submitted_at,
            "completed_at": entry.completed_at,
            "downloaded_at": entry.downloaded_at,
            "generation_seconds": entry.generation_seconds,
        },
        "polls": entry.polls,
        "submit_attempts": entry.submit_attempts,
        "download_attempts": entry.download_attempts,
        "error": error,
    }


def write_manifest(
    path: str | os.PathLike[str],
    records: Iterable[Mapping[str, Any]],
    *,
    temp_dir: Path | None = None,
) -> None:
    """Write ``records`` as JSON lines to ``path``, atomically and durably. The temporary
    file is made in ``temp_dir`` (default: beside ``path``; it must be on the same file
    system), so a worker of a shared journal keeps it in its partial directory, which the
    others throw away if the worker is killed mid-write."""
    target = Path(path)
    if temp_dir is not None:
        temp_dir.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed below, before the rename
        "w",
        encoding="utf-8",
        newline="\n",
        dir=target.parent if temp_dir is None else temp_dir,
        prefix=f".{target.name}.",
        suffix=".tmp",
        delete=False,
    )
    try:
        with handle:
            # NamedTemporaryFile makes it 0600; a manifest is no secret: the umask's mode.
            os.chmod(handle.name, file_mode_from_umask())
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(handle.name)
        raise
    fsync_directory(target.parent)


class ManifestWriter:
    """Rewrites the manifest from the journal while songs finish, and always on
    :meth:`flush`.

    Rewrites are at least ``min_interval`` seconds apart, and at least ten times as long apart
    as the last rewrite took: it runs on the event loop, and for a huge catalog it is not
    free, so it never takes more than about a tenth of the run's time.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        journal: CatalogJournal,
        *,
        min_interval: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
        temp_dir: Path | None = None,
    ) -> None:
        self.path = Path(path)
        self._temp_dir = temp_dir
        self._journal = journal
        self._min_interval = min_interval
        self._monotonic = monotonic
        self._last_write = -float("inf")
        self._last_duration = 0.0
        self._dirty = True
        #: How many times the file was written (for tests and diagnostics).
        self.writes = 0

    def changed(self) -> None:
        """A song's outcome changed: rewrite now unless the last write was very recent."""
        self._dirty = True
        gap = max(self._min_interval, 10 * self._last_duration)
        if self._monotonic() - self._last_write >= gap:
            self.flush()

    def flush(self, *, force: bool = False) -> None:
        """Rewrite the manifest if anything changed since the last write (or ``force``)."""
        if not (self._dirty or force):
            return
        started = self._monotonic()
        write_manifest(
            self.path,
            (manifest_record(e) for e in self._journal.entries()),
            temp_dir=self._temp_dir,
        )
        self._dirty = False
        self._last_write = self._monotonic()
        self._last_duration = self._last_write - started
        self.writes += 1
