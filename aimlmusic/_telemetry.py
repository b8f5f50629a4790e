"""OpenTelemetry traces and metrics (the ``otel`` extra: ``opentelemetry-api`` only).

Off unless ``opentelemetry`` is importable *and* the application has configured a tracer or
meter provider before creating the client; then a client

- wraps its network transport so that every HTTP request gets a ``CLIENT`` span (method,
  kind ``submit``/``poll``/``download``, status code) and counts in ``aimlmusic.requests``
  (and ``aimlmusic.throttled`` for a 429), and
- joins :class:`~aimlmusic.BatchEvents` to each ``generate_many`` batch: a span per song from
  its accepted submission to its result (generation id, final status, polls, detection lag),
  the ``aimlmusic.song.polls`` and ``aimlmusic.song.lag`` histograms and the
  ``aimlmusic.songs.in_flight`` gauge.

No URL query (presigned signatures) and no header is ever recorded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import httpx

from . import _limits
from ._events import SongCompleted, SongFailed, SongStatusChanged, SongSubmitted, emit
from ._redact import Redactor
from ._version import __version__

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream

    from ._models import SongResult

__all__ = ["Telemetry", "telemetry_if_configured"]

#: The instrumentation scope: the name spans and metrics are filed under.
SCOPE = "aimlmusic"

logger = logging.getLogger("aimlmusic")

#: ``error.type`` of what cancellation cut short, on every backend (asyncio names the
#: exception ``CancelledError``, trio ``Cancelled``): one value for one cause, as OTel's
#: low-cardinality ``error.type`` wants.
CANCELLED = "cancelled"


def _quietly(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``call(*args, **kwargs)``, or None if it raised: telemetry must never fail what it
    describes (a POST's span ends after the API has billed it; a raising span processor
    would lose the song's id). OpenTelemetry's SDK does not catch a processor's errors."""
    try:
        return call(*args, **kwargs)
    except Exception as exc:
        logger.debug("OpenTelemetry failed (%s); the client goes on", type(exc).__name__)
        return None


class _Span:
    """A span whose every call is made :func:`_quietly` (``None``: one that failed to start,
    and does nothing)."""

    __slots__ = ("_span",)

    def __init__(self, span: Any) -> None:
        self._span = span

    def set_attribute(self, key: str, value: Any) -> None:
        if self._span is not None:
            _quietly(self._span.set_attribute, key, value)

    def set_status(self, status: Any) -> None:
        if self._span is not None:
            _quietly(self._span.set_status, status)

    def add_event(self, name: str, attributes: dict[str, Any]) -> None:
        if self._span is not None:
            _quietly(self._span.add_event, name, attributes)

    def end(self, **kwargs: Any) -> None:
        if self._span is not None:
            _quietly(self._span.end, **kwargs)


def telemetry_if_configured() -> Telemetry | None:
    """A :class:`Telemetry` on the global providers, or ``None`` when OpenTelemetry is not
    installed or no provider has been configured (the API's defaults would drop it all)."""
    try:
        from opentelemetry import metrics, trace
    except ImportError:
        return None
    tracer_provider = trace.get_tracer_provider()
    meter_provider = metrics.get_meter_provider()
    tracing = not isinstance(tracer_provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)
    metering = type(meter_provider).__name__ not in ("_ProxyMeterProvider", "NoOpMeterProvider")
    if not (tracing or metering):
        return None
    try:
        return Telemetry(tracer_provider, meter_provider)
    except Exception as exc:  # a provider that cannot give a tracer or instruments
        logger.warning("OpenTelemetry is configured but failed (%s): no telemetry", exc)
        return None


