"""``run_catalog``: a catalog file in, audio files, a journal and a manifest out.

The order of work, and why:

1. Read and validate the whole catalog; any problem raises :class:`CatalogError` before the
   output directory is touched, so an invalid catalog spends nothing.
2. Open the journal (exclusive: one run per directory), record the catalog's songs, turn songs
   a crash left ``submitting`` into ``ambiguous``.
3. Songs with a generation id are never resubmitted: ``completed`` ones are downloaded,
   ``submitted`` ones are waited for (``client.wait``) and then downloaded.
4. Everything else that may be sent goes through ``client.generate_many``, fed by an async
   generator. A song is committed ``submitting`` from the scheduler's ``sending`` event, as
   its POST's first bytes go out, not before: a request that never left (no connection, DNS
   failure, cancelled before the first byte) leaves its song as it was, safe to send again.
   A shared semaphore keeps resumed and new songs together within ``max_in_flight``. The
   generation id is committed from the scheduler's ``submitted`` event, as soon as the POST
   returns.
4b. The run stops early, with :class:`RunStopped`, when going on cannot help: the API refused
   the key (401/403), or :data:`MAX_CONNECT_FAILURES` requests in a row never reached it.
   New songs stop at once; submissions already sent are let finish, then the rest is
   cancelled, so nothing sent is torn and nothing unsent is marked.
5. Each finished song is downloaded into a hidden partial directory, tagged, hashed and renamed into
   place; the journal and the manifest follow every step.

With a shared (PostgreSQL) journal the run is one worker among several: steps 3 and 4 become
one loop that claims songs one at a time under a lease (renewed by a heartbeat) as slots free
up, adopting those with an id and submitting the rest; it waits while other live workers hold
songs and ends when none do. Each worker downloads into a partial directory of its own and
writes the whole manifest from the journal.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shlex
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.to_thread

from .._errors import (
    AimlMusicError,
    AmbiguousSubmissionError,
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    ConfigurationError,
    GenerationFailedError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    SendingRefused,
    ServerError,
    SharedStateError,
)
from .._events import (
    BatchEvents,
    RequestRetried,
    RequestSending,
    RequestThrottled,
    SongSubmitted,
)
from .._landing import LEFT_BEHIND_KEPT
from .._limits import DEFAULT_SONG_DEADLINE
from .._models import Generation, SongResult
from ._journal import (
    JOURNAL_NAME,
    Journal,
    JournalEntry,
    JournalError,
    SongState,
    check_adoptable,
)
from ._journal_api import CatalogJournal, SharedJournal
from ._manifest import MANIFEST_NAME, ManifestWriter
from ._names import is_inside
from ._pg_journal import LeaseLost
from ._progress import CatalogEvent, EventKind, RunProgress, RunSummary
from ._rows import CatalogError, CatalogProblem, CatalogRow, iter_catalog
from ._store import (
    clear_dead_partials,
    clear_partial,
    finish_download,
    part_path,
    partial_dir,
    remove_partial,
)
from ._tags import mutagen_available
from ._timing import JournalTiming

if TYPE_CHECKING:
    from .._client import AsyncMusicClient

__all__ = [
    "EPHEMERAL_ENDPOINT",
    "MAX_CONNECT_FAILURES",
    "RunStopped",
    "read_summary",
    "run_catalog",
]

logger = logging.getLogger("aimlmusic.catalog")

#: The endpoint recorded in a journal made against a server that forgets everything when the
#: process ends (the in-process emulator).
EPHEMERAL_ENDPOINT = "in-process emulator"

#: Real seconds between ``tick`` events.
TICK_SECONDS = 0.5

#: Keys named in the refusal to run beside a manifest the journal does not know.
MANIFEST_KEYS_SHOWN = 5

#: Songs downloaded at once by default.
DOWNLOAD_CONCURRENCY = 4

#: Requests in a row that never reached the API (connection refused, DNS failure, connect
#: timeout) with none getting through in between, before the run stops: the API is
#: unreachable, and retrying every song until its deadline would only waste the user's time.
MAX_CONNECT_FAILURES = 5

#: Seconds (on the client's clock) a worker of a shared journal waits before looking again
#: when nothing is claimable but other live workers still hold songs: any of them may die,
#: and its songs must then be taken over.
DEFAULT_RECHECK_SECONDS = 5.0

#: Renewals per lease: a worker renews its leases at a third of their length, so two
#: renewals can be missed (a stalled event loop, a slow database) before one expires.
RENEWALS_PER_LEASE = 3

#: Errors that mean the output directory takes no more: full, over quota, read-only.
_DISK_ERRNOS = frozenset(
    code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EROFS) if code
)

_S = SongState

#: What a journal raises when its storage fails (its database gone, its disk full): the
#: SQLite journal lets sqlite3's own errors through, the PostgreSQL one wraps psycopg's.
_JOURNAL_ERRORS = (JournalError, sqlite3.Error)


def adopt_option(key: str, generation_id: str) -> str:
    """The ``--adopt`` option that records ``generation_id`` for song ``key``, quoted for a
    POSIX shell (a key may hold spaces, quotes or ``=``), ready to paste."""
    return f"--adopt {shlex.quote(f'{key}={generation_id}')}"


class RunStopped(AimlMusicError):
    """The run stopped early because going on could not help; the journal is consistent and
    songs that were never sent are still ``pending``.

    ``reason`` is ``"auth"`` (the API refused the key: 401 or 403), ``"unreachable"``
    (:data:`MAX_CONNECT_FAILURES` requests in a row never reached the API) or ``"disk"`` (the
    output directory cannot take more: full, over quota, read-only; every generation id
    received is in the journal) or ``"lease"`` (a worker of a shared journal stalled longer
    than a lease and another worker took over a song it was about to send; that POST was
    cancelled before its first byte) or ``"journal"`` (the journal could not record a song as
    being sent: a full disk, a database gone; that POST was cancelled before its first byte)
    or ``"shared"`` (the Redis sharing the account's request budget, ``shared_url``, failed:
    no new song was sent, those already sent finished); ``cause`` is the error that decided
    it and ``summary`` how the directory stands.
    """

    def __init__(self, message: str, *, reason: str, cause: Exception, summary: RunSummary) -> None:
        self.reason = reason
        self.cause = cause
        self.summary = summary
        super().__init__(message)


async def run_catalog(
    client: AsyncMusicClient,
    catalog: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    max_in_flight: int | None = None,
    deadline: float | None = DEFAULT_SONG_DEADLINE,
    resubmit_ambiguous: bool = False,
    retry_failed: bool = False,
    adopt: Mapping[str, str] | None = None,
    tag_mp3: bool = True,
    download_concurrency: int = DOWNLOAD_CONCURRENCY,
    server_is_ephemeral: bool = False,
    on_event: Callable[[CatalogEvent], None] | None = None,
    journal_url: str | None = None,
    worker_id: str | None = None,
    lease_seconds: float | None = None,
    lease_clock: Callable[[], float] | None = None,
    recheck_seconds: float = DEFAULT_RECHECK_SECONDS,
) -> RunSummary:
    """Generate every song of ``catalog`` into ``output_dir``; safe to interrupt and rerun.

    ``max_in_flight`` caps generations running at once (default: the client's
    ``limits.max_in_flight``); ``deadline`` is each song's time limit in API seconds (a song
    that misses it stays ``submitted`` and is picked up again by the next run).
    ``resubmit_ambiguous`` sends again songs whose earlier submission may or may not have been
    accepted (this can pay twice); ``retry_failed`` sends again songs whose generation failed;
    ``adopt`` maps keys of such songs to generation ids found elsewhere, so the run waits for
    those instead. ``tag_mp3`` writes ID3 tags (needs mutagen, in the ``cli`` extra).
    ``server_is_ephemeral`` says the server forgets generations between runs (the in-process
    emulator): unfinished songs then start over. ``on_event`` receives progress.

    ``journal_url`` (``postgresql://...``) keeps the journal in PostgreSQL instead of the
    output directory, so several workers (processes, hosts) drain one catalog: each claims
    songs under a lease of ``lease_seconds`` that its heartbeat renews, named ``worker_id``
    (default: host, pid and a random part); ``lease_clock`` replaces the database's clock
    for leases (tests). A worker goes on until no song is left it may take, waiting
    ``recheck_seconds`` between looks while other live workers hold songs (one of them may
    die and leave its songs to take over).

    Raises :class:`CatalogError` (listing every problem) when the catalog is invalid or
    conflicts with the journal, and :class:`JournalError` when the directory belongs to another
    run or server; nothing is sent in either case.
    """
    if download_concurrency < 1:
        raise ValueError(f"download_concurrency must be at least 1, got {download_concurrency}")
    if tag_mp3 and not mutagen_available():
        raise ConfigurationError(
            "tagging MP3s needs mutagen: pip install 'aimlmusic[cli]', or pass tag_mp3=False"
        )
    if recheck_seconds <= 0:
        raise ValueError(f"recheck_seconds must be positive, got {recheck_seconds}")
    if journal_url is not None and server_is_ephemeral:
        raise ConfigurationError(
            "a shared (PostgreSQL) journal needs a server that keeps its generations; the "
            "in-process emulator forgets them when the process ends: serve one with "
            "`aimlmusic emulator` and pass its --base-url"
        )
    out = Path(output_dir)

    def open_journal(endpoint: str) -> CatalogJournal:
        if journal_url is None:
            return Journal.in_directory(out, endpoint=endpoint)
        from ._pg_journal import DEFAULT_LEASE_SECONDS, PgJournal

        return PgJournal(
            journal_url,
            endpoint=endpoint,
            worker_id=worker_id,
            lease_seconds=lease_seconds or DEFAULT_LEASE_SECONDS,
            now=lease_clock,
            account=client.key_fingerprint,
        )

    journal = _prepare(
        Path(catalog),
        out,
        endpoint=EPHEMERAL_ENDPOINT if server_is_ephemeral else _endpoint(client.base_url),
        forget_generations=server_is_ephemeral,
        adopt=adopt or {},
        open_journal=open_journal,
    )
    try:
        run = _Run(
            client,
            journal,
            out,
            max_in_flight=max_in_flight or client.limits.max_in_flight,
            deadline=deadline,
            resubmit_ambiguous=resubmit_ambiguous,
            retry_failed=retry_failed,
            tag=tag_mp3,
            download_concurrency=download_concurrency,
            on_event=on_event,
            recheck_seconds=recheck_seconds,
        )
        return await run.execute()
    finally:
        journal.close()


def _endpoint(base_url: str) -> str:
    """The base URL as recorded in the journal: without any user:password part, host in
    lower case, no trailing slash (so equivalent spellings match)."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port is not None else "")
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme.lower(), netloc, path, parts.query, parts.fragment))


