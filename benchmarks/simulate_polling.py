"""Simulate generate_many's polling strategies: polls per song, lag, makespan, 429s.

A discrete-event simulation with no I/O. It runs the real scheduler
(``aimlmusic._scheduler``), the real poll policies and the real request budget against a
small in-memory model of the API server, on trio's virtual clock: whenever every task waits,
time jumps to the next timer, so a ten-minute batch of 200 songs runs in about a second of
CPU. Use it to tune :class:`aimlmusic.LearnedPolling` quickly; confirm end to end against the
emulator with ``benchmarks/batch_vs_documented_loop.py``.

The server model: ``--slots`` songs generate at once (the rest wait, FIFO, in ``queued``),
each for a duration drawn from ``--dist``; every request takes ``--rtt`` seconds there and
back and is seen by the server half-way; more than ``--rpm`` requests in any 60 s are
answered 429 without Retry-After, like the AI/ML API (with ``--burst N``, or the ``bucket-10``
workload, the server counts with a token bucket of N instead, as the emulator's ``--burst``
does, with the emulator's own limiter). The client side is the library's own
transport behaviour in miniature: it waits for the shared budget before every attempt and
retries after a 429.

Figures per strategy: polls per song (GETs the server answered), detection lag
(first poll that saw the song finished, minus when it finished) absolute and as a share of
the song's duration (submission to completion, server side), makespan against the optimum
(the same durations list-scheduled on the same slots with zero lag), and 429s::

    python benchmarks/simulate_polling.py
    python benchmarks/simulate_polling.py --dist lognormal:45:0.3 --songs 500
    python benchmarks/simulate_polling.py --dist drift --runs 8
    python benchmarks/simulate_polling.py --rpm 6 --in-flight 3 --slots 3 --songs 30
    python benchmarks/simulate_polling.py --dist bucket-10 --runs 8
    python benchmarks/simulate_polling.py --runs 16 --only learned
    python benchmarks/simulate_polling.py --dist lognormal --runs 12 --only learned --head-start
    python benchmarks/simulate_polling.py --dist lognormal --runs 12 --only learned --knows-the-law
    python benchmarks/simulate_polling.py --dist lognormal --runs 10 --only learned --blocks 40
    python benchmarks/simulate_polling.py --dist lognormal --runs 12 --only learned --quantiles
    python benchmarks/simulate_polling.py --dist lognormal --runs 12 --only learned --late
    python benchmarks/simulate_polling.py --runs 12 --only learned --knows-the-law --plans
    python benchmarks/simulate_polling.py --dist medium --runs 12 --only learned --bound
    python benchmarks/simulate_polling.py --dist medium --runs 12 --only learned --bound \\
        --set COVERAGE=0.96

``--head-start`` adds a what-if row: the learned policy started from an estimate of the true
law (built from many draws of ``--dist`` and handed over with ``adopt_estimate``, as a client
sharing timing through Redis would start) instead of the documented 50-60 s. Against the
default row, it says how much of the lag comes from the cold start (learning the law from the
documented prior) and how much from planning and learning once the law is known.

``--knows-the-law`` adds another: the learned policy's planner and scheduler on that same
estimate of the true law, learning nothing from its polls. What is left of the lag there is
the planner's and the scheduler's (its chains, phases, explorers, round trips, the budget);
the rest of the default row's lag is the estimator's. Against ``benchmarks/_bounds.py``
(which knows the law too and has none of those costs), it says how close planning alone
comes to the bound. Not for a shifting service, whose law is not one. ``--blocks N`` adds,
for each row, the lag p95 and the polls per song of each block of N songs in submission
order: how long the cold start lasts, and how much more the last wave is polled.
``--quantiles`` prints, for each learned row, what its estimate says of the law at the end
of each run (low quantiles, around where its schedules start, and the median) beside the
law's own, from many draws (for a shifting service, of its law after the shift): whether
the estimator, learning from the policy's own polls, gets the left tail right. ``--plans``
prints, for each learned row, the spread of the schedules it polled on (their lag share,
expected polls per song and first planned poll; 10th, 50th and 90th percentiles over every
poll it planned): beside ``--knows-the-law``, whether its plans are off or waver. ``--late``
describes, for each row, the songs past its lag p95 (its worst 5 %): their median duration
beside all songs', how many of them had already finished when their first poll came, and
when that poll came for those: whether the p95 is the short songs' first poll, or later
polls spaced too far apart. Each is a run's median or share, averaged over the runs.
``--bound`` prints each row's lag p95 over the bound at the polls per song it spent (what the
end-to-end benchmark judges; on a shifting service, for the songs a wave after the shift),
and the same without the batch's last wave (its songs share the budget the finished ones
left, so they are polled more often: that raises the polls per song, so lowers the bound,
and hardly moves the lag p95). ``--set NAME=VALUE`` changes a constant of the planner, the
estimator or the submission pace for the run (``_constants.py``), to try a change before
the library is edited.

Trio runs ready tasks in a shuffled order on purpose, so two runs with one seed differ a
little; lag p95 of one 200-song batch moves by a few tenths of a percent from run to run.
Compare tuning choices over ``--runs 16`` or more (seeds ``--seed`` onwards): the table then
shows the mean of each figure and the worst lag p95 seen.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import itertools
import math
import random
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio
from _bounds import best_share
from _constants import applied, parse_setting
from _report import BOUND_FACTOR
from trio._core._run import _r as trio_scheduling_order
from trio.testing import MockClock
from workloads import WORKLOADS, Shift
from workloads import Workload as Law

from aimlmusic import (
    ExponentialBackoff,
    FixedInterval,
    Generation,
    GenerationStatus,
    LearnedPolling,
    PollPolicy,
    RateLimitError,
    SongRequest,
)
from aimlmusic._clock import SystemClock
from aimlmusic._estimator import (
    BINS,
    ESTIMATE_FORMAT,
    GRID_END,
    GRID_RATIO,
    GRID_START,
    _bin_of,
)
from aimlmusic._planner import Schedule
from aimlmusic._ratelimit import RequestBudget
from aimlmusic._scheduler import generate_many
from aimlmusic.emulator._ratelimit import SlidingWindow, TokenBucket

Durations = Callable[[random.Random], float]

STRATEGIES: dict[str, Callable[[int], PollPolicy]] = {
    "documented loop (0 s, every 10 s)": lambda seed: FixedInterval(10.0, first=0.0),
    "official SDK (every 10 s)": lambda seed: FixedInterval(10.0, first=10.0),
    "exponential (1 s x1.5, max 20 s)": lambda seed: ExponentialBackoff(),
    "learned (default)": lambda seed: LearnedPolling(),
}


def parse_distribution(text: str, songs: int = 200) -> Durations:
    """``uniform:LOW:HIGH``, ``lognormal:MEDIAN:SIGMA``, ``fixed:S``,
    ``mix:P:LOW:HIGH:LOW2:HIGH2`` (uniform LOW-HIGH with probability P, else LOW2-HIGH2),
    ``drift:LOW:HIGH:LOW2:HIGH2`` (uniform LOW-HIGH for the first half of the ``songs``,
    LOW2-HIGH2 after), or the name of one of the end-to-end benchmark's workloads
    (``uniform``, ``drift``, ``medium``... see ``workloads.py``)."""
    if text in WORKLOADS:
        return WORKLOADS[text].for_run(songs).draw
    name, *raw = text.split(":")
    args = [float(a) for a in raw]
    if name == "uniform":
        low, high = args
        return lambda rng: rng.uniform(low, high)
    if name == "lognormal":
        median, sigma = args
        return lambda rng: rng.lognormvariate(math.log(median), sigma)
    if name == "fixed":
        return lambda rng: args[0]
    if name == "mix":
        p, low, high, low2, high2 = args
        return lambda rng: rng.uniform(low, high) if rng.random() < p else rng.uniform(low2, high2)
    if name == "drift":
        low, high, low2, high2 = args
        # Counted per server generator, so every run (seed) shifts half way through its own songs.
        return Shift(
            lambda rng: rng.uniform(low, high), lambda rng: rng.uniform(low2, high2), songs // 2
        )
    raise SystemExit(f"unknown distribution {text!r}")


#: Draws of the law behind a head-start estimate: its quantiles to a fraction of a percent.
HEAD_START_DRAWS = 40_000
#: What the head-start estimate is worth, in songs: the most an adopted estimate counts for.
HEAD_START_SONGS = 40.0


#: The quantiles ``--quantiles`` compares: the low ones around a schedule's start (the
#: planner starts its chains from quantiles of up to 2.25 %, and first polls land near
#: 5-10 %), and the median.
QUANTILES = (0.005, 0.0225, 0.05, 0.1, 0.5)


def law_quantiles(durations: Durations, seed: int = 0) -> tuple[float, ...]:
    """``QUANTILES`` of ``durations`` from ``HEAD_START_DRAWS`` draws; for a drifting service,
    of its law after the shift (where a run's estimate should end up)."""
    draw = durations.after if isinstance(durations, Shift) else durations
    rng = random.Random(seed)
    drawn = [draw(rng) for _ in range(HEAD_START_DRAWS)]
    return tuple(quantile(drawn, q) for q in QUANTILES)


def estimated_quantiles(policy: PollPolicy) -> tuple[float, ...] | None:
    """``QUANTILES`` of ``policy``'s estimate as it stands (None: a policy without one)."""
    if not isinstance(policy, LearnedPolling):
        return None
    return tuple(policy.snapshot.quantile(q) for q in QUANTILES)


def print_quantiles(law: tuple[float, ...], estimates: dict[str, list[tuple[float, ...]]]) -> None:
    """The law's ``QUANTILES`` and, per row, its estimates' mean (and range) over runs."""
    print("\nquantiles of the completion time at the end of each run, s: mean (min-max)")
    if not estimates:
        print("no learned row ran: nothing to compare with the law")
        return
    rows = {
        name: [
            f"{statistics.fmean(values):.1f} ({min(values):.1f}-{max(values):.1f})"
            for values in zip(*runs, strict=True)
        ]
        for name, runs in estimates.items()
    }
    width = max(len(cell) for cells in rows.values() for cell in cells)
    print(f"{'':<36} " + " ".join(f"{f'{q:.2%}':>{width}}" for q in QUANTILES))
    print(f"{'the law':<36} " + " ".join(f"{value:>{width}.1f}" for value in law))
    for name, cells in rows.items():
        print(f"{name:<36} " + " ".join(f"{cell:>{width}}" for cell in cells))


#: The spread ``--plans`` prints of the plans a row handed out: their 10th, 50th and 90th
#: percentiles.
PLAN_PERCENTILES = (0.1, 0.5, 0.9)


@dataclass
class Plans:
    """The schedules a learned row handed out, one per poll planned (its ``next_delay``
    calls): each one's lag share, expected polls per song and first planned poll (s)."""

    shares: list[float] = field(default_factory=list)
    polls: list[float] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)


