"""run_catalog end to end against the in-process emulator: never pay twice, always resume.

The behavioural tests run with both journals (the ``journal_url`` fixture): SQLite in the
output directory, and PostgreSQL as one worker of a shared catalog sees it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import anyio
import httpx
import pytest
from _catalog_support import LYRICS, client_for, handed_run, manifest, write_catalog
from _servers import redis_down, shared_client

import aimlmusic
from aimlmusic._errors import SendingRefused
from aimlmusic.catalog import (
    CatalogError,
    CatalogEvent,
    JournalError,
    SongState,
    _runner,
    load_catalog,
    read_summary,
    run_catalog,
)
from aimlmusic.catalog._journal import Journal
from aimlmusic.catalog._pg_journal import LeaseLost, PgJournal
from aimlmusic.emulator import TEST_API_KEY, Emulator, EmulatorConfig, Faults, serving
from aimlmusic.testing import VirtualClock

pytestmark = pytest.mark.anyio

NO_CREDIT_KEY = "broke-key"


def make_emulator(**config: object) -> Emulator:
    config.setdefault("time_scale", 2000.0)
    config.setdefault("audio_seconds", 0.3)
    config.setdefault("no_credit_keys", {NO_CREDIT_KEY})
    config.setdefault("api_keys", {TEST_API_KEY, NO_CREDIT_KEY})
    return Emulator(EmulatorConfig(**config))  # type: ignore[arg-type]


def assert_all_downloaded_once(out: Path, count: int, emulator: Emulator) -> None:
    """Every song is one file whose bytes match the manifest, and nothing was paid twice."""
    records = manifest(out)
    assert len(records) == count
    assert all(r["status"] == "downloaded" for r in records)
    files = sorted(
        p.name for p in out.iterdir() if not p.name.startswith(("aimlmusic-", "manifest"))
    )
    assert files == sorted(str(r["file"]) for r in records)
    for record in records:
        data = (out / str(record["file"])).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record["sha256"]
        assert len(data) == record["bytes"]
    stats = emulator.stats()
    assert stats.duplicate_submissions == 0
    assert stats.jobs_submitted == count


async def test_a_catalog_is_generated_tagged_and_described(
    tmp_path: Path, journal_url: str | None
) -> None:
    """All songs end up downloaded, MP3s tagged, the manifest matches the files, no duplicates."""
    emulator = make_emulator()
    catalog = write_catalog(tmp_path / "songs.jsonl", 9)
    out = tmp_path / "out"
    events: list[CatalogEvent] = []
    async with client_for(emulator) as client:
        summary = await run_catalog(
            client, catalog, out, journal_url=journal_url, on_event=events.append
        )
    assert summary.all_done
    assert summary.downloaded == 9
    assert summary.credits_used == 900.0
    assert_all_downloaded_once(out, 9, emulator)
    records = manifest(out)
    assert [r["key"] for r in records] == [f"song-{i:02d}" for i in range(9)]
    assert [r["tagged"] for r in records] == [True, False, False] * 3
    first = records[0]
    assert first["file"] == "Track 00.mp3"
    assert first["generation_id"]
    assert first["duration"] == pytest.approx(0.3, abs=0.05)
    assert first["sample_rate"] == 44100
    kinds = [e.kind for e in events]
    assert kinds[0] == "started"
    assert kinds[-1] == "finished"
    states = [e.state for e in events if e.kind == "state" and e.key == "song-00"]
    assert states == [
        SongState.SUBMITTING,
        SongState.SUBMITTED,
        SongState.COMPLETED,
        SongState.DOWNLOADED,
    ]
    final = events[-1].progress
    assert final.counts[SongState.DOWNLOADED] == 9
    assert final.done == final.todo == 9

    # Running again does nothing: no request reaches the API.
    before = emulator.stats().requests
    async with client_for(emulator) as client:
        again = await run_catalog(client, catalog, out, journal_url=journal_url)
    assert again.all_done
    assert emulator.stats().requests == before


async def test_an_invalid_catalog_spends_nothing(tmp_path: Path, journal_url: str | None) -> None:
    """Any bad row stops the run before a request is sent or the output directory is made."""
    emulator = make_emulator()
    catalog = write_catalog(tmp_path / "songs.jsonl", 3)
    with catalog.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"key": "bad", "prompt": "short", "lyrics": LYRICS}) + "\n")
        handle.write(json.dumps({"key": "song-00", "prompt": "x" * 20, "lyrics": LYRICS}) + "\n")
    out = tmp_path / "out"
    async with client_for(emulator) as client:
        with pytest.raises(CatalogError) as info:
            await run_catalog(client, catalog, out, journal_url=journal_url)
    assert [p.line for p in info.value.problems] == [4, 5]
    assert sum(emulator.stats().requests.values()) == 0
    assert not out.exists()


async def test_songs_rejected_by_the_api_are_retried_by_the_next_run(
    tmp_path: Path, journal_url: str | None
) -> None:
    """A 403 (no credits) stops the run with every song still pending; a rerun with credits
    sends them safely."""
    emulator = make_emulator()
    catalog = write_catalog(tmp_path / "songs.jsonl", 3)
    out = tmp_path / "out"
    async with client_for(emulator, NO_CREDIT_KEY) as client:
        with pytest.raises(_runner.RunStopped) as stopped:
            await run_catalog(client, catalog, out, journal_url=journal_url)
    summary = stopped.value.summary
    assert stopped.value.reason == "auth"
    assert summary.counts[SongState.PENDING] == 3, summary.counts
    assert summary.downloaded == 0
    assert not summary.failed
    assert not summary.ambiguous
    async with client_for(emulator) as client:
        summary = await run_catalog(client, catalog, out, journal_url=journal_url)
    assert summary.all_done
    assert_all_downloaded_once(out, 3, emulator)


async def test_a_journal_that_cannot_record_a_sending_stops_the_run_unpaid(
    tmp_path: Path, journal_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A journal failing to record a song as being sent stops the run (reason "journal")
    with that song's POST cancelled before it left, the song still pending; the next run
    generates every song and pays for none twice."""
    emulator = make_emulator()
    catalog = write_catalog(tmp_path / "songs.jsonl", 4)
    out = tmp_path / "out"
    broken = {"song-01"}
    for journal in (Journal, PgJournal):

        def failing(self: Any, key: str, original: Any = journal.mark_submitting) -> None:
            if key in broken:
                raise JournalError("the journal's database went away")
            original(self, key)

        monkeypatch.setattr(journal, "mark_submitting", failing)
    # Real sockets: the transport reports a request as sending before its first byte.
    with serving(emulator) as base_url:
        async with aimlmusic.AsyncMusicClient(
            TEST_API_KEY, base_url=base_url, clock=emulator.clock
        ) as client:
            with pytest.raises(_runner.RunStopped) as stopped:
                # One song at a time: no other song's POST is on its way to be cut.
                await run_catalog(client, catalog, out, journal_url=journal_url, max_in_flight=1)
            assert stopped.value.reason == "journal"
            assert "song-01" in str(stopped.value)
            middle = read_summary(out, journal_url=journal_url)
            assert middle.counts[SongState.PENDING] == 3  # song-01 and the two after it
            assert not middle.ambiguous
            assert emulator.stats().jobs_submitted == 1  # song-00's only
            broken.clear()
            summary = await run_catalog(client, catalog, out, journal_url=journal_url)
    assert summary.all_done
    assert_all_downloaded_once(out, 4, emulator)


