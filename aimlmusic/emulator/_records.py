"""What the emulator lets tests and benchmarks inspect: immutable snapshots, JSON-ready.

All times are API seconds on the emulator's clock. For a song, the *lag* of a client is
``first_seen_terminal_at - completed_at``: how long the finished song waited for a poll.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from ._state import Job

__all__ = ["EmulatorStats", "JobRecord", "RequestKind", "RequestLogEntry"]

#: How requests are counted: ``submit`` (POST /v2/generate/audio), ``poll`` (GET of it),
#: ``download`` (the audio file route), ``other`` (anything else; control routes are not counted).
RequestKind = Literal["submit", "poll", "download", "other"]
REQUEST_KINDS: tuple[RequestKind, ...] = ("submit", "poll", "download", "other")


@attrs.frozen
class JobRecord:
    """One job as it stands: identity, timeline and how the client treated it.

    ``status`` is the true state (``queued``, ``generating``, ``completed`` or ``error``);
    ``polls`` counts the polls the server processed; ``first_seen_terminal_at`` is when a poll
    first delivered the finished state (a poll answered by a fault does not count);
    ``duplicate_of`` is the first job submitted with the same body by the same key, if any.
    """

    id: str
    prompt: str
    body_hash: str
    format: str
    status: str
    submitted_at: float
    started_at: float | None
    completed_at: float | None
    duration: float
    polls: int
    first_seen_terminal_at: float | None
    downloads: int
    duplicate_of: str | None

    @property
    def lag(self) -> float | None:
        """Seconds between completion and the first poll that saw it, when both happened."""
        if self.completed_at is None or self.first_seen_terminal_at is None:
            return None
        return self.first_seen_terminal_at - self.completed_at

    @classmethod
    def of(cls, job: Job) -> JobRecord:
        """Snapshot a live job."""
        return cls(
            id=job.id,
            prompt=job.prompt,
            body_hash=job.body_hash,
            format=job.spec.format,
            status=job.status,
            submitted_at=job.submitted_at,
            started_at=job.started_at,
            completed_at=job.completed_at,
            duration=job.duration,
            polls=job.polls,
            first_seen_terminal_at=job.first_seen_terminal_at,
            downloads=job.downloads,
            duplicate_of=job.duplicate_of,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (with ``lag``)."""
        return {**attrs.asdict(self), "lag": self.lag}


@attrs.frozen
class RequestLogEntry:
    """One request: when it arrived (API seconds), its kind, the status answered (``None``
    when the connection was dropped instead), the generation it concerned, and the fault
    injected into it, if any."""

    time: float
    kind: RequestKind
    status: int | None
    generation_id: str | None = None
    fault: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return attrs.asdict(self)


@attrs.frozen
class EmulatorStats:
    """Counters since the emulator started (or was reset).

    ``requests`` counts requests by kind; ``statuses`` responses by HTTP status (dropped
    connections under ``"dropped"``); ``jobs`` jobs by true status; ``duplicates`` lists each
    request body submitted more than once by the same key with all its generation ids, and
    ``duplicate_submissions`` counts the extra (second, third...) submissions.
    """

    now: float
    requests: dict[str, int]
    statuses: dict[str, int]
    rate_limited: int
    server_errors: int
    dropped: int
    faults: dict[str, int]
    jobs: dict[str, int]
    jobs_submitted: int
    duplicate_submissions: int
    duplicates: list[dict[str, Any]]

    @property
    def total_requests(self) -> int:
        """All counted requests (submit + poll + download + other)."""
        return sum(self.requests.values())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``GET /_emulator/stats`` returns)."""
        return {**attrs.asdict(self), "total_requests": self.total_requests}
