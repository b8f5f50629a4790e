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
    warm = row["warm_lag_p95_pct"]
    cold_start = (
        "so the first wave accounts for part of the miss"
        if warm <= 0.8 * row["lag_p95_pct"]
        else "so the first wave alone is not what limits it (learning can last longer "
        "than a wave: see the head-start rows of 'What learning costs' in docs/polling.md)"
    )
    notes = [
        *_bound(row),
        f"After the first wave of {_SLOTS} songs (polled on the documented 50-60 s prior "
        f"alone, before any song has finished), lag p95 is {row['warm_lag_p95_s']:.1f} s "
        f"({warm:.1f} % of duration), {cold_start}.",
    ]
    done_first = row.get("done_at_first_poll_pct", 0.0)
    if done_first >= 5.0:
        notes.append(
            f"{done_first:.0f} % of songs had already finished when they were first polled: "
            "songs that finish before the first poll wait for it, and the wider the spread "
            "of durations, the more songs fall before it."
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
    return " ".join(notes)


def _bound(row: dict[str, Any]) -> list[str]:
    """What a policy that knew the durations' law would reach with the same polls."""
    bound = row.get("bound_lag_p95_pct")
    if bound is None:
        return []
    notes = [
        f"A policy that knew the durations' law would keep lag p95 within {bound:.2f} % of "
        f"duration with the {row['polls_per_song']:.2f} polls/song the learned policy spent."
    ]
    loop = row.get("loop") or {}
    if "bound_lag_p95_pct" in loop:
        notes.append(
            f"With the documented loop's {loop['polls_per_song']:.2f} polls/song it would "
            f"reach {loop['bound_lag_p95_pct']:.2f} %; the loop itself reached "
            f"{loop['lag_p95_pct']:.2f} % ({loop['lag_p95_s']:.1f} s)."
        )
    return notes


def _shifted(row: dict[str, Any]) -> str:
    loop = row.get("loop") or {}
    text = (
        f"The {row['shifted_songs']} songs submitted a wave ({_SLOTS} songs) after the "
        f"service slowed down got {row['shifted_polls_per_song']:.2f} polls/song and a lag "
        f"p95 of {row['shifted_lag_p95_s']:.1f} s; a policy that knew the law after the shift "
        f"would keep it within {row['shifted_bound_lag_p95_pct']:.2f} % with those polls."
    )
    if "shifted_lag_p95_pct" in loop:
        text += (
            f" The documented loop's songs of the same wave: {loop['shifted_polls_per_song']:.2f}"
            f" polls/song, lag p95 {loop['shifted_lag_p95_pct']:.2f} %."
        )
    return text


def _makespan(row: dict[str, Any]) -> str:
    songs_per_slot = row["songs"] / row.get("runs", 1) / _SLOTS
    excess = row["makespan_s"] - row["optimum_s"]
    text = (
        "Each song's lag delays the next song in its slot, so lags add up along each of the "
        f"{_SLOTS} slots: mean lag {row['lag_mean_s']:.1f} s × {songs_per_slot:.0f} songs per "
        f"slot ≈ {row['lag_mean_s'] * songs_per_slot:.0f} s, against a measured excess of "
        f"{excess:.0f} s over the optimum."
    )
    loop = row.get("loop") or {}
    if "lag_mean_s" in loop:
        text += (
            f" The documented loop's mean lag was {loop['lag_mean_s']:.1f} s "
            f"(makespan {loop['makespan_s']:.0f} s)."
        )
    return text


def _polls(row: dict[str, Any]) -> str:
    loop = row.get("loop") or {}
    if "polls_per_song" not in loop:
        return ""
    return (
        f"The documented loop made {loop['polls_per_song']:.2f} polls/song in the same run "
        f"(at 120 requests/min and 20 songs at once it is budget-bound: every 10 s for 20 songs "
        "is the whole budget). The learned policy spends polls to keep its lag down; fewer "
        "polls would mean more lag."
    )


def _throttled(row: dict[str, Any]) -> str:
    return (
        "The emulator counts requests in a sliding 60 s window; a 429 means the client's own "
        "pacing let a burst through that the server's window refused."
    )


def _cpu(row: dict[str, Any]) -> str:
    extra = row["ours_cpu_us"] - row["bare_cpu_us"]
    text = (
        f"The client spent {extra:,.0f} µs more per {row['unit']} than the bare loop "
        f"({row['ours_cpu_us']:,.0f} against {row['bare_cpu_us']:,.0f}); the per-block ratios "
        f"ranged {row['ratio_q1']:.2f}-{row['ratio_q3']:.2f} (interquartile), so part of the "
        "difference is noise from the machine. "
    )
    if row["name"].startswith("POST"):
        return text + _fresh_connections(row)
    return text + (
        "Both contenders spend most of their CPU inside httpx and httpcore (request building, "
        "the connection pool's bookkeeping); what the client adds is the request budget, "
        "retries and error mapping, and the converter that turns JSON into validated models."
    )


#: Why the client sends every submission on a fresh connection.
_WHY_FRESH = (
    "a POST lost on a reused keep-alive connection cannot be told from one the server "
    "received, and resending it could pay twice (docs/reliability.md)"
)


def _fresh_connections(row: dict[str, Any]) -> str:
    """The POST row: what the fresh connection per submission costs, as far as it was measured."""
    reused = row.get("reused_bare_cpu_us")
    if reused is None:  # a run from before the bare loop POSTed on fresh connections too
        return (
            "The client sends each submission on a fresh TCP connection of its own, because "
            f"{_WHY_FRESH}; in this run the bare loop sent every POST on one reused keep-alive "
            "connection, so the ratio counts connecting and closing once per submission "
            "against the client alone, and this run did not measure how much of the "
            "difference that is. Later runs send the bare loop's POSTs on fresh connections "
            "too and show the loop reusing its connection as a row without a target."
        )
    return (
        "Both contenders send each POST on a fresh TCP connection: the client does because "
        f"{_WHY_FRESH}, and a bare loop that must never pay twice needs the same. In the same "
        "blocks a bare loop "
        f"reusing one connection spent {reused:,.0f} µs per request, so the fresh connection "
        f"cost the bare loop {row['bare_cpu_us'] - reused:,.0f} µs per submission; against "
        f"that loop the client's ratio is {row['ours_cpu_us'] / reused:.2f}×. This run does "
        "not break down the client's own extra CPU on top of the fresh connection."
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
    "lag_p95_pct_worst_run": _lag,
    "lag_p95_s": _lag,
    "shifted_lag_p95_pct": _shifted,
    "makespan_ratio": _makespan,
    "makespan_s": _makespan,
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
