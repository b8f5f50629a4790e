"""The PostgreSQL journal's own behaviour: claims under leases, SKIP LOCKED, takeover,
concurrent catalog syncs, the per-worker report, and a password that never shows.

Leases run on an injected clock (``now``), so expiry needs no waiting.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import psycopg
import pytest

from aimlmusic import ConfigurationError, Generation, GenerationStatus, SongRequest
from aimlmusic.catalog import CatalogRow, JournalError, PgJournal, SongState
from aimlmusic.catalog._pg_journal import (
    LeaseLost,
    _secrets_of,
    _userinfo_misread,
    shown_url,
)

PROMPT = "Warm lo-fi ballad with soft piano"
LYRICS = "[Verse]\nStreetlights flicker\n[Chorus]\nHome again"
ENDPOINT = "https://api.example"
LEASE = 60.0


def row(key: str, title: str = "Same", *, prompt: str = PROMPT, line: int = 1) -> CatalogRow:
    return CatalogRow(
        key=key, title=title, request=SongRequest(prompt=prompt, lyrics=LYRICS), line=line
    )


CATALOG = [row(f"k{i}", line=i + 1) for i in range(6)]


class Clock:
    """The lease clock every journal of a test shares."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def worker(url: str, name: str, clock: Clock) -> PgJournal:
    journal = PgJournal(url, endpoint=ENDPOINT, worker_id=name, lease_seconds=LEASE, now=clock)
    assert journal.sync_catalog(CATALOG) == []
    return journal


def claim(journal: PgJournal, **options: bool) -> str | None:
    options.setdefault("resubmit_ambiguous", False)
    options.setdefault("retry_failed", False)
    entry = journal.claim(**options)
    return entry.key if entry is not None else None


def test_two_workers_never_hold_one_row(postgres_url: str) -> None:
    """Interleaved claims of two workers split the catalog: every song once, none twice."""
    clock = Clock()
    with worker(postgres_url, "A", clock) as a, worker(postgres_url, "B", clock) as b:
        got: dict[str, list[str]] = {"A": [], "B": []}
        while True:
            ka, kb = claim(a), claim(b)
            for name, key in (("A", ka), ("B", kb)):
                if key is not None:
                    got[name].append(key)
            if ka is None and kb is None:
                break
        assert got["A"]
        assert got["B"]
        assert sorted(got["A"] + got["B"]) == sorted(r.key for r in CATALOG)
        assert a.others_working() == len(got["B"])
        assert b.others_working() == len(got["A"])


def test_skip_locked_lets_a_claim_pass_a_row_being_claimed(postgres_url: str) -> None:
    """A row locked by another transaction is skipped at once, not waited for."""
    clock = Clock()
    with worker(postgres_url, "A", clock) as a, psycopg.connect(postgres_url) as other:
        other.execute("SELECT key FROM aimlmusic_songs WHERE key = 'k0' FOR UPDATE")
        started = time.monotonic()
        assert claim(a) == "k1"
        assert time.monotonic() - started < 5  # a wait would last until the lock is gone
        other.rollback()
        assert claim(a) == "k0"


def test_an_expired_lease_is_taken_over_and_a_live_one_is_not(postgres_url: str) -> None:
    """Another worker's song is claimable only once its lease expired; renewals keep it."""
    clock = Clock()
    with worker(postgres_url, "A", clock) as a, worker(postgres_url, "B", clock) as b:
        for _ in CATALOG:
            claim(a)
        assert claim(b) is None
        clock.now += LEASE / 2
        assert a.renew() == len(CATALOG)
        clock.now += LEASE / 2 + 1  # past the first lease, inside the renewed one
        assert claim(b) is None
        assert b.others_working() == len(CATALOG)
        clock.now += LEASE  # A is dead: nothing renewed it
        assert b.others_working() == 0
        assert claim(b) == "k0"
        entry = b.entry("k0")
        assert entry is not None
        assert entry.state is SongState.PENDING