def _prepare(
    catalog_path: Path,
    out: Path,
    *,
    endpoint: str,
    forget_generations: bool,
    adopt: Mapping[str, str],
    open_journal: Callable[[str], CatalogJournal],
) -> CatalogJournal:
    """Validate the catalog, then open the journal and bring it up to date (blocking I/O, all
    of it quick). Nothing touches the output directory unless the catalog is valid."""
    problems = [p for p in iter_catalog(catalog_path) if isinstance(p, CatalogProblem)]
    if problems:
        raise CatalogError(catalog_path, problems)
    for key, generation_id in adopt.items():
        check_adoptable(key, generation_id)
    try:
        out.mkdir(parents=True, exist_ok=True)
        _check_writable(out)
    except OSError as exc:
        # A file in the way, /proc, a read-only parent, another user's directory.
        raise JournalError(
            f"cannot use {out} as the output directory: {exc.strerror or exc}"
        ) from exc
    journal = open_journal(endpoint)
    try:
        _check_manifest(out, journal)
        _load(journal, catalog_path, out)
        if forget_generations:
            journal.forget_generations()
        for key in journal.recover_interrupted():
            logger.warning("song %r was interrupted while submitting: now ambiguous", key)
        for key, generation_id in adopt.items():
            entry = journal.entry(key)
            journal.adopt(key, generation_id)
            if (
                entry is not None
                and entry.state is _S.SUBMITTED
                and entry.generation_id not in (None, generation_id)
            ):
                # Kept in the log: the id replaced was itself adopted, maybe by mistake.
                logger.warning(
                    "song %r: adopted generation %s in place of %s",
                    key,
                    generation_id,
                    entry.generation_id,
                )
    except BaseException:
        journal.close()
        raise
    return journal


def _check_manifest(out: Path, journal: CatalogJournal) -> None:
    """Refuse a directory whose manifest lists generated songs the journal does not know: the
    journal was emptied or replaced, and running would pay for those songs again and
    overwrite their files."""
    path = out / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return
    except OSError as exc:
        raise JournalError(f"cannot read {path}: {exc.strerror or exc}") from exc
    unknown: list[str] = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # not ours (or torn): only what we can read can be checked
        if not isinstance(record, dict):
            continue
        key = record.get("key")
        if not isinstance(key, str) or not (record.get("generation_id") or record.get("file")):
            continue  # never sent: nothing paid that could be paid again
        if journal.entry(key) is None:
            unknown.append(key)
    if unknown:
        shown = ", ".join(repr(k) for k in unknown[:MANIFEST_KEYS_SHOWN])
        more = (
            f" and {len(unknown) - MANIFEST_KEYS_SHOWN} more"
            if len(unknown) > MANIFEST_KEYS_SHOWN
            else ""
        )
        raise JournalError(
            f"{path} lists {len(unknown)} generated song(s) that the journal {journal.location} "
            f"does not know ({shown}{more}): the journal was emptied or replaced. Running "
            "would pay for them again and overwrite their files; restore the journal, or use "
            "a new output directory"
        )


