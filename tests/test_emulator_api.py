"""The emulator's HTTP API in process (httpx.ASGITransport), on asyncio and trio.

Time is driven by an injected clock (``now``), so timings are exact and nothing sleeps.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import pytest

from aimlmusic.emulator import TEST_API_KEY, Emulator, EmulatorConfig, Faults, Fixed, ThrottleStorm

pytestmark = pytest.mark.anyio

PATH = "/v2/generate/audio"
AUTH = {"Authorization": f"Bearer {TEST_API_KEY}"}
SONG: dict[str, Any] = {
    "model": "minimax/music-1.5",
    "prompt": "Warm lo-fi ballad, soft piano, brushed drums",
    "lyrics": "[Verse]\nStreetlights flicker, the night breeze sighs",
}
ID_PATTERN = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}:minimax/music-1\.5$"
)


class ManualClock:
    """API time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


Harness = tuple[Emulator, httpx.AsyncClient, ManualClock]
MakeHarness = Callable[..., "AsyncIterator[Harness]"]


@pytest.fixture
def clock() -> ManualClock:
    """A hand-driven API clock."""
    return ManualClock()


def make_emulator(clock: ManualClock, **settings: Any) -> Emulator:
    """An emulator on the manual clock, 55 s songs, and whatever ``settings`` say."""
    settings.setdefault("durations", Fixed(55.0))
    return Emulator(EmulatorConfig(**settings), clock=clock)


def client_for(emulator: Emulator) -> httpx.AsyncClient:
    """A raw httpx client speaking to ``emulator`` in process."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=emulator.app), base_url="http://127.0.0.1"
    )


async def submit(
    client: httpx.AsyncClient, body: dict[str, Any] | None = None, **kw: Any
) -> httpx.Response:
    """POST a song (the default one unless ``body`` is given)."""
    headers = kw.pop("headers", AUTH)
    return await client.post(PATH, json=SONG if body is None else body, headers=headers, **kw)


async def poll(client: httpx.AsyncClient, generation_id: str, **kw: Any) -> httpx.Response:
    """GET a generation."""
    headers = kw.pop("headers", AUTH)
    return await client.get(PATH, params={"generation_id": generation_id}, headers=headers, **kw)


@pytest.fixture
async def api(clock: ManualClock) -> AsyncIterator[Harness]:
    """A default emulator (no request budget) with a client."""
    emulator = make_emulator(clock, requests_per_minute=None)
    async with client_for(emulator) as client:
        yield emulator, client, clock


def assert_error_shape(response: httpx.Response, status: int) -> dict[str, Any]:
    """The AI/ML API error body: message, path, requestId, statusCode, timestamp."""
    assert response.status_code == status
    body = response.json()
    assert {"message", "path", "requestId", "statusCode", "timestamp"} <= set(body)
    assert body["statusCode"] == status
    assert body["path"] == response.request.url.path
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", body["timestamp"])
    return body


# --------------------------------------------------------------------------- happy path


async def test_a_song_goes_queued_generating_completed(api: Harness) -> None:
    """Submission answers ``queued`` with an id of the documented shape; polls then show
    ``generating`` and, after the song's duration, ``completed`` with URL, usage and extras."""
    emulator, client, clock = api
    submitted = await submit(client)
    assert submitted.status_code == 200
    assert submitted.json()["status"] == "queued"
    generation_id = submitted.json()["id"]
    assert ID_PATTERN.match(generation_id)

    clock.now = 54.9
    assert (await poll(client, generation_id)).json() == {
        "id": generation_id,
        "status": "generating",
    }

    clock.now = 55.0
    done = (await poll(client, generation_id)).json()
    assert done["status"] == "completed"
    assert done["audio_file"]["url"].startswith("http://127.0.0.1/files/")
    assert done["meta"] == {"usage": {"credits_used": 100.0}}
    assert done["extra_info"]["music_sample_rate"] == 44100
    assert done["extra_info"]["music_channel"] == 2
    assert re.fullmatch(r"[0-9a-f]{32}", done["trace_id"])
    record = emulator.job(generation_id)
    assert (record.submitted_at, record.started_at, record.completed_at) == (0.0, 0.0, 55.0)
    assert (record.polls, record.first_seen_terminal_at, record.lag) == (2, 55.0, 0.0)


