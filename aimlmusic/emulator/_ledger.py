"""Bookkeeping for inspection: requests by kind and status, faults served, the request log,
and submissions that repeat an earlier body. Everything is O(1) per request."""

from __future__ import annotations

from typing import Any

from ._records import REQUEST_KINDS, RequestKind, RequestLogEntry
from ._state import Job

__all__ = ["Ledger"]

_LogRow = tuple[float, RequestKind, "int | None", "str | None", "str | None"]


class Ledger:
    """What happened, counted as it happens (not thread-safe: the emulator holds its lock)."""

    def __init__(self, *, keep_log: bool) -> None:
        self.keep_log = keep_log
        self.requests: dict[str, int] = dict.fromkeys(REQUEST_KINDS, 0)
        self.statuses: dict[str, int] = {}
        self.faults: dict[str, int] = {}
        self.duplicate_submissions = 0
        self._log: list[_LogRow] = []
        # (owner, body hash) -> generation ids; and the keys seen more than once, in order.
        self._bodies: dict[tuple[str, str], list[str]] = {}
        self._repeated: dict[tuple[str, str], None] = {}

    def record(
        self,
        now: float,
        kind: RequestKind,
        status: int | None,
        generation_id: str | None,
        faults: frozenset[str],
    ) -> None:
        """Count one request; ``status`` ``None`` means the connection was dropped."""
        self.requests[kind] += 1
        key = "dropped" if status is None else str(status)
        self.statuses[key] = self.statuses.get(key, 0) + 1
        for fault in faults:
            self.faults[fault] = self.faults.get(fault, 0) + 1
        if self.keep_log:
            fault_names = ",".join(sorted(faults)) or None
            self._log.append((now, kind, status, generation_id, fault_names))

    def note_submission(self, job: Job) -> None:
        """Remember ``job``'s body; mark it as a duplicate if its key sent that body before."""
        key = (job.owner, job.body_hash)
        same_body = self._bodies.setdefault(key, [])
        if same_body:
            job.duplicate_of = same_body[0]
            self.duplicate_submissions += 1
            self._repeated[key] = None
        same_body.append(job.id)

    def duplicates(self) -> list[dict[str, Any]]:
        """Each body submitted more than once by one key, with all its generation ids."""
        return [
            {"body_hash": key[1], "generation_ids": list(self._bodies[key])}
            for key in self._repeated
        ]

    def log(self) -> list[RequestLogEntry]:
        """The request log as records."""
        return [RequestLogEntry(*row) for row in self._log]
