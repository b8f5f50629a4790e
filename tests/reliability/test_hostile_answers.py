"""Hostile answers that used to stop a whole run: non-finite or negative numbers, ids that
cannot be sent back, a poll answered about another generation, and answers too large to
hold. Each fails its own song with a ResponseValidationError; the batch goes on."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from typing import Any

import anyio
import httpx
import pytest

from aimlmusic import (
    AmbiguousSubmissionError,
    AsyncMusicClient,
    AuthenticationError,
    Limits,
    RequestValidationError,
    ResponseValidationError,
    RetryPolicy,
    ScaledClock,
    SizeLimits,
    SongRequest,
    SongResult,
)

from ._support import CANARY_KEY, InstantClock, PerSongAPI, completed_answer

pytestmark = pytest.mark.anyio

API = "https://api.hostile.test"
GEN_ID = "d51032d5-e7b3-4e5b-a5c8-12e0c9474949:minimax/music-1.5"
SURROGATE_ID = "\ud800bad:minimax/music-1.5"


def _raw(gid: str, tail: str) -> bytes:
    """A completed answer whose last field is written by hand (JSON json.dumps won't write)."""
    head = json.dumps(completed_answer(gid))[:-1]
    return (head + ", " + tail + "}").encode()


# Poll answers that are valid JSON for a parser, but whose numbers no file can hold or no
# count can have. Each is {song: body builder}.
BAD_NUMBERS: dict[str, Any] = {
    "credits 1e999": lambda gid: _raw(gid, '"meta": {"usage": {"credits_used": 1e999}}'),
    "credits -1e999": lambda gid: _raw(gid, '"meta": {"usage": {"credits_used": -1e999}}'),
    "credits NaN": lambda gid: _raw(gid, '"meta": {"usage": {"credits_used": NaN}}'),
    "credits Infinity": lambda gid: _raw(gid, '"meta": {"usage": {"credits_used": Infinity}}'),
    "negative credits": lambda gid: json.dumps(
        completed_answer(gid, meta={"usage": {"credits_used": -5}})
    ).encode(),
    "negative size": lambda gid: json.dumps(
        completed_answer(gid, extra_info={"music_size": -100, "music_duration": 1000})
    ).encode(),
    "negative duration": lambda gid: json.dumps(
        completed_answer(gid, extra_info={"music_duration": -1})
    ).encode(),
    "infinite duration": lambda gid: _raw(gid, '"extra_info": {"music_duration": 1e400}'),
    "NaN deep in an extra": lambda gid: _raw(gid, '"x": {"y": [1, {"z": NaN}]}'),
}


def _songs(names: list[str]) -> list[tuple[str, SongRequest]]:
    return [
        (name, SongRequest(prompt=f"Song about {name}, slow and warm", lyrics="[Verse]\nla la"))
        for name in names
    ]


async def _run(
    api: PerSongAPI, songs: list[tuple[str, SongRequest]], **client_kwargs: Any
) -> dict[str, SongResult]:
    results: dict[str, SongResult] = {}
    client = AsyncMusicClient(
        CANARY_KEY,
        base_url=API,
        transport=httpx.MockTransport(api),
        clock=ScaledClock(2000),
        limits=Limits(requests_per_minute=100_000, max_in_flight=20),
        **client_kwargs,
    )
    async with client:
        with anyio.fail_after(60):
            async with client.generate_many(songs, deadline=None) as stream:
                async for result in stream:
                    results[result.key] = result
    assert len(results) == len(songs)
    return results


async def test_non_finite_or_negative_numbers_fail_only_their_own_song() -> None:
    """credits_used of 1e999, NaN, Infinity or below zero, a negative size or duration, a NaN
    deep in an unknown field: each is a ResponseValidationError naming the field, for its
    song only; the well-behaved songs complete and nothing is sent twice."""
    songs = _songs([*BAD_NUMBERS, "fine 1", "fine 2"])
    api = PerSongAPI({songs[i][1].prompt: BAD_NUMBERS[name] for i, name in enumerate(BAD_NUMBERS)})
    results = await _run(api, songs)
    for name, _ in songs:
        result = results[name]
        if name in BAD_NUMBERS:
            assert isinstance(result.error, ResponseValidationError), (name, result.error)
            assert "number" in result.error.reason or "negative" in result.error.reason
        else:
            assert result.ok, (name, result.error)
    assert set(api.posts.values()) == {1}


UNSENDABLE_IDS = {
    "lone surrogate": "\ud800x:minimax/music-1.5",
    "newline": "abc\ndef:minimax/music-1.5",
    "escape": "abc\x1b[31mdef:minimax/music-1.5",
    "NUL": "abc\x00def",
}


async def test_an_id_that_cannot_be_sent_back_fails_its_song_and_keeps_the_raw_id() -> None:
    """A submission answered with an id holding a lone surrogate or a control character is a
    ResponseValidationError for that song (not ambiguous, not resent, no exception group),
    carrying the raw id; the other songs complete."""
    names = [*UNSENDABLE_IDS, "fine 1", "fine 2", "fine 3"]
    songs = _songs(names)
    submits = {
        songs[i][1].prompt: json.dumps({"id": gid, "status": "queued"}).encode()
        for i, gid in enumerate(UNSENDABLE_IDS.values())
    }
    api = PerSongAPI({}, submits)
    results = await _run(api, songs)
    for name, _ in songs:
        result = results[name]
        if name in UNSENDABLE_IDS:
            assert isinstance(result.error, ResponseValidationError), (name, result.error)
            assert result.error.generation_id == UNSENDABLE_IDS[name]
            assert "cannot be sent back" in str(result.error)
            str(result.error).encode("utf-8")  # the message itself is printable anywhere
        else:
            assert result.ok, (name, result.error)
    assert set(api.posts.values()) == {1}


async def test_get_with_an_id_that_cannot_be_sent_is_a_request_validation_error() -> None:
    """client.get("\\ud800x") names generation_id in a RequestValidationError, sends
    nothing, and never raises a raw UnicodeEncodeError."""
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json=completed_answer(GEN_ID))

    client = AsyncMusicClient(
        CANARY_KEY, base_url=API, transport=httpx.MockTransport(handler), clock=InstantClock()
    )
    async with client:
        for bad in ("\ud800x", "a\nb", "a\x1bb"):
            with pytest.raises(RequestValidationError) as caught:
                await client.get(bad)
            assert caught.value.field == "generation_id"
            str(caught.value).encode("utf-8")
    assert sent == []


