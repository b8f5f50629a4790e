"""The journal: durable settings, state transitions, recovery and catalog conflicts.

The behavioural tests run against both implementations (SQLite in the output directory,
PostgreSQL shared by workers) through the ``backend`` fixture; a PostgreSQL journal only lets
the worker holding a song's live lease submit it, so the tests claim songs first
(``backend.own``), as the runner does.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from aimlmusic import AudioSetting, Generation, GenerationStatus, SongRequest
from aimlmusic._converter import structure_generation
from aimlmusic._errors import BadRequestError
from aimlmusic.catalog import CatalogRow, Journal, JournalError, PgJournal, SongState

PROMPT = "Warm lo-fi ballad with soft piano"
LYRICS = "[Verse]\nStreetlights flicker\n[Chorus]\nHome again"
ENDPOINT = "https://api.example"


def row(key: str, title: str = "", *, line: int = 1, **setting: object) -> CatalogRow:
    audio = AudioSetting(**setting) if setting else None  # type: ignore[arg-type]
    return CatalogRow(
        key=key,
        title=title,
        request=SongRequest(prompt=PROMPT, lyrics=LYRICS, audio_setting=audio),
        line=line,
    )


def completed(generation_id: str = "gen-1") -> Generation:
    return structure_generation(
        {
            "id": generation_id,
            "status": "completed",
            "audio_file": {"url": "http://127.0.0.1/a.mp3?Signature=x"},
            "meta": {"usage": {"credits_used": 120.5}},
            "extra_info": {"music_duration": 3000, "music_sample_rate": 44100},
        }
    )


class Backend:
    """Opens journals of one implementation on one place (a directory, or a schema)."""

    def __init__(self, kind: str, tmp_path: Path, postgres_url: str | None) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.url = postgres_url
        #: The lease clock of every PostgreSQL journal opened here.
        self.now = 1000.0

    def open(self, endpoint: str | None = ENDPOINT) -> Any:
        if self.url is None:
            return Journal.in_directory(self.tmp_path, endpoint=endpoint)
        return PgJournal(self.url, endpoint=endpoint, now=lambda: self.now)

    def own(self, journal: Any, *keys: str) -> None:
        """Give ``journal``'s worker a live lease on ``keys`` (what a claim does)."""
        if isinstance(journal, PgJournal):
            with psycopg.connect(self.url or "", autocommit=True) as db:
                db.execute(
                    "UPDATE aimlmusic_songs SET owner = %s, lease_until = %s WHERE key = ANY(%s)",
                    (journal.worker_id, self.now + 60, list(keys)),
                )

    def expire(self) -> None:
        """Let every lease run out (a dead worker's)."""
        self.now += 10_000

    def set_schema_version(self, version: int) -> None:
        if self.url is None:
            db = sqlite3.connect(self.tmp_path / "aimlmusic-journal.sqlite")
            db.execute("UPDATE meta SET value = ? WHERE name = 'schema_version'", (str(version),))
            db.commit()
            db.close()
            return
        with psycopg.connect(self.url, autocommit=True) as pg:
            pg.execute(
                "UPDATE aimlmusic_meta SET value = %s WHERE name = 'schema_version'",
                (str(version),),
            )


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each behavioural test once per journal implementation."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    return Backend(request.param, tmp_path, url)


def open_journal(backend: Backend) -> Any:
    j = backend.open()
    assert j.sync_catalog([row("a", "Song A"), row("b", "Song B", format="wav")]) == []
    backend.own(j, "a", "b")
    return j


def test_durability_settings_and_schema_version(tmp_path: Path) -> None:
    """The journal uses WAL, synchronous=FULL, and records its schema version and endpoint."""
    with open_journal(Backend("sqlite", tmp_path, None)) as j:
        assert j.pragma("journal_mode") == "wal"
        assert j.pragma("synchronous") == 2  # FULL
        assert j.endpoint == ENDPOINT
    db = sqlite3.connect(tmp_path / "aimlmusic-journal.sqlite")
    meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
    db.close()
    assert meta["schema_version"] == "1"


