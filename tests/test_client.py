"""AsyncMusicClient: configuration, submit/get, wait, generate and lifecycle."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
from _http_fakes import (
    GEN_ID,
    RecordingClock,
    ScriptedAPI,
    completed_json,
    error_body,
    generation_json,
    ok,
    song,
)
from _policies import RecordingPolicy

from aimlmusic import (
    AmbiguousSubmissionError,
    APIConnectionError,
    AsyncMusicClient,
    ConfigurationError,
    FixedInterval,
    Generation,
    GenerationFailedError,
    GenerationStatus,
    GenerationTimeoutError,
    Limits,
    NotFoundError,
    PermissionDeniedError,
    RetryPolicy,
    SubmissionTimeoutError,
    Timeout,
)
from aimlmusic._converter import structure_generation
from aimlmusic._scheduler import DEADLINE_POLL_GRACE
from aimlmusic.testing import VirtualClock

KEY_VARIABLES = ("AIML_API_KEY", "AIMLAPI_API_KEY", "AIMLMUSIC_BASE_URL")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's real key or base URL."""
    for name in KEY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def client_on(api: ScriptedAPI, **kwargs: Any) -> AsyncMusicClient:
    """A client whose network is ``api``, with a virtual clock unless one is given."""
    kwargs.setdefault("clock", RecordingClock())
    kwargs.setdefault("poll", FixedInterval(interval=5.0, first=0.0))
    return AsyncMusicClient(
        "sk-test-key", base_url="https://api.test", transport=api.transport, **kwargs
    )  # type: ignore[arg-type]


# ------------------------------------------------------------------ configuration


def key_sent(client: AsyncMusicClient, api: ScriptedAPI) -> str:
    """Make one request and return the bearer token it carried."""

    async def one_get() -> None:
        async with client:
            await client.get(GEN_ID)

    anyio.run(one_get)
    return api.requests[-1].headers["Authorization"].removeprefix("Bearer ")


def test_api_key_comes_from_the_argument_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit key wins over both environment variables."""
    monkeypatch.setenv("AIML_API_KEY", "from-env-1")
    api = ScriptedAPI(ok())
    client = AsyncMusicClient("from-arg", transport=api.transport, clock=RecordingClock())
    assert key_sent(client, api) == "from-arg"


def test_api_key_falls_back_to_aiml_api_key_then_aimlapi_api_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """AIML_API_KEY is read first, AIMLAPI_API_KEY only when the first is unset or blank."""
    monkeypatch.setenv("AIML_API_KEY", "first-key")
    monkeypatch.setenv("AIMLAPI_API_KEY", "second-key")
    api = ScriptedAPI(ok())
    assert key_sent(AsyncMusicClient(transport=api.transport), api) == "first-key"
    monkeypatch.setenv("AIML_API_KEY", "  ")
    assert key_sent(AsyncMusicClient(transport=api.transport), api) == "second-key"
    monkeypatch.delenv("AIML_API_KEY")
    assert key_sent(AsyncMusicClient(transport=api.transport), api) == "second-key"


def test_a_missing_key_is_a_configuration_error_naming_both_variables() -> None:
    """No key anywhere fails at construction, saying where a key is looked for."""
    with pytest.raises(ConfigurationError) as caught:
        AsyncMusicClient()
    assert "AIML_API_KEY" in str(caught.value)
    assert "AIMLAPI_API_KEY" in str(caught.value)


@pytest.mark.parametrize("key", ["", "   "])
def test_an_empty_key_argument_is_refused(key: str) -> None:
    """An empty key passed explicitly is an error, not a fall-back to the environment."""
    with pytest.raises(ConfigurationError, match="empty"):
        AsyncMusicClient(key)


@pytest.mark.parametrize("key", ["k", "sk-1234"])
def test_a_key_too_short_to_redact_is_refused_naming_the_limit(key: str) -> None:
    """A key under 8 characters (which redaction would find inside ordinary text) is a
    configuration error that gives its length and the limit, never the key."""
    with pytest.raises(ConfigurationError, match=f"has {len(key)} characters.* the 8 ") as caught:
        AsyncMusicClient(key)
    assert repr(key) not in str(caught.value)


def test_base_url_defaults_and_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default is the public API; AIMLMUSIC_BASE_URL overrides it; the argument wins."""
    assert AsyncMusicClient("test-key").base_url == "https://api.aimlapi.com"
    monkeypatch.setenv("AIMLMUSIC_BASE_URL", "https://env.example/")
    assert AsyncMusicClient("test-key").base_url == "https://env.example"
    assert (
        AsyncMusicClient("test-key", base_url="https://arg.example").base_url
        == "https://arg.example"
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000",
        "http://127.9.9.9",
        "http://localhost:8000/",
        "http://LOCALHOST",
        "http://[::1]:8080",
    ],
)
def test_plain_http_is_allowed_to_loopback(url: str) -> None:
    """An emulator on this machine may be reached over plain http."""
    assert AsyncMusicClient("test-key", base_url=url).base_url == url.rstrip("/")