async def test_ids_never_repeat_across_emulators(clock: ManualClock) -> None:
    """Two emulators with the same seed (a restart) give different ids for the same request:
    an id kept from an earlier run never finds another song."""
    ids = []
    for _ in range(2):
        async with client_for(make_emulator(clock, seed=42)) as client:
            ids.append((await submit(client)).json()["id"])
    assert ids[0] != ids[1]
    assert all(re.fullmatch(r"[0-9a-f-]{36}:minimax/music-1\.5", i) for i in ids)


async def test_info_reports_the_time_scale(clock: ManualClock) -> None:
    """GET /_emulator/info says it is an aimlmusic emulator and its time scale, without a
    key and without counting as a request."""
    emulator = make_emulator(clock, time_scale=250)
    async with client_for(emulator) as client:
        response = await client.get("/_emulator/info")
    assert response.status_code == 200
    info = response.json()
    assert (info["emulator"], info["time_scale"]) == ("aimlmusic", 250)
    assert emulator.stats().total_requests == 0


async def test_truncated_downloads_can_be_drawn(clock: ManualClock) -> None:
    """``Faults(truncate_download=1.0)`` cuts every download short, as the docs' table says;
    API requests are untouched."""
    emulator = make_emulator(clock, faults=Faults(truncate_download=1.0))
    async with client_for(emulator) as client:
        generation_id = (await submit(client)).json()["id"]
        clock.now = 60.0
        done = (await poll(client, generation_id)).json()
        with pytest.raises(httpx.RemoteProtocolError, match="complete message body"):
            await client.get(done["audio_file"]["url"])
    assert emulator.stats().faults == {"truncate_download": 1}


async def test_the_extras_can_be_turned_off(clock: ManualClock) -> None:
    """``include_extra_info``, ``include_trace_id`` and ``include_usage`` toggle those fields."""
    emulator = make_emulator(
        clock, include_extra_info=False, include_trace_id=False, include_usage=False
    )
    async with client_for(emulator) as client:
        generation_id = (await submit(client)).json()["id"]
        clock.now = 60.0
        done = (await poll(client, generation_id)).json()
    assert set(done) == {"id", "status", "audio_file"}


async def test_an_encoded_id_with_colon_and_slash_is_found(api: Harness) -> None:
    """The id travels percent-encoded in the query (``%3A``, ``%2F``) and is still found."""
    _, client, _ = api
    generation_id = (await submit(client)).json()["id"]
    encoded = generation_id.replace(":", "%3A").replace("/", "%2F")
    response = await client.get(f"{PATH}?generation_id={encoded}", headers=AUTH)
    assert response.json()["id"] == generation_id


# --------------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic dGVzdA=="},
        {"Authorization": "Bearer nope"},
    ],
)
async def test_missing_or_unknown_keys_get_401(api: Harness, headers: dict[str, str]) -> None:
    """No key, an empty key, another scheme or an unknown key: 401 in the API's error shape,
    on submission and on polls."""
    _, client, _ = api
    assert_error_shape(await submit(client, headers=headers), 401)
    assert_error_shape(await poll(client, "anything", headers=headers), 401)


async def test_any_key_is_accepted_when_configured(clock: ManualClock) -> None:
    """``accept_any_key`` lets any key a client could send in; keys are separate accounts."""
    emulator = make_emulator(clock, accept_any_key=True)
    async with client_for(emulator) as client:
        mine = (await submit(client, headers={"Authorization": "Bearer sk-mine-0001"})).json()["id"]
        other = await poll(client, mine, headers={"Authorization": "Bearer sk-theirs-0002"})
        assert_error_shape(other, 404)  # another account's job does not exist for you
        assert (
            await poll(client, mine, headers={"Authorization": "Bearer sk-mine-0001"})
        ).status_code == 200