def test_a_worker_restarted_under_its_name_takes_back_its_songs(postgres_url: str) -> None:
    """A worker that claimed songs in one run (and left them unfinished) claims them again
    in its next run under the same worker_id, where within one run it never would."""
    clock = Clock()
    with worker(postgres_url, "fixed", clock) as first:
        first.start_run()
        claimed = [claim(first) for _ in CATALOG]
        first.release_all()
        assert claim(first) is None  # each song at most once per run
        first.finish_run("finished")
    with worker(postgres_url, "fixed", clock) as again:
        again.start_run()
        assert [claim(again) for _ in CATALOG] == claimed


def test_a_run_under_the_id_of_a_live_one_is_refused_until_it_is_gone(
    postgres_url: str,
) -> None:
    """A worker restarted at once under the id of a run killed holding songs (or of one
    still running) is refused, saying how long to wait, since the two would renew and
    release each other's leases; once that run's heartbeat is overdue it starts and takes
    the songs over."""
    clock = Clock()
    with worker(postgres_url, "fixed", clock) as killed:
        killed.start_run()
        held = [claim(killed), claim(killed)]  # then killed: nothing given back
    with worker(postgres_url, "fixed", clock) as again:
        with pytest.raises(JournalError, match="another worker id") as refused:
            again.start_run()
        assert f"{int(LEASE)} s more" in str(refused.value)
        clock.now += LEASE + 1
        again.start_run()
        claimed = [claim(again) for _ in CATALOG]
        assert claimed[: len(held)] == held
        assert sorted(claimed) == sorted(r.key for r in CATALOG)


def test_a_run_starting_while_another_worker_sets_up_the_schema_waits_its_turn(
    postgres_url: str,
) -> None:
    """A worker starting its run while another opens the journal (whose schema script holds
    the songs table and then wants the runs table) waits for it, rather than deadlocking
    with it (PostgreSQL's "deadlock detected" failed one of three workers started at once)."""
    clock = Clock()
    errors: list[Exception] = []
    with worker(postgres_url, "starting", clock) as starting:
        pid = starting._db.info.backend_pid

        def start() -> None:
            try:
                starting.start_run()
            except Exception as exc:  # any failure is the test's finding
                errors.append(exc)

        with psycopg.connect(postgres_url, autocommit=True) as opening, opening.transaction():
            # What the schema script does, as far as locks go, under the schema's lock.
            opening.execute(
                "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.aimlmusic'))"
            )
            opening.execute("ALTER TABLE aimlmusic_songs ADD COLUMN IF NOT EXISTS account TEXT")
            thread = threading.Thread(target=start)
            thread.start()
            with psycopg.connect(postgres_url, autocommit=True) as watcher:
                for _ in range(1000):  # until start_run waits for a lock (10 s at most)
                    waiting = watcher.execute(
                        "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
                    ).fetchone()
                    if waiting is not None and waiting[0] == "Lock":
                        break
                    time.sleep(0.01)
            opening.execute(
                "ALTER TABLE aimlmusic_runs ADD COLUMN IF NOT EXISTS alive_until DOUBLE PRECISION"
            )
        thread.join(10)
    assert not thread.is_alive()
    assert errors == []


def test_opening_a_current_journal_locks_no_table(postgres_url: str) -> None:
    """A worker opens a journal whose schema is current while another worker's transaction
    holds both tables: its schema script asks the catalog first and locks neither (ALTER
    TABLE and CREATE INDEX ... IF NOT EXISTS locked them, and waited or deadlocked)."""
    clock = Clock()
    worker(postgres_url, "first", clock).close()
    opened: list[PgJournal] = []
    with psycopg.connect(postgres_url, autocommit=True) as busy, busy.transaction():
        busy.execute("UPDATE aimlmusic_songs SET owner = owner WHERE false")
        busy.execute("UPDATE aimlmusic_runs SET outcome = outcome WHERE false")
        thread = threading.Thread(target=lambda: opened.append(worker(postgres_url, "b", clock)))
        thread.start()
        thread.join(10)
        alive = thread.is_alive()
    thread.join(10)
    for journal in opened:
        journal.close()
    assert not alive, "opening the journal waited for another worker's transaction"
    assert len(opened) == 1