@pytest.mark.parametrize(
    "url", ["http://api.aimlapi.com", "http://10.0.0.5:8000", "http://localhost.evil.example"]
)
def test_plain_http_to_another_host_is_refused_unless_allowed(url: str) -> None:
    """The key must not travel in clear text unless the caller opts in."""
    with pytest.raises(ConfigurationError, match="allow_insecure_http"):
        AsyncMusicClient("test-key", base_url=url)
    assert AsyncMusicClient("test-key", base_url=url, allow_insecure_http=True).base_url == url


@pytest.mark.parametrize(
    "url",
    [
        "ftp://api.aimlapi.com",
        "api.aimlapi.com",
        "https://",
        "https://user:pw@api.aimlapi.com",
        "https://api.aimlapi.com?x=1",
    ],
)
def test_malformed_base_urls_are_refused(url: str) -> None:
    """Non-http(s) schemes, missing hosts, credentials and queries are configuration errors."""
    with pytest.raises(ConfigurationError):
        AsyncMusicClient("test-key", base_url=url, allow_insecure_http=True)


@pytest.mark.parametrize(
    "url",
    [
        "https://user:sk-SECRET-part@api.aimlapi.com",
        "https://api.aimlapi.com/v2?key=sk-SECRET-part",
        "https://api.aimlapi.com/v2#sk-SECRET-part",
        "https://user:pw?sk-SECRET-part@api.aimlapi.com",  # a '?' in the password
        "https://user:pw/sk-SECRET-part@api.aimlapi.com",  # a '/' in the password
        "ftp://user:sk-SECRET-part@api.aimlapi.com",
        "https://[::1:sk-SECRET-part/v2",  # no valid URL: the parser's text quotes it
        "https://admin:2024/sk-SECRET-part@api.example.com/v2",  # reads as host and port
        "http://admin:2024/sk-SECRET-part@api.example.com/v2",  # refused as plain http too
    ],
)
def test_a_refused_base_url_is_never_quoted_with_its_secrets(url: str) -> None:
    """The error refusing a base URL masks its user, password, query and fragment."""
    with pytest.raises(ConfigurationError) as caught:
        AsyncMusicClient("test-key", base_url=url, allow_insecure_http=True)
    assert "SECRET" not in str(caught.value)
    assert "base URL" in str(caught.value)


def test_a_number_timeout_becomes_a_timeout_with_connect_at_most_ten_seconds() -> None:
    """timeout=t means read/write/pool t and connect min(10, t)."""
    assert AsyncMusicClient("test-key", timeout=60)._timeout == Timeout(10, 60, 60, 60)
    assert AsyncMusicClient("test-key", timeout=2.5)._timeout == Timeout(2.5, 2.5, 2.5, 2.5)
    custom = Timeout(connect=1, read=2, write=3, pool=4)
    assert AsyncMusicClient("test-key", timeout=custom)._timeout is custom
    with pytest.raises(ConfigurationError):
        AsyncMusicClient("test-key", timeout=0)


def test_transport_and_http_client_together_are_refused() -> None:
    """Only one way of replacing the network may be given."""
    api = ScriptedAPI(ok())
    with pytest.raises(ConfigurationError, match="not both"):
        AsyncMusicClient(
            "test-key",
            transport=api.transport,
            http_client=httpx.AsyncClient(transport=api.transport),
        )


