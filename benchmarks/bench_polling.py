"""Polling efficiency, end to end: ``generate_many`` against the in-process emulator.

For each workload and strategy, one run submits the same number of songs through
``AsyncMusicClient.generate_many`` (20 in flight, 120 requests/minute, the account's published
limits) to an emulator that enforces the same limits, with API time compressed
``time_scale`` times. The emulator's own records give the figures, so the client cannot flatter
itself: polls per song (GETs received), lag (the API time a poll first saw the song finished,
minus the time it finished), makespan (first submission to last song noticed) against the
list-scheduling optimum of the very same durations, and 429s among all requests. Beside them,
from ``_bounds``, the least lag p95 a policy that knew the durations' law could reach with
the same polls per song. On a service that shifts half way, the songs submitted a wave (20
songs) after the shift get figures of their own, against the bound of the law after it.

Run alone: ``python benchmarks/bench_polling.py --songs 200 --time-scale 50 --repeats 3``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from typing import Any

import anyio
import attrs
import httpx
from _bounds import best_share, fewest_polls
from _emulation import JobFacts, make_emulator, read_jobs, request_counts
from _json_out import emit_json
from _songs import API_KEY, song_requests
from _stats import list_schedule_makespan, percentile
from strategies import BASELINE, LEARNED, STRATEGIES, Strategy
from workloads import WORKLOADS, Workload

import aimlmusic

__all__ = ["RunFigures", "combine", "run_matrix", "run_one"]

#: The published paid-tier account limits (DESIGN §2).
REQUESTS_PER_MINUTE = 120
SLOTS = 20
#: The strategies a run compares unless told otherwise: ours and the documented loop, the
#: one it is held against (the others are slower to run and were never close).
DEFAULT_STRATEGIES = (LEARNED, BASELINE)


@attrs.frozen
class RunFigures:
    """What one run measured, kept per song where percentiles need it."""

    songs: int
    ok: int
    polls: int
    client_polls: int
    requests: int
    throttled: int
    lags: list[float]
    lag_shares: list[float]
    makespan: float
    optimum: float
    wall: float
    #: Songs already finished when first polled (their lag is set by the first poll's timing).
    done_at_first_poll: int
    #: On a shifting service, the songs submitted a wave after the shift: their lags, lags as
    #: % of duration, polls and count (empty elsewhere).
    shifted_lags: list[float] = attrs.field(factory=list)
    shifted_shares: list[float] = attrs.field(factory=list)
    shifted_polls: int = 0
    shifted_songs: int = 0


def _from_jobs(jobs: list[JobFacts]) -> tuple[list[float], list[float], float, float]:
    """Lags and lags as % of duration (in submission order), makespan and its optimum,
    from the server's records."""
    noticed = [j for j in jobs if j.completed_at is not None and j.seen_terminal_at is not None]
    lags = [j.seen_terminal_at - j.completed_at for j in noticed]  # type: ignore[operator]
    shares = [100.0 * lag / j.duration for lag, j in zip(lags, noticed, strict=True) if j.duration]
    by_submission = sorted(jobs, key=lambda j: j.submitted_at)
    durations = [j.duration for j in by_submission if j.duration is not None]
    first_submit = by_submission[0].submitted_at if by_submission else 0.0
    last_noticed = max((j.seen_terminal_at or first_submit for j in noticed), default=first_submit)
    return lags, shares, last_noticed - first_submit, list_schedule_makespan(durations, SLOTS)


def _after_shift(jobs: list[JobFacts], first: int) -> tuple[list[float], list[float], int, int]:
    """Lags, lags as % of duration, polls and count of the songs submitted from index
    ``first`` on (``jobs`` in submission order)."""
    later = jobs[first:]
    lags, shares, _, _ = _from_jobs(later) if later else ([], [], 0.0, 0.0)
    return lags, shares, sum(j.polls for j in later), len(later)


