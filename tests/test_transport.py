"""The transport: headers, query encoding, status mapping, retries, budget and 429 handling."""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import anyio.lowlevel
import httpx
import pytest
from _http_fakes import (
    API,
    GEN_ID,
    RecordingClock,
    RecordingObserver,
    ScriptedAPI,
    error_body,
    generation_json,
    make_transport,
    ok,
    song,
)
from anyio.abc import SocketAttribute, SocketStream

import aimlmusic
from aimlmusic import (
    AmbiguousSubmissionError,
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    GenerationStatus,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestValidationError,
    ResponseValidationError,
    RetryPolicy,
    ServerError,
    SizeLimits,
    Timeout,
    _transport,
)
from aimlmusic._errors import SendingRefused
from aimlmusic._ratelimit import RequestBudget, RequestKind
from aimlmusic._transport import Transport

pytestmark = pytest.mark.anyio

REQUEST = httpx.Request("GET", API)


def assert_no_httpx_in_chain(exc: BaseException) -> None:
    """Neither the exception nor anything chained to it is an httpx type."""
    seen: BaseException | None = exc
    while seen is not None:
        assert not type(seen).__module__.startswith(("httpx", "httpcore")), repr(seen)
        seen = seen.__cause__ or seen.__context__


# ------------------------------------------------------------------ requests as sent


async def test_submit_posts_the_wire_body_with_auth_user_agent_and_accept() -> None:
    """A submission is one POST of the request's JSON with bearer auth and our User-Agent."""
    api = ScriptedAPI(ok())
    transport = make_transport(api, api_key="sk-header-check")
    generation = await transport.submit(song())
    assert generation.id == GEN_ID
    assert generation.status is GenerationStatus.QUEUED
    (sent,) = api.requests
    assert sent.method == "POST"
    assert str(sent.url) == f"{API}/v2/generate/audio"
    assert sent.headers["Authorization"] == "Bearer sk-header-check"
    assert sent.headers["User-Agent"] == f"aimlmusic/{aimlmusic.__version__}"
    assert sent.headers["Accept"] == "application/json"
    assert api.bodies() == [
        {"model": "minimax/music-1.5", "prompt": song().prompt, "lyrics": song().lyrics}
    ]


async def test_get_sends_the_id_as_an_encoded_query_parameter() -> None:
    """The id's ':' and '/' are percent-encoded in the query, and the GET carries auth."""
    api = ScriptedAPI(ok())
    await make_transport(api).get(GEN_ID)
    (sent,) = api.requests
    assert sent.method == "GET"
    assert sent.url.path == "/v2/generate/audio"
    assert (
        sent.url.query
        == b"generation_id=d51032d5-e7b3-4e5b-a5c8-12e0c9474949%3Aminimax%2Fmusic-1.5"
    )
    assert sent.url.params["generation_id"] == GEN_ID
    assert sent.headers["Authorization"] == "Bearer sk-test-key"


async def test_a_base_url_with_a_path_prefix_is_kept() -> None:
    """A base URL such as an emulator mounted under /api keeps its prefix."""
    api = ScriptedAPI(ok())
    clock = RecordingClock()
    transport = Transport(
        api_key="test-key",
        base_url="https://proxy.test/api/",
        timeout=Timeout(),
        retry=RetryPolicy(),
        clock=clock,
        budget=RequestBudget(1e6, clock),
        transport=api.transport,
    )
    await transport.get(GEN_ID)
    assert api.requests[0].url.path == "/api/v2/generate/audio"


async def test_get_refuses_an_empty_id_before_sending() -> None:
    """An empty id is a RequestValidationError and nothing is sent."""
    api = ScriptedAPI(ok())
    with pytest.raises(RequestValidationError, match="generation_id"):
        await make_transport(api).get("")
    assert api.requests == []


#: GEN_ID without its model part, as a server may name the same generation.
BARE_ID = GEN_ID.partition(":")[0]


