"""Several ``aimlmusic batch --journal postgresql://…`` workers on one catalog, killed and
restarted, and the audit of what they leave behind.

Shared by ``catalog_workers.py`` (the benchmark) and
``tests/reliability/test_catalog_workers.py`` (the kill soak): the workers, the kill loop and
the audit exist once. Nothing here knows the journal's tables: the audit reads what a user
sees (the output directory and its manifest) and what the emulator saw
(``GET /_emulator/stats?jobs=1``), so it judges the workers from the outside.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import attrs
import httpx

__all__ = [
    "Audit",
    "FleetRun",
    "audit_output",
    "emulator_stats",
    "production_times",
    "postgres_schema",
    "run_fleet",
    "served_emulator_process",
    "with_search_path",
    "worker_environment",
    "write_catalog",
]

#: The manifest's file name in the output directory (``aimlmusic.catalog.MANIFEST_NAME``).
MANIFEST_NAME = "manifest.jsonl"
#: The hidden directory a download goes to before it is renamed into place.
PARTIAL_DIR = ".aimlmusic-partial"
#: Final states of a song: a worker stops when every song is in one of them.
FINAL_STATES = frozenset({"downloaded", "failed", "ambiguous"})
#: Extensions of the songs' files in the output directory.
AUDIO_SUFFIXES = (".mp3", ".wav", ".pcm")
#: Real seconds between two looks at the workers: short next to a kill interval (seconds),
#: long enough that the look costs nothing.
_LOOK_EVERY = 0.05
#: Real seconds a killed or finished process may take to be reaped, or the emulator to stop.
_REAP_SECONDS = 10.0
#: Real seconds the emulator may take to print its address.
_EMULATOR_START_SECONDS = 30.0


@contextlib.contextmanager
def served_emulator_process(
    *, time_scale: float, api_keys: Sequence[str], seed: int = 0, audio_seconds: float = 0.3
) -> Iterator[str]:
    """``python -m aimlmusic.emulator`` in a child process on 127.0.0.1 with these keys (each
    its own account: 120 requests/min, 20 songs at once); yield its base URL.

    A child of its own keeps the server's CPU apart from the harness's, and it is the very
    server a user starts. It is stopped (SIGINT, then SIGKILL) when the block ends."""
    command = [
        sys.executable, "-m", "aimlmusic.emulator", "--host", "127.0.0.1", "--port", "0",
        "--time-scale", str(time_scale), "--seed", str(seed),
        "--audio-seconds", str(audio_seconds),
    ]  # fmt: skip
    for key in api_keys:
        command += ["--api-key", key]
    server = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert server.stdout is not None
        # readline blocks; a server that never prints is caught by the timer killing it.
        with _deadline(_EMULATOR_START_SECONDS, server.kill):
            line = server.stdout.readline().decode().strip()
        if not line.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the emulator did not start (said {line!r})")
        yield line
    finally:
        _stop(server, signal.SIGINT)


@contextlib.contextmanager
def _deadline(seconds: float, action: Callable[[], None]) -> Iterator[None]:
    import threading

    timer = threading.Timer(seconds, action)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _stop(process: subprocess.Popen[bytes], first: signal.Signals) -> None:
    """Signal ``process`` (unless it has exited), wait, SIGKILL if it lingers, reap it."""
    if process.poll() is None:
        process.send_signal(first)
        try:
            process.wait(_REAP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(_REAP_SECONDS)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def emulator_stats(base_url: str) -> dict[str, Any]:
    """The emulator's counters with every job (``/_emulator/stats?jobs=1``)."""
    answer = httpx.get(f"{base_url}/_emulator/stats", params={"jobs": "1"}, timeout=30.0)
    answer.raise_for_status()
    stats: dict[str, Any] = answer.json()
    return stats


def with_search_path(url: str, schema: str) -> str:
    """``url`` with ``schema`` as the connection's ``search_path`` (libpq ``options``)."""
    parts = urlsplit(url)
    option = urlencode({"options": f"-csearch_path={schema}"})
    query = f"{parts.query}&{option}" if parts.query else option
    return urlunsplit(parts._replace(query=query))