@pytest.mark.parametrize("key", ["sk-1234", "sk-12\t34567", "sk-1234567é"])
async def test_any_key_still_refuses_keys_no_client_could_send(
    clock: ManualClock, key: str
) -> None:
    """With ``accept_any_key``, a key too short, or with a control or non-ASCII character,
    gets 401: no real key is like that, and the client refuses to send one."""
    emulator = make_emulator(clock, accept_any_key=True)
    async with client_for(emulator) as client:
        headers = {"Authorization": f"Bearer {key}".encode()}
        assert_error_shape(await submit(client, headers=headers), 401)
    assert emulator.stats().jobs_submitted == 0


@pytest.mark.parametrize(
    ("field", "keys", "problem"),
    [
        ("api_keys", {"test-key", "sk-1234"}, "7 characters, fewer than the 8"),
        ("no_credit_keys", {"sk-with space"}, "a space or control character at character 8"),
        ("api_keys", {"sk-ключ-1234"}, "a non-ASCII character at character 4"),
    ],
)
def test_a_configured_key_no_client_could_send_is_refused(
    field: str, keys: set[str], problem: str
) -> None:
    """A configured key the client would refuse is a ValueError naming the field and the
    problem, never the key."""
    with pytest.raises(ValueError, match=field) as caught:
        EmulatorConfig(**{field: keys})
    assert problem in str(caught.value)
    assert not any(key in str(caught.value) for key in keys)


async def test_a_key_without_credits_gets_403_on_submission(clock: ManualClock) -> None:
    """A ``no_credit_keys`` key authenticates but cannot submit: 403, and no job exists."""
    emulator = make_emulator(clock, no_credit_keys={"sk-broke-0003"})
    async with client_for(emulator) as client:
        body = assert_error_shape(
            await submit(client, headers={"Authorization": "Bearer sk-broke-0003"}), 403
        )
    assert "credit" in body["message"].lower()
    assert emulator.stats().jobs_submitted == 0


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model": "minimax/music-2"}, "model"),
        ({"model": None}, "model"),
        ({"prompt": "too short"}, "prompt"),
        ({"prompt": "x" * 301}, "prompt"),
        ({"lyrics": "short"}, "lyrics"),
        ({"lyrics": "x" * 3001}, "lyrics"),
        ({"lyrics": 12345678901}, "lyrics"),
        ({"audio_setting": {"sample_rate": 44100}}, "audio_setting.format"),
        ({"audio_setting": {"format": "flac"}}, "audio_setting.format"),
        ({"audio_setting": {"format": "mp3", "sample_rate": 48000}}, "audio_setting.sample_rate"),
        ({"audio_setting": {"format": "mp3", "sample_rate": True}}, "audio_setting.sample_rate"),
        ({"audio_setting": {"format": "mp3", "bitrate": 128000.0}}, "audio_setting.bitrate"),
        ({"audio_setting": None}, "audio_setting"),
    ],
)
async def test_invalid_bodies_get_400_naming_the_field(
    api: Harness, change: dict[str, Any], field: str
) -> None:
    """Each documented constraint is enforced: 400 "Body validation error!" naming the field."""
    emulator, client, _ = api
    body = assert_error_shape(await submit(client, {**SONG, **change}), 400)
    assert body["message"] == "Body validation error!"
    assert field in [problem["field"] for problem in body["errors"]]
    assert emulator.stats().jobs_submitted == 0


async def test_limits_are_inclusive(api: Harness) -> None:
    """10 and 300 prompt characters, 10 and 3000 lyric characters are all accepted."""
    _, client, _ = api
    for prompt, lyrics in (("p" * 10, "l" * 10), ("p" * 300, "l" * 3000)):
        assert (
            await submit(client, {**SONG, "prompt": prompt, "lyrics": lyrics})
        ).status_code == 200


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"[1, 2]", "application/json"),
        (b"{not json", "application/json"),
        (b'{"model": NaN}', "application/json"),
        (b"", "application/json"),
        (b'{"model": "minimax/music-1.5"}', "text/plain"),
    ],
)
async def test_bodies_that_are_not_json_objects_get_400(
    api: Harness, content: bytes, content_type: str
) -> None:
    """Arrays, broken JSON, NaN, an empty body and a non-JSON content type are refused."""
    _, client, _ = api
    response = await client.post(
        PATH, content=content, headers={**AUTH, "Content-Type": content_type}
    )
    assert assert_error_shape(response, 400)["message"] == "Body validation error!"


