"""What the learned policy costs in CPU a song, side by side with the documented loop.

Runs the simulator's batches (``simulate_polling.py``: the real scheduler, policies and
budget on trio's virtual clock, no I/O) for a few timing laws, the documented loop and the
learned policy taking turns, and prints per song:

- the whole batch's CPU (``time.process_time()``), loop then learned: the scheduler, the
  simulated server and the policy together;
- for the learned policy, the CPU inside its estimator's refits and inside the planner's
  ``plan`` (cache hits included), summed with ``time.process_time()`` around each call,
  and the refits a song.

The loop and the learned policy do not make the same polls (the learned one makes fewer), so
their difference is the policy's cost net of the polls it saves; the refit and plan rows
are its cost alone. The timing wrappers add about a microsecond a call. Medians over the
rounds::

    python benchmarks/bench_policy_cpu.py
    python benchmarks/bench_policy_cpu.py --rounds 5 --songs 400 --laws uniform drift
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import simulate_polling as sim

import aimlmusic._estimator as estimator_module
import aimlmusic._polling as polling_module
from aimlmusic import FixedInterval, LearnedPolling

#: The laws measured by default: the documented one, a wide one, a heavy tail, a shift.
DEFAULT_LAWS = ("uniform", "lognormal", "heavy-tail", "drift")


@dataclasses.dataclass
class _Meter:
    """CPU seconds and calls inside one wrapped function."""

    seconds: float = 0.0
    calls: int = 0


def _metered(function: Callable[..., Any], meter: _Meter) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            meter.seconds += time.process_time() - started
            meter.calls += 1

    return wrapper


@contextmanager
def _metering() -> Iterator[dict[str, _Meter]]:
    """Meter the estimator's refits and the planner's plans while the block runs."""
    meters = {"refit": _Meter(), "plan": _Meter()}
    refit = estimator_module.CompletionEstimator._refit
    plan = polling_module.plan
    estimator_module.CompletionEstimator._refit = _metered(refit, meters["refit"])  # type: ignore[method-assign]
    polling_module.plan = _metered(plan, meters["plan"])
    try:
        yield meters
    finally:
        estimator_module.CompletionEstimator._refit = refit  # type: ignore[method-assign]
        polling_module.plan = plan


def _batch_cpu(workload: sim.Workload, policy: Any) -> float:
    started = time.process_time()
    sim.simulate(workload, policy)
    return time.process_time() - started


def measure(law: str, songs: int, rounds: int) -> dict[str, float]:
    """Median CPU figures a song for ``law`` over ``rounds`` (seeds 1 onwards)."""
    figures: dict[str, list[float]] = {"loop": [], "learned": [], "refit": [], "plan": []}
    refits: list[float] = []
    for seed in range(1, rounds + 1):
        workload = sim.Workload(
            songs=songs,
            durations=sim.parse_distribution(law, songs),
            slots=20,
            in_flight=20,
            rpm=120,
            burst=sim._workload_burst(law),
            rtt=0.2,
            seed=seed,
        )
        figures["loop"].append(_batch_cpu(workload, FixedInterval(10.0, first=0.0)) / songs)
        with _metering() as meters:
            figures["learned"].append(_batch_cpu(workload, LearnedPolling()) / songs)
        figures["refit"].append(meters["refit"].seconds / songs)
        figures["plan"].append(meters["plan"].seconds / songs)
        refits.append(meters["refit"].calls / songs)
    medians = {name: statistics.median(values) * 1e6 for name, values in figures.items()}
    return {**medians, "refits": statistics.median(refits)}


def main() -> None:
    """Command line: the table, one law a row."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--laws", nargs="+", default=list(DEFAULT_LAWS))
    parser.add_argument("--songs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(
        f"{'law':<12} {'loop µs/song':>13} {'learned µs/song':>16} {'refits µs/song':>15} "
        f"{'plans µs/song':>14} {'refits/song':>12}"
    )
    for law in args.laws:
        row = measure(law, args.songs, args.rounds)
        print(
            f"{law:<12} {row['loop']:>13,.0f} {row['learned']:>16,.0f} {row['refit']:>15,.0f} "
            f"{row['plan']:>14,.0f} {row['refits']:>12.2f}"
        )


if __name__ == "__main__":
    main()