@contextlib.contextmanager
def postgres_schema(server_url: str) -> Iterator[str]:
    """A fresh schema on the PostgreSQL at ``server_url``; yield a URL selecting it; drop it
    (with everything the workers made in it) when the block ends."""
    import psycopg  # the postgres extra; only this helper needs it

    schema = f"aimlmusic_bench_{uuid.uuid4().hex}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield with_search_path(server_url, schema)
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def write_catalog(path: Path, songs: int, *, label: str = "Fleet") -> list[dict[str, Any]]:
    """Write a JSONL catalog of ``songs`` distinct songs (MP3 and WAV, alternately) to
    ``path``; return its rows. Titles are plain, so each file is named ``<title>.<format>``."""
    rows = [
        {
            "key": f"song-{i:04d}",
            "title": f"{label} {i:04d}",
            "prompt": f"{label} song {i:04d}: warm synth pads, slow drums",
            "lyrics": f"[Verse]\nLine {i} of a night drive\n[Chorus]\nWe keep the engine low",
            "format": ("mp3", "wav")[i % 2],
        }
        for i in range(songs)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return rows


@attrs.frozen
class FleetRun:
    """How a fleet's run went: when it began (Unix time), real seconds from the first start
    to the last exit, the SIGKILLs sent, processes started (restarts included), how each
    process that ended on its own exited, and whether the run was stopped for taking too
    long."""

    began_at: float
    wall_seconds: float
    kills: int
    starts: int
    exit_statuses: tuple[int, ...]
    hung: bool


@attrs.define
class _Slot:
    """One worker's place in the fleet: the process now running in it and its log."""

    index: int
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    started_at: float = 0.0


def _events(log: Path | None) -> int:
    """Lines the worker's current run has printed (``--plain``: one line per event)."""
    if log is None or not log.exists():
        return 0
    with log.open("rb") as handle:
        return sum(1 for _ in handle)


def run_fleet(
    command: Sequence[str],
    envs: Sequence[Mapping[str, str]],
    logs: Path,
    *,
    kill_every: float | None,
    max_kills: int,
    limit_seconds: float,
    seed: int = 0,
) -> FleetRun:
    """Run ``len(envs)`` copies of ``command`` (worker ``i`` with environment ``envs[i]``)
    until all have exited on their own; every ``kill_every`` real seconds (up to
    ``max_kills`` times) SIGKILL a random running worker that has printed at least one event
    since it started, and start it again at once with the same environment.

    Each run's output goes to ``logs/worker-<i>-run-<n>.log``. After ``limit_seconds`` every
    worker is killed and the run reported ``hung``. Every process started is reaped before
    this returns, whatever happens."""
    logs.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    slots = [_Slot(index) for index in range(len(envs))]
    starts = kills = 0
    statuses: list[int] = []
    hung = False

    def start(slot: _Slot) -> None:
        nonlocal starts
        starts += 1
        slot.log = logs / f"worker-{slot.index}-run-{starts:03d}.log"
        with slot.log.open("wb") as output:
            slot.process = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=dict(envs[slot.index]),
            )
        slot.started_at = time.monotonic()

    began = time.monotonic()
    began_at = time.time()
    next_kill = None if kill_every is None else began + kill_every
    try:
        for slot in slots:
            start(slot)
        while True:
            now = time.monotonic()
            running = []
            for slot in slots:
                if slot.process is None:
                    continue
                status = slot.process.poll()
                if status is None:
                    running.append(slot)
                else:
                    statuses.append(status)
                    slot.process = None
            if not running:
                break
            if now - began > limit_seconds:
                hung = True
                break
            if next_kill is not None and now >= next_kill and kills < max_kills:
                # A worker killed before its first event has claimed nothing yet: no test.
                ripe = [slot for slot in running if _events(slot.log) > 0]
                if ripe:
                    victim = rng.choice(ripe)
                    assert victim.process is not None
                    victim.process.send_signal(signal.SIGKILL)
                    victim.process.wait(_REAP_SECONDS)
                    kills += 1
                    start(victim)
                    next_kill = now + (kill_every or 0.0)
            time.sleep(_LOOK_EVERY)
    finally:
        for slot in slots:
            if slot.process is not None:
                _stop(slot.process, signal.SIGKILL)
    return FleetRun(
        began_at=began_at,
        wall_seconds=time.monotonic() - began,
        kills=kills,
        starts=starts,
        exit_statuses=tuple(statuses),
        hung=hung,
    )