@pytest.mark.parametrize(("asked", "answered"), [(GEN_ID, BARE_ID), (BARE_ID, GEN_ID)])
async def test_an_answer_naming_the_generation_with_or_without_its_model_is_that_generation(
    asked: str, answered: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A poll answered with the id asked for minus (or plus) its ':<model>' part is the same
    generation: it is taken, carries the id as asked, and the spelling is logged once."""
    api = ScriptedAPI(ok(generation_json("generating", id=answered)))
    transport = make_transport(api)
    with caplog.at_level(logging.DEBUG, logger="aimlmusic"):
        first = await transport.get(asked)
        second = await transport.get(asked)
    assert (first.id, second.id) == (asked, asked)
    assert first.status is GenerationStatus.GENERATING
    assert len(api.requests) == 2  # neither answer was refused and retried
    told = [r for r in caplog.records if "names generation" in r.getMessage()]
    assert [r.levelno for r in told] == [logging.DEBUG]


@pytest.mark.parametrize(
    ("answered", "asked", "same"),
    [
        (GEN_ID, GEN_ID, True),
        (BARE_ID, GEN_ID, True),
        (GEN_ID, BARE_ID, True),
        ("a:b:c", "a:b:c", True),  # ids with several ':' still match themselves
        ("someone-else:x", GEN_ID, False),
        ("someone-else", GEN_ID, False),
        (BARE_ID + "0", GEN_ID, False),
        ("u:model-a", "u:model-b", False),  # the same uuid under two models: not one spelling
        ("u:a:b", "u:a", False),  # several ':': the model part cannot be told apart
        ("u", "u:a:b", False),
        ("u:", "u", False),  # an empty model part is not a model
        (":m", "", False),
        ("", ":m", False),
        ("U", "u:m", False),  # ids are compared exactly, letter case included
    ],
)
def test_same_generation_accepts_only_the_id_with_or_without_its_model(
    answered: str, asked: str, same: bool
) -> None:
    """Ids match when equal, or when one is the other (with no ':') plus ':<model>'."""
    assert _transport.same_generation(answered, asked) is same
    assert _transport.same_generation(asked, answered) is same


# ------------------------------------------------------------------ status mapping


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (410, APIStatusError),
        (422, APIStatusError),
    ],
)
async def test_client_errors_map_to_their_exception_without_retrying(
    status: int, error_type: type[APIStatusError]
) -> None:
    """Each 4xx maps to its class with message, request id and body, after one request."""
    api = ScriptedAPI(error_body(status, message="Body validation error!", request_id="rid-9"))
    with pytest.raises(error_type) as caught:
        await make_transport(api).get(GEN_ID)
    error = caught.value
    assert type(error) is error_type
    assert error.status_code == status
    assert error.message == "Body validation error!"
    assert error.request_id == "rid-9"
    assert isinstance(error.body, dict)
    assert error.body["statusCode"] == status
    assert error.method == "GET"
    assert GEN_ID.split(":")[0] in (error.url or "")
    assert f"HTTP {status}: Body validation error! [request id rid-9]" in str(error)
    assert len(api.requests) == 1
    assert_no_httpx_in_chain(error)


@pytest.mark.parametrize(
    ("response", "message", "body"),
    [
        (
            httpx.Response(401, text="Unauthorized: bad key"),
            "Unauthorized: bad key",
            "Unauthorized: bad key",
        ),
        (httpx.Response(404, content=b""), "Not Found", None),
        (httpx.Response(400, json=["a", "b"]), "Bad Request", ["a", "b"]),
        (
            httpx.Response(400, json={"message": ["prompt too short", "lyrics missing"]}),
            "prompt too short; lyrics missing",
            {"message": ["prompt too short", "lyrics missing"]},
        ),
        (
            httpx.Response(403, json={"error": {"message": "no credits"}}),
            "no credits",
            {"error": {"message": "no credits"}},
        ),
        (httpx.Response(403, json={"error": "forbidden"}), "forbidden", {"error": "forbidden"}),
    ],
)
async def test_any_error_body_shape_is_tolerated(
    response: httpx.Response, message: str, body: object
) -> None:
    """Plain-text, empty and non-standard JSON error bodies still give a readable error."""
    api = ScriptedAPI(response)
    with pytest.raises(APIStatusError) as caught:
        await make_transport(api).get(GEN_ID)
    assert caught.value.message == message
    assert caught.value.body == body
    assert caught.value.request_id is None


async def test_a_huge_html_error_page_is_kept_only_as_a_bounded_excerpt() -> None:
    """An HTML page becomes a short one-line message and a bounded body excerpt."""
    page = "<html><body>" + "<p>gateway   error</p>\n" * 2000 + "</body></html>"
    api = ScriptedAPI(httpx.Response(400, text=page))
    with pytest.raises(BadRequestError) as caught:
        await make_transport(api).get(GEN_ID)
    error = caught.value
    assert isinstance(error.body, str)
    assert len(error.body) < 600
    assert f"({len(page)} characters)" in error.body
    assert len(error.message) < 300
    assert "\n" not in error.message


def _error_in(charset: str, content_type: str) -> httpx.Response:
    """A 400 whose message, "café", is encoded in ``charset``, sent as ``content_type``."""
    body = json.dumps({"message": "café"}, ensure_ascii=False).encode(charset)
    return httpx.Response(400, content=body, headers={"content-type": content_type})


def _counting_charset_reads(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """Start from no kept charsets, and list every charset httpx parses from a header."""
    monkeypatch.setattr(_transport, "_charsets", {})
    reads: list[str | None] = []
    parse = httpx.Response.charset_encoding

    def counted(response: httpx.Response) -> str | None:
        charset = parse.fget(response)
        reads.append(charset)
        return charset

    monkeypatch.setattr(httpx.Response, "charset_encoding", property(counted))
    return reads


async def test_an_answer_is_decoded_in_the_charset_its_content_type_names_each_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Answers in Latin-1 and UTF-8, in turn, each decode as their own Content-Type says,
    and each Content-Type value is parsed once, however often it comes."""
    reads = _counting_charset_reads(monkeypatch)
    sent = [("iso-8859-1", "application/json; charset=iso-8859-1")]
    sent += [("utf-8", "application/json; charset=utf-8")]
    api = ScriptedAPI(*(_error_in(*answer) for answer in sent * 2))
    transport = make_transport(api)
    for _ in sent * 2:
        with pytest.raises(BadRequestError) as caught:
            await transport.get(GEN_ID)
        assert caught.value.message == "café"
    assert reads == ["iso-8859-1", "utf-8"]


async def test_more_content_types_than_are_kept_still_decode_and_keep_memory_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server sending a new Content-Type on every answer, some of them long, gets each
    decoded as it says; CHARSETS_KEPT values are kept, none longer than
    KEPT_CONTENT_TYPE_CHARS."""
    reads = _counting_charset_reads(monkeypatch)
    long_one = "application/json; charset=iso-8859-1; x=" + "y" * _transport.KEPT_CONTENT_TYPE_CHARS
    content_types = [long_one]
    content_types += [
        f"application/json; v={n}; charset=iso-8859-1" for n in range(_transport.CHARSETS_KEPT + 5)
    ]
    api = ScriptedAPI(*(_error_in("iso-8859-1", value) for value in content_types * 2))
    transport = make_transport(api)
    for _ in content_types * 2:
        with pytest.raises(BadRequestError) as caught:
            await transport.get(GEN_ID)
        assert caught.value.message == "café"
    assert len(_transport._charsets) == _transport.CHARSETS_KEPT
    assert long_one not in _transport._charsets
    # The kept values are parsed once; the long one and those past the limit every time.
    assert len(reads) == _transport.CHARSETS_KEPT + 2 * (
        len(content_types) - _transport.CHARSETS_KEPT
    )


async def test_request_id_falls_back_to_the_x_request_id_header() -> None:
    """When the body has no requestId, the x-request-id header is used."""
    api = ScriptedAPI(httpx.Response(404, text="gone", headers={"x-request-id": "hdr-7"}))
    with pytest.raises(NotFoundError) as caught:
        await make_transport(api).get(GEN_ID)
    assert caught.value.request_id == "hdr-7"


async def test_an_unreadable_2xx_on_get_is_a_response_validation_error_at_once() -> None:
    """A 200 that is not a generation raises ResponseValidationError and is not retried."""
    api = ScriptedAPI(httpx.Response(200, text="<html>maintenance</html>"))
    with pytest.raises(ResponseValidationError) as caught:
        await make_transport(api).get(GEN_ID)
    assert "not valid JSON" in caught.value.reason
    assert caught.value.body == "<html>maintenance</html>"
    assert caught.value.method == "GET"
    assert len(api.requests) == 1


async def test_a_2xx_missing_required_fields_names_the_field() -> None:
    """A JSON 200 without 'status' says which field is missing."""
    api = ScriptedAPI(ok({"id": GEN_ID}))
    with pytest.raises(ResponseValidationError, match="status"):
        await make_transport(api).get(GEN_ID)


# ------------------------------------------------------------------ GET retries


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_get_retries_5xx_then_succeeds(status: int) -> None:
    """A GET answered by a 5xx is retried after a full-jitter back-off and then succeeds."""
    api = ScriptedAPI(error_body(status), ok())
    clock = RecordingClock()
    observer = RecordingObserver()
    generation = await make_transport(api, clock).get(GEN_ID, observer=observer)
    assert generation.id == GEN_ID
    assert api.methods() == ["GET", "GET"]
    assert len(clock.sleeps) == 1
    assert 0.0 <= clock.sleeps[0] <= 0.5  # base_delay of the first retry
    ((attempt, error, delay),) = observer.retries
    assert attempt == 1
    assert isinstance(error, ServerError)
    assert error.status_code == status
    assert delay == clock.sleeps[0]


@pytest.mark.parametrize("status", [408, 409, 425])
async def test_get_answered_try_again_later_is_retried(status: int) -> None:
    """A GET answered 408, 409 or 425 (the same request again later) is retried, as a poll
    of generate_many always was; a direct get() raised at once."""
    api = ScriptedAPI(error_body(status), ok())
    clock = RecordingClock()
    generation = await make_transport(api, clock).get(GEN_ID)
    assert generation.id == GEN_ID
    assert api.methods() == ["GET", "GET"]
    assert len(clock.sleeps) == 1


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ReadTimeout("read timed out", request=REQUEST),
        httpx.ConnectError("refused", request=REQUEST),
        httpx.RemoteProtocolError("server disconnected", request=REQUEST),
        httpx.ReadError("connection reset", request=REQUEST),
        httpx.PoolTimeout("pool", request=REQUEST),
    ],
)
async def test_get_retries_connection_errors_and_timeouts_then_succeeds(
    failure: Exception,
) -> None:
    """Transport failures on a GET are retried; the next success is returned."""
    api = ScriptedAPI(failure, failure, ok())
    clock = RecordingClock()
    generation = await make_transport(api, clock).get(GEN_ID)
    assert generation.id == GEN_ID
    assert len(api.requests) == 3
    assert len(clock.sleeps) == 2
    assert 0.0 <= clock.sleeps[1] <= 1.0  # the window doubles


@pytest.mark.parametrize(
    ("failure", "error_type"),
    [
        (httpx.ReadTimeout("read timed out", request=REQUEST), APITimeoutError),
        (httpx.ConnectTimeout("connect timed out", request=REQUEST), APITimeoutError),
        (httpx.ConnectError("refused", request=REQUEST), APIConnectionError),
        (error_body(503, message="overloaded"), ServerError),
        (error_body(429, message="slow down"), RateLimitError),
    ],
)
async def test_get_raises_the_mapped_error_when_retries_are_exhausted(
    failure: Exception | httpx.Response, error_type: type[Exception]
) -> None:
    """After `attempts` tries the last failure surfaces as an aimlmusic exception."""
    api = ScriptedAPI(failure)
    with pytest.raises(error_type) as caught:
        await make_transport(api, retry=RetryPolicy(attempts=3)).get(GEN_ID)
    assert type(caught.value) is error_type
    assert len(api.requests) == 3
    assert_no_httpx_in_chain(caught.value)


async def test_exhausted_timeout_names_the_request_and_the_cause() -> None:
    """An APITimeoutError says what timed out and carries method and URL."""
    api = ScriptedAPI(httpx.ReadTimeout("timed out", request=REQUEST))
    with pytest.raises(APITimeoutError) as caught:
        await make_transport(api, retry=RetryPolicy(attempts=1)).get(GEN_ID)
    assert "ReadTimeout: timed out" in str(caught.value)
    assert caught.value.method == "GET"
    assert caught.value.url is not None


def _in(seconds: float) -> str:
    return email.utils.formatdate(time.time() + seconds, usegmt=True)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"Retry-After": "99999"}, 45.0),  # capped at max_retry_after
    ],
)
async def test_get_honours_retry_after_on_5xx_capped(
    headers: dict[str, str], expected: float
) -> None:
    """A 503's Retry-After / retry-after-ms replaces the back-off, up to the cap."""
    api = ScriptedAPI(httpx.Response(503, headers=headers, text="busy"), ok())
    clock = RecordingClock()
    retry = RetryPolicy(attempts=3, max_retry_after=45.0)
    await make_transport(api, clock, retry=retry).get(GEN_ID)
    assert clock.sleeps == [expected]


async def test_get_honours_a_retry_after_http_date() -> None:
    """An HTTP-date Retry-After is turned into the seconds until that date."""
    api = ScriptedAPI(httpx.Response(503, headers={"Retry-After": _in(30)}), ok())
    clock = RecordingClock()
    await make_transport(api, clock).get(GEN_ID)
    assert len(clock.sleeps) == 1
    assert 27.0 <= clock.sleeps[0] <= 30.0  # whole seconds, minus the test's own run time


# ------------------------------------------------------------------ 429 and the budget


class SpyBudget(RequestBudget):
    """The real budget, recording every acquire and piece of feedback."""

    def __init__(self, clock: RecordingClock) -> None:
        super().__init__(1e6, clock, seed=1)
        self.acquired: list[RequestKind] = []
        self.successes = 0
        self.throttles: list[float | None] = []

    async def acquire(self, kind: RequestKind = "poll") -> None:
        self.acquired.append(kind)
        await super().acquire(kind)

    def on_success(self) -> None:
        self.successes += 1
        super().on_success()

    def on_throttled(self, retry_after: float | None) -> None:
        self.throttles.append(retry_after)
        super().on_throttled(retry_after)


def spy_transport(api: ScriptedAPI, clock: RecordingClock, budget: SpyBudget) -> Transport:
    return Transport(
        api_key="test-key",
        base_url=API,
        timeout=Timeout(),
        retry=RetryPolicy(attempts=4, max_retry_after=60.0),
        clock=clock,
        budget=budget,
        transport=api.transport,
    )


async def test_every_attempt_acquires_the_budget_with_its_kind() -> None:
    """Each try (first and retries) waits for the budget: 'poll' for GET, 'submit' for POST."""
    clock = RecordingClock()
    budget = SpyBudget(clock)
    api = ScriptedAPI(error_body(502), error_body(502), ok(), ok())
    transport = spy_transport(api, clock, budget)
    await transport.get(GEN_ID)
    await transport.submit(song())
    assert budget.acquired == ["poll", "poll", "poll", "submit"]
    assert budget.successes == 2


async def test_a_429_pauses_the_budget_and_the_transport_adds_no_sleep_of_its_own() -> None:
    """Retry-After on a 429 goes to the budget, whose pause is the only wait before the retry."""
    clock = RecordingClock()
    budget = SpyBudget(clock)
    observer = RecordingObserver()
    api = ScriptedAPI(httpx.Response(429, headers={"Retry-After": "7"}, text="slow"), ok())
    await spy_transport(api, clock, budget).get(GEN_ID, observer=observer)
    assert budget.throttles == [7.0]
    assert observer.throttles == [7.0]
    assert observer.retries == []
    assert clock.sleeps == [7.0]  # waited once, inside budget.acquire
    assert len(api.requests) == 2


async def test_a_429_without_retry_after_lets_the_budget_back_off_on_its_own() -> None:
    """With no hint the budget gets None and applies its own pause."""
    clock = RecordingClock()
    budget = SpyBudget(clock)
    observer = RecordingObserver()
    api = ScriptedAPI(error_body(429, message="Too many requests"), ok())
    await spy_transport(api, clock, budget).get(GEN_ID, observer=observer)
    assert budget.throttles == [None]
    assert observer.throttles == [None]
    assert len(clock.sleeps) == 1
    assert 1.0 <= clock.sleeps[0] <= 2.0  # the budget's first pause, jittered
    assert budget.effective_rate < 1e6  # and it slowed down


async def test_a_429s_huge_retry_after_is_capped_before_it_reaches_the_budget() -> None:
    """A server cannot park the client for longer than max_retry_after."""
    clock = RecordingClock()
    budget = SpyBudget(clock)
    api = ScriptedAPI(httpx.Response(429, headers={"Retry-After": "86400"}), ok())
    await spy_transport(api, clock, budget).get(GEN_ID)
    assert budget.throttles == [60.0]
    assert clock.sleeps == [60.0]


async def test_exhausted_429s_raise_rate_limit_error_with_the_hint() -> None:
    """When every try is throttled, RateLimitError carries the server's retry_after."""
    api = ScriptedAPI(httpx.Response(429, headers={"Retry-After": "2"}, json={"message": "slow"}))
    with pytest.raises(RateLimitError) as caught:
        await make_transport(api, retry=RetryPolicy(attempts=2)).get(GEN_ID)
    assert caught.value.retry_after == 2.0
    assert caught.value.status_code == 429
    assert len(api.requests) == 2


# ------------------------------------------------------------------ POST: never pay twice


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_post_answered_by_5xx_is_ambiguous_and_sent_exactly_once(status: int) -> None:
    """A 5xx to a submission may hide a created generation: raised, never resent."""
    api = ScriptedAPI(error_body(status, message="internal"), ok())
    request = song()
    with pytest.raises(AmbiguousSubmissionError) as caught:
        await make_transport(api).submit(request)
    assert api.methods() == ["POST"]
    error = caught.value
    assert error.request is request
    assert isinstance(error.cause, ServerError)
    assert error.cause.status_code == status
    assert error.__cause__ is error.cause
    assert "not resent" in str(error)
    assert_no_httpx_in_chain(error)


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ReadTimeout("read timed out", request=REQUEST),
        httpx.WriteTimeout("write timed out", request=REQUEST),
        httpx.RemoteProtocolError("server disconnected without a response", request=REQUEST),
        httpx.ReadError("connection reset by peer", request=REQUEST),
        httpx.WriteError("broken pipe", request=REQUEST),
    ],
)
async def test_post_failing_after_sending_is_ambiguous_and_sent_exactly_once(
    failure: Exception,
) -> None:
    """Read/write timeouts and dropped connections after sending are never resent."""
    api = ScriptedAPI(failure, ok())
    clock = RecordingClock()
    with pytest.raises(AmbiguousSubmissionError) as caught:
        await make_transport(api, clock).submit(song())
    assert api.methods() == ["POST"]
    assert clock.sleeps == []
    assert isinstance(caught.value.cause, APIConnectionError)
    assert type(failure).__name__ in str(caught.value)
    assert_no_httpx_in_chain(caught.value)