def test_properties_expose_the_shared_parts() -> None:
    """limits, clock, poll policy and one budget per client are readable."""
    clock = RecordingClock()
    policy = FixedInterval()
    client = AsyncMusicClient("test-key", clock=clock, poll=policy)
    assert client.clock is clock
    assert client.poll_policy is policy
    assert client.budget.requests_per_minute == client.limits.requests_per_minute == 120
    assert AsyncMusicClient("test-key").budget is not client.budget


# ------------------------------------------------------------------ calls


@pytest.mark.anyio
async def test_submit_and_get_go_through_the_transport() -> None:
    """submit is one POST and get one GET, each returning a Generation."""
    api = ScriptedAPI(ok(), ok(generation_json("generating")))
    async with client_on(api) as client:
        submitted = await client.submit(song())
        fetched = await client.get(submitted.id)
    assert submitted.status is GenerationStatus.QUEUED
    assert fetched.status is GenerationStatus.GENERATING
    assert api.methods() == ["POST", "GET"]


@pytest.mark.anyio
async def test_submit_refuses_anything_but_a_song_request_before_sending() -> None:
    """A plain dict is a TypeError naming what is expected, and nothing is sent."""
    api = ScriptedAPI(ok())
    async with client_on(api) as client:
        with pytest.raises(TypeError, match="SongRequest"):
            await client.submit({"prompt": "x"})  # type: ignore[arg-type]
    assert api.requests == []


@pytest.mark.anyio
async def test_get_errors_surface_as_api_errors() -> None:
    """An unknown id is a NotFoundError from get."""
    api = ScriptedAPI(error_body(404, message="Generation not found"))
    async with client_on(api) as client:
        with pytest.raises(NotFoundError, match="Generation not found"):
            await client.get("missing")


@pytest.mark.anyio
async def test_wait_on_a_completed_generation_returns_it_without_a_request() -> None:
    """A finished Generation needs no polling."""
    api = ScriptedAPI(ok())
    done = Generation(id=GEN_ID, status=GenerationStatus.COMPLETED)
    async with client_on(api) as client:
        assert await client.wait(done) is done
    assert api.requests == []


@pytest.mark.anyio
async def test_wait_on_a_failed_generation_raises_without_a_request() -> None:
    """A Generation already in status error raises GenerationFailedError at once."""
    api = ScriptedAPI(ok())
    failed = structure_generation(
        generation_json("error", error={"name": "ContentPolicy", "message": "lyrics refused"})
    )
    async with client_on(api) as client:
        with pytest.raises(GenerationFailedError) as caught:
            await client.wait(failed)
    assert caught.value.generation_id == GEN_ID
    assert caught.value.error_name == "ContentPolicy"
    assert caught.value.error_message == "lyrics refused"
    assert api.requests == []


@pytest.mark.anyio
async def test_wait_on_an_id_looks_at_once_then_polls_through_unknown_statuses() -> None:
    """wait(id) GETs immediately, then every interval; 'waiting' is simply not finished."""
    api = ScriptedAPI(
        ok(generation_json("queued")),
        ok(generation_json("waiting")),
        ok(generation_json("generating")),
        ok(completed_json()),
    )
    clock = RecordingClock()
    async with client_on(api, clock=clock) as client:
        result = await client.wait(GEN_ID)
    assert result.status is GenerationStatus.COMPLETED
    assert result.audio_file is not None
    assert api.methods() == ["GET"] * 4
    assert clock.sleeps == [5.0, 5.0, 5.0]


@pytest.mark.anyio
async def test_wait_raises_generation_failed_on_status_error() -> None:
    """A poll that sees status error raises with the id, error name and message."""
    api = ScriptedAPI(
        ok(generation_json("generating")),
        ok(generation_json("error", error={"name": "InternalError", "message": "model crashed"})),
    )
    async with client_on(api) as client:
        with pytest.raises(GenerationFailedError) as caught:
            await client.wait(GEN_ID)
    assert caught.value.generation_id == GEN_ID
    assert caught.value.error_name == "InternalError"
    assert "model crashed" in str(caught.value)


