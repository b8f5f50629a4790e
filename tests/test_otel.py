"""OpenTelemetry: spans per song and per request, and the metrics, read with the SDK's
in-memory exporter and reader against the in-process emulator."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import attrs
import httpx
import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import aimlmusic
from aimlmusic import SongRequest
from aimlmusic._telemetry import telemetry_if_configured
from aimlmusic.emulator import TEST_API_KEY, Emulator, EmulatorConfig
from aimlmusic.testing import EMULATED_BASE_URL, VirtualClock

pytestmark = pytest.mark.anyio

#: API seconds per real second.
TIME_SCALE = 1000.0


@attrs.define
class Recorded:
    """What the SDK's in-memory exporter and reader collected."""

    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if name is None or s.name == name]

    def points(self, metric: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for each in scope.metrics
            if each.name == metric
            for point in each.data.data_points
        ]


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorded]:
    """SDK providers with in-memory export, as the application's configured providers (the
    process-wide ones can be set only once, so the API's getters are pointed at them)."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: tracer_provider)
    monkeypatch.setattr(metrics, "get_meter_provider", lambda: meter_provider)
    yield Recorded(exporter, reader)
    meter_provider.shutdown()
    tracer_provider.shutdown()


def _song(n: int) -> SongRequest:
    return SongRequest(prompt=f"Calm acoustic guitar, take {n}", lyrics="[Verse]\nLa la la la")


def _client(emulator: Emulator) -> aimlmusic.AsyncMusicClient:
    return aimlmusic.AsyncMusicClient(
        TEST_API_KEY,
        base_url=EMULATED_BASE_URL,
        transport=httpx.ASGITransport(app=emulator.app),
        clock=emulator.clock,
    )


async def test_spans_and_metrics_of_a_batch(recorded: Recorded, tmp_path: Path) -> None:
    """A batch of three songs (one fails) and a download: a span per song with its id,
    status, polls and lag; a span per request with its kind and status code; the metrics
    agree with what the emulator counted."""
    emulator = Emulator(EmulatorConfig(time_scale=TIME_SCALE, requests_per_minute=None))
    emulator.inject("generation_failure", route="submit")
    async with _client(emulator) as client:
        async with client.generate_many(
            [(f"s{n}", _song(n)) for n in range(3)], deadline=None
        ) as results:
            outcomes = {result.key: result async for result in results}
        done = next(r for r in outcomes.values() if r.ok)
        await client.download(done, tmp_path / "song.mp3")

    songs = {
        span.attributes["aimlmusic.song.key"]: span for span in recorded.spans("aimlmusic.song")
    }
    assert set(songs) == {"s0", "s1", "s2"}
    for key, span in songs.items():
        result = outcomes[key]
        attributes = span.attributes
        assert attributes["aimlmusic.generation_id"] == result.generation_id
        assert attributes["aimlmusic.song.polls"] == result.polls >= 1
        if result.ok:
            assert attributes["aimlmusic.song.status"] == "completed"
            assert attributes["aimlmusic.song.lag"] >= 0
            assert span.status.is_ok
        else:
            assert attributes["aimlmusic.song.status"] == "error"
            assert attributes["error.type"] == "GenerationFailedError"
            assert not span.status.is_ok

    stats = emulator.stats()
    requests = recorded.spans("POST") + recorded.spans("GET")
    kinds = Counter(span.attributes["aimlmusic.request.kind"] for span in requests)
    assert kinds == {"submit": 3, "poll": stats.requests["poll"], "download": 1}
    assert all(span.kind == trace.SpanKind.CLIENT for span in requests)
    assert all(span.attributes["http.response.status_code"] == 200 for span in requests)
    polls = [s for s in requests if s.attributes["aimlmusic.request.kind"] == "poll"]
    assert {s.attributes["aimlmusic.generation_id"] for s in polls} == {
        r.generation_id for r in outcomes.values()
    }

    counted = Counter()
    for point in recorded.points("aimlmusic.requests"):
        counted[point.attributes["aimlmusic.request.kind"]] += point.value
    assert counted == kinds
    assert sum(p.count for p in recorded.points("aimlmusic.song.polls")) == 3
    assert sum(p.count for p in recorded.points("aimlmusic.song.lag")) == 2
    assert [p.value for p in recorded.points("aimlmusic.songs.in_flight")] == [0]


async def test_no_secret_reaches_a_span(recorded: Recorded, tmp_path: Path) -> None:
    """Neither the key nor a presigned URL's signature is in any span attribute."""
    emulator = Emulator(EmulatorConfig(time_scale=TIME_SCALE, requests_per_minute=None))
    async with _client(emulator) as client:
        generation = await client.generate(_song(0))
        await client.download(generation, tmp_path / "song.mp3")
    assert generation.audio_file is not None
    signature = generation.audio_file.url.split("Signature=")[1]
    recorded_text = repr([dict(span.attributes) for span in recorded.spans()])
    assert TEST_API_KEY not in recorded_text
    assert signature not in recorded_text
    assert "Expires" not in recorded_text