async def test_a_poll_answered_about_another_generation_fails_that_song_only() -> None:
    """A poll whose answer carries a different id is refused (ResponseValidationError) for
    that song, whose result keeps the id it was submitted with."""
    songs = _songs(["swapped", "fine 1", "fine 2"])
    api = PerSongAPI(
        {songs[0][1].prompt: lambda gid: json.dumps(completed_answer("someone-else:x")).encode()}
    )
    results = await _run(api, songs)
    swapped = results["swapped"]
    assert isinstance(swapped.error, ResponseValidationError), swapped.error
    assert "someone-else" in str(swapped.error)
    assert swapped.generation is not None
    assert swapped.generation.id == "gen-0:minimax/music-1.5"
    assert results["fine 1"].ok
    assert results["fine 2"].ok


class Trickle(httpx.AsyncByteStream):
    """A response body streamed in 64 kB pieces, as a socket would deliver it (a plain
    ``content=`` body would be read, and decoded, whole before the client saw it)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.closed = False

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        for start in range(0, len(self.data), 65536):
            if self.closed:  # as a closed socket would, the stream ends
                raise httpx.ReadError("closed")
            yield self.data[start : start + 65536]

    async def aclose(self) -> None:
        self.closed = True


def _gzip_bomb(decoded_bytes: int) -> bytes:
    head = b'{"id": "' + GEN_ID.encode() + b'", "status": "queued", "pad": "'
    return gzip.compress(head + b" " * decoded_bytes + b'"}', compresslevel=9)


async def test_a_gzip_bomb_answer_is_refused_at_the_cap_with_bounded_memory() -> None:
    """A 200 MB gzip answer to a poll (200 kB on the wire) is a ResponseValidationError
    naming the cap, read no further than the cap: memory stays a few MB."""
    bomb = _gzip_bomb(200_000_000)
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        return httpx.Response(
            200,
            stream=Trickle(bomb),
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )

    client = AsyncMusicClient(
        CANARY_KEY,
        base_url=API,
        transport=httpx.MockTransport(handler),
        clock=InstantClock(),
        retry=RetryPolicy(attempts=1),
    )
    tracemalloc.start()
    try:
        async with client:
            with pytest.raises(ResponseValidationError) as caught:
                await client.get(GEN_ID)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "larger than the cap of 1,000,000 bytes" in str(caught.value)
    assert peak < 20_000_000, f"peak {peak:,} bytes"
    assert calls == ["GET"]


async def test_an_oversized_submission_answer_is_ambiguous_and_not_resent() -> None:
    """A POST answered with more than SizeLimits.response_bytes may still have been accepted:
    AmbiguousSubmissionError caused by the cap's ResponseValidationError, sent once."""
    big = json.dumps({"id": GEN_ID, "status": "queued", "pad": "x" * 5000}).encode()
    api = PerSongAPI({}, {"Song about big, slow and warm": big})
    client = AsyncMusicClient(
        CANARY_KEY,
        base_url=API,
        transport=httpx.MockTransport(api),
        clock=InstantClock(),
        size_limits=SizeLimits(response_bytes=4096),
    )
    async with client:
        with pytest.raises(AmbiguousSubmissionError) as caught:
            await client.submit(_songs(["big"])[0][1])
    assert isinstance(caught.value.cause, ResponseValidationError)
    assert "cap of 4,096 bytes" in str(caught.value.cause)
    assert sum(api.posts.values()) == 1


async def test_an_oversized_error_body_keeps_its_status_error_cut_at_the_cap() -> None:
    """A 401 with a 5 MB body is still an AuthenticationError; what is kept of it is bounded."""
    body = json.dumps({"message": "go away", "junk": "x" * 5_000_000}).encode()
    client = AsyncMusicClient(
        CANARY_KEY,
        base_url=API,
        transport=httpx.MockTransport(lambda request: httpx.Response(401, content=body)),
        clock=InstantClock(),
        retry=RetryPolicy(attempts=1),
    )
    async with client:
        with pytest.raises(AuthenticationError) as caught:
            await client.get(GEN_ID)
    assert len(str(caught.value)) < 2_000
    assert isinstance(caught.value.body, str)
    assert len(caught.value.body) < 2_000
