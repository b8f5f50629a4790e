"""Hostile input on the way in: whatever the server answers, a song fails with
:class:`ResponseValidationError` (or, for a submission, an ambiguous error caused by one),
its text stays bounded, and nothing else escapes the client."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aimlmusic import (
    AimlMusicError,
    AmbiguousSubmissionError,
    APIStatusError,
    AsyncMusicClient,
    Generation,
    Limits,
    ResponseValidationError,
    ScaledClock,
    SongRequest,
    SongResult,
)
from aimlmusic._converter import generation_from_json

from ._support import CANARY_KEY, PerSongAPI, mock_client

API = "https://api.hostile.test"
GEN_ID = "d51032d5-e7b3-4e5b-a5c8-12e0c9474949:minimax/music-1.5"
#: What an error's text may reasonably grow to, whatever the body was.
MAX_MESSAGE_CHARS = 2_000
MAX_EXCERPT_CHARS = 1_000

DEEP = 100_000


def _song() -> SongRequest:
    return SongRequest(prompt="Warm lo-fi ballad, soft piano", lyrics="[Verse]\nStreetlights")


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


# Bodies of a 200 answer that no reading of the schema accepts. Each becomes a
# ResponseValidationError for the song, never another exception.
HOSTILE_BODIES: dict[str, bytes] = {
    "empty": b"",
    "plain text": b"OK",
    "html page": b"<html><body><h1>502 Bad Gateway</h1></body></html>",
    "binary": bytes(range(256)),
    "truncated json": b'{"id": "' + GEN_ID.encode() + b'", "status": "compl',
    "trailing garbage": _json({"id": GEN_ID, "status": "queued"}) + b" trailing",
    "huge non-json": b"<p>" + b"x" * (8 * 1024 * 1024),
    "huge array": b"[" + b"1," * (2 * 1024 * 1024) + b"1]",
    "deeply nested array": b"[" * DEEP + b"]" * DEEP,
    "deeply nested object": b'{"a":' * DEEP + b"1" + b"}" * DEEP,
    "giant integer": b'{"id": "x", "status": "queued", "n": ' + b"9" * 5000 + b"}",
    "null": b"null",
    "number": b"42",
    "string": b'"completed"',
    "list": _json([{"id": GEN_ID, "status": "completed"}]),
    "no fields": b"{}",
    "missing status": _json({"id": GEN_ID}),
    "missing id": _json({"status": "completed"}),
    "numeric status": _json({"id": GEN_ID, "status": 3}),
    "null status": _json({"id": GEN_ID, "status": None}),
    "list status": _json({"id": GEN_ID, "status": ["completed"]}),
    "numeric id": _json({"id": 12345, "status": "queued"}),
    "null id": _json({"id": None, "status": "queued"}),
    "audio_file without url": _json({"id": GEN_ID, "status": "completed", "audio_file": {}}),
    "audio_file url null": _json(
        {"id": GEN_ID, "status": "completed", "audio_file": {"url": None}}
    ),
    "audio_file url number": _json({"id": GEN_ID, "status": "completed", "audio_file": {"url": 5}}),
    "audio_file string": _json(
        {"id": GEN_ID, "status": "completed", "audio_file": "https://x.test/a.mp3"}
    ),
    "audio_file list": _json({"id": GEN_ID, "status": "completed", "audio_file": []}),
    "error string": _json({"id": GEN_ID, "status": "error", "error": "boom"}),
    "error without message": _json({"id": GEN_ID, "status": "error", "error": {"name": "X"}}),
    "meta list": _json({"id": GEN_ID, "status": "queued", "meta": []}),
    "usage string": _json({"id": GEN_ID, "status": "queued", "meta": {"usage": "lots"}}),
    "credits as text": _json(
        {"id": GEN_ID, "status": "queued", "meta": {"usage": {"credits_used": "12"}}}
    ),
}


def _bounded(exc: BaseException) -> None:
    assert len(str(exc)) <= MAX_MESSAGE_CHARS, f"message of {len(str(exc))} characters"
    body = getattr(exc, "body", None)
    if isinstance(body, str):
        assert len(body) <= MAX_EXCERPT_CHARS, f"body excerpt of {len(body)} characters"


def _client(handler: Callable[[httpx.Request], httpx.Response]) -> AsyncMusicClient:
    return mock_client(handler, base_url=API, attempts=3)


# --------------------------------------------------------------------------- the parser


def json_values() -> st.SearchStrategy[Any]:
    """Any JSON value, small."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False),
        st.text(max_size=10),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
        ),
        max_leaves=12,
    )


