"""The planner alone: its schedule for the true law, judged on that law, nothing learned or run.

``simulate_polling.py --knows-the-law`` puts the learned policy's planner on an estimate of
the true law inside the real scheduler: its figures still carry round trips, the budget's
queue, the first wave and the last (whose songs share the budget the finished ones left).
This script takes all of that away. For each request budget it asks the library's planner
(``LearnedPolling.schedule``, after adopting ``simulate_polling.law_estimate`` of the law;
for a shifting service, of the law after the shift) for a schedule, then plays that schedule
against many durations drawn from the law:

- **chain**: every song polled at the middle phase, none exploring: the chain the planner
  chose, as :mod:`benchmarks._bounds` would poll it;
- **as run**: songs spread evenly over the phases ``Schedule.after`` moves polls by, those
  below the schedule's explore share climbing the explorers' ladder first: what the
  scheduler asks for, before any round trip or queue.

Each gets its polls per song, its lag p95 (as a share of duration) and, beside it, the
least lag p95 a policy that knew the law reaches with those polls (``_bounds.best_share``)
and the ratio of the two, the performance page's figure (``_report.BOUND_FACTOR``). The
table's ``share`` is the schedule's spacing and ``planned`` the polls per song the planner
expected of it (explorers included: compare it with the "as run" polls). The chain's ratio
is the planner's design (coverage, splits, tail, last poll); the step to the as-run ratio
is what phases and explorers cost; the rest of the way to the simulator's
``--knows-the-law --bound`` ratio is execution, and to its default row, learning.

It is deterministic and takes seconds, so it is the loop for changing the planner:
``--set NAME=VALUE`` changes a constant of ``aimlmusic._planner`` for the run
(``_constants.py``; a constant of ``aimlmusic._estimator`` acts here only through the
adopted estimate, ``FLOOR_SONGS`` and ``ADOPTED_SONGS``, and one of ``aimlmusic._pacing``
not at all: nothing is submitted here)::

    python benchmarks/planner_alone.py
    python benchmarks/planner_alone.py --dist lognormal --rpm 60 120 240
    python benchmarks/planner_alone.py --dist lognormal --set COVERAGE=0.96 --set SPLITS=12

A change that helps here must still be judged in the simulator, where the planner plans on
its own learned estimate: ``simulate_polling.py --set NAME=VALUE --bound`` over three seed
sets (``--seed 1``, ``13`` and ``25`` with ``--runs 12``), and then on the page.
"""

from __future__ import annotations

import argparse
import bisect
import math
import random
import statistics
from collections.abc import Sequence

from _bounds import best_share
from _constants import applied, parse_setting
from _report import BOUND_FACTOR
from simulate_polling import head_start, parse_distribution, quantile
from workloads import WORKLOADS
from workloads import Workload as Law

from aimlmusic import LearnedPolling
from aimlmusic._planner import Schedule

#: Durations drawn from the law to judge a schedule on: enough that the ratios move by
#: about 0.01 from one seed of the draws to another.
DRAWS = 20_000
#: Fewer draws than this would put the 95th percentile on one of the last few.
MIN_DRAWS = 100
#: Phases songs are spread over, evenly: a multiple of 1 / EXPLORE_SHARE (32), so that the
#: explorers are exactly their share (another share, set with --set, is rounded to 1/64).
PHASES = 64
#: The seed of the draws (the law's estimate has its own, in ``law_estimate``).
SEED = 7


def _polls(
    schedule: Schedule, durations: Sequence[float], phase: float, explore: bool
) -> tuple[int, list[float]]:
    """All songs' polls together and each song's lag share, on ``schedule`` at ``phase``;
    ``durations`` sorted and positive."""
    times: list[float] = []
    t = 0.0
    while t < durations[-1]:
        later = schedule.after(t, phase, explore=explore)
        if not later > t:  # only constants changed with --set can make it stall
            raise SystemExit(f"the schedule does not move on past {t:g} s (see --set)")
        times.append(t := later)
    polls, lags = 0, []
    for duration in durations:
        seen = bisect.bisect_left(times, duration)  # the first poll at or after it finished
        polls += seen + 1
        lags.append((times[seen] - duration) / duration)
    return polls, lags


