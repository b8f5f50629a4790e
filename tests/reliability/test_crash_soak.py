"""The crash soak: the ``aimlmusic batch`` command, run as a subprocess against an emulator
served on a loopback socket (with submission and poll faults), is killed with SIGKILL at
random points and rerun, again and again. In the end every song is downloaded exactly once,
the only duplicate paid submissions are for songs the journal reported ambiguous, and the
journal passes SQLite's integrity check after every kill.

Kill points are drawn in *events* (the lines ``--plain`` prints: submitting, submitted,
completed, downloaded...) plus a random few milliseconds, so they land at and between the
journal's transitions. Quick by default; ``AIMLMUSIC_SOAK=full`` kills 20 times.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from aimlmusic.catalog import JOURNAL_NAME, MANIFEST_NAME
from aimlmusic.emulator import Emulator, EmulatorConfig, Faults, serving

from ._support import CANARY_KEY, files_under, leaked_in, record_figures, soak_size

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX"),
]

KILLS = soak_size(quick=5, full=20)
SONGS = soak_size(quick=20, full=100)
TIME_SCALE = 50.0
#: Events (printed lines) a run gets through before it is killed: at most this many, or at
#: most as many as songs are left when that is more.
MAX_EVENTS_BEFORE_KILL = 12
#: Real seconds one CLI run may take before it counts as hung.
RUN_LIMIT = 120.0
SEED = int(os.environ.get("AIMLMUSIC_SOAK_SEED", "20251106"))
#: Downloads cut off half-way, then downloads answered 503, injected into the soak.
DOWNLOAD_FAULTS = 5

FAULTS = Faults(
    error_before=0.05, error_after=0.02, drop_before=0.01, drop_after=0.01, malformed_json=0.01
)


def _write_catalog(path: Path, count: int) -> list[dict[str, Any]]:
    rows = [
        {
            "key": f"song-{i:03d}",
            "title": f"Crash soak {i:03d}",
            "prompt": f"Crash soak song {i:03d}: calm piano, soft rain",
            "lyrics": f"[Verse]\nLine {i} of a quiet song\n[Chorus]\nWe keep on walking home",
            "format": ("mp3", "wav", "pcm")[i % 3],
        }
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


class Runner:
    """Runs the CLI batch, optionally killing it after a number of printed events."""

    def __init__(self, catalog: Path, out: Path, base_url: str, logs: Path) -> None:
        self.catalog = catalog
        self.out = out
        self.base_url = base_url
        self.logs = logs
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("AIMLMUSIC_BASE_URL", "AIMLAPI_API_KEY")
        }
        self.env["AIML_API_KEY"] = CANARY_KEY
        self.runs = 0

    def run(self, *extra: str, kill_after: int | None = None, jitter: float = 0.0) -> int | None:
        """Run once; return the exit status, or ``None`` when it was killed."""
        self.runs += 1
        command = [
            sys.executable, "-m", "aimlmusic.cli", "batch", str(self.catalog),
            "-o", str(self.out), "--base-url", self.base_url,
            "--time-scale", str(TIME_SCALE), "--plain", *extra,
        ]  # fmt: skip
        stderr = (self.logs / f"run-{self.runs:02d}.stderr").open("wb")
        with (
            stderr,
            subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=stderr, env=self.env
            ) as process,
        ):
            watchdog = threading.Timer(RUN_LIMIT, process.kill)
            watchdog.start()
            killed = False
            try:
                assert process.stdout is not None
                for lines, _ in enumerate(iter(process.stdout.readline, b""), start=1):
                    if kill_after is not None and lines >= kill_after:
                        time.sleep(jitter)
                        process.send_signal(signal.SIGKILL)
                        killed = True
                        break
                status = process.wait(RUN_LIMIT)
            finally:
                hung = not watchdog.is_alive() and not killed
                watchdog.cancel()
        assert not hung, f"run {self.runs} hung for {RUN_LIMIT} s"
        if killed and status == -signal.SIGKILL:
            return None
        return status


def _journal(out: Path) -> dict[str, sqlite3.Row]:
    """Check the journal's integrity and return its songs by key."""
    db = sqlite3.connect(out / JOURNAL_NAME)
    try:
        db.row_factory = sqlite3.Row
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {row["key"]: row for row in db.execute("SELECT * FROM songs")}
    finally:
        db.close()