def test_opening_an_older_journal_adds_what_it_lacks(postgres_url: str) -> None:
    """A journal made before songs recorded their account and runs their heartbeat, and
    without its indexes, gets them when opened."""
    clock = Clock()
    worker(postgres_url, "first", clock).close()
    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute("ALTER TABLE aimlmusic_songs DROP COLUMN account")
        db.execute("ALTER TABLE aimlmusic_runs DROP COLUMN alive_until")
        db.execute("DROP INDEX aimlmusic_songs_submitting")
    worker(postgres_url, "again", clock).close()
    with psycopg.connect(postgres_url, autocommit=True) as db:
        columns = db.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND column_name IN ('account', 'alive_until')"
        ).fetchall()
        index = db.execute("SELECT to_regclass('aimlmusic_songs_submitting')").fetchone()
    assert sorted(columns) == [("aimlmusic_runs", "alive_until"), ("aimlmusic_songs", "account")]
    assert index is not None
    assert index[0] is not None


def test_takeover_turns_submitting_into_ambiguous_and_keeps_ids(postgres_url: str) -> None:
    """A dead worker's submitted song is claimed with its id; its submitting one is ambiguous
    and not claimable unless resubmitting is asked for."""
    clock = Clock()
    with worker(postgres_url, "dead", clock) as dead, worker(postgres_url, "B", clock) as b:
        assert claim(dead) == "k0"
        assert claim(dead) == "k1"
        dead.mark_submitting("k0")
        dead.mark_submitted("k0", "gen-0")
        dead.mark_submitting("k1")
        assert b.recover_interrupted() == []  # the lease is alive: it may still be sending
        clock.now += LEASE + 1
        taken = b.claim(resubmit_ambiguous=False, retry_failed=False)
        assert taken is not None
        assert (taken.key, taken.state, taken.generation_id) == ("k0", SongState.SUBMITTED, "gen-0")
        k1 = b.entry("k1")
        assert k1 is not None
        assert (k1.state, k1.error_type) == (SongState.AMBIGUOUS, "Interrupted")
        keys = []
        while (key := claim(b)) is not None:
            keys.append(key)
        assert "k1" not in keys
    with PgJournal(postgres_url, endpoint=ENDPOINT, worker_id="C", now=clock) as c:
        assert claim(c, resubmit_ambiguous=True) == "k1"


def test_an_id_for_a_song_recovered_as_interrupted_is_recorded(postgres_url: str) -> None:
    """A worker whose submitting song another worker's claim made ambiguous (its lease ran
    out, nobody took it) records the id it then gets: submitted, and its own again."""
    clock = Clock()
    with worker(postgres_url, "A", clock) as a, worker(postgres_url, "B", clock) as b:
        assert claim(a) == "k0"
        a.mark_submitting("k0")
        clock.now += LEASE + 1
        assert claim(b) == "k1"  # its claim recovers k0 as interrupted, and takes another
        recovered = b.entry("k0")
        assert recovered is not None
        assert recovered.state is SongState.AMBIGUOUS
        assert "A" not in {w["worker"] for w in b.workers()}  # it holds nothing now
        a.mark_submitted("k0", "gen-0")
        entry = b.entry("k0")
        assert entry is not None
        assert (entry.state, entry.generation_id, entry.error) == (
            SongState.SUBMITTED,
            "gen-0",
            None,
        )
        held = {w["worker"]: (w["held"], w["alive"]) for w in b.workers()}
        assert held["A"] == ({"submitted": 1}, 1)  # A's again, under a live lease


def test_an_id_for_a_recovered_song_another_worker_holds_is_refused(postgres_url: str) -> None:
    """The id of a song recovered as interrupted is refused (LeaseLost) once another worker
    claimed it, and refused when the song already has another id."""
    clock = Clock()
    with worker(postgres_url, "A", clock) as a, worker(postgres_url, "B", clock) as b:
        assert claim(a) == "k0"
        assert claim(a) == "k1"
        a.mark_submitting("k0")
        a.mark_submitting("k1")
        clock.now += LEASE + 1
        assert claim(b, resubmit_ambiguous=True) == "k0"  # recovered, then taken
        with pytest.raises(LeaseLost):
            a.mark_submitted("k0", "gen-0")
        b.adopt("k1", "gen-found")  # the user adopted the id found in the account
        with pytest.raises(JournalError, match="cannot go from submitted"):
            a.mark_submitted("k1", "gen-1")
        k1 = b.entry("k1")
        assert k1 is not None
        assert k1.generation_id == "gen-found"


