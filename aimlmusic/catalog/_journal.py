"""The journal: a SQLite database in the output directory recording every step of every song.

It is what makes a catalog run safe to kill and rerun. Each song moves through::

    pending ──> submitting ──> submitted(id) ──> completed ──> downloaded(path, sha256)
                   │  │             │               │
                   │  └─> failed <──┴───────────────┘   (failed: a definitive error)
                   └────> ambiguous                     (the POST may or may not have landed)

``submitting`` is committed durably (WAL, ``synchronous=FULL``) *before* the POST is sent and
the generation id right after it returns, so after a crash a song is in one of three cases: it
has an id (never resubmitted: the run waits for it and downloads it), it is still
``submitting`` (the crash hit the POST window: it becomes ``ambiguous`` and is resubmitted only
when the user says so), or it was never sent.

The database is opened in SQLite's exclusive locking mode, so two runs can never drive the
same output directory at once.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs

from .._converter import (
    audio_setting_from_wire,
    generation_to_wire,
    request_to_wire,
    structure_generation,
    unsendable_id_problem,
)
from .._errors import AimlMusicError
from .._models import Generation, SongRequest
from ._names import NameAllocator, fold_name
from ._rows import CatalogProblem, CatalogRow

__all__ = ["JOURNAL_NAME", "Journal", "JournalEntry", "JournalError", "SongState"]

#: The journal's file name inside the output directory.
JOURNAL_NAME = "aimlmusic-journal.sqlite"

#: Bumped whenever the schema changes; a journal from a newer version is refused.
SCHEMA_VERSION = 1


class JournalError(AimlMusicError):
    """The journal cannot be used: locked by another run, from a newer version, made against
    a different server, or asked for a transition its state does not allow."""


class SongState(str, enum.Enum):
    """Where a song is in its life; see the module documentation for the transitions."""

    PENDING = "pending"
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    COMPLETED = "completed"
    DOWNLOADED = "downloaded"
    FAILED = "failed"
    AMBIGUOUS = "ambiguous"

    def __str__(self) -> str:
        return self.value


_S = SongState

#: Which states each transition may start from.
_SUBMITTABLE = (_S.PENDING, _S.FAILED, _S.AMBIGUOUS)


@attrs.frozen
class JournalEntry:
    """One song as the journal knows it. Times are UTC ISO-8601 strings of the wall clock."""

    key: str
    title: str
    request: SongRequest
    request_hash: str
    file_name: str
    state: SongState
    position: int | None = None
    generation_id: str | None = None
    generation: Generation | None = None
    error: str | None = None
    error_type: str | None = None
    submit_attempts: int = 0
    download_attempts: int = 0
    polls: int = 0
    credits_used: float | None = None
    duration: float | None = None
    sample_rate: int | None = None
    size: int | None = None
    sha256: str | None = None
    tagged: bool | None = None
    generation_seconds: float | None = None
    submitted_at: str | None = None
    completed_at: str | None = None
    downloaded_at: str | None = None
    updated_at: str | None = None


def request_hash(request: SongRequest) -> str:
    """SHA-256 of the request's canonical JSON: what is paid for."""
    wire = json.dumps(request_to_wire(request), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(wire.encode("utf-8")).hexdigest()


def storable(text: str) -> str:
    """``text`` as the journal can hold it: UTF-8 text. A server answer can carry a lone
    surrogate (JSON's ``"\\ud800"``), which SQLite and PostgreSQL refuse to encode; such
    characters are kept as backslash escapes (``\\ud800``) instead of failing the write."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _storable_value(value: Any) -> Any:
    if isinstance(value, SongState):
        return value.value
    return storable(value) if isinstance(value, str) else value


def adopted_id_problem(generation_id: str) -> str | None:
    """Why ``generation_id`` cannot be adopted (the client could never poll it), or None."""
    if not generation_id:
        return "it is empty"
    problem = unsendable_id_problem(generation_id)
    if problem is None and generation_id != generation_id.strip():
        problem = "it has spaces around it"
    return problem


def check_adoptable(key: str, generation_id: str) -> None:
    """Raise :class:`JournalError` when ``generation_id`` could never be sent back to the
    API (see :func:`adopted_id_problem`): adopting it would leave song ``key`` stuck."""
    problem = adopted_id_problem(generation_id)
    if problem is not None:
        raise JournalError(
            f"song {key!r}: cannot adopt the generation id {ascii(generation_id)[:120]}: {problem}"
        )


def adoption_changes(key: str, row: Any, generation_id: str) -> bool:
    """Whether adopting ``generation_id`` changes song ``key`` (``row``: its state, id and
    submission time, None for an unknown key): not when it already carries that id, so the
    same adoption can be repeated. Raises :class:`JournalError` when it would replace the
    id of a song this tool submitted and still waits for: that id is a paid generation, and
    a mistyped one in its place would orphan it. Only an id that itself came from an
    adoption (never submitted here) may be corrected."""
    if row is None:
        return True
    if row["generation_id"] == generation_id:
        return False
    if row["state"] == SongState.SUBMITTED.value and row["submitted_at"] is not None:
        raise JournalError(
            f"song {key!r} was submitted as generation {row['generation_id']}, which is "
            f"followed and paid for: its id is not replaced by {ascii(generation_id)[:120]}"
        )
    return True


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


#: The meta entry that keeps the learned timing between runs (:mod:`._timing`).
TIMING_ESTIMATE_NAME = "timing_estimate"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS songs (
    key TEXT PRIMARY KEY,
    position INTEGER,
    title TEXT NOT NULL,
    request_json TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    file_name TEXT NOT NULL,
    file_name_folded TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL CHECK (state IN
        ('pending', 'submitting', 'submitted', 'completed', 'downloaded', 'failed', 'ambiguous')),
    generation_id TEXT,
    generation_json TEXT,
    error TEXT,
    error_type TEXT,
    submit_attempts INTEGER NOT NULL DEFAULT 0,
    download_attempts INTEGER NOT NULL DEFAULT 0,
    polls INTEGER NOT NULL DEFAULT 0,
    credits_used REAL,
    duration REAL,
    sample_rate INTEGER,
    size INTEGER,
    sha256 TEXT,
    tagged INTEGER,
    generation_seconds REAL,
    submitted_at TEXT,
    completed_at TEXT,
    downloaded_at TEXT,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS songs_by_position ON songs (position);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    outcome TEXT
);
"""


class Journal:
    """The journal of one output directory. Use as a context manager, or call :meth:`close`.

    Every ``mark_*`` method is one durable transaction that checks the song's current state
    and raises :class:`JournalError` on a transition the life cycle does not allow.
    """

    def __init__(self, path: str | Path, *, endpoint: str | None) -> None:
        self.path = Path(path)
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=0.0)
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open the journal {self.path}: {exc}") from exc
        try:
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA locking_mode = EXCLUSIVE")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA foreign_keys = ON")
            # executescript commits on its own; the statements are idempotent.
            self._db.executescript(_SCHEMA)
            with self._transaction():
                self._check_meta(endpoint)
        except sqlite3.OperationalError as exc:
            self._db.close()
            if "locked" in str(exc):
                raise JournalError(
                    f"{self.path} is in use by another run; wait for it or stop it first"
                ) from exc
            raise JournalError(f"cannot open the journal {self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            # Not a database at all, or a corrupt one: say so, never a traceback.
            self._db.close()
            raise JournalError(_corrupt(self.path, str(exc))) from exc
        except BaseException:
            self._db.close()
            raise
        self._run_id: int | None = None

    @property
    def location(self) -> Path:
        """The journal's file."""
        return self.path

    @classmethod
    def in_directory(cls, directory: str | Path, *, endpoint: str | None) -> Journal:
        """Open (creating if needed) the journal of an output directory."""
        return cls(Path(directory) / JOURNAL_NAME, endpoint=endpoint)

    def close(self) -> None:
        """Close the database (releases the lock)."""
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r})"

    # ------------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        if self._db.in_transaction:
            self._db.execute("COMMIT")

    def _check_meta(self, endpoint: str | None) -> None:
        rows = dict(self._db.execute("SELECT name, value FROM meta").fetchall())
        if not rows:
            if endpoint is None:
                raise JournalError(f"{self.path} is not an aimlmusic journal")
            self._db.executemany(
                "INSERT INTO meta (name, value) VALUES (?, ?)",
                [
                    ("schema_version", str(SCHEMA_VERSION)),
                    ("endpoint", endpoint),
                    ("created_at", _now()),
                ],
            )
            return
        try:
            version = int(rows.get("schema_version", "0"))
        except (TypeError, ValueError):
            raise JournalError(
                _corrupt(self.path, f"schema_version {str(rows['schema_version'])[:40]!r}")
            ) from None
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"{self.path} was written by a newer aimlmusic (journal schema {version}); "
                "upgrade aimlmusic to resume it"
            )
        recorded = rows.get("endpoint")
        if endpoint is not None and recorded != endpoint:
            raise JournalError(
                f"{self.path} belongs to runs against {recorded!r}, not {endpoint!r}; "
                "use another output directory (generation ids are only valid where they "
                "were made)"
            )

    @property
    def endpoint(self) -> str:
        """The server this journal's generation ids belong to."""
        row = self._db.execute("SELECT value FROM meta WHERE name = 'endpoint'").fetchone()
        return str(row[0])

    def timing_estimate(self) -> str | None:
        """The learned timing a run saved (:mod:`aimlmusic.catalog._timing`), or None; a
        database failure is a :class:`JournalError`."""
        try:
            row = self._db.execute(
                "SELECT value FROM meta WHERE name = ?", (TIMING_ESTIMATE_NAME,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise JournalError(f"reading the timing estimate from {self.path}: {exc}") from None
        return None if row is None else str(row[0])

    def save_timing_estimate(self, data: str) -> None:
        """Keep ``data`` as the learned timing, replacing the one saved before; a database
        failure (a full disk) is a :class:`JournalError`."""
        try:
            with self._transaction() as db:
                db.execute(
                    "INSERT INTO meta (name, value) VALUES (?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (TIMING_ESTIMATE_NAME, data),
                )
        except sqlite3.Error as exc:
            raise JournalError(f"saving the timing estimate in {self.path}: {exc}") from None

    def _update(self, key: str, allowed: Iterable[SongState], **values: Any) -> None:
        allowed = tuple(allowed)
        with self._transaction() as db:
            row = db.execute("SELECT state FROM songs WHERE key = ?", (key,)).fetchone()
            if row is None:
                raise JournalError(f"no song with key {key!r} in the journal")
            current = SongState(row["state"])
            if current not in allowed:
                target = values.get("state", current)
                raise JournalError(
                    f"song {key!r}: cannot go from {current.value} to {SongState(target).value}"
                )
            self._set(db, key, **values)

    @staticmethod
    def _set(db: sqlite3.Connection, key: str, **values: Any) -> None:
        values["updated_at"] = _now()
        assignments = ", ".join(f"{name} = :{name}" for name in values)
        db.execute(
            f"UPDATE songs SET {assignments} WHERE key = :key",  # noqa: S608 - names are ours
            # Every text is made storable here: server answers reach the journal through
            # this one place, and a lone surrogate in one must not crash the run.
            {**{k: _storable_value(v) for k, v in values.items()}, "key": key},
        )

    # ------------------------------------------------------------------ the catalog

    def sync_catalog(
        self, rows: Iterable[CatalogRow], files_present: Iterable[str] = ()
    ) -> list[CatalogProblem]:
        """Record the catalog's songs in one transaction; return the conflicts found.

        New keys are added as ``pending`` with a file name allocated for good. A known key
        keeps its state; if its request changed, it is updated when nothing was sent for it
        yet, and reported as a conflict otherwise (the old content may already be paid for).
        On any conflict nothing is changed. Songs of earlier catalogs that are not in this one
        stay in the journal but are left out of the run and the manifest.
        """
        problems: list[CatalogProblem] = []
        on_disk = self._names_on_disk() | {fold_name(name) for name in files_present}
        with self._transaction() as db:
            db.execute("UPDATE songs SET position = NULL")
            for position, row in enumerate(rows):
                problem = self._sync_row(db, position, row, on_disk)
                if problem is not None:
                    problems.append(problem)
            if problems:
                db.execute("ROLLBACK")
        return problems

    def _names_on_disk(self) -> frozenset[str]:
        """The folded names of the files already in the output directory (the journal's)."""
        try:
            with os.scandir(self.path.parent) as listing:
                return frozenset(fold_name(item.name) for item in listing)
        except OSError:  # pragma: no cover - the runner made the directory and can list it
            return frozenset()

    @staticmethod
    def _allocate_name(db: sqlite3.Connection, row: CatalogRow, on_disk: frozenset[str]) -> str:
        """A name no other song has, and no file in the output directory has either unless
        it is the file this song was downloaded to: a file the user put there (or another
        tool wrote) is never replaced, the song gets the next free name instead."""

        def taken(folded: str) -> bool:
            found = db.execute(
                "SELECT 1 FROM songs WHERE file_name_folded = ? AND key != ?", (folded, row.key)
            ).fetchone()
            if found is not None:
                return True
            if folded not in on_disk:
                return False
            own = db.execute(
                "SELECT 1 FROM songs WHERE key = ? AND file_name_folded = ? AND state = ?",
                (row.key, folded, SongState.DOWNLOADED.value),
            ).fetchone()
            return own is None

        return NameAllocator(taken).allocate(row.key, row.title, row.request.format)

    def _sync_row(
        self, db: sqlite3.Connection, position: int, row: CatalogRow, on_disk: frozenset[str]
    ) -> CatalogProblem | None:
        digest = request_hash(row.request)
        existing = db.execute(
            "SELECT state, request_hash, generation_id, file_name FROM songs WHERE key = ?",
            (row.key,),
        ).fetchone()
        request_json = json.dumps(request_to_wire(row.request), ensure_ascii=False)
        if existing is None:
            name = self._allocate_name(db, row, on_disk)
            db.execute(
                "INSERT INTO songs (key, position, title, request_json, request_hash, file_name,"
                " file_name_folded, state, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    _storable_value(v)
                    for v in (
                        row.key,
                        position,
                        row.title,
                        request_json,
                        digest,
                        name,
                        fold_name(name),
                        SongState.PENDING,
                        _now(),
                    )
                ],
            )
            return None
        state = SongState(existing["state"])
        if existing["request_hash"] == digest:
            self._set(db, row.key, position=position, title=row.title)
            return None
        if existing["generation_id"] is None and state in (SongState.PENDING, SongState.FAILED):
            # Nothing was accepted for the old content: take the new one. The file name is
            # re-allocated when the format (the extension) changed.
            name = existing["file_name"]
            extension = "." + row.request.format
            if not name.endswith(extension):
                name = self._allocate_name(db, row, on_disk)
            self._set(
                db,
                row.key,
                position=position,
                title=row.title,
                request_json=request_json,
                request_hash=digest,
                file_name=name,
                file_name_folded=fold_name(name),
                state=SongState.PENDING,
                error=None,
                error_type=None,
            )
            return None
        ident = f", generation {existing['generation_id']}" if existing["generation_id"] else ""
        return CatalogProblem(
            row.line,
            f"song {row.key!r} changed since it was sent (journal state {state.value}{ident}); "
            "restore its content or give it a new key",
            key=row.key,
        )

    # ------------------------------------------------------------------ recovery

    def recover_interrupted(self) -> list[str]:
        """Turn songs left ``submitting`` by a crash into ``ambiguous``; return their keys.

        Their POST may or may not have reached the server, and without the id there is no way
        to ask: they are resubmitted only when the user says so.
        """
        with self._transaction() as db:
            keys = [
                r["key"]
                for r in db.execute(
                    "SELECT key FROM songs WHERE state = 'submitting' ORDER BY position"
                )
            ]
            for key in keys:
                self._set(
                    db,
                    key,
                    state=SongState.AMBIGUOUS,
                    error="interrupted while submitting: the song may or may not have been "
                    "accepted (and charged)",
                    error_type="Interrupted",
                )
        return keys

    def forget_generations(self) -> int:
        """For a server that forgets everything between runs (the in-process emulator): put
        every unfinished song back to ``pending``. Returns how many were reset."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE songs SET state = 'pending', generation_id = NULL, "
                "generation_json = NULL, error = NULL, error_type = NULL, updated_at = ? "
                "WHERE state != 'downloaded'",
                (_now(),),
            )
            return cursor.rowcount

    def adopt(self, key: str, generation_id: str) -> None:
        """Attach a generation id found elsewhere (for example in the account's dashboard) to
        an ``ambiguous`` or ``failed`` song: the run then waits for it instead of paying again.

        A song that already carries ``generation_id`` is left as it is, whatever its state, so
        the same ``--adopt`` command can be run again. A ``submitted`` song (one adopted by
        mistake) takes the new id in place of its old one: nothing is sent either way. An id
        the client could never send back (a control character, a lone surrogate, spaces
        around it) is refused with :class:`JournalError`.
        """
        check_adoptable(key, generation_id)
        found = self._db.execute(
            "SELECT state, generation_id, submitted_at FROM songs WHERE key = ?", (key,)
        ).fetchone()
        if not adoption_changes(key, found, generation_id):
            return
        self._update(
            key,
            (SongState.AMBIGUOUS, SongState.FAILED, SongState.PENDING, SongState.SUBMITTED),
            state=SongState.SUBMITTED,
            generation_id=generation_id,
            generation_json=None,
            error=None,
            error_type=None,
            # Not submitted here: an earlier submission's time would mark this id as paid
            # for by this tool (see adoption_changes), and date it wrongly.
            submitted_at=None,
        )

    # ------------------------------------------------------------------ transitions

    def mark_submitting(self, key: str) -> None:
        """The intent to submit: committed durably before the POST is sent."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT state, submit_attempts FROM songs WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                raise JournalError(f"no song with key {key!r} in the journal")
            if SongState(row["state"]) not in _SUBMITTABLE:
                raise JournalError(f"song {key!r}: cannot go from {row['state']} to submitting")
            self._set(
                db,
                key,
                state=SongState.SUBMITTING,
                submit_attempts=row["submit_attempts"] + 1,
                error=None,
                error_type=None,
            )

    def mark_submitted(self, key: str, generation_id: str) -> None:
        """The POST returned this generation id."""
        self._update(
            key,
            (SongState.SUBMITTING,),
            state=SongState.SUBMITTED,
            generation_id=generation_id,
            submitted_at=_now(),
        )

    def mark_completed(
        self,
        key: str,
        generation: Generation,
        *,
        polls: int = 0,
        generation_seconds: float | None = None,
    ) -> None:
        """The generation completed; it is kept so the song can be downloaded after a crash."""
        info = generation.music_info
        self._update(
            key,
            (SongState.SUBMITTED, SongState.SUBMITTING),
            state=SongState.COMPLETED,
            generation_id=generation.id,
            # ASCII JSON: a lone surrogate in the answer is kept as its \\u escape.
            generation_json=json.dumps(generation_to_wire(generation), ensure_ascii=True),
            polls=polls,
            credits_used=generation.credits_used,
            duration=info.duration if info is not None else None,
            sample_rate=info.sample_rate if info is not None else None,
            generation_seconds=generation_seconds,
            completed_at=_now(),
            error=None,
            error_type=None,
        )

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
        """The file is in place under the song's file name, with this hash and size."""
        values: dict[str, Any] = {
            "state": SongState.DOWNLOADED,
            "sha256": sha256,
            "size": size,
            "tagged": int(tagged),
            "downloaded_at": _now(),
            "error": None,
            "error_type": None,
        }
        if duration is not None:
            values["duration"] = duration
        if sample_rate is not None:
            values["sample_rate"] = sample_rate
        self._update(key, (SongState.COMPLETED,), **values)

    def note_download_attempt(self, key: str) -> None:
        """Count one download attempt (kept across runs)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE songs SET download_attempts = download_attempts + 1 WHERE key = ?", (key,)
            )

    def mark_failed(
        self, key: str, error: BaseException | str, *, generation_id: str | None = None
    ) -> None:
        """A definitive failure: the API rejected the song, the generation ended in error, or
        the request could not even be sent (then from ``pending``)."""
        values: dict[str, Any] = {
            "state": SongState.FAILED,
            "error": _describe(error),
            "error_type": _type_name(error),
        }
        if generation_id is not None:
            values["generation_id"] = generation_id
        self._update(
            key,
            (SongState.PENDING, SongState.SUBMITTING, SongState.SUBMITTED, SongState.COMPLETED),
            **values,
        )

    def mark_ambiguous(self, key: str, error: BaseException | str) -> None:
        """The POST failed in a way that does not tell whether the song was accepted."""
        self._update(
            key,
            (SongState.SUBMITTING,),
            state=SongState.AMBIGUOUS,
            error=_describe(error),
            error_type=_type_name(error),
        )

    def mark_not_sent(self, key: str, state: SongState, error: BaseException | str) -> None:
        """An attempt of a song being sent was refused (a 429) or never arrived: the song
        goes back to ``state``, the one it had before (``pending``, ``failed`` or
        ``ambiguous``: an earlier attempt may still have been accepted) until its next
        attempt leaves."""
        self._update(
            key,
            (SongState.SUBMITTING,),
            state=state,
            error=_describe(error),
            error_type=_type_name(error),
        )

    def mark_pending(self, key: str, error: BaseException | str | None = None) -> None:
        """The song provably never reached the server: it can be sent again safely."""
        self._update(
            key,
            (SongState.SUBMITTING,),
            state=SongState.PENDING,
            error=_describe(error) if error is not None else None,
            error_type=_type_name(error) if error is not None else None,
        )

    def note_error(self, key: str, error: BaseException | str) -> None:
        """Record a problem that leaves the state as it is (a timeout while waiting, a failed
        download): the next run picks the song up where it is."""
        with self._transaction() as db:
            self._set(db, key, error=_describe(error), error_type=_type_name(error))

    # ------------------------------------------------------------------ runs

    def start_run(self) -> int:
        """Record the start of a run; return its id."""
        with self._transaction() as db:
            cursor = db.execute("INSERT INTO runs (started_at) VALUES (?)", (_now(),))
            self._run_id = int(cursor.lastrowid or 0)
        return self._run_id

    def finish_run(self, outcome: str) -> None:
        """Record how the current run ended."""
        if self._run_id is None:
            return
        with self._transaction() as db:
            db.execute(
                "UPDATE runs SET finished_at = ?, outcome = ? WHERE id = ?",
                (_now(), outcome, self._run_id),
            )

    # ------------------------------------------------------------------ reading

    def entry(self, key: str) -> JournalEntry | None:
        """The song ``key``, or ``None``."""
        row = self._db.execute("SELECT * FROM songs WHERE key = ?", (key,)).fetchone()
        return _entry(row, self.path) if row is not None else None

    def entries(
        self, states: Iterable[SongState] | None = None, *, in_catalog: bool = True
    ) -> Iterator[JournalEntry]:
        """Songs in catalog order, optionally only those in ``states``; ``in_catalog=False``
        includes songs of earlier catalogs too. Reads lazily."""
        where = ["position IS NOT NULL"] if in_catalog else []
        params: list[str] = []
        if states is not None:
            chosen = [SongState(s).value for s in states]
            where.append(f"state IN ({', '.join('?' for _ in chosen)})")
            params.extend(chosen)
        # Songs of earlier catalogs have no position: those are ordered by when they came.
        order = "position" if in_catalog else "rowid"
        where.append(f"{order} > ?")
        # Read in pages: a cursor left open while the caller updates songs on the same
        # connection would see a moving target, and fetching everything costs memory.
        last = -1
        while True:
            page = self._db.execute(
                f"SELECT *, rowid AS row_id FROM songs WHERE {' AND '.join(where)} "  # noqa: S608
                f"ORDER BY {order} LIMIT 500",
                [*params, last],
            ).fetchall()
            if not page:
                return
            for row in page:
                yield _entry(row, self.path)
            last = page[-1]["position" if in_catalog else "row_id"]

    def counts(self) -> dict[SongState, int]:
        """How many songs of the current catalog are in each state (every state listed)."""
        counts = dict.fromkeys(SongState, 0)
        for row in self._db.execute(
            "SELECT state, COUNT(*) AS n FROM songs WHERE position IS NOT NULL GROUP BY state"
        ):
            counts[SongState(row["state"])] = row["n"]
        return counts

    def credits_used(self) -> float:
        """Credits reported for the songs of the current catalog."""
        row = self._db.execute(
            "SELECT TOTAL(credits_used) FROM songs WHERE position IS NOT NULL"
        ).fetchone()
        return float(row[0])

    def pragma(self, name: str) -> Any:
        """The value of a SQLite pragma (for tests and diagnostics)."""
        if not name.isidentifier():
            raise ValueError(f"not a pragma name: {name!r}")
        return self._db.execute(f"PRAGMA {name}").fetchone()[0]


def _corrupt(journal: object, detail: str) -> str:
    """The message of a journal whose content cannot be used."""
    return (
        f"{journal} is not a usable journal ({detail}); it may be corrupt. Restore it from a "
        "backup, or move it away to start over (which forgets which songs were already paid "
        "for)"
    )


def _describe(error: BaseException | str) -> str:
    text = error if isinstance(error, str) else (str(error) or type(error).__name__)
    return storable(text)


def _type_name(error: BaseException | str) -> str | None:
    return None if isinstance(error, str) else type(error).__name__


def _entry(row: Any, journal: object = "the journal") -> JournalEntry:
    """The song of one journal row (a sqlite3.Row or a psycopg dict row: both are read by
    column name); content that cannot be parsed is a :class:`JournalError` naming its key."""
    try:
        return _parse_entry(row)
    except (ValueError, KeyError, TypeError, AttributeError, AimlMusicError) as exc:
        # The library's own errors may quote the content (a signed audio URL): name them only.
        reason = type(exc).__name__ if isinstance(exc, AimlMusicError) else str(exc)[:200]
        detail = f"the entry of song {row['key']!r} cannot be read: {reason}"
        raise JournalError(_corrupt(journal, detail)) from None


def _parse_entry(row: Any) -> JournalEntry:
    wire = json.loads(row["request_json"])
    setting = wire.get("audio_setting")
    request = SongRequest(
        prompt=wire["prompt"],
        lyrics=wire["lyrics"],
        audio_setting=audio_setting_from_wire(setting) if setting is not None else None,
        model=wire["model"],
    )
    generation_json = row["generation_json"]
    return JournalEntry(
        key=row["key"],
        title=row["title"],
        request=request,
        request_hash=row["request_hash"],
        file_name=row["file_name"],
        state=SongState(row["state"]),
        position=row["position"],
        generation_id=row["generation_id"],
        generation=structure_generation(json.loads(generation_json)) if generation_json else None,
        error=row["error"],
        error_type=row["error_type"],
        submit_attempts=row["submit_attempts"],
        download_attempts=row["download_attempts"],
        polls=row["polls"],
        credits_used=row["credits_used"],
        duration=row["duration"],
        sample_rate=row["sample_rate"],
        size=row["size"],
        sha256=row["sha256"],
        tagged=None if row["tagged"] is None else bool(row["tagged"]),
        generation_seconds=row["generation_seconds"],
        submitted_at=row["submitted_at"],
        completed_at=row["completed_at"],
        downloaded_at=row["downloaded_at"],
        updated_at=row["updated_at"],
    )