def test_full_life_cycle(backend: Backend) -> None:
    """A song goes pending → submitting → submitted → completed → downloaded, keeping facts."""
    with open_journal(backend) as j:
        assert j.entry("a").state is SongState.PENDING  # type: ignore[union-attr]
        j.mark_submitting("a")
        j.mark_submitted("a", "gen-1")
        j.mark_completed("a", completed(), polls=2, generation_seconds=55.0)
        j.mark_downloaded("a", sha256="f" * 64, size=1234, tagged=True)
        entry = j.entry("a")
    assert entry is not None
    assert entry.state is SongState.DOWNLOADED
    assert entry.generation_id == "gen-1"
    assert entry.generation == completed()
    assert (entry.submit_attempts, entry.polls, entry.size, entry.tagged) == (1, 2, 1234, True)
    assert (entry.credits_used, entry.duration, entry.sample_rate) == (120.5, 3.0, 44100)
    assert entry.submitted_at
    assert entry.completed_at
    assert entry.downloaded_at
    assert entry.file_name == "Song A.mp3"


def test_invalid_transitions_are_refused(backend: Backend) -> None:
    """Skipping states, or resubmitting a song with an id, raises JournalError."""
    with open_journal(backend) as j:
        with pytest.raises(JournalError, match="cannot go from pending to submitted"):
            j.mark_submitted("a", "x")
        with pytest.raises(JournalError):
            j.mark_downloaded("a", sha256="", size=0, tagged=False)
        j.mark_submitting("a")
        j.mark_submitted("a", "gen-1")
        with pytest.raises(JournalError, match="cannot go from submitted to submitting"):
            j.mark_submitting("a")
        with pytest.raises(JournalError, match="no song"):
            j.mark_submitting("zzz")


def test_failures_and_ambiguity_are_recorded(backend: Backend) -> None:
    """Rejections, ambiguous POSTs and failed generations keep their reason and type."""
    with open_journal(backend) as j:
        j.mark_submitting("a")
        j.mark_failed("a", BadRequestError("Body validation error!", status_code=400))
        j.mark_submitting("b")
        j.mark_ambiguous("b", "read timeout")
        backend.own(j, "a")  # a failed song is released; sending it again claims it
        a, b = j.entry("a"), j.entry("b")
        assert a is not None
        assert b is not None
        assert (a.state, a.error_type, a.generation_id) == (
            SongState.FAILED,
            "BadRequestError",
            None,
        )
        assert "Body validation error" in (a.error or "")
        assert (b.state, b.error) == (SongState.AMBIGUOUS, "read timeout")
        # Both may be sent again (the runner decides when); attempts are counted.
        j.mark_submitting("a")
        assert j.entry("a").submit_attempts == 2  # type: ignore[union-attr]


def test_crash_while_submitting_becomes_ambiguous(backend: Backend) -> None:
    """A song left submitting by a dead process is ambiguous after reopening."""
    j = open_journal(backend)
    j.mark_submitting("a")
    j.mark_submitting("b")
    j.mark_submitted("b", "gen-b")
    j.close()  # the process "dies" here
    backend.expire()
    with backend.open() as again:
        assert again.recover_interrupted() == ["a"]
        entry = again.entry("a")
        assert entry is not None
        assert entry.state is SongState.AMBIGUOUS
        assert entry.error_type == "Interrupted"
        assert again.entry("b").state is SongState.SUBMITTED  # type: ignore[union-attr]
        again.adopt("a", "gen-found")
        assert again.entry("a").generation_id == "gen-found"  # type: ignore[union-attr]


def test_a_second_run_cannot_open_the_same_journal(tmp_path: Path) -> None:
    """The exclusive lock keeps two runs out of one output directory."""
    sqlite_only = Backend("sqlite", tmp_path, None)
    with open_journal(sqlite_only), pytest.raises(JournalError, match="in use by another run"):
        Journal.in_directory(tmp_path, endpoint=ENDPOINT)


