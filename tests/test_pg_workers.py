"""Several workers draining one catalog through the PostgreSQL journal, end to end against the
emulator: every song generated and downloaded once, a dead worker's songs taken over (adopted
by id, never paid twice), the manifest listing each song once, and a worker that waits while
another live worker still holds songs.

Leases run on an injected clock (``lease_clock``), so expiry needs no waiting; the emulator
and the workers' sleeps run on the emulator's compressed clock.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from _catalog_support import client_for, handed_run, manifest
from _catalog_support import write_catalog as write_any_catalog

import aimlmusic
from aimlmusic._errors import SendingRefused
from aimlmusic.catalog import CatalogEvent, PgJournal, SongState, _runner, load_catalog, run_catalog
from aimlmusic.catalog._runner import _endpoint
from aimlmusic.catalog._store import PARTIAL_DIR, partial_dir
from aimlmusic.emulator import TEST_API_KEY, Emulator, EmulatorConfig
from aimlmusic.testing import VirtualClock

pytestmark = pytest.mark.anyio

SECOND_KEY = "second-account-key"
#: Seconds a lease lasts in these tests (on the injected lease clock).
LEASE = 60.0
#: The lease clock's time for a worker that outlives every lease the "dead" worker took.
LATER = 100_000.0


def make_emulator() -> Emulator:
    return Emulator(
        EmulatorConfig(time_scale=2000.0, audio_seconds=0.3, api_keys={TEST_API_KEY, SECOND_KEY})
    )


def song_files(*outs: Path) -> list[str]:
    return sorted(
        p.name
        for out in outs
        for p in out.iterdir()
        if p.is_file() and not p.name.startswith(("aimlmusic-", "manifest", "."))
    )


async def test_two_workers_on_two_accounts_generate_each_song_once(
    tmp_path: Path, postgres_url: str
) -> None:
    """Two workers (own keys, own output directories) split the catalog: one POST and one
    file per song, and both manifests list every song once as downloaded."""
    emulator = make_emulator()
    catalog = write_catalog(tmp_path / "songs.jsonl", 12)
    outs = [tmp_path / "host-a", tmp_path / "host-b"]

    async def worker(key: str, out: Path, name: str) -> None:
        async with client_for(emulator, key) as client:
            summary = await run_catalog(
                client,
                catalog,
                out,
                journal_url=postgres_url,
                worker_id=name,
                max_in_flight=3,
                tag_mp3=False,
            )
        assert summary.all_done

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker, TEST_API_KEY, outs[0], "A")
        tg.start_soon(worker, SECOND_KEY, outs[1], "B")

    stats = emulator.stats()
    assert stats.requests["submit"] == 12
    assert stats.duplicate_submissions == 0
    for out in outs:
        records = manifest(out)
        assert [r["key"] for r in records] == [f"song-{i:02d}" for i in range(12)]
        assert {r["status"] for r in records} == {"downloaded"}
    files = song_files(*outs)
    assert files == sorted(str(r["file"]) for r in manifest(outs[0]))
    with PgJournal(postgres_url, endpoint=None) as journal:
        downloads = {w["worker"]: w["downloaded"] for w in journal.workers()}
    assert downloads["A"] > 0
    assert downloads["B"] > 0
    assert sum(downloads.values()) == 12


async def test_workers_sharing_one_directory_write_each_file_once(
    tmp_path: Path, postgres_url: str
) -> None:
    """Two workers on one host with one output directory: each file once, its bytes as the
    manifest says, and no partial download left behind."""
    emulator = make_emulator()
    catalog = write_catalog(tmp_path / "songs.jsonl", 8)
    out = tmp_path / "out"

    async def worker(name: str) -> None:
        async with client_for(emulator) as client:
            await run_catalog(
                client, catalog, out, journal_url=postgres_url, worker_id=name, tag_mp3=False
            )

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker, "one")
        tg.start_soon(worker, "two")

    records = manifest(out)
    assert len(records) == 8
    assert song_files(out) == sorted(str(r["file"]) for r in records)
    for record in records:
        data = (out / str(record["file"])).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record["sha256"]
    assert not (out / ".aimlmusic-partial").exists()
    assert emulator.stats().requests["submit"] == 8


async def test_a_dead_workers_songs_are_taken_over_without_paying_twice(
    tmp_path: Path, postgres_url: str
) -> None:
    """After a worker died: its submitted song is adopted by id (polled, downloaded, no new
    POST), the song it left submitting becomes ambiguous (not sent), its claimed pending song
    is generated normally; the manifest lists each song once."""
    emulator = make_emulator()
    catalog = write_catalog(tmp_path / "songs.jsonl", 5)
    async with client_for(emulator) as client:
        endpoint = _endpoint(client.base_url)
        # The dead worker: it claimed three songs at lease time 0 and never came back.
        with PgJournal(
            postgres_url, endpoint=endpoint, worker_id="dead", lease_seconds=LEASE, now=lambda: 0
        ) as dead:
            assert dead.sync_catalog(load_catalog(catalog)) == []
            claimed = [dead.claim(resubmit_ambiguous=False, retry_failed=False) for _ in range(3)]
            assert [e.key for e in claimed if e is not None] == ["song-00", "song-01", "song-02"]
            first = dead.entry("song-00")
            assert first is not None
            generation_id = (await client.submit(first.request)).id
            dead.mark_submitting("song-00")
            dead.mark_submitted("song-00", generation_id)
            dead.mark_submitting("song-01")  # ...and died before its POST returned
        assert emulator.stats().requests["submit"] == 1
        # ... in the middle of a download into its own partial directory.
        left_behind = partial_dir(tmp_path / "out", "dead") / "song-00.mp3.part"
        left_behind.parent.mkdir(parents=True)
        left_behind.write_bytes(b"half a song")

        summary = await run_catalog(
            client,
            catalog,
            tmp_path / "out",
            journal_url=postgres_url,
            worker_id="survivor",
            lease_clock=lambda: LATER,
            tag_mp3=False,
        )

    stats = emulator.stats()
    assert stats.requests["submit"] == 4  # the dead worker's one, then song-02..04
    assert stats.duplicate_submissions == 0
    assert summary.ambiguous == ("song-01",)
    assert summary.downloaded == 4
    records = {str(r["key"]): r for r in manifest(tmp_path / "out")}
    assert len(records) == 5
    assert records["song-00"]["generation_id"] == generation_id
    assert records["song-00"]["status"] == "downloaded"
    assert records["song-00"]["submit_attempts"] == 1
    assert records["song-01"]["status"] == "ambiguous"
    assert not (tmp_path / "out" / PARTIAL_DIR).exists()  # the dead worker's half-song too


async def test_a_live_worker_between_songs_keeps_its_partial_directory(
    tmp_path: Path, postgres_url: str
) -> None:
    """A worker whose run is live but holds no lease (between songs, or writing the
    manifest at its end) keeps its partial directory; another worker's run leaves it."""
    emulator = make_emulator()
    catalog = write_catalog(tmp_path / "songs.jsonl", 3)
    out = tmp_path / "out"
    async with client_for(emulator) as client:
        with PgJournal(
            postgres_url, endpoint=_endpoint(client.base_url), worker_id="idle", lease_seconds=LEASE
        ) as idle:
            assert idle.sync_catalog(load_catalog(catalog)) == []
            idle.start_run()
            its_file = partial_dir(out, "idle") / ".manifest.jsonl.x.tmp"
            its_file.parent.mkdir(parents=True)
            its_file.write_text("being written")
            summary = await run_catalog(
                client, catalog, out, journal_url=postgres_url, worker_id="busy", tag_mp3=False
            )
            assert summary.downloaded == 3
            assert its_file.read_text() == "being written"
            idle.finish_run("finished")


