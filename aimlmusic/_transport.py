"""The HTTP layer: the only module (with ``_download``) that touches httpx.

One :class:`Transport` per client sends the two API calls, ``POST`` (submit) and ``GET``
(poll) on ``/v2/generate/audio``, with bearer auth, timeouts, the shared request budget,
retries, and the mapping of every failure onto the exception tree of ``_errors``.

What may be retried is decided by the method, because a submission costs credits:

* a ``GET`` is safe to repeat: it is retried on connection errors, timeouts, 429 and 5xx;
* a ``POST`` is retried only when it provably never reached the server (the connection was
  never established) or was refused with 429. Any other failure after sending (a read
  timeout, a dropped connection, a 5xx, a 2xx we cannot read) may have created a paid
  generation, so it raises :class:`~aimlmusic.AmbiguousSubmissionError` and is never resent.

A 429 is reported to the :class:`~aimlmusic._ratelimit.RequestBudget`, which pauses the
whole client; the retry then simply waits in ``budget.acquire`` like every other request.
Exceptions are raised outside httpx's ``except`` blocks so no httpx exception (whose request
object holds the ``Authorization`` header) is chained to ours, and every piece of text that
came from the server is passed through the redactor before it is used (decoded JSON string by
string, after decoding, so JSON escapes cannot hide an echoed key).

Answers are read as a stream and decoded by ``_bodies`` under a size cap. When this transport
owns the network, each ``POST`` goes out on a fresh connection of its own pool: a pooled
connection that the server closes while idle can swallow a request just written to it, and
for a POST that failure could not be told from one that was received, so it would be
ambiguous. ``GET`` keeps the pooled connections (a lost poll is simply retried).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any, Literal, Protocol

import anyio
import attrs
import httpx

from . import _limits
from ._bodies import ACCEPTED_ENCODINGS, BodyProblem, SlowBody, read_body
from ._clock import Clock, finished_by
from ._config import RetryPolicy, SizeLimits, Timeout
from ._converter import (
    decode_json,
    request_to_wire,
    structure_generation,
    unsendable_id_problem,
)
from ._errors import (
    AimlMusicError,
    AmbiguousSubmissionError,
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestValidationError,
    ResponseValidationError,
    SendingRefused,
    ServerError,
    SubmissionTimeoutError,
)
from ._models import Generation, SongRequest
from ._ratelimit import Budget, RequestKind
from ._redact import Redactor, Secret
from ._retry import capped, parse_retry_after, retry_delay
from ._version import __version__

__all__ = ["USER_AGENT", "RequestObserver", "Transport"]

logger = logging.getLogger("aimlmusic")
#: Each request's outcome, on its own logger so that a CLI's -v can show just these.
request_logger = logging.getLogger("aimlmusic.http")


class SubmissionWatch(Protocol):
    """Told of the submissions made in one task (the blocking client's Ctrl-C waits for a
    submission on its way: cut, it could be paid for and leave no id to find it by)."""

    def on_its_way(self, leaving: bool) -> None:
        """A POST of the task is on its way (True), or no longer (False). Raising
        :class:`SendingRefused` for True keeps that POST from leaving."""
        ...

    def submitted(self, generation_id: str) -> None:
        """A submission of the task was answered with ``generation_id``."""
        ...


#: The watch of the task running now, if any (the blocking client sets it in each call's).
SUBMISSION_WATCH: ContextVar[SubmissionWatch | None] = ContextVar(
    "aimlmusic_submission_watch", default=None
)


class _PostWatch:
    """Whether one POST attempt is on its way, told to the task's :class:`SubmissionWatch`
    on each change."""

    __slots__ = ("_on", "_watch")

    def __init__(self, watch: SubmissionWatch) -> None:
        self._watch = watch
        self._on = False

    def set(self, on: bool) -> None:
        """Tell the watch of a change; a :class:`SendingRefused` from it (the task is
        stopping) keeps the POST from leaving, and it stays off."""
        if on != self._on:
            self._watch.on_its_way(on)
            self._on = on


@contextlib.contextmanager
def _watched(method: str) -> Iterator[_PostWatch | None]:
    """The watch of one attempt, if it is a POST and its task has a
    :data:`SUBMISSION_WATCH`; off again when the block ends."""
    watch = SUBMISSION_WATCH.get() if method == "POST" else None
    if watch is None:
        yield None
        return
    post = _PostWatch(watch)
    try:
        yield post
    finally:
        post.set(False)


USER_AGENT = f"aimlmusic/{__version__}"

#: How much of an error body is kept in an exception (HTML error pages can be large).
ERROR_BODY_EXCERPT_CHARS = 500
#: How much of a non-JSON error body becomes the exception's one-line message.
ERROR_MESSAGE_CHARS = 200

# The connection was never established, so the request cannot have reached the server.
_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

#: Passed as ``auth=`` on every request: a caller's ``http_client`` may carry an ``auth=``
#: of its own, which must neither replace our bearer key nor travel to a storage host.
NO_AUTH = httpx.Auth()

#: The POST-only pool keeps no idle connection, so every submission opens a fresh one.
_FRESH_CONNECTIONS = httpx.Limits(max_keepalive_connections=0)
#: The longest URL httpx sends (its ``MAX_URL_LENGTH``, checked only when it parses a string).
MAX_URL_CHARS = 65_536
#: Request URLs kept parsed, shared by the clients of a process: a song is polled several
#: times while it generates, and httpx's parse of its URL costs as much CPU as the rest of
#: the client's own work on a poll. 256 is the default 20 songs in flight many times over,
#: at about 0.2 MB for ids like the API's (at most about 1.5 MB, for ids of KEPT_ID_CHARS
#: characters that all need percent-encoding).
PARSED_URLS_KEPT = 256
#: Longer ids (none the API sends: its ids are a UUID and the model name) are parsed every
#: time rather than kept, so that odd answers cannot fill the memory PARSED_URLS_KEPT bounds.
KEPT_ID_CHARS = 200

#: Content-Type values whose charset is kept, read once each: httpx parses the header with
#: the email package on every answer (about 5 µs), and a server sends one or two values.
#: Past this many (the first kept, for the process's life), a value is parsed every time.
CHARSETS_KEPT = 16
#: Longer values (a JSON answer's is about 30 characters) are parsed every time rather than
#: kept, so that odd answers cannot pin more than CHARSETS_KEPT short strings.
KEPT_CONTENT_TYPE_CHARS = 100
#: Content-Type value -> the charset it names (None: none), shared by every client.
_charsets: dict[str, str | None] = {}

_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: RateLimitError,
}

# What went wrong with one attempt, as far as retrying is concerned.
FailureKind = Literal[
    "never_sent",  # the connection was never established
    "maybe_sent",  # a transport failure after the request may have been sent
    "throttled",  # 429
    "server_error",  # 5xx
    "rejected",  # a 4xx that refuses the request as sent (_REFUSALS): nothing was created
    "try_again",  # 408, 409, 425: the same request again later; a POST may have created one
    "unclear",  # any other non-2xx (a redirect, say): a POST may have created one
    "bad_response",  # a 2xx whose body we could not understand
    "unusable",  # retrying cannot help (an unsupported URL scheme...)
    "unusable_answer",  # a readable answer naming a generation we cannot use: never resent
]
_GET_RETRIES: frozenset[FailureKind] = frozenset(
    {"never_sent", "maybe_sent", "throttled", "server_error", "try_again"}
)
_POST_RETRIES: frozenset[FailureKind] = frozenset({"never_sent", "throttled"})
_POST_AMBIGUOUS: frozenset[FailureKind] = frozenset(
    {"maybe_sent", "server_error", "bad_response", "try_again", "unclear"}
)
#: Statuses that ask for the same request again later: a timeout waiting for it (408), a
#: conflict with the resource's state (409), too early (425). A GET so answered is retried.
TRY_AGAIN_STATUSES = frozenset({408, 409, 425})
#: Statuses that refuse a request as it was sent: malformed, unauthorised, unpaid, not
#: found, the wrong method or media type, too large, invalid, a precondition or expectation
#: unmet; or that send it elsewhere to be repeated as it is (307, 308), or never forwarded
#: it (a proxy's 407, a misdirected 421, an upgrade required). A POST so answered created
#: nothing. Any other non-2xx is no such proof: a 303, or a 301 or 302 (Post/Redirect/Get),
#: is the usual answer to a POST that created something, and a proxy answers 408 or 409
#: whatever the server behind it did.
_REFUSALS = frozenset(
    {307, 308, 400, 401, 402, 403, 404, 405, 406, 407, 411, 412, 413, 414, 415, 417, 421}
    | {422, 426, 431}
)


class RequestObserver(Protocol):
    """Optional per-call hooks, for callers that count what happened to a request."""

    def on_retry(self, attempt: int, error: AimlMusicError, delay: float) -> None:
        """Attempt number ``attempt`` (1-based) failed with ``error``; the next one follows
        after ``delay`` API seconds."""
        ...

    def on_throttled(self, retry_after: float | None) -> None:
        """The server answered 429; ``retry_after`` is its (capped) hint in seconds, if any."""
        ...

    # Optional (looked up with getattr): on_sending(self) -> None. An attempt's bytes are
    # about to go out (httpcore's ``send_request_headers.started``); called at most once per
    # attempt, never for an attempt that provably never left (no connection, cancelled
    # before the first byte).


#: httpcore's trace events for "the request's first bytes are being written" (HTTP/1.1, 2).
_SENDING_EVENTS = frozenset(
    {"http11.send_request_headers.started", "http2.send_request_headers.started"}
)


class _SendingNotice:
    """Tells an observer, once per attempt, that the request is leaving: from httpcore's
    trace when the transport has one, else (a mock or ASGI transport) once an answer or a
    failure after connecting shows it left."""

    __slots__ = ("_callback", "_inner", "_watch", "fired", "traced")

    def __init__(self, callback: Any, inner: Any, watch: _PostWatch | None = None) -> None:
        self._callback = callback
        self._inner = inner  # a trace callback already on the request, kept working
        self._watch = watch  # told whether a POST is on its way
        self.fired = False
        self.traced = False  # httpcore's trace ran: whether the request left is known

    def fire(self) -> None:
        """The request is about to leave (from the trace, before its first byte): a hook's
        :class:`SendingRefused` goes up from here and stops it."""
        if not self.fired:
            self.fired = True
            self._callback()

    def fire_after(self) -> None:
        """The request has left (an answer, or a failure after connecting, shows it; a
        transport without the trace): a refusal comes too late to stop it and is dropped,
        since the answer must still reach the caller (the hook knows it refused, and that
        such a transport reports sending only once answered)."""
        try:
            self.fire()
        except SendingRefused as refused:
            logger.debug("a hook refused a request that had already left: %s", refused.reason)

    async def trace(self, name: str, info: dict[str, Any]) -> None:
        self.traced = True
        # A proxy's CONNECT is traced with the request's own callback: sending it is still
        # connecting.
        sending = name in _SENDING_EVENTS and not _is_connect(info.get("request"))
        if self._watch is not None and (sending or not self.fired):
            self._watch.set(sending)  # connecting (or waiting for the pool) is not on its way
        if sending:
            self.fire()
        if self._inner is not None:
            await self._inner(name, info)


def _is_connect(request: Any) -> bool:
    """Whether httpcore's traced ``request`` is a proxy tunnel's CONNECT."""
    return getattr(request, "method", None) in (b"CONNECT", "CONNECT")


def _no_one() -> None:
    """The sending notice's callback when no observer asked to be told."""


