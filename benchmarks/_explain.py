"""What limits a figure that missed its target, said with the run's own numbers.

Each note only states what the same run measured (the first wave's share of the lag, songs
already finished at their first poll, request rates, CPU per request), so the page never
explains a miss with a story the figures do not support.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from _report import Verdict

__all__ = ["limit_note"]

#: Songs generating at once: the first wave is polled on the documented prior alone.
_SLOTS = 20


def _lag(row: dict[str, Any]) -> str:
    bound = _feasibility(row)
    warm = row["warm_lag_p95_pct"]
    cold_start = (
        "so the cold start accounts for part of the miss"
        if warm <= 0.8 * row["lag_p95_pct"]
        else "so the cold start is not what limits it"
    )
    notes = [
        f"After the first wave of {_SLOTS} songs (polled on the documented 50-60 s prior "
        f"alone, before any song has finished), lag p95 is {row['warm_lag_p95_s']:.1f} s "
        f"({warm:.1f} % of duration), {cold_start}."
    ]
    done_first = row.get("done_at_first_poll_pct", 0.0)
    if done_first >= 5.0:
        notes.append(
            f"{done_first:.0f} % of songs had already finished when they were first polled: "
            "the first poll is placed near the early edge of the finish times learned so far, "
            "and songs that finish before it wait for it; the wider the spread of durations, "
            "the more songs fall before that edge and the longer they wait."
        )
    rate = row["requests_per_min"]
    notes.append(
        f"The client sent {rate:.0f} requests/min on average, of the 120 allowed"
        + (
            ": at the limit, polls wait for the budget, and behind the submissions that "
            "refill the slots (submissions go first)."
            if rate >= 108
            else "."
        )
    )
    return " ".join([*bound, *notes])


def _feasibility(row: dict[str, Any]) -> list[str]:
    """Whether any policy could meet the lag target within the polls allowed."""
    target = 3 if row["workload"] == "uniform" else 5
    fewest = row.get(f"fewest_polls_lag{target}")
    ceiling = row.get("budget_polls_ceiling")
    loop = row.get("loop_polls_per_song")
    if fewest is None or ceiling is None or loop is None:
        return []
    # The polls target: at most 0.7 x the loop's on the documented workload, fewer elsewhere.
    allowed = min(ceiling, 0.7 * loop if row["workload"] == "uniform" else loop)
    if fewest <= allowed:
        return [
            f"The target is reachable: a policy that knew the durations' law would need "
            f"{fewest:.1f} polls/song for it, within the {allowed:.1f} allowed."
        ]
    return [
        f"No policy can meet this target together with the polls target: even one that knew "
        f"the durations' law exactly would need {fewest:.1f} polls/song to keep lag p95 within "
        f"{target} % of duration on this workload, while the polls target allows fewer than "
        f"the documented loop's {loop:.1f} and the request budget at most {ceiling:.1f} per "
        "song with the slots kept full. The learned policy stays within the polls target and "
        "the budget, so it misses the lag target."
    ]


def _makespan(row: dict[str, Any]) -> str:
    songs_per_slot = row["songs"] / row.get("runs", 1) / _SLOTS
    excess = row["makespan_s"] - row["optimum_s"]
    return (
        "Each song's lag delays the next song in its slot, so lags add up along each of the "
        f"{_SLOTS} slots: mean lag {row['lag_mean_s']:.1f} s × {songs_per_slot:.0f} songs per "
        f"slot ≈ {row['lag_mean_s'] * songs_per_slot:.0f} s, against a measured excess of "
        f"{excess:.0f} s over the optimum. The makespan target therefore needs the mean lag "
        "below about "
        f"{0.05 * row['optimum_s'] / songs_per_slot:.1f} s."
    )


def _polls(row: dict[str, Any]) -> str:
    loop = row.get("loop_polls_per_song")
    if loop is not None and loop < 6.5:
        return (
            f"The bar moved: the documented loop is budget-bound here and made {loop:.2f} "
            "polls/song instead of the 7 it makes on an idle account, so 0.7 × its figure is "
            f"{0.7 * loop:.2f} rather than 4.9. The learned policy spends polls to keep its lag "
            "down; fewer polls would mean more lag."
        )
    return "The learned policy spends polls to keep its lag down; fewer would mean more lag."


def _throttled(row: dict[str, Any]) -> str:
    return (
        "The emulator counts requests in a sliding 60 s window; a 429 means the client's own "
        "pacing let a burst through that the server's window refused."
    )


def _cpu(row: dict[str, Any]) -> str:
    extra = row["ours_cpu_us"] - row["bare_cpu_us"]
    return (
        f"The client spent {extra:,.0f} µs more per {row['unit']} than the bare loop "
        f"({row['ours_cpu_us']:,.0f} against {row['bare_cpu_us']:,.0f}); the per-block ratios "
        f"ranged {row['ratio_q1']:.2f}-{row['ratio_q3']:.2f} (interquartile), so part of the "
        "difference is noise from the machine. Both contenders spend most of their CPU inside "
        "httpx and httpcore (request building, the connection pool's bookkeeping); what the "
        "client adds is the request budget, retries and error mapping, and the converter that "
        "turns JSON into validated models."
    )


def _rss(row: dict[str, Any]) -> str:
    return (
        "Each in-flight song keeps its request, its poll state and an entry in the timer "
        "heap; the peak also holds the responses being parsed at that moment."
    )


def _loop_lag(row: dict[str, Any]) -> str:
    return (
        f"The client sent {row['requests_per_s']:,.0f} requests/s on average while the songs "
        "were in flight; when thousands of songs are due in the same few seconds the loop "
        "runs their callbacks back to back and the probe waits its turn behind them."
    )


_NOTES: dict[str, Callable[[dict[str, Any]], str]] = {
    "lag_p95_pct": _lag,
    "makespan_ratio": _makespan,
    "polls_per_song": _polls,
    "throttled_pct": _throttled,
    "cpu_ratio": _cpu,
    "beyond_text_per_song_kb": _rss,
    "loop_lag_p99_ms": _loop_lag,
}


def limit_note(verdict: Verdict) -> str:
    """Why ``verdict`` missed, from its own row's figures ("" when there is nothing to say)."""
    explain = _NOTES.get(verdict.metric)
    if explain is None:
        return ""
    try:
        return explain(verdict.row)
    except (KeyError, TypeError, ZeroDivisionError):  # figures saved by an older run
        return ""
