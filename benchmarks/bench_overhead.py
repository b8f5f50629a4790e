"""Overhead: the client's CPU per request against a bare ``httpx.AsyncClient`` loop.

The emulator runs in SEPARATE processes (uvicorn on 127.0.0.1, see ``_serving.py``), so its
CPU is not counted: ``time.process_time()`` in this process is the client's cost alone. Both
contenders make the same requests to the same server in the same run, in short alternating
blocks (bare, ours, ours, bare, ...), so that drift and noise from anything else running on
the machine fall on both alike:

- ``GET`` a generation by id (a poll of a song still generating), one after another and
  20 at a time;
- ``POST`` a song (a submission), one after another;
- whole songs: ``generate_many`` (scheduler, learned polling, budget) against a bare loop
  making the same number of POSTs and GETs per song, per song rather than per request.

The bare loop does what any hand-written client must at least do: send with the bearer
header, check the status, parse the JSON. CPU figures are medians over the blocks; beside
their ratio, the interquartile range of the ratios of neighbouring blocks shows how steady
it was.

In the POST contest both contenders send each submission on a fresh connection. The
client sends each POST through a pool of its own that keeps no idle connection
(``_transport.py``; ``_network.py`` here, where the client wraps its network to follow the
emulator's time; ``docs/reliability.md``): a POST lost on a reused keep-alive connection
cannot be told from one the server received, and resending it could pay twice. Any client
that must never pay twice needs the same, so the bare loop POSTs through a second
``httpx.AsyncClient`` built the same way (``httpx.Limits(max_keepalive_connections=0)``) and
that row is held to the target. A third contender, a bare loop POSTing on one reused pooled
connection, runs in the same rounds (three blocks each, the order changing every round);
its row is printed without a target, to show what that safety costs.

The whole-song contest is left pooled on both sides: ``generate_many`` runs there on a
recording transport handed to the client, and a client given a transport keeps the
transport's pooling for its POSTs too (only a client that owns its network opens fresh
connections), so its bare replay POSTs on its pooled connections as well.

Run alone: ``python benchmarks/bench_overhead.py --requests 4000 --song-rounds 5``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
from _json_out import emit_json
from _serving import served_emulator
from _songs import API_KEY, song_requests
from _stats import percentile

import aimlmusic

__all__ = ["measure"]

_PATH = "/v2/generate/audio"
_CONCURRENCY = 20
_BLOCK = 100
#: A budget that never binds: this benchmark measures CPU, not the account limit.
_UNLIMITED = aimlmusic.Limits(requests_per_minute=1e9, max_in_flight=1000)
#: API time of the whole-song rounds (songs take 50-60 s: 0.5-0.6 s of real time).
_SONG_TIME_SCALE = 100.0
#: Songs in flight in the whole-song rounds: the default account limit.
_SLOTS = 20
#: The bare loop's POST pool keeps no idle connection, as the client's does
#: (``aimlmusic._transport._FRESH_CONNECTIONS``): each submission opens a fresh one.
_FRESH_CONNECTIONS = httpx.Limits(max_keepalive_connections=0)

Call = Callable[[int], Awaitable[None]]
CONTENDERS = ("bare", "aimlmusic")


async def _timed(calls: int, call: Call, concurrency: int) -> tuple[float, float]:
    """Run ``call(i)`` for ``i`` in ``range(calls)``; return (CPU s, wall s)."""
    cpu, wall = time.process_time(), time.perf_counter()
    if concurrency == 1:
        for i in range(calls):
            await call(i)
    else:

        async def worker(offset: int) -> None:
            for i in range(offset, calls, concurrency):
                await call(i)

        async with anyio.create_task_group() as workers:
            for offset in range(concurrency):
                workers.start_soon(worker, offset)
    return time.process_time() - cpu, time.perf_counter() - wall


def _bare(base_url: str, *, fresh: bool = False) -> httpx.AsyncClient:
    """The bare loop's client (httpx's default pool); with ``fresh``, one whose pool keeps
    no idle connection."""
    pool: dict[str, Any] = {"limits": _FRESH_CONNECTIONS} if fresh else {}
    return httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30.0, **pool
    )


def _ours(base_url: str, clock: aimlmusic.Clock | None = None) -> aimlmusic.AsyncMusicClient:
    return aimlmusic.AsyncMusicClient(
        api_key=API_KEY, base_url=base_url, limits=_UNLIMITED, clock=clock
    )


def _wire_body(song: aimlmusic.SongRequest) -> dict[str, str]:
    return {"model": song.model, "prompt": song.prompt, "lyrics": song.lyrics}


class _Contest:
    """CPU (and rate) of one kind of work, bare httpx against aimlmusic, block by block."""

    def __init__(
        self, name: str, unit: str, concurrency: int, *, rated: bool = True, judged: bool = True
    ) -> None:
        self.name = name
        self.unit = unit
        self.concurrency = concurrency
        # Whole songs wait for API time to pass, so their wall-clock rate says nothing.
        self.rated = rated
        # Held to the CPU target; a row that is not is shown for information only.
        self.judged = judged
        # The POST row's bare loop reusing its connection, whose CPU the row also reports.
        self.reused: _Contest | None = None
        self.cpu = dict.fromkeys(CONTENDERS, 0.0)
        self.wall = dict.fromkeys(CONTENDERS, 0.0)
        self.units = dict.fromkeys(CONTENDERS, 0)
        self._last: dict[str, float] = {}
        self.block_cpu: dict[str, list[float]] = {who: [] for who in CONTENDERS}
        self.block_ratios: list[float] = []

    def add(self, who: str, cpu: float, wall: float, units: int) -> None:
        """Count one block of ``units`` requests (or songs) by ``who``."""
        self.cpu[who] += cpu
        self.wall[who] += wall
        self.units[who] += units
        self._last[who] = cpu / units
        self.block_cpu[who].append(cpu / units)
        if len(self._last) == 2:
            self.block_ratios.append(self._last["aimlmusic"] / self._last["bare"])
            self._last.clear()

    async def alternate(self, bare: Call, ours: Call, *, blocks: int) -> None:
        """``blocks`` pairs of blocks, the order flipping every pair."""
        for block in range(blocks):
            pair = [("bare", bare), ("aimlmusic", ours)]
            for who, call in reversed(pair) if block % 2 else pair:
                cpu, wall = await _timed(_BLOCK, call, self.concurrency)
                self.add(who, cpu, wall, _BLOCK)

    def figures(self) -> dict[str, Any]:
        """Per-unit CPU of each contender (median over its blocks) and their ratio, the
        interquartile range of the ratios of neighbouring blocks, the ratio of the means,
        and request rates.

        Medians, because a block that happened to share the CPU with something else on the
        machine would otherwise tip a sum one way or the other."""
        per_unit = {who: percentile(self.block_cpu[who], 50) for who in CONTENDERS}
        mean = {who: self.cpu[who] / max(1, self.units[who]) for who in CONTENDERS}
        rates = {
            who: self.units[who] / self.wall[who] if self.rated else None for who in CONTENDERS
        }
        reused: dict[str, float] = {}
        if self.reused is not None:
            reused_bare = percentile(self.reused.block_cpu["bare"], 50)
            reused = {
                "reused_bare_cpu_us": 1e6 * reused_bare,
                "reused_cpu_ratio": per_unit["aimlmusic"] / reused_bare,
            }
        return {
            "name": self.name,
            "unit": self.unit,
            "concurrency": self.concurrency,
            "units_each": self.units["bare"],
            "bare_cpu_us": 1e6 * per_unit["bare"],
            "ours_cpu_us": 1e6 * per_unit["aimlmusic"],
            "cpu_ratio": per_unit["aimlmusic"] / per_unit["bare"],
            "mean_cpu_ratio": mean["aimlmusic"] / mean["bare"],
            "ratio_q1": percentile(self.block_ratios, 25),
            "ratio_q3": percentile(self.block_ratios, 75),
            "bare_rps": rates["bare"],
            "ours_rps": rates["aimlmusic"],
            "judged": self.judged,
            **reused,
        }


async def _post_contests(
    bare: dict[str, Call], ours: Call, *, blocks: int
) -> tuple[_Contest, _Contest]:
    """Sequential POSTs: ours against the bare loop on fresh connections (judged) and against
    the bare loop reusing its connection (information), the three in the same rounds of
    blocks, each round in the next of the six orders so none always goes first or last."""
    contests = {
        "fresh": _Contest("POST (submit), sequential, fresh connections", "request", 1),
        "reused": _Contest(
            "POST (submit), sequential, bare loop reusing its connection",
            "request",
            1,
            judged=False,
        ),
    }
    players = [("fresh", bare["fresh"]), ("reused", bare["reused"]), ("aimlmusic", ours)]
    orders = list(itertools.permutations(players))
    for block in range(blocks):
        for who, call in orders[block % len(orders)]:
            cpu, wall = await _timed(_BLOCK, call, 1)
            if who == "aimlmusic":
                for contest in contests.values():
                    contest.add(who, cpu, wall, _BLOCK)
            else:
                contests[who].add("bare", cpu, wall, _BLOCK)
    contests["fresh"].reused = contests["reused"]
    return contests["fresh"], contests["reused"]


async def _request_contests(base_url: str, requests: int) -> list[_Contest]:
    """GETs and POSTs, bare against ours, against a server whose songs never finish."""
    blocks = max(1, requests // _BLOCK)
    seed = [song for _, song in song_requests(_CONCURRENCY)]
    async with (
        _bare(base_url) as bare_http,
        _bare(base_url, fresh=True) as bare_fresh_http,
        _ours(base_url) as client,
    ):
        ids = [(await client.submit(song)).id for song in seed]

        async def bare_get(i: int) -> None:
            response = await bare_http.get(_PATH, params={"generation_id": ids[i % len(ids)]})
            response.raise_for_status()
            response.json()

        async def our_get(i: int) -> None:
            await client.get(ids[i % len(ids)])

        def bare_post(http: httpx.AsyncClient) -> Call:
            async def post(i: int) -> None:
                response = await http.post(_PATH, json=_wire_body(seed[i % len(seed)]))
                response.raise_for_status()
                response.json()

            return post

        bare_posts = {"fresh": bare_post(bare_fresh_http), "reused": bare_post(bare_http)}

        async def our_post(i: int) -> None:
            await client.submit(seed[i % len(seed)])

        # Warm every connection pool and every lazily built piece before counting.
        for call in (bare_get, our_get, *bare_posts.values(), our_post):
            await _timed(_BLOCK, call, _CONCURRENCY)

        contests = []
        for contest, bare, ours, n in (
            (_Contest("GET (poll), sequential", "request", 1), bare_get, our_get, blocks),
            (
                _Contest(f"GET (poll), {_CONCURRENCY} at once", "request", _CONCURRENCY),
                bare_get,
                our_get,
                blocks,
            ),
        ):
            await contest.alternate(bare, ours, blocks=max(1, n))
            contests.append(contest)
        # POSTs create jobs on the server: fewer of them keep its memory in check.
        contests += await _post_contests(bare_posts, our_post, blocks=max(1, blocks // 4))
        return contests


class _RecordingTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport, noting when each request was sent and for which song, so the
    bare loop can replay the very same requests at the very same moments."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[float, str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        sent = time.perf_counter()
        response = await super().handle_async_request(request)
        if request.method == "POST":
            await response.aread()  # read here rather than by the client: same work
            song = json.loads(response.content)["id"]
        else:
            song = request.url.params["generation_id"]
        self.log.append((sent, request.method, song))
        return response


def _schedule(log: list[tuple[float, str, str]]) -> list[list[float]]:
    """Per song, in order of submission: its POST time then its GET times, in seconds
    from the first request."""
    if not log:
        return []
    start = min(sent for sent, _, _ in log)
    times: dict[str, list[float]] = {}
    for sent, method, song in sorted(log):
        if method == "POST" or song in times:
            times.setdefault(song, []).append(sent - start)
    return sorted(times.values())


async def _song_contest(base_url: str, songs: int, rounds: int) -> _Contest:
    """Whole songs: ``generate_many`` against a bare loop replaying its requests."""
    contest = _Contest(
        f"whole songs (generate_many, {songs} songs, {_SLOTS} at once)", "song", _SLOTS, rated=False
    )
    plan: list[list[float]] = []

    async def ours(_: int) -> None:
        nonlocal plan
        recorder = _RecordingTransport()
        clock = aimlmusic.ScaledClock(_SONG_TIME_SCALE)
        async with (
            aimlmusic.AsyncMusicClient(
                api_key=API_KEY,
                base_url=base_url,
                limits=_UNLIMITED,
                clock=clock,
                transport=recorder,
            ) as client,
            client.generate_many(song_requests(songs), max_in_flight=_SLOTS) as results,
        ):
            async for _result in results:
                pass
        plan = _schedule(recorder.log)

    async def bare(_: int) -> None:
        async with _bare(base_url) as http:
            start = time.perf_counter()

            async def at(moment: float) -> None:
                await anyio.sleep(max(0.0, start + moment - time.perf_counter()))

            async def one_song(song: aimlmusic.SongRequest, times: list[float]) -> None:
                await at(times[0])
                response = await http.post(_PATH, json=_wire_body(song))
                response.raise_for_status()
                generation_id = response.json()["id"]
                for moment in times[1:]:
                    await at(moment)
                    response = await http.get(_PATH, params={"generation_id": generation_id})
                    response.raise_for_status()
                    response.json()

            async with anyio.create_task_group() as tasks:
                for (_key, song), times in zip(song_requests(songs), plan, strict=False):
                    tasks.start_soon(one_song, song, times)

    for r in range(rounds):
        # generate_many goes first in the first round: the bare loop replays its requests.
        pair = [("aimlmusic", ours), ("bare", bare)]
        for who, call in reversed(pair) if r % 2 else pair:
            cpu, wall = await _timed(1, call, 1)
            contest.add(who, cpu, wall, songs)
    requests_per_song = sum(len(times) for times in plan) / max(1, len(plan))
    contest.name += f", {requests_per_song:.1f} requests/song"
    return contest


async def measure(*, requests: int, song_rounds: int, songs: int) -> dict[str, Any]:
    """All contests, each against its own served emulator; returns their figures."""
    # Songs that never finish: every poll is the common case, a song still generating.
    with served_emulator(time_scale=1.0, song_seconds=86_400.0) as base_url:
        contests = await _request_contests(base_url, requests)
    with served_emulator(time_scale=_SONG_TIME_SCALE) as base_url:
        contests.append(await _song_contest(base_url, songs, song_rounds))
    rows = [contest.figures() for contest in contests]
    for row in rows:
        print(
            f"  overhead {row['name']:<70} bare {row['bare_cpu_us']:6.0f} µs  "
            f"ours {row['ours_cpu_us']:6.0f} µs  x{row['cpu_ratio']:.2f}"
            + ("" if row["judged"] else " (no target)"),
            file=sys.stderr,
            flush=True,
        )
    return {"rows": rows, "block": _BLOCK}


def main(argv: list[str] | None = None) -> None:
    """Command line: the overhead contests, their figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000, help="per contender and contest")
    parser.add_argument("--song-rounds", type=int, default=5)
    parser.add_argument("--songs", type=int, default=100, help="songs per whole-song round")
    parser.add_argument("--json", help="write the figures to this file instead of stdout")
    args = parser.parse_args(argv)
    figures = anyio.run(
        lambda: measure(requests=args.requests, song_rounds=args.song_rounds, songs=args.songs)
    )
    emit_json(figures, args.json)


if __name__ == "__main__":
    main()
