"""The learned timing kept in the journal: saved by one run, adopted by the next."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from _catalog_support import client_for, write_catalog

from aimlmusic import FixedInterval, LearnedPolling
from aimlmusic.catalog import (
    JOURNAL_NAME,
    CatalogEvent,
    Journal,
    JournalError,
    _runner,
    _timing,
    run_catalog,
)
from aimlmusic.catalog._journal_api import CatalogJournal
from aimlmusic.catalog._timing import CLOCK_SKEW, SAVE_EVERY, JournalTiming
from aimlmusic.emulator import Emulator, EmulatorConfig, Uniform

pytestmark = pytest.mark.anyio

DAY = 86_400.0
ENDPOINT = "http://127.0.0.1:1"


def learned(songs: int, low: float = 20.0, high: float = 25.0) -> LearnedPolling:
    """A policy that has seen ``songs`` songs finish between ``low`` and ``high`` seconds."""
    policy = LearnedPolling()
    for index in range(songs):
        done = low + (high - low) * index / max(1, songs - 1)
        policy.observe_finished(f"s{index}", 0.0, done - 1.0, done)
    return policy


class Clocks:
    """A wall clock and a monotonic one that tests move by hand."""

    def __init__(self) -> None:
        self.wall = 1_800_000_000.0
        self.monotonic = 0.0


def timing(journal: CatalogJournal, policy: object, clocks: Clocks) -> JournalTiming:
    return JournalTiming(
        journal, policy, wall=lambda: clocks.wall, monotonic=lambda: clocks.monotonic
    )


@pytest.fixture(params=["sqlite", "postgres"])
def journal(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CatalogJournal]:
    """An empty journal of each kind: SQLite in a directory, PostgreSQL in a schema."""
    opened: CatalogJournal
    if request.param == "sqlite":
        opened = Journal.in_directory(tmp_path, endpoint=ENDPOINT)
    else:
        from aimlmusic.catalog._pg_journal import PgJournal

        opened = PgJournal(request.getfixturevalue("postgres_url"), endpoint=ENDPOINT)
    yield opened
    opened.close()


async def test_a_run_saves_its_timing_and_the_next_run_starts_from_it(
    tmp_path: Path, journal_url: str | None
) -> None:
    """A run leaves its estimate in the journal; a new client's next run starts from it
    (before its first song: the same median, worth the songs behind it), not from the
    documented 50-60 s."""
    emulator = Emulator(
        EmulatorConfig(time_scale=2000.0, audio_seconds=0.3, durations=Uniform(80.0, 90.0))
    )
    out = tmp_path / "out"
    async with client_for(emulator) as client:
        first = await run_catalog(
            client, write_catalog(tmp_path / "a.jsonl", 8), out, journal_url=journal_url
        )
        learned_by_run = client.poll_policy.snapshot  # type: ignore[attr-defined]
    assert first.downloaded == 8
    assert learned_by_run.songs > 3

    at_start: list[tuple[float, float]] = []

    def on_event(event: CatalogEvent) -> None:
        if event.kind == "started":
            at_start.append((policy.snapshot.quantile(0.5), policy.snapshot.evidence))

    async with client_for(emulator) as client:
        policy = client.poll_policy
        assert isinstance(policy, LearnedPolling)
        assert policy.snapshot.evidence == 0  # the documented prior
        second = await run_catalog(
            client,
            write_catalog(tmp_path / "b.jsonl", 10),
            out,
            journal_url=journal_url,
            on_event=on_event,
        )
    assert second.downloaded == 10
    assert at_start == [
        (
            pytest.approx(learned_by_run.quantile(0.5), rel=0.01),
            pytest.approx(learned_by_run.songs, rel=0.01),
        )
    ]


def test_the_saved_value_is_the_export_and_when_it_was_saved(journal: CatalogJournal) -> None:
    """The journal holds JSON: the save's Unix time and the policy's exported estimate."""
    clocks = Clocks()
    policy = learned(6)
    assert timing(journal, policy, clocks).save(force=True)
    saved = json.loads(journal.timing_estimate() or "")
    assert saved == {"saved_at": clocks.wall, "estimate": policy.export_estimate()}


def test_saves_only_a_changed_estimate_of_enough_songs_and_not_too_often(
    journal: CatalogJournal,
) -> None:
    """No save on the prior, nor of an unchanged estimate; a changed one waits SAVE_EVERY
    unless forced."""
    clocks = Clocks()
    policy = LearnedPolling()
    keeper = timing(journal, policy, clocks)
    assert not keeper.save(force=True)  # the prior alone is not worth keeping
    assert journal.timing_estimate() is None
    for index in range(5):
        policy.observe_finished(f"s{index}", 0.0, 20.0, 21.0 + index)
    assert keeper.save()
    assert not keeper.save(force=True)  # unchanged
    policy.observe_finished("late", 0.0, 30.0, 31.0)
    assert not keeper.save()  # changed, but saved a moment ago
    clocks.monotonic += SAVE_EVERY
    assert keeper.save()
    assert json.loads(journal.timing_estimate() or "")["estimate"]["songs"] > 5


HUGE = "1" + "0" * 400  # a JSON integer too large for a float


@pytest.mark.parametrize(
    ("raw", "age", "reason"),
    [
        ("not json", 0.0, "unreadable"),
        ("[" * 50_000, 0.0, "unreadable"),  # nested past the JSON parser's depth
        ('["a list"]', 0.0, "unreadable"),
        ('{"saved_at": "yesterday", "estimate": {}}', 0.0, "unreadable"),
        ('{"saved_at": true, "estimate": {}}', 0.0, "unreadable"),
        (f'{{"saved_at": {HUGE}, "estimate": {{}}}}', 0.0, "unreadable"),
        ('{"saved_at": NOW, "estimate": {"format": 999}}', None, "unknown format"),
        ('{"saved_at": NOW, "estimate": SONGS_HUGE}', None, "unknown format"),
        (None, 2 * DAY, "stale"),  # a good estimate, too old
        (None, -2 * CLOCK_SKEW, "from the future"),  # a good estimate, saved later than now
    ],
)
def test_a_stale_or_unreadable_estimate_is_ignored(
    journal: CatalogJournal,
    raw: str | None,
    age: float | None,
    reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Unreadable (hostile JSON included), of an unknown format, older than a day or from
    the future: the policy keeps the documented prior, and the debug log says why."""
    clocks = Clocks()
    if raw is None:
        assert timing(journal, learned(6), clocks).save(force=True)
        clocks.wall += age or 0.0
    else:
        huge_songs = {**learned(6).export_estimate(), "songs": 0}
        text = json.dumps(huge_songs).replace('"songs": 0', f'"songs": {HUGE}')
        raw = raw.replace("SONGS_HUGE", text).replace("NOW", str(clocks.wall))
        journal.save_timing_estimate(raw)
    fresh = LearnedPolling()
    with caplog.at_level(logging.DEBUG, logger="aimlmusic"):
        assert not timing(journal, fresh, clocks).adopt()
    assert fresh.snapshot.evidence == 0
    assert f"timing estimate is {reason}" in caplog.text or f"has an {reason}" in caplog.text


