"""The request budget shared through a real Redis: window, 429 pause, AIMD, failures.

Several budgets (or clients) on one Redis stand for several processes of one service. Most
tests share one :class:`VirtualClock` (``use_clock_time``: "now" comes from it, Redis calls
run inline), so minutes of API time take milliseconds; one test uses Redis's own ``TIME``
through worker threads, at a compressed scale.
"""

from __future__ import annotations

import hashlib
import math
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx
import pytest
import redis
from _servers import redis_down, shared_client
from _timing import max_in_window

import aimlmusic
from aimlmusic import ScaledClock, SharedBudget, SharedStateError
from aimlmusic._ratelimit import RequestBudget
from aimlmusic._shared_redis import SharedStore, account_namespace
from aimlmusic.emulator import TEST_API_KEY, Emulator, EmulatorConfig
from aimlmusic.testing import VirtualClock

pytestmark = pytest.mark.anyio

KEY = "sk-test-shared-budget-0123456789"
LYRICS = "[Verse]\nA line to sing\n[Chorus]\nAnother line"


def store(redis_url: str, prefix: str, *, key: str = KEY, offload: bool = False) -> SharedStore:
    """A store of ``key``'s account under the test's own prefix."""
    return SharedStore(redis_url, key, key_prefix=prefix, offload=offload)


def budgets(
    count: int, rpm: float, clock: VirtualClock, redis_url: str, prefix: str
) -> list[SharedBudget]:
    """``count`` budgets of one account, each with its own connection, on ``clock``."""
    return [
        SharedBudget(rpm, clock, store(redis_url, prefix), use_clock_time=True, seed=n)
        for n in range(count)
    ]


async def test_several_budgets_never_exceed_the_limit_in_any_window(
    redis_url: str, redis_prefix: str
) -> None:
    """Three budgets of one key, 15 requests each at 10/min, send at most 10 in any 60 s."""
    clock = VirtualClock()
    shared = budgets(3, 10, clock, redis_url, redis_prefix)
    sent: list[float] = []

    async def one(budget: SharedBudget) -> None:
        for _ in range(15):
            await budget.acquire("poll")
            sent.append(clock.now())

    async with clock, anyio.create_task_group() as tg:
        for budget in shared:
            tg.start_soon(one, budget)
    assert len(sent) == 45
    assert max_in_window(sent, 60.0) <= 10
    # The three together took the account's pace, not three times it: 45 requests at
    # 10 a minute need four more windows after the first burst.
    assert max(sent) >= 4 * 60.0
    assert sum(budget.sent_total for budget in shared) == 45


async def test_requests_a_lost_log_forgot_are_put_back_by_their_clients(
    redis_url: str, redis_prefix: str
) -> None:
    """After Redis loses the budget's keys (a restart, a flush), the next call of a client
    that sent in the last minute puts its requests back: no window holds more than the
    limit, for that client or another."""
    clock = VirtualClock()
    first, second = budgets(2, 10, clock, redis_url, redis_prefix)
    sent: list[float] = []
    async with clock:
        for _ in range(10):
            await first.acquire("poll")
            sent.append(clock.now())
        first.store.redis.delete(*first._keys)  # Redis lost every key of the budget
        await first.acquire("poll")  # puts its ten back, then waits for room
        sent.append(clock.now())
        await second.acquire("poll")
        sent.append(clock.now())
    assert max_in_window(sent, 60.0) <= 10
    assert sent[10] >= 60.0