def record_plans(policy: PollPolicy, plans: Plans) -> None:
    """Have ``policy``, if it is a learned one, note in ``plans`` every schedule it plans a
    poll with (a policy without a planner notes nothing)."""
    if not isinstance(policy, LearnedPolling):
        return
    schedule = policy.schedule

    def noted(budget_rate: float = 0.0, in_flight: int = 0) -> Schedule:
        made = schedule(budget_rate, in_flight)
        plans.shares.append(made.share)
        plans.polls.append(made.polls)
        plans.starts.append(made.times[0])
        return made

    policy.schedule = noted  # type: ignore[method-assign]


def print_plans(plans: dict[str, Plans]) -> None:
    """Per learned row, the spread of the plans it polled on, over all its runs: a plan
    that wavers with the estimate costs lag p95 even when its middle is right."""
    named = " / ".join(f"p{round(100 * p)}" for p in PLAN_PERCENTILES)
    print(f"\nthe plans each learned row polled on, over all its runs: {named}")
    if not plans:
        print("no learned row ran: no plan to show")
        return
    for name, noted in plans.items():
        print(
            f"{name}: {len(noted.shares)} plans; lag share {_spread(noted.shares, '.2%')}, "
            f"expected polls/song {_spread(noted.polls, '.2f')}, "
            f"first planned poll {_spread(noted.starts, '.1f')} s"
        )


