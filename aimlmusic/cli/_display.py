"""Showing a catalog run: a live rich view on a terminal, plain lines anywhere else.

Both displays are ``on_event`` callbacks for :func:`aimlmusic.catalog.run_catalog` and keep
no state of their own beyond what they print: every event carries a progress snapshot.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
import unicodedata
from types import TracebackType
from typing import TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ..catalog import CatalogEvent, RunProgress, RunSummary, SongState

__all__ = ["LiveDisplay", "PlainDisplay", "print_summary", "terminal_safe"]

#: Unicode categories never written raw to a terminal: control characters (C0, DEL, C1: ESC
#: starts escape sequences, BEL rings) and lone surrogates (which no terminal encoding takes).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cs"})


def terminal_safe(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every control character (and lone surrogate) written as an escape such as
    ``\\x1b``, so text that came from a server (a generation id, an error message) cannot move
    the cursor, retitle the window or ring the bell. ``keep_newlines`` keeps line breaks of
    our own multi-line messages."""
    if text.isprintable():
        return text  # the common case: nothing to do
    out: list[str] = []
    for char in text:
        if (keep_newlines and char == "\n") or unicodedata.category(char) not in _UNSAFE_CATEGORIES:
            out.append(char)
        elif ord(char) < 0x100:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(f"\\u{ord(char):04x}")
    return "".join(out)


#: Colours of the states in the live view.
_STYLE = {
    SongState.PENDING: "dim",
    SongState.SUBMITTING: "yellow",
    SongState.SUBMITTED: "cyan",
    SongState.COMPLETED: "blue",
    SongState.DOWNLOADED: "green",
    SongState.FAILED: "red",
    SongState.AMBIGUOUS: "magenta",
}


def _silence(stream: TextIO) -> None:
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    return str(datetime.timedelta(seconds=round(seconds)))


def _credits(value: float) -> str:
    return f"{value:g}"


class PlainDisplay:
    """One line per song change (and per throttling change): for logs, pipes and CI.

    Writes plain text to ``stream`` (default: the current ``sys.stdout``), flushing every
    line so a pipe sees it as it happens.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.closed = False

    def __call__(self, event: CatalogEvent) -> None:
        if self.closed:
            return
        progress = event.progress
        if event.kind == "started":
            counts = progress.counts
            self._line(
                f"{progress.total} songs in the catalog: {progress.todo} to do, "
                f"{counts[SongState.DOWNLOADED]} already downloaded"
            )
        elif event.kind == "state" and event.state is not None:
            done = progress.counts[SongState.DOWNLOADED]
            detail = f" ({event.message})" if event.message else ""
            self._line(
                f"[{done:>{len(str(progress.total))}}/{progress.total}] "
                f"{event.state.value:<10} {event.key}{detail}"
            )
        elif event.kind == "throttled":
            self._line("throttled: the API asked us to slow down; pausing requests")
        elif event.kind == "unthrottled":
            self._line("throttling over: requests resume")
        elif event.kind == "retry" and event.message:
            self._line(f"retry      {event.key}: {event.message}")

    def _line(self, text: str) -> None:
        try:
            self.stream.write(terminal_safe(text) + "\n")
            self.stream.flush()
        except BrokenPipeError:
            # The reader went away (`| head`): the run goes on, silently, and later output
            # goes nowhere instead of failing.
            self.closed = True
            _silence(self.stream)


class LiveDisplay:
    """A live view: a bar, counts per state, credits used, ETA and a throttling indicator.

    Use as a context manager around the run; call it with events.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self._progress: RunProgress | None = None
        self._live = Live(self._render(), console=console, refresh_per_second=4, transient=False)

    def __enter__(self) -> LiveDisplay:
        self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._live.update(self._render())
        self._live.__exit__(exc_type, exc, tb)

    def __call__(self, event: CatalogEvent) -> None:
        self._progress = event.progress
        if event.kind == "state" and event.state in (SongState.FAILED, SongState.AMBIGUOUS):
            # Problems scroll above the live view so they stay on screen afterwards.
            line = f"{event.state.value}: {event.key}: {event.message or ''}"
            self._live.console.print(Text(terminal_safe(line), style="red"))
        self._live.update(self._render())

    def _render(self) -> Group:
        progress = self._progress
        if progress is None:
            return Group(Text("reading the catalog...", style="dim"))
        counts = progress.counts
        downloaded = counts[SongState.DOWNLOADED]
        head = Table.grid(padding=(0, 1))
        head.add_row(
            ProgressBar(total=max(progress.total, 1), completed=downloaded, width=40),
            Text(f"{downloaded}/{progress.total} downloaded", style="bold"),
            Text(f"elapsed {_clock(progress.elapsed)}  ETA {_clock(progress.eta)}"),
        )
        states = Text()
        for state in SongState:
            if states:
                states.append("  ")
            states.append(f"{state.value} {counts[state]}", style=_STYLE[state])
        footer = Text(f"credits used {_credits(progress.credits_used)}")
        if progress.throttled:
            footer.append("   THROTTLED: the API asked us to slow down", style="bold yellow")
        elif progress.throttled_responses:
            footer.append(f"   429s so far: {progress.throttled_responses}", style="yellow")
        return Group(head, states, footer)


def print_summary(console: Console, summary: RunSummary, *, command_hint: str) -> None:
    """What was done, where it is, and what to do about what was not."""
    out = summary.output_dir
    _say(console, f"Downloaded {summary.downloaded} of {summary.total} songs into {out}")
    _say(console, f"Manifest: {summary.manifest_path}")
    _say(console, f"Journal:  {summary.journal_path}")
    _say(console, f"Credits used: {_credits(summary.credits_used)}")
    if summary.failed:
        _say(
            console,
            f"{len(summary.failed)} failed: {_keys(summary.failed)}. Songs the API rejected are "
            f"sent again by rerunning `{command_hint}`; failed generations only with "
            "--retry-failed.",
        )
    if summary.unfinished:
        _say(
            console,
            f"{len(summary.unfinished)} unfinished (timed out or not downloaded yet): "
            f"{_keys(summary.unfinished)}. Rerun `{command_hint}` to resume them by their "
            "generation ids (no new charge).",
        )
    if summary.ambiguous:
        _say(
            console,
            f"{len(summary.ambiguous)} ambiguous (the submission may or may not have been "
            f"accepted and charged): {_keys(summary.ambiguous)}. If you find one in your "
            "account, rerun with --adopt KEY=GENERATION_ID; to send them again (this may pay "
            "twice), rerun with --resubmit-ambiguous.",
        )


def _keys(keys: tuple[str, ...], shown: int = 10) -> str:
    text = ", ".join(keys[:shown])
    return text + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def _say(console: Console, text: str) -> None:
    console.print(terminal_safe(text), markup=False, highlight=False, soft_wrap=True)