def test_a_clock_a_little_behind_still_adopts(journal: CatalogJournal) -> None:
    """An estimate saved by a host whose clock is ahead by less than CLOCK_SKEW is adopted."""
    clocks = Clocks()
    assert timing(journal, learned(6), clocks).save(force=True)
    clocks.wall -= CLOCK_SKEW / 2
    assert timing(journal, LearnedPolling(), clocks).adopt()


def test_a_fresh_estimate_is_adopted_and_not_over_own_songs(journal: CatalogJournal) -> None:
    """A policy with no song of its own adopts the saved estimate; one that has seen songs
    keeps what it learned."""
    clocks = Clocks()
    assert timing(journal, learned(8), clocks).save(force=True)
    clocks.wall += DAY / 2
    fresh = LearnedPolling()
    keeper = timing(journal, fresh, clocks)
    assert keeper.adopt()
    assert fresh.snapshot.quantile(0.5) == pytest.approx(22.5, abs=2.5)
    assert not keeper.save(force=True)  # adopted, not learned: nothing new to save
    busy = learned(4, 80.0, 90.0)
    before = busy.snapshot.quantile(0.5)
    assert not timing(journal, busy, clocks).adopt()
    assert busy.snapshot.quantile(0.5) == before


def test_a_policy_that_does_not_learn_is_left_alone(journal: CatalogJournal) -> None:
    """FixedInterval has no estimate: nothing is adopted, nothing saved."""
    clocks = Clocks()
    assert timing(journal, learned(6), clocks).save(force=True)
    before = journal.timing_estimate()
    fixed = timing(journal, FixedInterval(10.0), clocks)
    assert not fixed.adopt()
    assert not fixed.save(force=True)
    assert journal.timing_estimate() == before