def _spread(values: list[float], form: str) -> str:
    """``PLAN_PERCENTILES`` of ``values``, each formatted with ``form``."""
    return " / ".join(format(quantile(values, p), form) for p in PLAN_PERCENTILES)


def law_estimate(durations: Durations, seed: int = 0) -> dict[str, Any]:
    """An estimate of ``durations`` in the library's export format (``adopt_estimate``), from
    ``HEAD_START_DRAWS`` draws; for a drifting service, of its law before the shift."""
    draw = durations.before if isinstance(durations, Shift) else durations
    rng = random.Random(seed)
    counts = [0] * BINS
    for _ in range(HEAD_START_DRAWS):
        counts[_bin_of(draw(rng))] += 1
    return {
        "format": ESTIMATE_FORMAT,
        "grid": [GRID_START, GRID_END, GRID_RATIO],
        "songs": HEAD_START_SONGS,
        "mass": [count / HEAD_START_DRAWS for count in counts],
    }


class KnowsTheLaw(LearnedPolling):
    """The learned policy on a fixed estimate of the true law: it plans and schedules as
    the default one does, but what its polls see never moves its estimate."""

    def observe_running(self, song: str, reference_at: float, seen_at: float) -> None:
        """Ignored: the estimate stays the law."""

    def observe_finished(self, song: str, reference_at: float, after: float, by: float) -> None:
        """Ignored: the estimate stays the law."""


def _on_the_law(policy: type[LearnedPolling], durations: Durations) -> Callable[[int], PollPolicy]:
    """A factory of ``policy`` instances that adopted ``law_estimate(durations)``."""
    estimate = law_estimate(durations)

    def make(seed: int) -> PollPolicy:
        made = policy()
        if not made.adopt_estimate(estimate):
            raise SystemExit("the law's estimate was refused: grid or format changed?")
        return made

    return make


def knows_the_law(durations: Durations) -> Callable[[int], PollPolicy]:
    """The learned policy's planner on ``law_estimate(durations)``, learning nothing."""
    if isinstance(durations, Shift):
        raise SystemExit("--knows-the-law: a shifting service follows no one law")
    return _on_the_law(KnowsTheLaw, durations)


