"""The API key never shows up in reprs, DEBUG logs, exception text or tracebacks."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import pickle
import traceback
import urllib.parse
from pathlib import Path

import anyio
import httpx
import pytest
from _http_fakes import AUDIO_URL, GEN_ID, RecordingClock, completed_json, generation_json, song
from anyio.abc import SocketAttribute, SocketStream

from aimlmusic import (
    AimlMusicError,
    AmbiguousSubmissionError,
    AsyncMusicClient,
    AuthenticationError,
    ConfigurationError,
    DownloadError,
    GenerationFailedError,
    MusicClient,
    ResponseValidationError,
    RetryPolicy,
)
from aimlmusic._converter import structure_generation
from aimlmusic._redact import Redactor, Secret

pytestmark = pytest.mark.anyio

CANARY = "sk-CANARY-7f3e9a1b2c4d5e6f"


def echo(request: httpx.Request) -> str:
    """What a careless server might send back: the credentials it received."""
    return f"bad credentials: {request.headers.get('Authorization')} ({CANARY})"


def assert_clean(exc: BaseException) -> None:
    """No rendering of the exception or of anything chained to it contains the key."""
    renderings = [
        str(exc),
        repr(exc),
        "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        repr(getattr(exc, "body", None)),
        repr(getattr(exc, "message", None)),
        repr(vars(exc)),
    ]
    for text in renderings:
        assert CANARY not in text, text
    chained = exc.__cause__ or exc.__context__
    if chained is not None:
        assert_clean(chained)


def client_with(handler: httpx.MockTransport, **kwargs: object) -> AsyncMusicClient:
    return AsyncMusicClient(
        CANARY,
        base_url="https://api.test",
        transport=handler,
        clock=RecordingClock(),
        retry=RetryPolicy(attempts=2),
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture every logger (ours, httpx, httpcore) at DEBUG."""
    caplog.set_level(logging.DEBUG)
    # Per logger too: a CLI test earlier in the run may have set "aimlmusic" to WARNING.
    for name in ("aimlmusic", "httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


async def test_errors_built_from_bodies_that_echo_the_key_are_redacted(
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    """A server echoing the key in error bodies cannot make an exception or log show it."""
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        if request.method == "POST":
            return httpx.Response(500, json={"message": echo(request), "requestId": "r1"})
        if len(calls) == 2:
            return httpx.Response(503, text=echo(request))
        return httpx.Response(401, json={"message": echo(request), "path": echo(request)})

    raised: list[BaseException] = []
    async with client_with(httpx.MockTransport(handler)) as client:
        with pytest.raises(AmbiguousSubmissionError) as ambiguous:
            await client.submit(song())
        raised.append(ambiguous.value)
        with pytest.raises(AuthenticationError) as auth:
            await client.get(GEN_ID)
        raised.append(auth.value)
    assert "<redacted>" in auth.value.message
    assert isinstance(auth.value.body, dict)
    assert "<redacted>" in auth.value.body["path"]
    for exc in raised:
        assert_clean(exc)
    assert CANARY not in debug_logs.text
    assert "retrying GET" in debug_logs.text  # the logs did record the retry


async def test_unreadable_success_bodies_that_echo_the_key_are_redacted() -> None:
    """ResponseValidationError's reason and body excerpt are redacted too."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=echo(request))

    async with client_with(httpx.MockTransport(handler)) as client:
        with pytest.raises(ResponseValidationError) as caught:
            await client.get(GEN_ID)
    assert caught.value.body is not None
    assert "<redacted>" in caught.value.body
    assert_clean(caught.value)


async def test_a_generation_error_message_that_echoes_the_key_is_redacted() -> None:
    """Even the API's own error description inside a generation is cleaned."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = generation_json("error", error={"name": "Oops", "message": echo(request)})
        return httpx.Response(200, json=body)

    async with client_with(httpx.MockTransport(handler)) as client:
        with pytest.raises(GenerationFailedError) as caught:
            await client.wait(GEN_ID)
    assert_clean(caught.value)
    assert CANARY not in repr(caught.value.generation)


async def test_transport_exception_text_is_redacted(
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    """An httpx error whose message contains the key is cleaned in our error and logs."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout(f"timed out talking with {echo(request)}", request=request)

    async with client_with(httpx.MockTransport(handler)) as client:
        with pytest.raises(AimlMusicError) as get_error:
            await client.get(GEN_ID)
        with pytest.raises(AmbiguousSubmissionError) as post_error:
            await client.submit(song())
    assert_clean(get_error.value)
    assert_clean(post_error.value)
    assert CANARY not in debug_logs.text


async def test_downloads_and_their_errors_never_carry_the_key(
    tmp_path: Path, debug_logs: pytest.LogCaptureFixture
) -> None:
    """The storage host never receives the key, and download errors do not show it."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "api.test":
            return httpx.Response(200, json=completed_json())
        return httpx.Response(403, text="expired")

    async with client_with(httpx.MockTransport(handler)) as client:
        with pytest.raises(DownloadError) as caught:
            await client.download(structure_generation(completed_json(AUDIO_URL)), tmp_path / "a")
    assert_clean(caught.value)
    for request in seen:
        if request.url.host != "api.test":
            assert CANARY not in str(request.headers)
    assert CANARY not in debug_logs.text
    # Our own log lines do not show the presigned URL's signature either (httpx's INFO line
    # "HTTP Request: GET <url>" does: that logger is httpx's, not ours to rewrite).
    ours = [r.getMessage() for r in debug_logs.records if r.name == "aimlmusic"]
    assert any("store.test" in line for line in ours)
    assert not any("SIGNATURE" in line for line in ours)


async def test_reprs_and_attribute_dumps_do_not_show_the_key() -> None:
    """repr of the client, its transport and their attribute dicts hide the key."""
    client = client_with(httpx.MockTransport(lambda r: httpx.Response(200)))
    transport = client._transport
    for text in (repr(client), repr(transport), repr(vars(client)), repr(vars(transport))):
        assert CANARY not in text
    assert "api.test" in repr(client)
    await client.aclose()


async def test_the_key_fingerprint_names_the_account_without_the_key() -> None:
    """key_fingerprint is 16 hex digits of the key's SHA-256, one per key, holding no part
    of the key; the blocking client gives the same."""
    client = client_with(httpx.MockTransport(lambda r: httpx.Response(200)))
    other = AsyncMusicClient(api_key=CANARY + "-2", base_url="https://api.test")
    fingerprint = client.key_fingerprint
    assert fingerprint == hashlib.sha256(CANARY.encode()).hexdigest()[:16]
    assert other.key_fingerprint != fingerprint
    assert not any(CANARY[i : i + 6] in fingerprint for i in range(len(CANARY) - 5))
    with MusicClient(api_key=CANARY, base_url="https://api.test") as blocking:
        assert blocking.key_fingerprint == fingerprint
    await client.aclose()
    await other.aclose()


def test_the_secret_holder_hides_its_value_and_refuses_pickling() -> None:
    """Secret's str/repr are redacted and it cannot be written out with pickle."""
    secret = Secret(CANARY)
    assert CANARY not in repr(secret)
    assert CANARY not in str(secret)
    assert secret.reveal() == CANARY
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_configuration_errors_do_not_show_a_key_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refused base URL's message does not include the key read from AIML_API_KEY."""
    monkeypatch.setenv("AIML_API_KEY", CANARY)
    with pytest.raises(ConfigurationError) as caught:
        AsyncMusicClient(base_url="http://example.com")
    assert_clean(caught.value)


class EchoServer:
    """A real HTTP server on 127.0.0.1 answering 401 with the request's headers in the body
    (and, with ``in_head``, its Authorization in the reason phrase and a header too)."""

    def __init__(self, *, in_head: bool = False) -> None:
        self.in_head = in_head

    async def handle(self, stream: SocketStream) -> None:
        async with stream:
            data = b""
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while b"\r\n\r\n" not in data:
                    data += await stream.receive(65536)
            head = data.split(b"\r\n\r\n", 1)[0]
            body = b'{"message": "rejected: ' + head.replace(b"\r\n", b" | ").replace(b'"', b"'")
            body += b'", "statusCode": 401}'
            reason, echoed = b"Unauthorized", b""
            if self.in_head:
                lines = head.split(b"\r\n")
                # The emulator-time probe comes first, with no Authorization.
                sent = [v for v in lines if v.lower().startswith(b"authorization:")]
                key = sent[0].split(b":", 1)[1].strip() if sent else b"none"
                reason, echoed = b"Bad key " + key, b"X-Echo: " + key + b"\r\n"
            response = (
                b"HTTP/1.1 401 "
                + reason
                + b"\r\nContent-Type: application/json\r\n"
                + echoed
                + b"Connection: close\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
            )
            with contextlib.suppress(anyio.BrokenResourceError):
                await stream.send(response + body)


@pytest.mark.parametrize("in_head", [False, True])
async def test_over_a_real_socket_nothing_logged_or_raised_shows_the_key(
    debug_logs: pytest.LogCaptureFixture, in_head: bool
) -> None:
    """With httpx and httpcore logging at DEBUG and a server echoing our headers (in its
    body, or in its reason phrase and a header, which httpcore logs at DEBUG), the key
    appears nowhere."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, EchoServer(in_head=in_head).handle)
        client = AsyncMusicClient(CANARY, base_url=f"http://127.0.0.1:{port}", timeout=5)
        try:
            with anyio.fail_after(10), pytest.raises(AuthenticationError) as caught:
                await client.get(GEN_ID)
        finally:
            await client.aclose()
            group.cancel_scope.cancel()
    assert "Bearer <redacted>" in str(caught.value.body)  # the echo really happened
    assert_clean(caught.value)
    assert CANARY not in debug_logs.text
    assert any(r.name.startswith("httpcore") for r in debug_logs.records)
    if in_head:  # httpcore logged the echoed head, redacted
        assert "X-Echo" in debug_logs.text
        assert "<redacted>" in debug_logs.text


@pytest.mark.parametrize("written", [CANARY, "%73" + CANARY[1:]])
async def test_a_download_redirected_to_a_url_carrying_the_key_never_shows_it(
    tmp_path: Path, debug_logs: pytest.LogCaptureFixture, written: str
) -> None:
    """A storage host (a hostile one has the key from the POST) redirecting to a URL with
    the key in its path, as it is or percent-encoded: the error, and every log line, show
    it redacted, even once unquoted. Hop URLs used to lose only their query, and the key
    reached logs, the error, and so the manifest."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "api.test":
            return httpx.Response(200, json=completed_json())
        return httpx.Response(302, headers={"location": f"ftp://store.test/{written}/a.mp3"})

    async with client_with(httpx.MockTransport(handler)) as client:
        with pytest.raises(DownloadError) as caught:
            await client.download(structure_generation(completed_json(AUDIO_URL)), tmp_path / "a")
    assert "store.test/<redacted>/a.mp3" in str(caught.value)
    assert_clean(caught.value)
    assert CANARY not in urllib.parse.unquote(str(caught.value))
    assert CANARY not in urllib.parse.unquote(debug_logs.text)


def _json_escaped(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text)


async def test_a_json_escaped_key_in_a_broken_body_is_redacted_in_the_excerpt() -> None:
    """A body that is not valid JSON still has its \\uXXXX-escaped key found and redacted in
    the excerpt kept on the error (the success path and the error path alike)."""

    def handler(request: httpx.Request) -> httpx.Response:
        escaped = _json_escaped(request.headers["Authorization"])
        if request.method == "POST":
            return httpx.Response(400, text='{"message": "' + escaped)  # cut short
        return httpx.Response(200, text='{"id": "x", "status": "' + escaped)

    async with client_with(httpx.MockTransport(handler)) as client:
        with pytest.raises(ResponseValidationError) as unreadable:
            await client.get(GEN_ID)
        with pytest.raises(AimlMusicError) as rejected:
            await client.submit(song())
    for exc in (unreadable.value, rejected.value):
        assert "<redacted>" in repr(exc.body)  # type: ignore[attr-defined]
        assert _json_escaped(CANARY) not in repr(vars(exc))
        assert_clean(exc)


def test_the_redactor_finds_keys_in_decoded_json_and_behind_escapes() -> None:
    """Redactor.data cleans every string (keys too) of decoded JSON; Redactor.text finds a key
    written with \\uXXXX or \\/ escapes, decodes surrogate pairs, and leaves a lone
    surrogate's escape as it is (it could not be written out as UTF-8)."""
    redactor = Redactor(Secret("sk-a/b"))
    data = {"sk-a/b": ["x sk-a/b", {"n": 1, "m": None}], "ok": True}
    assert redactor.data(data) == {"<redacted>": ["x <redacted>", {"n": 1, "m": None}], "ok": True}
    escaped = "".join(f"\\u{ord(c):04x}" for c in "sk-a/b")
    assert redactor.text('{"k": "' + escaped) == '{"k": "<redacted>'
    assert redactor.text("key sk-a\\/b \\ud83c\\udfb5") == "key <redacted> \U0001f3b5"
    assert redactor.text("sk-a\\/b \\ud800") == "<redacted> \\ud800"
    assert redactor.text("no secret \\u0041") == "no secret \\u0041"  # unchanged when clean


def test_decoded_json_is_walked_only_when_its_text_could_carry_a_key() -> None:
    """Redactor.decoded returns clean JSON as decoded and cleans a key written plain or escaped."""
    redactor = Redactor(Secret("sk-a/b"))
    clean = '{"id": "x", "status": "generating", "meta": {"n": [1, 2]}}'
    data = json.loads(clean)
    assert redactor.decoded(clean, data) is data
    escaped = "".join(f"\\u{ord(c):04x}" for c in "sk-a/b")
    for text in ('{"k": "sk-a/b"}', '{"k": "' + escaped + '"}', '{"k": "sk-a\\/b"}'):
        assert redactor.decoded(text, json.loads(text)) == {"k": "<redacted>"}, text


async def test_a_generation_id_carrying_the_key_percent_encoded_is_redacted() -> None:
    """An answer whose generation id carries the key percent-encoded (a hostile server has
    it) gives an id with the key redacted, so the warnings and notes that name the id do not
    show it: answers without a backslash or the key as written were not walked at all."""
    hidden = "job/" + "".join(f"%{ord(c):02x}" for c in CANARY)

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"id": hidden, "status": "queued"})

    async with client_with(httpx.MockTransport(answer)) as client:
        generation = await client.submit(song())
    assert CANARY not in urllib.parse.unquote(generation.id)


def test_the_redactor_reads_through_percent_encoding_and_leaves_other_percents() -> None:
    """A key with some characters percent-encoded, in either case of hex, is redacted; text
    with other percent signs (escapes, "100%") is left as it is."""
    redactor = Redactor(Secret(CANARY))
    encoded = "".join(f"%{ord(c):02X}" if n % 2 else c for n, c in enumerate(CANARY))
    assert CANARY not in urllib.parse.unquote(redactor.text(f"https://x.test/{encoded}/a"))
    plain = "https://x.test/a%20b.mp3 is 100% done"
    assert redactor.text(plain) == plain
