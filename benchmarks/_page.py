"""Writing ``docs/performance.md`` and its plot from one run's figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import _report
from _explain import limit_note
from workloads import WORKLOADS

__all__ = ["write"]

PLOT = Path("_static") / "polling.png"
#: Sections kept by hand (measured by scripts of their own, or the page's history): a
#: rewrite of the page carries them over from the old page, at the end, in this order.
KEPT_SECTIONS = ("## Several processes on one key", "## Several catalog workers", "## History")

_INTRO = """\
# Performance

Every figure on this page was measured in one run of `{command}` on the machine described
at the end; {sizes} Each figure that has a target is printed next to it with
✓ (met) or ✗ (missed), and a missed target is explained below with the figures that limit
it. The benchmarks never pass or fail on time. The code is in `benchmarks/`.
"""

_SIZES = {
    "full": (
        "`nox -s bench` runs the same experiments in quick mode (`python benchmarks/run.py "
        "--quick`: time compressed more, one repetition instead of three, fewer requests) "
        "and prints the same tables, so expect its figures to scatter around these."
    ),
    "quick": (
        "this was a quick run (`nox -s bench`); `python benchmarks/run.py --full` repeats "
        "the experiments with less time compression and more repetitions."
    ),
}

_POLLING = """\
## Polling efficiency

How many requests a song costs while you wait for it, and how late you notice it finished.
Each row is {runs_text} through `AsyncMusicClient.generate_many` with
`max_in_flight=20` and the default `Limits` (120 requests/minute), against the bundled
emulator enforcing the same account limits (120 requests/minute, 20 generating at once,
everything else queued), served in-process with API time running {time_scale:g}× faster
than real time. The figures come from the emulator's own records, not from the client:

- **polls/song**: GET requests the emulator received, divided by the songs;
- **lag**: the API time of the first poll that saw a song finished, minus the time it
  finished; its share of the song's generating time is the "% of duration";
- **best lag p95 at these polls/song**: computed, not measured: the least lag p95 (as
  % of duration) that a policy which *knew* the durations' law could reach spending the
  same polls per song (it polls every song on the best single schedule, polls a fixed
  ratio apart: songs cannot be told apart before they finish);
- **makespan**: first submission to last song noticed (mean over the runs); **/ optimum**:
  against the list-scheduling optimum of the very same durations on 20 slots (each song
  starts on the first free slot and is noticed the instant it completes: the best a client
  can do without foreknowledge);
- **429s / requests**: throttled answers among all requests;
- **requests/min**: submissions and polls per minute of makespan, of the 120 allowed;
- **done at 1st poll**: songs that had already finished when first polled (their lag is
  set by when the first poll came, not by the spacing of later ones).

Strategies: {strategies}. Workloads: {workloads}.

The targets: on every workload the learned policy must be no worse than the documented
loop in the same run (no more polls per song, no more lag p95 in seconds, no longer
makespan), and its lag p95 must be within 1.25× the best a policy that knew the law reaches
with the polls per song it spent. On the documented workload it must also spend at most
0.75× the loop's polls, keep lag p95 within 3 % of duration in every seed, finish within
1.05× the optimum and draw at most 1 % of 429s.

{table}
{shifted}
![Polls per song against lag p95, per strategy and workload](_static/polling.png)

{limits}

The documented loop is *budget-bound* at these limits, which is a finding, not an artefact:
it polls each of 20 songs every 10 s, 120 polls a minute, the whole account budget before
a single submission, so its polls queue behind the submissions that refill the slots and it
gets fewer polls and more lag than it would on an idle account. {fixed_note}Every request
here goes through one shared budget that serves submissions first, so polling never
starves the submissions.
"""

#: How the page introduces each strategy it may show.
_STRATEGY_NOTES = {
    "learned": "**learned** is the client's default policy",
    "documented loop": (
        "**documented loop** is the API documentation's example (poll at once, then every "
        "10 s: `FixedInterval(10, first=0)`)"
    ),
    "fixed 0.5 s": "**fixed 0.5 s** is replicate-python's interval",
    "exponential": "**exponential** is google-api-core's poller (1 s, ×1.5, at most 20 s)",
}

_FIXED_NOTE = (
    "The fixed 0.5-s interval would need 40 requests a second for 20 songs; the account "
    "allows 2, so it spends the whole budget and its lag is set by the budget, not by its "
    "interval: polling fast under an account limit buys nothing. "
)

_SHIFTED = """
On the **drift** workload the service slows down half way through each run. The songs
submitted from one wave (20 songs) after the shift on are the test of how fast a policy
follows it; their figures, against what a policy that knew the new law (uniform 80–100 s)
would reach with the same polls per song:

{table}
"""

_OVERHEAD = """\
## Client overhead

What the client's own machinery (request budget, retries, error mapping and redaction, the
cattrs converter, and for whole songs the scheduler and the learned policy) costs in CPU,
against a bare `httpx.AsyncClient` loop that sends the same requests with a bearer header,
checks the status and parses the JSON. The emulator is served by uvicorn on 127.0.0.1 in a
separate process, so only the client's CPU (`time.process_time()` in its own process) is
counted. Both contenders run against the same server in the same run, in alternating blocks
of {block} requests (bare, ours, ours, bare, ...) so that drift and anything else running on
the machine fall on both alike. CPU figures are medians over the blocks; beside their
ratio is the interquartile range of the ratios of neighbouring blocks.

The GETs poll songs that are still generating (the common case); the POSTs submit songs.
The client sends each submission on a fresh TCP connection (a POST lost on a reused
keep-alive connection cannot be told from one the server received, and resending it could
pay twice: see [Reliability](reliability.md)), so the bare loop that the POST row is held to
does the same (a second `httpx.AsyncClient` with `httpx.Limits(max_keepalive_connections=0)`),
as any client that must never pay twice would. The row after it, without a target, sets
the client's POSTs (the same blocks) against a bare loop that reuses one keep-alive
connection instead: the difference is what that safety costs. The three POST contenders run
in rounds of three blocks, each round in another order.
The "whole songs" row runs `generate_many` on a batch of songs (time compressed 100×), then
a bare loop *replays its exact requests at the same moments* (one task per song: POST, then
each GET when the client made it), so the two make the same requests with the same timing;
it is per song, and its request rate is left out because both wait for songs to finish.
There the client is given a recording transport, and a client given a transport keeps its
pooling for submissions too, so both send their POSTs on pooled connections.

{table}
"""

_SCALE = """\
## Scale

{songs:,} songs in flight in one process: `generate_many(..., max_in_flight={songs})` with
a request budget too large to bind, against a stateless fake server (`httpx.MockTransport`;
it keeps nothing per song: the completion time travels in the generation id) so that every
byte the process grows is the client's. Songs take 50–60 s of API time (time running
{time_scale:g}× faster), so all are submitted before the first completes, then polled
together. Memory is the peak resident set size during the batch minus the resident size
before it, per song, minus the request's own text (its prompt and lyrics strings, which the
caller handed over and which are returned in each `SongResult`). Event-loop lag is how late
a probe task sleeping 5 ms at a time wakes up while the songs are in flight.

{table}
"""

_MACHINE = """\
## Machine and command

| | |
|---|---|
{rows}
| command | `{command}` |
| run time | {seconds:.0f} s |
"""

_VERDICTS = """\
## Targets

{summary}

