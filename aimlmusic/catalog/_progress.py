"""What a catalog run reports while it works, and what it returns when it ends.

The runner calls one callback with :class:`CatalogEvent` objects; each carries a
:class:`RunProgress` snapshot, so a display (the CLI's live view, a web page, a log) needs no
state of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import attrs

from ._journal import SongState

__all__ = ["CatalogEvent", "EventKind", "RunProgress", "RunSummary"]

#: ``started``: the run begins (after validation and recovery); ``state``: a song changed
#: state; ``throttled``/``unthrottled``: the API started/stopped asking us to slow down;
#: ``retry``: a request is being retried; ``tick``: nothing happened, time passed (about
#: twice a second, for ETA displays); ``finished``: the run ended.
EventKind = Literal["started", "state", "throttled", "unthrottled", "retry", "tick", "finished"]


def _frozen_counts(value: Mapping[SongState, int]) -> Mapping[SongState, int]:
    return MappingProxyType({state: int(value.get(state, 0)) for state in SongState})


@attrs.frozen
class RunProgress:
    """A snapshot of a run.

    ``counts`` has every :class:`SongState`; ``todo`` is how many songs this run set out to
    finish and ``done`` how many of them it has settled (downloaded, failed or ambiguous);
    ``elapsed`` is real seconds since the run started; ``throttled`` is true while the API is
    making us wait (a 429 pause) and ``throttled_responses`` counts the 429s of this run.
    """

    total: int
    counts: Mapping[SongState, int] = attrs.field(converter=_frozen_counts)
    todo: int = 0
    done: int = 0
    credits_used: float = 0.0
    throttled: bool = False
    throttled_responses: int = 0
    elapsed: float = 0.0

    @property
    def eta(self) -> float | None:
        """Estimated real seconds left, from this run's pace so far (``None`` until one song
        has settled)."""
        if self.done <= 0 or self.elapsed <= 0:
            return None
        return max(0.0, self.elapsed / self.done * (self.todo - self.done))


@attrs.frozen
class CatalogEvent:
    """Something that happened in a run: ``kind`` says what; ``key``/``title``/``state`` name
    the song for song events; ``message`` gives detail (an error, a file name)."""

    kind: EventKind
    progress: RunProgress
    key: str | None = None
    title: str | None = None
    state: SongState | None = None
    message: str | None = None


@attrs.frozen
class RunSummary:
    """How a run (or the output directory, read afterwards) stands.

    ``counts`` has every state. ``failed``, ``ambiguous`` and ``unfinished`` list the keys
    that need attention; ``unfinished`` are songs with a generation id that were not
    downloaded yet (the generation timed out, or its download failed): rerunning resumes them.
    """

    output_dir: Path
    journal_path: Path | str
    manifest_path: Path
    total: int
    counts: Mapping[SongState, int] = attrs.field(converter=_frozen_counts)
    credits_used: float = 0.0
    failed: tuple[str, ...] = ()
    ambiguous: tuple[str, ...] = ()
    unfinished: tuple[str, ...] = ()
    interrupted: bool = False

    @property
    def downloaded(self) -> int:
        """How many songs are downloaded."""
        return self.counts[SongState.DOWNLOADED]

    @property
    def all_done(self) -> bool:
        """True when every song of the catalog is downloaded."""
        return self.total > 0 and self.downloaded == self.total
