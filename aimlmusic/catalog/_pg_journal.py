"""The catalog journal in PostgreSQL: one catalog drained by many workers on many hosts.

Same life cycle and guarantees as the SQLite :class:`~aimlmusic.catalog.Journal` (see its
module): ``submitting`` is committed before the POST's first byte, the generation id right
after it returns, an ambiguous song stays ambiguous. On top of that, each song is *claimed*
by one worker at a time (``SELECT ... FOR UPDATE SKIP LOCKED``, so claims never wait for
each other) under a lease (``owner``, ``lease_until``) that the worker's heartbeat renews.
When a worker dies its leases expire and other workers take its songs over: one with a
generation id is adopted (polled and downloaded by id, never submitted again); one it left
``submitting`` becomes ``ambiguous``.

The connection is psycopg's *synchronous* one, on purpose: every call is one short
transaction (a millisecond on a LAN), the runner already calls the SQLite journal the same
way, and psycopg's async connection works on asyncio only, while the library also runs on
trio. Tables are made in the connection's current schema (the first of its
``search_path``), so one database can hold several catalogs in several schemas.

Lease times are seconds since the epoch from PostgreSQL's clock, so hosts whose clocks
disagree still agree on leases; ``now`` replaces that clock (tests, virtual time).
"""

from __future__ import annotations

import functools
import json
import math
import os
import secrets
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs

from .._converter import generation_to_wire, request_to_wire
from .._errors import ConfigurationError
from .._models import Generation
from ._journal import (
    SCHEMA_VERSION,
    TIMING_ESTIMATE_NAME,
    JournalEntry,
    JournalError,
    SongState,
    _describe,
    _entry,
    _now,
    _storable_value,
    _type_name,
    adoption_changes,
    check_adoptable,
    request_hash,
)
from ._names import NameAllocator, fold_name
from ._rows import CatalogProblem, CatalogRow

if TYPE_CHECKING:
    import psycopg

__all__ = ["DEFAULT_LEASE_SECONDS", "LeaseLost", "PgJournal", "new_worker_id", "shown_url"]

#: How long a claim lasts without renewal: long enough that a busy event loop or a slow
#: database never loses a live worker's songs (the heartbeat renews at a third of it), short
#: enough that a dead worker's songs are taken over within a minute.
DEFAULT_LEASE_SECONDS = 60.0

#: Rows read per page by :meth:`PgJournal.entries` (bounded memory for huge catalogs).
_PAGE = 500

#: Query parameters of a connection URL that carry a secret.
_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})

_S = SongState

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _database_errors(
    method: Callable[Concatenate[PgJournal, _P], _R],
) -> Callable[Concatenate[PgJournal, _P], _R]:
    """A database failure in ``method`` comes out as :class:`JournalError` naming the
    journal without its password, so the command line reports it in one line."""

    @functools.wraps(method)
    def wrapper(self: PgJournal, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except self._db_error as exc:
            raise self._failed(exc) from None

    return wrapper


_SCHEMA = """
CREATE TABLE IF NOT EXISTS aimlmusic_meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS aimlmusic_songs (
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
    credits_used DOUBLE PRECISION,
    duration DOUBLE PRECISION,
    sample_rate INTEGER,
    size BIGINT,
    sha256 TEXT,
    tagged INTEGER,
    generation_seconds DOUBLE PRECISION,
    submitted_at TEXT,
    completed_at TEXT,
    downloaded_at TEXT,
    updated_at TEXT NOT NULL,
    owner TEXT,
    lease_until DOUBLE PRECISION,
    last_claimed_by TEXT,
    downloaded_by TEXT,
    account TEXT,
    seq BIGSERIAL
);
-- ALTER TABLE and CREATE INDEX lock their table even when IF NOT EXISTS finds nothing to
-- do: every worker that opened the journal locked out the others' claims, and deadlocked
-- with a transaction holding one table and wanting the other. So the catalog is asked first
-- (in this schema: another on the search_path may hold a journal too).
DO $$ BEGIN
    -- Journals made before songs recorded their account.
    IF NOT EXISTS (SELECT FROM information_schema.columns WHERE table_schema = current_schema()
                   AND table_name = 'aimlmusic_songs' AND column_name = 'account') THEN
        ALTER TABLE aimlmusic_songs ADD COLUMN account TEXT;
    END IF;
    IF to_regclass(format('%I.aimlmusic_songs_by_position', current_schema())) IS NULL THEN
        CREATE INDEX aimlmusic_songs_by_position ON aimlmusic_songs (position);
    END IF;
    IF to_regclass(format('%I.aimlmusic_songs_by_owner', current_schema())) IS NULL THEN
        CREATE INDEX aimlmusic_songs_by_owner ON aimlmusic_songs (owner);
    END IF;
    -- Claims walk the catalog in order past finished songs: index only the unfinished ones,
    -- so a claim stays cheap however much of a huge catalog is done.
    IF to_regclass(format('%I.aimlmusic_songs_unfinished', current_schema())) IS NULL THEN
        CREATE INDEX aimlmusic_songs_unfinished ON aimlmusic_songs (position)
            WHERE state <> 'downloaded';
    END IF;
    -- Every claim first looks for songs a dead worker left submitting.
    IF to_regclass(format('%I.aimlmusic_songs_submitting', current_schema())) IS NULL THEN
        CREATE INDEX aimlmusic_songs_submitting ON aimlmusic_songs (key)
            WHERE state = 'submitting';
    END IF;
END $$;
-- The lease clock: the injected time when there is one (tests), else the server's, so hosts
-- whose clocks disagree still agree on leases.
CREATE OR REPLACE FUNCTION aimlmusic_now(injected DOUBLE PRECISION) RETURNS DOUBLE PRECISION
    LANGUAGE sql VOLATILE AS
    'SELECT COALESCE(injected, extract(epoch FROM clock_timestamp())::float8)';
CREATE TABLE IF NOT EXISTS aimlmusic_runs (
    id BIGSERIAL PRIMARY KEY,
    worker TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    outcome TEXT
);
-- A run is live while its heartbeat keeps this ahead of the lease clock (NULL once it ends):
-- a worker holding no lease for a moment still owns its partial directory.
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM information_schema.columns WHERE table_schema = current_schema()
                   AND table_name = 'aimlmusic_runs' AND column_name = 'alive_until') THEN
        ALTER TABLE aimlmusic_runs ADD COLUMN alive_until DOUBLE PRECISION;
    END IF;
END $$;
"""

#: States a claim may pick whatever the options (the others need one).
_ALWAYS_CLAIMABLE = (_S.PENDING.value, _S.SUBMITTED.value, _S.COMPLETED.value)


@attrs.frozen
class _Rewrite:
    """An unsent song the catalog gave new content: ``values`` to write, if the row is still
    in ``read_state`` with ``read_hash`` and no generation id (catalog ``line``)."""

    key: str
    line: int
    read_state: SongState
    read_hash: str
    values: dict[str, Any]


#: States of a song not yet on its way to the API.
_UNSENT_STATES = frozenset({SongState.PENDING.value, SongState.FAILED.value})


def _changed_since_sent(
    line: int, key: str, state: SongState, generation_id: str | None
) -> CatalogProblem:
    """The conflict of a song whose content changed after it was (or may have been) sent."""
    ident = f", generation {generation_id}" if generation_id else ""
    return CatalogProblem(
        line,
        f"song {key!r} changed since it was sent (journal state {state.value}{ident}); "
        "restore its content or give it a new key",
        key=key,
    )


class LeaseLost(JournalError):
    """Another worker took a song over because this worker's lease on it ran out (it stalled
    longer than the lease): this worker must not drive the song any more."""


#: The URL schemes libpq reads.
_URL_SCHEMES = frozenset({"postgresql", "postgres"})

#: Shown for a URL that cannot be shown without risking its password.
_UNSHOWABLE_URL = "<a PostgreSQL URL>"


def new_worker_id() -> str:
    """A worker's name: host, process id and a random part (a restarted process on the same
    host, even with the same pid, is a new worker)."""
    host = socket.gethostname().split(".")[0] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


def shown_url(url: str) -> str:
    """``url`` fit to show: without its password (in the authority or the query)."""
    if _userinfo_misread(url):
        return _UNSHOWABLE_URL
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
        user = parts.username
        query = [(k, v) for k, v in parse_qsl(parts.query) if k.lower() not in _SECRET_PARAMETERS]
    except ValueError:
        return _UNSHOWABLE_URL
    netloc = f"{user}@{host}" if user else host
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), ""))