def head_start(durations: Durations) -> Callable[[int], PollPolicy]:
    """The learned policy, started from ``law_estimate(durations)``."""
    return _on_the_law(LearnedPolling, durations)


#: The batch a second run learned from has seeds this far from the measured batch's: the two
#: never draw the same durations.
FIRST_RUN_SEED_OFFSET = 1_000_000


def second_run(workload: Workload) -> Callable[[int], PollPolicy]:
    """The learned policy started from the estimate that a first batch of ``workload`` (on
    another seed) left behind: what a catalog run adopts from its journal."""

    def make(seed: int) -> PollPolicy:
        first = LearnedPolling()
        earlier = dataclasses.replace(workload, seed=seed + FIRST_RUN_SEED_OFFSET, block=0)
        simulate(earlier, first, "first run")
        made = LearnedPolling()
        if not made.adopt_estimate(first.export_estimate()):
            raise SystemExit("the first run's estimate was refused")
        return made

    return make


# --------------------------------------------------------------------------- the server


@dataclass
class Job:
    """One generation on the simulated server."""

    submitted: float
    duration: float
    started: float | None = None
    finished: float | None = None
    polls: int = 0
    seen_terminal: float | None = None
    first_polled: float | None = None


class SimServer:
    """The API as a state machine in virtual time: slots, FIFO queue, a 60-s request limit
    (the emulator's: a sliding minute, or with ``burst`` a token bucket of that size)."""

    def __init__(
        self,
        durations: Durations,
        *,
        slots: int,
        rpm: int | None,
        seed: int,
        burst: int | None = None,
    ) -> None:
        self.durations = durations
        self.slots = slots
        self.rpm = rpm
        self._limit: SlidingWindow | TokenBucket | None = None
        if rpm is not None:
            self._limit = SlidingWindow(rpm) if burst is None else TokenBucket(rpm, burst)
        self.rng = random.Random(seed)
        self.jobs: dict[str, Job] = {}
        self.order: list[Job] = []
        self._running: list[tuple[float, str]] = []  # (finish time, id)
        self._waiting: deque[str] = deque()
        self.requests = 0
        self.throttled = 0
        self.request_times: list[float] = []

    def _advance(self, now: float) -> None:
        while self._running and self._running[0][0] <= now:
            finished_at, job_id = heapq.heappop(self._running)
            self.jobs[job_id].finished = finished_at
            if self._waiting:
                self._start(self._waiting.popleft(), finished_at)

    def _start(self, job_id: str, at: float) -> None:
        job = self.jobs[job_id]
        job.started = at
        heapq.heappush(self._running, (at + job.duration, job_id))

    def admit(self, now: float) -> bool:
        """Count a request; False when it is over the limit (a 429)."""
        self.requests += 1
        if self._limit is not None and self._limit.admit(now) is not None:
            self.throttled += 1
            return False
        self.request_times.append(now)
        return True

    def submit(self, now: float) -> Generation:
        self._advance(now)
        job_id = f"{len(self.jobs):06d}:minimax/music-1.5"
        job = Job(submitted=now, duration=self.durations(self.rng))
        self.jobs[job_id] = job
        self.order.append(job)
        if len(self._running) < self.slots:
            self._start(job_id, now)
        else:
            self._waiting.append(job_id)
        # Like the API, which answers every submission "queued", even with a slot free.
        return Generation(id=job_id, status=GenerationStatus.QUEUED)

    def get(self, job_id: str, now: float) -> Generation:
        self._advance(now)
        job = self.jobs[job_id]
        job.polls += 1
        if job.first_polled is None:
            job.first_polled = now
        view = self._view(job_id, now)
        if view.is_finished and job.seen_terminal is None:
            job.seen_terminal = now
        return view

    def _view(self, job_id: str, now: float) -> Generation:
        job = self.jobs[job_id]
        if job.finished is not None:
            status = GenerationStatus.COMPLETED
        elif job.started is not None:
            status = GenerationStatus.GENERATING
        else:
            status = GenerationStatus.QUEUED
        return Generation(id=job_id, status=status)


class _NoBudget:
    async def acquire(self, kind: str) -> None:
        await anyio.lowlevel.checkpoint()

    def on_success(self) -> None:
        pass

    def on_throttled(self, retry_after: float | None) -> None:
        pass

    def utilisation(self) -> float:
        return 0.0


