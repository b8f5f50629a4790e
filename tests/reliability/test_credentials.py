"""Credentials under attack: a key echoed with JSON escapes, a malformed key, a caller's
``http_client`` carrying credentials of its own, and httpx's own log lines."""

from __future__ import annotations

import json
import logging
import traceback
from pathlib import Path

import httpx
import pytest

from aimlmusic import (
    AsyncMusicClient,
    AuthenticationError,
    ConfigurationError,
    GenerationFailedError,
    RetryPolicy,
)

from ._support import CANARY_KEY, InstantClock, leaked_in

pytestmark = pytest.mark.anyio

API = "https://api.echo.test"
GEN_ID = "d51032d5-e7b3-4e5b-a5c8-12e0c9474949:minimax/music-1.5"
#: The canary with a slash, so that JSON's optional ``\/`` escape has something to hide.
SLASHED_KEY = CANARY_KEY[:12] + "/" + CANARY_KEY[12:]
AUDIO = b"ID3" + bytes(range(256)) * 8
SIGNED_URL = "https://store.echo.test/a.mp3?X-Amz-Credential=AKIA&X-Amz-Signature=SIGNATURE1234"


def _escape_slashes(text: str) -> str:
    return json.dumps(text).replace("/", "\\/")


def _escape_everything(text: str) -> str:
    return '"' + "".join(f"\\u{ord(c):04x}" for c in text) + '"'


ESCAPES = {"slashes": _escape_slashes, "every character": _escape_everything}


def _renderings(exc: BaseException) -> str:
    parts = [
        str(exc),
        repr(exc),
        "".join(traceback.format_exception(exc)),
        repr(vars(exc)),
    ]
    return "\n".join(parts)


@pytest.mark.parametrize("escape", list(ESCAPES))
async def test_a_key_echoed_with_json_escapes_is_redacted_in_errors(escape: str) -> None:
    """A server echoing the Authorization header JSON-escaped (\\/ or \\uXXXX) in a 401 body
    and in a failed generation's message cannot make an error show the key."""
    encode = ESCAPES[escape]

    def handler(request: httpx.Request) -> httpx.Response:
        echoed = encode(request.headers["Authorization"])
        if request.url.params["generation_id"] == "denied":
            body = '{"message": ' + echoed + ', "path": ' + echoed + ', "statusCode": 401}'
            return httpx.Response(401, content=body.encode())
        body = (
            '{"id": "' + GEN_ID + '", "status": "error", '
            '"error": {"name": "Bad", "message": ' + echoed + "}}"
        )
        return httpx.Response(200, content=body.encode())

    client = AsyncMusicClient(
        SLASHED_KEY,
        base_url=API,
        transport=httpx.MockTransport(handler),
        clock=InstantClock(),
        retry=RetryPolicy(attempts=1),
    )
    async with client:
        with pytest.raises(AuthenticationError) as denied:
            await client.get("denied")
        with pytest.raises(GenerationFailedError) as failed:
            await client.wait(GEN_ID)
    assert "Bearer <redacted>" in denied.value.message  # the echo was there, and cleaned
    assert failed.value.error_message == "Bearer <redacted>"
    for exc in (denied.value, failed.value):
        text = _renderings(exc) + repr(getattr(exc, "body", None))
        assert SLASHED_KEY not in text
        assert leaked_in(text.replace("/", "")) is None


BAD_KEYS = {
    "internal newline": CANARY_KEY[:20] + "\n" + CANARY_KEY[20:],
    "carriage return": CANARY_KEY[:20] + "\r" + CANARY_KEY[20:],
    "NUL": CANARY_KEY[:20] + "\x00" + CANARY_KEY[20:],
    "escape": CANARY_KEY[:20] + "\x1b" + CANARY_KEY[20:],
    "tab": CANARY_KEY[:20] + "\t" + CANARY_KEY[20:],
    "non-ASCII": CANARY_KEY[:20] + "é" + CANARY_KEY[20:],
    "non-breaking space": CANARY_KEY[:20] + "\u00a0" + CANARY_KEY[20:],
}


@pytest.mark.parametrize("case", list(BAD_KEYS))
async def test_a_malformed_key_is_refused_at_construction_naming_the_problem(case: str) -> None:
    """A key that cannot be an HTTP header value is a ConfigurationError when the client is
    created: it names the problem and where, shows no part of the key, and nothing is sent."""
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={"id": GEN_ID, "status": "queued"})

    with pytest.raises(ConfigurationError) as caught:
        AsyncMusicClient(BAD_KEYS[case], base_url=API, transport=httpx.MockTransport(handler))
    message = str(caught.value)
    assert "API key" in message, message
    assert "character 21 of" in message, message
    assert leaked_in(_renderings(caught.value)) is None
    assert CANARY_KEY[:8] not in message
    assert CANARY_KEY[-8:] not in message
    assert sent == []


