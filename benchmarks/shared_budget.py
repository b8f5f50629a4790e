"""Several processes on one API key: the shared budget against a budget per process.

Everything runs against the bundled emulator served over a real socket (uvicorn, in this
process, one fresh emulator and one fresh API key per run), time compressed ``--time-scale``
times, with the account limits of the emulator's defaults: 120 requests/minute and 20
songs generating at once per key. Client processes are real OS processes (see ``_fleet``),
each an ``AsyncMusicClient`` running ``generate_many``; the shared budget is switched on with
``AIMLMUSIC_SHARED_URL`` pointing at Redis. The emulator's
records give every figure, so no client can flatter itself.

1. **Throughput**: P processes x N songs on one key with the shared budget, the same
   without it, and one process doing all P x N songs (the baseline), in the same run.
   Targets for the shared run: 429s <= 1 % of requests, makespan <= 1.1 x the baseline's.
2. **Warm start**: a process learns the service's timing (a batch of songs), then runs 20
   more; a new process with the shared Redis runs 20 songs (it should start from the learned
   estimate); a new process without it runs 20 songs (cold: the documented prior). Target:
   the new shared process's lag p95 within 1.25 x the warm process's.
3. **Added latency**: the time of ``client.budget.acquire("poll")`` per request, shared
   (a Redis round trip on loopback) and local. Target: shared p99 <= 2 ms.

::

    python benchmarks/shared_budget.py                 # 4 x 50 songs, 50x (a few minutes)
    python benchmarks/shared_budget.py --quick         # smaller, under a minute
    python benchmarks/shared_budget.py --json shared.json

Shared state goes to ``--redis-url`` (default: database 11 on 127.0.0.1:6379). Every
account of a run has a fresh API key, so its keys in Redis (under the hash of the API key)
are its own: two runs at once never meet, and at the end exactly those keys are deleted,
never the whole database.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import anyio
import attrs
from _fleet import SHARED_URL_VARIABLE, WorkerResult, WorkerSpec, prompt_owner, run_fleet
from _json_out import emit_json
from _machine import machine_facts
from _stats import Target, percentile
from workloads import WORKLOADS, Workload

from aimlmusic import AsyncMusicClient, Limits
from aimlmusic.emulator import Emulator, EmulatorConfig, JobRecord, serving

#: The issue's targets for the shared budget.
THROTTLED = Target(1.0, "≤ 1 % of requests")
MAKESPAN_FACTOR = 1.1
WARM_FACTOR = 1.25
ACQUIRE_P99 = Target(2.0, "≤ 2 ms")
#: Songs a process runs after start (or after learning) whose lag the warm-start figure compares.
FIRST_SONGS = 20
#: A rate no acquire loop reaches, so the latency figure times the budget's bookkeeping, never
#: a wait for the window.
UNLIMITED_RATE = 10_000_000.0
#: Acquires timed before the measured ones (the first opens Redis's connection).
ACQUIRE_WARM_UP = 50
#: API seconds between the warm-start batches (and processes): the account's minute window
#: empties, so each batch is timed on what its process knows, not on a window another filled.
WINDOW_CLEAR = 61.0
#: Acquires timed per contender before the next one's turn: contenders alternate in blocks,
#: so a load on the machine that comes and goes falls on all of them alike.
LATENCY_BLOCK = 100
#: Where the shared state goes unless told: a database benchmarks may use (0 is for others).
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/11"
#: The API keys of every account this run made: their namespaces in Redis are deleted at the
#: end, and nothing else.
_KEYS_USED: list[str] = []


def _fresh_key() -> str:
    key = f"bench-{secrets.token_hex(8)}"
    _KEYS_USED.append(key)
    return key


@attrs.frozen
class Sizes:
    """How big each part of a run is."""

    processes: int
    songs_per_process: int
    learn_songs: int
    acquires: int
    #: New processes (and warm batches) per warm-start row: one batch's p95 is its worst song.
    warm_repeats: int
    time_scale: float
    warm_laws: tuple[str, ...]


FULL = Sizes(4, 50, 60, 2000, 3, 50.0, ("uniform", "medium"))
QUICK = Sizes(4, 6, 20, 200, 1, 50.0, ("medium",))


# ---------------------------------------------------------------- accounts and records


@contextlib.contextmanager
def _account(law: Workload, time_scale: float, seed: int) -> Iterator[tuple[Emulator, str, str]]:
    """A fresh emulator served on loopback with one fresh key (so each run has its own
    account and its own namespace in Redis); yields the emulator, its URL and the key."""
    key = _fresh_key()
    emulator = Emulator(
        EmulatorConfig(time_scale=time_scale, seed=seed, durations=law, api_keys={key})
    )
    with serving(emulator) as base_url:
        yield emulator, base_url, key


def _lags(jobs: Sequence[JobRecord]) -> list[float]:
    return [job.lag for job in jobs if job.lag is not None]


def _batch_row(
    name: str, emulator: Emulator, results: Sequence[WorkerResult], processes: int
) -> dict[str, Any]:
    """One throughput run's figures, from the emulator's records."""
    jobs = list(emulator.jobs.values())
    stats = emulator.stats()
    requests = stats.requests["submit"] + stats.requests["poll"]
    lags = _lags(jobs)
    start = min(job.submitted_at for job in jobs)
    end = max(job.first_seen_terminal_at or job.submitted_at for job in jobs)
    return {
        "run": name,
        "processes": processes,
        "songs": len(jobs),
        "ok": sum(r.ok for r in results),
        "failed": sum(r.failed for r in results),
        "errors": [e for r in results for e in r.errors][:3],
        "budget": sorted({r.budget for r in results}),
        "requests": requests,
        "throttled": stats.rate_limited,
        "throttled_pct": 100.0 * stats.rate_limited / max(1, requests),
        "polls_per_song": stats.requests["poll"] / max(1, len(jobs)),
        "lag_p50_s": percentile(lags, 50),
        "lag_p95_s": percentile(lags, 95),
        "makespan_s": end - start,
        "duplicates": stats.duplicate_submissions,
    }


# ---------------------------------------------------------------- 1. throughput


def throughput(sizes: Sizes, redis_url: str, seed: int) -> list[dict[str, Any]]:
    """Baseline (one process, all songs), P processes without and with the shared budget."""
    total = sizes.processes * sizes.songs_per_process
    law = WORKLOADS["uniform"]
    runs = [
        ("one process (baseline)", 1, total, None),
        ("processes, a budget each", sizes.processes, sizes.songs_per_process, None),
        ("processes, shared budget", sizes.processes, sizes.songs_per_process, redis_url),
    ]
    rows = []
    for name, processes, songs, shared in runs:
        started = time.perf_counter()
        with _account(law, sizes.time_scale, seed) as (emulator, base_url, key):
            specs = [WorkerSpec(f"p{i}", (songs,), base_url, key, shared) for i in range(processes)]
            results = run_fleet(specs)
            rows.append(_batch_row(name, emulator, results, processes))
        print(f"  ran {name!r} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    baseline = rows[0]["makespan_s"]
    for row in rows:
        row["makespan_ratio"] = row["makespan_s"] / baseline
    return rows


# ---------------------------------------------------------------- 2. warm start


def _first_songs_row(
    name: str, batches: Sequence[Sequence[JobRecord]], budget: str
) -> dict[str, Any]:
    jobs = [job for batch in batches for job in batch]
    lags = _lags(jobs)
    return {
        "process": name,
        "songs": len(jobs),
        "batches": len(batches),
        "budget": budget,
        "lag_p50_s": percentile(lags, 50),
        "lag_p95_s": percentile(lags, 95),
        "lag_p95_each_s": [percentile(_lags(batch), 95) for batch in batches],
        "polls_per_song": sum(job.polls for job in jobs) / max(1, len(jobs)),
    }


def warm_start(sizes: Sizes, law_name: str, redis_url: str, seed: int) -> list[dict[str, Any]]:
    """A warm process (after learning), new processes with the shared Redis, and new ones
    without it (cold), each timed on batches of 20 songs: the warm process's batches after
    its learning batch, the new processes' first batch. The rows pool ``warm_repeats``
    batches each."""
    law = WORKLOADS[law_name]
    repeats = sizes.warm_repeats
    started = time.perf_counter()
    with _account(law, sizes.time_scale, seed) as (emulator, base_url, key):
        # One process at a time, so none shares the account's limits with another.
        pause = WINDOW_CLEAR / sizes.time_scale
        learned = (sizes.learn_songs, *([FIRST_SONGS] * repeats))
        budgets = {
            "warm": run_fleet([WorkerSpec("warm", learned, base_url, key, redis_url, pause)])
        }
        for kind, shared in (("new", redis_url), ("cold", None)):
            budgets[kind] = []
            for i in range(repeats):
                time.sleep(pause)
                spec = WorkerSpec(f"{kind}{i}", (FIRST_SONGS,), base_url, key, shared)
                budgets[kind] += run_fleet([spec])
        batches: dict[tuple[str, int], list[JobRecord]] = {}
        for job in emulator.jobs.values():
            batches.setdefault(prompt_owner(job.prompt), []).append(job)

    def budget_of(kind: str) -> str:
        return ", ".join(sorted({r.budget for r in budgets[kind]}))

    rows = [
        _first_songs_row(
            "cold: new process, own budget (prior only)",
            [batches[(f"cold{i}", 0)] for i in range(repeats)],
            budget_of("cold"),
        ),
        _first_songs_row(
            f"warm: same process after {sizes.learn_songs} songs",
            [batches[("warm", b)] for b in range(1, repeats + 1)],
            budget_of("warm"),
        ),
        _first_songs_row(
            "new process, shared Redis",
            [batches[(f"new{i}", 0)] for i in range(repeats)],
            budget_of("new"),
        ),
    ]
    warm_p95 = rows[1]["lag_p95_s"]
    for row in rows:
        row["law"] = law_name
        row["vs_warm"] = row["lag_p95_s"] / warm_p95 if warm_p95 > 0 else float("nan")
    print(
        f"  ran warm start on {law_name!r} in {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )
    return rows


# ---------------------------------------------------------------- 3. added latency


def _bench_client(shared_url: str | None) -> AsyncMusicClient:
    extra: dict[str, Any] = {}
    if _client_takes_shared_url():
        # "" turns sharing off even when AIMLMUSIC_SHARED_URL is set in this environment.
        extra["shared_url"] = shared_url or ""
    # No request is sent: the URL only has to be well formed.
    return AsyncMusicClient(
        _fresh_key(),
        base_url="http://127.0.0.1:9",
        limits=Limits(requests_per_minute=UNLIMITED_RATE),
        **extra,
    )


async def _time_acquires(count: int, redis_url: str) -> list[dict[str, Any]]:
    """``count`` timed calls of each contender: the local budget's acquire, the shared
    budget's, and a bare Redis round trip (PING) inline and from a worker thread (the way
    the shared budget reaches Redis on trio; on asyncio it awaits redis-py's asyncio
    client)."""
    import redis

    local, shared = _bench_client(None), _bench_client(redis_url)
    bare: Any = redis.Redis.from_url(redis_url)  # its stubs leave ping() untyped

    async def take(budget: Any) -> None:
        await budget.acquire("poll")
        budget.on_success()

    async def ping_inline() -> None:
        bare.ping()

    async def ping_in_thread() -> None:
        await anyio.to_thread.run_sync(bare.ping)

    samples: dict[str, list[float]] = {}
    try:
        async with local, shared:
            contenders: dict[str, tuple[str, Callable[[], Awaitable[None]]]] = {
                "local budget": (type(local.budget).__name__, lambda: take(local.budget)),
                "shared budget": (type(shared.budget).__name__, lambda: take(shared.budget)),
                "Redis PING, inline": ("redis-py", ping_inline),
                "Redis PING, worker thread": ("redis-py", ping_in_thread),
            }
            for _, call in contenders.values():
                for _ in range(ACQUIRE_WARM_UP):  # connections opened, caches warm
                    await call()
            for _ in range(math.ceil(count / LATENCY_BLOCK)):
                for name, (_, call) in contenders.items():
                    took = samples.setdefault(name, [])
                    for _ in range(LATENCY_BLOCK):
                        before = time.perf_counter()
                        await call()
                        took.append((time.perf_counter() - before) * 1000.0)
    finally:
        bare.close()
    return [
        {
            "what": name,
            "class": kind,
            "calls": len(samples[name]),
            "p50_ms": percentile(samples[name], 50),
            "p99_ms": percentile(samples[name], 99),
            "max_ms": max(samples[name]),
            "mean_ms": sum(samples[name]) / len(samples[name]),
        }
        for name, (kind, _) in contenders.items()
    ]


def _client_takes_shared_url() -> bool:
    import inspect

    return "shared_url" in inspect.signature(AsyncMusicClient).parameters


def added_latency(sizes: Sizes, redis_url: str) -> list[dict[str, Any]]:
    """The budgets' acquire and a bare Redis round trip, timed per call, on each backend."""
    rows = []
    for backend in ("asyncio", "trio"):
        for row in anyio.run(_time_acquires, sizes.acquires, redis_url, backend=backend):
            rows.append({"backend": backend, **row})
    return rows