def _require_url(url: str) -> None:
    """Refuse anything but a ``postgresql://`` URL: libpq also reads ``key=value`` strings,
    whose password nothing here would know to keep out of logs, reprs and messages (the
    message never quotes what was given)."""
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        scheme = ""
    if scheme not in _URL_SCHEMES:
        raise ConfigurationError(
            "the journal must be given as a postgresql:// URL "
            "(postgresql://user:password@host/database); libpq's key=value form is not accepted"
        )
    if _userinfo_misread(url):
        raise ConfigurationError(
            "the journal URL's user name or password holds a '?' or '#' that is not "
            "percent-encoded: part of the password could be shown in messages and logs. "
            "Percent-encode it ('?' as %3F, '#' as %23), or keep the password in ~/.pgpass "
            "or PGPASSWORD"
        )


def _userinfo_misread(url: str) -> bool:
    """Whether Python's URL parsing misreads the ``user:password@`` part of ``url``: libpq
    ends it only at the first ``@`` (met before any ``/``), ``urlsplit`` already at a ``?``
    or ``#``, so it would show (the first part of) an unencoded password and not know to
    scrub it."""
    rest = url.partition("://")[2]
    ends = [i for i in (rest.find("@"), rest.find("/")) if i >= 0]
    if not ends or rest[min(ends)] != "@":
        return False  # no user:password part
    return any(c in rest[: min(ends)] for c in "?#")


def _secrets_of(url: str) -> list[str]:
    """The secret strings of ``url``, to scrub from error messages: as Python's URL parsing
    reads them, and as libpq does (decoded; the one it sends)."""
    found: list[str] = []
    try:
        parts = urlsplit(url)
        if parts.password:
            found.append(parts.password)
        found += [v for k, v in parse_qsl(parts.query) if k.lower() in _SECRET_PARAMETERS and v]
    except ValueError:
        pass
    found += [v for k, v in _libpq_parameters(url).items() if k in _SECRET_PARAMETERS and v]
    return found