@pytest.mark.anyio
async def test_wait_times_out_on_the_clients_clock() -> None:
    """On a virtual clock a 30 s deadline passes at 30 s and names the id and last status."""
    api = ScriptedAPI(ok(generation_json("generating")))
    clock = VirtualClock()
    async with clock, client_on(api, clock=clock, poll=FixedInterval(interval=2.0)) as client:
        with pytest.raises(GenerationTimeoutError) as caught:
            await client.wait(GEN_ID, timeout=30)
        assert clock.now() == 30.0
    error = caught.value
    assert isinstance(error, TimeoutError)
    assert error.generation_id == GEN_ID
    assert error.timeout == 30
    assert error.last_seen is not None
    assert error.last_seen.status is GenerationStatus.GENERATING
    # One look, then one poll per 2 s of the 30 s window (the one due at 30 s may lose to it).
    assert 15 <= len(api.requests) <= 16


@pytest.mark.anyio
async def test_wait_deadline_also_cuts_a_hanging_request_short() -> None:
    """A GET that never answers cannot hold wait past its deadline."""

    async def hang(request: httpx.Request) -> httpx.Response:
        await anyio.sleep(30)
        return ok()

    clock = VirtualClock()
    async with (
        clock,
        AsyncMusicClient(
            "test-key",
            base_url="https://api.test",
            transport=httpx.MockTransport(hang),
            clock=clock,
        ) as client,
    ):
        queued = Generation(id=GEN_ID, status=GenerationStatus.QUEUED)
        with anyio.fail_after(5), pytest.raises(GenerationTimeoutError) as caught:
            await client.wait(queued, timeout=100)
        # A poll in flight at the deadline is given the scheduler's grace to come back.
        assert clock.now() == 100.0 + DEADLINE_POLL_GRACE
    assert caught.value.last_seen is queued


@pytest.mark.anyio
async def test_wait_with_a_deadline_returns_a_result_that_comes_in_time() -> None:
    """A deadline does not get in the way of a song that finishes before it."""
    api = ScriptedAPI(ok(generation_json("generating")), ok(completed_json()))
    clock = VirtualClock()
    async with clock, client_on(api, clock=clock) as client:
        result = await client.wait(GEN_ID, timeout=1000)
    assert result.status is GenerationStatus.COMPLETED


@pytest.mark.anyio
async def test_wait_with_a_deadline_passes_api_errors_through_unwrapped() -> None:
    """An error inside a deadline-bounded wait is the error itself, not an exception group."""
    api = ScriptedAPI(error_body(401, message="bad key"))
    clock = VirtualClock()
    async with clock, client_on(api, clock=clock) as client:
        with pytest.raises(Exception) as caught:
            await client.wait(GEN_ID, timeout=1000)
    assert type(caught.value).__name__ == "AuthenticationError"


@pytest.mark.anyio
async def test_wait_with_zero_timeout_raises_without_polling() -> None:
    """A deadline already passed raises at once, carrying the id."""
    api = ScriptedAPI(ok())
    async with client_on(api) as client:
        with pytest.raises(GenerationTimeoutError) as caught:
            await client.wait(GEN_ID, timeout=0)
    assert caught.value.generation_id == GEN_ID
    assert api.requests == []


@pytest.mark.anyio
async def test_generate_submits_waits_and_teaches_the_policy() -> None:
    """generate = POST + polls; the policy sees each state, and learns what each poll saw
    (counted from the last poll that saw the song queued)."""
    api = ScriptedAPI(
        ok(generation_json("queued")),
        ok(generation_json("queued")),
        ok(generation_json("generating")),
        ok(completed_json()),
    )
    clock = VirtualClock()
    policy = RecordingPolicy()
    async with clock, client_on(api, clock=clock, poll=policy) as client:
        result = await client.generate(song())
    assert result.status is GenerationStatus.COMPLETED
    assert api.methods() == ["POST", "GET", "GET", "GET"]
    assert [s.polls for s in policy.states] == [0, 1, 2]
    assert [s.status for s in policy.states] == ["queued", "queued", "generating"]
    assert all(s.submitted_at == 0.0 for s in policy.states)
    assert policy.states[2].queued_at == 1.0
    assert policy.running == [(GEN_ID, 1.0, 1.0), (GEN_ID, 1.0, 2.0)]
    assert policy.finished == [(GEN_ID, 1.0, 2.0, 3.0)]