def test_only_the_lease_holder_may_submit(postgres_url: str) -> None:
    """mark_submitting refuses a song another worker holds or took over; a worker whose
    lease ran out but whose song nobody took may still submit it (and the lease renews)."""
    clock = Clock()
    with worker(postgres_url, "A", clock) as a, worker(postgres_url, "B", clock) as b:
        assert claim(a) == "k0"
        assert claim(a) == "k1"
        with pytest.raises(LeaseLost):
            b.mark_submitting("k0")
        clock.now += LEASE + 1
        assert claim(b) == "k0"  # taken over
        with pytest.raises(LeaseLost, match="another worker took it over"):
            a.mark_submitting("k0")
        a.mark_submitting("k1")  # expired, but still A's: nobody else can have sent it
        assert b.others_working() == 1  # the lease on k1 was renewed


def test_a_worker_does_not_claim_a_song_twice_in_its_run(postgres_url: str) -> None:
    """A song released without an end (a timeout) goes to another worker, not back to the
    same one: each run handles a song at most once, as with SQLite."""
    clock = Clock()
    with worker(postgres_url, "A", clock) as a, worker(postgres_url, "B", clock) as b:
        assert claim(a) == "k0"
        a.note_error("k0", "deadline")
        assert claim(a) == "k1"
        assert claim(b) == "k0"