class _HeldAnswers(httpx.AsyncBaseTransport):
    """A real socket whose POST answers reach the client only once ``release`` is set: the
    POSTs sent before it are on their way, unanswered, when it is set."""

    def __init__(self, release: anyio.Event) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._release = release

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if request.method == "POST":
            await self._release.wait()
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (JournalError("the journal's database went away"), "journal"),
        (LeaseLost("song-01: another worker took it over"), "lease"),
    ],
    ids=["journal", "lease"],
)
async def test_a_journal_failing_at_one_sending_leaves_other_posts_on_their_way(
    tmp_path: Path,
    journal_url: str | None,
    monkeypatch: pytest.MonkeyPatch,
    failure: JournalError,
    reason: str,
) -> None:
    """A journal failing to record the second POST (or finding its song taken over) keeps
    that one home and lets the first, already sent and unanswered, finish with its id
    recorded: nothing ambiguous, nothing paid twice by the rerun."""
    emulator = make_emulator()
    catalog = write_catalog(tmp_path / "songs.jsonl", 4)
    out = tmp_path / "out"
    release = anyio.Event()
    recorded: list[str] = []
    for journal in (Journal, PgJournal):

        def failing(self: Any, key: str, original: Any = journal.mark_submitting) -> None:
            if len(recorded) == 1 and not release.is_set():
                release.set()  # the first POST's answer may come now, after this failure
                raise failure
            original(self, key)
            recorded.append(key)

        monkeypatch.setattr(journal, "mark_submitting", failing)
    with serving(emulator) as base_url:
        async with aimlmusic.AsyncMusicClient(
            TEST_API_KEY, base_url=base_url, clock=emulator.clock, transport=_HeldAnswers(release)
        ) as client:
            with pytest.raises(_runner.RunStopped) as stopped:
                await run_catalog(client, catalog, out, journal_url=journal_url, max_in_flight=4)
        assert stopped.value.reason == reason
        middle = read_summary(out, journal_url=journal_url)
        assert not middle.ambiguous, middle.ambiguous
        assert middle.counts[SongState.PENDING] == 3, middle.counts
        assert emulator.stats().jobs_submitted == 1
        (first,) = recorded
        assert [r["key"] for r in manifest(out) if r.get("generation_id")] == [first]
        async with aimlmusic.AsyncMusicClient(
            TEST_API_KEY, base_url=base_url, clock=emulator.clock
        ) as client:
            summary = await run_catalog(client, catalog, out, journal_url=journal_url)
    assert summary.all_done
    assert_all_downloaded_once(out, 4, emulator)


@pytest.mark.parametrize("step", ["mark_completed", "note_download_attempt", "mark_downloaded"])
async def test_a_journal_failing_as_a_song_goes_on_stops_the_run_with_the_id_logged(
    tmp_path: Path,
    journal_url: str | None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    step: str,
) -> None:
    """A journal that fails as a finished song's result is recorded, or as it is downloaded,
    stops the run (reason "journal", not a crash) and logs that song's generation id with
    an --adopt hint: every song paid for is in the journal or in the log."""
    emulator = make_emulator()
    catalog = write_catalog(tmp_path / "songs.jsonl", 2)
    out = tmp_path / "out"
    for journal in (Journal, PgJournal):

        def failing(self: Any, key: str, *args: Any, **kwargs: Any) -> None:
            raise JournalError("the journal's database went away")

        monkeypatch.setattr(journal, step, failing)
    with caplog.at_level(logging.ERROR, logger="aimlmusic"):
        async with client_for(emulator) as client:
            with pytest.raises(_runner.RunStopped) as stopped:
                await run_catalog(client, catalog, out, journal_url=journal_url, max_in_flight=1)
    assert stopped.value.reason == "journal"
    recorded = {r["generation_id"] for r in manifest(out) if r.get("generation_id")}
    for generation_id in emulator.jobs:  # every song paid for is in the journal, or logged
        assert generation_id in recorded or f"={generation_id}" in caplog.text
    assert "--adopt song-0" in str(stopped.value)