async def test_unknown_properties_are_allowed(api: Harness) -> None:
    """The schema does not forbid extra properties, so neither does the emulator."""
    _, client, _ = api
    assert (await submit(client, {**SONG, "temperature": 0.7})).status_code == 200


async def test_poll_without_id_is_400_and_unknown_id_is_404(api: Harness) -> None:
    """A missing ``generation_id`` is a 400; an unknown one a 404 in the error shape."""
    _, client, _ = api
    assert_error_shape(await client.get(PATH, headers=AUTH), 400)
    assert assert_error_shape(await poll(client, "nope:minimax/music-1.5"), 404)["message"]


async def test_other_methods_and_paths(api: Harness) -> None:
    """Other methods on the endpoint get 405 with ``Allow``; unknown paths 404."""
    emulator, client, _ = api
    response = await client.put(PATH, headers=AUTH)
    assert_error_shape(response, 405)
    assert response.headers["allow"] == "GET, POST"
    assert (
        assert_error_shape(await client.get("/v1/nothing"), 404)["message"]
        == "Cannot GET /v1/nothing"
    )
    assert emulator.stats().requests["other"] == 2


# --------------------------------------------------------------------------- limits


async def test_requests_beyond_the_per_minute_budget_get_429_without_retry_after(
    clock: ManualClock,
) -> None:
    """The window counts POSTs and GETs together; the 4th request in a minute at rpm=3 is a
    429 in the error shape with no Retry-After, and the budget returns after 60 s."""
    emulator = make_emulator(clock, requests_per_minute=3)
    async with client_for(emulator) as client:
        generation_id = (await submit(client)).json()["id"]
        clock.now = 1.0
        await poll(client, generation_id)
        await poll(client, generation_id)
        clock.now = 2.0
        refused = await poll(client, generation_id)
        assert_error_shape(refused, 429)
        assert "retry-after" not in refused.headers
        assert_error_shape(await submit(client), 429)
        clock.now = 60.0  # the submission at 0 has left the window
        assert (await submit(client)).status_code == 200
    stats = emulator.stats()
    assert (stats.rate_limited, stats.jobs_submitted) == (2, 2)
    assert [entry.status for entry in emulator.request_log] == [200, 200, 200, 429, 429, 200]


async def test_a_token_bucket_refuses_a_burst_the_minute_would_allow(clock: ManualClock) -> None:
    """With burst=2 at 60/min, a third request at once is a 429; one second later it passes."""
    emulator = make_emulator(clock, requests_per_minute=60, burst=2)
    async with client_for(emulator) as client:
        generation_id = (await submit(client)).json()["id"]
        await poll(client, generation_id)
        assert_error_shape(await poll(client, generation_id), 429)
        clock.now = 1.0  # one token back
        assert (await poll(client, generation_id)).status_code == 200
        assert (await poll(client, generation_id)).status_code == 429
    assert emulator.stats().rate_limited == 2


@pytest.mark.parametrize(("setting", "expected"), [("auto", "59"), (7.2, "8")])
async def test_retry_after_can_be_sent(clock: ManualClock, setting: object, expected: str) -> None:
    """With ``retry_after`` set, a 429 carries Retry-After (whole seconds, rounded up; "auto"
    is the time until the window admits a request) and retry-after-ms."""
    emulator = make_emulator(clock, requests_per_minute=1, retry_after=setting)
    async with client_for(emulator) as client:
        await submit(client)
        clock.now = 1.0
        refused = await submit(client)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == expected
    assert int(refused.headers["retry-after-ms"]) <= int(expected) * 1000


async def test_only_max_concurrent_songs_generate(clock: ManualClock) -> None:
    """With 2 slots, the 3rd song stays ``queued`` until a slot frees, then generates."""
    emulator = make_emulator(clock, max_concurrent=2)
    async with client_for(emulator) as client:
        ids = [
            (await submit(client, {**SONG, "prompt": f"song number {n} of three"})).json()["id"]
            for n in range(3)
        ]
        clock.now = 1.0
        assert [(await poll(client, i)).json()["status"] for i in ids] == [
            "generating",
            "generating",
            "queued",
        ]
        clock.now = 56.0
        assert [(await poll(client, i)).json()["status"] for i in ids] == [
            "completed",
            "completed",
            "generating",
        ]
    assert emulator.job(ids[2]).started_at == 55.0
    assert emulator.stats().jobs == {"queued": 0, "generating": 1, "completed": 2, "error": 0}


