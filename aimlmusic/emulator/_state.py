"""Jobs and their state machine: ``queued`` -> ``generating`` -> ``completed`` | ``error``.

Nothing runs in the background. Each job's future is decided when it is submitted (its
queue delay, its generating time, whether it fails), and :meth:`Account.advance` replays the
events that happened up to "now" in time order whenever a request arrives: a finished song
frees its slot at its exact finishing time and the next queued song starts at that very
moment, however long ago it was. One heap of events per account keeps each request
O(log n) however many jobs are in flight.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from typing import Literal

import attrs

from ._audio import AudioSpec
from ._ratelimit import SlidingWindow, TokenBucket

__all__ = ["Account", "Job", "JobStatus"]

JobStatus = Literal["queued", "generating", "completed", "error"]

# Event kinds, in the order events at the same instant are applied: a finishing song frees
# its slot before a song that became ready at that instant looks for one.
_FINISH = 0
_READY = 1


@attrs.define(eq=False)
class Job:
    """One generation as the emulator tracks it (mutable; the public view is ``JobRecord``)."""

    id: str
    owner: str
    prompt: str
    body_hash: str
    spec: AudioSpec
    file_id: str
    trace_id: str
    submitted_at: float
    queue_delay: float
    duration: float
    fails: bool
    shows_waiting: bool
    duplicate_of: str | None = None
    status: JobStatus = "queued"
    started_at: float | None = None
    completed_at: float | None = None
    polls: int = 0
    first_seen_terminal_at: float | None = None
    downloads: int = 0

    @property
    def is_terminal(self) -> bool:
        """True once the job completed or failed."""
        return self.status in ("completed", "error")

    @property
    def reported_status(self) -> str:
        """The status the API shows: the undocumented ``waiting`` for a queued job so marked."""
        if self.status == "queued" and self.shows_waiting:
            return "waiting"
        return self.status


class Account:
    """What belongs to one API key: its request window, its generation slots and its jobs'
    timeline. ``counts`` tracks how many jobs are in each status without scanning."""

    def __init__(
        self,
        requests_per_minute: int | None,
        max_concurrent: int | None,
        burst: int | None = None,
    ) -> None:
        self.window: SlidingWindow | TokenBucket | None = None
        if requests_per_minute and burst:
            self.window = TokenBucket(requests_per_minute, burst)
        elif requests_per_minute:
            self.window = SlidingWindow(requests_per_minute)
        self.max_concurrent = max_concurrent
        self.generating = 0
        self.counts: dict[str, int] = {"queued": 0, "generating": 0, "completed": 0, "error": 0}
        self._events: list[tuple[float, int, int, Job]] = []
        self._ready: deque[Job] = deque()
        self._sequence = itertools.count()

    def submit(self, job: Job) -> None:
        """Accept ``job`` at ``job.submitted_at`` (call :meth:`advance` to that time first)."""
        self.counts["queued"] += 1
        if job.queue_delay > 0:
            self._push(job.submitted_at + job.queue_delay, _READY, job)
        else:
            self._ready.append(job)
            self._start_ready(job.submitted_at)

    def advance(self, now: float) -> None:
        """Apply every event due at or before ``now``, in time order."""
        events = self._events
        while events and events[0][0] <= now:
            at, kind, _, job = heapq.heappop(events)
            if kind == _FINISH:
                self._finish(job, at)
            else:
                self._ready.append(job)
            self._start_ready(at)

    def next_event_at(self) -> float | None:
        """When the next state change is due (``None`` when nothing is pending)."""
        return self._events[0][0] if self._events else None

    def _push(self, at: float, kind: int, job: Job) -> None:
        heapq.heappush(self._events, (at, kind, next(self._sequence), job))

    def _start_ready(self, at: float) -> None:
        limit = self.max_concurrent
        while self._ready and (limit is None or self.generating < limit):
            job = self._ready.popleft()
            job.status = "generating"
            job.started_at = at
            self.generating += 1
            self.counts["queued"] -= 1
            self.counts["generating"] += 1
            self._push(at + job.duration, _FINISH, job)

    def _finish(self, job: Job, at: float) -> None:
        job.status = "error" if job.fails else "completed"
        job.completed_at = at
        self.generating -= 1
        self.counts["generating"] -= 1
        self.counts[job.status] += 1