def _check_downloaded_files(out: Path, songs: dict[str, sqlite3.Row]) -> None:
    """Every song the journal says is downloaded is a complete file with its hash."""
    for row in songs.values():
        if row["state"] == "downloaded":
            data = (out / row["file_name"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == row["sha256"], row["key"]


def _check_untagged_files_against_the_store(out: Path, songs: dict[str, sqlite3.Row]) -> int:
    """No file is a cut-off download: WAV and PCM files are byte for byte what the store
    serves (MP3s carry the ID3 tags the command adds; their hash is the manifest's).
    Returns how many files were compared."""
    checked = 0
    with httpx.Client() as store:
        for row in songs.values():
            if row["file_name"].endswith((".wav", ".pcm")):
                url = json.loads(row["generation_json"])["audio_file"]["url"]
                served = store.get(url)
                assert served.status_code == 200
                assert (out / row["file_name"]).read_bytes() == served.content, row["key"]
                checked += 1
    return checked


def test_crash_soak(tmp_path: Path) -> None:
    """After KILLS SIGKILLs at random points and reruns: every song is one complete file
    matching the manifest, the server holds exactly one job per song except songs the
    journal reported ambiguous, the journal is never corrupt, and the key is in no file."""
    rng = random.Random(SEED)
    rows = _write_catalog(tmp_path / "songs.jsonl", SONGS)
    out = tmp_path / "out"
    logs = tmp_path / "logs"
    logs.mkdir()
    emulator = Emulator(
        EmulatorConfig(
            time_scale=TIME_SCALE, seed=SEED, faults=FAULTS, accept_any_key=True, audio_seconds=0.3
        )
    )
    # Downloads fail too: cut off half-way (the store hangs up), then (once those are used
    # up: two injections on one request would hide one another) answered 503.
    emulator.inject("truncate_download", route="download", count=DOWNLOAD_FAULTS)
    unavailable_injected = False
    reported_ambiguous: set[str] = set()
    adopted = kills = finished_runs = integrity_checks = never_sent = 0
    kill_states: dict[str, int] = {}
    prompt_of = {row["key"]: row["prompt"] for row in rows}

    def row_prompt(row: sqlite3.Row) -> str:
        return prompt_of[row["key"]]

    def settle(songs: dict[str, sqlite3.Row]) -> list[str]:
        """Options for the next run, as a careful user reads the last one's report: a song
        reported ambiguous (or left submitting, which the next run reports so) is adopted
        when its generation can be found in the account (here: on the server), half the
        time; otherwise it is resubmitted, which may pay twice - the user's informed choice."""
        nonlocal adopted
        jobs: dict[str, str] = {}
        for job in emulator.jobs.values():
            jobs.setdefault(job.prompt, job.id)
        options = ["--resubmit-ambiguous"]
        for key, row in songs.items():
            if row["state"] in ("ambiguous", "submitting"):
                reported_ambiguous.add(key)
                found = jobs.get(prompt_of[key])
                if found is not None and rng.random() < 0.5:
                    options += ["--adopt", f"{key}={found}"]
                    adopted += 1
        return options

    started = time.monotonic()
    with serving(emulator) as base_url:
        runner = Runner(tmp_path / "songs.jsonl", out, base_url, logs)
        options: list[str] = []
        done = False
        remaining = SONGS
        while kills < KILLS and runner.runs < 4 * KILLS:
            # Early kills hit the submission burst; the rest land anywhere in the first
            # part of what is left (polls, downloads, renames, manifest writes).
            status = runner.run(
                *options,
                kill_after=rng.randint(1, max(MAX_EVENTS_BEFORE_KILL, remaining // 4)),
                jitter=rng.uniform(0, 0.03),
            )
            if status is None:
                kills += 1
            else:
                finished_runs += 1
                assert status in (0, 1), (logs / f"run-{runner.runs:02d}.stderr").read_text()
            if not (out / JOURNAL_NAME).exists():
                continue  # killed before the journal was created
            songs = _journal(out)
            integrity_checks += 1
            _check_downloaded_files(out, songs)
            served = emulator.stats().faults.get("truncate_download", 0)
            if served == DOWNLOAD_FAULTS and not unavailable_injected:
                emulator.inject("error_before", route="download", count=DOWNLOAD_FAULTS)
                unavailable_injected = True
            if status is None:
                on_server = {job.prompt for job in emulator.jobs.values()}
                for row in songs.values():
                    kill_states[row["state"]] = kill_states.get(row["state"], 0) + 1
                    if row["state"] == "submitting" and row_prompt(row) not in on_server:
                        never_sent += 1
            remaining = sum(row["state"] != "downloaded" for row in songs.values())
            done = remaining == 0
            if done and kills < KILLS:
                # All done too soon: the user adds songs to the catalog and goes on.
                rows = _write_catalog(tmp_path / "songs.jsonl", len(rows) + SONGS // 4)
                prompt_of.update({row["key"]: row["prompt"] for row in rows})
                remaining, done = SONGS // 4, False
            options = settle(songs)
        assert kills == KILLS

        # Finish the work without killing.
        for _ in range(3):
            if done:
                break
            status = runner.run(*options)
            assert status in (0, 1), (logs / f"run-{runner.runs:02d}.stderr").read_text()
            songs = _journal(out)
            integrity_checks += 1
            done = all(row["state"] == "downloaded" for row in songs.values())
            options = settle(songs)
        assert done, {k: r["state"] for k, r in songs.items() if r["state"] != "downloaded"}
        fetches = {
            "truncate_download": emulator.stats().faults.get("truncate_download", 0),
            "download": emulator.stats().requests["download"],
        }
        untagged_checked = _check_untagged_files_against_the_store(out, songs)
    real_seconds = time.monotonic() - started

    # Every song downloaded exactly once: one complete file each, matching the manifest.
    songs = _journal(out)
    assert {row["state"] for row in songs.values()} == {"downloaded"}
    manifest = [json.loads(line) for line in (out / MANIFEST_NAME).read_text().splitlines()]
    assert sorted(r["key"] for r in manifest) == sorted(row["key"] for row in rows)
    audio = sorted(p.name for p in out.iterdir() if p.suffix in (".mp3", ".wav", ".pcm"))
    assert audio == sorted(r["file"] for r in manifest)
    for record in manifest:
        data = (out / record["file"]).read_bytes()
        assert record["status"] == "downloaded"
        assert hashlib.sha256(data).hexdigest() == record["sha256"]
        assert len(data) == record["bytes"]
    leftovers = [p.name for p in out.iterdir() if p.name.endswith(".part")]
    assert leftovers == []
    assert fetches["truncate_download"] == DOWNLOAD_FAULTS
    assert untagged_checked > 0

    # Paid once per song, except songs reported ambiguous.
    jobs_per_song: dict[str, int] = {}
    for job in emulator.jobs.values():
        jobs_per_song[job.prompt] = jobs_per_song.get(job.prompt, 0) + 1
    key_of = {row["prompt"]: row["key"] for row in rows}
    assert set(jobs_per_song) <= set(key_of), "a job on the server belongs to no song"
    paid_twice = {key_of[p] for p, n in jobs_per_song.items() if n > 1}
    assert paid_twice <= reported_ambiguous
    stats = emulator.stats()
    assert stats.duplicate_submissions == sum(n - 1 for n in jobs_per_song.values())
    for row in rows:
        assert jobs_per_song.get(row["prompt"], 0) >= 1, row["key"]

    # The key never reached a file: journal (and its WAL), manifest, audio, logs.
    for path in files_under(tmp_path):
        assert not leaked_in(path.read_bytes()), f"{path} contains the API key"

    record_figures(
        "crash_soak",
        {
            "songs": len(rows),
            "sigkills": kills,
            "runs": runner.runs,
            "runs_that_finished_on_their_own": finished_runs,
            "journal_integrity_checks_passed": integrity_checks,
            "song_states_seen_at_kills": dict(sorted(kill_states.items())),
            "songs_reported_ambiguous": len(reported_ambiguous),
            # Songs caught "submitting" by a kill whose POST had not reached the server: the
            # journal's intent record is made before the request budget lets the POST go.
            "submitting_at_a_kill_but_never_sent": never_sent,
            "ambiguous_songs_adopted": adopted,
            "songs_paid_twice": len(paid_twice),
            "duplicate_paid_submissions": stats.duplicate_submissions,
            "jobs_on_server": stats.jobs_submitted,
            "audio_fetches_from_store": fetches["download"],
            "downloads_cut_off_by_the_store": fetches["truncate_download"],
            "faults_served": stats.faults,
            "seed": SEED,
            "real_seconds": round(real_seconds, 1),
        },
    )