class SimTransport:
    """The library transport's behaviour in miniature: budget before every attempt, a
    round trip of ``rtt`` seconds, retry after a 429 (the budget holds everyone)."""

    def __init__(self, server: SimServer, budget: Any, rtt: float, attempts: int = 6) -> None:
        self.server = server
        self.budget = budget
        self.rtt = rtt
        self.attempts = attempts

    async def _call(
        self,
        kind: str,
        act: Callable[[float], Generation],
        observer: Any,
        retry_throttled: bool,
    ) -> Generation:
        for attempt in range(1, self.attempts + 1):
            await self.budget.acquire(kind)
            if observer is not None:
                observer.on_sending()  # as the library's transport: once per attempt sent
            await anyio.sleep(self.rtt / 2)
            now = anyio.current_time()
            if self.server.admit(now):
                generation = act(now)
                await anyio.sleep(self.rtt / 2)
                self.budget.on_success()
                return generation
            await anyio.sleep(self.rtt / 2)
            self.budget.on_throttled(None)
            if observer is not None:
                observer.on_throttled(None)
            if attempt == self.attempts or not retry_throttled:
                raise RateLimitError("throttled", status_code=429)
        raise AssertionError("unreachable")

    async def submit(
        self, request: SongRequest, *, observer: Any = None, retry_throttled: bool = True
    ) -> Generation:
        return await self._call("submit", self.server.submit, observer, retry_throttled)

    async def get(
        self, generation_id: str, *, observer: Any = None, retry_throttled: bool = True
    ) -> Generation:
        return await self._call(
            "poll", lambda now: self.server.get(generation_id, now), observer, retry_throttled
        )


# --------------------------------------------------------------------------- one run


@dataclass
class Workload:
    """What to simulate."""

    songs: int = 200
    durations: Durations = field(default=lambda rng: rng.uniform(50.0, 60.0))
    slots: int = 20
    in_flight: int = 20
    rpm: int | None = 120
    burst: int | None = None  # the server's token bucket (None: a sliding minute)
    rtt: float = 0.2
    seed: int = 1
    block: int = 0  # songs per block of the per-block lag report (0: none)


@dataclass
class Figures:
    """What one strategy achieved on one workload."""

    name: str
    songs: int
    polls_per_song: float
    lag_p50: float
    lag_p95: float
    lag_share_p50: float
    lag_share_p95: float
    makespan: float
    optimum: float
    requests: int
    throttled: int
    peak_per_minute: int
    failed: int
    cpu_seconds: float
    #: On a shifting service, lag p95 (% of duration) of the songs submitted a wave (the
    #: songs in flight) after the shift, as the end-to-end benchmark counts them; else NaN.
    after_shift_p95: float = math.nan
    #: Polls per song of those songs (NaN: not a shifting service).
    after_shift_polls: float = math.nan
    #: Lag p95 (% of duration) and polls per song of the songs judged against the bound
    #: (all, or on a shifting service those a wave after the shift) that were submitted
    #: before the batch's last wave (its last ``in_flight`` songs, which share the budget
    #: the finished songs left, and so are polled more often); NaN: no such song.
    before_last_p95: float = math.nan
    before_last_polls: float = math.nan
    #: Lag p95 (% of duration) of each block of ``Workload.block`` songs, in submission
    #: order: how the lag moves from the cold start to the steady state.
    block_p95: tuple[float, ...] = ()
    #: Polls per song of each of those blocks.
    block_polls: tuple[float, ...] = ()
    #: Share of the songs a poll saw finished that their first poll already saw finished.
    done_at_first_poll: float = math.nan
    #: The songs past the lag p95 (the worst 5 %, as a share of duration): their median
    #: duration, the share of them that their first poll saw finished, and, of those, the
    #: median time of that first poll after the song began generating (NaN: no such song).
    late_duration: float = math.nan
    late_done_at_first_poll: float = math.nan
    late_first_poll: float = math.nan
    #: The median duration of all songs, beside ``late_duration``.
    duration_p50: float = math.nan

    @property
    def makespan_ratio(self) -> float:
        return self.makespan / self.optimum