@pytest.mark.anyio
async def test_submit_then_wait_also_teaches_the_policy() -> None:
    """wait after this client's own submit knows the submission time and learns from it."""
    api = ScriptedAPI(ok(generation_json("queued")), ok(completed_json()))
    clock = VirtualClock()
    policy = RecordingPolicy()
    async with clock, client_on(api, clock=clock, poll=policy) as client:
        generation = await client.submit(song())
        await clock.sleep(5.0)
        await client.wait(generation)
    assert policy.finished == [(GEN_ID, 0.0, 0.0, 6.0)]


@pytest.mark.anyio
async def test_a_failed_generation_does_not_teach_the_policy() -> None:
    """A song that ends in error says nothing about how long songs take: nothing is learned,
    and the policy forgets it was running."""
    api = ScriptedAPI(
        ok(generation_json("queued")),
        ok(generation_json("error", error={"name": "E", "message": "boom"})),
    )
    clock = VirtualClock()
    policy = RecordingPolicy()
    async with clock, client_on(api, clock=clock, poll=policy) as client:
        generation = await client.submit(song())
        with pytest.raises(GenerationFailedError):
            await client.wait(generation)
    assert policy.finished == []
    assert policy.forgotten == [GEN_ID]


@pytest.mark.anyio
async def test_wait_on_a_foreign_id_does_not_teach_the_policy() -> None:
    """Without a known submission time nothing is learned (it would learn wrong durations)."""
    api = ScriptedAPI(
        ok(generation_json("queued")), ok(generation_json("generating")), ok(completed_json())
    )
    clock = VirtualClock()
    policy = RecordingPolicy()
    async with clock, client_on(api, clock=clock, poll=policy) as client:
        await client.wait(GEN_ID)
    assert api.methods() == ["GET", "GET", "GET"]
    assert policy.running == []
    assert policy.finished == []


@pytest.mark.anyio
async def test_wait_and_generate_many_share_one_budget_and_one_policy() -> None:
    """One poll engine: wait() polls through the client's request budget and poll policy."""
    api = ScriptedAPI(ok(generation_json("queued")), ok(completed_json()))
    clock = VirtualClock()
    policy = RecordingPolicy()
    async with clock, client_on(api, clock=clock, poll=policy) as client:
        generation = await client.submit(song())
        sent_before = client.budget.sent_total
        await client.wait(generation)
        assert client.budget.sent_total == sent_before + 1
    assert policy.states
    assert all(s.budget_rate == 120.0 for s in policy.states)


@pytest.mark.anyio
async def test_generate_reports_an_ambiguous_submission_without_resending() -> None:
    """generate passes AmbiguousSubmissionError through after exactly one POST."""
    api = ScriptedAPI(error_body(500), ok())
    async with client_on(api) as client:
        with pytest.raises(AmbiguousSubmissionError):
            await client.generate(song())
    assert api.methods() == ["POST"]


@pytest.mark.anyio
async def test_generate_timeout_covers_the_wait_for_the_budget_and_sends_nothing() -> None:
    """With the minute's two requests spent, generate(timeout=5) gives up when the time
    runs out, waiting for the budget, with SubmissionTimeoutError and no POST sent (it
    would have been sent a minute later, paid for after the caller stopped waiting)."""
    api = ScriptedAPI(ok(generation_json("queued")))
    clock = VirtualClock()
    limits = Limits(requests_per_minute=2)
    async with clock, client_on(api, clock=clock, limits=limits) as client:
        await client.get(GEN_ID)
        await client.get(GEN_ID)
        with pytest.raises(SubmissionTimeoutError) as caught:
            await client.generate(song(), timeout=5)
        assert clock.now() == 5.0
    assert caught.value.timeout == 5
    assert "request budget" in str(caught.value)
    assert api.methods() == ["GET", "GET"]