async def test_post_read_timeout_cause_is_an_api_timeout_error() -> None:
    """The cause of an ambiguous timed-out submission says it timed out."""
    api = ScriptedAPI(httpx.ReadTimeout("read timed out", request=REQUEST))
    with pytest.raises(AmbiguousSubmissionError) as caught:
        await make_transport(api).submit(song())
    assert isinstance(caught.value.cause, APITimeoutError)


async def test_post_with_an_unreadable_2xx_is_ambiguous() -> None:
    """A 200 we cannot parse may be a created generation: ambiguous, not resent."""
    api = ScriptedAPI(httpx.Response(200, text="{not json"), ok())
    with pytest.raises(AmbiguousSubmissionError) as caught:
        await make_transport(api).submit(song())
    assert api.methods() == ["POST"]
    assert isinstance(caught.value.cause, ResponseValidationError)


async def test_post_answered_with_an_empty_id_is_ambiguous() -> None:
    """A 200 whose id is "" cannot be polled but may be a paid job: ambiguous, not resent."""
    api = ScriptedAPI(ok({"id": "", "status": "queued"}), ok())
    with pytest.raises(AmbiguousSubmissionError) as caught:
        await make_transport(api).submit(song())
    assert api.methods() == ["POST"]
    assert isinstance(caught.value.cause, ResponseValidationError)
    assert "id is empty" in caught.value.cause.reason


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("connection refused", request=REQUEST),
        httpx.ConnectTimeout("connect timed out", request=REQUEST),
        httpx.PoolTimeout("no free connection", request=REQUEST),
    ],
)
async def test_post_that_never_connected_is_retried(failure: Exception) -> None:
    """A connection never established proves the POST never arrived: it is retried."""
    api = ScriptedAPI(failure, failure, ok())
    clock = RecordingClock()
    observer = RecordingObserver()
    generation = await make_transport(api, clock).submit(song(), observer=observer)
    assert generation.id == GEN_ID
    assert api.methods() == ["POST", "POST", "POST"]
    assert [attempt for attempt, _, _ in observer.retries] == [1, 2]
    assert len(clock.sleeps) == 2