| figure | measured | target | |
|---|---|---|---|
{rows}
"""


def _verdicts(results: dict[str, Any]) -> str:
    found = _report.verdicts(results)
    missed = [v for v in found if not v.met]
    if not found:
        summary = "No targets were checked in this run."
    elif not missed:
        summary = f"All {len(found)} targets were met in this run."
    else:
        notes = "\n".join(
            f"- **{v.what}**: {v.figure} against {v.target}. {limit_note(v)}" for v in missed
        )
        summary = (
            f"{len(found) - len(missed)} of {len(found)} targets were met in this run. "
            f"Missed, and what limits them:\n\n{notes}"
        )
    rows = "\n".join(
        f"| {v.what} | {v.figure} | {v.target} | {'✓' if v.met else '✗'} |" for v in found
    )
    return _VERDICTS.format(summary=summary, rows=rows)


def _limits_table(rows: list[dict[str, Any]]) -> str:
    """What the workloads and the budget allow any policy (computed, not measured)."""
    seen: dict[str, dict[str, Any]] = {}
    for row in rows:
        if "fewest_polls_lag5" in row:
            seen.setdefault(row["workload"], row)
    if not seen:
        return ""
    lines = [
        "What the limits allow any policy, learning or not (computed from the workloads, "
        "not measured): the fewest polls per song with which a policy that *knew* the "
        "durations' law could keep lag p95 within 3 % or 5 % of duration (it polls every "
        "song on the best single schedule: songs cannot be told apart before they finish), "
        "and the most polls per song the 120 requests/minute leave once the 20 slots are "
        "kept full (for **drift**, of the law after the shift).",
        "",
        "| workload | fewest polls/song for lag p95 ≤ 3 % | for ≤ 5 % | most polls/song the budget "
        "allows |",
        "|---|---|---|---|",
    ]
    for name, row in seen.items():
        lines.append(
            f"| {name} | {row['fewest_polls_lag3']:.1f} | {row['fewest_polls_lag5']:.1f} "
            f"| {row['budget_polls_ceiling']:.1f} |"
        )
    return "\n".join(lines)


def _strategies_text(rows: list[dict[str, Any]]) -> str:
    shown = dict.fromkeys(row["strategy"] for row in rows)
    return "; ".join(_STRATEGY_NOTES.get(name, f"**{name}**") for name in shown)


def _shifted_section(rows: list[dict[str, Any]]) -> str:
    table = _report.shifted_table(rows)
    return _SHIFTED.format(table=table) if table else ""


def _runs_text(runs: int, songs: int) -> str:
    if runs == 1:
        return f"one end-to-end run of {songs} songs (every strategy sees the same durations)"
    return (
        f"{runs} end-to-end runs of {songs // runs} songs each, with different seeds (within "
        "a seed every strategy sees the same durations in the same order); percentiles are "
        "over all their songs"
    )


def render(results: dict[str, Any]) -> str:
    """The whole page as markdown."""
    command = results.get("command", "python benchmarks/run.py --full")
    sizes = _SIZES.get(results.get("mode", "full"), "")
    parts = [_INTRO.format(command=command, sizes=sizes), _verdicts(results)]
    if results.get("polling"):
        rows = results["polling"]
        shown = {row["workload"] for row in rows}
        workloads = "; ".join(
            f"**{w.name}** ({w.description})" for w in WORKLOADS.values() if w.name in shown
        )
        parts.append(
            _POLLING.format(
                runs_text=_runs_text(rows[0].get("runs", 1), rows[0]["songs"]),
                time_scale=rows[0]["time_scale"],
                workloads=workloads,
                table=_report.polling_table(rows),
                shifted=_shifted_section(rows),
                limits=_limits_table(rows),
                strategies=_strategies_text(rows),
                fixed_note=_FIXED_NOTE if any(r["strategy"] == "fixed 0.5 s" for r in rows) else "",
            )
        )
    if results.get("overhead"):
        parts.append(
            _OVERHEAD.format(
                block=results["overhead"].get("block", 100),
                table=_report.overhead_table(results["overhead"]),
            )
        )
    if results.get("scale"):
        scale = results["scale"]
        parts.append(
            _SCALE.format(
                songs=scale["songs"],
                time_scale=scale["time_scale"],
                table=_report.scale_table(scale),
            )
        )
    machine_rows = "\n".join(f"| {k} | {v} |" for k, v in results["machine"].items())
    parts.append(
        _MACHINE.format(rows=machine_rows, command=command, seconds=results.get("seconds", 0.0))
    )
    return "\n".join(parts)


def write(results: dict[str, Any], *, docs: Path) -> Path:
    """Write ``performance.md`` (and the plot, when there are polling figures) under
    ``docs``; return the page's path."""
    if results.get("polling"):
        _report.plot_polling(results["polling"], docs / PLOT)
    page = docs / "performance.md"
    old = page.read_text(encoding="utf-8") if page.exists() else ""
    page.write_text(render(results) + _kept_sections(old), encoding="utf-8")
    return page


def _kept_sections(old: str) -> str:
    """The :data:`KEPT_SECTIONS` of the old page, each up to the next section."""
    kept = []
    for heading in KEPT_SECTIONS:
        start = old.find("\n" + heading + "\n")
        if start >= 0:
            end = old.find("\n## ", start + 1)
            kept.append(old[start : end if end >= 0 else len(old)].rstrip("\n") + "\n")
    return "".join(kept)