class BrokenJournal:
    """A journal whose database fails on the timing calls (the run itself goes on)."""

    def timing_estimate(self) -> str | None:
        raise JournalError("the journal postgresql://db/x failed: connection lost")

    def save_timing_estimate(self, data: str) -> None:
        raise JournalError("the journal postgresql://db/x failed: connection lost")


def test_a_failing_journal_costs_the_timing_not_the_run(caplog: pytest.LogCaptureFixture) -> None:
    """A JournalError on reading or saving the estimate is a warning, never raised."""
    clocks = Clocks()
    keeper = JournalTiming(
        BrokenJournal(),  # type: ignore[arg-type]
        learned(6),
        wall=lambda: clocks.wall,
        monotonic=lambda: clocks.monotonic,
    )
    with caplog.at_level(logging.WARNING, logger="aimlmusic"):
        assert not keeper.save(force=True)
    assert "could not save the timing estimate" in caplog.text
    fresh = JournalTiming(BrokenJournal(), LearnedPolling())  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="aimlmusic"):
        assert not fresh.adopt()
    assert "could not read the journal's timing estimate" in caplog.text


async def test_a_failing_save_at_the_end_still_ends_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A journal that cannot save the estimate (a full disk) costs a warning: every song is
    downloaded and the run is recorded as ended."""

    def full_disk(self: Journal, data: str) -> None:
        raise JournalError(f"saving the timing estimate in {self.path}: database or disk is full")

    monkeypatch.setattr(Journal, "save_timing_estimate", full_disk)
    emulator = Emulator(EmulatorConfig(time_scale=2000.0, audio_seconds=0.3))
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="aimlmusic"):
        async with client_for(emulator) as client:
            summary = await run_catalog(client, write_catalog(tmp_path / "a.jsonl", 6), out)
    assert summary.downloaded == 6
    assert "could not save the timing estimate" in caplog.text
    with contextlib.closing(sqlite3.connect(out / JOURNAL_NAME)) as db:
        assert db.execute("SELECT outcome FROM runs").fetchall() == [("finished",)]
        assert db.execute(
            "SELECT count(*) FROM meta WHERE name = 'timing_estimate'"
        ).fetchone() == (0,)


async def test_the_estimate_is_saved_while_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With SAVE_EVERY at 0, the run's ticker saves the estimate before the run ends (not
    only the final, forced save): a process killed mid-run keeps what it learned."""
    monkeypatch.setattr(_timing, "SAVE_EVERY", 0.0)
    monkeypatch.setattr(_runner, "TICK_SECONDS", 0.01)
    saves: list[tuple[bool, bool]] = []  # (forced, saved)
    save = JournalTiming.save

    def recorded(self: JournalTiming, *, force: bool = False) -> bool:
        saved = save(self, force=force)
        saves.append((force, saved))
        return saved

    monkeypatch.setattr(JournalTiming, "save", recorded)
    emulator = Emulator(EmulatorConfig(time_scale=500.0, audio_seconds=0.3))
    async with client_for(emulator) as client:
        await run_catalog(client, write_catalog(tmp_path / "a.jsonl", 8), tmp_path / "out")
    assert (False, True) in saves  # a tick saved
    assert saves[-1][0]  # and the run's end made the last, forced, attempt


def test_a_full_sqlite_journal_is_a_journal_error(tmp_path: Path) -> None:
    """SQLite's "database or disk is full" on saving comes out as a JournalError, which the
    timing turns into a warning (the run goes on)."""
    journal = Journal.in_directory(tmp_path, endpoint=ENDPOINT)
    try:
        journal.save_timing_estimate("x")  # the row exists; a bigger value needs new pages
        journal._db.execute("VACUUM")  # no free page left to grow into
        journal._db.execute(f"PRAGMA max_page_count = {journal.pragma('page_count')}")
        with pytest.raises(JournalError, match="full"):
            journal.save_timing_estimate("x" * 20_000)
        filled = _fill(journal)
        assert "full" in filled
        assert not JournalTiming(journal, learned(6)).save(force=True)
    finally:
        journal.close()


def _fill(journal: Journal) -> str:
    """Insert rows until the journal's database is full; the error that stopped it."""
    for index in range(1000):
        try:
            journal._db.execute("INSERT INTO meta VALUES (?, ?)", (f"f{index}", "f" * 100))
        except sqlite3.OperationalError as exc:
            return str(exc)
    return "never full"