async def test_a_run_stopping_while_a_song_waits_to_be_sent_again_stops_at_once(
    tmp_path: Path,
) -> None:
    """A POST answered 429, then an API that cannot be reached: the run stops
    ("unreachable") without waiting for the song's deadline (none here; it used to retry
    for ever), and the song is pending: a 429 makes it so until its next attempt leaves
    (it stayed submitting, and a run interrupted in the pause left it ambiguous)."""
    answered_429 = []

    def api(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and not answered_429:
            answered_429.append(request)
            return httpx.Response(429, headers={"Retry-After": "1"}, json={"message": "slow"})
        raise httpx.ConnectError("nothing listens there now", request=request)

    clock = VirtualClock()
    catalog = write_catalog(tmp_path / "songs.jsonl", 1)
    out = tmp_path / "out"
    async with (
        clock,
        aimlmusic.AsyncMusicClient(
            TEST_API_KEY,
            base_url="http://127.0.0.1",
            transport=httpx.MockTransport(api),
            clock=clock,
            retry=aimlmusic.RetryPolicy(attempts=2, base_delay=0.5, max_delay=2.0),
        ) as client,
    ):
        with anyio.fail_after(60), pytest.raises(_runner.RunStopped) as stopped:
            await run_catalog(client, catalog, out, journal_url=None, deadline=None)
    assert stopped.value.reason == "unreachable"
    assert stopped.value.summary.counts[SongState.PENDING] == 1
    assert not stopped.value.summary.ambiguous
    assert len(answered_429) == 1


@contextlib.contextmanager
def one_song_journal(client: aimlmusic.AsyncMusicClient, tmp_path: Path) -> Iterator[Journal]:
    """A SQLite journal in ``tmp_path / "out"`` holding one song, ``song-00``, pending."""
    catalog = write_catalog(tmp_path / "songs.jsonl", 1)
    out = tmp_path / "out"
    out.mkdir()
    with Journal.in_directory(out, endpoint=_runner._endpoint(client.base_url)) as journal:
        journal.sync_catalog(load_catalog(catalog))
        yield journal


def database_gone(*args: object, **kwargs: object) -> NoReturn:
    """A journal method standing in for one whose database went away."""
    raise JournalError("the journal's database went away")


async def stopped_run(
    emulator: Emulator, tmp_path: Path, songs: int, journal_url: str | None = None, **options: Any
) -> _runner.RunStopped:
    """Run a catalog of ``songs`` songs against ``emulator`` in process, and return how it
    stopped (the test fails if it did not)."""
    catalog = write_catalog(tmp_path / "songs.jsonl", songs)
    async with client_for(emulator) as client:
        with pytest.raises(_runner.RunStopped) as stopped:
            await run_catalog(client, catalog, tmp_path / "out", journal_url=journal_url, **options)
    return stopped.value


async def test_a_post_answered_while_the_run_stops_is_recorded_with_its_id(
    tmp_path: Path,
) -> None:
    """A submission answered after the run began to stop, whose sending was reported only
    with its answer (an in-process transport), is recorded with its id: refusing it then
    comes too late, and the rerun would pay for it again."""
    async with client_for(make_emulator()) as client:
        with one_song_journal(client, tmp_path) as journal:
            run = handed_run(client, journal, tmp_path / "out", "song-00")
            run.stop("auth", "the API refused the key", RuntimeError("refused"))
            with pytest.raises(SendingRefused):
                run.record_sending("song-00", "submit")  # told once answered: too late
            run.record_submitted("song-00", "gen-answered-while-stopping")
            entry = journal.entry("song-00")
    assert entry is not None
    assert entry.state is SongState.SUBMITTED
    assert entry.generation_id == "gen-answered-while-stopping"


async def test_a_journal_that_cannot_be_read_as_a_post_leaves_keeps_it_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A journal failing to read the song as its POST is about to leave refuses that POST
    and stops the run (reason "journal"); the failed read used to be logged as a broken
    hook and the POST left unrecorded."""
    async with client_for(make_emulator()) as client:
        with one_song_journal(client, tmp_path) as journal:
            run = handed_run(client, journal, tmp_path / "out", "song-00")

            def unreadable(key: str) -> None:
                raise JournalError("the journal's database went away")

            monkeypatch.setattr(journal, "entry", unreadable)
            with pytest.raises(SendingRefused):
                run.record_sending("song-00", "submit")
    assert run.stop_reason is not None
    assert run.stop_reason[0] == "journal"


async def test_leases_that_cannot_be_renewed_stop_the_run_without_a_crash(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shared journal whose heartbeat cannot renew the leases (its database gone) stops
    the run with reason "journal"; it used to crash it (an ExceptionGroup), cutting the
    POSTs on their way."""

    monkeypatch.setattr(PgJournal, "renew", database_gone)
    stopped = await stopped_run(make_emulator(), tmp_path, 2, postgres_url)
    assert stopped.reason == "journal"
    assert "cannot renew" in str(stopped)


async def test_a_run_whose_end_cannot_be_recorded_stops_for_the_journal(
    tmp_path: Path, journal_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A journal that fails as the run records its end stops the run with reason "journal"
    and its summary, its songs done; the JournalError used to escape run_catalog."""
    for journal in (Journal, PgJournal):
        monkeypatch.setattr(journal, "finish_run", database_gone)
    stopped = await stopped_run(make_emulator(), tmp_path, 2, journal_url)
    assert stopped.reason == "journal"
    assert "cannot record the end of this run" in str(stopped)
    assert stopped.summary.all_done


async def test_a_database_lost_mid_run_stops_it_with_a_summary_from_memory(
    tmp_path: Path, postgres_url: str
) -> None:
    """A shared journal whose connection the server drops after the first download stops
    the run with reason "journal" and a summary of what the run counted; the driver's
    error used to escape run_catalog out of the last manifest write."""
    import psycopg

    emulator = make_emulator()
    catalog = write_catalog(tmp_path / "songs.jsonl", 3)
    name = f"lost-mid-run-{uuid.uuid4().hex[:8]}"  # its own: tests run side by side
    backends: list[bool] = []

    def drop_the_connection(event: CatalogEvent) -> None:
        if event.state is SongState.DOWNLOADED and not backends:
            with psycopg.connect(postgres_url, autocommit=True) as admin:
                backends.extend(
                    row[0]
                    for row in admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE application_name = %s",
                        (name,),
                    )
                )

    url = f"{postgres_url}&application_name={name}"
    async with client_for(emulator) as client:
        with pytest.raises(_runner.RunStopped) as stopped:
            await run_catalog(
                client,
                catalog,
                tmp_path / "out",
                journal_url=url,
                max_in_flight=1,
                on_event=drop_the_connection,
            )
    assert backends == [True]
    assert stopped.value.reason == "journal"
    summary = stopped.value.summary
    assert (summary.total, summary.counts[SongState.DOWNLOADED]) == (3, 1)


async def test_a_claim_that_fails_stops_the_run_and_keeps_the_songs_sent(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shared journal whose claim fails (its database gone) after one song was sent stops
    the run with reason "journal"; the song sent keeps its generation id. The failure used
    to crash the run (an ExceptionGroup) out of the scheduler's song source."""
    claim = PgJournal.claim
    claims = 0

    def failing_after_one(self: PgJournal, **options: bool) -> Any:
        nonlocal claims
        claims += 1
        if claims > 1:
            database_gone()
        return claim(self, **options)

    monkeypatch.setattr(PgJournal, "claim", failing_after_one)
    emulator = make_emulator()
    stopped = await stopped_run(emulator, tmp_path, 3, postgres_url)
    assert stopped.reason == "journal"
    assert "cannot claim" in str(stopped)
    monkeypatch.undo()
    with PgJournal(postgres_url, endpoint=None) as journal:
        states = {entry.key: (entry.state, entry.generation_id) for entry in journal.entries()}
    sent = [key for key, (_, generation_id) in states.items() if generation_id]
    assert len(sent) == emulator.stats().jobs_submitted == 1, states
    assert states[sent[0]][0] in (SongState.SUBMITTED, SongState.COMPLETED, SongState.DOWNLOADED)


async def test_a_journal_that_cannot_say_who_else_works_stops_the_run(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that finds nothing to claim and cannot ask whether other workers still hold
    songs (its database gone) stops with reason "journal", its songs done; it used to
    crash."""

    monkeypatch.setattr(PgJournal, "others_working", database_gone)
    emulator = make_emulator()
    stopped = await stopped_run(emulator, tmp_path, 2, postgres_url)
    assert stopped.reason == "journal"
    assert emulator.stats().jobs_submitted == 2


async def test_a_journal_that_cannot_be_read_before_a_song_is_handed_over_stops_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SQLite journal whose read of the next song to send fails (its disk gone) stops the
    run with reason "journal" after the songs already sent are recorded; it used to crash
    it out of the scheduler's song source."""
    entry = Journal.entry

    def failing_for_the_second(self: Journal, key: str) -> Any:
        if key == "song-01":
            raise sqlite3.OperationalError("disk I/O error")
        return entry(self, key)

    emulator = make_emulator()
    catalog = write_catalog(tmp_path / "songs.jsonl", 3)
    async with client_for(emulator) as client:
        monkeypatch.setattr(Journal, "entry", failing_for_the_second)
        with pytest.raises(_runner.RunStopped) as stopped:
            await run_catalog(client, catalog, tmp_path / "out", max_in_flight=1)
    assert stopped.value.reason == "journal"
    assert emulator.stats().jobs_submitted == 1


async def test_a_shared_budget_failing_mid_batch_stops_the_run_cleanly(
    tmp_path: Path,
    journal_url: str | None,
    redis_url: str,
    redis_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis failing as the batch takes the account's slot for its second song stops the
    run with reason "shared" and its summary: the first song keeps its id, the others
    stay pending. The SharedStateError used to crash the run (an ExceptionGroup)."""
    monkeypatch.setattr("aimlmusic._shared_redis.DEFAULT_KEY_PREFIX", redis_prefix)
    clock = VirtualClock()
    emulator = Emulator(EmulatorConfig(requests_per_minute=None, audio_seconds=0.3), clock=clock)
    catalog = write_catalog(tmp_path / "songs.jsonl", 3)
    async with clock, shared_client(emulator, clock, redis_url, 1) as client:
        leases = client._leases
        assert leases is not None
        acquire = leases.acquire
        taken = 0

        async def redis_gone_after_one() -> str:
            nonlocal taken
            taken += 1
            if taken == 1:
                return await acquire()
            with redis_down(client):
                return await acquire()

        monkeypatch.setattr(leases, "acquire", redis_gone_after_one)
        with anyio.fail_after(60), pytest.raises(_runner.RunStopped) as stopped:
            await run_catalog(client, catalog, tmp_path / "out", journal_url=journal_url)
    assert stopped.value.reason == "shared"
    assert isinstance(stopped.value.cause, aimlmusic.SharedStateError)
    summary = stopped.value.summary
    assert summary.counts[SongState.PENDING] == 2
    assert summary.counts[SongState.COMPLETED] + summary.counts[SongState.DOWNLOADED] == 1
    assert emulator.stats().requests["submit"] == 1


class _RedirectsOneSubmission(httpx.AsyncBaseTransport):
    """The emulator in process, behind a proxy that answers the first POST of song 1 with
    ``status`` once the emulator has created (and charged for) its job."""

    def __init__(self, emulator: Emulator, status: int) -> None:
        self.inner = httpx.ASGITransport(app=emulator.app)
        self.status = status
        self.done = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "POST" and not self.done and b"number 1," in request.content:
            self.done = True
            await response.aread()
            job = json.loads(response.content)["id"]
            location = f"/v2/generate/audio?generation_id={job}"
            return httpx.Response(self.status, headers={"location": location})
        return response


@pytest.mark.parametrize("status", [303, 408])
async def test_a_submission_answered_by_a_redirect_is_ambiguous_and_never_paid_twice(
    tmp_path: Path, status: int
) -> None:
    """A POST whose job was created but which is answered 303 (the usual answer to a POST
    that created something) or 408 by whatever stands in front of the API leaves its song
    ambiguous, and a plain rerun sends it no second time. It was marked failed, and the
    rerun paid for it again."""
    emulator = make_emulator()
    catalog = write_catalog(tmp_path / "songs.jsonl", 3)
    out = tmp_path / "out"
    proxy = _RedirectsOneSubmission(emulator, status)
    for _ in range(2):
        async with aimlmusic.AsyncMusicClient(
            TEST_API_KEY, base_url="http://127.0.0.1", transport=proxy, clock=emulator.clock
        ) as client:
            summary = await run_catalog(client, catalog, out)
        assert summary.ambiguous == ("song-01",)
        assert summary.failed == ()
    stats = emulator.stats()
    assert stats.jobs_submitted == 3
    assert stats.duplicate_submissions == 0


@pytest.mark.parametrize("before", [SongState.PENDING, SongState.AMBIGUOUS])
async def test_a_submission_answered_429_goes_back_to_the_state_it_was_sent_from(
    tmp_path: Path, before: SongState
) -> None:
    """A POST answered 429 leaves the song as it was before that attempt until the next
    one leaves: pending stays pending (not ambiguous if the run ends in the pause), and an
    ambiguous song sent again stays ambiguous (its first POST may have been accepted; made
    pending, the next run would pay again)."""
    async with client_for(make_emulator()) as client:
        with one_song_journal(client, tmp_path) as journal:
            if before is SongState.AMBIGUOUS:
                journal.mark_submitting("song-00")
                journal.mark_ambiguous("song-00", "a 500 after the job was made")
            run = handed_run(client, journal, tmp_path / "out", "song-00")
            run.record_sending("song-00", "submit")
            assert journal.entry("song-00").state is SongState.SUBMITTING  # type: ignore[union-attr]
            run.attempt_refused("song-00", "answered 429 Too Many Requests")
            entry = journal.entry("song-00")
    assert entry is not None
    assert entry.state is before


async def test_failed_generations_are_resubmitted_only_when_asked(
    tmp_path: Path, journal_url: str | None
) -> None:
    """A generation that ends in error keeps its id; only retry_failed sends it again."""
    emulator = make_emulator(faults=Faults(generation_failure=1.0))
    catalog = write_catalog(tmp_path / "songs.jsonl", 2)
    out = tmp_path / "out"
    async with client_for(emulator) as client:
        summary = await run_catalog(client, catalog, out, journal_url=journal_url)
        assert summary.failed == ("song-00", "song-01")
        assert all(r["generation_id"] for r in manifest(out))
        summary = await run_catalog(client, catalog, out, journal_url=journal_url)
        assert summary.failed == ("song-00", "song-01")
        assert emulator.stats().jobs_submitted == 2
        summary = await run_catalog(
            client, catalog, out, journal_url=journal_url, retry_failed=True
        )
    assert emulator.stats().jobs_submitted == 4
    assert summary.failed == ("song-00", "song-01")  # the emulator fails every generation


async def test_an_ambiguous_submission_is_never_resent_silently(
    tmp_path: Path, journal_url: str | None
) -> None:
    """A 5xx after the job was created makes the song ambiguous; adopting its id finishes it
    without a second submission."""
    emulator = make_emulator()
    emulator.inject("error_after", route="submit", count=1)
    catalog = write_catalog(tmp_path / "songs.jsonl", 3)
    out = tmp_path / "out"
    async with client_for(emulator) as client:
        summary = await run_catalog(client, catalog, out, journal_url=journal_url, max_in_flight=1)
        assert summary.ambiguous == ("song-00",)
        assert summary.downloaded == 2
        # A plain rerun leaves it alone.
        summary = await run_catalog(client, catalog, out, journal_url=journal_url)
        assert summary.ambiguous == ("song-00",)
        assert emulator.stats().jobs_submitted == 3
        # The user finds the generation (here: in the emulator's records) and adopts it.
        (orphan,) = [
            job.id for job in emulator.jobs.values() if job.prompt.endswith("number 0, warm pads")
        ]
        summary = await run_catalog(
            client, catalog, out, journal_url=journal_url, adopt={"song-00": orphan}
        )
    assert summary.all_done
    assert_all_downloaded_once(out, 3, emulator)


async def test_resubmit_ambiguous_sends_again(tmp_path: Path, journal_url: str | None) -> None:
    """With resubmit_ambiguous the song is sent again, and the emulator sees the duplicate."""
    emulator = make_emulator()
    emulator.inject("error_after", route="submit", count=1)
    catalog = write_catalog(tmp_path / "songs.jsonl", 1)
    out = tmp_path / "out"
    async with client_for(emulator) as client:
        assert (await run_catalog(client, catalog, out, journal_url=journal_url)).ambiguous == (
            "song-00",
        )
        summary = await run_catalog(
            client, catalog, out, journal_url=journal_url, resubmit_ambiguous=True
        )
    assert summary.all_done
    assert emulator.stats().duplicate_submissions == 1
    assert manifest(out)[0]["submit_attempts"] == 2


async def test_timed_out_songs_are_resumed_by_id(tmp_path: Path, journal_url: str | None) -> None:
    """A song past its deadline stays submitted; the next run waits for it, never resubmits."""
    # 100x: the 5-s deadline is 50 real ms and songs take half a second, so a loaded machine
    # cannot stretch the deadline past every song's end (at 2000x it could, and did).
    emulator = make_emulator(time_scale=100.0)
    catalog = write_catalog(tmp_path / "songs.jsonl", 3)
    out = tmp_path / "out"
    async with client_for(emulator) as client:
        summary = await run_catalog(client, catalog, out, journal_url=journal_url, deadline=5.0)
        # Songs take 50-60 s: all time out, unless a loaded machine delays a poll past the
        # song's end (the poll then finds it completed, which is fine too).
        assert summary.unfinished
        assert summary.counts[SongState.SUBMITTED] == len(summary.unfinished)
        assert summary.failed == summary.ambiguous == ()
        for record in manifest(out):
            if record["status"] == "submitted":
                assert record["error"]["type"] == "GenerationTimeoutError"  # type: ignore[index]
        summary = await run_catalog(client, catalog, out, journal_url=journal_url)
    assert summary.all_done
    assert_all_downloaded_once(out, 3, emulator)


async def test_a_cancelled_run_resumes_without_paying_twice(
    tmp_path: Path, journal_url: str | None
) -> None:
    """Cancelling mid-run leaves a consistent journal; the rerun finishes every song, and
    songs caught mid-POST are ambiguous until adopted."""
    emulator = make_emulator()
    catalog = write_catalog(tmp_path / "songs.jsonl", 12)
    out = tmp_path / "out"
    async with client_for(emulator) as client:
        with anyio.CancelScope() as scope:
            submitted: list[str] = []

            def stop_after_four(event: CatalogEvent) -> None:
                # Counted as they happen: a shared journal's worker claims songs one at a
                # time, so fewer may be submitted at the same moment.
                if event.kind == "state" and event.state is SongState.SUBMITTED:
                    submitted.append(str(event.key))
                if len(submitted) >= 4:
                    scope.cancel()

            await run_catalog(
                client,
                catalog,
                out,
                journal_url=journal_url,
                max_in_flight=6,
                on_event=stop_after_four,
            )
        assert scope.cancel_called
        assert not list(out.glob(".*.part"))
        middle = read_summary(out, journal_url=journal_url)
        assert middle.downloaded < 12
        summary = await run_catalog(client, catalog, out, journal_url=journal_url)
        for key in summary.ambiguous:
            number = int(key.split("-")[1])
            found = [
                job.id
                for job in emulator.jobs.values()
                if job.prompt == f"Synthwave night drive number {number}, warm pads"
            ]
            if found:
                summary = await run_catalog(
                    client, catalog, out, journal_url=journal_url, adopt={key: found[0]}
                )
            else:
                summary = await run_catalog(
                    client, catalog, out, journal_url=journal_url, resubmit_ambiguous=True
                )
    assert summary.all_done
    assert_all_downloaded_once(out, 12, emulator)


async def download_attempts_per_call(directory: Path) -> int:
    """How many times one ``client.download`` call tries a download that always breaks."""
    probe = make_emulator()
    probe.inject("truncate_download", route="download", count=1000)
    catalog_request = aimlmusic.SongRequest(prompt="Probe tune for downloads", lyrics=LYRICS)
    async with client_for(probe) as client:
        generation = await client.generate(catalog_request)
        with pytest.raises(aimlmusic.DownloadError):
            await client.download(generation, directory / "unused.mp3")
    return probe.stats().faults["truncate_download"]


async def test_failed_downloads_are_retried_by_the_next_run(
    tmp_path: Path, journal_url: str | None
) -> None:
    """A download that keeps failing leaves the song completed; the rerun downloads it."""
    attempts = await download_attempts_per_call(tmp_path)
    emulator = make_emulator()
    emulator.inject("truncate_download", route="download", count=attempts)
    catalog = write_catalog(tmp_path / "songs.jsonl", 1)
    out = tmp_path / "out"
    async with client_for(emulator) as client:
        summary = await run_catalog(client, catalog, out, journal_url=journal_url)
        assert summary.unfinished == ("song-00",)
        assert summary.counts[SongState.COMPLETED] == 1
        assert not list(out.glob("*.mp3"))
        assert not list(out.glob(".*"))
        assert manifest(out)[0]["error"]["type"] == "DownloadError"  # type: ignore[index]
        summary = await run_catalog(client, catalog, out, journal_url=journal_url)
    assert summary.all_done
    assert_all_downloaded_once(out, 1, emulator)
    assert manifest(out)[0]["download_attempts"] == 2


def events_of(events: list[CatalogEvent], kind: str) -> list[CatalogEvent]:
    return [e for e in events if e.kind == kind]


async def test_throttling_is_reported(tmp_path: Path, journal_url: str | None) -> None:
    """A 429 storm shows up as throttled events, and the run still finishes."""
    # 200x, not the usual 2000x: the storm's 100 API s are then half a real second, which
    # the first POST reaches after the event even on a loaded machine (50 ms did not always).
    emulator = make_emulator(time_scale=200.0)
    catalog = write_catalog(tmp_path / "songs.jsonl", 2)
    events: list[CatalogEvent] = []

    def record(event: CatalogEvent) -> None:
        if event.state is SongState.SUBMITTING and not events_of(events, "state"):
            # The storm starts right before the first POST, whatever start-up took.
            emulator.throttle(emulator.now(), emulator.now() + 100.0)
        events.append(event)

    async with client_for(emulator) as client:
        summary = await run_catalog(
            client, catalog, tmp_path / "out", journal_url=journal_url, on_event=record
        )
    assert summary.all_done
    throttled = [e for e in events if e.kind == "throttled"]
    assert throttled
    assert throttled[0].progress.throttled
    assert events[-1].progress.throttled_responses >= 1


async def test_the_journal_refuses_a_different_server(tmp_path: Path) -> None:
    """An output directory made against one server is not resumed against another."""
    catalog = write_catalog(tmp_path / "songs.jsonl", 1)
    out = tmp_path / "out"
    async with client_for(make_emulator()) as client:
        await run_catalog(client, catalog, out, server_is_ephemeral=True)
        with pytest.raises(JournalError, match="belongs to runs against"):
            await run_catalog(client, catalog, out)


async def test_ephemeral_server_restarts_unfinished_songs(tmp_path: Path) -> None:
    """With a fresh in-process emulator each run, unfinished songs start over."""
    catalog = write_catalog(tmp_path / "songs.jsonl", 2)
    out = tmp_path / "out"
    async with client_for(make_emulator()) as client:
        with anyio.CancelScope() as scope:

            def stop_at_first_id(event: CatalogEvent) -> None:
                if event.state is SongState.SUBMITTED:
                    scope.cancel()

            await run_catalog(
                client, catalog, out, server_is_ephemeral=True, on_event=stop_at_first_id
            )
    assert read_summary(out).counts[SongState.SUBMITTED] >= 1
    fresh = make_emulator()
    async with client_for(fresh) as client:
        summary = await run_catalog(client, catalog, out, server_is_ephemeral=True)
    assert summary.all_done
    assert_all_downloaded_once(out, 2, fresh)


async def test_tagging_needs_mutagen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without mutagen, tagging is refused up front; tag_mp3=False runs untagged."""
    monkeypatch.setattr(_runner, "mutagen_available", lambda: False)
    catalog = write_catalog(tmp_path / "songs.jsonl", 1)
    async with client_for(make_emulator()) as client:
        with pytest.raises(aimlmusic.ConfigurationError, match="mutagen"):
            await run_catalog(client, catalog, tmp_path / "out")
        summary = await run_catalog(client, catalog, tmp_path / "out", tag_mp3=False)
    assert summary.all_done
    assert manifest(tmp_path / "out")[0]["tagged"] is False


async def test_a_broken_event_callback_does_not_break_the_run(tmp_path: Path) -> None:
    """An on_event callback that raises is logged once; the run completes."""
    catalog = write_catalog(tmp_path / "songs.jsonl", 2)

    def broken(event: CatalogEvent) -> None:
        raise RuntimeError("display crashed")

    async with client_for(make_emulator()) as client:
        summary = await run_catalog(client, catalog, tmp_path / "out", on_event=broken)
    assert summary.all_done


async def test_a_file_already_in_the_output_directory_is_never_replaced(
    tmp_path: Path,
) -> None:
    """A file of the user's with a song's name (case aside) stays as it is: the song is stored
    under the next free name, and a rerun sends nothing and renames nothing."""
    emulator = make_emulator()
    catalog = write_catalog(tmp_path / "songs.jsonl", 2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "track 00.MP3").write_bytes(b"my own recording")
    for _ in range(2):
        async with client_for(emulator) as client:
            summary = await run_catalog(client, catalog, out)
        assert summary.all_done
        assert (out / "track 00.MP3").read_bytes() == b"my own recording"
        assert [r["file"] for r in manifest(out)] == ["Track 00-song-00.mp3", "Track 01.wav"]
    assert emulator.stats().jobs_submitted == 2


async def test_a_stopped_run_does_not_name_in_the_log_each_song_its_journal_keeps(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopping a run while its songs generate logs no WARNING per song left behind (the
    journal keeps their ids, and the next run resumes them); the ids are in the journal."""
    emulator = make_emulator(durations=lambda rng: 1e9)  # no song ever finishes
    catalog = write_catalog(tmp_path / "songs.jsonl", 3)
    caplog.set_level(logging.WARNING, logger="aimlmusic")
    with anyio.CancelScope() as scope:

        def stop_once_all_submitted(event: CatalogEvent) -> None:
            if event.progress.counts.get(SongState.SUBMITTED, 0) == 3:
                scope.cancel()

        async with client_for(emulator) as client:
            await run_catalog(client, catalog, tmp_path / "out", on_event=stop_once_all_submitted)
    assert not [r for r in caplog.records if "left before its result" in r.getMessage()]
    with Journal.in_directory(
        tmp_path / "out", endpoint=_runner._endpoint("http://127.0.0.1")
    ) as j:
        assert sorted(e.generation_id or "" for e in j.entries([SongState.SUBMITTED])) == sorted(
            emulator.jobs
        )


class _Died(BaseException):
    """Stands for the process dying at the worst moment."""


async def test_a_song_stored_by_a_run_that_died_is_its_own_under_a_new_title(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that died between storing an MP3 and recording it leaves the song's own file: a
    rerun under an edited title re-tags it in place, without paying again (review 55 #2)."""
    emulator = make_emulator()
    catalog = write_catalog(tmp_path / "songs.jsonl", 1, formats=["mp3"])
    out = tmp_path / "out"

    def die(*args: object, **kwargs: object) -> NoReturn:
        raise _Died

    with monkeypatch.context() as patch:
        patch.setattr(Journal, "mark_downloaded", die)
        with pytest.raises(BaseException) as caught:  # the task group wraps it in a group
            async with client_for(emulator) as client:
                await run_catalog(client, catalog, out)
    assert "_Died()" in repr(caught.value)
    assert [p.name for p in out.glob("*.mp3")] == ["Track 00.mp3"]
    catalog.write_text(catalog.read_text(encoding="utf-8").replace("Track 00", "Track 00 (edit)"))
    async with client_for(emulator) as client:
        summary = await run_catalog(client, catalog, out)
    assert summary.all_done
    (record,) = manifest(out)
    assert record["file"] == "Track 00.mp3"
    assert record["sha256"] == hashlib.sha256((out / "Track 00.mp3").read_bytes()).hexdigest()
    assert emulator.stats().jobs_submitted == 1


async def test_a_file_put_at_a_songs_name_after_it_was_given_is_kept(tmp_path: Path) -> None:
    """A file that appears at a song's name after the journal gave it out is not replaced:
    the song stays completed with the reason, and is stored once the file is moved away."""
    emulator = make_emulator()
    catalog = write_catalog(tmp_path / "songs.jsonl", 1, formats=["wav"])
    out = tmp_path / "out"
    with Journal.in_directory(_mkdir(out), endpoint=_runner._endpoint("http://127.0.0.1")) as j:
        _runner._load(j, catalog, out)
    (out / "Track 00.wav").write_bytes(b"my own recording")
    async with client_for(emulator) as client:
        summary = await run_catalog(client, catalog, out)
    assert summary.unfinished == ("song-00",)
    assert (out / "Track 00.wav").read_bytes() == b"my own recording"
    (record,) = manifest(out)
    assert record["status"] == "completed"
    assert "is not this song's" in record["error"]["message"]
    (out / "Track 00.wav").rename(tmp_path / "mine.wav")
    async with client_for(emulator) as client:
        assert (await run_catalog(client, catalog, out)).all_done
    assert emulator.stats().jobs_submitted == 1


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def test_adopt_hints_are_quoted_for_the_shell() -> None:
    """An --adopt hint can be pasted as it is, whatever the key holds."""
    assert _runner.adopt_option("song-0", "gen-1:minimax/music-1.5") == (
        "--adopt song-0=gen-1:minimax/music-1.5"
    )
    assert _runner.adopt_option("it's my song", "gen-1") == "--adopt 'it'\"'\"'s my song=gen-1'"


async def test_adopting_an_id_that_could_never_be_sent_is_refused_up_front(
    tmp_path: Path, journal_url: str | None
) -> None:
    """run_catalog(adopt=...) with an id the client could never poll raises JournalError
    naming the problem before the output directory is made or anything is sent."""
    emulator = make_emulator()
    catalog = write_catalog(tmp_path / "songs.jsonl", 1)
    out = tmp_path / "out"
    async with client_for(emulator) as client:
        with pytest.raises(JournalError, match="control character"):
            await run_catalog(
                client, catalog, out, journal_url=journal_url, adopt={"song-00": "gen-1\r"}
            )
    assert not out.exists()
    assert sum(emulator.stats().requests.values()) == 0


async def test_a_song_failed_unsent_by_a_refused_batch_stays_pending(tmp_path: Path) -> None:
    """A song the batch failed unsent with another song's 401 (the batch refused) stays
    pending and stops the run for the key (it was marked failed, never to be sent again)."""
    catalog = write_catalog(tmp_path / "songs.jsonl", 1)
    out = tmp_path / "out"
    out.mkdir()
    async with client_for(make_emulator()) as client:
        with Journal.in_directory(out, endpoint=_runner._endpoint(client.base_url)) as journal:
            journal.sync_catalog(load_catalog(catalog))
            run = handed_run(client, journal, out, "song-00")
            refusal = aimlmusic.AuthenticationError("Invalid API key", status_code=401)
            request = journal.entry("song-00").request
            async with anyio.create_task_group() as work:
                run._result(aimlmusic.SongResult("song-00", request, error=refusal), work)
            assert journal.entry("song-00").state is SongState.PENDING
    assert run.stop_reason is not None
    assert run.stop_reason[0] == "auth"