def test_endpoint_mismatch_is_refused(backend: Backend) -> None:
    """Ids made on one server are not resumed against another."""
    open_journal(backend).close()
    with pytest.raises(JournalError, match="belongs to runs against"):
        backend.open(endpoint="https://other.example")


def test_newer_schema_is_refused(backend: Backend) -> None:
    """A journal written by a newer version is not touched."""
    open_journal(backend).close()
    backend.set_schema_version(99)
    with pytest.raises(JournalError, match="newer aimlmusic"):
        backend.open()


def test_catalog_changes(backend: Backend) -> None:
    """Unsent songs take new content; sent ones report a conflict and nothing changes."""
    with open_journal(backend) as j:
        j.mark_submitting("a")
        j.mark_submitted("a", "gen-a")
        changed = CatalogRow(
            key="a",
            title="Song A",
            request=SongRequest(prompt=PROMPT + " and strings", lyrics=LYRICS),
            line=7,
        )
        new_b = row("b", "Song B", format="pcm")
        problems = j.sync_catalog([changed, new_b])
        assert [(p.line, p.key) for p in problems] == [(7, "a")]
        assert "gen-a" in problems[0].message
        b = j.entry("b")
        assert b is not None
        assert b.request.format == "wav"
        assert j.sync_catalog([row("a", "Song A"), new_b, row("c")]) == []
        b = j.entry("b")
        assert b is not None
        assert b.request.format == "pcm"
        assert b.file_name == "Song B.pcm"
        assert [e.key for e in j.entries()] == ["a", "b", "c"]
        # A song dropped from the catalog leaves the run but stays in the journal.
        assert j.sync_catalog([row("c")]) == []
        assert [e.key for e in j.entries()] == ["c"]
        assert [e.key for e in j.entries(in_catalog=False)] == ["a", "b", "c"]
        assert j.counts()[SongState.PENDING] == 1


def test_file_names_are_unique_and_stable(backend: Backend) -> None:
    """Equal titles get distinct names, which survive reopening."""
    with backend.open() as j:
        assert j.sync_catalog([row("x", "Same"), row("y", "same"), row("z", "../Same")]) == []
        names = [e.file_name for e in j.entries()]
    assert names[0] == "Same.mp3"
    assert len({n.lower() for n in names}) == 3
    with backend.open() as j:
        assert j.sync_catalog([row("z", "../Same"), row("y", "same"), row("x", "Same")]) == []
        assert {e.key: e.file_name for e in j.entries()} == dict(zip("xyz", names, strict=True))


def test_forget_generations_for_an_ephemeral_server(backend: Backend) -> None:
    """Unfinished songs start over when the server forgot them; downloaded ones stay."""
    with open_journal(backend) as j:
        j.mark_submitting("a")
        j.mark_submitted("a", "gen-a")
        j.mark_submitting("b")
        j.mark_submitted("b", "gen-b")
        j.mark_completed("b", completed("gen-b"))
        j.mark_downloaded("b", sha256="0" * 64, size=1, tagged=False)
        assert j.forget_generations() == 1
        a = j.entry("a")
        assert a is not None
        assert a.state is SongState.PENDING
        assert a.generation_id is None
        assert j.entry("b").state is SongState.DOWNLOADED  # type: ignore[union-attr]


def test_entries_survive_updates_while_iterating(backend: Backend) -> None:
    """Iterating pending songs while moving them on visits each exactly once."""
    with backend.open() as j:
        assert j.sync_catalog([row(f"k{i:04d}") for i in range(520)]) == []
        backend.own(j, *(f"k{i:04d}" for i in range(520)))
        seen = []
        for entry in j.entries([SongState.PENDING]):
            j.mark_submitting(entry.key)
            seen.append(entry.key)
        assert len(seen) == len(set(seen)) == 520
        assert j.counts()[SongState.SUBMITTING] == 520


def test_generation_status_round_trip(backend: Backend) -> None:
    """A stored completed generation is read back equal, with its status enum."""
    with open_journal(backend) as j:
        j.mark_submitting("a")
        j.mark_completed("a", completed("gen-z"))
        gen = j.entry("a").generation  # type: ignore[union-attr]
        assert gen is not None
        assert gen.status is GenerationStatus.COMPLETED
        assert gen.audio_file is not None
        assert gen.credits_used == 120.5