def quantile(values: list[float], p: float) -> float:
    """The ``p`` quantile of ``values`` (the smallest value with at least ``p`` at or below)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p * len(ordered)) - 1))]


def list_schedule(durations: list[float], slots: int) -> float:
    """Makespan of songs started in order on the earliest free slot, with zero lag."""
    free = [0.0] * slots
    end = 0.0
    for duration in durations:
        start = heapq.heappop(free)
        end = max(end, start + duration)
        heapq.heappush(free, start + duration)
    return end


def peak_in_window(times: list[float], window: float = 60.0) -> int:
    """The most of the sorted ``times`` that fall in any ``window`` seconds."""
    peak, low = 0, 0
    for high, t in enumerate(times):
        while times[low] <= t - window:
            low += 1
        peak = max(peak, high - low + 1)
    return peak


async def _run(workload: Workload, policy: PollPolicy, name: str) -> Figures:
    clock = SystemClock()
    server = SimServer(
        workload.durations,
        slots=workload.slots,
        rpm=workload.rpm,
        seed=workload.seed,
        burst=workload.burst,
    )
    budget: Any = RequestBudget(workload.rpm, clock) if workload.rpm else _NoBudget()
    transport = SimTransport(server, budget, workload.rtt)
    request = SongRequest(prompt="a simulated song", lyrics="la la la la la")
    start = clock.now()
    cpu = time.process_time()
    failed = 0
    last = start
    async with generate_many(
        transport,
        itertools.repeat(request, workload.songs),
        clock=clock,
        max_in_flight=workload.in_flight,
        deadline=None,
        poll=policy,
        events=None,
        budget=budget if workload.rpm else None,
    ) as results:
        async for result in results:
            failed += not result.ok
            last = clock.now()
    jobs = [job for job in server.order if _noticed(job)]
    lags = [job.seen_terminal - job.finished for job in jobs]  # type: ignore[operator]
    shares = [_lag_share(job) for job in jobs]
    share_p95 = quantile(shares, 0.95)
    durations = [job.duration for job in server.order]
    after_shift = after_shift_polls = math.nan
    judged = server.order
    if isinstance(workload.durations, Shift):
        judged = server.order[workload.durations.switch_after + workload.in_flight :]
        after_shift, after_shift_polls = _p95_share(judged), _polls_per_song(judged)
    before_last = judged[: max(0, len(judged) - workload.in_flight)]
    blocks: list[list[Job]] = []
    if workload.block > 0:
        order, size = server.order, workload.block
        blocks = [order[at : at + size] for at in range(0, len(order), size)]
    return Figures(
        name=name,
        songs=len(server.order),
        polls_per_song=_polls_per_song(server.order),
        lag_p50=quantile(lags, 0.5),
        lag_p95=quantile(lags, 0.95),
        lag_share_p50=quantile(shares, 0.5),
        lag_share_p95=share_p95,
        makespan=last - start,
        optimum=list_schedule(durations, min(workload.slots, workload.in_flight)),
        requests=server.requests,
        throttled=server.throttled,
        peak_per_minute=peak_in_window(server.request_times),
        failed=failed,
        cpu_seconds=time.process_time() - cpu,
        after_shift_p95=after_shift,
        after_shift_polls=after_shift_polls,
        before_last_p95=_p95_share(before_last),
        before_last_polls=_polls_per_song(before_last),
        block_p95=tuple(map(_p95_share, blocks)),
        block_polls=tuple(map(_polls_per_song, blocks)),
        duration_p50=quantile(durations, 0.5),
        **_late_songs(jobs, share_p95),
    )


def _late_songs(jobs: list[Job], p95: float) -> dict[str, float]:
    """Figures on the songs past the lag p95 (``p95``, a share of duration) among ``jobs``
    (all noticed): what they have in common (see ``Figures.late_duration``)."""
    late = [job for job in jobs if _lag_share(job) > p95]
    found = [job for job in late if _found_at_first_poll(job)]
    after_start = []
    for job in found:
        assert job.first_polled is not None
        assert job.started is not None  # it finished, so it began
        after_start.append(job.first_polled - job.started)
    return {
        "done_at_first_poll": statistics.fmean(map(_found_at_first_poll, jobs)),
        "late_duration": quantile([job.duration for job in late], 0.5) if late else math.nan,
        "late_done_at_first_poll": len(found) / len(late) if late else math.nan,
        "late_first_poll": quantile(after_start, 0.5) if after_start else math.nan,
    }


def _found_at_first_poll(job: Job) -> bool:
    """Whether the first poll of a noticed song already saw it finished."""
    return job.seen_terminal == job.first_polled


def _p95_share(jobs: list[Job]) -> float:
    """Lag p95 (share of duration) of those of ``jobs`` a poll saw finished (NaN: none)."""
    shares = [_lag_share(job) for job in jobs if _noticed(job)]
    return quantile(shares, 0.95) if shares else math.nan


def _polls_per_song(jobs: list[Job]) -> float:
    """Mean polls per song of ``jobs`` (NaN: none)."""
    return statistics.fmean(job.polls for job in jobs) if jobs else math.nan


def _noticed(job: Job) -> bool:
    """Whether the song finished and a poll saw it finished."""
    return job.finished is not None and job.seen_terminal is not None


def _lag_share(job: Job) -> float:
    """A finished song's lag as a share of its duration (submission to completion)."""
    assert job.finished is not None
    assert job.seen_terminal is not None
    return (job.seen_terminal - job.finished) / (job.finished - job.submitted)


def simulate(workload: Workload, policy: PollPolicy, name: str = "policy") -> Figures:
    """Run one strategy on one workload in virtual time and return its figures."""
    # Trio runs ready tasks in an order it draws at random (so that no code relies on one),
    # from a generator of its own seeded by the OS: seeded here from the workload, a run's
    # figures repeat from one process to the next, and a change is compared with the code
    # before it on the same task orders, not on another draw of them.
    trio_scheduling_order.seed(workload.seed)
    return anyio.run(
        _run,
        workload,
        policy,
        name,
        backend="trio",
        backend_options={"clock": MockClock(autojump_threshold=0)},
    )