async def test_429s_are_counted(recorded: Recorded) -> None:
    """Each 429 the emulator answers is one count of aimlmusic.throttled and a span with
    that status (four songs at once against a server allowing two requests a minute)."""
    emulator = Emulator(EmulatorConfig(time_scale=TIME_SCALE, requests_per_minute=2))
    async with (
        _client(emulator) as client,
        client.generate_many([_song(n) for n in range(4)], deadline=None) as results,
    ):
        assert [r.ok async for r in results] == [True] * 4
    throttled = sum(p.value for p in recorded.points("aimlmusic.throttled"))
    assert throttled == emulator.stats().rate_limited >= 1
    refused = [s for s in recorded.spans() if s.attributes.get("http.response.status_code") == 429]
    assert len(refused) == throttled


async def test_leaving_a_batch_early_ends_its_song_spans(recorded: Recorded) -> None:
    """Songs cancelled by leaving the block end their spans as cancelled; none stays in
    flight."""
    durations = iter([10.0])  # the first song takes 10 s, the others never finish
    emulator = Emulator(
        EmulatorConfig(
            time_scale=TIME_SCALE,
            requests_per_minute=None,
            durations=lambda rng: next(durations, 1e9),
        )
    )
    client = _client(emulator)
    async with client, client.generate_many([_song(n) for n in range(3)], deadline=None) as results:
        first = await results.receive()
    assert first.ok
    songs = recorded.spans("aimlmusic.song")
    cancelled = [s for s in songs if s.attributes.get("error.type") == "cancelled"]
    assert len(songs) == 3
    assert len(cancelled) == 2
    assert [p.value for p in recorded.points("aimlmusic.songs.in_flight")] == [0]


async def test_the_callers_events_still_arrive(recorded: Recorded) -> None:
    """With telemetry on, the caller's BatchEvents hook gets every event as before."""
    seen: list[str] = []

    class Hook:
        def on_submitted(self, event: aimlmusic.SongSubmitted) -> None:
            seen.append("submitted")

        def on_completed(self, event: aimlmusic.SongCompleted) -> None:
            seen.append("completed")

    emulator = Emulator(EmulatorConfig(time_scale=TIME_SCALE, requests_per_minute=None))
    async with (
        _client(emulator) as client,
        client.generate_many([_song(0)], events=Hook(), deadline=None) as rs,
    ):
        assert [r.ok async for r in rs] == [True]
    assert seen == ["submitted", "completed"]


async def test_a_duplicate_key_leaves_the_first_songs_span_alone(recorded: Recorded) -> None:
    """A key given again while its first song runs (failed at once, never submitted) gets
    a failed span of its own: the first song's span ends once, when it completes, and the
    in-flight gauge still counts it. The duplicate used to end that span as an error (a
    second one opened at its completion) and uncount it."""
    clock = VirtualClock()
    emulator = Emulator(EmulatorConfig(seed=1, requests_per_minute=None), clock=clock)
    client = aimlmusic.AsyncMusicClient(
        TEST_API_KEY,
        base_url=EMULATED_BASE_URL,
        transport=httpx.ASGITransport(app=emulator.app),
        clock=clock,
    )
    first_submitted = anyio.Event()
    in_flight_at_duplicate: list[list[int]] = []

    async def songs() -> AsyncIterator[tuple[str, SongRequest]]:
        yield ("a", _song(0))
        await first_submitted.wait()  # the duplicate comes while the first "a" runs
        yield ("a", _song(1))
        yield ("b", _song(2))

    class Hook:
        def on_submitted(self, event: aimlmusic.SongSubmitted) -> None:
            if event.key == "a":
                first_submitted.set()

        def on_failed(self, event: aimlmusic.SongFailed) -> None:
            gauge = recorded.points("aimlmusic.songs.in_flight")
            in_flight_at_duplicate.append([p.value for p in gauge])

    async with (
        clock,
        client,
        client.generate_many(songs(), events=Hook(), deadline=None) as results,
    ):
        outcomes = [r async for r in results]
    [duplicate] = [r for r in outcomes if not r.ok]
    assert isinstance(duplicate.error, aimlmusic.RequestValidationError)
    [first] = [r for r in outcomes if r.ok and r.key == "a"]
    assert in_flight_at_duplicate == [[1]]
    assert [p.value for p in recorded.points("aimlmusic.songs.in_flight")] == [0]

    songs_spans = recorded.spans("aimlmusic.song")
    assert len(songs_spans) == 3
    [first_span] = [
        s for s in songs_spans if s.attributes.get("aimlmusic.generation_id") == first.generation_id
    ]
    assert first_span.status.is_ok
    assert first_span.attributes["aimlmusic.song.polls"] == first.polls >= 1
    [duplicate_span] = [
        s for s in songs_spans if s.attributes["aimlmusic.song.key"] == "a" and s is not first_span
    ]
    assert "aimlmusic.generation_id" not in duplicate_span.attributes
    assert duplicate_span.attributes["error.type"] == "RequestValidationError"
    assert duplicate_span.attributes["aimlmusic.song.polls"] == 0


