"""Shared pieces of the reliability suite: the canary key, soak sizes and the figures file."""

from __future__ import annotations

import collections
import json
import os
import platform
import random
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx

from aimlmusic import AsyncMusicClient, RetryPolicy
from aimlmusic.emulator import Emulator

#: An API key nobody would type by accident: if it shows up anywhere, it leaked.
CANARY_KEY = "sk-canary-Q7wX2pLm9RtV4nZc8KdJ3hYf6BsGa1Ue"

#: The key's tail, long enough to be unmistakable: catches partial leaks (truncated echoes).
CANARY_FRAGMENTS = (CANARY_KEY, CANARY_KEY[-16:], CANARY_KEY[10:26])

#: ``AIMLMUSIC_SOAK=full`` picks the full-size soaks (the nox ``reliability`` session sets it).
SOAK_VARIABLE = "AIMLMUSIC_SOAK"
#: Where the soaks write their figures (one JSON per soak); ``docs/reliability.md`` cites them.
FIGURES_VARIABLE = "AIMLMUSIC_FIGURES_DIR"
DEFAULT_FIGURES_DIR = Path(__file__).resolve().parents[2] / ".reliability"


def full_soak() -> bool:
    """True when the full-size soaks were asked for."""
    return os.environ.get(SOAK_VARIABLE, "").strip().lower() == "full"


def soak_size(quick: int, full: int) -> int:
    """``full`` under ``AIMLMUSIC_SOAK=full``, else ``quick``."""
    return full if full_soak() else quick


def leaked_in(text: str | bytes) -> str | None:
    """The canary fragment found in ``text``, or ``None`` when it is clean."""
    haystack = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    for fragment in CANARY_FRAGMENTS:
        if fragment in haystack:
            return fragment
    return None


def files_under(directory: Path) -> Iterable[Path]:
    """Every regular file below ``directory`` (hidden ones included)."""
    return sorted(p for p in directory.rglob("*") if p.is_file())


def record_figures(name: str, figures: dict[str, Any]) -> Path:
    """Print ``figures`` and write them to ``<figures dir>/<name>.json``; return the path.

    Run with ``-s`` to see them on the terminal; the JSON is what the docs quote.
    """
    directory = Path(os.environ.get(FIGURES_VARIABLE) or DEFAULT_FIGURES_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "soak": name,
        "mode": "full" if full_soak() else "quick",
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "platform": sys.platform,
        **figures,
    }
    path = directory / f"{name}.json"
    # One file per soak and backend would be noise: the last backend run wins, which is fine
    # for figures (both must pass the same assertions).
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"\n[reliability] {name}: {json.dumps(payload, sort_keys=True)}")
    return path


class InstantClock:
    """Virtual API time: ``sleep`` jumps ahead at once, so back-off costs no real time."""

    def __init__(self) -> None:
        self.time = 0.0

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        self.time += max(0.0, seconds)
        await anyio.lowlevel.checkpoint()


def mock_client(
    handler: Callable[[httpx.Request], httpx.Response], *, base_url: str, attempts: int
) -> AsyncMusicClient:
    """A client with the canary key whose requests ``handler`` answers, ``attempts`` tries
    per request, on virtual time."""
    return AsyncMusicClient(
        CANARY_KEY,
        base_url=base_url,
        transport=httpx.MockTransport(handler),
        retry=RetryPolicy(attempts=attempts),
        clock=InstantClock(),
    )


def emulated_client(emulator: Emulator) -> AsyncMusicClient:
    """A client with the canary key talking to ``emulator`` in process, on its clock."""
    return AsyncMusicClient(
        CANARY_KEY,
        base_url="http://127.0.0.1",
        transport=httpx.ASGITransport(app=emulator.app),
        clock=emulator.clock,
    )


class RandomThrottle:
    """ASGI middleware answering a share of API requests with 429 (no ``Retry-After``, the
    AI/ML API's error body) before the emulator sees them, as an overloaded gateway does.

    The emulator throttles only by its request window or by scheduled storms; this adds the
    random 429s of the fault soak. ``answered`` counts them.
    """

    def __init__(self, app: Any, probability: float, *, seed: int = 0) -> None:
        self.app = app
        self.probability = probability
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.answered = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/v2/generate/audio":
            with self._lock:
                throttle = self._random.random() < self.probability
                self.answered += throttle
            if throttle:
                body = json.dumps(
                    {
                        "message": "ThrottlerException: Too Many Requests",
                        "path": scope["path"],
                        "requestId": "soak",
                        "statusCode": 429,
                        "timestamp": "2025-11-06T20:13:49.000Z",
                    }
                ).encode()
                await _drain(receive)
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(body)),
                ]
                await send({"type": "http.response.start", "status": 429, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


async def _drain(receive: Any) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


def completed_answer(gid: str, **extra: Any) -> dict[str, Any]:
    """A poll's answer for a completed song (``extra``: more fields, or replacements)."""
    return {
        "id": gid,
        "status": "completed",
        "audio_file": {"url": "https://s.test/a.mp3"},
        **extra,
    }


class PerSongAPI:
    """Answers each song's POST and polls by its prompt: hostile for the songs in ``polls``
    (a function of the id polled) or ``submits`` (a body), well for the others."""

    def __init__(self, polls: dict[str, Any], submits: dict[str, bytes] | None = None) -> None:
        self.polls = polls
        self.submits = submits or {}
        self.prompt_of: dict[str, str] = {}
        self.posts: collections.Counter[str] = collections.Counter()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            prompt = json.loads(request.content)["prompt"]
            self.posts[prompt] += 1
            if prompt in self.submits:
                return httpx.Response(200, content=self.submits[prompt])
            gid = f"gen-{len(self.prompt_of)}:minimax/music-1.5"
            self.prompt_of[gid] = prompt
            return httpx.Response(200, json={"id": gid, "status": "queued"})
        gid = request.url.params["generation_id"]
        prompt = self.prompt_of[gid]
        if prompt in self.polls:
            answer = self.polls[prompt](gid)
            if isinstance(answer, httpx.Response):
                return answer
            return httpx.Response(200, content=answer)
        return httpx.Response(200, json=completed_answer(gid))