async def test_a_post_failed_by_a_response_hook_is_ambiguous_and_sent_once() -> None:
    """A caller's http_client whose response hook raises (``raise_for_status`` on a 500):
    an answer came, so the POST arrived and may have been accepted; it is ambiguous, not
    a connection error sent again."""
    api = ScriptedAPI(error_body(500))

    async def raise_for_status(response: httpx.Response) -> None:
        response.raise_for_status()

    http = httpx.AsyncClient(transport=api.transport, event_hooks={"response": [raise_for_status]})
    transport = Transport(
        api_key="sk-test-key",
        base_url=API,
        timeout=Timeout(),
        retry=RetryPolicy(attempts=4, base_delay=0.5, max_delay=8.0),
        clock=RecordingClock(),
        budget=RequestBudget(1e6, RecordingClock()),
        http_client=http,
    )
    async with http:
        with pytest.raises(AmbiguousSubmissionError):
            await transport.submit(song())
    assert api.methods() == ["POST"]


async def test_post_that_never_connects_ends_in_a_connection_error_not_an_ambiguous_one() -> None:
    """Exhausted connect failures are APIConnectionError: nothing can have been created."""
    api = ScriptedAPI(httpx.ConnectError("refused", request=REQUEST))
    with pytest.raises(APIConnectionError) as caught:
        await make_transport(api, retry=RetryPolicy(attempts=3)).submit(song())
    assert not isinstance(caught.value, AmbiguousSubmissionError)
    assert len(api.requests) == 3


