"""``aimlmusic batch --journal`` and ``aimlmusic status --journal`` (in process, against an
emulator on a loopback socket and the test PostgreSQL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from click.testing import CliRunner, Result

from aimlmusic.catalog import PgJournal
from aimlmusic.cli._app import cli
from aimlmusic.emulator import TEST_API_KEY, Emulator, EmulatorConfig, serving

LYRICS = "[Verse]\nNeon rain on empty streets\n[Chorus]\nWe keep on walking home"
#: A password the test PostgreSQL (trust auth) ignores, so it can be looked for in output.
PASSWORD = "Pg-Secret-pw-4242"


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    runner = CliRunner()
    base_env = {
        "AIML_API_KEY": "",
        "AIMLAPI_API_KEY": "",
        "AIMLMUSIC_BASE_URL": "",
        "AIMLMUSIC_JOURNAL_URL": "",
    }
    return runner.invoke(cli, list(args), env={**base_env, **(env or {})}, catch_exceptions=False)


def write_catalog(path: Path, count: int) -> Path:
    rows = [
        {
            "key": f"song-{i}",
            "title": f"Track {i}",
            "prompt": f"Synthwave night drive number {i}, warm pads",
            "lyrics": LYRICS,
            "format": "wav",
        }
        for i in range(count)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def with_password(url: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}:{PASSWORD}@{host}"))


@pytest.fixture
def served() -> Iterator[tuple[Emulator, str]]:
    """An emulator on a loopback socket."""
    emulator = Emulator(EmulatorConfig(time_scale=1000, audio_seconds=0.3))
    with serving(emulator) as base_url:
        yield emulator, base_url


def test_batch_with_a_journal_url_from_the_environment(
    tmp_path: Path, postgres_url: str, served: tuple[Emulator, str]
) -> None:
    """AIMLMUSIC_JOURNAL_URL puts the journal in PostgreSQL (none in the directory); the
    password shows nowhere; status --journal then reports the worker and its downloads."""
    emulator, base_url = served
    catalog = write_catalog(tmp_path / "songs.jsonl", 3)
    url = with_password(postgres_url)
    env = {"AIML_API_KEY": TEST_API_KEY, "AIMLMUSIC_BASE_URL": base_url}
    result = invoke(
        "batch", str(catalog), "-o", str(tmp_path / "out"), "--plain", "--no-tag",
        env={**env, "AIMLMUSIC_JOURNAL_URL": url},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Downloaded 3 of 3" in result.output
    assert not (tmp_path / "out" / "aimlmusic-journal.sqlite").exists()
    assert emulator.stats().requests["submit"] == 3
    manifest = (tmp_path / "out" / "manifest.jsonl").read_text(encoding="utf-8")
    assert PASSWORD not in result.output
    assert PASSWORD not in manifest

    shown = invoke("status", "--journal", url)
    assert shown.exit_code == 0, shown.output
    assert PASSWORD not in shown.output
    assert "downloaded 3" in shown.output
    assert "worker " in shown.output
    as_json = json.loads(invoke("status", "--json", "--journal", url).output)
    assert as_json["counts"]["downloaded"] == 3
    assert [w["downloaded"] for w in as_json["workers"]] == [3]


def test_status_tells_a_running_worker_from_a_killed_one(postgres_url: str) -> None:
    """status --journal says "running" for a worker whose heartbeat is current and "gone"
    for one whose run never ended and whose heartbeat stopped (killed)."""
    with PgJournal(postgres_url, endpoint="https://api.example", worker_id="live") as live:
        live.start_run()
        with PgJournal(postgres_url, endpoint=None, worker_id="killed", now=lambda: 0.0) as killed:
            killed.start_run()  # its heartbeat stopped at lease time 0
        shown = invoke("status", "--journal", postgres_url)
    assert shown.exit_code == 0, shown.output
    lines = {line.split(":")[0]: line for line in shown.output.splitlines()}
    assert lines["worker live"].endswith("last run running"), shown.output
    assert lines["worker killed"].endswith("last run gone (its heartbeat stopped)"), shown.output


def test_the_option_wins_over_the_environment(tmp_path: Path, postgres_url: str) -> None:
    """--journal is used even when AIMLMUSIC_JOURNAL_URL names another (unreachable) one."""
    unreachable = "postgresql://nobody:pw@127.0.0.1:1/none"
    result = invoke("status", "--journal", postgres_url, env={"AIMLMUSIC_JOURNAL_URL": unreachable})
    assert "holds no aimlmusic journal" in result.output
    from_env = invoke("status", env={"AIMLMUSIC_JOURNAL_URL": unreachable})
    assert "cannot open the journal" in from_env.output
    assert ":pw@" not in from_env.output


def test_a_shared_journal_is_refused_with_the_in_process_emulator(
    tmp_path: Path, postgres_url: str
) -> None:
    """--journal with --emulator is a usage error naming both, before anything runs."""
    catalog = write_catalog(tmp_path / "songs.jsonl", 1)
    result = invoke(
        "batch", str(catalog), "-o", str(tmp_path / "out"), "--emulator",
        env={"AIMLMUSIC_JOURNAL_URL": postgres_url},
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--journal" in result.output
    assert "--emulator" in result.output
    assert not (tmp_path / "out").exists()


def test_status_needs_an_id_or_a_journal() -> None:
    """Plain `aimlmusic status` says what it needs."""
    result = invoke("status")
    assert result.exit_code == 2
    assert "GENERATION_ID" in result.output
    assert "--journal" in result.output


@pytest.mark.slow  # a worker in a subprocess, watched for a few seconds
def test_lease_seconds_sets_how_long_a_workers_claims_last(
    tmp_path: Path, postgres_url: str
) -> None:
    """batch --lease-seconds 7 claims songs for 7 seconds of the lease clock, not the default
    60, so others take over a dead worker's songs that much sooner."""
    psycopg = pytest.importorskip("psycopg")
    # 50-60 s songs take 2.5-3 real seconds: the claim is seen while the worker holds it.
    emulator = Emulator(EmulatorConfig(time_scale=20, audio_seconds=0.3))
    catalog = write_catalog(tmp_path / "songs.jsonl", 1)
    with serving(emulator) as base_url:
        env = {**os.environ, "AIML_API_KEY": TEST_API_KEY, "AIMLMUSIC_JOURNAL_URL": ""}
        worker = subprocess.Popen(
            [sys.executable, "-m", "aimlmusic.cli", "batch", str(catalog), "-o",
             str(tmp_path / "out"), "--plain", "--no-tag", "--base-url", base_url,
             "--journal", postgres_url, "--lease-seconds", "7"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )  # fmt: skip
        try:
            remaining = _lease_remaining_once_claimed(psycopg, postgres_url, worker)
            output, _ = worker.communicate(timeout=WORKER_TIMEOUT)
        finally:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0, output
    assert remaining is not None, "the worker never held a claim: " + output
    assert 0 < remaining <= 7


#: Real seconds a worker of one short song may take (on a loaded machine) before the test fails.
WORKER_TIMEOUT = 120


def _lease_remaining_once_claimed(
    psycopg: Any, url: str, worker: subprocess.Popen[str]
) -> float | None:
    """Seconds left on the first claim seen in the journal (None: the worker ended first)."""
    deadline = time.monotonic() + WORKER_TIMEOUT
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as db:
        while worker.poll() is None and time.monotonic() < deadline:
            try:
                row = db.execute(
                    "SELECT lease_until - aimlmusic_now(NULL) FROM aimlmusic_songs "
                    "WHERE owner IS NOT NULL AND lease_until IS NOT NULL LIMIT 1"
                ).fetchone()
            except psycopg.errors.UndefinedTable:  # the worker has not made its tables yet
                row = None
            if row is not None:
                return float(row[0])
            time.sleep(0.02)
    return None


def test_lease_seconds_without_a_shared_journal_is_a_usage_error(tmp_path: Path) -> None:
    """--lease-seconds with the directory's own journal says it needs --journal."""
    catalog = write_catalog(tmp_path / "songs.jsonl", 1)
    result = invoke(
        "batch", str(catalog), "-o", str(tmp_path / "out"), "--emulator", "--lease-seconds", "5"
    )
    assert result.exit_code == 2
    assert "--lease-seconds" in result.output
    assert "--journal" in result.output
    assert not (tmp_path / "out").exists()