async def test_a_log_lost_again_as_it_is_put_back_lets_nothing_through(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log Redis loses again right after a client put its requests back (evicting as fast
    as it is filled) lets no request through uncounted: the client waits and tries again."""
    clock = VirtualClock()
    (budget,) = budgets(1, 2, clock, redis_url, redis_prefix)
    put_back = budget._put_back
    losses = 0

    async def put_back_then_lose(scale: float, now: float) -> None:
        nonlocal losses
        await put_back(scale, now)
        if losses == 0:
            losses += 1
            budget.store.redis.delete(budget._keys[0])

    monkeypatch.setattr(budget, "_put_back", put_back_then_lose)
    sent: list[float] = []
    async with clock:
        for _ in range(2):
            await budget.acquire("submit")
            sent.append(clock.now())
        budget.store.redis.delete(budget._keys[0])  # the first loss
        await budget.acquire("submit")
        sent.append(clock.now())
    assert losses == 1
    assert max_in_window(sent, 60.0) <= 2


async def test_a_429_seen_by_one_pauses_the_other(redis_url: str, redis_prefix: str) -> None:
    """A 429 with Retry-After 30 s reported to one budget holds the other's next request 30 s."""
    clock = VirtualClock()
    first, second = budgets(2, 120, clock, redis_url, redis_prefix)
    async with clock:
        await first.acquire("submit")
        first.on_throttled(30.0)
        await first.flush()
        assert second.delay() == 0.0  # the second has not asked Redis yet
        await second.acquire("poll")
        assert clock.now() >= 30.0
        assert second.paused_until == -math.inf  # the pause is over for it too


async def test_the_slowed_rate_is_shared_and_recovers_with_anyones_successes(
    redis_url: str, redis_prefix: str
) -> None:
    """A 429 without Retry-After halves the rate both see; successes of one restore it."""
    clock = VirtualClock()
    first, second = budgets(2, 120, clock, redis_url, redis_prefix)
    async with clock:
        await first.acquire("poll")
        first.on_throttled(None)
        await first.flush()
        await second.acquire("poll")
        assert second.effective_rate == 60.0
        assert second.paused_until == -math.inf
        for _ in range(20):
            first.on_success()
        await first.flush()
        await second.acquire("poll")
        assert second.effective_rate == 120.0


async def test_429s_of_one_episode_halve_the_rate_once(redis_url: str, redis_prefix: str) -> None:
    """Two clients reporting 429s within one pause slow the account down once, not twice."""
    clock = VirtualClock()
    first, second = budgets(2, 120, clock, redis_url, redis_prefix)
    async with clock:
        first.on_throttled(5.0)
        await first.flush()
        second.on_throttled(5.0)
        await second.flush()
        await first.acquire("poll")
        assert clock.now() >= 5.0
        assert first.effective_rate == 60.0


async def test_submissions_go_before_waiting_polls_within_a_client(
    redis_url: str, redis_prefix: str
) -> None:
    """When the window is full, a client's queued submission is sent before its earlier polls."""
    clock = VirtualClock()
    (budget,) = budgets(1, 2, clock, redis_url, redis_prefix)
    order: list[str] = []

    async def one(name: str, kind: aimlmusic._ratelimit.RequestKind) -> None:
        await budget.acquire(kind)
        order.append(name)

    async with clock, anyio.create_task_group() as tg:
        await budget.acquire("poll")
        await budget.acquire("poll")
        tg.start_soon(one, "poll-1", "poll")
        await clock.sleep(1.0)
        tg.start_soon(one, "submit", "submit")
    assert order == ["submit", "poll-1"]


async def test_redis_time_paces_real_calls_at_a_compressed_scale(
    redis_url: str, redis_prefix: str
) -> None:
    """On Redis TIME through each loop's own path (the asyncio client, worker threads on
    trio) at 600x, 12 requests at 5/min from two clients take two windows of API time
    (real time can only make it slower)."""
    clock = ScaledClock(600.0)
    shared = [
        SharedBudget(5, clock, store(redis_url, redis_prefix, offload=True), seed=n)
        for n in range(2)
    ]
    started = clock.now()

    async def one(budget: SharedBudget) -> None:
        for _ in range(6):
            await budget.acquire("poll")

    try:
        with anyio.fail_after(30):  # a hang guard only: the test takes about 0.2 s
            async with anyio.create_task_group() as tg:
                for budget in shared:
                    tg.start_soon(one, budget)
    finally:
        for budget in shared:
            await budget.store.aclose()
    assert clock.now() - started >= 2 * 60.0


async def test_the_namespace_is_a_hash_of_the_key_never_the_key(
    redis_url: str, redis_prefix: str
) -> None:
    """Every key written is under the prefix and a sha256 digest of the API key, without it."""
    clock = VirtualClock()
    (budget,) = budgets(1, 60, clock, redis_url, redis_prefix)
    async with clock:
        await budget.acquire("submit")
        budget.on_throttled(1.0)
        await budget.flush()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        keys = list(client.scan_iter(match=redis_prefix + "*"))
    finally:
        client.close()
    digest = hashlib.sha256(KEY.encode()).hexdigest()[:16]
    assert keys
    assert all(key.startswith(f"{redis_prefix}{digest}:") for key in keys)
    assert not any(KEY in key or KEY[3:19] in key for key in keys)
    assert account_namespace(KEY) == f"aimlmusic:{digest}"
    assert account_namespace("another key") != account_namespace(KEY)


async def test_an_unreachable_redis_is_a_clear_error_without_the_password() -> None:
    """A Redis that refuses connections fails the first request at once with a
    SharedStateError naming the URL, never its password; nothing is sent unshared."""
    requests: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda request: requests.append(request) or httpx.Response(500))
    url = "redis://worker:s3cret-pass@127.0.0.1:1/0"
    async with aimlmusic.AsyncMusicClient(
        KEY, base_url="https://api.example", transport=transport, shared_url=url
    ) as client:
        assert "s3cret" not in repr(client.budget)
        assert client.shared_url == "redis://worker:<redacted>@127.0.0.1:1/0"
        with anyio.fail_after(30), pytest.raises(SharedStateError) as caught:
            await client.get("some-id")
    message = str(caught.value)
    assert "127.0.0.1:1" in message
    assert "s3cret" not in message
    assert caught.value.url == "redis://worker:<redacted>@127.0.0.1:1/0"
    assert caught.value.transient  # it may come back
    assert requests == []


