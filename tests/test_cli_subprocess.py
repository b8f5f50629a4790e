"""The aimlmusic command as a real process: the demo, and resuming after SIGKILL and Ctrl-C
against a served emulator whose books survive the client's death."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aimlmusic.catalog import read_summary
from aimlmusic.emulator import TEST_API_KEY, Emulator, EmulatorConfig, Faults, serving

pytestmark = pytest.mark.slow

LYRICS = "[Verse]\nNeon rain on empty streets\n[Chorus]\nWe keep on walking home"
SONGS = 16
TIME_SCALE = 200.0
#: Real seconds any one process may take before the test gives up on it.
PROCESS_TIMEOUT = 60.0
#: Real seconds the emulator holds back one POST's answer (well under the read timeout).
HELD_ANSWER = 2.0


def prompt_of(i: int) -> str:
    return f"Synthwave night drive number {i}, warm pads"


def write_catalog(path: Path) -> Path:
    rows = [
        {
            "key": f"song-{i:02d}",
            "title": f"Track {i:02d}",
            "prompt": prompt_of(i),
            "lyrics": LYRICS,
            "format": ("mp3", "wav", "pcm")[i % 3],
        }
        for i in range(SONGS)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


class CliProcess:
    """A running ``python -m aimlmusic.cli`` whose stdout lines are read as they come."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "AIML_API_KEY": TEST_API_KEY}
        env.pop("AIMLMUSIC_BASE_URL", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aimlmusic.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, word: str, count: int) -> bool:
        """Read lines until ``count`` of them have ``word`` as their state; False if the
        process ended first."""
        seen = 0
        deadline = time.monotonic() + PROCESS_TIMEOUT
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                return False
            self.lines.append(line)
            if line.startswith("[") and line.split("] ", 1)[1].split(" ", 1)[0] == word:
                seen += 1
                if seen >= count:
                    return True
        raise AssertionError(f"no {count} {word!r} lines in time; got {self.lines}")

    def finish(self) -> tuple[int, str, str]:
        """Wait for the end; return (status, stdout, stderr)."""
        status = self.process.wait(timeout=PROCESS_TIMEOUT)
        self._reader.join(timeout=PROCESS_TIMEOUT)
        while not self._queue.empty():
            line = self._queue.get_nowait()
            if line is not None:
                self.lines.append(line)
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        errors = self.process.stderr.read()
        self.process.stdout.close()
        self.process.stderr.close()
        return status, "\n".join(self.lines), errors


@pytest.fixture
def served() -> Iterator[tuple[Emulator, str]]:
    emulator = Emulator(EmulatorConfig(time_scale=TIME_SCALE, audio_seconds=0.3, seed=7))
    with serving(emulator) as base_url:
        yield emulator, base_url


def batch_args(catalog: Path, out: Path, base_url: str, *extra: str) -> list[str]:
    return [
        "batch", str(catalog), "-o", str(out), "--base-url", base_url,
        "--time-scale", str(TIME_SCALE), "--max-in-flight", "4", "--plain", *extra,
    ]  # fmt: skip


def finish_everything(catalog: Path, out: Path, base_url: str, emulator: Emulator) -> None:
    """Rerun until done; ambiguous songs are adopted when the emulator has them (what a user
    does after finding the generation in their account), else resubmitted."""
    for _ in range(4):
        status, output, errors = CliProcess(*batch_args(catalog, out, base_url)).finish()
        summary = read_summary(out)
        if summary.all_done:
            assert status == 0, output + errors
            return
        assert status == 1, output + errors
        extra: list[str] = []
        for key in summary.ambiguous:
            number = int(key.split("-")[1])
            found = [j.id for j in emulator.jobs.values() if j.prompt == prompt_of(number)]
            extra += ["--adopt", f"{key}={found[0]}"] if found else ["--resubmit-ambiguous"]
        if extra:
            CliProcess(*batch_args(catalog, out, base_url, *extra)).finish()
    raise AssertionError(f"not done after several reruns: {read_summary(out)}")