async def test_post_throttled_by_429_is_retried() -> None:
    """A 429 means the submission was refused, so it is safely resent."""
    api = ScriptedAPI(httpx.Response(429, headers={"Retry-After": "1"}), ok())
    clock = RecordingClock()
    generation = await make_transport(api, clock).submit(song())
    assert generation.id == GEN_ID
    assert api.methods() == ["POST", "POST"]
    assert api.bodies()[0] == api.bodies()[1]
    assert clock.sleeps == [1.0]


async def test_post_rejected_with_400_is_a_bad_request_not_ambiguous() -> None:
    """A 4xx proves nothing was created: it maps to its error and is not retried."""
    api = ScriptedAPI(error_body(400, message="Body validation error!"))
    with pytest.raises(BadRequestError):
        await make_transport(api).submit(song())
    assert len(api.requests) == 1


# ------------------------------------------------------------------ lifecycle


async def test_closed_transport_refuses_to_send() -> None:
    """After aclose a request raises a clear error instead of reaching httpx."""
    api = ScriptedAPI(ok())
    transport = make_transport(api)
    await transport.aclose()
    await transport.aclose()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        await transport.get(GEN_ID)
    assert api.requests == []


async def test_a_caller_owned_http_client_is_not_closed() -> None:
    """A client passed in stays open after the transport closes; its own is closed."""
    api = ScriptedAPI(ok())
    clock = RecordingClock()
    async with httpx.AsyncClient(transport=api.transport) as http:
        transport = Transport(
            api_key="test-key",
            base_url=API,
            timeout=Timeout(),
            retry=RetryPolicy(),
            clock=clock,
            budget=RequestBudget(1e6, clock),
            http_client=http,
        )
        await transport.get(GEN_ID)
        await transport.aclose()
        assert not http.is_closed
    own = make_transport(api)
    await own.aclose()
    assert own.http_client.is_closed


# ------------------------------------------------------------------ real sockets


class CountingServer:
    """A TCP server on 127.0.0.1 that reads a request and hangs up without answering."""

    def __init__(self) -> None:
        self.connections = 0

    async def handle(self, stream: SocketStream) -> None:
        self.connections += 1
        async with stream:
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                await stream.receive(65536)


def real_transport(port: int, clock: RecordingClock, attempts: int = 3) -> Transport:
    return Transport(
        api_key="test-key",
        base_url=f"http://127.0.0.1:{port}",
        timeout=Timeout(connect=2, read=2, write=2, pool=2),
        retry=RetryPolicy(attempts=attempts),
        clock=clock,
        budget=RequestBudget(1e6, clock),
    )


@contextlib.asynccontextmanager
async def served_transport(
    handle: Callable[[SocketStream], Awaitable[None]], clock: RecordingClock
) -> AsyncIterator[Transport]:
    """A Transport talking over a real socket to a TCP server on 127.0.0.1 run by ``handle``
    (one call per connection), closed with the server."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, handle)
        transport = real_transport(port, clock)
        try:
            yield transport
        finally:
            await transport.aclose()
            group.cancel_scope.cancel()


async def test_real_socket_dropped_after_sending_post_is_ambiguous_and_get_is_retried() -> None:
    """Over a real socket, a hang-up after the request: POST sent once, GET retried."""
    server = CountingServer()
    async with served_transport(server.handle, RecordingClock()) as transport:
        with anyio.fail_after(10):
            with pytest.raises(AmbiguousSubmissionError):
                await transport.submit(song())
            assert server.connections == 1
            with pytest.raises(APIConnectionError):
                await transport.get(GEN_ID)
            assert server.connections == 1 + 3


class _RefusingObserver(RecordingObserver):
    """An observer whose ``on_sending`` refuses every request, counting the refusals."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = 0

    def on_sending(self) -> None:
        self.refused += 1
        raise SendingRefused("the journal cannot record it")


class _ByteCountingServer:
    """A TCP server on 127.0.0.1 that counts the bytes it receives until the client hangs
    up (then ``closed`` is set), and never answers."""

    def __init__(self) -> None:
        self.received = 0
        self.closed = anyio.Event()

    async def handle(self, stream: SocketStream) -> None:
        async with stream:
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while True:
                    self.received += len(await stream.receive(65536))
        self.closed.set()