@attrs.frozen
class Audit:
    """What a catalog's run left, judged from the outside.

    ``states`` counts songs by their state in the manifest; ``lost`` are catalog songs in no
    final state (missing from the manifest, or still pending/submitting/submitted/completed);
    ``paid_twice`` are songs with more than one job on the server, and ``paid_twice_ambiguous``
    those of them the manifest reports ambiguous; ``ambiguous_sent`` are ambiguous songs the
    server did receive. ``bad_files`` lists downloaded songs whose file is missing or differs
    from the manifest's size and hash; ``stray_files`` files in the output directory that are
    no song's (a second copy, a partial download, a temporary manifest);
    ``manifest_repeats`` keys listed more than once."""

    songs: int
    states: dict[str, int]
    lost: tuple[str, ...]
    submissions: int
    duplicate_submissions: int
    paid_twice: tuple[str, ...]
    paid_twice_ambiguous: tuple[str, ...]
    ambiguous_sent: int
    bad_files: tuple[str, ...]
    stray_files: tuple[str, ...]
    manifest_repeats: tuple[str, ...]
    unknown_in_manifest: tuple[str, ...]

    @property
    def paid_twice_beyond_ambiguous(self) -> tuple[str, ...]:
        """Songs paid for more than once that the run did not report ambiguous."""
        return tuple(k for k in self.paid_twice if k not in self.paid_twice_ambiguous)

    @property
    def clean(self) -> bool:
        """Nothing lost, nothing paid twice beyond ambiguous, each file once, manifest whole."""
        return not (
            self.lost
            or self.paid_twice_beyond_ambiguous
            or self.bad_files
            or self.stray_files
            or self.manifest_repeats
            or self.unknown_in_manifest
        )

    def figures(self) -> dict[str, Any]:
        """The audit as JSON-ready figures."""
        return {
            "songs": self.songs,
            "states": dict(sorted(self.states.items())),
            "songs_lost": len(self.lost),
            "submissions": self.submissions,
            "duplicate_submissions": self.duplicate_submissions,
            "songs_paid_twice": len(self.paid_twice),
            "songs_paid_twice_reported_ambiguous": len(self.paid_twice_ambiguous),
            "songs_paid_twice_beyond_ambiguous": len(self.paid_twice_beyond_ambiguous),
            "ambiguous_songs_the_server_received": self.ambiguous_sent,
            "bad_files": len(self.bad_files),
            "stray_files": list(self.stray_files),
            "manifest_repeats": len(self.manifest_repeats),
            "clean": self.clean,
        }


def _read_manifest(out: Path) -> list[dict[str, Any]]:
    path = out / MANIFEST_NAME
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def production_times(out: Path) -> tuple[float, float] | None:
    """Unix times of the first submission and the last download the manifest records
    (``None`` when nothing was downloaded): the span in which the catalog was produced."""
    from datetime import datetime

    submitted: list[float] = []
    downloaded: list[float] = []
    for record in _read_manifest(out):
        timings = record["timings"]
        if timings["submitted_at"]:
            submitted.append(datetime.fromisoformat(timings["submitted_at"]).timestamp())
        if record["status"] == "downloaded" and timings["downloaded_at"]:
            downloaded.append(datetime.fromisoformat(timings["downloaded_at"]).timestamp())
    if not submitted or not downloaded:
        return None
    return min(submitted), max(downloaded)