async def test_a_request_cut_by_cancellation_is_counted_as_cancelled(recorded: Recorded) -> None:
    """A request cancelled on its way is counted and spanned with error.type "cancelled" on
    every backend. It was the exception's class name: CancelledError on asyncio, Cancelled
    on trio."""
    entered = anyio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        entered.set()
        await anyio.sleep_forever()
        raise AssertionError("never answered")

    client = aimlmusic.AsyncMusicClient(
        TEST_API_KEY, base_url="https://api.test", transport=httpx.MockTransport(handler)
    )
    async with client, anyio.create_task_group() as task_group:
        task_group.start_soon(client.get, "g-1")
        await entered.wait()
        task_group.cancel_scope.cancel()
    failed = [
        (dict(p.attributes), p.value)
        for p in recorded.points("aimlmusic.requests")
        if "error.type" in p.attributes
    ]
    assert failed == [({"aimlmusic.request.kind": "poll", "error.type": "cancelled"}, 1)]
    [span] = recorded.spans("GET")
    assert span.attributes["error.type"] == "cancelled"
    assert span.status.description == "cancelled"


def test_off_without_a_configured_provider() -> None:
    """With the API's default (no-op) providers, nothing is wrapped or recorded."""
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert telemetry_if_configured() is None


def test_off_without_the_package(monkeypatch: pytest.MonkeyPatch, recorded: Recorded) -> None:
    """Without opentelemetry installed (the extra not chosen), the client works untouched."""
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    assert telemetry_if_configured() is None
    client = aimlmusic.AsyncMusicClient(TEST_API_KEY, base_url="https://api.example.com")
    assert client._telemetry is None


class _RaisingProcessor:
    """A span processor that raises when spans of ``name`` start or end (``where``)."""

    def __init__(self, where: str, name: str | None = None) -> None:
        self.where, self.name = where, name

    def _maybe_raise(self, span: Any, moment: str) -> None:
        if moment == self.where and (self.name is None or span.name == self.name):
            raise RuntimeError("a processor's bug")

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self._maybe_raise(span, "start")

    def on_end(self, span: Any) -> None:
        self._maybe_raise(span, "end")

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


@pytest.mark.parametrize(
    ("where", "name"), [("start", None), ("end", None), ("start", "aimlmusic.song")]
)
async def test_a_span_processor_that_raises_never_fails_a_song(
    monkeypatch: pytest.MonkeyPatch, where: str, name: str | None
) -> None:
    """A span processor raising as spans start or end (OpenTelemetry's SDK lets it through)
    fails no request and hides no event: every song completes with its id, once each, and
    the caller's hook sees each one. A POST's span ending after the API billed it used to
    raise out of the submission (its id lost, the song ambiguous), and a song span's hid
    the caller's on_submitted."""
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(_RaisingProcessor(where, name))  # type: ignore[arg-type]
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: tracer_provider)
    seen: list[str] = []

    class Hook:
        def on_submitted(self, event: aimlmusic.SongSubmitted) -> None:
            seen.append(event.generation_id)

    emulator = Emulator(EmulatorConfig(time_scale=TIME_SCALE, requests_per_minute=None))
    async with (
        _client(emulator) as client,
        client.generate_many([_song(0), _song(1)], events=Hook(), deadline=None) as rs,
    ):
        results = [r async for r in rs]
    assert all(r.ok for r in results)
    assert sorted(seen) == sorted(r.generation_id for r in results)
    assert emulator.stats().jobs_submitted == 2


async def test_a_key_a_storage_host_puts_in_a_redirect_reaches_no_span(
    recorded: Recorded, tmp_path: Path
) -> None:
    """A storage host redirecting to a path, or a host name, made of the key (a hostile one
    has it from the POST): the download's request spans record it redacted. They recorded
    the path and the host as they were."""
    key = "0123456789abcdef0123456789abcdef"

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "api.test":
            body = {
                "id": "g-1",
                "status": "completed",
                "audio_file": {"url": "https://store.test/a"},
            }
            return httpx.Response(200, json=body)
        if request.url.host == "store.test" and request.url.path == "/a":
            return httpx.Response(302, headers={"location": f"https://store.test/{key}/b.mp3"})
        if request.url.host == "store.test":
            return httpx.Response(302, headers={"location": f"https://{key}.store.test/c.mp3"})
        return httpx.Response(404)

    client = aimlmusic.AsyncMusicClient(
        key, base_url="https://api.test", transport=httpx.MockTransport(handler)
    )
    async with client:
        with pytest.raises(aimlmusic.DownloadError):
            await client.download("g-1", tmp_path / "song.mp3")
    downloads = [
        s for s in recorded.spans("GET") if s.attributes["aimlmusic.request.kind"] == "download"
    ]
    assert any(s.attributes["url.path"] == "/<redacted>/b.mp3" for s in downloads)
    assert any(s.attributes["server.address"] == "<redacted>.store.test" for s in downloads)
    assert key not in repr([dict(span.attributes) for span in recorded.spans()])