def judge(schedule: Schedule, durations: Sequence[float], *, as_run: bool) -> tuple[float, float]:
    """Polls per song and lag p95 (share of duration) of ``schedule`` on ``durations``
    (sorted): as a chain (the middle phase, no explorers), or ``as_run`` (spread evenly over
    ``PHASES`` phases, explorers included)."""
    phases = [(k + 0.5) / PHASES for k in range(PHASES)] if as_run else [0.5]
    polls, lags = 0, []
    for phase in phases:
        count, shares = _polls(schedule, durations, phase, explore=as_run)
        polls += count
        lags += shares
    return polls / len(lags), quantile(lags, 0.95)


def _budgets(text: str) -> float:
    """A ``--rpm`` value: a finite, positive number of requests a minute."""
    try:
        rpm = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(rpm) and rpm > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: requests a minute must be positive")
    return rpm


def main(argv: list[str] | None = None) -> None:
    """Command line: one table per law, one row per budget."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dist",
        nargs="+",
        default=[name for name in WORKLOADS if WORKLOADS[name].burst is None],
        help="laws (see simulate_polling.parse_distribution; a shifting one is judged after"
        " the shift); by default every workload's but the token bucket's (the documented law)",
    )
    parser.add_argument("--rpm", nargs="+", type=_budgets, default=[120.0], help="budgets")
    parser.add_argument("--in-flight", type=int, default=20, help="songs sharing the budget")
    parser.add_argument("--draws", type=int, default=DRAWS)
    parser.add_argument(
        "--set", type=parse_setting, action="append", default=[], metavar="NAME=VALUE"
    )
    args = parser.parse_args(argv)
    if args.draws < MIN_DRAWS:
        parser.error(f"--draws must be at least {MIN_DRAWS}, got {args.draws}")
    if args.in_flight < 1:
        parser.error(f"--in-flight must be at least 1, got {args.in_flight}")
    with applied(args.set):
        _tables(args)


def _tables(args: argparse.Namespace) -> None:
    """One table per law of ``args``, one row per budget."""
    for dist in args.dist:
        law = Law(dist, "--dist", parse_distribution(dist)).settled()
        rng = random.Random(SEED)
        durations = sorted(law.draw(rng) for _ in range(args.draws))
        if not durations[0] > 0:
            raise SystemExit(f"{dist}: durations must be positive, drew {durations[0]:g}")
        policy = head_start(law.draw)(0)  # settled, never a shifting law; no seed is used
        assert isinstance(policy, LearnedPolling)
        print(f"\n{law.name}: {args.in_flight} songs in flight, {args.draws:,} draws")
        print(
            f"{'req/min':>8} {'share':>6} {'planned':>8} | {'chain: polls':>12} {'lag p95':>8} "
            f"{'bound':>7} {'ratio':>6} | {'as run: polls':>13} {'lag p95':>8} {'bound':>7} "
            f"{'ratio':>6}"
        )
        ratios: dict[bool, list[float]] = {False: [], True: []}
        for rpm in args.rpm:
            schedule = policy.schedule(rpm, args.in_flight)
            row = f"{rpm:>8g} {schedule.share:>6.3f} {schedule.polls:>8.2f}"
            for as_run, width in ((False, 12), (True, 13)):
                polls, lag = judge(schedule, durations, as_run=as_run)
                bound = best_share(law, polls)
                if math.isinf(bound):  # fewer polls than any schedule that knew the law
                    row += f" | {polls:>{width}.2f} {lag:>8.1%} {'none':>7} {'-':>6}"
                    continue
                ratios[as_run].append(lag / bound)
                row += f" | {polls:>{width}.2f} {lag:>8.1%} {bound:>7.1%} {lag / bound:>5.2f}x"
            print(row)
        if len(args.rpm) > 1 and ratios[False] and ratios[True]:
            chain, as_run = (statistics.median(ratios[key]) for key in (False, True))
            print(f"median ratio, chain / as run: {chain:.2f}x / {as_run:.2f}x")
    print(
        f"\n(ratio: lag p95 over the bound at the same polls/song; the page's target is "
        f"{BOUND_FACTOR:g}x)"
    )


if __name__ == "__main__":
    main()