async def test_a_throttle_storm_answers_429_inside_its_window(clock: ManualClock) -> None:
    """Configured and runtime storms answer every API request 429 between their times."""
    emulator = make_emulator(clock, faults=Faults(throttle_storms=(ThrottleStorm(10, 20),)))
    emulator.throttle(30, 40, retry_after=3)
    async with client_for(emulator) as client:
        statuses = []
        headers = []
        for moment in (5, 10, 19.9, 20, 35, 40):
            clock.now = moment
            response = await submit(client)
            statuses.append(response.status_code)
            headers.append(response.headers.get("retry-after"))
    assert statuses == [200, 429, 429, 200, 429, 200]
    assert headers[1] is None
    assert headers[4] == "3"


# --------------------------------------------------------------------------- faults


async def test_error_before_creates_no_job_and_error_after_does(api: Harness) -> None:
    """A 5xx before creation leaves no job; a 5xx after creation leaves a job the client
    never heard of (the ambiguous case). Both count as server errors."""
    emulator, client, _ = api
    emulator.inject("error_before", route="submit")
    first = await submit(client)
    emulator.inject("error_after", route="submit")
    second = await submit(client)
    assert first.status_code >= 500
    assert second.status_code >= 500
    stats = emulator.stats()
    assert (stats.jobs_submitted, stats.server_errors) == (1, 2)
    assert stats.faults == {"error_before": 1, "error_after": 1}


async def test_a_502_is_an_html_page(clock: ManualClock) -> None:
    """A gateway error comes as HTML, as a real proxy sends it; a 500 in the API's shape."""
    emulator = make_emulator(clock, faults=Faults(error_before=1.0, server_error_statuses=(502,)))
    async with client_for(emulator) as client:
        response = await submit(client)
    assert response.status_code == 502
    assert response.headers["content-type"] == "text/html"
    assert "Bad Gateway" in response.text


async def test_dropped_connections_raise_like_a_real_hang_up(api: Harness) -> None:
    """In process a drop surfaces as httpx.RemoteProtocolError, with no response at all;
    ``drop_after`` still created the job."""
    emulator, client, _ = api
    emulator.inject("drop_after", route="submit")
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        await submit(client)
    assert emulator.stats().jobs_submitted == 1
    assert emulator.stats().dropped == 1
    assert emulator.request_log[-1].status is None


async def test_malformed_json_is_cut_off(api: Harness) -> None:
    """``malformed_json`` answers 200 with a body that is not valid JSON; a poll that got it
    does not count as having seen the finished song."""
    emulator, client, clock = api
    generation_id = (await submit(client)).json()["id"]
    clock.now = 100.0
    emulator.inject("malformed_json", route="poll")
    broken = await poll(client, generation_id)
    assert broken.status_code == 200
    with pytest.raises(ValueError):
        broken.json()
    assert emulator.job(generation_id).first_seen_terminal_at is None
    clock.now = 101.0
    await poll(client, generation_id)
    assert emulator.job(generation_id).first_seen_terminal_at == 101.0


async def test_generation_failure_reports_error(api: Harness) -> None:
    """A failing job reports ``error`` with name and message and no audio file."""
    emulator, client, clock = api
    emulator.inject("generation_failure", route="submit")
    failing = (await submit(client)).json()["id"]
    clock.now = 60.0
    failed = (await poll(client, failing)).json()
    assert failed["status"] == "error"
    assert set(failed["error"]) == {"name", "message"}
    assert "audio_file" not in failed


async def test_waiting_status_replaces_queued(clock: ManualClock) -> None:
    """A job drawn ``waiting_status`` answers ``waiting`` on submission and while queued."""
    emulator = make_emulator(clock, max_concurrent=1, faults=Faults(waiting_status=1.0))
    async with client_for(emulator) as client:
        first = (await submit(client)).json()
        second = (await submit(client, {**SONG, "prompt": "another prompt entirely"})).json()
        assert (first["status"], second["status"]) == ("waiting", "waiting")
        assert (await poll(client, second["id"])).json()["status"] == "waiting"
        assert (await poll(client, first["id"])).json()["status"] == "generating"