def print_table(rows: list[Figures]) -> None:
    """Print the figures side by side, one strategy per line."""
    header = (
        f"{'strategy':<36} {'polls/song':>10} {'lag p50':>8} {'lag p95':>8} {'%dur p50':>8} "
        f"{'%dur p95':>8} {'makespan':>9} {'x opt':>6} {'429s':>5} {'peak/min':>8} {'failed':>6}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row.name:<36} {row.polls_per_song:>10.2f} {row.lag_p50:>7.2f}s "
            f"{row.lag_p95:>7.2f}s {row.lag_share_p50:>8.1%} {row.lag_share_p95:>8.1%} "
            f"{row.makespan:>8.0f}s {row.makespan_ratio:>6.3f} {row.throttled:>5} "
            f"{row.peak_per_minute:>8} {row.failed:>6}"
        )
    for row in rows:
        if not math.isnan(row.after_shift_p95):
            print(f"{row.name}: songs a wave after the shift, lag p95 {row.after_shift_p95:.1%}")
        if row.block_p95:
            shares = " ".join(f"{share:.1%}" for share in row.block_p95)
            print(f"{row.name}: lag p95 by block of songs, in submission order: {shares}")
            polls = " ".join(f"{count:.2f}" for count in row.block_polls)
            print(f"{row.name}: polls/song by block of songs: {polls}")


def print_bounds(law: Law, rows: list[Figures]) -> None:
    """For each row, its lag p95 (share of duration) beside the least lag p95 a policy that
    knew ``law`` reaches with the polls per song the row spent (``_bounds.best_share``), and
    their ratio: what the performance page judges against ``_report.BOUND_FACTOR``. For a
    shifting service, the songs a wave after the shift, against the law after it. A second
    line leaves out the batch's last wave, whose extra polls (the budget the finished songs
    left) raise the polls per song, so lower the bound, and hardly move the lag p95."""
    shifting = isinstance(law.draw, Shift)
    law = law.settled()
    print()
    for row in rows:
        if shifting and math.isnan(row.after_shift_p95):
            print(f"{row.name}: no songs a wave after the shift (more --songs): no bound")
            continue
        label = "songs a wave after the shift: lag p95" if shifting else "lag p95"
        judged = [
            (
                f"{row.name}: {label}",
                row.after_shift_p95 if shifting else row.lag_share_p95,
                row.after_shift_polls if shifting else row.polls_per_song,
            ),
            ("  before the last wave: lag p95", row.before_last_p95, row.before_last_polls),
        ]
        for name, lag, polls in judged:
            if math.isnan(lag):
                print(f"{name}: no songs")
                continue
            bound = best_share(law, polls)
            if math.isinf(bound):
                print(f"{name} {lag:.2%} at {polls:.2f} polls/song, fewer than any")
                print("  schedule that knew the law would spend: no bound")
                continue
            ratio = lag / bound
            verdict = "within" if ratio <= BOUND_FACTOR else "over"
            print(
                f"{name} {lag:.2%} at {polls:.2f} polls/song; the bound there "
                f"{bound:.2%}: {ratio:.2f}x ({verdict} {BOUND_FACTOR:g}x)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--songs", type=int, default=200)
    parser.add_argument("--dist", default="uniform:50:60", help="see parse_distribution()")
    parser.add_argument("--slots", type=int, default=20, help="songs generating at once")
    parser.add_argument("--in-flight", type=int, default=20, help="client's max_in_flight")
    parser.add_argument("--rpm", type=int, default=120, help="requests per minute (0: none)")
    parser.add_argument(
        "--burst", type=int, help="the server counts with a token bucket of this size"
    )
    parser.add_argument("--rtt", type=float, default=0.2, help="round trip, seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", help="run only strategies whose name contains this")
    parser.add_argument("--runs", type=int, default=1, help="batches per strategy (seeds)")
    parser.add_argument(
        "--head-start",
        action="store_true",
        help="add the learned policy started from an estimate of the true law (what-if)",
    )
    parser.add_argument(
        "--blocks",
        type=int,
        default=0,
        metavar="N",
        help="also report lag p95 and polls/song for each block of N songs, in submission order",
    )
    parser.add_argument(
        "--knows-the-law",
        action="store_true",
        help="add the learned policy planning on the true law and learning nothing (what-if)",
    )
    parser.add_argument(
        "--quantiles",
        action="store_true",
        help="also compare each learned row's final estimate of the law with the law",
    )
    parser.add_argument(
        "--plans",
        action="store_true",
        help="also print the spread of the plans each learned row polled on (share, polls, start)",
    )
    parser.add_argument(
        "--late",
        action="store_true",
        help="also describe the songs past each row's lag p95 (its worst 5 %%)",
    )
    parser.add_argument(
        "--bound",
        action="store_true",
        help="also print each row's lag p95 over the bound at its polls/song (_bounds.py)",
    )
    parser.add_argument(
        "--second-run",
        action="store_true",
        help="add the learned policy started from a first batch's estimate (a catalog's rerun)",
    )
    parser.add_argument(
        "--set",
        type=parse_setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="change a constant of aimlmusic._planner, _estimator or _pacing for the run",
    )
    args = parser.parse_args()
    if args.blocks < 0:
        parser.error(f"--blocks must be 0 (no report) or more, got {args.blocks}")
    with applied(args.set):
        _run_strategies(args)


