"""A stateless fake of the music endpoint for the scale benchmark.

The 10,000-song benchmark measures the *client's* memory per song, so the server side must
hold nothing per song: a job's completion time is written into its id when it is submitted,
and a GET reads it back. Served in-process with ``httpx.MockTransport``, it still sends every
request through the client's whole stack (budget, transport, retries, converter).
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable

import httpx

import aimlmusic

__all__ = ["StatelessFakeAPI"]

_MODEL = "minimax/music-1.5"


class StatelessFakeAPI:
    """Answers POST/GET ``/v2/generate/audio``; the id says when the song completes."""

    def __init__(
        self,
        clock: aimlmusic.Clock,
        durations: Callable[[random.Random], float],
        *,
        seed: int = 0,
    ) -> None:
        self._clock = clock
        #: Draws a song's generating time; may be swapped between batches.
        self.durations = durations
        self._rng = random.Random(seed)
        self._numbers = itertools.count()
        self.submits = 0
        self.polls = 0

    def transport(self) -> httpx.MockTransport:
        """An httpx transport that serves this fake."""
        return httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return self._submit()
        if request.method == "GET":
            return self._poll(request.url.params.get("generation_id", ""))
        return httpx.Response(405, json={"message": "method not allowed", "statusCode": 405})

    def _submit(self) -> httpx.Response:
        self.submits += 1
        completes_at = self._clock.now() + self.durations(self._rng)
        generation_id = f"{next(self._numbers):012d}-{completes_at:.3f}:{_MODEL}"
        return httpx.Response(200, json={"id": generation_id, "status": "generating"})

    def _poll(self, generation_id: str) -> httpx.Response:
        self.polls += 1
        try:
            completes_at = float(generation_id.split(":", 1)[0].split("-", 1)[1])
        except (IndexError, ValueError):
            body = {"message": "not found", "statusCode": 404}
            return httpx.Response(404, content=json.dumps(body).encode())
        if self._clock.now() < completes_at:
            return httpx.Response(200, json={"id": generation_id, "status": "generating"})
        return httpx.Response(
            200,
            json={
                "id": generation_id,
                "status": "completed",
                "audio_file": {"url": f"https://files.example/{generation_id[:12]}.mp3"},
                "meta": {"usage": {"credits_used": 1}},
            },
        )
