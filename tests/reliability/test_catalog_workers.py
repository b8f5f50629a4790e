"""The many-workers kill soak: three ``aimlmusic batch --journal postgresql://…`` processes
drain one catalog into one output directory against an emulator on a loopback socket, while
one of them, at random, is SIGKILLed and started again, over and over.

In the end no song was paid for twice except songs the journal reported ambiguous, no song
is lost (each is downloaded, failed or ambiguous), each downloaded song is one intact file,
no second copy or temporary manifest is left, the manifest lists every song once, and the
key is in no file nor in the journal's rows, and no partial download of a killed worker is
left behind (the workers still running throw those away).

The workers, the kill loop and the audit are the benchmark's
(``benchmarks/_catalog_fleet.py``), so the soak and the published figures are one
experiment at two sizes. Quick by default (30 songs, 3 kills); ``AIMLMUSIC_SOAK=full`` runs
300 songs and 12 kills. Each kill strands the dead worker's songs for the lease: 20 seconds
at quick size, the default 60 at full size. The lease runs on the database's clock and a
live worker's heartbeat renews it three times a lease on the client's, 50x faster here, so
only a worker stalled for the whole lease loses a claim.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from aimlmusic.catalog import DEFAULT_LEASE_SECONDS
from aimlmusic.emulator import Emulator, EmulatorConfig, serving

from ._support import CANARY_KEY, files_under, leaked_in, record_figures, soak_size

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX"),
]

SONGS = soak_size(quick=30, full=300)
KILLS = soak_size(quick=3, full=12)
WORKERS = 3
TIME_SCALE = 50.0
#: API seconds between two kills (a fifth of a song's generation at quick size, so kills
#: land on submissions, polls and downloads alike; real seconds = this / TIME_SCALE).
KILL_EVERY_API = soak_size(quick=40, full=150)
#: Real seconds a claim lasts unrenewed (``--lease-seconds``): how long a kill strands the dead
#: worker's songs. Shorter at quick size, so the soak takes about 25 s, not a minute.
LEASE_SECONDS = soak_size(quick=20, full=int(DEFAULT_LEASE_SECONDS))
#: Real seconds the whole soak may take before it counts as hung.
RUN_LIMIT = 600.0
SEED = int(os.environ.get("AIMLMUSIC_SOAK_SEED", "20251202"))
FLEET_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "_catalog_fleet.py"


def _load_fleet() -> ModuleType:
    """The benchmark's fleet module, loaded by path: benchmarks/ is no package."""
    spec = importlib.util.spec_from_file_location("aimlmusic_bench_catalog_fleet", FLEET_PATH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # attrs resolves the classes' module through it
    spec.loader.exec_module(module)
    return module


fleet = _load_fleet()


def _journal_rows_text(postgres_url: str) -> str:
    """Every row of every table the workers made in the test's schema, as JSON text."""
    import psycopg

    texts: list[str] = []
    with psycopg.connect(postgres_url, autocommit=True) as db:
        tables = db.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchall()
        for (table,) in tables:
            query = f'SELECT row_to_json(t)::text FROM "{table}" AS t'
            texts += [row[0] for row in db.execute(query)]
    assert tables, "the workers made no table in the journal's schema"
    return "\n".join(texts)


def test_catalog_workers_kill_soak(tmp_path: Path, postgres_url: str) -> None:
    """Three workers on one PostgreSQL journal, SIGKILLed KILLS times at random and
    restarted: nothing paid twice beyond songs reported ambiguous, nothing lost, each file
    once and intact, no stray file, the manifest complete, the key nowhere."""
    rows = fleet.write_catalog(tmp_path / "catalog.jsonl", SONGS, label="Worker soak")
    out = tmp_path / "out"
    emulator = Emulator(
        EmulatorConfig(time_scale=TIME_SCALE, seed=SEED, api_keys=CANARY_KEY, audio_seconds=0.3)
    )
    with serving(emulator) as base_url:
        command = [
            sys.executable, "-m", "aimlmusic.cli", "batch", str(tmp_path / "catalog.jsonl"),
            "-o", str(out), "--journal", postgres_url, "--plain",
            "--lease-seconds", str(LEASE_SECONDS),
        ]  # fmt: skip
        run = fleet.run_fleet(
            command,
            [fleet.worker_environment(base_url, CANARY_KEY) for _ in range(WORKERS)],
            tmp_path / "logs",
            kill_every=KILL_EVERY_API / TIME_SCALE,
            max_kills=KILLS,
            limit_seconds=RUN_LIMIT,
            seed=SEED,
        )
        jobs = [record.to_dict() for record in emulator.jobs.values()]
        stats = emulator.stats()
    logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in files_under(tmp_path / "logs"))
    assert not run.hung, f"the workers ran for {RUN_LIMIT} s; last output:\n{logs}"
    assert run.kills == KILLS, f"the catalog was done after {run.kills} of {KILLS} kills"
    # 0: all downloaded; 1: some songs failed or ambiguous (reported, counted below).
    assert set(run.exit_statuses) <= {0, 1}, logs

    audit = fleet.audit_output(rows, out, jobs)
    assert audit.lost == (), f"songs in no final state: {audit.lost}"
    assert audit.paid_twice_beyond_ambiguous == (), audit.paid_twice
    assert audit.bad_files == (), audit.bad_files
    # No stray file: a second copy of a song, a temporary manifest, or what a worker
    # SIGKILLed mid-download was writing in its own directory under .aimlmusic-partial/
    # (the workers that outlive it throw that directory away).
    assert audit.stray_files == ()
    assert audit.manifest_repeats == ()
    assert audit.unknown_in_manifest == ()
    assert audit.states.get("downloaded", 0) > 0
    # The emulator's own ledger (one account here) agrees with the count by song.
    assert stats.duplicate_submissions == audit.duplicate_submissions

    for path in files_under(tmp_path):
        assert not leaked_in(path.read_bytes()), f"{path} contains the API key"
    assert not leaked_in(_journal_rows_text(postgres_url)), "the journal holds the API key"

    figures: dict[str, Any] = {
        "workers": WORKERS,
        "sigkills": run.kills,
        "processes_started": run.starts,
        "kill_every_api_s": KILL_EVERY_API,
        "lease_seconds": LEASE_SECONDS,
        "time_scale": TIME_SCALE,
        "real_seconds": round(run.wall_seconds, 1),
        "requests": stats.total_requests,
        "rate_limited": stats.rate_limited,
        "seed": SEED,
        **audit.figures(),
    }
    record_figures("catalog_workers_soak", figures)
