"""The bundled emulator, set up for the polling benchmark, and what we read back from it."""

from __future__ import annotations

import attrs
from workloads import Workload

from aimlmusic.emulator import Emulator, EmulatorConfig

__all__ = ["JobFacts", "RequestCounts", "make_emulator", "read_jobs", "request_counts"]


@attrs.frozen
class JobFacts:
    """One song as the server saw it, in API seconds."""

    submitted_at: float
    started_at: float | None
    completed_at: float | None
    seen_terminal_at: float | None
    duration: float | None
    polls: int


@attrs.frozen
class RequestCounts:
    """Requests the server counted: all API requests, the polls among them, the 429s."""

    requests: int
    polls: int
    throttled: int


def make_emulator(
    workload: Workload,
    *,
    time_scale: float,
    seed: int,
    requests_per_minute: int,
    max_generating: int,
) -> Emulator:
    """An emulator enforcing the account limits (with the workload's token bucket, if it has
    one), drawing generating times from ``workload``."""
    return Emulator(
        EmulatorConfig(
            time_scale=time_scale,
            seed=seed,
            durations=workload,
            requests_per_minute=requests_per_minute,
            burst=workload.burst,
            max_concurrent=max_generating,
        )
    )


def read_jobs(emulator: Emulator) -> list[JobFacts]:
    """Every job's timeline, in submission order."""
    return [
        JobFacts(
            submitted_at=job.submitted_at,
            started_at=job.started_at,
            completed_at=job.completed_at,
            seen_terminal_at=job.first_seen_terminal_at,
            duration=job.duration,
            polls=job.polls,
        )
        for job in emulator.jobs.values()
    ]


def request_counts(emulator: Emulator) -> RequestCounts:
    """What the client spent of the account's request budget."""
    stats = emulator.stats()
    return RequestCounts(
        requests=stats.requests["submit"] + stats.requests["poll"],
        polls=stats.requests["poll"],
        throttled=stats.rate_limited,
    )
