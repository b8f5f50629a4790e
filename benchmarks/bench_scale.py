"""Scale: 10,000 songs in flight in one process, memory per song and event-loop lag.

``generate_many`` runs with ``max_in_flight=10_000`` and a request budget too large to bind,
against a stateless fake server (``_fake_api``) that keeps nothing per song, so every byte the
process grows is the client's. The songs take 50-60 s of API time (time compressed by
``time_scale``), so all of them are submitted before the first completes and then polled
together. Two probes run beside them: a resident-memory sampler and a task that sleeps 5 ms
over and over and records how late it wakes (event-loop lag).

Memory per song = (peak RSS - RSS before the batch) / songs - the request's own text
(prompt and lyrics strings), which the user handed over and any client must keep until the
song's result is delivered.

Run alone: ``python benchmarks/bench_scale.py --songs 10000 --time-scale 2``.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from typing import Any

import anyio
from _fake_api import StatelessFakeAPI
from _json_out import emit_json
from _machine import peak_rss_bytes, rss_bytes
from _probes import LoopLagProbe, RssSampler
from _songs import API_KEY, request_text_bytes, song_requests
from workloads import UNIFORM

import aimlmusic

__all__ = ["measure"]

#: A budget that never binds: the scale run measures the client, not the account limit.
_UNLIMITED_RPM = 1e9


def _client(
    fake: StatelessFakeAPI, clock: aimlmusic.Clock, songs: int
) -> aimlmusic.AsyncMusicClient:
    limits = aimlmusic.Limits(requests_per_minute=_UNLIMITED_RPM, max_in_flight=songs)
    return aimlmusic.AsyncMusicClient(
        api_key=API_KEY,
        base_url="http://127.0.0.1",
        transport=fake.transport(),
        clock=clock,
        limits=limits,
    )


async def _warm_up() -> None:
    # One small batch on a throw-away client first, so lazily built things (codecs, caches,
    # the converter's generated functions) are in the baseline rather than counted per song,
    # and the measured client's policy learns nothing from them. Time runs very fast here:
    # only the code paths matter.
    clock = aimlmusic.ScaledClock(10_000)
    fake = StatelessFakeAPI(clock, UNIFORM)
    async with (
        _client(fake, clock, 20) as client,
        client.generate_many(song_requests(20), max_in_flight=20) as results,
    ):
        async for _ in results:
            pass


async def measure(songs: int, *, time_scale: float, seed: int) -> dict[str, Any]:
    """Run ``songs`` songs at once and return memory and loop-lag figures."""
    clock = aimlmusic.ScaledClock(time_scale)
    fake = StatelessFakeAPI(clock, UNIFORM, seed=seed)
    delivered = 0
    probe = LoopLagProbe()
    sampler = RssSampler(lambda: fake.submits - delivered)
    await _warm_up()
    async with _client(fake, clock, songs) as client:
        submits_before, polls_before = fake.submits, fake.polls
        gc.collect()
        baseline_rss = rss_bytes()
        hwm_before = peak_rss_bytes()
        started = time.perf_counter()
        ok = 0
        async with anyio.create_task_group() as probes:
            probes.start_soon(probe.run)
            probes.start_soon(sampler.run)
            probe.recording = True
            batch = client.generate_many(song_requests(songs), max_in_flight=songs, deadline=None)
            async with batch as results:
                async for result in results:
                    delivered += 1
                    ok += result.ok
            probe.recording = False
            probes.cancel_scope.cancel()
        wall = time.perf_counter() - started
    sampler.sample()
    hwm_after = peak_rss_bytes()
    # VmHWM only tells us something if the batch pushed it past the earlier peak.
    peak = max(sampler.max_rss, hwm_after if hwm_after > hwm_before else 0)
    growth = peak - baseline_rss
    text = request_text_bytes()
    figures: dict[str, Any] = {
        "songs": songs,
        "ok": ok,
        "peak_in_flight": sampler.max_in_flight,
        "baseline_rss_mb": baseline_rss / 2**20,
        "peak_rss_mb": peak / 2**20,
        "growth_per_song_kb": growth / songs / 1024,
        "request_text_kb": text / 1024,
        "beyond_text_per_song_kb": (growth / songs - text) / 1024,
        "submits": fake.submits - submits_before,
        "polls": fake.polls - polls_before,
        "polls_per_song": (fake.polls - polls_before) / songs,
        "requests_per_s": (fake.submits - submits_before + fake.polls - polls_before) / wall,
        "time_scale": time_scale,
        "wall_s": wall,
    }
    figures.update(probe.summary())
    print(
        f"  scale {songs} songs: peak in flight {figures['peak_in_flight']}, "
        f"{figures['beyond_text_per_song_kb']:.2f} KB/song beyond text, "
        f"loop lag p99 {figures['loop_lag_p99_ms']:.1f} ms ({wall:.1f} s)",
        file=sys.stderr,
        flush=True,
    )
    return figures


def main(argv: list[str] | None = None) -> None:
    """Command line: one scale run, its figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", type=int, default=10_000)
    parser.add_argument("--time-scale", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--json", help="write the figures to this file instead of stdout")
    args = parser.parse_args(argv)
    figures = anyio.run(lambda: measure(args.songs, time_scale=args.time_scale, seed=args.seed))
    emit_json(figures, args.json)


if __name__ == "__main__":
    main()