def _run_strategies(args: argparse.Namespace) -> None:
    """The rows ``args`` asks for, printed."""
    workload = Workload(
        songs=args.songs,
        durations=parse_distribution(args.dist, args.songs),
        slots=args.slots,
        in_flight=args.in_flight,
        rpm=args.rpm or None,
        burst=args.burst if args.burst is not None else _workload_burst(args.dist),
        rtt=args.rtt,
        seed=args.seed,
        block=args.blocks,
    )
    print(
        f"{args.songs} songs, durations {args.dist}, {args.slots} server slots, "
        f"{args.in_flight} in flight, {args.rpm or 'unlimited'} req/min, rtt {args.rtt:g} s\n"
    )
    strategies = dict(STRATEGIES)
    if args.head_start:
        strategies["learned, head start (what-if)"] = head_start(workload.durations)
    if args.second_run:
        strategies["learned, second run"] = second_run(workload)
    if args.knows_the_law:
        strategies["learned, knows the law (what-if)"] = knows_the_law(workload.durations)
    rows = []
    estimates: dict[str, list[tuple[float, ...]]] = {}
    plans: dict[str, Plans] = {}
    for name, make in strategies.items():
        if args.only and args.only not in name:
            continue
        runs = []
        for seed in range(args.seed, args.seed + args.runs):
            policy = make(seed)
            if args.plans:
                record_plans(policy, plans.setdefault(name, Plans()))
            runs.append(simulate(dataclasses.replace(workload, seed=seed), policy, name))
            estimated = estimated_quantiles(policy) if args.quantiles else None
            if estimated is not None:
                estimates.setdefault(name, []).append(estimated)
        rows.append(mean_of(runs))
        if args.runs > 1:
            worst = max(run.lag_share_p95 for run in runs)
            print(f"{name}: worst lag p95 of {args.runs} runs {worst:.1%} of duration")
    print_table(rows)
    if args.bound:
        print_bounds(Law(args.dist, "--dist", workload.durations), rows)
    if args.quantiles:
        print_quantiles(law_quantiles(workload.durations), estimates)
    if args.plans:
        print_plans({name: noted for name, noted in plans.items() if noted.shares})
    if args.late:
        print_late(rows)


def print_late(rows: list[Figures]) -> None:
    """For each row, what its worst 5 % of songs (past its lag p95) have in common: how
    long they took and whether they had finished before their first poll. Each figure is
    one run's median or share, averaged over the runs that have one."""
    print()
    for row in rows:
        first = (
            f", which came a median {row.late_first_poll:.1f} s after they began"
            if not math.isnan(row.late_first_poll)
            else ""
        )
        print(
            f"{row.name}: the songs past lag p95 took a median {row.late_duration:.1f} s "
            f"(all songs {row.duration_p50:.1f} s); {row.late_done_at_first_poll:.0%} of them "
            f"had finished before their first poll{first} "
            f"(of all songs: {row.done_at_first_poll:.0%})"
        )


def _workload_burst(dist: str) -> int | None:
    """The token bucket of a named workload (``bucket-10``), else none."""
    return WORKLOADS[dist].burst if dist in WORKLOADS else None


def mean_of(runs: list[Figures]) -> Figures:
    """One row whose every figure is the mean over ``runs`` (the name of the first), of the
    runs that have it (a figure that is NaN in a run has no songs to be taken over there:
    no song found done at its first poll among a run's worst, say)."""
    if len(runs) == 1:
        return runs[0]
    values: dict[str, Any] = {"name": runs[0].name}
    for spec in dataclasses.fields(Figures):
        if isinstance(getattr(runs[0], spec.name), tuple):  # per block: block by block
            blocks = zip(*(getattr(run, spec.name) for run in runs), strict=True)
            values[spec.name] = tuple(map(_mean_of_known, blocks))
        elif spec.name != "name":
            mean = _mean_of_known(getattr(run, spec.name) for run in runs)
            values[spec.name] = round(mean) if spec.type == "int" else mean
    return Figures(**values)


def _mean_of_known(values: Iterable[float]) -> float:
    """The mean of those of ``values`` that are not NaN (NaN: none is)."""
    known = [value for value in values if not math.isnan(value)]
    return statistics.fmean(known) if known else math.nan


if __name__ == "__main__":
    main()