def near_generations() -> st.SearchStrategy[dict[str, Any]]:
    """Generation-shaped objects with any field replaced by any JSON value."""
    field_values = {
        "id": st.one_of(st.just(GEN_ID), json_values()),
        "status": st.one_of(
            st.sampled_from(["queued", "generating", "completed", "error", "waiting"]),
            json_values(),
        ),
        "audio_file": st.one_of(
            st.fixed_dictionaries({"url": st.one_of(st.just("https://x.test/a"), json_values())}),
            json_values(),
        ),
        "error": st.one_of(
            st.fixed_dictionaries({"name": json_values(), "message": json_values()}),
            json_values(),
        ),
        "meta": st.one_of(
            st.fixed_dictionaries(
                {"usage": st.fixed_dictionaries({"credits_used": json_values()})}
            ),
            json_values(),
        ),
        "extra_info": json_values(),
    }
    return st.fixed_dictionaries({}, optional=field_values)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.one_of(
        near_generations().map(lambda v: json.dumps(v).encode()),
        json_values().map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=64),
    )
)
def test_parser_fails_only_with_response_validation_error(body: bytes) -> None:
    """Any body, JSON or not, parses into a Generation or raises ResponseValidationError with
    bounded text; a parsed Generation has a string id and a status."""
    try:
        generation = generation_from_json(body)
    except ResponseValidationError as exc:
        _bounded(exc)
        return
    assert isinstance(generation, Generation)
    assert isinstance(generation.id, str)
    assert isinstance(generation.status.value, str)


# --------------------------------------------------------------------------- through the client


@pytest.mark.anyio
@pytest.mark.parametrize("case", sorted(HOSTILE_BODIES))
async def test_hostile_poll_answer_is_a_response_validation_error(case: str) -> None:
    """A poll answered 200 with a hostile body raises ResponseValidationError with bounded
    text, and the client goes on working for the next request."""
    body = HOSTILE_BODIES[case]
    answers = [httpx.Response(200, content=body)]

    def handler(request: httpx.Request) -> httpx.Response:
        if answers:
            return httpx.Response(200, content=answers[0].content)
        return httpx.Response(200, json={"id": GEN_ID, "status": "generating"})

    async with _client(handler) as client:
        with anyio.fail_after(30), pytest.raises(ResponseValidationError) as info:
            await client.get(GEN_ID)
        _bounded(info.value)
        answers.clear()
        with anyio.fail_after(30):
            assert (await client.get(GEN_ID)).status == "generating"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "case", ["plain text", "truncated json", "numeric status", "missing id", "deeply nested array"]
)
async def test_hostile_submission_answer_is_ambiguous_and_not_resent(case: str) -> None:
    """A 200 to a submission that cannot be read may still have created a paid generation:
    it is reported as AmbiguousSubmissionError caused by a ResponseValidationError, and the
    POST is sent exactly once."""
    posts: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        posts.append(request)
        return httpx.Response(200, content=HOSTILE_BODIES[case])

    async with _client(handler) as client:
        with anyio.fail_after(30), pytest.raises(AmbiguousSubmissionError) as info:
            await client.submit(_song())
    assert isinstance(info.value.cause, ResponseValidationError)
    assert len(posts) == 1
    _bounded(info.value)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, b"<html>" + b"y" * (4 * 1024 * 1024)),
        (401, b"[" * DEEP + b"]" * DEEP),
        (403, b"\xff\xfe\x00garbage"),
        (404, _json({"message": ["a" * 100_000], "statusCode": 404})),
        (429, b""),
        (500, b'{"message": ' + b"9" * 5000 + b"}"),
    ],
)
async def test_hostile_error_bodies_keep_the_status_error(status: int, body: bytes) -> None:
    """An error status with a huge, deeply nested, binary or odd body still raises the
    status's own APIStatusError, with bounded text."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body)

    async with _client(handler) as client:
        with anyio.fail_after(30), pytest.raises(APIStatusError) as info:
            await client.get(GEN_ID)
    assert info.value.status_code == status
    _bounded(info.value)


@pytest.mark.anyio
async def test_lying_content_encoding_is_a_response_validation_error() -> None:
    """A body that claims to be gzip and is not raises ResponseValidationError (no httpx
    DecodingError escapes)."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"not gzip", headers={"Content-Encoding": "gzip"})

    async with _client(handler) as client:
        with anyio.fail_after(30), pytest.raises(ResponseValidationError):
            await client.get(GEN_ID)


