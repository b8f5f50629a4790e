"""The emulated service: routing, auth, limits, faults, jobs and inspection.

:class:`Emulator` turns one :class:`~._http.HttpRequest` into one :class:`~._http.Reply`
synchronously, under a lock, so it serves an in-process ASGI transport and a threaded socket
server alike; :mod:`._app` adapts it to ASGI.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import threading
import uuid
from collections.abc import Callable
from typing import Any

import attrs

from .. import _limits
from .._clock import Clock
from ._app import EmulatorApp
from ._audio import AudioRenderer, AudioSpec, MissingEncoderError
from ._config import EmulatorConfig, FaultKind, ThrottleStorm
from ._durations import draw
from ._faults import FaultPlanner, Route
from ._http import (
    HttpRequest,
    Reply,
    api_error,
    encode_json,
    gateway_error,
    json_reply,
    store_error,
)
from ._ledger import Ledger
from ._records import EmulatorStats, JobRecord, RequestKind, RequestLogEntry
from ._state import Account, Job
from ._store import FILES_PREFIX, FileStore
from ._time import EmulatorTime
from ._validation import validate_submission

__all__ = ["Emulator"]

CONTROL_PREFIX = "/_emulator/"
_API_METHODS = "GET, POST"
_API_KINDS: dict[str, RequestKind] = {"POST": "submit", "GET": "poll"}
_FAILURES = (
    ("GenerationError", "The model could not generate audio for this request. Try again."),
    ("ContentModerationError", "The prompt or lyrics were rejected by the content filter."),
)


@attrs.frozen
class _Outcome:
    """A reply plus what the request log needs to know about it."""

    reply: Reply
    generation_id: str | None = None
    faults: frozenset[str] = frozenset()


def _fingerprint(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _body_hash(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _retry_after_headers(seconds: float | None) -> tuple[tuple[str, str], ...]:
    if seconds is None:
        return ()
    # Retry-After only takes whole seconds; retry-after-ms keeps the precision.
    return (
        ("Retry-After", str(max(0, math.ceil(seconds)))),
        ("retry-after-ms", str(max(0, math.ceil(seconds * 1000)))),
    )


class Emulator:
    """A faithful local stand-in for the AI/ML API music endpoint.

    ``emulator.app`` is the ASGI application (serve it in process with
    ``httpx.ASGITransport(app=emulator.app)`` or over a socket with
    :func:`~aimlmusic.emulator.serving`); ``emulator.clock`` is the matching
    :class:`~aimlmusic.Clock` to give the client so both agree on compressed time. The state
    advances lazily from the clock at each request: no background task runs.

    ``clock``, if given, replaces the built-in one: a function returning the current API time
    in seconds (``time_scale`` then only converts delays into real sleeps), or a
    :class:`~aimlmusic.Clock` such as :class:`~aimlmusic.testing.VirtualClock`, which
    ``emulator.clock`` then is.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        clock: Callable[[], float] | Clock | None = None,
    ) -> None:
        self.config = config if config is not None else EmulatorConfig()
        self._time = EmulatorTime(self.config.time_scale, clock)
        self._lock = threading.RLock()
        self._store = FileStore(AudioRenderer(self.config.audio_seconds), self.config.url_ttl)
        self.app = EmulatorApp(self)
        self._reset_state()

    def __repr__(self) -> str:
        return f"Emulator(time_scale={self.config.time_scale:g}, seed={self.config.seed})"

    # ------------------------------------------------------------------------ time

    def now(self) -> float:
        """The current API time in seconds (starts near 0 with the built-in clock)."""
        return self._time.now()

    @property
    def clock(self) -> Clock:
        """A client-side :class:`~aimlmusic.Clock` running on the emulator's time."""
        return self._time.clock()

    # ------------------------------------------------------------------------ control

    def reset(self) -> None:
        """Forget every job, counter, log entry, injected fault and added storm; re-seed.
        The clock keeps running (clients hold it)."""
        with self._lock:
            self._reset_state()

    def _reset_state(self) -> None:
        seed = self.config.seed
        self._ids = random.Random(f"{seed}:ids")
        self._request_ids = random.Random(f"{seed}:request-ids")
        self._timing = random.Random(f"{seed}:timing")
        self._planner = FaultPlanner(
            self.config.faults,
            random.Random(f"{seed}:faults"),
            random.Random(f"{seed}:download-faults"),
        )
        self._accounts: dict[str, Account] = {}
        self._jobs: dict[str, Job] = {}
        self._store.clear()
        self._ledger = Ledger(keep_log=self.config.keep_request_log)

    def throttle(self, start: float, end: float, *, retry_after: float | None = None) -> None:
        """Answer every API request with 429 from ``start`` to ``end`` (API seconds on
        :meth:`now`), with ``Retry-After: retry_after`` if given."""
        storm = ThrottleStorm(start, end, retry_after)
        with self._lock:
            self._planner.add_storm(storm)

    def inject(self, fault: FaultKind, *, route: Route = "any", count: int = 1) -> None:
        """Force ``fault`` (see :class:`~aimlmusic.emulator.Faults`, plus
        ``"truncate_download"``) on the next ``count`` requests of ``route`` (``"submit"``,
        ``"poll"``, ``"download"`` or ``"any"``) that pass auth, limits and validation."""
        with self._lock:
            self._planner.inject(fault, route, count)

    # ------------------------------------------------------------------------ inspection

    def stats(self) -> EmulatorStats:
        """Counters and duplicate submissions, as of now."""
        with self._lock:
            now = self.now()
            jobs = dict.fromkeys(("queued", "generating", "completed", "error"), 0)
            for account in self._accounts.values():
                account.advance(now)
                for status, count in account.counts.items():
                    jobs[status] += count
            ledger = self._ledger
            statuses = ledger.statuses
            return EmulatorStats(
                now=now,
                requests=dict(ledger.requests),
                statuses=dict(statuses),
                rate_limited=statuses.get("429", 0),
                server_errors=sum(n for code, n in statuses.items() if code.startswith("5")),
                dropped=statuses.get("dropped", 0),
                faults=dict(ledger.faults),
                jobs=jobs,
                jobs_submitted=len(self._jobs),
                duplicate_submissions=ledger.duplicate_submissions,
                duplicates=ledger.duplicates(),
            )

    @property
    def jobs(self) -> dict[str, JobRecord]:
        """A snapshot of every job by id, in submission order."""
        with self._lock:
            self._advance_all()
            return {job_id: JobRecord.of(job) for job_id, job in self._jobs.items()}

    def job(self, generation_id: str) -> JobRecord:
        """A snapshot of one job (``KeyError`` if unknown)."""
        with self._lock:
            self._advance_all()
            return JobRecord.of(self._jobs[generation_id])

    @property
    def request_log(self) -> list[RequestLogEntry]:
        """Every counted request in arrival order (empty if ``keep_request_log`` is off)."""
        with self._lock:
            return self._ledger.log()

    def _advance_all(self) -> None:
        now = self.now()
        for account in self._accounts.values():
            account.advance(now)

    # ------------------------------------------------------------------------ requests

    def handle(self, request: HttpRequest) -> Reply:
        """Answer one request (called by the ASGI app; thread-safe)."""
        path, method = request.path, request.method
        if path.startswith(CONTROL_PREFIX):
            return self._control(request)
        if path == _limits.GENERATE_PATH:
            kind = _API_KINDS.get(method, "other")
        elif path.startswith(FILES_PREFIX) and method in ("GET", "HEAD"):
            kind = "download"
        else:
            kind = "other"
        with self._lock:
            now = self.now()
            if kind == "submit":
                outcome = self._submit(request, now)
            elif kind == "poll":
                outcome = self._poll(request, now)
            elif kind == "download":
                outcome = self._download(request, now)
            else:
                outcome = _Outcome(self._other(request, now))
            reply = outcome.reply
            status = None if reply.action == "drop" else reply.status
            self._ledger.record(now, kind, status, outcome.generation_id, outcome.faults)
        return outcome.reply

    def _request_id(self) -> str:
        return str(uuid.UUID(int=self._request_ids.getrandbits(128), version=4))

    def _error(
        self, status: int, message: str, request: HttpRequest, now: float, **extra: Any
    ) -> Reply:
        return api_error(
            status,
            message,
            path=request.path,
            request_id=self._request_id(),
            timestamp=self._time.timestamp(now),
            **extra,
        )

    def _other(self, request: HttpRequest, now: float) -> Reply:
        if request.path == _limits.GENERATE_PATH:
            return self._error(
                405, "Method Not Allowed", request, now, headers=(("Allow", _API_METHODS),)
            )
        if request.path.startswith(FILES_PREFIX):
            return self._store.method_not_allowed(self._request_id())
        return self._error(404, f"Cannot {request.method} {request.path}", request, now)

    def _authenticate(self, request: HttpRequest, now: float) -> str | Reply:
        """The caller's API key, or the 401 to answer."""
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        key = key.strip()
        config = self.config
        if scheme.lower() != "bearer" or not key:
            return self._error(
                401, "Missing API key: send 'Authorization: Bearer <key>'", request, now
            )
        known = (
            key in config.api_keys
            or key in config.no_credit_keys
            or (config.accept_any_key and _limits.api_key_problem(key) is None)
        )
        if not known:
            return self._error(401, "Invalid API key", request, now)
        return key

    def _admit(self, request: HttpRequest, now: float) -> tuple[str, Account] | Reply:
        """The caller's key and account, brought up to ``now``; or the 401 or 429 to
        answer (an API request is authenticated, then counted against its account)."""
        key = self._authenticate(request, now)
        if isinstance(key, Reply):
            return key
        account = self._account(key)
        account.advance(now)
        throttled = self._throttled(account, request, now)
        return (key, account) if throttled is None else throttled

    def _account(self, key: str) -> Account:
        owner = _fingerprint(key)
        account = self._accounts.get(owner)
        if account is None:
            config = self.config
            account = self._accounts[owner] = Account(
                config.requests_per_minute, config.max_concurrent, config.burst
            )
        return account

    def _throttled(self, account: Account, request: HttpRequest, now: float) -> Reply | None:
        """The 429 to answer if a storm rages or the request window is full."""
        storm = self._planner.storm_at(now)
        if storm is not None:
            headers = _retry_after_headers(storm.retry_after)
        elif account.window is not None:
            wait = account.window.admit(now)
            if wait is None:
                return None
            setting = self.config.retry_after
            headers = _retry_after_headers(wait if setting == "auto" else setting)
        else:
            return None
        return self._error(
            429, "ThrottlerException: Too Many Requests", request, now, headers=headers
        )

    def _server_error(self, request: HttpRequest, now: float) -> Reply:
        status = self._planner.server_error_status()
        if status == 500:
            return self._error(500, "Internal server error", request, now)
        return gateway_error(status)

    def _before_faults(
        self, faults: frozenset[str], request: HttpRequest, now: float
    ) -> tuple[Reply, str] | None:
        """The reply of a fault that strikes before any work, and its name."""
        if "drop_before" in faults:
            return Reply(0, action="drop"), "drop_before"
        if "error_before" in faults:
            return self._server_error(request, now), "error_before"
        return None

    def _after_faults(
        self, faults: frozenset[str], body: dict[str, Any], request: HttpRequest, now: float
    ) -> tuple[Reply, str | None]:
        """The reply to a request whose work is done: ``body``, or what a fault made of it."""
        if "drop_after" in faults:
            return Reply(0, action="drop"), "drop_after"
        if "error_after" in faults:
            return self._server_error(request, now), "error_after"
        if "malformed_json" in faults:
            text = encode_json(body)
            cut = attrs.evolve(json_reply(200, None), body=text[: max(1, len(text) // 2)])
            return cut, "malformed_json"
        return json_reply(200, body), None

    def _finish(
        self,
        reply: Reply,
        generation_id: str | None,
        drawn: frozenset[str],
        *applied: str | None,
    ) -> _Outcome:
        """Apply a drawn ``delay`` (whatever the reply) and record the faults that struck."""
        struck = {name for name in applied if name is not None}
        if "delay" in drawn:
            delay = self._time.real_seconds(self.config.faults.delay_seconds)
            reply = attrs.evolve(reply, delay=delay)
            struck.add("delay")
        return _Outcome(reply, generation_id, frozenset(struck))

    # ------------------------------------------------------------------------ submit

    def _submit(self, request: HttpRequest, now: float) -> _Outcome:
        admitted = self._admit(request, now)
        if isinstance(admitted, Reply):
            return _Outcome(admitted)
        key, account = admitted
        body, problems = validate_submission(request.headers.get("content-type"), request.body)
        if problems:
            return _Outcome(
                self._error(400, "Body validation error!", request, now, errors=problems)
            )
        if key in self.config.no_credit_keys:
            return _Outcome(
                self._error(
                    403, "Insufficient credits: top up your balance to continue", request, now
                )
            )
        faults = self._planner.draw("submit")
        early = self._before_faults(faults, request, now)
        if early is not None:
            return self._finish(early[0], None, faults, early[1])
        job = self._create_job(key, body, now, faults)
        account.submit(job)
        # The service always answers a submission with "queued", even if a slot was free.
        response = {"id": job.id, "status": "waiting" if job.shows_waiting else "queued"}
        reply, struck = self._after_faults(faults, response, request, now)
        job_faults = [name for name in ("generation_failure", "waiting_status") if name in faults]
        return self._finish(reply, job.id, faults, struck, *job_faults)

    def _create_job(
        self, key: str, body: dict[str, Any], now: float, faults: frozenset[str]
    ) -> Job:
        config = self.config
        setting = body.get("audio_setting") or {}
        spec = AudioSpec(
            format=setting.get("format", "mp3"),
            sample_rate=setting.get("sample_rate", 44100),
            bitrate=setting.get("bitrate", 128000),
        )
        ids = self._ids
        # A fresh random uuid4, not a seeded one: ids must not repeat across emulator runs
        # (a journal or a user holding an id from an earlier run must not find another song).
        job_id = f"{uuid.uuid4()}:{body['model']}"
        owner = _fingerprint(key)
        body_hash = _body_hash(body)
        queue_delay = (
            draw(config.queue_delay, self._timing) if config.queue_delay is not None else 0.0
        )
        job = Job(
            id=job_id,
            owner=owner,
            prompt=body["prompt"],
            body_hash=body_hash,
            spec=spec,
            file_id=f"{ids.getrandbits(96):024x}",
            trace_id=f"{ids.getrandbits(128):032x}",
            submitted_at=now,
            queue_delay=queue_delay,
            duration=draw(config.durations, self._timing),
            fails="generation_failure" in faults,
            shows_waiting="waiting_status" in faults,
        )
        self._jobs[job.id] = job
        self._store.add(job)
        self._ledger.note_submission(job)
        return job

    # ------------------------------------------------------------------------ poll

    def _poll(self, request: HttpRequest, now: float) -> _Outcome:
        admitted = self._admit(request, now)
        if isinstance(admitted, Reply):
            return _Outcome(admitted)
        key, _ = admitted
        generation_id = request.query_value("generation_id")
        if generation_id is None:
            problems = [{"field": "generation_id", "message": "generation_id is required"}]
            return _Outcome(
                self._error(400, "Query validation error!", request, now, errors=problems)
            )
        faults = self._planner.draw("poll")
        early = self._before_faults(faults, request, now)
        if early is not None:
            return self._finish(early[0], generation_id, faults, early[1])
        job = self._jobs.get(generation_id)
        if job is None or job.owner != _fingerprint(key):
            # Another account's job is as invisible as one that never existed.
            not_found = self._error(404, "Generation not found", request, now)
            return self._finish(not_found, generation_id, faults)
        job.polls += 1
        try:
            response = self._generation_body(job, request, now)
        except MissingEncoderError as exc:
            return _Outcome(self._error(500, str(exc), request, now), job.id)
        reply, struck = self._after_faults(faults, response, request, now)
        if job.is_terminal and job.first_seen_terminal_at is None and struck is None:
            job.first_seen_terminal_at = now
        return self._finish(reply, job.id, faults, struck)

    def _generation_body(self, job: Job, request: HttpRequest, now: float) -> dict[str, Any]:
        config = self.config
        body: dict[str, Any] = {"id": job.id, "status": job.reported_status}
        if job.status == "completed":
            facts = self._store.facts(job)
            url = self._store.presigned_url(job, request.base_url, self._time.unix(now))
            body["audio_file"] = {"url": url}
            if config.include_usage:
                body["meta"] = {"usage": {"credits_used": config.credits_per_song}}
            if config.include_extra_info:
                body["extra_info"] = facts.extra_info()
        elif job.status == "error":
            name, message = _FAILURES[int(job.trace_id[:8], 16) % len(_FAILURES)]
            body["error"] = {"name": name, "message": message}
        if config.include_trace_id and job.is_terminal:
            body["trace_id"] = job.trace_id
        return body

    # ------------------------------------------------------------------------ download

    def _download(self, request: HttpRequest, now: float) -> _Outcome:
        request_id = self._request_id()
        job = self._store.authorize(request, self._time.unix(now), request_id)
        if isinstance(job, Reply):
            return _Outcome(job)
        faults = self._planner.draw("download")
        if "drop_before" in faults:
            return self._finish(Reply(0, action="drop"), job.id, faults, "drop_before")
        if "error_before" in faults:
            reply = store_error(
                503, "ServiceUnavailable", "Please reduce your request rate.", request_id=request_id
            )
            return self._finish(reply, job.id, faults, "error_before")
        job.downloads += 1
        try:
            reply = self._store.serve(job, request)
        except MissingEncoderError as exc:
            return _Outcome(
                store_error(500, "InternalError", str(exc), request_id=request_id), job.id
            )
        if "truncate_download" in faults and reply.status in (200, 206) and not reply.head_only:
            return self._finish(
                attrs.evolve(reply, action="truncate"), job.id, faults, "truncate_download"
            )
        return self._finish(reply, job.id, faults)

    # ------------------------------------------------------------------------ control routes

    def _control(self, request: HttpRequest) -> Reply:
        route = request.path[len(CONTROL_PREFIX) :]
        if route == "stats" and request.method == "GET":
            payload = self.stats().to_dict()
            if request.query_value("jobs") in ("1", "true"):
                payload["job_records"] = [record.to_dict() for record in self.jobs.values()]
            if request.query_value("log") in ("1", "true"):
                payload["request_log"] = [entry.to_dict() for entry in self.request_log]
            return json_reply(200, payload)
        if route == "reset" and request.method == "POST":
            self.reset()
            return json_reply(200, {"reset": True})
        if route == "health" and request.method == "GET":
            return json_reply(200, {"status": "ok", "now": self.now()})
        if route == "info" and request.method == "GET":
            # Read by AsyncMusicClient pointed at a loopback URL without a clock, to run
            # its clock at this speed.
            return json_reply(
                200, {"emulator": "aimlmusic", "time_scale": self._time.scale, "now": self.now()}
            )
        if route in ("stats", "health", "reset", "info"):
            allow = "POST" if route == "reset" else "GET"
            return json_reply(405, {"message": "Method Not Allowed"}, ("Allow", allow))
        return json_reply(404, {"message": f"Cannot {request.method} {request.path}"})