def _file_matches(path: Path, record: Mapping[str, Any]) -> bool:
    if not path.is_file():
        return False
    data = path.read_bytes()
    return len(data) == record["bytes"] and hashlib.sha256(data).hexdigest() == record["sha256"]


def audit_output(
    rows: Sequence[Mapping[str, Any]], out: Path, jobs: Sequence[Mapping[str, Any]]
) -> Audit:
    """Judge the output directory ``out`` of the catalog ``rows`` against the emulator's
    ``jobs`` (its ``job_records``)."""
    manifest = _read_manifest(out)
    catalog_keys = {str(row["key"]) for row in rows}
    state_of: dict[str, str] = {}
    seen: dict[str, int] = {}
    for record in manifest:
        seen[record["key"]] = seen.get(record["key"], 0) + 1
        state_of[record["key"]] = record["status"]
    states: dict[str, int] = {}
    for key in catalog_keys:
        state = state_of.get(key, "missing")
        states[state] = states.get(state, 0) + 1
    lost = sorted(k for k in catalog_keys if state_of.get(k) not in FINAL_STATES)

    jobs_per_prompt: dict[str, int] = {}
    for job in jobs:
        jobs_per_prompt[job["prompt"]] = jobs_per_prompt.get(job["prompt"], 0) + 1
    prompt_of = {str(row["key"]): str(row["prompt"]) for row in rows}
    key_of_prompt = {prompt: key for key, prompt in prompt_of.items()}
    # A job whose prompt is no catalog song's is named by its prompt: it shows up, never hides.
    paid_twice = sorted(key_of_prompt.get(p, p) for p, n in jobs_per_prompt.items() if n > 1)
    ambiguous = {k for k, s in state_of.items() if s == "ambiguous"}

    downloaded = [r for r in manifest if r["status"] == "downloaded"]
    bad_files = sorted(r["key"] for r in downloaded if not _file_matches(out / r["file"], r))
    # Compared as paths inside ``out``: a copy of a song's file anywhere else (say, left in
    # the partial directory) is a stray even though its name is a song's.
    expected = {Path(r["file"]) for r in downloaded} | {Path(MANIFEST_NAME)}
    stray = sorted(
        str(path.relative_to(out))
        for path in out.rglob("*")
        if path.is_file() and _is_ours(path, out) and path.relative_to(out) not in expected
    )
    return Audit(
        songs=len(catalog_keys),
        states=states,
        lost=tuple(lost),
        submissions=len(jobs),
        duplicate_submissions=sum(n - 1 for n in jobs_per_prompt.values()),
        paid_twice=tuple(paid_twice),
        paid_twice_ambiguous=tuple(k for k in paid_twice if k in ambiguous),
        ambiguous_sent=sum(1 for k in ambiguous if prompt_of.get(k) in jobs_per_prompt),
        bad_files=tuple(bad_files),
        stray_files=tuple(stray),
        manifest_repeats=tuple(sorted(k for k, n in seen.items() if n > 1)),
        unknown_in_manifest=tuple(sorted(set(seen) - catalog_keys)),
    )


def _is_ours(path: Path, out: Path) -> bool:
    """Whether ``path`` is something a song or the manifest could have left: audio (final or
    partial), the partial directory's content, a temporary manifest. A SQLite journal or the
    harness's own files are not judged."""
    relative = path.relative_to(out)
    return (
        relative.parts[0] == PARTIAL_DIR
        or path.suffix in AUDIO_SUFFIXES
        or path.name.endswith((".part", ".tmp"))
        or path.name.startswith(f".{MANIFEST_NAME}")
    )


def worker_environment(base_url: str, api_key: str, **extra: str) -> dict[str, str]:
    """This process's environment for a worker: the API at ``base_url`` with ``api_key``
    (``AIMLMUSIC_BASE_URL``, ``AIML_API_KEY``), nothing else of ours inherited."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("AIMLAPI_API_KEY", "AIMLMUSIC_JOURNAL_URL", "AIMLMUSIC_SHARED_URL")
    }
    env.update(AIMLMUSIC_BASE_URL=base_url, AIML_API_KEY=api_key, **extra)
    return env
