"""The planner alone: its schedule for the true law, judged on that law, nothing learned or run.

``simulate_polling.py --knows-the-law`` puts the learned policy's planner on an estimate of
the true law inside the real scheduler: its figures still carry the phases that move each
song's polls, the explorers, round trips, the budget's queue and the first wave. This
script strips all of that away. For each request budget it asks the library's planner
(``LearnedPolling.schedule``, on the same estimate of the law that ``--knows-the-law`` and
``--head-start`` adopt) for a schedule, then plays that schedule against many durations
drawn from the law:

- **chain**: every song polled at the middle phase, none exploring: the chain the planner
  chose, as :mod:`benchmarks._bounds` would poll it;
- **as run**: songs spread evenly over the phases ``Schedule.after`` moves polls by, those
  below the schedule's explore share climbing the explorers' ladder first: what the
  scheduler asks for, before any round trip or queue.

Each gets its polls per song, its lag p95 (as a share of duration) and, beside it, the
least lag p95 a policy that knew the law reaches with those polls (``_bounds.best_share``)
and the ratio of the two, the performance page's figure (``_report.BOUND_FACTOR``). The
chain's ratio is the planner's design (coverage, splits, tail, last poll); the step to the
as-run ratio is what phases and explorers cost; the rest of the way to the simulator's
``--knows-the-law --bound`` ratio is execution, and to its default row, learning.

It is deterministic and takes seconds, so it is the loop for changing the planner: with
``--set NAME=VALUE`` a constant of ``aimlmusic._planner`` is changed for the run::

    python benchmarks/planner_alone.py
    python benchmarks/planner_alone.py --dist lognormal --rpm 60 120 240
    python benchmarks/planner_alone.py --dist lognormal --set COVERAGE=0.96 --set SPLITS=12

A planner change that helps here must still be judged in the simulator (``--bound`` over
three seed sets) and on the page: there it plans on an estimate, not the law.
"""

from __future__ import annotations

import argparse
import bisect
import random
import statistics
from collections.abc import Sequence

from _bounds import best_share
from _report import BOUND_FACTOR
from simulate_polling import law_estimate, parse_distribution
from workloads import WORKLOADS
from workloads import Workload as Law

import aimlmusic._planner as planner
from aimlmusic import LearnedPolling
from aimlmusic._planner import Schedule

#: Durations drawn from the law to judge a schedule on: enough that the ratios move by
#: about 0.01 from one seed of the draws to another.
DRAWS = 20_000
#: Phases songs are spread over: a multiple of 32, so that the explore share of 1/32 is
#: an exact number of phases.
PHASES = 64
#: The seed of the draws (the law's estimate has its own, in ``law_estimate``).
SEED = 7


def _polls(
    schedule: Schedule, durations: Sequence[float], phase: float, explore: bool
) -> tuple[int, list[float]]:
    """All songs' polls together and each song's lag share, on ``schedule`` at ``phase``;
    ``durations`` sorted."""
    times: list[float] = []
    t = 0.0
    while t < durations[-1]:
        t = schedule.after(t, phase, explore=explore)
        times.append(t)
    polls, lags = 0, []
    for duration in durations:
        seen = bisect.bisect_left(times, duration)  # the first poll at or after it finished
        polls += seen + 1
        lags.append((times[seen] - duration) / duration)
    return polls, lags


def judge(schedule: Schedule, durations: Sequence[float], phases: int) -> tuple[float, float]:
    """Polls per song and lag p95 (share of duration) of ``schedule`` on ``durations``
    (sorted): at the middle phase without explorers when ``phases`` is 1, else spread
    evenly over ``phases`` phases, explorers included."""
    middle = phases == 1
    polls, lags = 0, []
    for k in range(phases):
        phase = 0.5 if middle else (k + 0.5) / phases
        count, shares = _polls(schedule, durations, phase, explore=not middle)
        polls += count
        lags += shares
    lags.sort()
    return polls / len(lags), lags[int(0.95 * len(lags))]


def _setting(text: str) -> tuple[str, float]:
    """``NAME=VALUE`` for a numeric constant of ``aimlmusic._planner``."""
    name, sep, value = text.partition("=")
    current = getattr(planner, name, None)
    if not sep or not name.isupper() or isinstance(current, bool):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE, NAME a planner constant")
    if not isinstance(current, int | float):
        raise argparse.ArgumentTypeError(f"{name} is not a numeric constant of aimlmusic._planner")
    try:
        number = type(current)(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{name}={value!r}: not a valid {type(current).__name__}"
        ) from None
    return name, number


def main(argv: list[str] | None = None) -> None:
    """Command line: one table per law, one row per budget."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dist",
        nargs="+",
        default=[name for name in WORKLOADS if WORKLOADS[name].burst is None],
        help="laws (see simulate_polling.parse_distribution); a shifting one is judged after"
        " the shift",
    )
    parser.add_argument("--rpm", nargs="+", type=float, default=[120.0], help="request budgets")
    parser.add_argument("--in-flight", type=int, default=20, help="songs sharing the budget")
    parser.add_argument("--draws", type=int, default=DRAWS)
    parser.add_argument("--set", type=_setting, action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    if args.draws < 20 or args.in_flight < 1 or min(args.rpm) <= 0:
        parser.error("--draws must be at least 20, --in-flight at least 1, --rpm positive")
    for name, value in args.set:
        setattr(planner, name, value)
        print(f"aimlmusic._planner.{name} = {value!r}")
    for dist in args.dist:
        law = Law(dist, "--dist", parse_distribution(dist)).settled()
        rng = random.Random(SEED)
        durations = sorted(law.draw(rng) for _ in range(args.draws))
        policy = LearnedPolling()
        if not policy.adopt_estimate(law_estimate(law.draw)):
            raise SystemExit("the law's estimate was refused: grid or format changed?")
        print(f"\n{law.name}: {args.in_flight} songs in flight, {args.draws:,} draws")
        print(
            f"{'req/min':>8} {'share':>6} {'planned':>8} | {'chain: polls':>12} {'lag p95':>8} "
            f"{'bound':>7} {'ratio':>6} | {'as run: polls':>13} {'lag p95':>8} {'bound':>7} "
            f"{'ratio':>6}"
        )
        ratios = []
        for rpm in args.rpm:
            schedule = policy.schedule(rpm, args.in_flight)
            row = f"{rpm:>8g} {schedule.share:>6.3f} {schedule.polls:>8.2f}"
            for phases, width in ((1, 12), (PHASES, 13)):
                polls, lag = judge(schedule, durations, phases)
                bound = best_share(law, polls)
                ratio = lag / bound
                ratios.append(ratio)
                row += f" | {polls:>{width}.2f} {lag:>8.1%} {bound:>7.1%} {ratio:>5.2f}x"
            print(row)
        if len(ratios) > 2:
            print(
                f"median ratio, chain / as run: {statistics.median(ratios[::2]):.2f}x / "
                f"{statistics.median(ratios[1::2]):.2f}x"
            )
    print(
        f"\n(ratio: lag p95 over the bound at the same polls/song; the page's target is "
        f"{BOUND_FACTOR:g}x)"
    )


if __name__ == "__main__":
    main()