def test_the_recorded_server_has_no_credentials() -> None:
    """A user:password in the base URL never reaches the journal; spellings are normalised."""
    from aimlmusic.catalog._runner import _endpoint

    assert _endpoint("HTTP://user:secret@LocalHost:8000/api/") == "http://localhost:8000/api"
    assert _endpoint("https://api.aimlapi.com/") == _endpoint("https://api.aimlapi.com")


def test_lone_surrogates_from_the_server_are_stored_escaped(backend: Backend) -> None:
    """A lone surrogate in an answer (an extra field, an error message, an unusable id) is
    written as an escape instead of failing the write; the JSON keeps it as sent."""
    odd = structure_generation(
        {
            "id": "gen-1",
            "status": "completed",
            "audio_file": {"url": "http://127.0.0.1/a\ud800.mp3"},
            "note": "\ud800",
        }
    )
    with open_journal(backend) as j:
        j.mark_submitting("a")
        j.mark_submitted("a", "gen-1")
        j.mark_completed("a", odd)
        j.note_error("a", RuntimeError("download of \ud800 failed"))
        entry = j.entry("a")
        assert entry is not None
        assert entry.generation == odd
        assert entry.error == "download of \\ud800 failed"
        j.mark_submitting("b")
        j.mark_failed("b", "bad \udfff input", generation_id="gen-\ud800")
        b = j.entry("b")
        assert b is not None
        assert (b.state, b.error, b.generation_id) == (
            SongState.FAILED,
            "bad \\udfff input",
            "gen-\\ud800",
        )


def test_a_file_already_in_the_output_directory_is_a_taken_name(tmp_path: Path) -> None:
    """A file the user put in the output directory (compared case-folded) takes its name: the
    song gets the next free one, as for two songs of one title; the file a song was
    downloaded to stays that song's name on every later run."""
    (tmp_path / "neon rain.MP3").write_bytes(b"my own recording")
    with Journal.in_directory(tmp_path, endpoint=ENDPOINT) as j:
        assert j.sync_catalog([row("neon", "Neon Rain"), row("other", "Other")]) == []
        names = {e.key: e.file_name for e in j.entries()}
        assert names == {"neon": "Neon Rain-neon.mp3", "other": "Other.mp3"}
        j.mark_submitting("other")
        j.mark_submitted("other", "gen-1")
        j.mark_completed("other", completed())
        (tmp_path / "Other.mp3").write_bytes(b"downloaded")
        j.mark_downloaded("other", sha256="f" * 64, size=10, tagged=False)
    with Journal.in_directory(tmp_path, endpoint=ENDPOINT) as j:
        # A re-run: the song's own file is recognised, nothing is renamed.
        assert j.sync_catalog([row("neon", "Neon Rain"), row("other", "Other")]) == []
        assert {e.key: e.file_name for e in j.entries()} == names


def test_adopting_the_id_a_song_already_has_changes_nothing(backend: Backend) -> None:
    """Adopting the id a song already carries is a no-op in any state (the same --adopt
    command can run again); another id for a downloaded song is still refused."""
    with open_journal(backend) as j:
        j.mark_submitting("a")
        j.mark_submitted("a", "gen-a")
        j.mark_completed("a", completed("gen-a"))
        j.mark_downloaded("a", sha256="f" * 64, size=10, tagged=False)
        before = j.entry("a")
        j.adopt("a", "gen-a")
        assert j.entry("a") == before
        with pytest.raises(JournalError, match="cannot go from downloaded to submitted"):
            j.adopt("a", "gen-other")


