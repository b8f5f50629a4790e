"""generate_many with the learned policy against the documented example's loop, end to end.

Both runs drive the real ``AsyncMusicClient.generate_many`` (transport, request budget,
scheduler) against the bundled emulator, in process over ``httpx.ASGITransport``, with the
account's published limits on both sides (20 generating at once, 120 requests/minute) and the
same seeded durations (default: uniform 50-60 s). The emulator's own records give the
figures, so the client cannot flatter itself. Time is compressed ``--time-scale`` times, so a
ten-minute batch takes a few seconds; ``--virtual`` instead runs on trio's virtual clock
(exact and repeatable: no real latency at all). ``--burst N`` makes the emulator count
requests with a token bucket of N (a server that takes smaller bursts than the minute
allows, which the client learns from its 429s)::

    python benchmarks/batch_vs_documented_loop.py
    python benchmarks/batch_vs_documented_loop.py --songs 400 --time-scale 100
    python benchmarks/batch_vs_documented_loop.py --burst 10
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable, Iterator

import anyio
import httpx
from simulate_polling import Figures, list_schedule, peak_in_window, print_table, quantile

from aimlmusic import AsyncMusicClient, FixedInterval, LearnedPolling, PollPolicy, SongRequest
from aimlmusic.emulator import TEST_API_KEY, Emulator, EmulatorConfig, Uniform

STRATEGIES: dict[str, Callable[[int], PollPolicy]] = {
    "documented loop (0 s, every 10 s)": lambda seed: FixedInterval(10.0, first=0.0),
    "learned (default)": lambda seed: LearnedPolling(),
}


def songs(count: int) -> Iterator[tuple[str, SongRequest]]:
    """Distinct songs, made one at a time as the scheduler asks for them."""
    for index in range(count):
        yield (
            f"song-{index:04d}",
            SongRequest(
                prompt=f"Benchmark song {index}: warm lo-fi ballad, soft piano",
                lyrics=f"[Verse]\nStreetlights flicker on avenue {index}\n[Chorus]\nSing it slow",
            ),
        )


async def run(
    name: str,
    policy: PollPolicy,
    *,
    count: int,
    scale: float,
    seed: int,
    virtual: bool,
    burst: int | None = None,
) -> Figures:
    """One batch of ``count`` songs with ``policy``; figures from the emulator's records."""
    # On the virtual clock, API seconds are the clock's own seconds.
    config = EmulatorConfig(
        time_scale=1.0 if virtual else scale,
        seed=seed,
        durations=Uniform(50.0, 60.0),
        burst=burst,
    )
    emulator = Emulator(config, clock=anyio.current_time) if virtual else Emulator(config)
    client = AsyncMusicClient(
        TEST_API_KEY,
        base_url="http://127.0.0.1",
        transport=httpx.ASGITransport(app=emulator.app),
        clock=emulator.clock,
        poll=policy,
    )
    cpu = time.process_time()
    failed = 0
    async with client, client.generate_many(songs(count)) as results:
        async for result in results:
            failed += not result.ok
    jobs = list(emulator.jobs.values())
    done = [j for j in jobs if j.lag is not None and j.completed_at is not None]
    lags = [j.lag for j in done if j.lag is not None]
    shares = [
        j.lag / (j.completed_at - j.submitted_at)  # type: ignore[operator]
        for j in done
    ]
    log = [entry for entry in emulator.request_log if entry.kind in ("submit", "poll")]
    start = min(j.submitted_at for j in jobs)
    end = max(j.first_seen_terminal_at or j.submitted_at for j in jobs)
    return Figures(
        name=name,
        songs=len(jobs),
        polls_per_song=statistics.fmean(j.polls for j in jobs),
        lag_p50=quantile(lags, 0.5),
        lag_p95=quantile(lags, 0.95),
        lag_share_p50=quantile(shares, 0.5),
        lag_share_p95=quantile(shares, 0.95),
        makespan=end - start,
        optimum=list_schedule([j.duration for j in jobs], client.limits.max_in_flight),
        requests=len(log),
        throttled=sum(1 for entry in log if entry.status == 429),
        peak_per_minute=peak_in_window(sorted(e.time for e in log if e.status != 429)),
        failed=failed,
        cpu_seconds=time.process_time() - cpu,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--songs", type=int, default=200)
    parser.add_argument("--time-scale", type=float, default=150.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--virtual", action="store_true", help="trio's virtual clock")
    parser.add_argument("--burst", type=int, default=None, help="server's token bucket size")
    args = parser.parse_args()
    counted = "a sliding minute" if args.burst is None else f"a bucket of {args.burst}"
    print(
        f"{args.songs} songs, durations uniform 50-60 s, 20 generating at once, "
        f"120 requests/minute ({counted}), "
        + ("virtual time" if args.virtual else f"time compressed {args.time_scale:g}x")
        + "\n"
    )
    rows = []
    for name, make in STRATEGIES.items():
        job = functools.partial(
            run,
            name,
            make(args.seed),
            count=args.songs,
            scale=args.time_scale,
            seed=args.seed,
            virtual=args.virtual,
            burst=args.burst,
        )
        started = time.perf_counter()
        if args.virtual:
            from trio.testing import MockClock

            row = anyio.run(
                job, backend="trio", backend_options={"clock": MockClock(autojump_threshold=0)}
            )
        else:
            row = anyio.run(job)
        rows.append(row)
        print(f"  ran {name!r} in {time.perf_counter() - started:.1f} s")
    print()
    print_table(rows)
    loop, learned = rows
    print(
        f"\npolls/song {learned.polls_per_song / loop.polls_per_song:.2f}x the loop's; "
        f"lag p95 {learned.lag_share_p95:.1%} of duration; "
        f"makespan {learned.makespan_ratio:.3f}x optimum; "
        f"429s {learned.throttled / max(1, learned.requests):.2%} of requests"
    )


if __name__ == "__main__":
    main()