@pytest.mark.anyio
async def test_every_failure_is_a_library_error() -> None:
    """Across all hostile bodies, on polls and submissions, every exception raised is an
    AimlMusicError: no httpx, json, cattrs or recursion error escapes."""
    for case, body in HOSTILE_BODIES.items():

        def handler(request: httpx.Request, body: bytes = body) -> httpx.Response:
            return httpx.Response(200, content=body)

        async with _client(handler) as client:
            for call in (lambda c: c.get(GEN_ID), lambda c: c.submit(_song())):
                try:
                    with anyio.fail_after(30):
                        await call(client)
                except AimlMusicError:
                    pass
                except Exception as exc:  # pragma: no cover - the failure being tested
                    pytest.fail(f"{case}: {type(exc).__module__}.{type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- inside a batch

#: Hostile cases used inside a batch (one song each), on polls or on the submission; the
#: multi-megabyte ones are covered one by one above and would only slow the batch down.
BATCH_CASES = sorted(case for case in HOSTILE_BODIES if not case.startswith("huge"))


@pytest.mark.anyio
async def test_hostile_answers_fail_only_their_own_song_in_a_batch() -> None:
    """In one batch, each song whose polls are answered with a hostile body ends with a
    ResponseValidationError, each whose submission is answered with one ends ambiguous (sent
    once), and every other song completes: the batch goes on to the end."""
    songs = [
        (f"s{i:03d}", SongRequest(prompt=f"Batch song number {i:03d}", lyrics="[Verse]\nla la la"))
        for i in range(len(BATCH_CASES) * 2 + 20)
    ]
    hostile_polls = {songs[i][1].prompt: HOSTILE_BODIES[c] for i, c in enumerate(BATCH_CASES)}
    offset = len(BATCH_CASES)
    hostile_submits = {
        songs[offset + i][1].prompt: HOSTILE_BODIES[c] for i, c in enumerate(BATCH_CASES)
    }
    api = PerSongAPI(
        {prompt: (lambda gid, body=body: body) for prompt, body in hostile_polls.items()},
        hostile_submits,
    )
    results: dict[str, SongResult] = {}
    async with AsyncMusicClient(
        CANARY_KEY,
        base_url=API,
        transport=httpx.MockTransport(api),
        clock=ScaledClock(2000),
        limits=Limits(requests_per_minute=100_000, max_in_flight=20),
    ) as client:
        with anyio.fail_after(60):
            # No per-song deadline: parsing the huge bodies takes real time, which compressed
            # time would turn into minutes; this test is about errors, not time.
            async with client.generate_many(songs, deadline=None) as stream:
                async for result in stream:
                    assert result.key not in results
                    results[result.key] = result
    assert len(results) == len(songs)
    for key, request in songs:
        result = results[key]
        if request.prompt in hostile_polls:
            assert isinstance(result.error, ResponseValidationError), (key, result.error)
            _bounded(result.error)
        elif request.prompt in hostile_submits:
            assert isinstance(result.error, AmbiguousSubmissionError), (key, result.error)
            assert isinstance(result.error.cause, ResponseValidationError)
        else:
            assert result.ok, (key, result.error)
    assert set(api.posts.values()) == {1}  # nothing was sent twice
