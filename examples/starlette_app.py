"""A web service that generates songs: one client for the whole app, made in the lifespan.

``POST /songs`` with ``{"prompt": ..., "lyrics": ...}`` submits a song and answers 202 with
its id at once (a song takes a minute or more: no request waits for it);
``GET /songs/{id}`` reports its status and, once completed, the URL of its audio. Every
request shares the one client, so the account's request budget is shared too.

    pip install 'aimlmusic' starlette uvicorn
    AIML_API_KEY=... uvicorn examples.starlette_app:app

Without a key, point it at a local emulator (``aimlmusic emulator`` prints its URL):

    AIMLMUSIC_BASE_URL=http://127.0.0.1:PORT AIML_API_KEY=test-key \\
        uvicorn examples.starlette_app:app
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import aimlmusic


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """One client per app: made at startup, closed at shutdown."""
    async with aimlmusic.AsyncMusicClient() as client:  # key from AIML_API_KEY
        app.state.music = client
        yield


def _client(request: Request) -> aimlmusic.AsyncMusicClient:
    client: aimlmusic.AsyncMusicClient = request.app.state.music
    return client


async def start_song(request: Request) -> JSONResponse:
    """Submit the song in the body; 202 with its id, or 422 naming what is wrong."""
    try:
        body = await request.json()
        song = aimlmusic.SongRequest(prompt=body["prompt"], lyrics=body["lyrics"])
    except (ValueError, KeyError, TypeError) as exc:
        # RequestValidationError is a ValueError: it names the field and the limit.
        return JSONResponse({"error": str(exc)}, status_code=422)
    try:
        generation = await _client(request).submit(song)
    except aimlmusic.AimlMusicError as exc:
        return JSONResponse({"error": str(exc)}, status_code=502)
    return JSONResponse({"id": generation.id, "status": generation.status.value}, 202)


async def song_status(request: Request) -> JSONResponse:
    """The song's status; its audio URL once completed, the error once failed."""
    try:
        generation = await _client(request).get(request.path_params["generation_id"])
    except aimlmusic.NotFoundError:
        return JSONResponse({"error": "no such song"}, status_code=404)
    except aimlmusic.AimlMusicError as exc:
        return JSONResponse({"error": str(exc)}, status_code=502)
    answer = {"id": generation.id, "status": generation.status.value}
    if generation.audio_file is not None:
        answer["audio_url"] = generation.audio_file.url
    if generation.error is not None:
        answer["error"] = generation.error.message or generation.error.name or "failed"
    return JSONResponse(answer)


app = Starlette(
    routes=[
        Route("/songs", start_song, methods=["POST"]),
        Route("/songs/{generation_id:path}", song_status, methods=["GET"]),
    ],
    lifespan=lifespan,
)