async def test_a_worker_waits_while_another_live_worker_holds_a_song(
    tmp_path: Path, postgres_url: str
) -> None:
    """With nothing left to claim but a song under another worker's live lease, the worker
    waits instead of ending, and takes the song over once that lease expires."""
    emulator = make_emulator()
    catalog = write_catalog(tmp_path / "songs.jsonl", 4)
    lease_now = [0.0]
    expired_at: list[float] = []
    async with client_for(emulator) as client:
        endpoint = _endpoint(client.base_url)
        with PgJournal(
            postgres_url,
            endpoint=endpoint,
            worker_id="slow",
            lease_seconds=LEASE,
            now=lambda: lease_now[0],
        ) as slow:
            assert slow.sync_catalog(load_catalog(catalog)) == []
            held = slow.claim(resubmit_ambiguous=False, retry_failed=False)
            assert held is not None
            assert held.key == "song-00"

        async def expire_when_the_rest_is_done() -> None:
            with PgJournal(postgres_url, endpoint=None) as watcher:
                while watcher.counts()[SongState.DOWNLOADED] < 3:
                    await client.clock.sleep(1.0)
                await client.clock.sleep(30.0)  # the worker is waiting by now
                entry = watcher.entry("song-00")
                assert entry is not None
                assert entry.state is SongState.PENDING  # not taken while the lease lived
                expired_at.append(client.clock.now())
                lease_now[0] = LEASE + 1  # "slow" died: its lease runs out

        async with anyio.create_task_group() as tg:
            tg.start_soon(expire_when_the_rest_is_done)
            summary = await run_catalog(
                client,
                catalog,
                tmp_path / "out",
                journal_url=postgres_url,
                worker_id="patient",
                lease_clock=lambda: lease_now[0],
                recheck_seconds=5.0,
                tag_mp3=False,
            )
            finished_at = client.clock.now()

    assert expired_at
    assert finished_at > expired_at[0]
    assert summary.all_done
    assert emulator.stats().requests["submit"] == 4