def _libpq_parameters(url: str) -> dict[str, Any]:
    """``url`` as libpq reads it (empty when psycopg is missing or libpq cannot read it)."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        return conninfo_to_dict(url)
    except Exception:  # no psycopg, or a URL libpq refuses: connecting says so, scrubbed
        return {}


class PgJournal:
    """The journal of one catalog in PostgreSQL, as seen by one worker.

    ``url`` is a libpq URL (``postgresql://user:password@host/db``); ``endpoint`` the API
    server its generation ids belong to (``None`` opens an existing journal for reading);
    ``worker_id`` names this worker (default :func:`new_worker_id`); ``lease_seconds`` is how
    long a claim lasts unrenewed; ``now`` replaces the database clock for leases (seconds);
    ``account`` names the API account this worker submits with (a hash of its key, never
    the key): generation ids are visible only to the account that made them, so a worker
    adopts only submitted songs of its own account (``None``: any).
    """

    def __init__(
        self,
        url: str,
        *,
        endpoint: str | None,
        worker_id: str | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        now: Callable[[], float] | None = None,
        account: str | None = None,
    ) -> None:
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be positive, got {lease_seconds}")
        _require_url(url)
        self._shown = shown_url(url)
        self._secrets = _secrets_of(url)
        self._worker_id = worker_id or new_worker_id()
        self._lease_seconds = float(lease_seconds)
        self._now = now
        self._account = account
        self._run_id: int | None = None
        try:
            import psycopg
            from psycopg.rows import dict_row
        except ImportError as exc:
            raise ConfigurationError(
                "a PostgreSQL journal needs psycopg: pip install 'aimlmusic[postgres]'"
            ) from exc
        self._rollback = psycopg.Rollback
        self._db_error: type[Exception] = psycopg.Error
        try:
            self._db: psycopg.Connection[dict[str, Any]] = psycopg.connect(
                url, autocommit=True, row_factory=dict_row
            )
        except psycopg.Error as exc:
            raise JournalError(
                f"cannot open the journal {self._shown}: {self._clean(exc)}"
            ) from None
        try:
            with self._db.transaction():
                self._lock()
                self._db.execute(_SCHEMA)
                self._check_meta(endpoint)
        except psycopg.Error as exc:
            self._db.close()
            raise JournalError(
                f"cannot use the journal {self._shown}: {self._clean(exc)}"
            ) from None
        except BaseException:
            self._db.close()
            raise

    # ------------------------------------------------------------------ identity

    @property
    def location(self) -> str:
        """The database URL without its password."""
        return self._shown

    @property
    def worker_id(self) -> str:
        """This worker's name in the journal."""
        return self._worker_id

    @property
    def lease_seconds(self) -> float:
        """How long a claim lasts without a renewal."""
        return self._lease_seconds

    def close(self) -> None:
        """Close the connection (claims stay until released or expired)."""
        self._db.close()

    def __enter__(self) -> PgJournal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PgJournal({self._shown!r}, worker={self._worker_id!r})"

    # ------------------------------------------------------------------ plumbing

    def _failed(self, error: BaseException) -> JournalError:
        """The :class:`JournalError` for a database failure: the journal named without its
        password, so the command line reports it in one line."""
        return JournalError(f"the journal {self._shown} failed: {self._clean(error)}")

    def _clean(self, error: BaseException) -> str:
        text = str(error).strip() or type(error).__name__
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        return text

    def _lock(self) -> None:
        """Serialise schema creation and catalog syncs of workers starting together (a
        transaction-scoped advisory lock keyed by the current schema)."""
        self._db.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.aimlmusic'))")

    def _params(self, **values: Any) -> dict[str, Any]:
        values["now"] = self._now() if self._now is not None else None
        values["me"] = self._worker_id
        values["lease"] = self._lease_seconds
        values["account"] = self._account
        return values

    def _check_meta(self, endpoint: str | None) -> None:
        rows = {
            r["name"]: r["value"]
            for r in self._db.execute("SELECT name, value FROM aimlmusic_meta").fetchall()
        }
        if not rows:
            if endpoint is None:
                raise JournalError(f"{self._shown} holds no aimlmusic journal")
            with self._db.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO aimlmusic_meta (name, value) VALUES (%s, %s)",
                    [
                        ("schema_version", str(SCHEMA_VERSION)),
                        ("endpoint", endpoint),
                        ("created_at", _now()),
                    ],
                )
            return
        version = int(rows.get("schema_version", "0"))
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"{self._shown} was written by a newer aimlmusic (journal schema {version}); "
                "upgrade aimlmusic to resume it"
            )
        recorded = rows.get("endpoint")
        if endpoint is not None and recorded != endpoint:
            raise JournalError(
                f"the journal {self._shown} belongs to runs against {recorded!r}, not "
                f"{endpoint!r}; use another database or schema (generation ids are only "
                "valid where they were made)"
            )

    @property
    def endpoint(self) -> str:
        """The server this journal's generation ids belong to."""
        row = self._db.execute(
            "SELECT value FROM aimlmusic_meta WHERE name = 'endpoint'"
        ).fetchone()
        return str(row["value"]) if row is not None else ""

    @_database_errors
    def timing_estimate(self) -> str | None:
        """The learned timing a worker saved (:mod:`aimlmusic.catalog._timing`), or None."""
        row = self._db.execute(
            "SELECT value FROM aimlmusic_meta WHERE name = %s", (TIMING_ESTIMATE_NAME,)
        ).fetchone()
        return None if row is None else str(row["value"])

    @_database_errors
    def save_timing_estimate(self, data: str) -> None:
        """Keep ``data`` as the learned timing, replacing the one saved before (by any
        worker: the latest is the freshest)."""
        self._db.execute(
            "INSERT INTO aimlmusic_meta (name, value) VALUES (%s, %s) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (TIMING_ESTIMATE_NAME, data),
        )

    def _update(
        self,
        key: str,
        allowed: Iterable[SongState],
        *,
        release: bool = False,
        claimed: bool = True,
        **values: Any,
    ) -> None:
        """Move song ``key`` from one of the ``allowed`` states, setting ``values``; only
        while the song is this worker's (see :meth:`_taken_over`). ``claimed=False`` for a
        change not made under a claim (an adoption): then only a live owner refuses it."""
        allowed = tuple(allowed)
        with self._db.transaction():
            row = self._db.execute(
                "SELECT state, owner, last_claimed_by,"
                " lease_until >= aimlmusic_now(%(now)s) AS alive FROM aimlmusic_songs"
                " WHERE key = %(key)s FOR UPDATE",
                self._params(key=key),
            ).fetchone()
            if row is None:
                raise JournalError(f"no song with key {key!r} in the journal")
            if self._taken_over(row, claimed=claimed):
                # Taken over while this worker stalled past its lease: the song is the other
                # worker's now (perhaps finished by it), whatever this one was about to record.
                raise LeaseLost(
                    f"song {key!r}: another worker took it over (this worker's lease ran out)"
                )
            current = SongState(row["state"])
            if current not in allowed:
                target = values.get("state", current)
                raise JournalError(
                    f"song {key!r}: cannot go from {current.value} to {SongState(target).value}"
                )
            if release:
                values["owner"] = None
                values["lease_until"] = None
            self._set(key, **values)

    def _taken_over(self, row: dict[str, Any], *, claimed: bool) -> bool:
        """Whether another worker has the song of ``row``: it holds it, or (for a change
        made under a claim) it claimed the song after this worker did and has let it go
        since (finished, failed, or given back: then ``owner`` is empty, but the last claim,
        which a claim always records, is not this worker's)."""
        if row["owner"] is not None:
            # A change not made under a claim (an adoption) minds only a live lease: one a
            # worker left by dying holds nothing.
            return bool(row["owner"] != self._worker_id and (claimed or row["alive"]))
        last = row["last_claimed_by"]
        return claimed and last is not None and last != self._worker_id

    def _set(self, key: str, **values: Any) -> None:
        values["updated_at"] = _now()
        assignments = ", ".join(f"{name} = %({name})s" for name in values)
        self._db.execute(
            f"UPDATE aimlmusic_songs SET {assignments} WHERE key = %(key)s",  # noqa: S608
            {
                **{k: _storable_value(v) for k, v in values.items()},
                "key": key,
            },
        )

    # ------------------------------------------------------------------ the catalog

    @_database_errors
    def sync_catalog(
        self, rows: Iterable[CatalogRow], files_present: Iterable[str] = ()
    ) -> list[CatalogProblem]:
        """Record the catalog's songs in one transaction; return the conflicts found.

        As :meth:`Journal.sync_catalog`. Workers starting together all sync the same
        catalog: the transaction holds an advisory lock, inserts are ``ON CONFLICT DO
        NOTHING``, and file names are allocated against every name already given out, so
        none collide, and against ``files_present`` (the files already in this worker's
        output directory, which a new song must not replace). On any conflict nothing is
        changed.
        """
        problems: list[CatalogProblem] = []
        with self._db.transaction() as tx:
            self._lock()
            known = {
                r["key"]: r
                for r in self._db.execute(
                    "SELECT key, position, title, state, request_hash, generation_id, file_name "
                    "FROM aimlmusic_songs"
                )
            }
            folded = {fold_name(r["file_name"]) for r in known.values()}
            folded |= {fold_name(name) for name in files_present}  # never given to a new song
            inserts: list[tuple[Any, ...]] = []
            updates: list[dict[str, Any]] = []
            rewrites: list[_Rewrite] = []
            seen: set[str] = set()
            for position, row in enumerate(rows):
                seen.add(row.key)
                problem = self._sync_row(position, row, known, folded, inserts, updates, rewrites)
                if problem is not None:
                    problems.append(problem)
            if not problems:
                problems = self._apply_sync(seen, inserts, updates, rewrites, known)
            if problems:
                # Rolled back (and swallowed) by the transaction block: nothing changes.
                raise self._rollback(tx)
        return problems

    def _sync_row(
        self,
        position: int,
        row: CatalogRow,
        known: dict[str, dict[str, Any]],
        folded: set[str],
        inserts: list[tuple[Any, ...]],
        updates: list[dict[str, Any]],
        rewrites: list[_Rewrite],
    ) -> CatalogProblem | None:
        digest = request_hash(row.request)
        existing = known.get(row.key)
        request_json = json.dumps(request_to_wire(row.request), ensure_ascii=False)
        if existing is None:
            name = NameAllocator(folded.__contains__).allocate(
                row.key, row.title, row.request.format
            )
            folded.add(fold_name(name))
            inserts.append(
                (row.key, position, row.title, request_json, digest, name, fold_name(name), _now())
            )
            return None
        state = SongState(existing["state"])
        if existing["request_hash"] == digest:
            if existing["position"] != position or existing["title"] != row.title:
                updates.append({"key": row.key, "position": position, "title": row.title})
            return None
        if existing["generation_id"] is None and state in (_S.PENDING, _S.FAILED):
            name = existing["file_name"]
            if not name.endswith("." + row.request.format):
                folded.discard(fold_name(name))
                name = NameAllocator(folded.__contains__).allocate(
                    row.key, row.title, row.request.format
                )
                folded.add(fold_name(name))
            rewrites.append(
                _Rewrite(
                    key=row.key,
                    line=row.line,
                    read_state=state,
                    read_hash=existing["request_hash"],
                    values={
                        "position": position,
                        "title": row.title,
                        "request_json": request_json,
                        "request_hash": digest,
                        "file_name": name,
                        "file_name_folded": fold_name(name),
                        "state": _S.PENDING,
                        "error": None,
                        "error_type": None,
                    },
                )
            )
            return None
        return _changed_since_sent(row.line, row.key, state, existing["generation_id"])

    def _apply_sync(
        self,
        seen: set[str],
        inserts: list[tuple[Any, ...]],
        updates: list[dict[str, Any]],
        rewrites: list[_Rewrite],
        known: dict[str, dict[str, Any]],
    ) -> list[CatalogProblem]:
        """Write what the sync decided; return the songs sent meanwhile (then the caller
        rolls everything back, as for any conflict)."""
        taken = [p for p in map(self._rewrite, rewrites) if p is not None]
        if taken:
            return taken
        gone = [k for k, r in known.items() if k not in seen and r["position"] is not None]
        if gone:
            self._db.execute(
                "UPDATE aimlmusic_songs SET position = NULL WHERE key = ANY(%s)", (gone,)
            )
        # Positions are unique per catalog only in meaning (no constraint), so the order
        # of these updates does not matter.
        for values in updates:
            key = values.pop("key")
            self._set(key, **values)
        if inserts:
            with self._db.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO aimlmusic_songs (key, position, title, request_json, "
                    "request_hash, file_name, file_name_folded, state, updated_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, 'pending', %s) "
                    "ON CONFLICT DO NOTHING",
                    inserts,
                )
        return []

    def _rewrite(self, rewrite: _Rewrite) -> CatalogProblem | None:
        """Give an unsent song its new content, only if it is still as the sync read it: the
        rows are read unlocked (locking them would stall every worker's transitions for the
        whole sync), so another worker may have sent it since, and a song sent must never be
        made ``pending`` again (the next claim would pay for it twice). Returns the problem
        when it was sent meanwhile."""
        values = {k: _storable_value(v) for k, v in rewrite.values.items()}
        values["updated_at"] = _now()
        assignments = ", ".join(f"{name} = %({name})s" for name in values)
        # Nor while another worker holds it under a live lease: it claimed the song's content
        # as it was, and may be sending it now (the journal would record the new content for
        # a generation of the old). This worker syncs before it claims anything.
        cursor = self._db.execute(
            f"UPDATE aimlmusic_songs SET {assignments} WHERE key = %(key)s"  # noqa: S608
            " AND state = %(read_state)s AND request_hash = %(read_hash)s"
            " AND generation_id IS NULL"
            " AND (owner IS NULL OR owner = %(me)s OR lease_until < aimlmusic_now(%(now)s))",
            self._params(
                **values,
                key=rewrite.key,
                read_state=rewrite.read_state.value,
                read_hash=rewrite.read_hash,
            ),
        )
        if cursor.rowcount == 1:
            return None
        now = self._db.execute(
            "SELECT state, generation_id, owner FROM aimlmusic_songs WHERE key = %s",
            (rewrite.key,),
        ).fetchone()
        if now is not None and now["generation_id"] is None and now["state"] in _UNSENT_STATES:
            return CatalogProblem(
                rewrite.line,
                f"song {rewrite.key!r} changed while worker {now['owner']!r} holds it to send "
                "(as it was): let that worker finish it, or give the song a new key",
                key=rewrite.key,
            )
        state = SongState(now["state"]) if now is not None else rewrite.read_state
        ident = now["generation_id"] if now is not None else None
        return _changed_since_sent(rewrite.line, rewrite.key, state, ident)

    # ------------------------------------------------------------------ recovery

    @_database_errors
    def recover_interrupted(self) -> list[str]:
        """Turn songs left ``submitting`` by a worker whose lease expired (it died, or it is
        gone) into ``ambiguous``; return their keys. Songs a live worker is submitting are
        left alone."""
        with self._db.transaction():
            return self._recover_interrupted()

    def _recover_interrupted(self) -> list[str]:
        rows = self._db.execute(
            "UPDATE aimlmusic_songs SET state = 'ambiguous', owner = NULL, lease_until = NULL, "
            "error = %(error)s, error_type = 'Interrupted', updated_at = %(at)s "
            "WHERE state = 'submitting' AND (owner IS NULL OR lease_until < "
            "aimlmusic_now(%(now)s)) RETURNING key, position",
            self._params(
                error="interrupted while submitting: the song may or may not have been "
                "accepted (and charged)",
                at=_now(),
            ),
        ).fetchall()
        return [
            r["key"] for r in sorted(rows, key=lambda r: (r["position"] is None, r["position"]))
        ]

    @_database_errors
    def forget_generations(self) -> int:
        """Put every unfinished song back to ``pending`` (for a server that forgets everything
        between runs); returns how many were reset."""
        with self._db.transaction():
            cursor = self._db.execute(
                "UPDATE aimlmusic_songs SET state = 'pending', generation_id = NULL, "
                "generation_json = NULL, error = NULL, error_type = NULL, updated_at = %s "
                "WHERE state != 'downloaded'",
                (_now(),),
            )
            return cursor.rowcount

    @_database_errors
    def adopt(self, key: str, generation_id: str) -> None:
        """Attach a generation id found elsewhere to an ``ambiguous``, ``failed`` or
        ``pending`` song: it is then waited for instead of paid for again.

        As :meth:`Journal.adopt`: the id the song already carries changes nothing, a
        ``submitted`` song (adopted by mistake) takes the new id unless a worker holds it,
        and an id the client could never send back is refused."""
        check_adoptable(key, generation_id)
        found = self._db.execute(
            "SELECT state, generation_id, submitted_at, owner,"
            " lease_until >= aimlmusic_now(%(now)s) AS alive FROM aimlmusic_songs"
            " WHERE key = %(key)s",
            self._params(key=key),
        ).fetchone()
        if not adoption_changes(key, found, generation_id):
            return
        if found is not None and found["owner"] not in (None, self._worker_id) and found["alive"]:
            raise JournalError(
                f"song {key!r} is being followed by worker {found['owner']!r} now: adopt "
                "an id for it once that worker's run ends"
            )
        self._update(
            key,
            (_S.AMBIGUOUS, _S.FAILED, _S.PENDING, _S.SUBMITTED),
            claimed=False,  # the user's own act, on a song another worker may have let go
            state=_S.SUBMITTED,
            generation_id=generation_id,
            generation_json=None,
            error=None,
            error_type=None,
            last_claimed_by=None,
            account=self._account,
            submitted_at=None,  # not submitted here (see adoption_changes)
            owner=None,  # a lease left by a worker that died no longer holds it
            lease_until=None,
        )

    # ------------------------------------------------------------------ claims

    @_database_errors
    def claim(self, *, resubmit_ambiguous: bool, retry_failed: bool) -> JournalEntry | None:
        """Claim the next song (in catalog order) this worker may drive, or ``None``.

        Songs left ``submitting`` under an expired lease become ``ambiguous`` first. A song
        is claimable when no live lease holds it and this worker did not already have it in
        this run: ``pending``, ``submitted`` (adopted by id), ``completed`` (downloaded),
        ``failed`` without an id (rejected outright: nothing was paid), and with the options
        ``ambiguous`` and every ``failed`` song. Rows another transaction is claiming are
        skipped, never waited for.
        """
        states = list(_ALWAYS_CLAIMABLE)
        if resubmit_ambiguous:
            states.append(_S.AMBIGUOUS.value)
        with self._db.transaction():
            self._recover_interrupted()
            row = self._db.execute(
                "WITH chosen AS ("
                " SELECT key FROM aimlmusic_songs"
                " WHERE position IS NOT NULL"
                " AND (state = ANY(%(states)s)"
                " OR (state = 'failed' AND (generation_id IS NULL OR %(retry_failed)s)))"
                " AND (owner IS NULL OR lease_until < aimlmusic_now(%(now)s))"
                " AND last_claimed_by IS DISTINCT FROM %(me)s"
                # Another account's generation id cannot be polled with this key.
                " AND (state != 'submitted' OR account IS NULL"
                " OR %(account)s::text IS NULL OR account = %(account)s)"
                " ORDER BY position LIMIT 1 FOR UPDATE SKIP LOCKED)"
                " UPDATE aimlmusic_songs AS s SET owner = %(me)s, last_claimed_by = %(me)s,"
                " lease_until = aimlmusic_now(%(now)s) + %(lease)s"
                " FROM chosen WHERE s.key = chosen.key RETURNING s.*",
                self._params(states=states, retry_failed=retry_failed),
            ).fetchone()
        return _entry(row) if row is not None else None

    @_database_errors
    def renew(self) -> int:
        """Extend every lease this worker holds, and its run's liveness, by ``lease_seconds``
        from now; return how many leases."""
        with self._db.transaction():
            cursor = self._db.execute(
                "UPDATE aimlmusic_songs SET lease_until = aimlmusic_now(%(now)s) + %(lease)s"
                " WHERE owner = %(me)s",
                self._params(),
            )
            if self._run_id is not None:
                self._db.execute(
                    "UPDATE aimlmusic_runs SET alive_until = aimlmusic_now(%(now)s) + %(lease)s"
                    " WHERE id = %(run)s AND finished_at IS NULL",
                    self._params(run=self._run_id),
                )
        return cursor.rowcount

    @_database_errors
    def release_all(self) -> int:
        """Give up every claim this worker holds (at the end of its run)."""
        cursor = self._db.execute(
            "UPDATE aimlmusic_songs SET owner = NULL, lease_until = NULL WHERE owner = %(me)s",
            self._params(),
        )
        return cursor.rowcount

    @_database_errors
    def others_working(self) -> int:
        """How many songs of the catalog other workers hold under live leases."""
        row = self._db.execute(
            "SELECT COUNT(*) AS n FROM aimlmusic_songs WHERE owner IS NOT NULL"
            " AND owner != %(me)s AND lease_until >= aimlmusic_now(%(now)s)",
            self._params(),
        ).fetchone()
        return int(row["n"]) if row is not None else 0

    @_database_errors
    def workers(self) -> list[dict[str, Any]]:
        """One dict per worker seen in the journal: ``worker``, ``held`` (state -> songs it
        holds), ``alive``/``expired`` (leases), ``downloaded`` (songs it downloaded), its
        last run's ``started_at``, ``finished_at``, ``outcome``, and ``running`` (that run has
        not ended and its heartbeat is not overdue). Sorted by worker."""
        report: dict[str, dict[str, Any]] = {}

        def worker(name: str) -> dict[str, Any]:
            return report.setdefault(
                name,
                {
                    "worker": name,
                    "held": {},
                    "alive": 0,
                    "expired": 0,
                    "downloaded": 0,
                    "started_at": None,
                    "finished_at": None,
                    "outcome": None,
                    "running": False,
                },
            )

        for r in self._db.execute(
            "SELECT owner, state, COUNT(*) AS n,"
            " COUNT(*) FILTER (WHERE lease_until >= aimlmusic_now(%(now)s)) AS alive"
            " FROM aimlmusic_songs WHERE owner IS NOT NULL AND position IS NOT NULL"
            " GROUP BY owner, state",
            self._params(),
        ):
            w = worker(r["owner"])
            w["held"][r["state"]] = int(r["n"])
            w["alive"] += int(r["alive"])
            w["expired"] += int(r["n"]) - int(r["alive"])
        for r in self._db.execute(
            "SELECT downloaded_by, COUNT(*) AS n FROM aimlmusic_songs"
            " WHERE downloaded_by IS NOT NULL AND position IS NOT NULL GROUP BY downloaded_by"
        ):
            worker(r["downloaded_by"])["downloaded"] = int(r["n"])
        for r in self._db.execute(
            "SELECT DISTINCT ON (worker) worker, started_at, finished_at, outcome,"
            " COALESCE(alive_until >= aimlmusic_now(%(now)s), FALSE) AS running"
            " FROM aimlmusic_runs ORDER BY worker, id DESC",
            self._params(),
        ):
            w = worker(r["worker"])
            w["started_at"], w["finished_at"], w["outcome"] = (
                r["started_at"],
                r["finished_at"],
                r["outcome"],
            )
            w["running"] = bool(r["running"])
        return [report[name] for name in sorted(report)]

    # ------------------------------------------------------------------ transitions

    @_database_errors
    def mark_submitting(self, key: str) -> None:
        """The intent to submit, committed before the POST is sent; only by the worker that
        holds the song's live lease (so two workers can never both send it)."""
        with self._db.transaction():
            row = self._db.execute(
                "SELECT state, submit_attempts, owner, aimlmusic_now(%(now)s) + %(lease)s AS until"
                " FROM aimlmusic_songs WHERE key = %(key)s FOR UPDATE",
                self._params(key=key),
            ).fetchone()
            if row is None:
                raise JournalError(f"no song with key {key!r} in the journal")
            # Still the owner (locked, so nobody can claim it meanwhile): nobody took it over,
            # even if the lease ran out while this worker stalled; the lease is renewed. Asked
            # first: a song taken over may be further on by now (sent, even finished).
            if row["owner"] != self._worker_id:
                raise LeaseLost(
                    f"song {key!r}: another worker took it over (this worker's lease ran "
                    "out); not submitting it"
                )
            if SongState(row["state"]) not in (_S.PENDING, _S.FAILED, _S.AMBIGUOUS):
                raise JournalError(f"song {key!r}: cannot go from {row['state']} to submitting")
            self._set(
                key,
                state=_S.SUBMITTING,
                lease_until=row["until"],
                account=self._account,
                submit_attempts=row["submit_attempts"] + 1,
                error=None,
                error_type=None,
            )

    def mark_submitted(self, key: str, generation_id: str) -> None:
        """The POST returned this generation id (a database error comes out as
        :class:`JournalError`, so the caller can still show the id to the user).

        A song this worker left ``submitting`` may meanwhile have been recovered as
        ``ambiguous`` by another worker's claim (this one stalled past its lease with the
        POST on its way); if nobody took it since, the id is recorded all the same and the
        song is this worker's again: a real id is what keeps it from being paid twice."""
        try:
            if not self._record_recovered_id(key, generation_id):
                self._update(
                    key,
                    (_S.SUBMITTING,),
                    state=_S.SUBMITTED,
                    generation_id=generation_id,
                    submitted_at=_now(),
                )
        except self._db_error as exc:
            raise JournalError(
                f"cannot write the journal {self._shown}: {self._clean(exc)}"
            ) from None

    def _record_recovered_id(self, key: str, generation_id: str) -> bool:
        """Record ``generation_id`` for an ``ambiguous`` song that has none and that no other
        worker holds (one recovered as interrupted); it becomes ``submitted`` under this
        worker's lease. False when the song is not such a one."""
        at = _now()
        cursor = self._db.execute(
            "UPDATE aimlmusic_songs SET state = 'submitted', generation_id = %(id)s,"
            " submitted_at = %(at)s, updated_at = %(at)s, error = NULL, error_type = NULL,"
            " account = %(account)s, owner = %(me)s, last_claimed_by = %(me)s,"
            " lease_until = aimlmusic_now(%(now)s) + %(lease)s"
            " WHERE key = %(key)s AND state = 'ambiguous' AND generation_id IS NULL"
            " AND (owner IS NULL OR owner = %(me)s)",
            self._params(key=key, id=generation_id, at=at),
        )
        return cursor.rowcount == 1

    @_database_errors
    def mark_completed(
        self,
        key: str,
        generation: Generation,
        *,
        polls: int = 0,
        generation_seconds: float | None = None,
    ) -> None:
        """The generation completed; it is kept so any worker can download the song."""
        info = generation.music_info
        self._update(
            key,
            (_S.SUBMITTED, _S.SUBMITTING),
            state=_S.COMPLETED,
            generation_id=generation.id,
            # ASCII: a lone surrogate from the server round-trips as its \u escape.
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

    @_database_errors
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
        """The file is in place (in this worker's output directory)."""
        values: dict[str, Any] = {
            "state": _S.DOWNLOADED,
            "sha256": sha256,
            "size": size,
            "tagged": int(tagged),
            "downloaded_at": _now(),
            "downloaded_by": self._worker_id,
            "error": None,
            "error_type": None,
        }
        if duration is not None:
            values["duration"] = duration
        if sample_rate is not None:
            values["sample_rate"] = sample_rate
        self._update(key, (_S.COMPLETED,), release=True, **values)

    @_database_errors
    def note_download_attempt(self, key: str) -> None:
        """Count one download attempt."""
        self._db.execute(
            "UPDATE aimlmusic_songs SET download_attempts = download_attempts + 1 WHERE key = %s",
            (key,),
        )

    @_database_errors
    def mark_failed(
        self, key: str, error: BaseException | str, *, generation_id: str | None = None
    ) -> None:
        """A definitive failure; the song's claim is released."""
        values: dict[str, Any] = {
            "state": _S.FAILED,
            "error": _describe(error),
            "error_type": _type_name(error),
        }
        if generation_id is not None:
            values["generation_id"] = generation_id
        self._update(
            key,
            (_S.PENDING, _S.SUBMITTING, _S.SUBMITTED, _S.COMPLETED),
            release=True,
            **values,
        )

    @_database_errors
    def mark_ambiguous(self, key: str, error: BaseException | str) -> None:
        """The POST failed in a way that does not tell whether the song was accepted."""
        self._update(
            key,
            (_S.SUBMITTING,),
            release=True,
            state=_S.AMBIGUOUS,
            error=_describe(error),
            error_type=_type_name(error),
        )

    @_database_errors
    def mark_not_sent(self, key: str, state: SongState, error: BaseException | str) -> None:
        """An attempt of a song being sent was refused (a 429) or never arrived: the song
        goes back to ``state``, the one it had before (``pending``, ``failed`` or
        ``ambiguous``: an earlier attempt may still have been accepted) until its next
        attempt leaves; it stays this worker's."""
        self._update(
            key,
            (_S.SUBMITTING,),
            state=state,
            error=_describe(error),
            error_type=_type_name(error),
        )

    @_database_errors
    def mark_pending(self, key: str, error: BaseException | str | None = None) -> None:
        """The song provably never reached the server; its claim is released."""
        self._update(
            key,
            (_S.SUBMITTING,),
            release=True,
            state=_S.PENDING,
            error=_describe(error) if error is not None else None,
            error_type=_type_name(error) if error is not None else None,
        )

    @_database_errors
    def note_error(self, key: str, error: BaseException | str) -> None:
        """Record a problem that leaves the state as it is and release the claim: another
        worker (or the next run) picks the song up where it is."""
        with self._db.transaction():
            self._db.execute(
                "UPDATE aimlmusic_songs SET error = %(error)s, error_type = %(type)s,"
                " owner = NULL, lease_until = NULL, updated_at = %(at)s"
                " WHERE key = %(key)s AND (owner = %(me)s OR (owner IS NULL"
                # Not a song another worker claimed since (and perhaps finished).
                " AND (last_claimed_by IS NULL OR last_claimed_by = %(me)s)))",
                self._params(key=key, error=_describe(error), type=_type_name(error), at=_now()),
            )

    # ------------------------------------------------------------------ runs

    @_database_errors
    def start_run(self) -> int:
        """Record the start of this worker's run; return its id.

        The songs this worker claimed in an earlier run become claimable by it again: "at
        most once per run" is per run, and a worker restarted under the same ``worker_id``
        must pick up what its last run left (songs past their deadline, failed downloads,
        or everything, if it was killed). Two runs cannot hold songs under one id (they
        would renew and release each other's leases), so while an earlier run of this id
        is live (its heartbeat current: it still runs, or was killed less than a lease ago)
        this one is refused with a :class:`JournalError` saying how long to wait."""
        with self._db.transaction():
            # The schema's lock first: a worker opening the journal meanwhile runs the schema
            # script under it, which locks the songs table, then the runs one; this reads
            # runs, then writes songs, and the two orders together deadlock.
            self._lock()
            live = self._db.execute(
                "SELECT MAX(alive_until) - aimlmusic_now(%(now)s) AS left_s FROM aimlmusic_runs"
                " WHERE worker = %(me)s AND finished_at IS NULL"
                " AND alive_until >= aimlmusic_now(%(now)s)",
                self._params(),
            ).fetchone()
            if live is not None and live["left_s"] is not None:
                raise JournalError(
                    f"an earlier run of worker {self._worker_id!r} is live: it still runs, or "
                    f"was killed less than a lease ago (its heartbeat lasts "
                    f"{math.ceil(live['left_s'])} s more). Start this one under another "
                    "worker id, or again once that time has passed, when its songs are free"
                )
            self._db.execute(
                "UPDATE aimlmusic_songs SET last_claimed_by = NULL WHERE last_claimed_by = %(me)s",
                self._params(),
            )
            row = self._db.execute(
                "INSERT INTO aimlmusic_runs (worker, started_at, alive_until)"
                " VALUES (%(me)s, %(started)s, aimlmusic_now(%(now)s) + %(lease)s) RETURNING id",
                self._params(started=_now()),
            ).fetchone()
        self._run_id = int(row["id"]) if row is not None else 0
        return self._run_id

    @_database_errors
    def finish_run(self, outcome: str) -> None:
        """Record how this worker's run ended."""
        if self._run_id is None:
            return
        self._db.execute(
            "UPDATE aimlmusic_runs SET finished_at = %s, outcome = %s, alive_until = NULL"
            " WHERE id = %s",
            (_now(), outcome, self._run_id),
        )

    # ------------------------------------------------------------------ reading

    @_database_errors
    def entry(self, key: str) -> JournalEntry | None:
        """The song ``key``, or ``None``."""
        row = self._db.execute("SELECT * FROM aimlmusic_songs WHERE key = %s", (key,)).fetchone()
        return _entry(row) if row is not None else None

    def entries(
        self, states: Iterable[SongState] | None = None, *, in_catalog: bool = True
    ) -> Iterator[JournalEntry]:
        """Songs in catalog order, optionally only those in ``states``; ``in_catalog=False``
        includes songs of earlier catalogs too. Reads in pages."""
        where = ["position IS NOT NULL"] if in_catalog else []
        params: dict[str, Any] = {}
        if states is not None:
            params["states"] = [SongState(s).value for s in states]
            where.append("state = ANY(%(states)s)")
        order = "position" if in_catalog else "seq"
        where.append(f"{order} > %(last)s")
        last = -1
        while True:
            try:
                page = self._db.execute(
                    f"SELECT * FROM aimlmusic_songs WHERE {' AND '.join(where)} "  # noqa: S608
                    f"ORDER BY {order} LIMIT {_PAGE}",
                    {**params, "last": last},
                ).fetchall()
            except self._db_error as exc:  # a generator: _database_errors cannot wrap it
                raise self._failed(exc) from None
            if not page:
                return
            for row in page:
                yield _entry(row)
            last = page[-1][order]

    @_database_errors
    def counts(self) -> dict[SongState, int]:
        """How many songs of the current catalog are in each state (every state listed)."""
        counts = dict.fromkeys(SongState, 0)
        for row in self._db.execute(
            "SELECT state, COUNT(*) AS n FROM aimlmusic_songs WHERE position IS NOT NULL "
            "GROUP BY state"
        ):
            counts[SongState(row["state"])] = int(row["n"])
        return counts

    @_database_errors
    def credits_used(self) -> float:
        """Credits reported for the songs of the current catalog."""
        row = self._db.execute(
            "SELECT COALESCE(SUM(credits_used), 0) AS total FROM aimlmusic_songs "
            "WHERE position IS NOT NULL"
        ).fetchone()
        return float(row["total"]) if row is not None else 0.0