def _check_writable(directory: Path) -> None:
    """Raise OSError unless a file can be made in ``directory`` (the one reliable test:
    permissions, ACLs, read-only mounts, another user's directory)."""
    probe = tempfile.NamedTemporaryFile(dir=directory, prefix=".aimlmusic-probe-")  # noqa: SIM115
    probe.close()


def read_summary(
    output_dir: str | os.PathLike[str], *, journal_url: str | None = None
) -> RunSummary:
    """How the output directory of a catalog run stands, read from its journal (the one in
    the directory, or the PostgreSQL one at ``journal_url``).

    Opens the SQLite journal briefly (so not while a run is using the directory).
    """
    out = Path(output_dir)
    if journal_url is not None:
        from ._pg_journal import PgJournal

        with PgJournal(journal_url, endpoint=None) as shared:
            return _summary(shared, out, interrupted=False)
    path = out / JOURNAL_NAME
    if not path.exists():
        raise FileNotFoundError(f"no journal in {out}")
    with Journal(path, endpoint=None) as journal:
        return _summary(journal, out, interrupted=False)


def _load(journal: CatalogJournal, catalog_path: Path, out: Path) -> None:
    """Record the (already validated) catalog; a problem now means the file changed meanwhile."""
    late: list[CatalogProblem] = []

    def rows() -> Iterator[CatalogRow]:
        for item in iter_catalog(catalog_path):
            if isinstance(item, CatalogRow):
                yield item
            else:
                late.append(item)

    with os.scandir(out) as listing:  # a user's file there is never given to a new song
        present = [item.name for item in listing]
    conflicts = journal.sync_catalog(rows(), present)
    if late or conflicts:
        raise CatalogError(catalog_path, sorted([*late, *conflicts], key=lambda p: p.line))


def _summary(journal: CatalogJournal, out: Path, *, interrupted: bool) -> RunSummary:
    failed: list[str] = []
    ambiguous: list[str] = []
    unfinished: list[str] = []
    wanted = (_S.FAILED, _S.AMBIGUOUS, _S.SUBMITTING, _S.SUBMITTED, _S.COMPLETED)
    for entry in journal.entries(wanted):
        if entry.state is _S.FAILED:
            failed.append(entry.key)
        elif entry.state in (_S.AMBIGUOUS, _S.SUBMITTING):
            ambiguous.append(entry.key)
        else:
            unfinished.append(entry.key)
    counts = journal.counts()
    return RunSummary(
        output_dir=out,
        journal_path=journal.location,
        manifest_path=out / MANIFEST_NAME,
        total=sum(counts.values()),
        counts=counts,
        credits_used=journal.credits_used(),
        failed=tuple(failed),
        ambiguous=tuple(ambiguous),
        unfinished=tuple(unfinished),
        interrupted=interrupted,
    )


def _never_accepted(error: BaseException) -> bool:
    """True when a submission error proves no generation was created (so nothing was paid).

    The transport raises :class:`AmbiguousSubmissionError` whenever a POST may have landed;
    an error status other than 5xx is the server refusing, and a connection error means the
    request never got through. Anything else is treated as ambiguous.
    """
    if isinstance(error, AmbiguousSubmissionError | ServerError):
        return False
    return isinstance(error, APIStatusError | APIConnectionError)


class _SchedulerEvents(BatchEvents):
    """The hooks given to ``generate_many``: commit each generation id as soon as its POST
    returns, and report throttling and retries."""

    def __init__(self, run: _Run) -> None:
        self._run = run

    def on_sending(self, event: RequestSending) -> None:
        self._run.record_sending(event.key, event.kind)

    def on_submitted(self, event: SongSubmitted) -> None:
        self._run.record_submitted(event.key, event.generation_id)

    def on_throttled(self, event: RequestThrottled) -> None:
        self._run.note_throttled()
        if event.kind == "submit":
            self._run.attempt_refused(event.key, "answered 429 Too Many Requests")

    def on_retried(self, event: RequestRetried) -> None:
        self._run.note_failed_attempt(event.key, event.kind, event.error)
        entry = self._run.journal.entry(event.key)
        self._run.emit(
            "retry",
            entry=entry,
            state=entry.state if entry is not None else None,
            message=f"{event.kind} attempt {event.attempt} failed ({event.error}); "
            f"retrying in {event.delay:.1f} s",
        )