async def test_an_in_process_emulator_cannot_share_a_journal(
    tmp_path: Path, postgres_url: str
) -> None:
    """A server that forgets its generations is refused before anything is sent."""
    emulator = make_emulator()
    catalog = write_catalog(tmp_path / "songs.jsonl", 2)
    async with client_for(emulator) as client:
        with pytest.raises(aimlmusic.ConfigurationError, match="keeps its generations"):
            await run_catalog(
                client,
                catalog,
                tmp_path / "out",
                journal_url=postgres_url,
                server_is_ephemeral=True,
            )
    assert sum(emulator.stats().requests.values()) == 0


async def test_another_accounts_generation_waits_for_a_worker_of_that_account(
    tmp_path: Path, postgres_url: str
) -> None:
    """A dead worker's submitted song is adopted only by a worker with the same key (its id
    is invisible to other accounts): another account leaves it submitted, never failed nor
    sent again, and a worker of the right account then downloads it."""
    emulator = make_emulator()
    catalog = write_catalog(tmp_path / "songs.jsonl", 2)
    async with client_for(emulator, TEST_API_KEY) as client:
        first = load_catalog(catalog)[0]
        generation_id = (await client.submit(first.request)).id
        account = client.key_fingerprint
        assert account not in repr(TEST_API_KEY)
        with PgJournal(
            postgres_url,
            endpoint=_endpoint(client.base_url),
            worker_id="dead",
            now=lambda: 0,
            account=account,
        ) as dead:
            assert dead.sync_catalog(load_catalog(catalog)) == []
            assert dead.claim(resubmit_ambiguous=False, retry_failed=False) is not None
            dead.mark_submitting(first.key)
            dead.mark_submitted(first.key, generation_id)

    async with client_for(emulator, SECOND_KEY) as other:
        summary = await run_catalog(
            other,
            catalog,
            tmp_path / "b",
            journal_url=postgres_url,
            lease_clock=lambda: LATER,
            tag_mp3=False,
        )
    assert summary.unfinished == (first.key,)
    assert summary.failed == ()
    async with client_for(emulator, TEST_API_KEY) as same:
        summary = await run_catalog(
            same,
            catalog,
            tmp_path / "a",
            journal_url=postgres_url,
            lease_clock=lambda: LATER,
            tag_mp3=False,
        )
    assert summary.all_done
    assert emulator.stats().requests["submit"] == 2
    assert emulator.stats().duplicate_submissions == 0