def test_workers_starting_together_sync_one_catalog(postgres_url: str) -> None:
    """Concurrent syncs of the same catalog make one row per key and no shared file name."""
    many = [row(f"s{i:03d}", title="Same", line=i + 1) for i in range(60)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        try:
            with PgJournal(postgres_url, endpoint=ENDPOINT) as journal:
                barrier.wait()
                assert journal.sync_catalog(many) == []
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with PgJournal(postgres_url, endpoint=ENDPOINT) as journal:
        entries = list(journal.entries())
    assert [e.key for e in entries] == [r.key for r in many]
    assert len({e.file_name.lower() for e in entries}) == len(many)


def test_a_changed_catalog_is_refused_once_sent(postgres_url: str) -> None:
    """A song whose content changed after it was sent is a conflict and nothing changes."""
    clock = Clock()
    with worker(postgres_url, "A", clock) as a:
        assert claim(a) == "k0"
        a.mark_submitting("k0")
        a.mark_submitted("k0", "gen-0")
        changed = [row("k0", prompt=PROMPT + " with strings", line=3), row("new", line=4)]
        problems = a.sync_catalog(changed)
        assert [(p.line, p.key) for p in problems] == [(3, "k0")]
        assert a.entry("new") is None


def test_a_sync_never_makes_a_song_sent_meanwhile_pending_again(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sync that read a song unsent, when another worker commits it submitting before the
    sync writes, reports it as changed since sent and changes nothing (no second POST)."""
    clock = Clock()
    with worker(postgres_url, "A", clock) as a, worker(postgres_url, "B", clock) as b:
        assert claim(a) == "k0"
        apply_sync = PgJournal._apply_sync

        def a_sends_first(self: PgJournal, *args: Any, **kwargs: Any) -> Any:
            a.mark_submitting("k0")  # committed between B's read of the rows and its writes
            return apply_sync(self, *args, **kwargs)

        monkeypatch.setattr(PgJournal, "_apply_sync", a_sends_first)
        changed = [row("k0", prompt=PROMPT + " with strings", line=3), row("new", line=4)]
        problems = b.sync_catalog(changed)
        assert [(p.line, p.key) for p in problems] == [(3, "k0")]
        assert "submitting" in problems[0].message
        entry = b.entry("k0")
        assert entry is not None
        assert (entry.state, entry.request.prompt) == (SongState.SUBMITTING, PROMPT)
        assert b.entry("new") is None


def test_a_sync_leaves_the_content_of_a_song_another_worker_holds(postgres_url: str) -> None:
    """A sync never rewrites an unsent song a worker holds under a live lease (it may be
    sending the old content now): a conflict naming the worker, nothing changed."""
    clock = Clock()
    with worker(postgres_url, "A", clock) as a, worker(postgres_url, "B", clock) as b:
        assert claim(a) == "k0"  # pending, held by A, which will send it as it was
        changed = [row("k0", prompt=PROMPT + " with strings", line=3)]
        problems = b.sync_catalog(changed)
        assert [(p.line, p.key) for p in problems] == [(3, "k0")]
        assert "'A' holds it" in problems[0].message
        entry = b.entry("k0")
        assert entry is not None
        assert (entry.state, entry.request.prompt) == (SongState.PENDING, PROMPT)


def test_adopting_a_song_another_worker_follows_is_refused_plainly(postgres_url: str) -> None:
    """Adopting an id for a song another worker holds names that worker (no lease of this
    one's is blamed) and changes nothing."""
    clock = Clock()
    with worker(postgres_url, "A", clock) as a, worker(postgres_url, "B", clock) as b:
        assert claim(a) == "k0"
        with pytest.raises(JournalError, match="worker 'A'") as caught:
            b.adopt("k0", "gen-elsewhere")
        assert not isinstance(caught.value, LeaseLost)
        entry = b.entry("k0")
        assert entry is not None
        assert (entry.state, entry.generation_id) == (SongState.PENDING, None)


def test_a_file_in_the_output_directory_is_never_given_to_a_new_song(postgres_url: str) -> None:
    """A file already in the worker's output directory (compared case-folded) takes its
    name: a new song gets the next free one, as for two songs of one title."""
    with PgJournal(postgres_url, endpoint=ENDPOINT) as journal:
        assert journal.sync_catalog([row("neon", "Neon Rain")], ["neon rain.MP3"]) == []
        entry = journal.entry("neon")
        assert entry is not None
        assert entry.file_name == "Neon Rain-neon.mp3"


def test_adopting_a_song_a_dead_worker_held_is_accepted(postgres_url: str) -> None:
    """A lease left by a worker that died (expired) holds nothing: another worker adopts an
    id for the song, which nobody holds then."""
    clock = Clock()
    with worker(postgres_url, "A", clock) as a, worker(postgres_url, "B", clock) as b:
        assert claim(a) == "k0"
        clock.now += 2 * LEASE  # A died: its lease ran out
        b.adopt("k0", "gen-elsewhere")
        entry = b.entry("k0")
        assert entry is not None
        assert (entry.state, entry.generation_id) == (SongState.SUBMITTED, "gen-elsewhere")
        assert b.claim(resubmit_ambiguous=False, retry_failed=False) is not None


def test_tables_live_in_the_connections_schema(postgres_url: str) -> None:
    """The journal's tables are made in the current schema (the first of search_path)."""
    with PgJournal(postgres_url, endpoint=ENDPOINT), psycopg.connect(postgres_url) as db:
        schema = db.execute("SELECT current_schema()").fetchone()
        tables = db.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema[0] if schema else "",),
        ).fetchall()
    assert {"aimlmusic_meta", "aimlmusic_songs", "aimlmusic_runs"} <= {t[0] for t in tables}


def test_workers_report_holdings_leases_and_downloads(postgres_url: str) -> None:
    """workers() tells per worker the songs held by state, leases alive/expired, downloads."""
    clock = Clock()
    with worker(postgres_url, "A", clock) as a, worker(postgres_url, "B", clock) as b:
        a.start_run()
        claim(a)
        claim(a)
        a.mark_submitting("k0")
        claim(b)
        clock.now += LEASE + 1
        b.renew()
        report = {w["worker"]: w for w in b.workers()}
    assert report["A"]["held"] == {"submitting": 1, "pending": 1}
    assert (report["A"]["alive"], report["A"]["expired"]) == (0, 2)
    assert (report["B"]["alive"], report["B"]["expired"]) == (1, 0)
    assert report["A"]["started_at"] is not None


def test_a_run_is_running_while_its_heartbeat_is_current(postgres_url: str) -> None:
    """A worker's run reports running from start_run, holding no lease, while renew() keeps
    it current; not once a lease overdue (killed) nor after finish_run."""
    clock = Clock()
    with worker(postgres_url, "A", clock) as a, worker(postgres_url, "B", clock) as b:

        def running() -> bool:
            return bool({w["worker"]: w for w in b.workers()}["A"]["running"])

        a.start_run()
        assert running()
        clock.now += LEASE * 0.9
        a.renew()  # no lease held: the run's heartbeat alone
        clock.now += LEASE * 0.9
        assert running()
        clock.now += LEASE
        assert not running()  # its heartbeat stopped: killed
        a.renew()
        assert running()
        a.finish_run("finished")
        assert not running()


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    user = parts.username or "postgres"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


def test_the_password_never_shows(postgres_url: str, tmp_path: Path) -> None:
    """The URL's password is not in the location, the repr, nor a connection error."""
    secret = "pw-Very-Secret-123"
    url = with_password(postgres_url, secret)  # trust auth: the password is not checked
    with PgJournal(url, endpoint=ENDPOINT) as journal:
        assert secret not in journal.location
        assert secret not in repr(journal)
    unreachable = urlsplit(with_password(postgres_url, secret))._replace(
        netloc=f"postgres:{secret}@127.0.0.1:1"
    )
    with pytest.raises(JournalError) as caught:
        PgJournal(urlunsplit(unreachable), endpoint=ENDPOINT)
    assert secret not in str(caught.value)
    assert caught.value.__cause__ is None
    assert "cannot open the journal" in str(caught.value)


@pytest.mark.parametrize("mark", ["#", "?"])
def test_a_password_with_an_unencoded_hash_or_question_mark_never_shows(
    postgres_url: str, mark: str
) -> None:
    """A URL whose password holds an unencoded '#' or '?' (libpq reads it whole, Python's
    URL parsing cut it there and showed the first part) is refused without showing any of
    it; percent-encoded, it is accepted and hidden."""
    head, tail = "pwHead-Secret", "Tail-Secret"
    url = with_password(postgres_url, f"{head}{mark}{tail}")
    assert head not in shown_url(url)
    assert tail not in shown_url(url)
    with pytest.raises(ConfigurationError, match="percent-encode") as caught:
        PgJournal(url, endpoint=ENDPOINT)
    assert head not in str(caught.value)
    assert tail not in str(caught.value)
    encoded = with_password(postgres_url, f"{head}{quote(mark, safe='')}{tail}")
    with PgJournal(encoded, endpoint=ENDPOINT) as journal:
        assert head not in journal.location
        assert head not in repr(journal)


@pytest.mark.parametrize(
    "userinfo",
    ["u:p#w", "u:p?w", "u#x:pw", "u:p%23w", "u:p%3Fw", "u:pw", "u", "u:p/w", "u:p:w"],
)
def test_the_misread_password_check_agrees_with_libpq(userinfo: str) -> None:
    """A URL is refused exactly when Python's URL parsing and libpq's disagree on its user
    or password."""
    from psycopg.conninfo import conninfo_to_dict

    url = f"postgresql://{userinfo}@db.example:5432/catalogs"
    parts = urlsplit(url)
    libpq = conninfo_to_dict(url)
    ours = (unquote(parts.username or ""), unquote(parts.password or ""))
    disagree = ours != (libpq.get("user", ""), libpq.get("password", ""))
    assert _userinfo_misread(url) == disagree


def test_secrets_are_scrubbed_as_written_and_as_libpq_decodes_them() -> None:
    """A percent-encoded password is scrubbed from messages both as written in the URL and
    as libpq decodes and sends it."""
    secrets = _secrets_of("postgresql://u:pw%23One@db.example/c?sslpassword=key%3FTwo")
    assert {"pw%23One", "pw#One", "key?Two"} <= set(secrets)


def test_a_key_value_connection_string_is_refused_without_showing_it(postgres_url: str) -> None:
    """A libpq key=value string, whose password the journal could not keep out of logs and
    reprs, is refused before connecting, with a message that does not quote it."""
    secret = "pw-Key-Value-456"
    parts = urlsplit(postgres_url)
    conninfo = (
        f"host={parts.hostname} port={parts.port or 5432} dbname={parts.path.lstrip('/')} "
        f"user={parts.username or 'postgres'} password={secret}"
    )
    with pytest.raises(ConfigurationError) as caught:
        PgJournal(conninfo, endpoint=ENDPOINT)
    assert "postgresql://" in str(caught.value)
    assert secret not in str(caught.value)


def test_a_lost_database_is_a_journal_error_without_the_password(postgres_url: str) -> None:
    """A connection the server dropped mid-run raises JournalError naming the journal, not
    a driver traceback, and still without the password."""
    secret = "pw-Lost-Db-987"
    with PgJournal(with_password(postgres_url, secret), endpoint=ENDPOINT) as journal:
        pid = journal._db.info.backend_pid
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(JournalError, match="failed") as caught:
            journal.counts()
    assert secret not in str(caught.value)


def test_reading_the_songs_of_a_lost_database_is_a_journal_error(postgres_url: str) -> None:
    """entries() on a connection the server dropped raises JournalError without the
    password (a generator, it let the driver's OperationalError through)."""
    secret = "pw-Lost-Entries-654"
    with worker(with_password(postgres_url, secret), "A", Clock()) as journal:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (journal._db.info.backend_pid,))
        with pytest.raises(JournalError, match="failed") as caught:
            list(journal.entries())
    assert secret not in str(caught.value)
    assert caught.value.__cause__ is None