class Telemetry:
    """One client's tracer and instruments."""

    def __init__(self, tracer_provider: Any, meter_provider: Any) -> None:
        from opentelemetry import trace

        self._trace = trace
        self.tracer = tracer_provider.get_tracer(SCOPE, __version__)
        meter = meter_provider.get_meter(SCOPE, __version__)
        self.requests = meter.create_counter(
            "aimlmusic.requests", unit="{request}", description="HTTP requests by kind and status"
        )
        self.throttled = meter.create_counter(
            "aimlmusic.throttled", unit="{request}", description="Requests answered 429"
        )
        self.polls = meter.create_histogram(
            "aimlmusic.song.polls", unit="{poll}", description="Polls each song took"
        )
        self.lag = meter.create_histogram(
            "aimlmusic.song.lag",
            unit="s",
            description="Detection lag: from a song's estimated completion to noticing it",
        )
        self.in_flight = meter.create_up_down_counter(
            "aimlmusic.songs.in_flight", unit="{song}", description="Songs submitted, no result"
        )

    # ------------------------------------------------------------------ requests

    def wrap(
        self, transport: httpx.AsyncBaseTransport, redactor: Redactor
    ) -> httpx.AsyncBaseTransport:
        """``transport`` with a span and a count for every request, the client's key
        redacted from what they record (a hostile host may put it in a redirect)."""
        return _TracedTransport(transport, self, redactor)

    def start_span(self, name: str, **kwargs: Any) -> _Span:
        """A new span (one that does nothing if the tracer failed to start it)."""
        return _Span(_quietly(self.tracer.start_span, name, **kwargs))

    def count(
        self, instrument: Any, value: float, attributes: dict[str, Any] | None = None
    ) -> None:
        """Add to a counter or record in a histogram, quietly."""
        method = instrument.record if hasattr(instrument, "record") else instrument.add
        _quietly(method, value, attributes)

    # ------------------------------------------------------------------ songs

    def batch(self, events: object | None) -> _SongSpans:
        """A hook recording a batch's songs, forwarding every event to ``events``."""
        return _SongSpans(self, events)

    def observe(
        self,
        spans: _SongSpans,
        batch: AbstractAsyncContextManager[MemoryObjectReceiveStream[SongResult]],
    ) -> AbstractAsyncContextManager[MemoryObjectReceiveStream[SongResult]]:
        """``batch``, ending the spans of songs still open when it is left (cancelled)."""

        @asynccontextmanager
        async def observed() -> AsyncIterator[MemoryObjectReceiveStream[SongResult]]:
            try:
                async with batch as results:
                    yield results
            finally:
                spans.abandon()

        return observed()


def _kind(request: httpx.Request) -> str:
    if request.url.path.endswith(_limits.GENERATE_PATH):
        return "submit" if request.method == "POST" else "poll"
    return "download"