async def test_a_refused_password_is_a_failure_that_will_not_pass(redis_url: str) -> None:
    """A Redis that refuses the password (redis-py calls that a connection error) fails
    with a SharedStateError that is not transient: asked again, it refuses again."""
    parts = urlsplit(redis_url)
    refused = urlunsplit(parts._replace(netloc=f"nobody:wrong-pass@{parts.hostname}:{parts.port}"))
    shared = SharedStore(refused, KEY, offload=False)
    with pytest.raises(SharedStateError) as caught:
        await shared.run(lambda client: client.ping())
    shared.close()
    assert not caught.value.transient
    assert "wrong-pass" not in str(caught.value)


async def test_generate_with_a_timeout_on_an_unreachable_redis_raises_the_error_itself() -> None:
    """generate(timeout=60) on a Redis that refuses connections raises SharedStateError
    itself, as without a timeout, not wrapped in an ExceptionGroup; nothing is sent."""
    requests: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda request: requests.append(request) or httpx.Response(500))
    async with aimlmusic.AsyncMusicClient(
        KEY,
        base_url="https://api.example",
        transport=transport,
        shared_url="redis://127.0.0.1:1/0",
        limits=aimlmusic.Limits(max_in_flight=1),
    ) as client:
        with anyio.fail_after(30), pytest.raises(SharedStateError):
            await client.generate(aimlmusic.SongRequest("A prompt long enough", LYRICS), timeout=60)
    assert requests == []