def test_a_stalled_worker_cannot_record_over_the_worker_that_took_over(
    postgres_url: str,
) -> None:
    """Once another worker took a song over, the stalled one's transitions raise LeaseLost
    and its error notes leave the new owner's claim alone."""
    clock = Clock()
    with worker(postgres_url, "A", clock) as a, worker(postgres_url, "B", clock) as b:
        assert claim(a) == "k0"
        a.mark_submitting("k0")
        a.mark_submitted("k0", "gen-0")
        clock.now += LEASE + 1
        taken = b.claim(resubmit_ambiguous=False, retry_failed=False)
        assert taken is not None
        assert taken.key == "k0"
        with pytest.raises(LeaseLost):
            a.mark_failed("k0", "too late")
        a.note_error("k0", "timed out")
        entry = b.entry("k0")
        assert entry is not None
        assert (entry.state, entry.error) == (SongState.SUBMITTED, None)
        assert a.others_working() == 1  # still B's


def test_a_stalled_worker_cannot_record_over_a_song_the_other_worker_finished(
    postgres_url: str,
) -> None:
    """A stalled worker whose song another worker took over, downloaded and so let go gets
    LeaseLost for what it records next (it got "cannot go from downloaded to completed",
    taken for a failed journal), and its error notes leave the finished song alone."""
    clock = Clock()
    with worker(postgres_url, "A", clock) as a, worker(postgres_url, "B", clock) as b:
        assert claim(a) == "k0"
        a.mark_submitting("k0")
        a.mark_submitted("k0", "gen-0")
        clock.now += LEASE + 1
        assert claim(b) == "k0"
        b.mark_completed("k0", Generation(id="gen-0", status=GenerationStatus.COMPLETED))
        b.mark_downloaded("k0", sha256="0" * 64, size=1, tagged=False)
        with pytest.raises(LeaseLost):
            a.mark_completed("k0", Generation(id="gen-0", status=GenerationStatus.COMPLETED))
        with pytest.raises(LeaseLost):
            a.mark_failed("k0", "too late")
        a.note_error("k0", "timed out")
        entry = b.entry("k0")
        assert entry is not None
        assert (entry.state, entry.error) == (SongState.DOWNLOADED, None)


def test_a_song_another_worker_let_go_can_still_be_adopted(postgres_url: str) -> None:
    """An ambiguous song last claimed by another worker, which let it go, is adopted by the
    user's id: an adoption is no claim, so the song's last claim does not refuse it."""
    clock = Clock()
    with worker(postgres_url, "A", clock) as a, worker(postgres_url, "B", clock) as b:
        assert claim(a) == "k0"
        a.mark_submitting("k0")
        a.mark_ambiguous("k0", "the connection dropped after sending")
        b.adopt("k0", "gen-found")
        entry = b.entry("k0")
        assert entry is not None
        assert (entry.state, entry.generation_id) == (SongState.SUBMITTED, "gen-found")