class _TracedTransport(httpx.AsyncBaseTransport):
    """A span from sending a request to closing its response body, and a count."""

    def __init__(
        self, inner: httpx.AsyncBaseTransport, telemetry: Telemetry, redactor: Redactor
    ) -> None:
        self._inner = inner
        self._telemetry = telemetry
        self._redactor = redactor

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        telemetry = self._telemetry
        trace = telemetry._trace
        kind = _kind(request)
        url = request.url
        redact = self._redactor.text
        attributes: dict[str, Any] = {
            "http.request.method": request.method,
            "server.address": redact(url.host),
            "url.path": redact(url.path),  # never the query: presigned signatures live there
            "aimlmusic.request.kind": kind,
        }
        if url.port is not None:
            attributes["server.port"] = url.port
        if kind == "poll" and "generation_id" in url.params:
            attributes["aimlmusic.generation_id"] = redact(url.params["generation_id"])
        span = telemetry.start_span(
            request.method, kind=trace.SpanKind.CLIENT, attributes=attributes
        )
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException as exc:
            cancelled = isinstance(exc, anyio.get_cancelled_exc_class())
            error = CANCELLED if cancelled else type(exc).__name__
            span.set_attribute("error.type", error)
            span.set_status(trace.Status(trace.StatusCode.ERROR, error))
            span.end()
            telemetry.count(
                telemetry.requests, 1, {"aimlmusic.request.kind": kind, "error.type": error}
            )
            raise
        status = response.status_code
        span.set_attribute("http.response.status_code", status)
        if status >= 400:
            span.set_attribute("error.type", str(status))
            span.set_status(trace.Status(trace.StatusCode.ERROR))
        telemetry.count(
            telemetry.requests,
            1,
            {"aimlmusic.request.kind": kind, "http.response.status_code": status},
        )
        if status == 429:
            telemetry.count(telemetry.throttled, 1, {"aimlmusic.request.kind": kind})
        return httpx.Response(
            status,
            headers=response.headers,
            stream=_EndSpanOnClose(response.stream, span),
            extensions=response.extensions,
            request=request,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


class _EndSpanOnClose(httpx.AsyncByteStream):
    """A response body that ends its request's span when closed (read or not)."""

    def __init__(self, inner: Any, span: _Span) -> None:
        self._inner = inner
        self._span = span

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._span.end()


class _SongSpans:
    """BatchEvents: one span per song, from its accepted submission to its result."""

    def __init__(self, telemetry: Telemetry, forward: object | None) -> None:
        self._telemetry = telemetry
        self._forward = forward
        self._open: dict[str, _Span] = {}  # key -> span

    def on_submitted(self, event: SongSubmitted) -> None:
        telemetry = self._telemetry
        span = telemetry.start_span(
            "aimlmusic.song",
            attributes={
                "aimlmusic.song.key": event.key,
                "aimlmusic.generation_id": event.generation_id,
                "aimlmusic.song.status": event.generation.status.value,
            },
        )
        self._open[event.key] = span
        telemetry.count(telemetry.in_flight, 1)
        emit(self._forward, "on_submitted", event)

    def on_status_changed(self, event: SongStatusChanged) -> None:
        span = self._open.get(event.key)
        if span is not None:
            span.add_event("aimlmusic.song.status", {"aimlmusic.song.status": event.status.value})
            span.set_attribute("aimlmusic.song.status", event.status.value)
        emit(self._forward, "on_status_changed", event)

    def on_completed(self, event: SongCompleted) -> None:
        self._finish(event.result, None)
        emit(self._forward, "on_completed", event)

    def on_failed(self, event: SongFailed) -> None:
        self._finish(event.result, type(event.error).__name__)
        emit(self._forward, "on_failed", event)

    def on_retried(self, event: object) -> None:
        emit(self._forward, "on_retried", event)

    def on_throttled(self, event: object) -> None:
        emit(self._forward, "on_throttled", event)

    def on_sending(self, event: object) -> None:
        emit(self._forward, "on_sending", event)

    def _finish(self, result: SongResult, error: str | None) -> None:
        telemetry = self._telemetry
        trace = telemetry._trace
        # Only a song whose submission was accepted (it has a generation) has a span open
        # under its key. One that never got that far, like a duplicate key failed at once
        # while the first song of that key runs, must not end (or uncount) that one's.
        span = self._open.pop(result.key, None) if result.generation is not None else None
        if span is None:  # failed before any submission was accepted
            span = telemetry.start_span(
                "aimlmusic.song", attributes={"aimlmusic.song.key": result.key}
            )
        else:
            telemetry.count(telemetry.in_flight, -1)
        status = result.generation.status.value if result.generation is not None else "none"
        span.set_attribute("aimlmusic.song.status", status)
        span.set_attribute("aimlmusic.song.polls", result.polls)
        if result.generation_id is not None:
            span.set_attribute("aimlmusic.generation_id", result.generation_id)
        outcome = {"aimlmusic.song.outcome": "failed" if error else "completed"}
        telemetry.count(telemetry.polls, result.polls, outcome)
        timings = result.timings
        if error is None and timings.noticed_at is not None and timings.completed_at is not None:
            lag = max(0.0, timings.noticed_at - timings.completed_at)
            span.set_attribute("aimlmusic.song.lag", lag)
            telemetry.count(telemetry.lag, lag)
        if error is not None:
            span.set_attribute("error.type", error)
            span.set_status(trace.Status(trace.StatusCode.ERROR, error))
        span.end()

    def abandon(self) -> None:
        """End the spans of songs the batch left unfinished (it was left early)."""
        telemetry = self._telemetry
        trace = telemetry._trace
        for span in self._open.values():
            span.set_attribute("error.type", CANCELLED)
            span.set_status(trace.Status(trace.StatusCode.ERROR, CANCELLED))
            span.end(end_time=time.time_ns())
            telemetry.count(telemetry.in_flight, -1)
        self._open.clear()