def combine(runs: list[RunFigures]) -> dict[str, Any]:
    """One table row from repeated runs: totals over all runs, percentiles over all songs,
    the mean makespan ratio (and its range), the worst run's lag p95."""
    songs = sum(r.songs for r in runs)
    requests = sum(r.requests for r in runs)
    throttled = sum(r.throttled for r in runs)
    lags = [lag for r in runs for lag in r.lags]
    shares = [share for r in runs for share in r.lag_shares]
    # After the first wave the policy has seen songs finish: its steady state.
    warm_lags = [lag for r in runs for lag in r.lags[SLOTS:]]
    warm_shares = [share for r in runs for share in r.lag_shares[SLOTS:]]
    ratios = [r.makespan / r.optimum for r in runs if r.optimum]
    return {
        "runs": len(runs),
        "songs": songs,
        "ok": sum(r.ok for r in runs),
        "polls_per_song": sum(r.polls for r in runs) / songs,
        "client_polls_per_song": sum(r.client_polls for r in runs) / songs,
        "lag_p50_s": percentile(lags, 50),
        "lag_p95_s": percentile(lags, 95),
        "lag_p50_pct": percentile(shares, 50),
        "lag_p95_pct": percentile(shares, 95),
        "lag_mean_s": statistics.fmean(lags) if lags else math.nan,
        "warm_lag_p95_s": percentile(warm_lags, 95),
        "warm_lag_p95_pct": percentile(warm_shares, 95),
        "makespan_s": statistics.fmean(r.makespan for r in runs),
        "optimum_s": statistics.fmean(r.optimum for r in runs),
        "makespan_ratio": statistics.fmean(ratios) if ratios else math.nan,
        "makespan_ratio_min": min(ratios, default=math.nan),
        "makespan_ratio_max": max(ratios, default=math.nan),
        "requests": requests,
        "requests_per_min": 60.0 * requests / sum(r.makespan for r in runs),
        "done_at_first_poll_pct": 100.0 * sum(r.done_at_first_poll for r in runs) / songs,
        "throttled": throttled,
        "throttled_pct": 100.0 * throttled / requests if requests else 0.0,
        "wall_s": sum(r.wall for r in runs),
        "lag_p95_pct_worst_run": max(percentile(r.lag_shares, 95) for r in runs),
        **_shifted_figures(runs),
    }


def _shifted_figures(runs: list[RunFigures]) -> dict[str, Any]:
    songs = sum(r.shifted_songs for r in runs)
    if not songs:
        return {}
    return {
        "shifted_songs": songs,
        "shifted_polls_per_song": sum(r.shifted_polls for r in runs) / songs,
        "shifted_lag_p95_s": percentile([lag for r in runs for lag in r.shifted_lags], 95),
        "shifted_lag_p95_pct": percentile([share for r in runs for share in r.shifted_shares], 95),
    }


async def run_one(
    workload: Workload, strategy: Strategy, *, songs: int, time_scale: float, seed: int
) -> RunFigures:
    """Generate ``songs`` songs with one strategy on one workload; return what it measured."""
    workload = workload.for_run(songs)
    emulator = make_emulator(
        workload,
        time_scale=time_scale,
        seed=seed,
        requests_per_minute=REQUESTS_PER_MINUTE,
        max_generating=SLOTS,
    )
    limits = aimlmusic.Limits(requests_per_minute=REQUESTS_PER_MINUTE, max_in_flight=SLOTS)
    ok = client_polls = 0
    wall_start = time.perf_counter()
    async with aimlmusic.AsyncMusicClient(
        api_key=API_KEY,
        base_url="http://127.0.0.1",
        transport=httpx.ASGITransport(app=emulator.app),
        clock=emulator.clock,
        limits=limits,
        poll=strategy.build(),
    ) as client:
        batch = client.generate_many(song_requests(songs), max_in_flight=SLOTS, deadline=None)
        async with batch as results:
            async for result in results:
                ok += result.ok
                client_polls += result.polls
    wall = time.perf_counter() - wall_start
    jobs = read_jobs(emulator)
    lags, shares, makespan, optimum = _from_jobs(jobs)
    counts = request_counts(emulator)
    shift = workload.shift_at
    # A wave after the shift: the policy has seen songs of the new law finish by then.
    shifted = _after_shift(jobs, shift + SLOTS) if shift is not None else ([], [], 0, 0)
    return RunFigures(
        songs=songs,
        ok=ok,
        polls=counts.polls,
        client_polls=client_polls,
        requests=counts.requests,
        throttled=counts.throttled,
        lags=lags,
        lag_shares=shares,
        makespan=makespan,
        optimum=optimum,
        wall=wall,
        done_at_first_poll=sum(1 for j in jobs if j.polls == 1 and j.seen_terminal_at is not None),
        shifted_lags=shifted[0],
        shifted_shares=shifted[1],
        shifted_polls=shifted[2],
        shifted_songs=shifted[3],
    )