async def test_heartbeats_keep_a_live_workers_songs_its_own(
    tmp_path: Path, postgres_url: str
) -> None:
    """Leases far shorter than a song (20 s against 50-60 s) are renewed while a worker
    lives: no song is ever driven by both workers, and nothing is sent twice."""
    seen: dict[str, set[str]] = {"A": set(), "B": set()}
    catalog = write_catalog(tmp_path / "songs.jsonl", 8)
    # Virtual time for the emulator, the workers and their leases: time only moves when
    # every task waits, so a loaded machine cannot make a live worker's lease run out.
    clock = VirtualClock()
    async with clock:
        emulator = Emulator(
            EmulatorConfig(time_scale=1.0, audio_seconds=0.3, api_keys={TEST_API_KEY}),
            clock=clock,
        )

        async def worker(name: str) -> None:
            def record(event: CatalogEvent) -> None:
                if event.kind == "state" and event.key is not None:
                    seen[name].add(event.key)

            async with client_for(emulator) as client:
                summary = await run_catalog(
                    client,
                    catalog,
                    tmp_path / name,
                    journal_url=postgres_url,
                    worker_id=name,
                    lease_seconds=20.0,
                    lease_clock=clock.now,
                    max_in_flight=4,
                    tag_mp3=False,
                    on_event=record,
                )
            assert summary.all_done

        async with anyio.create_task_group() as tg:
            tg.start_soon(worker, "A")
            tg.start_soon(worker, "B")
    assert seen["A"]
    assert seen["B"]
    assert not seen["A"] & seen["B"]
    assert emulator.stats().requests["submit"] == 8


def write_catalog(path: Path, count: int) -> Path:
    """Numbered songs alternating WAV and MP3."""
    return write_any_catalog(path, count, formats=("wav", "mp3"))


@contextlib.asynccontextmanager
async def stalled_and_other(
    tmp_path: Path, postgres_url: str, now: list[float]
) -> AsyncIterator[tuple[PgJournal, PgJournal, str, _runner._Run]]:
    """Two workers of one shared journal on the lease clock ``now``: ``stalled`` has
    claimed the catalog's one song and handed it to its run's scheduler (not sent yet);
    ``other`` is ready to take it over once ``now`` passes the lease."""
    catalog = write_catalog(tmp_path / "songs.jsonl", 1)
    async with client_for(make_emulator()) as client:
        endpoint = _endpoint(client.base_url)
        with (
            PgJournal(
                postgres_url, endpoint=endpoint, worker_id="stalled", lease_seconds=60,
                now=lambda: now[0],
            ) as stalled,
            PgJournal(
                postgres_url, endpoint=endpoint, worker_id="other", lease_seconds=60,
                now=lambda: now[0],
            ) as other,
        ):  # fmt: skip
            stalled.sync_catalog(load_catalog(catalog))
            song = stalled.claim(resubmit_ambiguous=False, retry_failed=False)
            assert song is not None
            yield stalled, other, song.key, handed_run(client, stalled, tmp_path / "out", song.key)


@pytest.mark.parametrize("taken_to", ["claimed", "submitting", "submitted"])
async def test_a_stalled_worker_never_sends_a_song_another_worker_took_over(
    tmp_path: Path, postgres_url: str, taken_to: str
) -> None:
    """A worker that stalled past its lease with a song handed to its scheduler keeps that
    POST home (and stops, reason "lease") however far the worker that took the song over
    has gone with it: claimed, being sent, or sent. Sent, it used to go out again."""
    now = [0.0]
    async with stalled_and_other(tmp_path, postgres_url, now) as (_, other, key, run):
        now[0] = 1000.0  # the worker stalls past its lease; the other takes the song
        assert other.claim(resubmit_ambiguous=False, retry_failed=False) is not None
        if taken_to != "claimed":
            other.mark_submitting(key)
        if taken_to == "submitted":
            other.mark_submitted(key, "the-other-workers-generation")
        with pytest.raises(SendingRefused):
            run.record_sending(key, "submit")
        assert run.stop_reason is not None
        assert run.stop_reason[0] == "lease"