def test_adopt_refuses_an_id_that_could_never_be_sent_and_corrects_a_mistaken_one(
    backend: Backend,
) -> None:
    """An id with a control character, a lone surrogate or spaces around it is refused
    (JournalError naming the problem, the song untouched); a song still waiting for an
    adopted id takes another one in its place (nothing is sent either way)."""
    with open_journal(backend) as j:
        j.mark_submitting("a")
        j.mark_ambiguous("a", "read timeout")
        for bad, problem in [
            ("gen-1\r", "control character (U+000D)"),
            ("gen-\ud800", "lone surrogate"),
            (" gen-1", "spaces around it"),
            ("", "empty"),
        ]:
            with pytest.raises(JournalError, match=re.escape(problem)):
                j.adopt("a", bad)
            assert j.entry("a").state is SongState.AMBIGUOUS  # type: ignore[union-attr]
        j.adopt("a", "gen-wrong")
        j.adopt("a", "gen-right")
        entry = j.entry("a")
        assert entry is not None
        assert (entry.state, entry.generation_id) == (SongState.SUBMITTED, "gen-right")


def test_adopt_never_replaces_the_id_of_a_song_this_tool_submitted(backend: Backend) -> None:
    """A song submitted here (its id paid for and followed) keeps its id: adopting another
    one, a typo say, is refused and changes nothing."""
    with open_journal(backend) as j:
        j.mark_submitting("a")
        j.mark_submitted("a", "gen-real")
        with pytest.raises(JournalError, match="gen-real"):
            j.adopt("a", "gen-typo")
        entry = j.entry("a")
        assert entry is not None
        assert (entry.state, entry.generation_id) == (SongState.SUBMITTED, "gen-real")


def test_an_id_adopted_onto_a_song_that_once_failed_here_can_be_corrected(
    backend: Backend,
) -> None:
    """A song whose own submission failed, then adopted with a mistyped id, takes the right
    one: only the id this tool submitted is kept, not every id of a song once submitted."""
    with open_journal(backend) as j:
        j.mark_submitting("a")
        j.mark_submitted("a", "gen-0")
        j.mark_failed("a", "the generation ended in error")
        j.adopt("a", "dash-1O")  # a typo
        j.adopt("a", "dash-10")
        entry = j.entry("a")
        assert entry is not None
        assert (entry.state, entry.generation_id) == (SongState.SUBMITTED, "dash-10")
        assert entry.submitted_at is None  # not submitted here: not dated as if it were


def test_a_schema_version_that_is_not_a_number_is_a_corrupt_journal(tmp_path: Path) -> None:
    """A meta table SQLite reads but aimlmusic cannot parse is a JournalError saying the
    journal may be corrupt, never a ValueError traceback."""
    Journal.in_directory(tmp_path, endpoint=ENDPOINT).close()
    Backend("sqlite", tmp_path, None).set_schema_version("1.0")  # type: ignore[arg-type]
    with pytest.raises(JournalError, match=r"schema_version '1\.0'.*may be corrupt"):
        Journal.in_directory(tmp_path, endpoint=ENDPOINT)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("request_json", '{"prompt": 1'),
        ("request_json", '{"prompt": "p"}'),
        ("request_json", "[1, 2]"),
        ("generation_json", '{"id": 5, "status": []}'),
        ("generation_json", "not json"),
    ],
)
def test_an_entry_that_cannot_be_parsed_is_a_corrupt_journal(
    tmp_path: Path, column: str, value: str
) -> None:
    """A song row SQLite reads but whose content cannot be parsed is a JournalError naming
    the song's key and saying the journal may be corrupt."""
    with open_journal(Backend("sqlite", tmp_path, None)) as j:
        j.mark_submitting("a")
        j.mark_submitted("a", "gen-1")
        j.mark_completed("a", completed())
    db = sqlite3.connect(tmp_path / "aimlmusic-journal.sqlite")
    db.execute(f"UPDATE songs SET {column} = ? WHERE key = 'a'", (value,))
    db.commit()
    db.close()
    with Journal.in_directory(tmp_path, endpoint=ENDPOINT) as j:
        with pytest.raises(JournalError, match=r"song 'a' cannot be read.*may be corrupt"):
            j.entry("a")
        with pytest.raises(JournalError, match="song 'a' cannot be read"):
            list(j.entries())
        assert j.entry("b") is not None