class _Run:
    """The state of one run: journal, counters, and the tasks that move songs along."""

    def __init__(
        self,
        client: AsyncMusicClient,
        journal: CatalogJournal,
        out: Path,
        *,
        max_in_flight: int,
        deadline: float | None,
        resubmit_ambiguous: bool,
        retry_failed: bool,
        tag: bool,
        download_concurrency: int,
        on_event: Callable[[CatalogEvent], None] | None,
        recheck_seconds: float = DEFAULT_RECHECK_SECONDS,
    ) -> None:
        self.client = client
        self.journal = journal
        #: The same journal when several workers share it: songs are then claimed one by one.
        self.shared = journal if isinstance(journal, SharedJournal) else None
        self.recheck_seconds = recheck_seconds
        self.out = out
        # Workers sharing one output directory each download into a partial directory of
        # their own: clearing it at start must never throw away another worker's download.
        self.worker = self.shared.worker_id if self.shared is not None else None
        self.deadline = deadline
        self.resubmit_ambiguous = resubmit_ambiguous
        self.retry_failed = retry_failed
        self.tag = tag
        self.max_in_flight = max_in_flight
        self.on_event = on_event
        # A shared journal's worker writes the manifest's temporary file in its own partial
        # directory: killed mid-write, it leaves nothing the others do not throw away.
        self.manifest = ManifestWriter(
            out / MANIFEST_NAME,
            journal,
            temp_dir=partial_dir(out, self.worker) if self.worker is not None else None,
        )
        # Resumed waits and new submissions share the account's concurrent generations.
        self.slots = anyio.Semaphore(max_in_flight)
        self.download_limiter = anyio.CapacityLimiter(download_concurrency)
        #: The learned timing, kept in the journal from one run (or worker) to the next.
        self.timing = JournalTiming(journal, client.poll_policy)
        self.counts = journal.counts()
        if self.shared is not None:
            # Songs other workers are submitting are theirs: this run waits for none of its
            # own to be quiet before it may stop.
            self.counts[_S.SUBMITTING] = 0
        self.total = sum(self.counts.values())
        self.credits = journal.credits_used()
        self.todo = 0
        self.done = 0
        self.started = time.monotonic()
        self.was_throttled = False
        self.throttled_responses = 0
        #: Keys sent (or sent again, or resumed) in this run: never sent by it again.
        self.attempted: set[str] = set()
        #: Set once the songs to resume are listed: submissions wait for it.
        self.resume_listed = anyio.Event()
        self._hook_failed = False
        #: Keys handed to the scheduler, and the state each had then (it keeps it until its
        #: POST actually leaves).
        self.handed: dict[str, SongState] = {}
        #: (key, kind) of requests whose current attempt left (cleared when it fails).
        self._left: set[tuple[str, str]] = set()
        #: Songs this run recorded as ``submitting``: their latest attempt may be on its way
        #: (sent, not yet answered). A song is ``submitting`` only then: a 429, or an attempt
        #: that never arrived, makes it ``pending`` again until its next attempt leaves. Cut,
        #: such a POST would be ambiguous, so a stopping run waits for them.
        self._posting: set[str] = set()
        #: Requests in a row that never reached the API.
        self.connect_failures = 0
        #: Why the run stops early, once decided.
        self.stop_reason: tuple[str, str, Exception] | None = None
        self._work: anyio.CancelScope | None = None

    # ------------------------------------------------------------------ reporting

    def progress(self) -> RunProgress:
        return RunProgress(
            total=self.total,
            counts=self.counts,
            todo=self.todo,
            done=self.done,
            credits_used=self.credits,
            throttled=self.was_throttled or self._throttled_now(),
            throttled_responses=self.throttled_responses,
            elapsed=time.monotonic() - self.started,
        )

    def _throttled_now(self) -> bool:
        budget = getattr(self.client, "budget", None)
        paused_until = getattr(budget, "paused_until", None)
        if not isinstance(paused_until, float | int):
            return False
        return bool(paused_until > self.client.clock.now())

    def note_throttled(self) -> None:
        """The API answered 429: show it until the budget's pause is over."""
        self.throttled_responses += 1
        if not self.was_throttled:
            self.was_throttled = True
            self.emit("throttled", message="the API asked us to slow down")

    def emit(
        self,
        kind: EventKind,
        *,
        entry: JournalEntry | None = None,
        state: SongState | None = None,
        message: str | None = None,
    ) -> None:
        if self.on_event is None:
            return
        event = CatalogEvent(
            kind=kind,
            progress=self.progress(),
            key=entry.key if entry is not None else None,
            title=entry.title if entry is not None else None,
            state=state,
            message=message,
        )
        try:
            self.on_event(event)
        except Exception:
            # A broken display must not break the run (nor lose the journal's consistency).
            if not self._hook_failed:
                logger.exception("the on_event callback raised; further errors are not logged")
                self._hook_failed = True

    def _moved(
        self, entry: JournalEntry, old: SongState, new: SongState, message: str | None = None
    ) -> None:
        self.counts[old] -= 1
        self.counts[new] += 1
        if old is _S.SUBMITTING:
            self._cancel_when_quiet()
        if new in (_S.DOWNLOADED, _S.FAILED, _S.AMBIGUOUS):
            self.done += 1
            self._manifest_changed()
        self.emit("state", entry=entry, state=new, message=message)

    def _stuck(self, entry: JournalEntry, state: SongState, error: BaseException) -> None:
        """The song cannot go further in this run but keeps its state (a deadline, an
        outage, a failed download): the next run picks it up where it is."""
        self.journal.note_error(entry.key, error)
        self.done += 1
        self._manifest_changed()
        self.emit("state", entry=entry, state=state, message=str(error))

    # ------------------------------------------------------------------ the run

    async def execute(self) -> RunSummary:
        # The run is recorded first: from then on other workers of a shared journal see it
        # live and leave its partial directory alone.
        self.journal.start_run()
        self.timing.adopt()
        clear_partial(self.out, worker=self.worker)
        self._clear_dead_partials()
        to_submit = self._submittable_count()
        to_resume = self.counts[_S.SUBMITTED] + self.counts[_S.COMPLETED]
        self.todo = to_submit + to_resume
        self.manifest.flush()
        self.emit("started")
        outcome = "stopped"
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._ticker)
                if self.shared is not None:
                    tg.start_soon(self._heartbeat, self.shared)
                async with anyio.create_task_group() as work:
                    self._work = work.cancel_scope
                    if self.shared is None:
                        work.start_soon(self._resume_all, work)
                    else:
                        self.resume_listed.set()  # resumed songs are claimed one by one
                    work.start_soon(self._submit_all, work)
                tg.cancel_scope.cancel()  # stops the ticker
            outcome = "finished" if self.stop_reason is None else "stopped early"
        finally:
            # Synchronous and quick: runs even while the run is being cancelled.
            if self.shared is not None:
                try:
                    self.shared.release_all()  # other workers need not wait for the leases
                except JournalError as exc:  # the database gone: the leases expire instead
                    logger.warning("could not give this worker's songs back: %s", exc)
            self._flush_manifest()
            try:
                self.timing.save(force=True)
            except Exception:  # optional: must never keep the run from being recorded as ended
                logger.exception("could not save the timing estimate")
            # Only now: until the run is recorded as ended, other workers leave this worker's
            # partial directory (the manifest's temporary file) alone.
            self._finish_run(outcome)
            self._clear_dead_partials()
            remove_partial(self.out, worker=self.worker)
        summary = self._final_summary()
        self.emit("finished")
        if self.stop_reason is not None:
            reason, message, cause = self.stop_reason
            raise RunStopped(message, reason=reason, cause=cause, summary=summary)
        return summary

    def _flush_manifest(self) -> None:
        """Write the manifest a last time; a journal that cannot be read for it (its
        database gone) stops the run, reason "journal", instead of ending it in a traceback."""
        try:
            self.manifest.flush(force=True)
        except OSError as exc:
            self._cannot_write(exc)  # the journal has it all; the next run rewrites it
        except _JOURNAL_ERRORS as exc:
            self._journal_lost_at_end(f"cannot read the journal to write the manifest ({exc})", exc)

    def _finish_run(self, outcome: str) -> None:
        """Record the end of the run. Unrecorded (the database gone), a shared journal's run
        still ends for the others once its heartbeat is a lease overdue."""
        try:
            self.journal.finish_run(outcome)
        except _JOURNAL_ERRORS as exc:
            self._journal_lost_at_end(f"cannot record the end of this run ({exc})", exc)

    def _final_summary(self) -> RunSummary:
        """How the run ends, read from the journal; when it cannot be read, from what this
        run counted (its lists of keys needing attention then empty)."""
        try:
            return _summary(self.journal, self.out, interrupted=False)
        except _JOURNAL_ERRORS as exc:
            self._journal_lost_at_end(f"cannot read the journal for the summary ({exc})", exc)
        return RunSummary(
            output_dir=self.out,
            journal_path=self.journal.location,
            manifest_path=self.out / MANIFEST_NAME,
            total=self.total,
            counts=self.counts,
            credits_used=self.credits,
        )

    def _journal_lost_at_end(self, message: str, error: Exception) -> None:
        """The journal failed once the work was over: the run ends as stopped for "journal"
        (unless it already stopped for another reason). Nothing is left to cancel."""
        logger.warning("%s", message)
        if self.stop_reason is None:
            self.stop_reason = ("journal", message, error)

    def _clear_dead_partials(self) -> None:
        """A shared journal's worker throws away the partial downloads of workers that are
        gone (killed: neither a live lease nor a run whose heartbeat is current), at its start
        and its end: the last worker to finish leaves no half-written file behind in a shared
        output directory. A live worker between songs holds no lease but owns its directory."""
        if self.shared is None or self.worker is None:
            return
        try:
            live = [w["worker"] for w in self.shared.workers() if w["alive"] > 0 or w["running"]]
        except JournalError as exc:  # the database is gone: leave them for the next run
            logger.debug("could not list live workers: %s", exc)
            return
        for name in clear_dead_partials(self.out, worker=self.worker, live=live):
            logger.debug("removed the partial directory %s of a worker that is gone", name)

    # ------------------------------------------------------------------ stopping early

    def _manifest_changed(self) -> None:
        try:
            self.manifest.changed()
        except OSError as exc:
            self._cannot_write(exc)
        except _JOURNAL_ERRORS as exc:  # its database gone: a song's move cannot be shown
            self.stop("journal", f"cannot read the journal to write the manifest ({exc})", exc)

    def _cannot_write(self, error: OSError) -> None:
        """Writing into the output directory failed. A full (or read-only) disk stops the
        run: every id received is already in the journal, and going on would fail song after
        song. Anything else is that song's problem (logged; the next run tries again)."""
        if error.errno in _DISK_ERRNOS:
            self.stop(
                "disk",
                f"cannot write in {self.out}: {error.strerror or error}; every generation id "
                "received is in the journal, so nothing is paid again once there is room",
                error,
            )
        else:
            logger.warning("cannot write in %s: %s", self.out, error)

    def _stopping(self) -> bool:
        return self.stop_reason is not None

    def stop(self, reason: str, message: str, cause: Exception) -> None:
        """Stop the run early: no new song is sent; once no submission is on its way the
        rest (waits, retries of unsent requests) is cancelled."""
        if self.stop_reason is not None:
            return
        self.stop_reason = (reason, message, cause)
        logger.info("stopping the run: %s", message)  # the caller reports RunStopped
        self._cancel_when_quiet()

    def _cancel_when_quiet(self) -> None:
        # A submission whose bytes left is let finish: cut, it would be ambiguous.
        if self.stop_reason is not None and not self._posting and self._work is not None:
            self._work.cancel()

    def _submission_ended(self, key: str) -> None:
        """``key``'s POST has ended (an id, or a final failure): the run may stop without
        waiting for it."""
        if key in self._posting:
            self._posting.discard(key)
            self._cancel_when_quiet()

    def attempt_refused(self, key: str, reason: str) -> None:
        """``key``'s POST was answered 429, or its attempt never arrived: this attempt was
        not accepted, so the song goes back to the state it was handed over in (``pending``;
        or ``ambiguous`` or ``failed``, whose earlier attempt may have been) until its next
        attempt leaves and is recorded, its lease checked, anew. Interrupted in a 429
        pause, a pending song is not made ambiguous; and a worker that stalled past its
        lease meanwhile finds its song taken over when it sends it again."""
        if key not in self._posting:
            return  # never recorded as sent (it never connected)
        before = self.handed.get(key, _S.PENDING)
        try:
            self.journal.mark_not_sent(key, before, reason)
        except LeaseLost as exc:
            self.counts[_S.SUBMITTING] -= 1
            self._taken_over(exc)
        except Exception as exc:  # the journal failed: no attempt leaves a stopping run
            self.stop("journal", f"cannot record song {key!r} as not sent ({exc})", exc)
        else:
            self.counts[_S.SUBMITTING] -= 1
            self.counts[before] += 1
        self._submission_ended(key)

    def record_sending(self, key: str, kind: str) -> None:
        """A request is leaving: the API is reachable; a submission is now ``submitting``,
        committed before its first byte is written.

        Raises :class:`SendingRefused` to keep a submission from leaving (the transport
        stops it before its first byte): once the run is stopping, and when the journal
        cannot record it. That POST alone stays home; those already on their way finish
        and have their ids recorded before the run stops."""
        if self._work is not None and self._work.cancel_called:
            # The run is stopping: this request is cancelled at its next await, before any
            # byte is written (anyio and trio check for cancellation before writing).
            return
        if kind == "submit" and key in self.handed and self.stop_reason is not None:
            raise SendingRefused("the run is stopping")
        self._left.add((key, kind))
        self.connect_failures = 0
        if kind != "submit" or key not in self.handed:
            return
        self._mark_submitting(key)

    def _mark_submitting(self, key: str) -> None:
        """Record ``key`` as ``submitting``, or raise :class:`SendingRefused` (and stop the
        run) when the journal cannot: its database is gone, or the song is another
        worker's (the journal checks the owner first, so a song another worker took over,
        even one it sent already, is refused here)."""
        try:
            entry = self.journal.entry(key)
            self.journal.mark_submitting(key)
        except LeaseLost as exc:
            # Another worker has the song: this POST must not leave. This worker stalled
            # longer than a lease, so it stops (its other songs are given back).
            self.stop("lease", f"{exc}; this worker stalled longer than a lease and stops", exc)
            raise SendingRefused(f"song {key!r} is another worker's now") from exc
        except Exception as exc:  # whatever failed (a full disk, the database gone, a bug)
            # Unrecorded, a POST that leaves could have its id lost and the song paid for
            # again by the next run: it stays home, and the run stops.
            self.stop(
                "journal",
                f"cannot record song {key!r} as being sent in the journal ({exc}); its "
                "request was not sent, and the song is still pending (an in-process "
                "transport, which reports sending only once answered, had sent it: then its "
                "generation id is logged with an --adopt hint)",
                exc,
            )
            raise SendingRefused(f"the journal cannot record song {key!r} as being sent") from exc
        self._posting.add(key)
        if entry is not None:
            self._moved(entry, entry.state, _S.SUBMITTING)

    def note_failed_attempt(self, key: str, kind: str, error: AimlMusicError) -> None:
        """One attempt of a request failed; count it when it never reached the API."""
        if kind == "submit":  # retried only after an attempt that never arrived
            self.attempt_refused(key, f"not received ({error})")
        if (key, kind) in self._left:
            self._left.discard((key, kind))
            return
        if isinstance(error, APIConnectionError):
            self._count_connect_failure(error)

    def _count_connect_failure(self, error: AimlMusicError) -> None:
        self.connect_failures += 1
        if self.connect_failures >= MAX_CONNECT_FAILURES:
            self.stop(
                "unreachable",
                f"the API at {self.client.base_url} could not be reached: "
                f"{self.connect_failures} requests in a row never got through (last: {error}); "
                "nothing more was sent and unsent songs are still pending",
                error,
            )

    def _submittable_count(self) -> int:
        count = self.counts[_S.PENDING]
        if self.resubmit_ambiguous:
            count += self.counts[_S.AMBIGUOUS]
        count += sum(1 for _ in self._retryable_failures())
        return count

    def _retryable_failures(self) -> Iterator[JournalEntry]:
        for entry in self.journal.entries([_S.FAILED]):
            # Rejected outright (no id): nothing was paid, sending again is safe. A failed
            # generation is sent again only when asked.
            if entry.generation_id is None or self.retry_failed:
                yield entry

    async def _ticker(self) -> None:
        while True:
            await anyio.sleep(TICK_SECONDS)  # a display heartbeat: real time on purpose
            paused = self._throttled_now()
            if self.was_throttled and not paused:
                self.was_throttled = False
                self.emit("unthrottled")
            elif paused and not self.was_throttled:  # a pause seen by a poll outside a batch
                self.was_throttled = True
                self.emit("throttled", message="the API asked us to slow down")
            self.timing.save()
            self.emit("tick")

    # ------------------------------------------------------------------ resumed songs

    async def _resume_all(self, work: anyio.abc.TaskGroup) -> None:
        # The keys are taken before anything is submitted: songs this run submits pass
        # through the same states, and must not be resumed a second time.
        to_download = [e.key for e in self.journal.entries([_S.COMPLETED])]
        to_wait = [e.key for e in self.journal.entries([_S.SUBMITTED])]
        self.attempted.update(to_download, to_wait)
        self.resume_listed.set()
        for key in to_download:
            entry = self.journal.entry(key)
            if entry is not None:
                work.start_soon(self._download, entry)
        for key in to_wait:
            await self.slots.acquire()
            entry = self.journal.entry(key)
            if entry is None or entry.state is not _S.SUBMITTED:  # pragma: no cover
                self.slots.release()
                continue
            work.start_soon(self._resume_wait, entry, work)

    async def _resume_wait(self, entry: JournalEntry, work: anyio.abc.TaskGroup) -> None:
        try:
            await self._resume_wait_now(entry, work)
        except LeaseLost as exc:
            self._taken_over(exc)
        except (JournalError, sqlite3.Error) as exc:  # its database gone, its disk full
            self._journal_failed(entry.key, entry.generation_id, exc)

    async def _resume_wait_now(self, entry: JournalEntry, work: anyio.abc.TaskGroup) -> None:
        assert entry.generation_id is not None
        try:
            # Given an id, wait() looks at once: a song resumed after a crash has often
            # finished long ago.
            generation = await self.client.wait(entry.generation_id, timeout=self.deadline)
        except GenerationFailedError as exc:
            self.journal.mark_failed(entry.key, exc)
            self._moved(entry, _S.SUBMITTED, _S.FAILED, str(exc))
            return
        except NotFoundError as exc:
            # The API no longer knows this id: it cannot be downloaded, and sending it again
            # would be a new, paid generation, so only retry_failed does that.
            self.journal.mark_failed(entry.key, exc)
            self._moved(entry, _S.SUBMITTED, _S.FAILED, str(exc))
            return
        except AimlMusicError as exc:
            # A timeout or an outage: the generation may still finish; the next run resumes.
            self._stuck(entry, _S.SUBMITTED, exc)
            self._stop_if_refused(exc)
            return
        finally:
            self.slots.release()
        self._completed(entry, generation, polls=0, generation_seconds=None)
        work.start_soon(self._download, self.journal.entry(entry.key) or entry)

    # ------------------------------------------------------------------ new songs

    async def _heartbeat(self, shared: SharedJournal) -> None:
        """Renew this worker's leases while it runs (on the client's clock, so virtual time
        in tests)."""
        while True:
            await self.client.clock.sleep(shared.lease_seconds / RENEWALS_PER_LEASE)
            try:
                shared.renew()
            except JournalError as exc:  # the database gone: the run stops, POSTs on their
                # way finish (their ids recorded, or logged), and the renewals go on trying
                self.stop("journal", f"cannot renew this worker's leases ({exc})", exc)

    async def _claimed_requests(
        self, shared: SharedJournal, work: anyio.abc.TaskGroup
    ) -> AsyncIterator[tuple[str, Any]]:
        """A worker of a shared journal: claim songs one at a time as slots free up. A song
        with a generation id is adopted (waited for, or downloaded) and never submitted;
        the others are handed to the scheduler. With nothing to claim, the worker waits while
        other live workers hold songs (one may die and leave them), and ends when none do."""
        while not self._stopping():
            await self.slots.acquire()
            if self._stopping():  # decided while this waited for a slot
                self.slots.release()
                return
            try:
                entry = shared.claim(
                    resubmit_ambiguous=self.resubmit_ambiguous, retry_failed=self.retry_failed
                )
                # Nothing to claim: done, unless other live workers hold songs.
                finished = entry is None and shared.others_working() == 0
            except JournalError as exc:  # the database gone: stop as for any journal failure
                self.slots.release()
                self.stop("journal", f"cannot claim a song from the journal ({exc})", exc)
                return
            if entry is None:
                self.slots.release()
                if finished:
                    return
                await self.client.clock.sleep(self.recheck_seconds)
                continue
            self.attempted.add(entry.key)
            if entry.state is _S.COMPLETED:
                self.slots.release()  # downloads have their own limit
                work.start_soon(self._download, entry)
            elif entry.state is _S.SUBMITTED:
                work.start_soon(self._resume_wait, entry, work)  # releases the slot
            else:
                # Not marked yet: ``submitting`` is committed when its bytes go out.
                self.handed[entry.key] = entry.state
                yield entry.key, entry.request

    async def _requests(self) -> AsyncIterator[tuple[str, Any]]:
        """Songs to submit, each committed as ``submitting`` just before it is handed over."""
        await self.resume_listed.wait()
        songs = iter(self._to_submit())
        while self.stop_reason is None:
            try:
                entry = next(songs, None)
            except (JournalError, sqlite3.Error) as exc:
                self._unreadable(exc)
                return
            if entry is None:
                return
            if entry.key in self.attempted:
                continue
            await self.slots.acquire()
            try:
                old = self.journal.entry(entry.key)
            except (JournalError, sqlite3.Error) as exc:
                self.slots.release()
                self._unreadable(exc)
                return
            if (
                old is None
                or old.state not in (_S.PENDING, _S.FAILED, _S.AMBIGUOUS)
                or self.stop_reason is not None
            ):
                self.slots.release()
                continue
            self.attempted.add(entry.key)
            # Not marked yet: ``submitting`` is committed when its bytes go out.
            self.handed[entry.key] = old.state
            yield entry.key, entry.request

    def _unreadable(self, exc: Exception) -> None:
        """The journal cannot say which song to send next (its database gone, its disk
        failing): the run stops as for any journal failure, the POSTs on their way
        finishing with their ids recorded (an exception out of the song source would
        cancel them)."""
        self.stop("journal", f"cannot read the next song to send from the journal ({exc})", exc)

    def _to_submit(self) -> Iterable[JournalEntry]:
        yield from self.journal.entries([_S.PENDING])
        if self.resubmit_ambiguous:
            yield from self.journal.entries([_S.AMBIGUOUS])
        yield from self._retryable_failures()

    async def _submit_all(self, work: anyio.abc.TaskGroup) -> None:
        # The journal keeps the id of every song the batch is left with (a stop, a signal),
        # and the next run resumes them: no WARNING for each.
        kept = LEFT_BEHIND_KEPT.set(True)
        try:
            await self._submit_all_now(work)
        except (AuthenticationError, PermissionDeniedError) as exc:
            # The batch stopped taking songs at the refusal, and says so as it ends: the run
            # stops for it (as it does on reading the refused song's result).
            self._stop_if_refused(exc)
        except SharedStateError as exc:
            # The Redis sharing the account's budget failed: the scheduler took no new song
            # and let those on their way finish (their ids recorded) before raising it.
            self.stop(
                "shared",
                f"the shared request budget failed ({exc}); no new song was sent, the songs "
                "already sent kept their generation ids, and the songs not sent are still "
                "pending",
                exc,
            )
        finally:
            LEFT_BEHIND_KEPT.reset(kept)

    async def _submit_all_now(self, work: anyio.abc.TaskGroup) -> None:
        events = _SchedulerEvents(self)
        async with self.client.generate_many(
            # One generator, never one nested in another: the scheduler closes the one it
            # is given, and a nested one would be left to the garbage collector.
            self._requests() if self.shared is None else self._claimed_requests(self.shared, work),
            max_in_flight=self.max_in_flight,
            deadline=self.deadline,
            events=events,
        ) as results:
            async for result in results:
                self.slots.release()
                try:
                    self._result(result, work)
                except LeaseLost as exc:
                    self._taken_over(exc)
                except (JournalError, sqlite3.Error) as exc:  # its database gone, its disk full
                    generation_id = result.generation.id if result.generation else None
                    self._journal_failed(result.key, generation_id, exc)
                    self._submission_ended(result.key)

    def record_submitted(self, key: str, generation_id: str) -> None:
        """Commit a generation id the moment its POST returns."""
        try:
            self._commit_id(key, generation_id)
        except Exception as exc:  # the journal cannot be read (its database is gone)
            # The song is paid for: its id must reach the user, whatever else fails.
            logger.error(  # noqa: TRY400 - one line for the user, not a traceback
                "could not record generation id %s of song %r in the journal (%s); adopt it "
                "with %s",
                generation_id,
                key,
                exc,
                adopt_option(key, generation_id),
            )
            self.stop(
                "journal",
                f"cannot use the journal ({exc}); song {key!r} was submitted as generation "
                f"{generation_id}: adopt it with {adopt_option(key, generation_id)}",
                exc,
            )
        finally:
            self._submission_ended(key)  # answered with an id: nothing more is sent

    def _commit_id(self, key: str, generation_id: str) -> None:
        entry = self.journal.entry(key)
        if entry is not None and self._interrupted_meanwhile(entry):
            # This worker sent it, then stalled past its lease with the POST on its way, and
            # another worker's claim recovered it as interrupted (ambiguous) without taking
            # it: the id is real, and recording it is what keeps the song from being lost.
            self._store_id(entry, generation_id)
            return
        if entry is not None and entry.state is not _S.SUBMITTING and key in self.handed:
            # Its sending was not recorded before it left (a transport that reports sending
            # only once answered, and perhaps refused it then, too late): record it now,
            # stopping or not, for it was sent.
            with contextlib.suppress(SendingRefused):  # the journal failed: id logged below
                self._mark_submitting(key)
            entry = self.journal.entry(key)
        if entry is None or entry.state is not _S.SUBMITTING:
            if key in self.handed:
                # The journal refused ``submitting`` (this worker's lease on the song was
                # lost, or the write failed), yet the POST went out: the id is all that
                # keeps it from being paid for again.
                logger.error(
                    "song %r was submitted as generation %s but the journal did not record "
                    "it; adopt it with %s",
                    key,
                    generation_id,
                    adopt_option(key, generation_id),
                )
            return
        self._store_id(entry, generation_id)

    def _interrupted_meanwhile(self, entry: JournalEntry) -> bool:
        """``entry``, which this worker recorded as ``submitting``, was made ``ambiguous``
        with no id by another worker of a shared journal (this one's lease ran out)."""
        return (
            self.shared is not None
            and entry.key in self._posting
            and entry.state is _S.AMBIGUOUS
            and entry.generation_id is None
        )

    def _store_id(self, entry: JournalEntry, generation_id: str) -> None:
        """Record the id of ``entry``, which this run counts as ``submitting``; when the
        journal refuses, the id is logged with an --adopt hint and the run stops."""
        key = entry.key
        try:
            self.journal.mark_submitted(key, generation_id)
        except LeaseLost as exc:  # another worker holds it now, and may send it again
            logger.error(  # noqa: TRY400 - one line for the user, not a traceback
                "song %r was submitted as generation %s but the journal did not record it "
                "(%s); adopt it with %s",
                key,
                generation_id,
                exc,
                adopt_option(key, generation_id),
            )
            self.stop(
                "lease",
                f"{exc}; this worker stalled longer than a lease and stops (song {key!r} was "
                f"submitted as generation {generation_id}: adopt it with "
                f"{adopt_option(key, generation_id)})",
                exc,
            )
            return
        except (sqlite3.OperationalError, JournalError) as exc:  # the journal's disk is full
            # The song is paid for: its id must reach the user, whatever else fails.
            logger.error(  # noqa: TRY400 - one line for the user, not a traceback
                "could not record generation id %s of song %r in the journal: %s",
                generation_id,
                key,
                exc,
            )
            self.stop(
                "disk",
                f"cannot write the journal in {self.out} ({exc}); song {key!r} was "
                f"submitted as generation {generation_id}: adopt it with "
                f"{adopt_option(key, generation_id)} once there is room",
                exc,
            )
            return
        self._moved(entry, _S.SUBMITTING, _S.SUBMITTED, generation_id)

    def _result(self, result: SongResult, work: anyio.abc.TaskGroup) -> None:
        entry = self.journal.entry(result.key)
        if entry is None:  # pragma: no cover - the scheduler only returns keys we gave it
            logger.error("result for an unknown key %r", result.key)
            return
        generation = result.generation
        if generation is not None and entry.state is _S.SUBMITTING:
            # The submitted event did not reach us (or came with the result): record the id
            # before anything else.
            self.record_submitted(result.key, generation.id)
            entry = self.journal.entry(result.key) or entry
        error = result.error
        if error is None and generation is not None:
            self._completed(entry, generation, result.polls, result.timings.total)
            work.start_soon(self._download, self.journal.entry(result.key) or entry)
            return
        assert error is not None
        if generation is None:
            self._not_submitted(entry, error)
            return
        if isinstance(error, GenerationFailedError | NotFoundError):
            self.journal.mark_failed(result.key, error, generation_id=generation.id)
            self._moved(entry, entry.state, _S.FAILED, str(error))
            return
        # A deadline or an outage while polling: the generation may still finish and is
        # resumed by id on the next run.
        self._stuck(entry, entry.state, error)
        self._stop_if_refused(error)

    def _journal_failed(self, key: str, generation_id: str | None, error: Exception) -> None:
        """The journal failed while a song went on (its result, its wait, its download):
        the run stops, and the song's generation id, if it has one, is logged with an
        --adopt hint (the song may be paid for, and the journal may not say so)."""
        adopt = ""
        if generation_id is not None:
            adopt = f": adopt it with {adopt_option(key, generation_id)}"
            logger.error(
                "could not record song %r (generation %s) in the journal (%s)%s",
                key,
                generation_id,
                error,
                adopt,
            )
        self.stop("journal", f"cannot use the journal ({error}) for song {key!r}{adopt}", error)

    def _not_submitted(self, entry: JournalEntry, error: AimlMusicError) -> None:
        """A song's submission ended without a generation id."""
        key = entry.key
        self._left.discard((key, "submit"))
        try:
            self._not_sent(entry, error)
        finally:
            self._submission_ended(key)

    def _not_sent(self, entry: JournalEntry, error: AimlMusicError) -> None:
        key = entry.key
        if isinstance(error, SendingRefused):
            # Kept home by ``record_sending``: the song is as its last attempt left it
            # (``attempt_refused`` put it back in the state it was sent from), and the
            # journal, which may be what failed, is not written.
            return
        if entry.state is not _S.SUBMITTING:
            # Its POST never left: the song is exactly as before, safe to send again.
            if isinstance(error, APIConnectionError):
                self._count_connect_failure(error)
                self._stuck(entry, entry.state, error)
            elif isinstance(error, AuthenticationError | PermissionDeniedError):
                # Failed unsent by a batch another song's refusal stopped: the key is
                # wrong, not this song, which stays as it was; the run stops.
                self._stuck(entry, entry.state, error)
                self._stop_if_refused(error)
            elif entry.state is _S.PENDING and not self._is_temporary(error):
                # Refused before sending (a request that cannot be encoded): say so.
                self.journal.mark_failed(key, error)
                self._moved(entry, entry.state, _S.FAILED, str(error))
            else:
                self._stuck(entry, entry.state, error)
            self._cancel_when_quiet()
            return
        if isinstance(error, AuthenticationError | PermissionDeniedError):
            # The key is wrong, not the song: it stays to do, and the run stops.
            self.journal.mark_pending(key, error)
            self._moved(entry, _S.SUBMITTING, _S.PENDING, str(error))
            self._stop_if_refused(error)
        elif self._is_temporary(error) and not isinstance(error, AmbiguousSubmissionError):
            # Throttled, then unreachable: it never got past the door.
            self.journal.mark_pending(key, error)
            self._moved(entry, _S.SUBMITTING, _S.PENDING, str(error))
        elif _never_accepted(error):
            self.journal.mark_failed(key, error)
            self._moved(entry, _S.SUBMITTING, _S.FAILED, str(error))
        else:
            self.journal.mark_ambiguous(key, error)
            self._moved(entry, _S.SUBMITTING, _S.AMBIGUOUS, str(error))
        self._cancel_when_quiet()

    def _stop_if_refused(self, error: AimlMusicError) -> None:
        """A 401/403 (to a submission or a poll) means the key or the account is refused:
        every further request would be too, so the run stops."""
        if isinstance(error, AuthenticationError | PermissionDeniedError):
            self.stop(
                "auth",
                f"the API refused the key ({error}): check the client's API key and the "
                "account's credits; nothing was charged for the songs refused, and every song "
                "not generated yet is still pending",
                error,
            )

    @staticmethod
    def _is_temporary(error: AimlMusicError) -> bool:
        return isinstance(error, RateLimitError | APIConnectionError)

    def _completed(
        self,
        entry: JournalEntry,
        generation: Generation,
        polls: int,
        generation_seconds: float | None,
    ) -> None:
        current = self.journal.entry(entry.key) or entry
        self.journal.mark_completed(
            entry.key, generation, polls=polls, generation_seconds=generation_seconds
        )
        if generation.credits_used is not None:
            self.credits += generation.credits_used
        self._moved(entry, current.state, _S.COMPLETED)

    # ------------------------------------------------------------------ downloads

    async def _download(self, entry: JournalEntry) -> None:
        async with self.download_limiter:
            try:
                await self._download_now(entry)
            except LeaseLost as exc:
                self._taken_over(exc)
            except (JournalError, sqlite3.Error) as exc:  # its database gone, its disk full
                self._journal_failed(entry.key, entry.generation_id, exc)

    def _taken_over(self, error: LeaseLost) -> None:
        """Another worker took a song over while this one stalled past its lease: the song is
        theirs now, and this worker leaves it alone."""
        logger.warning("%s; leaving it to that worker", error)
        self.done += 1

    async def _download_now(self, entry: JournalEntry) -> None:
        if not is_inside(self.out, entry.file_name):  # pragma: no cover - names are made safe
            raise AssertionError(f"unsafe file name {entry.file_name!r}")
        part = part_path(self.out, entry.file_name, worker=self.worker)
        final = self.out / entry.file_name
        self.journal.note_download_attempt(entry.key)
        try:
            try:
                generation = entry.generation or await self.client.get(entry.generation_id or "")
                await self.client.download(generation, part)
            except AimlMusicError as exc:
                self._stuck(entry, _S.COMPLETED, exc)
                if isinstance(exc.__cause__, OSError):  # the file could not be written
                    self._cannot_write(exc.__cause__)
                return
            except OSError as exc:  # writing the download: a full disk, say
                self._stuck(entry, _S.COMPLETED, exc)
                self._cannot_write(exc)
                return
            # Once the bytes are here, finishing them and recording it must not be torn
            # apart by a cancellation: the journal would disagree with the directory.
            with anyio.CancelScope(shield=True):
                try:
                    stored = await anyio.to_thread.run_sync(
                        lambda: finish_download(
                            part,
                            final,
                            title=entry.title,
                            request=entry.request,
                            generation=generation,
                            tag=self.tag,
                        )
                    )
                except OSError as exc:
                    self._stuck(entry, _S.COMPLETED, exc)
                    self._cannot_write(exc)
                    return
                self.journal.mark_downloaded(
                    entry.key,
                    sha256=stored.sha256,
                    size=stored.size,
                    tagged=stored.tagged,
                    duration=stored.duration,
                    sample_rate=stored.sample_rate,
                )
                message = entry.file_name
                if stored.tag_problem is not None:
                    message += f" ({stored.tag_problem})"
                self._moved(entry, _S.COMPLETED, _S.DOWNLOADED, message)
        finally:
            if part.exists():
                part.unlink()