async def test_a_sending_hook_refusal_keeps_the_post_off_a_real_socket() -> None:
    """Over a real socket, an on_sending hook raising SendingRefused stops the POST before
    its first byte: the server receives nothing, and the refusal is raised, not retried."""
    server = _ByteCountingServer()
    clock = RecordingClock()
    observer = _RefusingObserver()
    async with served_transport(server.handle, clock) as transport:
        with anyio.fail_after(10):
            with pytest.raises(SendingRefused):
                await transport.submit(song(), observer=observer)
            await transport.aclose()
            await server.closed.wait()  # the connection is closed: all it got is read
    assert observer.refused == 1
    assert server.received == 0
    assert clock.sleeps == []


async def test_a_sending_hook_refusal_after_an_in_process_answer_is_dropped() -> None:
    """An in-process transport reports sending only once answered: a refusal then comes
    too late to keep the POST home, and the answer still reaches the caller."""
    api = ScriptedAPI(ok())
    observer = _RefusingObserver()
    generation = await make_transport(api).submit(song(), observer=observer)
    assert generation.id == GEN_ID
    assert observer.refused == 1
    assert api.methods() == ["POST"]


async def test_real_refused_connection_post_is_retried_then_connection_error() -> None:
    """A refused connection (nothing listening) is retried even for a POST."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)
    await listener.aclose()  # nothing listens there now: connections are refused
    clock = RecordingClock()
    transport = real_transport(port, clock, attempts=3)
    try:
        with anyio.fail_after(10), pytest.raises(APIConnectionError) as caught:
            await transport.submit(song())
    finally:
        await transport.aclose()
    assert not isinstance(caught.value, AmbiguousSubmissionError)
    assert len(clock.sleeps) == 2  # two back-offs between three attempts
    assert_no_httpx_in_chain(caught.value)


# ------------------------------------------------------------------ reading answers


class _Chunks(httpx.AsyncByteStream):
    """A body delivered in the given pieces, as a socket would (not read ahead by httpx)."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = pieces

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        for piece in self.pieces:
            yield piece


def _encoded(body: bytes, encoding: str) -> httpx.Response:
    return httpx.Response(200, stream=_Chunks(body), headers={"Content-Encoding": encoding})


async def test_only_encodings_decoded_under_the_cap_are_asked_for() -> None:
    """Accept-Encoding offers gzip and deflate only (never br or zstd, decoded unbounded)."""
    api = ScriptedAPI(ok())
    await make_transport(api).get(GEN_ID)
    assert api.requests[0].headers["Accept-Encoding"] == "gzip, deflate"


@pytest.mark.parametrize("wbits", [15, -15], ids=["zlib deflate", "raw deflate"])
async def test_deflate_answers_decode_either_way_servers_send_them(wbits: int) -> None:
    """deflate as the RFC says (zlib-wrapped) and as some servers send it (raw) both parse."""
    packer = zlib.compressobj(wbits=wbits)
    body = json.dumps({"id": GEN_ID, "status": "queued"}).encode()
    packed = packer.compress(body) + packer.flush()
    api = ScriptedAPI(lambda request: _encoded(packed, "deflate"))
    generation = await make_transport(api).get(GEN_ID)
    assert generation.id == GEN_ID


async def test_an_encoding_not_asked_for_is_a_response_validation_error() -> None:
    """A br answer (never offered) is refused with a readable reason, not decoded unbounded."""
    api = ScriptedAPI(lambda request: _encoded(b"\x1b\x00", "br"))
    with pytest.raises(ResponseValidationError, match="content encoding that was not asked for"):
        await make_transport(api).get(GEN_ID)


async def test_an_answer_exactly_at_the_cap_is_read_and_one_byte_more_is_not() -> None:
    """The cap is inclusive: a body of exactly response_bytes parses; one more byte fails."""
    body = json.dumps({"id": GEN_ID, "status": "queued"}).encode()
    for limit, fits in ((len(body), True), (len(body) - 1, False)):
        api = ScriptedAPI(lambda request: httpx.Response(200, stream=_Chunks(body[:7], body[7:])))
        transport = make_transport(api)
        transport.size_limits = SizeLimits(response_bytes=limit)
        if fits:
            assert (await transport.get(GEN_ID)).id == GEN_ID
        else:
            with pytest.raises(ResponseValidationError, match="larger than the cap"):
                await transport.get(GEN_ID)


async def test_a_request_that_cannot_be_encoded_is_a_request_validation_error_not_sent() -> None:
    """A header httpx cannot encode (a non-ASCII key given to the transport directly) is a
    RequestValidationError naming no secret, not a raw UnicodeEncodeError; nothing is sent."""
    api = ScriptedAPI(ok())
    transport = make_transport(api, api_key="sk-clé-secrète")
    for call in (lambda: transport.get(GEN_ID), lambda: transport.submit(song())):
        with pytest.raises(RequestValidationError) as caught:
            await call()
        assert caught.value.field == "request"
        assert "secrète" not in repr(vars(caught.value))
        assert caught.value.__cause__ is None
        assert caught.value.__context__ is None
    assert api.requests == []


@pytest.mark.parametrize("length", [65_517, 70_000])
async def test_an_id_too_long_for_a_url_is_refused_naming_the_limit_not_sent(length: int) -> None:
    """An id making a URL over 65,536 characters is refused on generation_id, nothing sent."""
    api = ScriptedAPI(ok())
    transport = make_transport(api)
    with pytest.raises(RequestValidationError) as caught:
        await transport.get("a" * length)
    assert caught.value.field == "generation_id"
    assert "65536 characters" in caught.value.limit
    assert api.requests == []


async def test_a_poll_url_is_parsed_once_per_id_and_long_ids_are_not_kept() -> None:
    """Polls of one id reuse its parsed URL (each sent to that id); an id longer than
    KEPT_ID_CHARS is parsed every time and never kept, so odd ids cannot fill memory."""
    from aimlmusic._transport import KEPT_ID_CHARS, _parsed_url

    api = ScriptedAPI(
        lambda request: ok({"id": request.url.params["generation_id"], "status": "queued"})
    )
    transport = make_transport(api)
    _parsed_url.cache_clear()
    first_id, second_id = f"{GEN_ID}-1", f"{GEN_ID}-2"
    for generation_id in (first_id, second_id, first_id, first_id):
        assert (await transport.get(generation_id)).id == generation_id
    assert [r.url.params["generation_id"] for r in api.requests] == [
        first_id,
        second_id,
        first_id,
        first_id,
    ]
    assert _parsed_url.cache_info().misses == 2
    assert _parsed_url.cache_info().hits == 2
    long_id = "g" * (KEPT_ID_CHARS + 1)
    for _ in range(2):
        assert (await transport.get(long_id)).id == long_id
    assert _parsed_url.cache_info().currsize == 2
    assert api.requests[-1].url.params["generation_id"] == long_id