# ---------------------------------------------------------------- tables


def _num(value: float, digits: int = 2) -> str:
    return f"{value:,.{digits}f}"


def throughput_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: the three throughput runs side by side, the shared one judged."""
    makespan = Target(MAKESPAN_FACTOR, f"≤ {MAKESPAN_FACTOR:g} × one process")
    lines = [
        "| run | processes × songs | budget class | songs ok | requests | 429s / requests "
        "| polls/song | lag p95 | makespan | makespan / one process |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        judged = "shared" in row["run"]
        throttled = _num(row["throttled_pct"]) + " %"
        ratio = _num(row["makespan_ratio"], 3)
        if judged:
            throttled += " " + THROTTLED.mark(row["throttled_pct"])
            ratio += " " + makespan.mark(row["makespan_ratio"])
        lines.append(
            f"| {row['run']} | {row['processes']} × {row['songs'] // row['processes']} "
            f"| {', '.join(row['budget'])} | {row['ok']} / {row['songs']} | {row['requests']} "
            f"| {throttled} ({row['throttled']}) | {_num(row['polls_per_song'])} "
            f"| {_num(row['lag_p95_s'])} s | {_num(row['makespan_s'], 0)} s | {ratio} |"
        )
    return "\n".join(lines)


def warm_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: cold, warm and new-with-shared-Redis processes, their first 20 songs."""
    lines = [
        "| law | process | budget class | songs | polls/song | lag p50 | lag p95 "
        "| lag p95 of each batch | lag p95 / warm |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = _num(row["vs_warm"])
        if "shared Redis" in row["process"]:
            target = Target(WARM_FACTOR, f"≤ {WARM_FACTOR:g} × warm")
            ratio += " " + target.mark(row["vs_warm"])
        lines.append(
            f"| {row['law']} | {row['process']} | {row['budget']} "
            f"| {row['batches']} × {row['songs'] // row['batches']} "
            f"| {_num(row['polls_per_song'])} | {_num(row['lag_p50_s'])} s "
            f"| {_num(row['lag_p95_s'])} s "
            f"| {', '.join(_num(p, 1) for p in row['lag_p95_each_s'])} s | {ratio} |"
        )
    return "\n".join(lines)


def latency_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: the budget's acquire per request, local and shared, and Redis's floor."""
    lines = [
        "| backend | what is timed | class | calls | p50 | p99 | max | mean |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        p99 = _num(row["p99_ms"], 3) + " ms"
        if row["what"] == "shared budget":
            p99 += " " + ACQUIRE_P99.mark(row["p99_ms"])
        lines.append(
            f"| {row['backend']} | {row['what']} | {row['class']} | {row['calls']} "
            f"| {_num(row['p50_ms'], 3)} ms | {p99} | {_num(row['max_ms'], 3)} ms "
            f"| {_num(row['mean_ms'], 3)} ms |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- Redis


def _check_redis_url(url: str) -> None:
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss"):
        raise SystemExit(f"--redis-url must be a redis:// or rediss:// URL, got {scheme!r}")


def _delete_run_keys(url: str) -> int:
    """Delete the Redis keys of every account this run made; return how many there were."""
    import redis

    from aimlmusic._shared_redis import account_namespace  # the client's own naming

    connection: Any = redis.Redis.from_url(url)  # its stubs leave scan_iter() untyped
    deleted = 0
    try:
        for api_key in _KEYS_USED:
            keys = list(connection.scan_iter(match=account_namespace(api_key) + ":*"))
            if keys:
                deleted += int(connection.delete(*keys))
    finally:
        connection.close()
    return deleted


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: under a minute")
    parser.add_argument("--time-scale", type=float, default=None, help="API s per real second")
    parser.add_argument("--processes", type=int, default=None)
    parser.add_argument("--songs", type=int, default=None, help="songs per process")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    _check_redis_url(args.redis_url)
    sizes = QUICK if args.quick else FULL
    sizes = attrs.evolve(
        sizes,
        time_scale=args.time_scale or sizes.time_scale,
        processes=args.processes or sizes.processes,
        songs_per_process=args.songs or sizes.songs_per_process,
    )
    started = time.perf_counter()
    try:
        rows = throughput(sizes, args.redis_url, args.seed)
        warm = [
            row
            for law in sizes.warm_laws
            for row in warm_start(sizes, law, args.redis_url, args.seed)
        ]
        load_before = os.getloadavg()[0]
        latency = added_latency(sizes, args.redis_url)
        # The tail of a per-request figure is mostly the machine's: say how busy it was.
        load = {"before": load_before, "after": os.getloadavg()[0]}
    finally:
        keys_left = _delete_run_keys(args.redis_url)
    figures = {
        "sizes": attrs.asdict(sizes),
        "throughput": rows,
        "warm_start": warm,
        "acquire_latency": latency,
        "load_average_1min": load,
        "redis_keys_left": keys_left,
        "seconds": time.perf_counter() - started,
        "machine": machine_facts(),
    }
    print(
        f"\n## {sizes.processes} processes × {sizes.songs_per_process} songs on one key "
        f"(documented 50-60 s, 120 requests/min and 20 at once per key, time compressed "
        f"{sizes.time_scale:g}x)\n"
    )
    print(throughput_table(rows))
    print(f"\n## Warm start: the first {FIRST_SONGS} songs of a process\n")
    print(warm_table(warm))
    print("\n## The budget's acquire per request\n")
    print(latency_table(latency))
    print(
        f"\nThe machine's load average (1 min) as this part began and ended: "
        f"{load['before']:.1f}, {load['after']:.1f} ({os.cpu_count()} logical cores)"
    )
    shared_classes = {c for row in rows if "shared" in row["run"] for c in row["budget"]}
    if shared_classes <= {"RequestBudget"}:
        print(
            f"\nNote: the client ignored {SHARED_URL_VARIABLE} (its budget stayed the "
            "one-process RequestBudget): the 'shared' rows ran with a budget per process."
        )
    print(f"\nRedis keys the shared runs left (now deleted): {keys_left}")
    print(f"took {figures['seconds']:.0f} s")
    if args.json:
        emit_json(figures, args.json)


if __name__ == "__main__":
    main()