class _Failure:
    """One failed attempt: the error to raise if it is the last, and how to treat it."""

    __slots__ = ("error", "kind", "retry_after")

    def __init__(
        self, kind: FailureKind, error: APIError, retry_after: float | None = None
    ) -> None:
        self.kind = kind
        self.error = error
        self.retry_after = retry_after


class Transport:
    """Sends API requests for one client: auth, budget, retries, error mapping.

    Give either ``transport`` (an httpx transport, for example ``httpx.MockTransport``) or a
    ready ``http_client``; a client passed in is used as is and never closed here. The
    timeouts of ``timeout`` apply to every request either way.
    """

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        timeout: Timeout,
        retry: RetryPolicy,
        clock: Clock,
        budget: Budget,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
        size_limits: SizeLimits | None = None,
        before_requests: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._key = Secret(api_key)
        # Awaited before each request leaves its budget (the emulator's time-scale probe,
        # which asks once): its own request is never taken for a submission on its way.
        self._before_requests = before_requests
        self.size_limits = size_limits if size_limits is not None else SizeLimits()
        self.redactor = Redactor(self._key)
        self.base_url = base_url.rstrip("/")
        self._endpoint = self.base_url + _limits.GENERATE_PATH
        self.timeout = timeout
        self.retry = retry
        self.clock = clock
        self.budget = budget
        # What one attempt may take to be answered (its status line and headers): each phase
        # at its own limit, one after the other. httpx bounds each wait for bytes, but an
        # answer dripped a byte at a time within the read timeout would hold a song for ever.
        # (Its body is bounded as it is read: see _read.)
        self._answer_seconds = timeout.connect + timeout.write + timeout.pool + timeout.read
        self._httpx_timeout = httpx.Timeout(
            connect=timeout.connect, read=timeout.read, write=timeout.write, pool=timeout.pool
        )
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(
            transport=transport, timeout=self._httpx_timeout, follow_redirects=False
        )
        # Fresh connections for submissions, when the network is ours to configure; a
        # caller's transport or client keeps its own pooling for them too.
        self._post_http = self._http
        if http_client is None and transport is None:
            self._post_http = httpx.AsyncClient(
                timeout=self._httpx_timeout, follow_redirects=False, limits=_FRESH_CONNECTIONS
            )
        self._closed = False
        # Whether the server was seen naming a generation in the other spelling (debug,
        # logged once: every poll of every song would otherwise say it again).
        self._told_id_spelling = False

    # ------------------------------------------------------------------ public

    @property
    def http_client(self) -> httpx.AsyncClient:
        """The httpx client (shared with downloads, which send no credentials)."""
        return self._http

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` was called."""
        return self._closed

    async def submit(
        self,
        request: SongRequest,
        *,
        observer: RequestObserver | None = None,
        retry_throttled: bool = True,
        send_by: float | None = None,
    ) -> Generation:
        """POST one song. Never resent once it may have reached the server.

        With ``retry_throttled=False`` a 429 is reported to the budget and raised at once
        (the scheduler, which has a queue of its own, retries it; nothing retries twice).
        ``send_by`` (clock time) bounds the waits before each attempt: one still waiting
        for the budget then raises :class:`SubmissionTimeoutError`, and a retry whose
        back-off would end past it is not made (its failure is raised). Either way nothing
        was sent: a POST is retried only after an attempt that surely did not arrive.
        """
        return await self._call(
            "submit",
            "POST",
            body=request_to_wire(request),
            request=request,
            observer=observer,
            retry_throttled=retry_throttled,
            send_by=send_by,
        )

    async def get(
        self,
        generation_id: str,
        *,
        observer: RequestObserver | None = None,
        retry_throttled: bool = True,
    ) -> Generation:
        """GET one generation by id (sent as an encoded query parameter).

        The answer must be about that id: one naming another generation is refused (the
        same id with or without its ``:<model>`` part is that id; see
        :func:`same_generation`), and the generation returned carries the id as asked.
        ``retry_throttled`` is as for :meth:`submit`.
        """
        if not isinstance(generation_id, str) or not generation_id:
            raise RequestValidationError(
                "generation_id", "must be a non-empty string", repr(generation_id)
            )
        problem = unsendable_id_problem(generation_id)
        if problem is not None:
            raise RequestValidationError(
                "generation_id",
                "must be text that can be sent in a URL (no control characters or lone surrogates)",
                f"{ascii(generation_id)[:80]}: {problem}",
            )
        return await self._call(
            "poll",
            "GET",
            generation_id=generation_id,
            observer=observer,
            retry_throttled=retry_throttled,
        )

    async def aclose(self) -> None:
        """Close the HTTP client if this transport created it. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._owns_http:
            await self._http.aclose()
            if self._post_http is not self._http:
                await self._post_http.aclose()

    def __repr__(self) -> str:
        return f"Transport(base_url={self.base_url!r})"

    # ------------------------------------------------------------------ the retry loop

    async def _call(
        self,
        kind: RequestKind,
        method: Literal["GET", "POST"],
        *,
        generation_id: str | None = None,
        body: dict[str, Any] | None = None,
        request: SongRequest | None = None,
        observer: RequestObserver | None = None,
        retry_throttled: bool = True,
        send_by: float | None = None,
    ) -> Generation:
        if self._closed:
            raise ClientClosedError("this aimlmusic client is closed; create a new one")
        target, url = self._target(generation_id)  # ``url``: for logs and errors
        if self._before_requests is not None:
            await self._before_requests()
        retry_on = _POST_RETRIES if method == "POST" else _GET_RETRIES
        attempts = self.retry.attempts
        started = self.clock.now()
        for attempt in range(1, attempts + 1):
            if send_by is None:
                await self.budget.acquire(kind)
            elif not await finished_by(self.clock, send_by, lambda: self.budget.acquire(kind)):
                raise SubmissionTimeoutError(send_by - started, "the request budget")
            if self._closed:  # closed while this request waited (the budget, a back-off)
                raise ClientClosedError("this aimlmusic client is closed; create a new one")
            with _watched(method) as watch:
                outcome = await self._attempt(
                    method,
                    target,
                    url,
                    body,
                    attempt,
                    expected_id=generation_id,
                    on_sending=getattr(observer, "on_sending", None),
                    watch=watch,
                )
            if isinstance(outcome, Generation):
                return outcome
            failure = outcome
            if failure.kind == "throttled":
                self.budget.on_throttled(failure.retry_after)
                if observer is not None:
                    observer.on_throttled(failure.retry_after)
            if method == "POST" and failure.kind in _POST_AMBIGUOUS:
                assert request is not None
                raise self._ambiguous(request, failure.error, method, url) from failure.error
            if failure.kind not in retry_on or attempt == attempts:
                raise failure.error
            if failure.kind == "throttled" and not retry_throttled:
                raise failure.error
            if failure.kind == "throttled":
                # The budget now holds every request of this client until the pause ends;
                # the next acquire() waits through it, so no sleep of our own here.
                logger.debug(
                    "retrying %s %s after the budget's pause (attempt %d of %d throttled)",
                    method,
                    url,
                    attempt,
                    attempts,
                )
                continue
            delay = retry_delay(attempt - 1, self.retry, failure.retry_after)
            if send_by is not None and self.clock.now() + delay > send_by:
                # No time left to try again: the failure is the answer (a POST backs off
                # only after an attempt that surely did not arrive: nothing was sent).
                raise failure.error
            logger.debug(
                "retrying %s %s in %.3f s (attempt %d of %d failed: %s)",
                method,
                url,
                delay,
                attempt,
                attempts,
                failure.error,
            )
            if observer is not None:
                observer.on_retry(attempt, failure.error, delay)
            await self.clock.sleep(delay)
        raise AssertionError("unreachable: the last attempt always returns or raises")

    def _target(self, generation_id: str | None) -> tuple[httpx.URL, str]:
        """The request's URL (with the generation id as its query, if any), parsed once,
        and spelled out; one httpx would refuse is refused here, before anything is sent,
        naming the field that made it (the generation id)."""
        try:
            if generation_id is not None and len(generation_id) > KEPT_ID_CHARS:
                return _parsed_url.__wrapped__(self._endpoint, generation_id)
            return _parsed_url(self._endpoint, generation_id)
        except httpx.InvalidURL as exc:  # its text names the part of the URL that broke
            problem = self.redactor.text(f"{type(exc).__name__}: {exc}")
            raise _unsendable_url(generation_id, problem) from None
        except _URLTooLong as exc:
            raise _unsendable_url(generation_id, f"a URL of {exc.args[0]} characters") from None

    async def _attempt(
        self,
        method: str,
        target: httpx.URL,
        url: str,  # ``target`` spelled out, for logs and errors
        body: dict[str, Any] | None,
        attempt: int,
        *,
        expected_id: str | None = None,
        on_sending: Any = None,
        watch: _PostWatch | None = None,
    ) -> Generation | _Failure:
        logger.debug("%s %s (attempt %d of %d)", method, url, attempt, self.retry.attempts)
        started = time.perf_counter()
        http = self._post_http if method == "POST" else self._http
        problem: str | None = None
        try:
            # The URL as parsed once (a string would be parsed again, every attempt).
            request = http.build_request(
                method, target, json=body, headers=self._headers(), timeout=self._httpx_timeout
            )
        except (ValueError, httpx.InvalidURL) as exc:  # UnicodeEncodeError is a ValueError
            # Nothing was sent. Say what broke, never how (the text may quote a header).
            problem = type(exc).__name__
        if problem is not None:
            raise RequestValidationError(
                "request", "must be encodable as an HTTP request (nothing was sent)", problem
            )
        # Always traced: a request cut before its first byte was never sent, whoever asks.
        notice = _SendingNotice(on_sending or _no_one, request.extensions.get("trace"), watch)
        request.extensions["trace"] = notice.trace
        if watch is not None:
            # On its way until the trace, if any, says it is still connecting: a transport
            # without it (a mock, ASGI) tells nothing until the answer.
            watch.set(True)
        response = None
        try:
            with anyio.move_on_after(self._answer_seconds):
                response = await http.send(
                    request, stream=True, auth=NO_AUTH, follow_redirects=False
                )
        except httpx.InvalidURL as exc:
            # Raised once an answer came: httpx builds a redirect's URL from its Location
            # even when it does not follow it, and refuses one too long. A POST was received.
            failure = _Failure(
                "maybe_sent",
                APIConnectionError(
                    f"the answer could not be read ({type(exc).__name__}: a redirect "
                    "httpx cannot follow)",
                    method=method,
                    url=url,
                ),
            )
            notice.fire_after()
            return failure
        except httpx.HTTPError as exc:
            failure = self._transport_failure(exc, method, url)
            request_logger.debug("%s %s failed: %s", method, url, failure.error)
            if failure.kind != "never_sent":
                notice.fire_after()  # it may have left, traced or not
            return failure
        if response is None:  # cut after _answer_seconds: its head dripped, or never came
            # Cut before its first byte (the pool, connecting, httpx's connect retries), it
            # was never sent; without httpcore's trace that is unknown, so it may have left.
            sent = notice.fired or not notice.traced
            error = APITimeoutError(
                f"no answer within {self._answer_seconds:g} s (the connect, write, pool and "
                "read timeouts together)",
                method=method,
                url=url,
            )
            request_logger.debug("%s %s failed: %s", method, url, error)
            if not sent:
                return _Failure("never_sent", error)
            notice.fire_after()
            return _Failure("maybe_sent", error)
        notice.fire_after()  # answered, so it left (transports without httpcore's trace)
        try:
            outcome = await self._read(response, method, url)
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()
        if isinstance(outcome, _Failure):
            request_logger.debug("%s %s failed: %s", method, url, outcome.error)
            return outcome
        elapsed = time.perf_counter() - started
        request_logger.debug("%s %s -> %d in %.3f s", method, url, response.status_code, elapsed)
        if response.is_success:
            self.budget.on_success()
            return self._generation_of(outcome, method, url, expected_id)
        return self._status_failure(response, outcome, method, url)

    async def _read(self, response: httpx.Response, method: str, url: str) -> str | _Failure:
        """The body as text, at most ``size_limits.response_bytes`` of it decoded."""
        limit = self.size_limits.response_bytes
        failure: _Failure | None = None
        # The whole body must arrive within one read timeout, as it does in one piece from an
        # honest server (a few hundred bytes): in real time, on the event loop's clock, like
        # the HTTP timeouts (the client's clock may run API time at any pace).
        read_by = anyio.current_time() + self.timeout.read
        try:
            # An error body over the cap is cut, not refused: its status says what happened.
            raw = await read_body(
                response,
                limit,
                truncate=not response.is_success,
                late=lambda: anyio.current_time() > read_by,
            )
        except SlowBody:
            failure = _Failure(
                "maybe_sent",
                APITimeoutError(
                    f"the answer's body took longer than {self.timeout.read:g} s (Timeout.read) "
                    "in all",
                    method=method,
                    url=url,
                ),
            )
        except BodyProblem as problem:
            hint = " (see SizeLimits.response_bytes)" if problem.too_large else ""
            failure = _Failure(
                "bad_response",
                ResponseValidationError(problem.reason + hint, method=method, url=url),
            )
        except httpx.HTTPError as exc:
            failure = self._transport_failure(exc, method, url)
        if failure is not None:
            return failure
        return _decode_text(raw, _charset_of(response))

    def _generation_of(
        self, text: str, method: str, url: str, expected_id: str | None
    ) -> Generation | _Failure:
        """The generation a 2xx body describes, or why it cannot be used."""
        try:
            data = decode_json(text)
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
            reason = self.redactor.text(f"body is not valid JSON ({exc})")
            excerpt = bounded(self.redactor.text(text), ERROR_BODY_EXCERPT_CHARS)
            return _Failure(
                "bad_response",
                ResponseValidationError(reason, body=excerpt, method=method, url=url),
            )
        try:
            generation = structure_generation(self.redactor.decoded(text, data))
        except ResponseValidationError as exc:
            return _Failure(
                "bad_response",
                ResponseValidationError(exc.reason, body=exc.body, method=method, url=url),
            )
        gid = generation.id
        if not gid:
            # The schema allows "", but such a generation can never be polled; after a
            # POST a job may still exist, so it is reported (ambiguously), not resent.
            return _Failure(
                "bad_response",
                ResponseValidationError(
                    "the generation id is empty",
                    body=bounded(self.redactor.text(text), ERROR_BODY_EXCERPT_CHARS),
                    method=method,
                    url=url,
                ),
            )
        problem = unsendable_id_problem(gid)
        if problem is not None:
            # The generation exists (and after a POST is paid for), but it could never be
            # polled: fail this song, keep the raw id for the user, never resend.
            return _Failure(
                "unusable_answer",
                ResponseValidationError(
                    f"the generation id {ascii(gid)[:120]} cannot be sent back to the API: "
                    f"{problem}",
                    generation_id=gid,
                    method=method,
                    url=url,
                ),
            )
        if expected_id is not None and gid != expected_id:
            if not same_generation(gid, expected_id):
                return _Failure(
                    "bad_response",
                    ResponseValidationError(
                        f"the answer is about generation {ascii(gid)[:120]}, not the "
                        f"{ascii(expected_id)[:120]} asked for",
                        method=method,
                        url=url,
                    ),
                )
            # The same generation named with or without its model: the caller goes on
            # seeing its own spelling, so nothing downstream holds two ids for one song.
            if not self._told_id_spelling:
                self._told_id_spelling = True
                logger.debug(
                    "the server names generation %s as %s (without or with its model); "
                    "answers are taken as about the id asked for",
                    ascii(expected_id)[:120],
                    ascii(gid)[:120],
                )
            return attrs.evolve(generation, id=expected_id)
        return generation

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._key.reveal()}",
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
            "Accept-Encoding": ACCEPTED_ENCODINGS,
        }

    # ------------------------------------------------------------------ failure mapping

    def _transport_failure(self, exc: httpx.HTTPError, method: str, url: str) -> _Failure:
        detail = bounded(
            self.redactor.text(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__),
            ERROR_BODY_EXCERPT_CHARS,  # h11 quotes a whole illegal status line, however long
        )
        if isinstance(exc, httpx.DecodingError):
            # The server answered, but its body was not decodable.
            return _Failure(
                "bad_response",
                ResponseValidationError(f"undecodable body ({detail})", method=method, url=url),
            )
        error: APIError
        if isinstance(exc, httpx.TimeoutException):
            error = APITimeoutError(f"request timed out ({detail})", method=method, url=url)
        else:
            error = APIConnectionError(f"connection failed ({detail})", method=method, url=url)
        if isinstance(exc, _NEVER_SENT):
            return _Failure("never_sent", error)
        if isinstance(exc, httpx.TransportError) and not isinstance(exc, httpx.UnsupportedProtocol):
            return _Failure("maybe_sent", error)
        if isinstance(exc, httpx.HTTPStatusError):
            # Raised by a response hook of the caller's http_client (``raise_for_status``):
            # an answer came, so the request arrived; a POST may have been accepted.
            return _Failure("maybe_sent", error)
        return _Failure("unusable", error)

    def _status_failure(
        self, response: httpx.Response, text: str, method: str, url: str
    ) -> _Failure:
        status = response.status_code
        body, message, request_id = _read_error_body(text, self.redactor)
        if message is None:
            message = self.redactor.text(response.reason_phrase or "no error message")
        message = bounded(message, ERROR_BODY_EXCERPT_CHARS)  # a JSON message can be huge too
        request_id = request_id or self.redactor.text(response.headers.get("x-request-id", ""))
        common: dict[str, Any] = {
            "status_code": status,
            "request_id": request_id or None,
            "body": body,
            "method": method,
            "url": url,
        }
        if status == 429:
            hint = parse_retry_after(response.headers)
            retry_after = None if hint is None else capped(hint, self.retry.max_retry_after)
            return _Failure(
                "throttled", RateLimitError(message, retry_after=retry_after, **common), retry_after
            )
        if status >= 500:
            return _Failure(
                "server_error", ServerError(message, **common), parse_retry_after(response.headers)
            )
        cls = _STATUS_ERRORS.get(status, APIStatusError)
        if status in TRY_AGAIN_STATUSES:
            hint = parse_retry_after(response.headers)
            return _Failure("try_again", cls(message, **common), hint)
        return _Failure("rejected" if status in _REFUSALS else "unclear", cls(message, **common))

    def _ambiguous(
        self, request: SongRequest, cause: APIError, method: str, url: str
    ) -> AmbiguousSubmissionError:
        return AmbiguousSubmissionError(
            f"the submission may have reached the server, so it was not resent ({cause}); "
            "a generation may exist and cost credits: look for it before submitting again",
            request=request,
            cause=cause,
            method=method,
            url=url,
        )


class _URLTooLong(Exception):
    """A URL longer than MAX_URL_CHARS (its length in ``args[0]``)."""


def same_generation(answered: str, asked: str) -> bool:
    """True if the ids ``answered`` and ``asked`` name the same generation.

    The API names a generation ``<uuid>:<model>`` (``…-12e0c9474949:minimax/music-1.5``),
    and a server may give the same generation back without its model part (or, asked
    without it, with it). So besides equal ids, a bare id (non-empty, no ``:``) matches
    that id followed by ``:`` and a model (non-empty, no ``:``), either way round. Nothing
    else matches: ids with more than one ``:``, whose model part cannot be told apart,
    must be equal, and two ids with different models (``u:a`` and ``u:b``) never match.
    """
    if answered == asked:
        return True
    bare, named = (answered, asked) if len(answered) < len(asked) else (asked, answered)
    prefix, colon, model = named.partition(":")
    return bool(colon) and bool(model) and ":" not in model and bare == prefix != ""


@functools.lru_cache(maxsize=PARSED_URLS_KEPT)
def _parsed_url(endpoint: str, generation_id: str | None) -> tuple[httpx.URL, str]:
    """``endpoint`` with the generation id as its query, parsed, and spelled out."""
    params = None if generation_id is None else {"generation_id": generation_id}
    target = httpx.URL(endpoint, params=params)
    # httpx checks a URL's length only when it parses a string; this one is handed over
    # parsed, so the check is made here.
    url = str(target)
    if len(url) > MAX_URL_CHARS:
        raise _URLTooLong(len(url))
    return target, url


def _unsendable_url(generation_id: str | None, problem: str) -> RequestValidationError:
    """The error for a request whose URL cannot be sent, on the field that made it."""
    field = "request" if generation_id is None else "generation_id"
    limit = f"must make a valid URL of at most {MAX_URL_CHARS} characters (nothing was sent)"
    return RequestValidationError(field, limit, problem)


def _read_error_body(
    text: str, redactor: Redactor
) -> tuple[dict[str, Any] | list[Any] | str | None, str | None, str | None]:
    """(body, message, request id) from an error response, whatever its shape, redacted.

    The AI/ML API sends ``{message, path, requestId, statusCode, timestamp}``; anything else
    (other JSON, plain text, an HTML page, nothing) is kept as a bounded excerpt. JSON is
    redacted after decoding, so an escaped key is found too.
    """
    stripped = text.strip()
    if not stripped:
        return None, None, None
    try:
        data = redactor.decoded(stripped, json.loads(stripped))
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        data = None
        stripped = redactor.text(stripped)
    if isinstance(data, dict):
        return (
            data,
            _message_of(data),
            _str_or_none(data.get("requestId") or data.get("request_id")),
        )
    if isinstance(data, list):
        return data, None, None
    excerpt = bounded(stripped, ERROR_BODY_EXCERPT_CHARS)
    return excerpt, bounded(" ".join(stripped.split()), ERROR_MESSAGE_CHARS), None


def _message_of(data: dict[str, Any]) -> str | None:
    message = data.get("message")
    if isinstance(message, list) and message and all(isinstance(m, str) for m in message):
        return "; ".join(message)  # validation frameworks send a list of problems
    if isinstance(message, str) and message:
        return message
    error = data.get("error")  # other common shapes: {"error": "..."} / {"error": {"message"}}
    if isinstance(error, str) and error:
        return error
    if isinstance(error, dict):
        return _str_or_none(error.get("message"))
    return None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _charset_of(response: httpx.Response) -> str | None:
    """The charset ``response``'s Content-Type names (None: none), as httpx reads it."""
    content_type = response.headers.get("content-type")
    if content_type is None:
        return None
    if content_type in _charsets:
        return _charsets[content_type]
    charset = response.charset_encoding
    if len(_charsets) < CHARSETS_KEPT and len(content_type) <= KEPT_CONTENT_TYPE_CHARS:
        _charsets[content_type] = charset
    return charset


def _decode_text(raw: bytes, charset: str | None) -> str:
    try:
        return raw.decode(charset or "utf-8", errors="replace")
    # A charset nobody knows (LookupError), or a codec that is not one for text and fails
    # even with errors="replace" ("idna", "undefined": a UnicodeError, a ValueError).
    except (LookupError, ValueError):
        return raw.decode("utf-8", errors="replace")


def bounded(text: str, limit: int) -> str:
    """``text``, cut to ``limit`` characters with its length said (a server's text, a URL)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