# ------------------------------------------------------------------ hostile answers (review 45)


@pytest.mark.parametrize("charset", ["idna", "undefined"])
async def test_an_answer_in_a_charset_that_is_no_text_codec_still_decodes(charset: str) -> None:
    """A Content-Type naming a codec that fails even with errors="replace" ("idna",
    "undefined") is read as UTF-8; it raised a bare UnicodeError that crashed a batch."""
    body = json.dumps({"id": GEN_ID, "status": "queued"}).encode()
    answer = httpx.Response(
        200, content=body, headers={"content-type": f"application/json; charset={charset}"}
    )
    generation = await make_transport(ScriptedAPI(answer)).submit(song())
    assert generation.id == GEN_ID


@pytest.mark.parametrize("status", [429, 503])
async def test_a_retry_after_date_with_an_absurd_year_is_ignored(status: int) -> None:
    """A Retry-After date whose year overflows a datetime is no hint (the usual back-off
    applies); it raised a bare OverflowError that crashed a batch."""
    hint = "Mon, 01 Jan 99999999999999999999 00:00:00 GMT"
    api = ScriptedAPI(httpx.Response(status, headers={"Retry-After": hint}), ok())
    clock = RecordingClock()
    generation = await make_transport(api, clock).get(GEN_ID)
    assert generation.id == GEN_ID
    assert api.methods() == ["GET", "GET"]


async def test_a_post_redirected_to_a_url_httpx_refuses_is_ambiguous_and_sent_once() -> None:
    """A 303 to a POST whose Location makes a URL too long for httpx (which builds it even
    when it follows no redirect) is ambiguous, sent once: the answer came, so the POST
    arrived. httpx.InvalidURL is no httpx.HTTPError, and it crashed the batch."""
    # Short enough for the Location to parse, long enough that joined to the request's
    # URL it passes httpx's 65,536 characters.
    api = ScriptedAPI(httpx.Response(303, headers={"location": "a" * 65_520}), ok())
    with pytest.raises(AmbiguousSubmissionError) as caught:
        await make_transport(api).submit(song())
    assert api.methods() == ["POST"]
    assert "InvalidURL" in str(caught.value)
    assert_no_httpx_in_chain(caught.value)


@pytest.mark.parametrize("status", [301, 302, 303, 408, 409, 410, 499])
async def test_a_post_answered_by_a_status_that_proves_no_refusal_is_ambiguous(
    status: int,
) -> None:
    """A redirect, a 408 or another status that does not refuse the request as sent may
    follow a created generation (303, or 301 and 302 in Post/Redirect/Get, are the usual
    answers to a POST that created one): the
    submission is ambiguous, sent once. It was "rejected", the catalog marked the song
    failed, and the next run paid for it again."""
    api = ScriptedAPI(httpx.Response(status, headers={"location": "/elsewhere"}), ok())
    with pytest.raises(AmbiguousSubmissionError) as caught:
        await make_transport(api).submit(song())
    assert api.methods() == ["POST"]
    assert isinstance(caught.value.cause, APIStatusError)
    assert caught.value.cause.status_code == status


@pytest.mark.parametrize("status", [307, 308, 400, 401, 403, 404, 407, 413, 421, 422])
async def test_a_post_refused_as_sent_is_not_ambiguous(status: int) -> None:
    """Statuses that refuse the request as it was sent, send it elsewhere to be repeated
    (307, 308) or never forwarded it (a proxy's 407) raise their error, not an ambiguous
    one: nothing was created, and the song may be sent again later."""
    api = ScriptedAPI(error_body(status))
    with pytest.raises(APIStatusError) as caught:
        await make_transport(api).submit(song())
    assert not isinstance(caught.value, AmbiguousSubmissionError)
    assert caught.value.status_code == status


#: Real seconds between the bytes of a dripped body, and the read timeout it meets: each
#: gap within it, only the whole body too long (the tests wait a few tens of milliseconds).
DRIP_GAP = 0.005
SHORT_READ = 0.05


class _Drip(httpx.AsyncByteStream):
    """A body of ``pieces`` bytes sent one at a time, ``gap`` seconds of ``clock`` apart
    and, with ``real_gap``, that many real seconds apart too."""

    def __init__(
        self,
        clock: RecordingClock,
        pieces: int,
        gap: float,
        body: bytes | None = None,
        real_gap: float | None = None,
    ) -> None:
        self.clock, self.pieces, self.gap, self.real_gap = clock, pieces, gap, real_gap
        self.body = body  # sent a byte at a time, then ends (None: spaces, ``pieces`` of them)
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True  # as a socket's stream ends once its connection is closed

    async def __aiter__(self) -> AsyncIterator[bytes]:
        body = self.body if self.body is not None else b" " * self.pieces
        for at in range(len(body)):
            if self.closed:
                return
            self.clock.time += self.gap
            if self.real_gap is None:
                await anyio.lowlevel.checkpoint()
            else:
                await anyio.sleep(self.real_gap)
            yield body[at : at + 1]


def tiny_timeouts_transport(
    handler: Callable[[httpx.Request], Awaitable[httpx.Response]],
) -> Transport:
    """A Transport on ``handler`` whose HTTP timeouts are 10 ms each (its answer's head is
    bounded at 40 ms of real time), two attempts a request."""
    return Transport(
        api_key="sk-test-key",
        base_url=API,
        timeout=aimlmusic.Timeout(connect=0.01, read=0.01, write=0.01, pool=0.01),
        retry=RetryPolicy(attempts=2),
        clock=RecordingClock(),
        budget=RequestBudget(1_000_000, RecordingClock(), seed=1),
        transport=httpx.MockTransport(handler),
    )


