"""Client processes for the shared-budget benchmark: real OS processes started together.

:func:`run_fleet` starts one Python process per :class:`WorkerSpec` (this file run as a
script), waits until every one has imported the package and entered its
``AsyncMusicClient``, then tells them all to go at once: start-up (a second or more of
imports, fifty seconds of API time at 50x) must not stagger the processes' first requests.
Each worker runs ``generate_many`` over its batches, one after the other, and reports one
JSON line.

The shared budget is switched on the way a deployment would: ``AIMLMUSIC_SHARED_URL`` in
the worker's environment (removed from it otherwise). A client that does not know the
variable ignores it; the worker reports the class of its client's budget, so the figures
say whether a shared budget really ran.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

__all__ = [
    "SHARED_URL_VARIABLE",
    "WorkerResult",
    "WorkerSpec",
    "prompt_owner",
    "run_fleet",
    "song_prompt",
]

#: The variable that switches a client onto the shared budget (read by the client itself).
SHARED_URL_VARIABLE = "AIMLMUSIC_SHARED_URL"
#: What a worker prints once its client is ready, and what it waits for before its first song.
_READY = "ready"
_GO = "go\n"
#: Real seconds a worker may take to start (imports on a loaded 2-core machine are slow).
_START_TIMEOUT = 60.0
#: Real seconds a worker may run after the go (the largest run here takes under a minute):
#: a worker that hangs is killed and named.
_RUN_TIMEOUT = 300.0
_BENCHMARKS = Path(__file__).resolve().parent
_REPO = _BENCHMARKS.parent


@attrs.frozen
class WorkerSpec:
    """One client process: its label, the songs of each of its batches (run one after the
    other in the same client, ``pause`` real seconds apart), and the shared budget's URL
    (``None``: a budget of its own)."""

    label: str
    batches: tuple[int, ...]
    base_url: str
    api_key: str
    shared_url: str | None = None
    pause: float = 0.0


@attrs.frozen
class WorkerResult:
    """What a worker reports: songs finished well and not, the first few errors, and the
    class of the budget its client used (``RequestBudget`` is the one of a single process)."""

    label: str
    ok: int
    failed: int
    errors: tuple[str, ...]
    budget: str


def song_prompt(label: str, batch: int, index: int) -> str:
    """The prompt of a worker's song: the emulator keeps it, so each job can be traced back
    to its worker and batch (see :func:`prompt_owner`)."""
    return f"{label}/b{batch}/song {index}: warm lo-fi ballad, soft piano, brushed drums"


def prompt_owner(prompt: str) -> tuple[str, int]:
    """The worker label and batch number of a prompt made by :func:`song_prompt`."""
    label, batch, _ = prompt.split("/", 2)
    return label, int(batch[1:])


def _environment(spec: WorkerSpec) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != SHARED_URL_VARIABLE}
    if spec.shared_url is not None:
        env[SHARED_URL_VARIABLE] = spec.shared_url
    # The worker imports the package this benchmark runs from (a worktree's own copy).
    paths = [str(_REPO), str(_BENCHMARKS), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def run_fleet(specs: Sequence[WorkerSpec]) -> list[WorkerResult]:
    """Start a process per spec, release them together once all are ready, and return
    their reports in the order of ``specs``."""
    workers: list[subprocess.Popen[str]] = []
    try:
        for spec in specs:
            workers.append(
                subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), json.dumps(attrs.asdict(spec))],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    env=_environment(spec),
                )
            )
        for worker, spec in zip(workers, specs, strict=True):
            line = _read_line(worker, _START_TIMEOUT)
            if line != _READY:
                raise RuntimeError(f"worker {spec.label} did not start (said {line!r})")
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write(_GO)
            worker.stdin.flush()
        results = []
        for worker, spec in zip(workers, specs, strict=True):
            try:
                out, _ = worker.communicate(timeout=_RUN_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise RuntimeError(
                    f"worker {spec.label} did not finish within {_RUN_TIMEOUT:g} s"
                ) from None
            if worker.returncode != 0:
                raise RuntimeError(f"worker {spec.label} failed (exit {worker.returncode})")
            results.append(WorkerResult(**_last_json(out)))
        return results
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def _read_line(worker: subprocess.Popen[str], timeout: float) -> str:
    # A bounded wait for one line: a thread reads it so a silent worker cannot hang us.
    assert worker.stdout is not None
    stdout = worker.stdout
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return got[0].strip() if got else ""


def _last_json(out: str) -> dict[str, Any]:
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError("a worker ended without its report")
    report: dict[str, Any] = json.loads(lines[-1])
    report["errors"] = tuple(report["errors"])
    return report


# ---------------------------------------------------------------- the worker process


def _songs(label: str, batch: int, count: int) -> Iterator[tuple[str, Any]]:
    from aimlmusic import SongRequest

    for index in range(count):
        yield (
            f"{label}-{batch}-{index}",
            SongRequest(
                prompt=song_prompt(label, batch, index),
                lyrics=f"[Verse]\nStreetlights flicker on avenue {index}\n[Chorus]\nSing it slow",
            ),
        )


async def _work(spec: WorkerSpec) -> WorkerResult:
    import anyio

    from aimlmusic import AsyncMusicClient

    ok = failed = 0
    errors: list[str] = []
    client = AsyncMusicClient(spec.api_key, base_url=spec.base_url)
    async with client:
        print(_READY, flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)  # the go signal
        for batch, count in enumerate(spec.batches):
            if batch:
                await anyio.sleep(spec.pause)
            async with client.generate_many(_songs(spec.label, batch, count)) as results:
                async for result in results:
                    if result.ok:
                        ok += 1
                    else:
                        failed += 1
                        if len(errors) < 3:
                            errors.append(f"{type(result.error).__name__}: {result.error}")
        budget = type(client.budget).__name__
    return WorkerResult(spec.label, ok, failed, tuple(errors), budget)


def _main() -> None:
    import anyio

    fields = json.loads(sys.argv[1])
    spec = WorkerSpec(**{**fields, "batches": tuple(fields["batches"])})
    result = anyio.run(_work, spec)
    print(json.dumps(attrs.asdict(result)), flush=True)


if __name__ == "__main__":
    _main()