def what_limits_allow(workload: Workload) -> dict[str, float]:
    """What the workload and the account allow any policy, learning or not: the fewest polls
    per song that keep lag p95 within 3 % and 5 % of duration for a policy that knows the
    durations' law (``_bounds``), and the most polls per song the request budget leaves
    once the 20 slots are kept full (submissions take one request per song). For a shifting
    service, of the law after the shift."""
    workload = workload.settled()
    mean_duration = statistics.fmean(workload.durations(100_000, seed=2))
    songs_per_minute = SLOTS * 60.0 / mean_duration
    return {
        "fewest_polls_lag3": fewest_polls(workload, share=0.03),
        "fewest_polls_lag5": fewest_polls(workload, share=0.05),
        "budget_polls_ceiling": (REQUESTS_PER_MINUTE - songs_per_minute) / songs_per_minute,
    }


def bounds_at(workload: Workload, row: dict[str, Any]) -> dict[str, float]:
    """The least lag p95 (% of duration) a policy that knew the law could reach with the
    polls/song this row spent; on a shifting service, of the law after the shift, at the
    polls/song the songs a wave after it got."""
    law = workload.settled()
    if workload.shift_at is None:
        return {"bound_lag_p95_pct": 100.0 * best_share(law, row["polls_per_song"])}
    return {"shifted_bound_lag_p95_pct": 100.0 * best_share(law, row["shifted_polls_per_song"])}


def _progress(row: dict[str, Any]) -> str:
    """One console line per row: the figures the targets judge."""
    bound = row.get("bound_lag_p95_pct", row.get("shifted_bound_lag_p95_pct", math.nan))
    line = (
        f"  polling {row['workload']:<10} {row['strategy']:<16} "
        f"polls/song {row['polls_per_song']:6.2f}  lag p95 {row['lag_p95_s']:6.2f} s "
        f"({row['lag_p95_pct']:5.1f} %, worst run {row['lag_p95_pct_worst_run']:5.1f} %)  "
        f"makespan {row['makespan_s']:5.0f} s x{row['makespan_ratio']:.3f}  "
        f"429s {row['throttled_pct']:.2f} %  bound {bound:5.2f} %"
    )
    if "shifted_songs" in row:
        line += (
            f"  after shift: {row['shifted_polls_per_song']:.2f} polls/song, lag p95 "
            f"{row['shifted_lag_p95_s']:.2f} s ({row['shifted_lag_p95_pct']:.1f} %)"
        )
    return line + f"  ({row['wall_s']:.1f} s)"


async def run_matrix(
    workloads: list[str],
    strategies: list[str],
    *,
    songs: int,
    time_scale: float,
    seed: int,
    repeats: int,
) -> list[dict[str, Any]]:
    """Every strategy on every workload, ``repeats`` times with different seeds, one run
    after the other (never concurrently: runs sharing the CPU would disturb each other's
    compressed time). Within a repeat every strategy gets the same seed, hence the same
    durations in the same order."""
    rows = []
    limits = {name: what_limits_allow(WORKLOADS[name]) for name in workloads}
    for w_index, workload_name in enumerate(workloads):
        for strategy_name in strategies:
            runs = [
                await run_one(
                    WORKLOADS[workload_name],
                    STRATEGIES[strategy_name],
                    songs=songs,
                    time_scale=time_scale,
                    seed=seed + 100 * w_index + repeat,
                )
                for repeat in range(repeats)
            ]
            row = combine(runs)
            row.update(workload=workload_name, strategy=strategy_name, time_scale=time_scale)
            row.update(limits[workload_name])
            row.update(bounds_at(WORKLOADS[workload_name].for_run(songs), row))
            print(_progress(row), file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    """Command line: run the matrix and write its rows as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", type=int, default=200)
    parser.add_argument("--time-scale", type=float, default=50.0)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=1, help="runs (seeds) per cell")
    parser.add_argument("--workload", action="append", choices=list(WORKLOADS))
    parser.add_argument(
        "--strategy",
        action="append",
        choices=list(STRATEGIES),
        help=f"default: {' and '.join(DEFAULT_STRATEGIES)}",
    )
    parser.add_argument("--json", help="write the rows to this file instead of stdout")
    args = parser.parse_args(argv)
    rows = anyio.run(
        lambda: run_matrix(
            args.workload or list(WORKLOADS),
            args.strategy or list(DEFAULT_STRATEGIES),
            songs=args.songs,
            time_scale=args.time_scale,
            seed=args.seed,
            repeats=args.repeats,
        )
    )
    emit_json(rows, args.json)


if __name__ == "__main__":
    main()
