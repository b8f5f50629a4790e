"""Test seams shared by the transport, client, download and secrets tests.

* :class:`RecordingClock` - a virtual clock: ``sleep`` records the delay, advances "now" by
  it and returns at once, so back-off and Retry-After delays can be asserted exactly.
* :class:`ScriptedAPI` - an ``httpx.MockTransport`` handler answering from a script of
  responses (or exceptions to raise), recording every request it received.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import httpx

from aimlmusic import SongRequest
from aimlmusic._clock import Clock
from aimlmusic._config import RetryPolicy, Timeout
from aimlmusic._ratelimit import RequestBudget
from aimlmusic._transport import Transport

API = "https://api.test"
GEN_ID = "d51032d5-e7b3-4e5b-a5c8-12e0c9474949:minimax/music-1.5"
AUDIO_URL = "https://store.test/music/song.mp3?Expires=1&OSSAccessKeyId=AK&Signature=SIGNATURE"

Step = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


def song() -> SongRequest:
    """A valid request."""
    return SongRequest(prompt="Warm lo-fi ballad, soft piano", lyrics="[Verse]\nStreetlights")


def generation_json(status: str = "queued", **extra: Any) -> dict[str, Any]:
    """A generation body as the API sends it."""
    return {"id": GEN_ID, "status": status, **extra}


def completed_json(url: str = AUDIO_URL) -> dict[str, Any]:
    """A completed generation with an audio URL."""
    return generation_json("completed", audio_file={"url": url})


def ok(body: Any = None, **kwargs: Any) -> httpx.Response:
    """A 200 with a JSON body (a queued generation by default)."""
    return httpx.Response(200, json=generation_json() if body is None else body, **kwargs)


def error_body(status: int, message: str = "nope", request_id: str = "req-1") -> httpx.Response:
    """An error in the AI/ML API's documented shape."""
    return httpx.Response(
        status,
        json={
            "message": message,
            "path": "/v2/generate/audio",
            "requestId": request_id,
            "statusCode": status,
            "timestamp": "2025-11-06T20:13:49.000Z",
        },
    )


class RecordingClock:
    """Virtual time: ``sleep`` records, jumps ahead and returns at once."""

    def __init__(self) -> None:
        self.time = 1000.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.time += max(0.0, seconds)
        await anyio.lowlevel.checkpoint()


class ScriptedAPI:
    """Answers requests from ``script`` in order; the last step repeats when it runs out."""

    def __init__(self, *script: Step) -> None:
        self.script = list(script)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, Exception):
            raise step
        if isinstance(step, httpx.Response):
            # A Response can only be read once: hand out a fresh copy each time.
            return httpx.Response(step.status_code, headers=step.headers, content=step.content)
        return step(request)

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    def methods(self) -> list[str]:
        return [r.method for r in self.requests]

    def bodies(self) -> list[Any]:
        return [json.loads(r.content) if r.content else None for r in self.requests]


class RecordingObserver:
    """A RequestObserver that remembers what it was told."""

    def __init__(self) -> None:
        self.retries: list[tuple[int, Exception, float]] = []
        self.throttles: list[float | None] = []

    def on_retry(self, attempt: int, error: Exception, delay: float) -> None:
        self.retries.append((attempt, error, delay))

    def on_throttled(self, retry_after: float | None) -> None:
        self.throttles.append(retry_after)


def make_transport(
    api: ScriptedAPI,
    clock: Clock | None = None,
    *,
    retry: RetryPolicy | None = None,
    api_key: str = "sk-test-key",
    requests_per_minute: float = 1_000_000,
) -> Transport:
    """A Transport on ``api`` with a real (generous) request budget on ``clock`` (a
    :class:`RecordingClock` when none is given)."""
    clock = clock or RecordingClock()
    return Transport(
        api_key=api_key,
        base_url=API,
        timeout=Timeout(),
        retry=retry or RetryPolicy(attempts=4, base_delay=0.5, max_delay=8.0),
        clock=clock,
        budget=RequestBudget(requests_per_minute, clock, seed=1),
        transport=api.transport,
    )