async def test_a_delay_holds_the_response_back() -> None:
    """``delay`` waits ``delay_seconds`` API seconds, scaled to real time, before answering
    (httpx.ASGITransport ignores timeouts, so the wait is measured)."""
    emulator = Emulator(EmulatorConfig(time_scale=100, faults=Faults(delay=1.0, delay_seconds=5.0)))
    async with client_for(emulator) as client:
        started = anyio.current_time()
        response = await submit(client)  # 5 API s = 50 ms real
        elapsed = anyio.current_time() - started
    assert response.status_code == 200
    assert elapsed >= 0.05


# --------------------------------------------------------------------------- inspection


async def test_duplicates_are_reported(api: Harness) -> None:
    """The same body submitted three times by one key: 2 duplicate submissions, one group
    naming all three ids; a different body is not a duplicate."""
    emulator, client, _ = api
    ids = [(await submit(client)).json()["id"] for _ in range(3)]
    await submit(client, {**SONG, "prompt": "a different prompt altogether"})
    stats = emulator.stats()
    assert stats.duplicate_submissions == 2
    assert [group["generation_ids"] for group in stats.duplicates] == [ids]
    assert emulator.job(ids[2]).duplicate_of == ids[0]
    over_http = (await client.get("/_emulator/stats")).json()
    assert over_http["duplicate_submissions"] == 2
    assert over_http["duplicates"][0]["generation_ids"] == ids


async def test_stats_route_counts_kinds_and_lists_jobs_and_log(api: Harness) -> None:
    """``GET /_emulator/stats`` counts requests by kind (control routes excluded) and, on
    request, lists job records and the request log."""
    emulator, client, clock = api
    generation_id = (await submit(client)).json()["id"]
    clock.now = 70.0
    url = (await poll(client, generation_id)).json()["audio_file"]["url"]
    await client.get(url)
    stats = (await client.get("/_emulator/stats", params={"jobs": 1, "log": 1})).json()
    assert stats["requests"] == {"submit": 1, "poll": 1, "download": 1, "other": 0}
    assert stats["total_requests"] == 3
    assert stats["job_records"][0]["id"] == generation_id
    assert stats["job_records"][0]["lag"] == 15.0  # completed at 55, first seen at 70
    assert [entry["kind"] for entry in stats["request_log"]] == ["submit", "poll", "download"]
    assert emulator.jobs[generation_id].downloads == 1


async def test_reset_forgets_everything(api: Harness) -> None:
    """``POST /_emulator/reset`` clears jobs, counters and the log."""
    emulator, client, _ = api
    generation_id = (await submit(client)).json()["id"]
    assert (await client.post("/_emulator/reset")).json() == {"reset": True}
    assert emulator.stats().total_requests == 0
    assert emulator.request_log == []
    assert (await poll(client, generation_id)).status_code == 404


async def test_the_clock_is_shared_with_clients() -> None:
    """``emulator.clock`` reads the emulator's own time (same scale and origin)."""
    emulator = Emulator(EmulatorConfig(time_scale=1000))
    clock = emulator.clock
    before = emulator.now()
    between = clock.now()
    after = emulator.now()
    assert before <= between <= after
    await clock.sleep(5.0)  # 5 ms real
    assert emulator.now() - after >= 5.0


async def test_hundreds_of_requests_are_all_counted(api: Harness) -> None:
    """200 submissions spread over time and 200 late polls: every job completed, every
    request counted by kind."""
    emulator, client, clock = api
    ids = []
    for n in range(200):
        clock.now = n * 0.1
        ids.append(
            (await submit(client, {**SONG, "prompt": f"song number {n:04d} here"})).json()["id"]
        )
    clock.now = 10 * 55.0 + 50.0  # 200 songs through 20 slots take 10 rounds of 55 s
    for generation_id in ids:
        await poll(client, generation_id)
    stats = emulator.stats()
    assert stats.jobs["completed"] == 200
    assert stats.requests == {"submit": 200, "poll": 200, "download": 0, "other": 0}