async def test_a_worker_resending_after_a_429_asks_whether_the_song_is_still_its_own(
    tmp_path: Path, postgres_url: str
) -> None:
    """A worker whose POST was answered 429, and which then stalled past its lease while
    another worker took the song over and sent it, keeps its resend home (reason
    "lease"); it used to send the song again, and both were paid."""
    now = [0.0]
    async with stalled_and_other(tmp_path, postgres_url, now) as (_, other, key, run):
        run.record_sending(key, "submit")  # the first POST leaves...
        run.attempt_refused(key, "answered 429")  # ... and is answered 429: pending again
        now[0] = 1000.0  # the worker stalls past its lease; the other takes the song
        assert other.claim(resubmit_ambiguous=False, retry_failed=False) is not None
        other.mark_submitting(key)
        with pytest.raises(SendingRefused):
            run.record_sending(key, "submit")  # the resend, once the pause is over
        assert run.stop_reason is not None
        assert run.stop_reason[0] == "lease"


async def test_a_worker_stalled_with_its_post_on_the_way_records_the_id(
    tmp_path: Path, postgres_url: str
) -> None:
    """A worker that stalled past its lease while its POST was on its way, the song made
    ambiguous by another worker's claim but not taken, records the id that POST returns
    and goes on (no stop); the id was only logged, and the run stopped for "lease"."""
    now = [0.0]
    async with stalled_and_other(tmp_path, postgres_url, now) as (_, other, key, run):
        run.record_sending(key, "submit")  # the POST's first byte goes out
        now[0] = 1000.0  # the worker stalls past its lease
        assert other.claim(resubmit_ambiguous=False, retry_failed=False) is None
        recovered = other.entry(key)
        assert recovered is not None
        assert recovered.state is SongState.AMBIGUOUS
        run.record_submitted(key, "gen-paid")  # the POST returns
        entry = other.entry(key)
        assert entry is not None
        assert (entry.state, entry.generation_id) == (SongState.SUBMITTED, "gen-paid")
        assert other.others_working() == 1  # the stalled worker's again, under a live lease
        assert run.stop_reason is None
        assert run.counts[SongState.SUBMITTED] == 1


async def test_a_stalled_worker_leaves_a_song_the_other_worker_finished(
    tmp_path: Path, postgres_url: str
) -> None:
    """A worker that stalled past its lease while another worker took its song over and
    downloaded it leaves the song when its own download ends (LeaseLost): no stop for a
    failed journal, no --adopt hint for a song already downloaded (both happened)."""
    now = [0.0]
    async with stalled_and_other(tmp_path, postgres_url, now) as (stalled, other, key, run):
        song = stalled.entry(key)
        assert song is not None
        generation = await run.client.generate(song.request)
        run.record_sending(key, "submit")
        run.record_submitted(key, generation.id)
        now[0] = 1000.0  # the worker stalls past its lease; the other takes the song
        assert other.claim(resubmit_ambiguous=False, retry_failed=False) is not None
        other.mark_completed(key, generation)
        completed = other.entry(key)  # as the stalled worker's download sees it
        assert completed is not None
        other.mark_downloaded(key, sha256="0" * 64, size=1, tagged=False)
        (tmp_path / "out").mkdir()
        await run._download(completed)
        assert run.stop_reason is None
        entry = other.entry(key)
        assert entry is not None
        assert (entry.state, entry.sha256) == (SongState.DOWNLOADED, "0" * 64)


def test_a_journal_on_a_search_path_after_another_gets_its_own_indexes(
    postgres_url: str,
) -> None:
    """A journal made in a schema listed before another schema holding a journal gets its
    own indexes (asked about by unqualified name, the other schema's were found)."""
    import psycopg
    from _servers import with_search_path

    base, _, _ = postgres_url.partition("?")
    first = f"aimlmusic_test_first_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        older = admin.execute("SELECT current_schema()").fetchone()
        assert older is not None
        PgJournal(postgres_url, endpoint="https://api.example").close()  # the other journal
        admin.execute(f'CREATE SCHEMA "{first}"')
        try:
            url = with_search_path(base, f"{first},{older[0]}")
            PgJournal(url, endpoint="https://api.example").close()
            indexes = admin.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = %s", (first,)
            ).fetchall()
        finally:
            admin.execute(f'DROP SCHEMA "{first}" CASCADE')
    assert {"aimlmusic_songs_by_owner", "aimlmusic_songs_submitting"} <= {i[0] for i in indexes}