async def test_a_redis_that_answers_with_an_error_ends_a_wait_rather_than_retrying_it(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis that answers every budget call with an error (its keys of the wrong type)
    ends wait() with SharedStateError at its first poll: retried, as a Redis out of reach
    is, it would fail the same way for ever."""
    monkeypatch.setattr("aimlmusic._shared_redis.DEFAULT_KEY_PREFIX", redis_prefix)
    clock = VirtualClock()
    emulator = Emulator(EmulatorConfig(requests_per_minute=None), clock=clock)
    async with clock, shared_client(emulator, clock, redis_url, 1) as client:
        generation = await client.submit(aimlmusic.SongRequest("A song for a broken Redis", LYRICS))
        shared = client._shared
        assert shared is not None
        for name in ("window", "budget"):
            shared.redis.delete(shared.key(name))
            shared.redis.rpush(shared.key(name), "not what the script expects")
        with anyio.fail_after(30), pytest.raises(SharedStateError) as caught:  # real seconds
            await client.wait(generation.id)
        assert clock.now() < 60.0
    assert not caught.value.transient
    assert caught.value.generation_id == generation.id


def test_a_url_that_is_not_redis_is_refused_at_construction() -> None:
    """shared_url must be a Redis URL: anything else is a ConfigurationError naming it."""
    with pytest.raises(aimlmusic.ConfigurationError, match="must be a Redis URL"):
        aimlmusic.AsyncMusicClient(KEY, shared_url="http://user:pw@cache:6379")
    with pytest.raises(aimlmusic.ConfigurationError) as caught:
        aimlmusic.AsyncMusicClient(KEY, shared_url="postgres://user:pw@cache:6379")
    assert "pw@" not in str(caught.value)


async def test_the_environment_variable_turns_sharing_on_and_an_empty_argument_off(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AIMLMUSIC_SHARED_URL gives every client a SharedBudget; shared_url='' keeps it local;
    an explicit URL wins over the variable."""
    monkeypatch.setenv("AIMLMUSIC_SHARED_URL", redis_url)
    async with aimlmusic.AsyncMusicClient(KEY) as with_variable:
        assert isinstance(with_variable.budget, SharedBudget)
        assert with_variable.shared_url == redis_url
    async with aimlmusic.AsyncMusicClient(KEY, shared_url="") as switched_off:
        assert isinstance(switched_off.budget, RequestBudget)
        assert switched_off.shared_url is None
    async with aimlmusic.AsyncMusicClient(KEY, shared_url="redis://other:6380/2") as explicit:
        assert explicit.shared_url == "redis://other:6380/2"
    monkeypatch.delenv("AIMLMUSIC_SHARED_URL")
    async with aimlmusic.AsyncMusicClient(KEY) as unset:
        assert isinstance(unset.budget, RequestBudget)


def test_the_blocking_client_takes_shared_url(redis_url: str) -> None:
    """MusicClient passes shared_url to the client it runs."""
    with aimlmusic.MusicClient(KEY, shared_url=redis_url) as client:
        assert isinstance(client.budget, SharedBudget)


async def batch_of_two_clients(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch, *, shared: bool
) -> Emulator:
    """Two clients of one key, each 20 requests/min, each generating 6 songs from an
    emulator that allows the account 20 requests/min; the emulator afterwards."""
    monkeypatch.setattr("aimlmusic._shared_redis.DEFAULT_KEY_PREFIX", prefix)
    clock = VirtualClock()
    emulator = Emulator(EmulatorConfig(requests_per_minute=20), clock=clock)
    setting = aimlmusic.AudioSetting(format="wav", sample_rate=16000)
    limits = aimlmusic.Limits(requests_per_minute=20)

    async def run(client_number: int) -> None:
        async with aimlmusic.AsyncMusicClient(
            TEST_API_KEY,
            base_url="http://127.0.0.1",
            transport=httpx.ASGITransport(app=emulator.app),
            clock=clock,
            limits=limits,
            shared_url=redis_url if shared else "",
        ) as client:
            songs = [
                aimlmusic.SongRequest(f"Client {client_number} song number {n}", LYRICS, setting)
                for n in range(6)
            ]
            async with client.generate_many(songs) as results:
                async for result in results:
                    assert result.ok, result.error

    async with clock, anyio.create_task_group() as tg:
        for number in range(2):
            tg.start_soon(run, number)
    return emulator


async def test_two_clients_sharing_redis_get_no_429(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two clients of one key on one Redis keep the account under its limit: no 429 at all,
    where the same two clients unshared draw 429s from the emulator."""
    shared = await batch_of_two_clients(redis_url, redis_prefix, monkeypatch, shared=True)
    assert shared.stats().rate_limited == 0
    assert shared.stats().jobs["completed"] == 12
    unshared = await batch_of_two_clients(redis_url, redis_prefix, monkeypatch, shared=False)
    assert unshared.stats().rate_limited > 0


async def test_the_time_scale_is_learned_before_the_first_call_to_redis(
    redis_url: str, redis_prefix: str
) -> None:
    """before_first_use (a served emulator's scale probe) runs once, before the first
    script call, so no request is counted on a real-time window by mistake."""
    clock = VirtualClock()
    calls: list[float] = []

    async def learn_scale() -> None:
        calls.append(clock.now())

    budget = SharedBudget(
        60,
        clock,
        store(redis_url, redis_prefix),
        use_clock_time=True,
        before_first_use=learn_scale,
    )
    async with clock:
        await budget.acquire("submit")
        await budget.acquire("poll")
    assert calls == [0.0]


async def test_a_batch_on_an_unreachable_redis_raises_the_error_itself() -> None:
    """generate_many on an unreachable Redis sends nothing and raises SharedStateError
    itself when the block exits (not an ExceptionGroup), without the password."""
    requests: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda request: requests.append(request) or httpx.Response(500))
    song = aimlmusic.SongRequest("A prompt long enough", LYRICS)
    async with aimlmusic.AsyncMusicClient(
        KEY,
        base_url="https://api.example",
        transport=transport,
        shared_url="redis://:s3cret-pass@127.0.0.1:1/0",
    ) as client:

        async def drain() -> None:
            async with client.generate_many([song, song]) as results:
                async for _ in results:
                    pass

        with anyio.fail_after(30), pytest.raises(SharedStateError) as caught:
            await drain()
    assert "s3cret" not in str(caught.value)
    assert requests == []


@pytest.mark.parametrize("rate", [math.inf, math.nan, 0.0])
async def test_a_rate_that_is_not_a_positive_number_is_refused(
    redis_url: str, redis_prefix: str, rate: float
) -> None:
    """An infinite, NaN or zero requests_per_minute is refused, naming the field."""
    with pytest.raises(ValueError, match="requests_per_minute must be"):
        SharedBudget(rate, VirtualClock(), store(redis_url, redis_prefix))


async def test_a_shared_rate_below_one_a_minute_sends_at_that_rate(
    redis_url: str, redis_prefix: str
) -> None:
    """Two budgets at 0.5 requests/minute send their three requests one every 120 s."""
    clock = VirtualClock()
    shared = budgets(2, 0.5, clock, redis_url, redis_prefix)
    sent: list[float] = []

    async def one(budget: SharedBudget, requests: int) -> None:
        for _ in range(requests):
            await budget.acquire("poll")
            sent.append(clock.now())

    with anyio.fail_after(30):  # real seconds: a bucket that never fills would spin
        async with clock, anyio.create_task_group() as tg:
            tg.start_soon(one, shared[0], 2)
            tg.start_soon(one, shared[1], 1)
    assert len(sent) == 3
    assert sorted(sent) == pytest.approx([0.0, 120.0, 240.0], abs=1.0)


async def test_polls_held_back_by_a_redis_outage_are_retried_and_the_songs_finish(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three songs in flight whose polls meet a Redis that cannot be reached for 3 s (at
    49 s, as 50-60 s songs near their end) are polled again once it is back and complete,
    rather than ending with SharedStateError."""
    monkeypatch.setattr("aimlmusic._shared_redis.DEFAULT_KEY_PREFIX", redis_prefix)
    clock = VirtualClock()
    emulator = Emulator(EmulatorConfig(requests_per_minute=None), clock=clock)
    songs = [aimlmusic.SongRequest(f"Outage song number {i}", LYRICS) for i in range(3)]
    results: list[aimlmusic.SongResult] = []
    async with clock, shared_client(emulator, clock, redis_url, 3) as client:

        async def outage() -> None:
            await clock.sleep(49.0)
            with redis_down(client):
                await clock.sleep(3.0)

        async with anyio.create_task_group() as tg:
            tg.start_soon(outage)
            async with client.generate_many(songs) as stream:
                results = [result async for result in stream]
    assert [r.ok for r in results] == [True, True, True], [r.error for r in results]
    assert emulator.stats().jobs["completed"] == 3