@pytest.mark.anyio
async def test_generate_timeout_shorter_than_a_retry_raises_the_failure_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A POST that cannot connect, under generate(timeout=1) with a 5 s back-off, raises the
    connection error itself (nothing was sent) rather than a timeout hiding it, and makes
    no retry it has no time for."""
    # The back-off's jitter at the top of its window: 5 s, past the timeout.
    monkeypatch.setattr("aimlmusic._retry.random.uniform", lambda low, high: high)
    api = ScriptedAPI(httpx.ConnectError("connection refused"))
    clock = VirtualClock()
    retry = RetryPolicy(attempts=3, base_delay=5.0, max_delay=5.0)
    async with clock, client_on(api, clock=clock, retry=retry) as client:
        with pytest.raises(APIConnectionError):
            await client.generate(song(), timeout=1)
        assert clock.now() < 1.0
    assert api.methods() == ["POST"]


@pytest.mark.anyio
async def test_an_error_after_the_submission_names_the_generation() -> None:
    """A poll refused with 403 after the POST was accepted raises PermissionDeniedError
    carrying the paid generation's id, so the caller can still follow it with wait()."""
    api = ScriptedAPI(ok(generation_json("queued")), error_body(403))
    clock = VirtualClock()
    async with clock, client_on(api, clock=clock) as client:
        with pytest.raises(PermissionDeniedError) as caught:
            await client.generate(song())
    assert caught.value.generation_id == GEN_ID
    assert api.methods() == ["POST", "GET"]


@pytest.mark.anyio
async def test_generate_timeout_covers_submit_and_wait() -> None:
    """generate's deadline raises GenerationTimeoutError with the new generation's id."""
    api = ScriptedAPI(ok(generation_json("queued")), ok(generation_json("generating")))
    clock = VirtualClock()
    async with clock, client_on(api, clock=clock) as client:
        with pytest.raises(GenerationTimeoutError) as caught:
            await client.generate(song(), timeout=20)
        assert clock.now() == 20.0
    assert caught.value.generation_id == GEN_ID
    assert caught.value.timeout == 20
    assert api.methods()[0] == "POST"


# ------------------------------------------------------------------ lifecycle


@pytest.mark.anyio
async def test_a_closed_client_refuses_every_call() -> None:
    """After aclose each method raises a clear error and sends nothing."""
    api = ScriptedAPI(ok())
    client = client_on(api)
    await client.aclose()
    await client.aclose()
    assert client.closed
    assert "closed" in repr(client)
    for call in (
        client.submit(song()),
        client.get(GEN_ID),
        client.wait(GEN_ID),
        client.generate(song()),
    ):
        with pytest.raises(RuntimeError, match="closed"):
            await call
    with pytest.raises(RuntimeError, match="closed"):
        async with client:
            pass
    assert api.requests == []


@pytest.mark.anyio
async def test_a_passed_in_http_client_stays_open() -> None:
    """The client does not close an httpx client it did not create."""
    api = ScriptedAPI(ok())
    async with httpx.AsyncClient(transport=api.transport) as http:
        async with AsyncMusicClient(
            "test-key", base_url="https://api.test", http_client=http
        ) as client:
            await client.get(GEN_ID)
        assert not http.is_closed
        assert api.requests[0].headers["Authorization"] == "Bearer test-key"


@pytest.mark.anyio
async def test_retry_policy_is_passed_to_the_transport() -> None:
    """A custom RetryPolicy changes how many times a GET is tried."""
    api = ScriptedAPI(error_body(503))
    async with client_on(api, retry=RetryPolicy(attempts=2)) as client:
        with pytest.raises(Exception, match="HTTP 503"):
            await client.get(GEN_ID)
    assert len(api.requests) == 2


@pytest.mark.anyio
async def test_generate_many_refuses_zero_in_flight_instead_of_using_the_default() -> None:
    """max_in_flight=0 is a mistake to report, not a request for the default."""
    api = ScriptedAPI(ok())
    async with client_on(api) as client:
        with pytest.raises(ValueError, match="max_in_flight must be a positive int, got 0"):
            async with client.generate_many([], max_in_flight=0):
                pass
    assert api.requests == []


@pytest.mark.anyio
async def test_a_generate_cancelled_while_waiting_names_the_submitted_generation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """generate() cancelled after its POST was answered (a service's timeout, Ctrl-C in the
    blocking client) logs a WARNING naming the generation, which may still finish and be
    paid for: the caller held nothing else to find it by."""
    scope = anyio.CancelScope()

    def poll_then_give_up(request: httpx.Request) -> httpx.Response:
        scope.cancel()  # the caller gives up while the song generates
        return ok(generation_json("generating"))

    api = ScriptedAPI(ok(), poll_then_give_up)
    async with client_on(api) as client:
        with scope:
            await client.generate(song())
    assert scope.cancelled_caught
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(GEN_ID in message and "may still finish" in message for message in warnings)