def short_read_transport(api: ScriptedAPI, clock: RecordingClock) -> Transport:
    """A Transport on ``api`` whose read timeout is ``SHORT_READ`` real seconds."""
    return Transport(
        api_key="sk-test-key",
        base_url=API,
        timeout=aimlmusic.Timeout(read=SHORT_READ),
        retry=RetryPolicy(attempts=4, base_delay=0.5, max_delay=8.0),
        clock=clock,
        budget=RequestBudget(1_000_000, clock, seed=1),
        transport=api.transport,
    )


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_an_answer_dripped_a_byte_at_a_time_is_cut_after_one_read_timeout(
    method: str,
) -> None:
    """An answer whose body comes a byte at a time, each within the read timeout, is cut
    once it has taken longer than one read timeout in all (real time): a submission is then
    ambiguous (sent once), a poll is retried. Nothing bounded it, and one song's POST could
    hold a batch for months."""
    clock = RecordingClock()

    def drip(request: httpx.Request) -> httpx.Response:
        stream = _Drip(clock, 100_000, 0.0, real_gap=DRIP_GAP)
        return httpx.Response(200, headers={"content-length": "100000"}, stream=stream)

    api = ScriptedAPI(drip, ok())
    transport = short_read_transport(api, clock)
    with anyio.fail_after(30):  # real seconds, only if the bound failed
        if method == "POST":
            with pytest.raises(AmbiguousSubmissionError) as caught:
                await transport.submit(song())
            assert isinstance(caught.value.cause, APITimeoutError)
            assert "Timeout.read" in str(caught.value)
            assert api.methods() == ["POST"]
        else:
            generation = await transport.get(GEN_ID)
            assert generation.id == GEN_ID
            assert api.methods() == ["GET", "GET"]


class _Clocked(RecordingClock):
    """A RecordingClock running API time ``scale`` times faster than real time, as the
    clock following an emulator's pace does once it learned it."""

    scale = 1000.0


async def test_a_body_read_in_a_tenth_of_a_real_second_is_not_cut_on_a_fast_clock() -> None:
    """On a client clock running 1,000 times faster than real time, a body that takes 100
    API seconds (a moment of real time) is within one read timeout (30 real seconds): the
    bound is in real time, on the event loop's clock. It was taken in API seconds on any
    client clock but a ScaledClock (the emulator's own among them), and honest answers were
    cut under load, their POSTs made ambiguous."""
    clock = _Clocked()

    def slow(request: httpx.Request) -> httpx.Response:
        stream = _Drip(clock, 100, 1.0, body=json.dumps(generation_json()).encode())
        return httpx.Response(200, headers={"content-type": "application/json"}, stream=stream)

    generation = await make_transport(ScriptedAPI(slow), clock).submit(song())
    assert generation.id == GEN_ID


async def test_a_compressed_body_dripping_bytes_that_decode_to_nothing_is_cut() -> None:
    """A gzip body whose dripped bytes decode to nothing (empty stored blocks) is cut after
    one read timeout too: the bound is checked as raw bytes arrive, not decoded pieces."""
    clock = RecordingClock()

    def drip(request: httpx.Request) -> httpx.Response:
        empty_blocks = (
            b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + b"\x00\x00\x00\xff\xff" * 10_000
        )
        stream = _Drip(clock, 0, 0.0, body=empty_blocks, real_gap=DRIP_GAP)
        return httpx.Response(200, headers={"content-encoding": "gzip"}, stream=stream)

    api = ScriptedAPI(drip)
    with anyio.fail_after(30), pytest.raises(AmbiguousSubmissionError) as caught:
        await short_read_transport(api, clock).submit(song())
    assert "Timeout.read" in str(caught.value)
    assert api.methods() == ["POST"]


async def test_an_answer_whose_head_never_completes_is_cut() -> None:
    """A server that never finishes its status line and headers (dripping them, each byte
    within the read timeout) is cut once the connect, write, pool and read timeouts have
    passed together: the POST is ambiguous, sent once. Here with timeouts of 10 ms, so the
    test waits 40 ms of real time whatever the machine's load (it asserts no timing)."""

    async def never_answers(request: httpx.Request) -> httpx.Response:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    transport = tiny_timeouts_transport(never_answers)
    with anyio.fail_after(30):  # real seconds, only if the bound failed
        with pytest.raises(AmbiguousSubmissionError) as caught:
            await transport.submit(song())
    assert isinstance(caught.value.cause, APITimeoutError)


async def test_an_endless_error_text_from_the_connection_is_bounded() -> None:
    """A connection error quoting a 90 KB illegal status line (h11 quotes it whole) gives an
    error a few hundred characters long: it reaches the journal and the manifest."""
    line = "illegal status line: " + "x" * 90_000
    api = ScriptedAPI(httpx.RemoteProtocolError(line, request=REQUEST))
    with pytest.raises(AmbiguousSubmissionError) as caught:
        await make_transport(api).submit(song())
    assert len(str(caught.value)) < 2_000


@pytest.mark.parametrize("status", [401, 422])
async def test_a_refusal_whose_error_page_is_slow_keeps_its_status(status: int) -> None:
    """A refusal whose error page takes longer than the read timeout in all (a proxy's
    large page on a slow link) keeps its status: the page is cut, not the answer. It was
    made an ambiguous submission, its status lost (a 429 was not even retried)."""
    clock = RecordingClock()

    def refusal(request: httpx.Request) -> httpx.Response:
        page = b"<html>" + b"x" * 1_000 + b"</html>"
        stream = _Drip(clock, 0, 0.0, body=page, real_gap=DRIP_GAP)
        return httpx.Response(status, headers={"content-type": "text/html"}, stream=stream)

    api = ScriptedAPI(refusal)
    with anyio.fail_after(30), pytest.raises(APIStatusError) as caught:
        await short_read_transport(api, clock).submit(song())
    assert not isinstance(caught.value, AmbiguousSubmissionError)
    assert caught.value.status_code == status


async def test_a_request_cut_before_its_first_byte_is_never_sent_not_ambiguous() -> None:
    """A submission cut by the bound on its answer while still connecting (httpcore's trace
    shows no byte left: the pool, slow connects, httpx's own connect retries) was never
    sent: it fails as a connection that never arrived, not as an ambiguous submission."""

    async def stuck_connecting(request: httpx.Request) -> httpx.Response:
        trace = request.extensions["trace"]
        await trace("connection.connect_tcp.started", {})  # as httpcore reports it
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    transport = tiny_timeouts_transport(stuck_connecting)
    with anyio.fail_after(30), pytest.raises(APIConnectionError) as caught:
        await transport.submit(song())
    assert not isinstance(caught.value, AmbiguousSubmissionError)