def assert_every_song_once(out: Path, emulator: Emulator) -> None:
    records = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == SONGS
    assert {r["status"] for r in records} == {"downloaded"}
    on_disk = sorted(
        p.name
        for p in out.iterdir()
        if p.name not in ("manifest.jsonl",) and "journal" not in p.name
    )
    assert on_disk == sorted(r["file"] for r in records)  # no duplicates, no .part leftovers
    for record in records:
        data = (out / record["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record["sha256"]
    stats = emulator.stats()
    assert stats.duplicate_submissions == 0
    assert stats.jobs_submitted == SONGS


def test_a_signal_while_a_submission_is_on_its_way_lets_it_land(tmp_path: Path) -> None:
    """SIGTERM while a POST is on its way (its answer held) waits for the answer: the song's
    generation id reaches the journal (it is not left ambiguous) and nothing is paid twice."""
    faults = Faults(delay_seconds=HELD_ANSWER * TIME_SCALE)
    emulator = Emulator(
        EmulatorConfig(time_scale=TIME_SCALE, audio_seconds=0.3, seed=7, faults=faults)
    )
    emulator.inject("delay", route="submit")  # the first POST's answer only
    catalog = write_catalog(tmp_path / "songs.jsonl")
    out = tmp_path / "out"
    with serving(emulator) as base_url:
        run = CliProcess(*batch_args(catalog, out, base_url))
        assert run.wait_for("submitting", 1)
        run.process.send_signal(signal.SIGTERM)
        status, output, errors = run.finish()
        assert status == 130, output + errors
        assert not read_summary(out).ambiguous
        assert "on their way" in errors
        finish_everything(catalog, out, base_url, emulator)
    assert_every_song_once(out, emulator)


def test_demo_in_a_real_process(tmp_path: Path) -> None:
    """`python -m aimlmusic.cli demo` needs no key and writes files and a manifest."""
    out = tmp_path / "demo-output"
    status, output, errors = CliProcess("demo", "-o", str(out), "--time-scale", "1000").finish()
    assert status == 0, errors
    assert f"Manifest: {out / 'manifest.jsonl'}" in output
    assert len(list(out.glob("*.mp3"))) + len(list(out.glob("*.wav"))) == 12


def test_sigkill_at_several_points_then_resume(
    tmp_path: Path, served: tuple[Emulator, str]
) -> None:
    """Killed with SIGKILL at several points and rerun, the batch ends with every song
    downloaded exactly once and no duplicate paid submission."""
    emulator, base_url = served
    catalog = write_catalog(tmp_path / "songs.jsonl")
    out = tmp_path / "out"
    kills = 0
    for word, count in [("submitting", 1), ("submitted", 5), ("downloaded", 3), ("completed", 6)]:
        run = CliProcess(*batch_args(catalog, out, base_url))
        if run.wait_for(word, count):
            run.process.send_signal(signal.SIGKILL)
            kills += 1
        run.finish()
    assert kills >= 3
    assert not read_summary(out).all_done or kills == 4
    finish_everything(catalog, out, base_url, emulator)
    assert_every_song_once(out, emulator)


def test_ctrl_c_stops_cleanly_and_the_rerun_resumes(
    tmp_path: Path, served: tuple[Emulator, str]
) -> None:
    """SIGINT mid-run exits 130 with a summary and a consistent journal; rerunning finishes."""
    emulator, base_url = served
    catalog = write_catalog(tmp_path / "songs.jsonl")
    out = tmp_path / "out"
    run = CliProcess(*batch_args(catalog, out, base_url))
    assert run.wait_for("submitted", 3)
    run.process.send_signal(signal.SIGINT)
    status, output, errors = run.finish()
    assert status == 130, output + errors
    assert "interrupted: stopped cleanly" in errors
    assert "Traceback" not in errors
    assert f"of {SONGS} songs into {out}" in output
    assert not read_summary(out).all_done
    finish_everything(catalog, out, base_url, emulator)
    assert_every_song_once(out, emulator)