def test_a_malformed_key_from_the_environment_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """AIML_API_KEY with a line break inside: the error names the variable, not the key."""
    monkeypatch.setenv("AIML_API_KEY", BAD_KEYS["internal newline"])
    with pytest.raises(ConfigurationError, match="AIML_API_KEY environment variable") as caught:
        AsyncMusicClient(base_url=API)
    assert "line break" in str(caught.value)
    assert leaked_in(_renderings(caught.value)) is None


class _CustomBearer(httpx.Auth):
    """A caller's own auth, adding a bearer token and an API-key header of its own."""

    def auth_flow(self, request: httpx.Request):  # type: ignore[no-untyped-def]
        request.headers["Authorization"] = "Bearer caller-token-XYZ"
        request.headers["X-Caller-Key"] = "caller-key-XYZ"
        yield request


CALLER_AUTHS: dict[str, httpx.Auth] = {
    "basic": httpx.BasicAuth("caller-user", "caller-password-XYZ"),
    "custom": _CustomBearer(),
}


@pytest.mark.parametrize("auth", list(CALLER_AUTHS))
async def test_a_callers_client_credentials_never_reach_storage_and_never_replace_ours(
    auth: str, tmp_path: Path
) -> None:
    """With http_client carrying auth=, default credential headers and cookies: API calls
    carry our bearer key, and the storage host gets no Authorization, cookie or caller
    header on any request."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "api.echo.test":
            body = {"id": GEN_ID, "status": "completed", "audio_file": {"url": SIGNED_URL}}
            return httpx.Response(200, json=body)
        return httpx.Response(200, content=AUDIO)

    caller = httpx.AsyncClient(
        transport=httpx.MockTransport(handler),
        auth=CALLER_AUTHS[auth],
        headers={"X-Api-Key": "caller-default-XYZ", "Authorization": "Bearer default-XYZ"},
        cookies={"session": "caller-cookie-XYZ"},
    )
    async with caller:
        client = AsyncMusicClient(
            CANARY_KEY, base_url=API, http_client=caller, clock=InstantClock()
        )
        async with client:
            generation = await client.get(GEN_ID)
            await client.download(generation, tmp_path / "song.mp3")
    api = [r for r in seen if r.url.host == "api.echo.test"]
    store = [r for r in seen if r.url.host == "store.echo.test"]
    assert api
    assert store
    for request in api:
        assert request.headers["Authorization"] == f"Bearer {CANARY_KEY}"
    for request in store:
        headers = "\n".join(f"{k}: {v}" for k, v in request.headers.multi_items())
        assert "XYZ" not in headers, headers
        assert "authorization" not in request.headers
        assert "cookie" not in request.headers
    assert (tmp_path / "song.mp3").read_bytes() == AUDIO


async def test_httpx_info_log_lines_do_not_show_presigned_signatures(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Under an INFO logging set-up, httpx's "HTTP Request: GET <url>" line for a download
    shows the storage URL without its signature (and still shows the poll's id)."""
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="httpx")

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "api.echo.test":
            body = {"id": GEN_ID, "status": "completed", "audio_file": {"url": SIGNED_URL}}
            return httpx.Response(200, json=body)
        return httpx.Response(200, content=AUDIO)

    client = AsyncMusicClient(
        CANARY_KEY, base_url=API, transport=httpx.MockTransport(handler), clock=InstantClock()
    )
    async with client:
        await client.download(GEN_ID, tmp_path / "song.mp3")
    lines = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert any("store.echo.test/a.mp3" in line for line in lines), lines
    assert any("generation_id=" in line for line in lines), lines
    text = "\n".join(lines) + caplog.text
    assert "SIGNATURE1234" not in text
    assert "AKIA" not in text


async def test_httpx_info_log_lines_do_not_show_a_key_echoed_in_the_reason_phrase(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """httpx quotes the status line in its INFO line; a server echoing the key there does
    not get it into the log."""
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="httpx")

    def handler(request: httpx.Request) -> httpx.Response:
        reason = f"Bad key {request.headers['Authorization']}".encode()
        return httpx.Response(401, json={"message": "no"}, extensions={"reason_phrase": reason})

    client = AsyncMusicClient(
        CANARY_KEY, base_url=API, transport=httpx.MockTransport(handler), clock=InstantClock()
    )
    async with client:
        with pytest.raises(AuthenticationError):
            await client.get(GEN_ID)
    lines = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert any("Bad key Bearer <redacted>" in line for line in lines), lines
    assert leaked_in(caplog.text) is None
