"""The batch scheduler (generate_many): order, isolation, cancellation, laziness, keys,
deadlines, events, the request budget, 429s, and scale.

Most tests drive ``_scheduler.generate_many`` against ``FakeAPI``, a small in-memory service
whose songs behave as their prompts say (``song("a", 30, "fail")``: 30 API seconds, then
status ``error``). Everything runs in virtual time (``VirtualClock``): a 30 s song takes no
real time, and no result depends on how loaded the machine is. The last section runs
``AsyncMusicClient.generate_many`` end to end against the bundled emulator, which shares
the virtual clock.
"""

from __future__ import annotations

import gc
import itertools
import logging
import math
import random
import statistics
import tracemalloc
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from _http_fakes import ScriptedAPI, completed_json, generation_json, make_transport
from _policies import RecordingPolicy
from _timing import list_schedule, max_in_window, virtual_time
from anyio.streams.memory import MemoryObjectReceiveStream

from aimlmusic import (
    AmbiguousSubmissionError,
    AsyncMusicClient,
    AuthenticationError,
    BadRequestError,
    BatchEvents,
    Clock,
    ConfigurationError,
    ExponentialBackoff,
    FixedInterval,
    Generation,
    GenerationError,
    GenerationFailedError,
    GenerationStatus,
    GenerationTimeoutError,
    LearnedPolling,
    Limits,
    NotFoundError,
    PermissionDeniedError,
    PollPolicy,
    PollState,
    RateLimitError,
    RequestRetried,
    RequestSending,
    RequestThrottled,
    RequestValidationError,
    ResponseValidationError,
    ServerError,
    SongCompleted,
    SongFailed,
    SongRequest,
    SongResult,
    SongStatusChanged,
    SongSubmitted,
    _pacing,
    _scheduler,
)
from aimlmusic._config import RetryPolicy
from aimlmusic._errors import SendingRefused
from aimlmusic._polling import PlansWithinBudget
from aimlmusic._ratelimit import RequestBudget
from aimlmusic.emulator import TEST_API_KEY, Emulator, EmulatorConfig, JobRecord, Uniform
from aimlmusic.testing import VirtualClock

pytestmark = pytest.mark.anyio

#: FakeAPI's answer time in API seconds: requests overlap the way real round trips do.
ROUND_TRIP = 0.2
QUICK = FixedInterval(interval=1.0, first=1.0)
#: A ``paused`` song's Retry-After: the transport's cap, far past any deadline of the tests.
PAUSE = 120.0
#: From this time on, a ``late429`` song's polls all meet a 429.
LATE_429_AT = 29.0


def song(name: str, seconds: float = 10.0, *flags: str) -> SongRequest:
    """A request FakeAPI plays as: generate for ``seconds``, behave as ``flags`` say."""
    return SongRequest(prompt=f"song {name} d={seconds} {' '.join(flags)}", lyrics="la la la la")


class FakeAPI:
    """An in-memory stand-in for the transport: submit and get, on the test's clock.

    Flags in a song's prompt: ``fail`` (ends in status error), ``reject`` (400 on submit),
    ``ambiguous`` (the POST may have been accepted), ``flaky`` (the first two polls fail with
    a 502), ``blip`` (the first poll fails with a 502), ``garbled`` (every poll answer is
    unreadable), ``gone`` (every poll is a 404),
    ``throttled`` (the submission meets one 429 first), ``queued`` (waits 20 s in the queue),
    ``paused`` (the first poll meets a 429 whose Retry-After pauses the budget for
    ``PAUSE`` s), ``late429`` (every poll from ``LATE_429_AT`` s on meets a 429),
    ``reports`` (the submission tells the observer it is sending, as a socket's trace does,
    and is not sent if that raises), ``broken_submit`` and ``broken_poll`` (the transport
    raises an exception that is none of the library's, as a bug or an answer nothing
    foresaw would).
    """

    def __init__(self, clock: Clock, budget: RequestBudget | None = None) -> None:
        self.clock = clock
        self.budget = budget
        self.jobs: dict[str, dict[str, Any]] = {}
        self.log: list[tuple[float, str, str]] = []  # (time, "submit"/"poll", prompt)
        self.calls_in_flight = 0
        self.poll_failures: dict[str, int] = {}
        self.hold = False  # while True, every song stays generating

    def release(self) -> None:
        """End the hold: every song held is finished now."""
        self.hold = False
        now = self.clock.now()
        for job in self.jobs.values():
            job["end"] = min(job["end"], now)

    async def _enter(self, kind: str, prompt: str) -> None:
        if self.budget is not None:
            await self.budget.acquire("submit" if kind == "submit" else "poll")
        self.log.append((self.clock.now(), kind, prompt))
        await self.clock.sleep(ROUND_TRIP)

    async def submit(
        self, request: SongRequest, *, observer: Any = None, retry_throttled: bool = True
    ) -> Generation:
        self.calls_in_flight += 1
        try:
            flags = request.prompt.split()
            if "throttled" in flags and observer is not None:
                observer.on_throttled(None)
            if "reports" in flags and observer is not None:
                observer.on_sending()
            await self._enter("submit", request.prompt)
            if "broken_submit" in flags:
                raise UnicodeError("a codec nobody foresaw")
            if "reject" in flags:
                raise BadRequestError("Body validation error!", status_code=400)
            if "unauthorized" in flags:
                raise AuthenticationError("Invalid API key", status_code=401)
            if "no_credits" in flags:
                raise PermissionDeniedError("Insufficient credits", status_code=403)
            if "ambiguous" in flags:
                raise AmbiguousSubmissionError("read timeout after sending", request=request)
            seconds = float(next(f for f in flags if f.startswith("d="))[2:])
            job_id = f"{len(self.jobs):05d}:minimax/music-1.5"
            wait = 20.0 if "queued" in flags else 0.0
            now = self.clock.now()
            self.jobs[job_id] = {
                "prompt": request.prompt,
                "start": now + wait,
                "end": now + wait + seconds,
                "flags": flags,
                "polls": 0,
            }
            return Generation(id=job_id, status=GenerationStatus.QUEUED)
        finally:
            self.calls_in_flight -= 1

    async def get(
        self, generation_id: str, *, observer: Any = None, retry_throttled: bool = True
    ) -> Generation:
        self.calls_in_flight += 1
        try:
            job = self.jobs[generation_id]
            await self._enter("poll", job["prompt"])
            job["polls"] += 1
            flags = job["flags"]
            if "broken_poll" in flags:
                raise OverflowError("a date nobody foresaw")
            if "gone" in flags:
                raise NotFoundError("no such generation", status_code=404)
            if "garbled" in flags:
                raise ResponseValidationError("body is not valid JSON", body="{")
            if "paused" in flags and job["polls"] == 1:
                assert self.budget is not None
                self.budget.on_throttled(PAUSE)
                raise RateLimitError("Too Many Requests", status_code=429, retry_after=PAUSE)
            if "late429" in flags and self.clock.now() >= LATE_429_AT:
                raise RateLimitError("Too Many Requests", status_code=429)
            failures = 2 if "flaky" in flags else 1 if "blip" in flags else 0
            if self.poll_failures.get(generation_id, 0) < failures:
                self.poll_failures[generation_id] = self.poll_failures.get(generation_id, 0) + 1
                if observer is not None:
                    observer.on_retry(1, ServerError("bad gateway", status_code=502), 0.1)
                raise ServerError("bad gateway", status_code=502)
            now = self.clock.now()
            if self.hold:
                return Generation(id=generation_id, status=GenerationStatus.GENERATING)
            if now < job["start"]:
                return Generation(id=generation_id, status=GenerationStatus.QUEUED)
            if now < job["end"]:
                return Generation(id=generation_id, status=GenerationStatus.GENERATING)
            if "fail" in flags:
                error = GenerationError(name="GenerationError", message="the model gave up")
                return Generation(id=generation_id, status=GenerationStatus.ERROR, error=error)
            return Generation(id=generation_id, status=GenerationStatus.COMPLETED)
        finally:
            self.calls_in_flight -= 1

    def submissions(self, name: str) -> int:
        return sum(1 for _, kind, p in self.log if kind == "submit" and f"song {name} " in p)


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def api(clock: VirtualClock) -> FakeAPI:
    return FakeAPI(clock)


@asynccontextmanager
async def batch(
    api: FakeAPI,
    requests: Any,
    *,
    max_in_flight: int = 20,
    deadline: float | None = 600.0,
    poll: PollPolicy = QUICK,
    events: Any = None,
) -> AsyncIterator[MemoryObjectReceiveStream[SongResult]]:
    """``generate_many`` over ``api``, with its virtual clock running (if not yet)."""
    async with (
        virtual_time(api.clock),
        _scheduler.generate_many(
            api,
            requests,
            clock=api.clock,
            max_in_flight=max_in_flight,
            deadline=deadline,
            poll=poll,
            events=events,
            budget=api.budget,
        ) as results,
    ):
        yield results


async def collect(api: FakeAPI, requests: Any, **kwargs: Any) -> list[SongResult]:
    async with batch(api, requests, **kwargs) as results:
        return [result async for result in results]


class _Policy:
    """The parts of the PollPolicy protocol a test policy does not care about."""

    version = 0

    def chance_done(self, state: PollState) -> float:
        return 0.0

    def observe_running(self, song: str, reference_at: float, seen_at: float) -> None:
        pass

    def observe_finished(self, song: str, reference_at: float, after: float, by: float) -> None:
        pass

    def forget(self, song: str) -> None:
        pass


# --------------------------------------------------------------------------- basics


async def test_results_arrive_in_completion_order_not_input_order(api: FakeAPI) -> None:
    """Songs of 30, 10 and 20 s come back as the 10 s, then the 20 s, then the 30 s one."""
    results = await collect(api, [("a", song("a", 30)), ("b", song("b", 10)), ("c", song("c", 20))])
    assert [r.key for r in results] == ["b", "c", "a"]
    assert all(r.ok and r.generation is not None for r in results)
    assert all(r.generation.status == GenerationStatus.COMPLETED for r in results)  # type: ignore[union-attr]


async def test_a_result_carries_its_timings_and_poll_count(api: FakeAPI) -> None:
    """submitted <= completed estimate <= noticed, about 20 s apart, and polls counted."""
    (result,) = await collect(api, [("x", song("x", 20))])
    t = result.timings
    assert t.submitted_at is not None
    assert t.completed_at is not None
    assert t.noticed_at is not None
    assert t.started_at is not None
    assert t.submitted_at <= t.started_at <= t.completed_at <= t.noticed_at
    assert 15.0 <= t.completed_at - t.submitted_at <= 30.0
    assert result.polls == api.jobs[result.generation_id]["polls"] >= 2  # type: ignore[index]


async def test_one_songs_failure_never_touches_the_others(api: FakeAPI) -> None:
    """Failed generation, rejected and ambiguous submissions, unreadable and vanished songs
    each end as their own error result; the good songs complete."""
    songs = [
        ("ok1", song("ok1", 5)),
        ("failed", song("failed", 5, "fail")),
        ("rejected", song("rejected", 5, "reject")),
        ("ambiguous", song("ambiguous", 5, "ambiguous")),
        ("garbled", song("garbled", 5, "garbled")),
        ("gone", song("gone", 5, "gone")),
        ("ok2", song("ok2", 8)),
    ]
    results = {r.key: r for r in await collect(api, songs)}
    assert results["ok1"].ok
    assert results["ok2"].ok
    assert isinstance(results["failed"].error, GenerationFailedError)
    assert results["failed"].error.generation_id == results["failed"].generation_id
    assert isinstance(results["rejected"].error, BadRequestError)
    assert isinstance(results["ambiguous"].error, AmbiguousSubmissionError)
    assert api.submissions("ambiguous") == 1  # never resent: it may have been paid for
    assert isinstance(results["garbled"].error, ResponseValidationError)
    assert isinstance(results["gone"].error, NotFoundError)
    assert results["gone"].polls == 3  # a few tries: a new job may take a moment to appear


async def test_an_exception_no_one_foresaw_ends_only_its_song(api: FakeAPI) -> None:
    """A transport raising an exception that is none of the library's (a bug, or an answer
    nothing foresaw) ends that song alone: a submission as ambiguous, sent once (it may
    have reached the server), a poll after a few tries. It used to crash the whole batch."""
    songs = [
        ("ok", song("ok", 5)),
        ("post", song("post", 5, "broken_submit")),
        ("poll", song("poll", 5, "broken_poll")),
    ]
    results = {r.key: r for r in await collect(api, songs)}
    assert results["ok"].ok
    assert isinstance(results["post"].error, AmbiguousSubmissionError)
    assert "UnicodeError" in str(results["post"].error)
    assert api.submissions("post") == 1
    assert isinstance(results["poll"].error, ResponseValidationError)
    assert "OverflowError" in str(results["poll"].error)
    assert results["poll"].generation_id is not None


async def test_an_outage_of_polls_is_logged_once_as_it_begins_and_once_as_it_ends(
    api: FakeAPI, caplog: pytest.LogCaptureFixture
) -> None:
    """A song's polls failing twice in a row for a transient reason log one WARNING, and
    one INFO with the count once a poll is answered again; single failures (blips) and
    404s of jobs not yet visible log nothing above DEBUG."""
    with caplog.at_level(logging.INFO, logger="aimlmusic"):
        blips = await collect(api, [song(f"b{n}", 3, "blip") for n in range(5)])
        (gone,) = await collect(api, [song("g", 3, "gone")])
        assert all(r.ok for r in blips)
        assert isinstance(gone.error, NotFoundError)
        assert not [r for r in caplog.records if "polls are" in r.message]
        (result,) = await collect(api, [song("a", 3, "flaky")])
    assert result.ok
    records = [(r.levelname, r.getMessage()) for r in caplog.records if "polls are" in r.message]
    assert [level for level, _ in records] == ["WARNING", "INFO"]
    assert "bad gateway" in records[0][1]
    assert "after 2 failed" in records[1][1]


async def test_a_transient_poll_failure_is_retried_not_fatal(api: FakeAPI) -> None:
    """Two 502s on polls are ridden out: the song completes, with its retries counted."""
    (result,) = await collect(api, [("f", song("f", 3, "flaky"))])
    assert result.ok
    assert result.retries >= 2


async def test_a_deadline_ends_the_song_with_its_id_and_last_status(api: FakeAPI) -> None:
    """A song that would take 1000 s, with a 30 s deadline: GenerationTimeoutError at ~30 s."""
    results = await collect(api, [("slow", song("slow", 1000)), ("ok", song("ok", 5))], deadline=30)
    by_key = {r.key: r for r in results}
    error = by_key["slow"].error
    assert isinstance(error, GenerationTimeoutError)
    assert error.generation_id == by_key["slow"].generation_id
    assert error.last_seen is not None
    assert error.last_seen.status == GenerationStatus.GENERATING
    assert by_key["ok"].ok
    assert [r.key for r in results] == ["ok", "slow"]


async def test_a_poll_held_by_a_429_pause_still_ends_at_the_deadline(clock: VirtualClock) -> None:
    """A 429 pausing the budget for 120 s: songs with a 30 s deadline end timed out by the
    deadline and its grace, not when the pause is over."""
    api = FakeAPI(clock, RequestBudget(120, clock))
    delivered: dict[str, tuple[SongResult, float]] = {}
    async with batch(
        api,
        [("slow", song("slow", 1000, "paused")), ("short", song("short", 20))],
        deadline=30,
        poll=FixedInterval(interval=5.0, first=5.0),
    ) as results:
        async for result in results:
            delivered[result.key] = (result, clock.now())
    for key, (result, at) in delivered.items():
        assert isinstance(result.error, GenerationTimeoutError), key
        assert result.error.generation_id == result.generation_id
        assert result.timings.submitted_at is not None
        assert at <= result.timings.submitted_at + 30 + _scheduler.DEADLINE_POLL_GRACE + 0.5


async def test_polls_waiting_for_a_worker_past_the_deadline_are_still_cut(
    clock: VirtualClock,
) -> None:
    """40 songs, 32 poll workers, polls that hang for 100 s, a 10 s deadline: the songs
    whose last poll waited for a worker get it with the grace, and every song ends by
    then, not when the hung polls would have come back."""

    class Hanging(FakeAPI):
        async def get(
            self, generation_id: str, *, observer: Any = None, retry_throttled: bool = True
        ) -> Generation:
            await self.clock.sleep(100.0)
            return Generation(id=generation_id, status=GenerationStatus.GENERATING)

    api = Hanging(clock)
    delivered: list[float] = []
    async with batch(
        api, [song(str(n), 1000) for n in range(40)], max_in_flight=40, deadline=10
    ) as results:
        async for result in results:
            assert isinstance(result.error, GenerationTimeoutError)
            delivered.append(clock.now())
    assert len(delivered) == 40
    assert max(delivered) <= 10 + ROUND_TRIP + 2 * _scheduler.DEADLINE_POLL_GRACE + 0.5


async def test_a_429_at_the_deadline_ends_the_song_as_timed_out(api: FakeAPI) -> None:
    """A song whose polls meet 429s from 29 s on, with a 30 s deadline: the result is the
    timeout the caller asked for, not the last 429."""
    (result,) = await collect(api, [("x", song("x", 1000, "late429"))], deadline=30)
    assert isinstance(result.error, GenerationTimeoutError)
    assert not isinstance(result.error, RateLimitError)


class _FailsFirstSong(_Policy):
    """Polls every second; for the song of phase 0 (the batch's first), from its second
    decision on, gives ``bad`` (or raises it, an exception)."""

    def __init__(self, bad: object) -> None:
        self.bad = bad

    def next_delay(self, state: PollState) -> float:
        if state.phase == 0.0 and state.polls >= 1:
            if isinstance(self.bad, Exception):
                raise self.bad
            return self.bad  # type: ignore[return-value]
        return 1.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, ZeroDivisionError("my bug")])
async def test_a_policy_without_a_finite_delay_ends_only_that_song(
    api: FakeAPI, bad: object
) -> None:
    """A policy giving NaN or infinity, or raising, for one song ends that song with a
    ConfigurationError naming its generation; the other songs complete."""
    results = {
        r.key: r
        for r in await collect(
            api, [(k, song(k, 5)) for k in "abc"], poll=_FailsFirstSong(bad), deadline=None
        )
    }
    failed = results["a"]
    assert isinstance(failed.error, ConfigurationError)
    assert failed.generation_id is not None
    assert failed.generation_id in str(failed.error)
    assert results["b"].ok
    assert results["c"].ok


class _FailsWhenReplanning(_Policy):
    """Plans the song of phase 0 (the batch's first) 100 s out and every other song 1 s
    out; the first poll that sees a song running changes its ``version``, and asked again
    about the first song after that, it gives NaN."""

    def __init__(self) -> None:
        self.version = 0
        self.failed_at: list[float] = []

    def next_delay(self, state: PollState) -> float:
        if state.phase != 0.0:
            return 1.0
        if self.version:
            self.failed_at.append(state.now - state.submitted_at)
            return math.nan
        return 100.0

    def observe_running(self, song: str, reference_at: float, seen_at: float) -> None:
        self.version += 1


async def test_a_policy_failing_while_replanning_ends_only_that_song(api: FakeAPI) -> None:
    """A policy whose new version gives NaN for a song planned far ahead ends that song at
    the replan, unpolled, with a ConfigurationError naming its generation; the rest complete."""
    policy = _FailsWhenReplanning()
    results = {
        r.key: r
        for r in await collect(api, [(k, song(k, 5)) for k in "abc"], poll=policy, deadline=None)
    }
    failed = results["a"]
    assert isinstance(failed.error, ConfigurationError)
    assert failed.generation_id is not None
    assert failed.generation_id in str(failed.error)
    assert failed.polls == 0
    assert len(policy.failed_at) == 1
    assert policy.failed_at[0] < 100.0  # at the replan, not when its poll fell due
    assert results["b"].ok
    assert results["c"].ok


class _UrgencyFailsFirstSong(_Policy):
    """Polls every second; asked how likely the song of phase 0 (the batch's first) is to
    be finished, raises."""

    def next_delay(self, state: PollState) -> float:
        return 1.0

    def chance_done(self, state: PollState) -> float:
        if state.phase == 0.0:
            raise ZeroDivisionError("my bug")
        return 0.5


async def test_a_policy_failing_to_rank_songs_ends_only_that_song(clock: VirtualClock) -> None:
    """With polls queued for a tight budget (so the policy ranks them), a chance_done that
    raises for one song ends that song with a ConfigurationError; the others complete."""
    api = FakeAPI(clock, RequestBudget(30, clock))
    results = {
        r.key: r
        for r in await collect(
            api, [(k, song(k, 8)) for k in "abcdef"], poll=_UrgencyFailsFirstSong(), deadline=None
        )
    }
    failed = results["a"]
    assert isinstance(failed.error, ConfigurationError)
    assert "chance_done" in str(failed.error)
    assert failed.generation_id is not None
    assert failed.generation_id in str(failed.error)
    assert all(results[k].ok for k in "bcdef")


class _CannotLearn(_Policy):
    """Polls every second; every observe_* raises."""

    def next_delay(self, state: PollState) -> float:
        return 1.0

    def observe_running(self, song: str, reference_at: float, seen_at: float) -> None:
        raise ZeroDivisionError("cannot learn")

    def observe_finished(self, song: str, reference_at: float, after: float, by: float) -> None:
        raise ZeroDivisionError("cannot learn")


async def test_a_policy_that_fails_to_learn_is_logged_and_the_songs_go_on(
    api: FakeAPI, caplog: pytest.LogCaptureFixture
) -> None:
    """observe_running and observe_finished raising: every song still completes, and the
    failure is logged as a warning naming the method."""
    caplog.set_level(logging.WARNING, logger="aimlmusic")
    results = await collect(api, [(k, song(k, 3)) for k in "ab"], poll=_CannotLearn())
    assert all(r.ok for r in results)
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("_CannotLearn.observe_running failed" in m for m in logged)
    assert any("_CannotLearn.observe_finished failed" in m for m in logged)


async def test_following_with_a_policy_that_gives_no_delay_ends_the_song_at_once(
    api: FakeAPI,
) -> None:
    """wait()'s engine (``follow``) on a policy whose every delay is NaN: the song ends
    with a ConfigurationError naming its generation, without a poll, rather than an error
    escaping the engine."""

    class NeverFinite(_Policy):
        def next_delay(self, state: PollState) -> float:
            return math.nan

    async with virtual_time(api.clock):
        generation = await api.submit(song("x", 5))
        result = await _scheduler.follow(
            api,
            generation.id,
            last=generation,
            submitted_at=api.clock.now(),
            clock=api.clock,
            poll=NeverFinite(),
            budget=None,
            deadline=None,
        )
    assert isinstance(result.error, ConfigurationError)
    assert generation.id in str(result.error)
    assert result.polls == 0


async def test_a_negative_delay_means_poll_now(api: FakeAPI) -> None:
    """A delay already past (a policy computing ``target - now`` late) polls at once."""
    (result,) = await collect(api, [("x", song("x", 2))], poll=_FailsFirstSong(-3.0))
    assert result.ok
    assert result.polls >= 3  # a poll every round trip once the delays went negative


async def test_a_poll_is_dated_by_the_attempt_that_was_answered(clock: VirtualClock) -> None:
    """A poll whose first attempt meets a 503 (Retry-After 8 s) and whose retry sees the
    8 s song done tells the policy it finished by the retry, not by the first attempt,
    and its completion is estimated between the two polls that saw it change."""
    duration = 8.0
    submitted: list[float] = []
    failed: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        now = clock.now()
        if request.method == "POST":
            submitted.append(now)
            return httpx.Response(200, json=generation_json("queued"))
        elapsed = now - submitted[0]
        if elapsed >= 5.0 and not failed:
            failed.append(now)
            return httpx.Response(503, headers={"Retry-After": "8"}, json={"message": "busy"})
        return httpx.Response(
            200, json=completed_json() if elapsed >= duration else generation_json("generating")
        )

    transport = make_transport(
        ScriptedAPI(handler), clock, retry=RetryPolicy(), requests_per_minute=120
    )
    policy = RecordingPolicy()
    async with (
        virtual_time(clock),
        _scheduler.generate_many(
            transport,
            [("x", song("x", duration))],
            clock=clock,
            max_in_flight=1,
            deadline=None,
            poll=policy,
            events=None,
            budget=transport.budget,
        ) as results,
    ):
        (result,) = [r async for r in results]
    await transport.aclose()
    assert result.ok
    ((_, reference, after, by),) = policy.finished
    assert after - reference < duration <= by - reference
    assert by - reference >= failed[0] - submitted[0] + 8.0  # the retry, 8 s after the 503
    assert result.timings.completed_at is not None
    assert after <= result.timings.completed_at <= by


async def test_a_queued_song_is_followed_until_it_finishes(api: FakeAPI) -> None:
    """A 5 s song that waits 20 s in the queue is followed to the end without polling the
    queue wait away: a poll that sees it queued restarts its clock, so polls come about one
    early generation time (2 s here) apart while it waits."""
    seen: list[tuple[Any, Any]] = []

    class Statuses(BatchEvents):
        def on_status_changed(self, event: SongStatusChanged) -> None:
            seen.append((event.previous, event.status))

    (result,) = await collect(
        api,
        [("q", song("q", 5, "queued"))],
        poll=LearnedPolling(prior=(2.0, 4.0)),
        events=Statuses(),
    )
    assert result.ok
    assert seen[0][0] == GenerationStatus.QUEUED
    assert seen[-1][1] == GenerationStatus.COMPLETED
    assert result.polls <= 13  # 1 s polls through 25 s would be 25


# --------------------------------------------------------------------------- keys and sources


async def test_bare_requests_are_keyed_by_position_and_pairs_keep_their_key(api: FakeAPI) -> None:
    """Requests alone get "0", "1"...; (key, request) pairs keep theirs; int keys become str."""
    items: list[Any] = [song("a", 3), ("mine", song("b", 3)), song("c", 3), (7, song("d", 3))]
    keys = {r.key for r in await collect(api, items)}
    assert keys == {"0", "mine", "2", "7"}


async def test_a_key_already_in_flight_is_an_error_result_not_a_submission(api: FakeAPI) -> None:
    """A second song with a key still in flight is not submitted; its result says why."""
    results = await collect(api, [("k", song("first", 10)), ("k", song("second", 3))])
    errors = [r for r in results if r.error is not None]
    assert len(errors) == 1
    assert isinstance(errors[0].error, RequestValidationError)
    assert errors[0].error.field == "key"
    assert api.submissions("second") == 0
    assert api.submissions("first") == 1


async def test_the_source_is_read_only_as_slots_free_up(api: FakeAPI) -> None:
    """With 2 slots, only 2 requests are taken until songs finish; after that, one per
    result handed on (to the reader or its 2-result buffer). The source is closed when the
    block is left early."""
    pulled: list[int] = []
    closed: list[bool] = []

    def source() -> Iterator[tuple[str, SongRequest]]:
        try:
            for n in range(1_000_000):
                pulled.append(n)
                yield str(n), song(str(n), 10)
        finally:
            closed.append(True)

    async with batch(api, source(), max_in_flight=2) as results:
        await api.clock.sleep(5.0)  # both songs submitted, none finished
        assert len(pulled) == 2
        first = await results.receive()
        assert len(pulled) <= 2 + 2 + 1  # in flight, buffered, received
    assert first.ok
    assert closed == [True]


async def test_an_async_source_is_read_lazily_and_closed(api: FakeAPI) -> None:
    """An async generator source is pulled one song per free slot and closed at the end:
    never more than the 3 in flight, the 3 buffered and the 4 read."""
    pulled: list[int] = []
    closed: list[bool] = []

    async def source() -> AsyncIterator[SongRequest]:
        try:
            for n in range(100):
                pulled.append(n)
                yield song(str(n), 5)
        finally:
            closed.append(True)

    async with batch(api, source(), max_in_flight=3) as results:
        got = [await results.receive() for _ in range(4)]
    assert all(r.ok for r in got)
    assert len(pulled) <= 3 + 3 + 4
    assert closed == [True]


async def test_a_slow_reader_holds_back_submissions_not_memory(api: FakeAPI) -> None:
    """Nobody reads: at most max_in_flight songs run and a few results wait; no more are
    taken from the source until the reader catches up."""
    pulled: list[int] = []

    def source() -> Iterator[SongRequest]:
        for n in range(50):
            pulled.append(n)
            yield song(str(n), 2)

    async with batch(api, source(), max_in_flight=2) as results:
        await api.clock.sleep(80.0)  # forty 2 s songs could have run
        assert len(pulled) <= 2 + 2  # two buffered results and two songs holding slots
        keys = [r.key async for r in results]
    assert len(keys) == 50


async def test_a_source_that_raises_stops_new_songs_and_raises_at_the_end(api: FakeAPI) -> None:
    """The songs already in flight are delivered, then the source's error is raised."""

    def source() -> Iterator[SongRequest]:
        yield song("a", 3)
        yield song("b", 3)
        raise OSError("catalog file vanished")

    got: list[str] = []

    async def read_all() -> None:
        async with batch(api, source()) as results:
            got.extend([result.key async for result in results])

    with pytest.raises(OSError, match="catalog file vanished"):
        await read_all()
    assert sorted(got) == ["0", "1"]


async def test_an_item_that_is_not_a_song_is_a_type_error(api: FakeAPI) -> None:
    """A dict in the source raises TypeError naming its position, after the songs before it."""
    got: list[str] = []

    async def read_all() -> None:
        async with batch(api, [song("a", 3), {"prompt": "x"}]) as results:
            got.extend([r.key async for r in results])

    with pytest.raises(TypeError, match="item 1 is a dict"):
        await read_all()
    assert got == ["0"]


@pytest.mark.parametrize(
    ("item", "said"),
    [
        (("k", None), "item 1 (key 'k') holds a NoneType, not a SongRequest"),
        ((None, "x"), "item 1 has a key that is a NoneType, not a str"),
        (("k", "x", "y"), "item 1 is a tuple of 3 items"),
    ],
)
async def test_a_pair_that_is_not_a_song_says_what_is_wrong(
    api: FakeAPI, item: object, said: str
) -> None:
    """A malformed (key, request) pair's TypeError names the key and the part that is wrong."""

    async def read_all() -> None:
        async with batch(api, [song("a", 3), item]) as results:
            _ = [r async for r in results]

    with pytest.raises(TypeError) as caught:
        await read_all()
    assert said in str(caught.value)


async def test_a_source_whose_close_raises_ends_no_song_and_keeps_the_first_error(
    api: FakeAPI,
) -> None:
    """A generator source whose finally raises as it is closed neither ends the songs in
    flight nor hides the error that stopped it: that error is raised at the end."""
    got: list[str] = []

    def source() -> Iterator[Any]:
        try:
            yield song("a", 3)
            yield "not a song"
        finally:
            raise OSError("the catalog's file handle was already closed")

    async def read_all() -> None:
        async with batch(api, source()) as results:
            got.extend([r.key async for r in results if r.ok])

    with pytest.raises(TypeError, match="item 1 is a str"):
        await read_all()
    assert got == ["0"]


class _SourceThatFailsToClose:
    """An async source of one song whose ``aclose`` raises, as a generator two batches
    share does ("aclose(): asynchronous generator is already running")."""

    def __init__(self) -> None:
        self.songs = [song("a", 3)]

    def __aiter__(self) -> _SourceThatFailsToClose:
        return self

    async def __anext__(self) -> SongRequest:
        if not self.songs:
            raise StopAsyncIteration
        return self.songs.pop()

    async def aclose(self) -> None:
        raise RuntimeError("aclose(): asynchronous generator is already running")


async def test_a_source_whose_close_raises_is_the_sources_error(api: FakeAPI) -> None:
    """A source that raises as it is closed: its songs are delivered and its error is raised
    at the end, not an ExceptionGroup that ends the batch."""
    got: list[str] = []

    async def read_all() -> None:
        async with batch(api, _SourceThatFailsToClose()) as results:
            got.extend([r.key async for r in results if r.ok])

    with pytest.raises(RuntimeError, match="already running"):
        await read_all()
    assert got == ["0"]


async def test_a_refused_key_stops_the_batch_taking_songs(api: FakeAPI) -> None:
    """A submission answered 401 stops the batch taking songs: the source is not drained,
    the songs taken fail unsent, and the block raises the 401 (a source of thousands used
    to send each, a 401 apiece, at the budget's pace)."""
    pulled = 0
    failed: list[str] = []

    def source() -> Iterator[SongRequest]:
        nonlocal pulled
        for n in range(1000):
            pulled += 1
            yield song(str(n), 5, "unauthorized")

    async def read_all() -> None:
        async with batch(api, source(), max_in_flight=4) as results:
            failed.extend([type(r.error).__name__ async for r in results])

    with pytest.raises(AuthenticationError):
        await read_all()
    assert pulled <= 5
    assert sum(1 for _, kind, _ in api.log if kind == "submit") <= 4
    assert set(failed) == {"AuthenticationError"}


async def test_songs_in_flight_finish_when_the_account_is_refused(api: FakeAPI) -> None:
    """A 403 (no credits) after songs were accepted: those songs are still followed to
    their end and delivered; then the block raises the 403."""
    got: list[tuple[str, bool]] = []

    async def read_all() -> None:
        requests = [
            song("a", 30),
            song("b", 30),
            *(song(str(n), 5, "no_credits") for n in range(50)),
        ]
        async with batch(api, requests, max_in_flight=3) as results:
            got.extend([(r.key, r.ok) async for r in results])

    with pytest.raises(PermissionDeniedError):
        await read_all()
    assert ("0", True) in got
    assert ("1", True) in got
    assert len(got) <= 5


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"requests": [], "max_in_flight": 0}, ValueError),
        ({"requests": [], "deadline": 0.0}, ValueError),
        ({"requests": song("one")}, TypeError),
        ({"requests": 42}, TypeError),
    ],
)
async def test_bad_arguments_are_refused_before_anything_runs(
    api: FakeAPI, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    """max_in_flight < 1, a non-positive deadline, a lone request or a non-iterable raise."""
    kwargs = dict(kwargs)  # the same dict serves both backends
    requests = kwargs.pop("requests")
    with pytest.raises(error):
        async with batch(api, requests, **kwargs):
            pass
    assert api.log == []


# --------------------------------------------------------------------------- leaving early


def running_tasks() -> int:
    return len(anyio.get_running_tasks())


async def test_leaving_the_block_early_stops_everything_at_once(clock: VirtualClock) -> None:
    """Breaking out after the first result returns at once; no call or task is left."""
    api = FakeAPI(clock)
    async with clock:
        tasks_before = running_tasks()
        async with batch(api, [song(str(n), 5 + n) for n in range(40)]) as results:
            async for _ in results:
                break
            left_at = clock.now()
        assert clock.now() == left_at  # nothing was waited for on the way out
        assert api.calls_in_flight == 0
        logged = len(api.log)
        await clock.sleep(50.0)
        assert len(api.log) == logged  # nothing is polled or submitted any more
        assert running_tasks() == tasks_before


async def cancel_after(clock: Clock, scope: anyio.CancelScope, seconds: float) -> None:
    """Cancel ``scope`` after ``seconds`` on ``clock``."""
    await clock.sleep(seconds)
    scope.cancel()


async def test_cancelling_the_surrounding_scope_stops_everything(clock: VirtualClock) -> None:
    """A cancelled outer scope unwinds the batch at once, leaving no call or task behind."""
    api = FakeAPI(clock)
    async with clock:
        tasks_before = running_tasks()
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_after, clock, scope, 20.0)
                async with batch(api, [song(str(n), 500) for n in range(30)]) as results:
                    async for _ in results:
                        pass
        assert scope.cancelled_caught
        assert clock.now() == 20.0  # unwound without waiting for anything
        assert api.calls_in_flight == 0
        assert running_tasks() == tasks_before


async def test_a_cancelled_batch_has_the_policy_forget_every_song_still_generating(
    clock: VirtualClock,
) -> None:
    """Cancelled, the batch tells the policy to forget each song still generating (planned,
    or in a poll), and none that finished, delivered or not yet."""
    api = FakeAPI(clock)
    policy = RecordingPolicy()
    delivered: list[str | None] = []
    # More short songs than the result stream buffers: some finish and wait to be delivered.
    short = _scheduler.MAX_RESULT_BUFFER + 8
    requests = [song(f"s{n}", 5) for n in range(short)] + [song(f"l{n}", 500) for n in range(60)]
    async with clock:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_after, clock, scope, 20.3)  # mid-round-trip for some
                async with batch(api, requests, poll=policy, max_in_flight=60) as results:
                    async for result in results:
                        delivered.append(result.generation_id)
                        await clock.sleep(100.0)  # the other short songs finish unread
    generating = {i for i, job in api.jobs.items() if job["end"] > 20.3}
    # Finished and not yet delivered (the stream is full): such songs still hold a slot.
    waiting = short - len(delivered) - _scheduler.MAX_RESULT_BUFFER
    assert waiting > 0
    assert len(generating) == 60 - waiting
    assert sorted(policy.forgotten) == sorted(generating)


async def test_an_error_in_the_block_comes_out_as_itself(api: FakeAPI) -> None:
    """A ValueError raised while reading results is raised as is, not in an ExceptionGroup."""

    async def fail_while_reading() -> None:
        async with batch(api, [song("a", 3)]) as results:
            async for _ in results:
                raise ValueError("my mistake")

    with pytest.raises(ValueError, match="my mistake") as caught:
        await fail_while_reading()
    assert type(caught.value) is ValueError


async def test_closing_the_stream_inside_the_block_stops_the_batch(api: FakeAPI) -> None:
    """A reader that closes its stream ends the batch: nothing more is sent."""
    async with batch(api, [song(str(n), 3 + n) for n in range(10)], max_in_flight=2) as results:
        await results.receive()
        await results.aclose()
        await api.clock.sleep(20.0)
        logged = len(api.log)
        await api.clock.sleep(20.0)
        assert len(api.log) == logged


# --------------------------------------------------------------------------- events


class Recorder(BatchEvents):
    def __init__(self) -> None:
        self.events: list[Any] = []

    def on_submitted(self, event: SongSubmitted) -> None:
        self.events.append(event)

    def on_status_changed(self, event: SongStatusChanged) -> None:
        self.events.append(event)

    def on_completed(self, event: SongCompleted) -> None:
        self.events.append(event)

    def on_failed(self, event: SongFailed) -> None:
        self.events.append(event)

    def on_retried(self, event: RequestRetried) -> None:
        self.events.append(event)

    def on_throttled(self, event: RequestThrottled) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


class _LearnsSoonerAfterTheFirstSong(_Policy):
    """First polls planned at 200 s (the first song's at 2 s); once a song finishes, at 10 s,
    and, if ``announce``, it says so through ``version``."""

    def __init__(self, *, announce: bool) -> None:
        self.first = 200.0
        self.announce = announce
        self.planned = 0

    def next_delay(self, state: Any) -> float:
        if state.polls:
            return 1.0
        self.planned += 1
        first = 2.0 if self.planned == 1 else self.first  # the first song is polled early
        return max(0.0, first - (state.now - state.submitted_at))

    def observe_finished(self, song: str, reference_at: float, after: float, by: float) -> None:
        self.first = 10.0
        if self.announce:
            self.version += 1


@pytest.mark.parametrize("announce", [True, False])
async def test_first_polls_already_planned_move_forward_when_the_policy_says_so(
    api: FakeAPI, announce: bool
) -> None:
    """A policy that learns songs are quick and bumps its version gets earlier first polls."""
    policy = _LearnsSoonerAfterTheFirstSong(announce=announce)
    results = await collect(api, [(k, song(k, 5)) for k in "abcd"], poll=policy, deadline=None)
    waited = sorted(r.timings.noticed_at - r.timings.submitted_at for r in results)  # type: ignore[operator]
    # The song planned first (whichever was submitted first) is polled early and finishes.
    others = waited[1:]
    if announce:
        assert max(others) < 60.0  # re-planned to 10 s after submission
    else:
        assert min(others) >= 200.0  # the first polls stay where they were planned


class _SparseUntilTheFirstSongEnds(_Policy):
    """Every song polled at 1 s; then every 200 s (the first song every 1 s) until a song
    finishes, every 1 s after. It announces what it learned through ``version``, and
    counts the questions asked about polls already planned (asked later than the last poll)."""

    def __init__(self) -> None:
        self.spacing = 200.0
        self.replanned = 0
        self.first_song: float | None = None

    def next_delay(self, state: PollState) -> float:
        self.replanned += state.last_poll_at is not None and state.now > state.last_poll_at
        if self.first_song is None:
            self.first_song = state.submitted_at
        if state.polls == 0:
            return 1.0
        return 1.0 if state.submitted_at == self.first_song else self.spacing

    def observe_finished(self, song: str, reference_at: float, after: float, by: float) -> None:
        if self.spacing > 1.0:
            self.spacing = 1.0
            self.version += 1


async def test_polls_planned_far_ahead_move_forward_when_the_policy_learns(api: FakeAPI) -> None:
    """Songs already polled and planned 200 s ahead are polled again within seconds once the
    policy learns (from the first song to finish) that they are close to done."""
    policy = _SparseUntilTheFirstSongEnds()

    async def staggered() -> AsyncIterator[tuple[str, SongRequest]]:
        # A moment apart, so the policy can tell the first song by its submission time.
        for k in "abcd":
            yield k, song(k, 6)
            await api.clock.sleep(0.1)

    results = await collect(api, staggered(), poll=policy, deadline=None)
    waited = sorted(r.timings.noticed_at - r.timings.submitted_at for r in results)  # type: ignore[operator]
    assert policy.replanned >= 3
    assert max(waited) < 30.0  # not 200 s: re-planned to 1 s


class _NewVersionEveryPoll(_Policy):
    """Polls every second, and has learned something new after every poll it hears of."""

    def next_delay(self, state: PollState) -> float:
        return 1.0

    def observe_running(self, song: str, reference_at: float, seen_at: float) -> None:
        self.version += 1


async def test_replanning_keeps_one_timer_entry_per_song(
    api: FakeAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Polls planned again at every new version replace their entries in the timer heap:
    none is left behind (stale entries once were most of a large batch's memory)."""
    batches: list[Any] = []

    class Watched(_scheduler._Batch):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            batches.append(self)

    monkeypatch.setattr(_scheduler, "_Batch", Watched)
    api.hold = True
    sizes = []
    songs = [song(str(n), 60) for n in range(30)]
    async with batch(api, songs, poll=_NewVersionEveryPoll(), max_in_flight=30):
        for _ in range(60):
            await api.clock.sleep(0.5)
            sizes.append(len(batches[0]._heap))
        polls = sum(job["polls"] for job in api.jobs.values())
    assert polls > 300  # hundreds of new versions, each replanning every song
    assert max(sizes) <= 30
    assert min(job["polls"] for job in api.jobs.values()) >= 20  # and none lost its entry


class _OversleepingClock(VirtualClock):
    """A clock on a busy machine: every sleep ends ``late`` API seconds after it should."""

    def __init__(self, late: float) -> None:
        super().__init__()
        self.late = late

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds + self.late)


async def test_polls_keep_the_policy_s_spacing_when_every_wake_up_is_late() -> None:
    """Waking 1 s late each time, polls planned 10 s apart still go out ~10 s apart, not 11."""
    clock = _OversleepingClock(late=1.0)
    api = FakeAPI(clock)
    await collect(api, [("x", song("x", 130))], poll=FixedInterval(10.0, first=10.0))
    polls = [at for at, kind, _ in api.log if kind == "poll"]
    gaps = [b - a for a, b in itertools.pairwise(polls)]
    # The first gaps teach the scheduler how late it runs; the later ones show it planned so.
    assert len(gaps) >= 10
    assert statistics.fmean(gaps[-6:]) == pytest.approx(10.0, abs=0.4)


async def test_every_event_reaches_the_hook(api: FakeAPI) -> None:
    """submitted (with the id), status changes, completed, failed, retried and throttled."""
    hook = Recorder()
    songs = [
        ("good", song("good", 3, "throttled")),
        ("bad", song("bad", 3, "fail")),
        ("flaky", song("flaky", 3, "flaky")),
    ]
    results = {r.key: r for r in await collect(api, songs, events=hook)}
    submitted = {e.key: e.generation_id for e in hook.of(SongSubmitted)}
    assert submitted == {k: r.generation_id for k, r in results.items()}
    assert [e.key for e in hook.of(SongCompleted)].count("good") == 1
    assert [e.error for e in hook.of(SongFailed)] == [results["bad"].error]
    assert {e.key for e in hook.of(RequestRetried)} == {"flaky"}
    assert all(e.kind == "poll" for e in hook.of(RequestRetried))
    assert [(e.key, e.kind) for e in hook.of(RequestThrottled)] == [("good", "submit")]
    changes = [(e.previous, e.status) for e in hook.of(SongStatusChanged) if e.key == "good"]
    assert changes[-1][1] == GenerationStatus.COMPLETED


async def test_a_hook_that_raises_is_logged_and_ignored(
    api: FakeAPI, caplog: pytest.LogCaptureFixture
) -> None:
    """Exceptions from hooks (and async hooks, which cannot run) never break the batch."""

    class Broken:
        def on_completed(self, event: SongCompleted) -> None:
            raise RuntimeError("progress bar crashed")

        async def on_submitted(self, event: SongSubmitted) -> None:  # wrong: must be sync
            raise AssertionError("never runs")

    with caplog.at_level(logging.ERROR, logger="aimlmusic"):
        results = await collect(api, [song("a", 3), song("b", 3)], events=Broken())
    assert all(r.ok for r in results)
    assert "progress bar crashed" in caplog.text
    assert "coroutine function" in caplog.text


async def test_a_sending_hook_may_keep_one_submission_home(
    api: FakeAPI, caplog: pytest.LogCaptureFixture
) -> None:
    """An on_sending hook raising SendingRefused ends that song unsent, without an id; any
    other exception from it is logged and the request goes."""

    class Gate(BatchEvents):
        def on_sending(self, event: RequestSending) -> None:
            if event.key == "kept":
                raise SendingRefused("the journal cannot record it")
            raise RuntimeError("progress bar crashed")

    songs = [("kept", song("kept", 3, "reports")), ("sent", song("sent", 3, "reports"))]
    with caplog.at_level(logging.ERROR, logger="aimlmusic"):
        results = {r.key: r for r in await collect(api, songs, events=Gate())}
    assert isinstance(results["kept"].error, SendingRefused)
    assert results["kept"].generation_id is None
    assert results["sent"].ok
    assert (api.submissions("kept"), api.submissions("sent")) == (0, 1)
    assert "progress bar crashed" in caplog.text


# --------------------------------------------------------------------------- budget and scale


async def test_polls_wait_for_the_budget_and_never_exceed_it(clock: VirtualClock) -> None:
    """With 30 requests/minute, 20 songs go through and no 60 s holds more than 30 requests;
    no song but the two scouts is polled more than 5 times."""
    api = FakeAPI(clock, RequestBudget(30, clock))
    results = await collect(
        api,
        [song(str(n), 20) for n in range(20)],
        max_in_flight=10,
        poll=LearnedPolling(prior=(18.0, 22.0)),
    )
    assert all(r.ok for r in results)
    times = sorted(t for t, _, _ in api.log)
    assert max_in_window(times, 60.0) <= 30
    polls = sorted(r.polls for r in results)
    assert polls[-3] <= 5, polls


class _AtTheEnd(_Policy):
    """Polls each song first when a song of ``seconds`` ends, then every second."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def next_delay(self, state: PollState) -> float:
        if state.polls == 0:
            return max(0.0, state.submitted_at + self.seconds - state.now)
        return 1.0


class _PlannedAtTheEnd(_AtTheEnd):
    """``_AtTheEnd``, declaring that it plans within the budget (PlansWithinBudget)."""

    headroom = 0.9


def _lags(api: FakeAPI) -> list[float]:
    """How long after its end each song was first seen finished, in the order they ended."""
    ends = {job["prompt"]: job["end"] for job in api.jobs.values()}
    seen: dict[str, float] = {}
    for sent, kind, prompt in api.log:
        answered = sent + ROUND_TRIP  # when the poll reads the song's state
        if kind == "poll" and answered >= ends[prompt]:
            seen.setdefault(prompt, answered - ends[prompt])
    return [seen[prompt] for prompt in sorted(seen, key=ends.__getitem__)]


class _PrefersTheLatest(_PlannedAtTheEnd):
    """``_PlannedAtTheEnd``, ranking the latest submitted song likeliest to be finished."""

    def chance_done(self, state: PollState) -> float:
        return min(1.0, state.submitted_at / 1000.0)


async def test_only_the_learned_policy_plans_within_the_budget() -> None:
    """LearnedPolling is a PlansWithinBudget (songs wait for its polls); the fixed-interval
    and backoff policies are not (their submissions go first)."""
    assert isinstance(LearnedPolling(), PlansWithinBudget)
    assert not isinstance(FixedInterval(10.0), PlansWithinBudget)
    assert not isinstance(ExponentialBackoff(), PlansWithinBudget)


@pytest.mark.parametrize(
    ("policy", "waits", "planned"),
    [(_PlannedAtTheEnd, 1, True), (_PlannedAtTheEnd, 0, False), (_AtTheEnd, 1, False)],
)
async def test_songs_wait_for_due_polls_only_for_a_policy_that_plans_within_the_budget(
    clock: VirtualClock,
    monkeypatch: pytest.MonkeyPatch,
    policy: type[_AtTheEnd],
    waits: int,
    planned: bool,
) -> None:
    """30 songs of 30 s, 10 in flight, 20 requests a minute, polled as they end: new songs
    waiting for due polls keep the median lag under 10 s; they wait only for a policy that
    plans within the budget and with SONGS_WAIT_FOR_EARLIER_POLLS on (else over 10 s)."""
    monkeypatch.setattr(_pacing, "SONGS_WAIT_FOR_EARLIER_POLLS", waits)
    api = FakeAPI(clock, RequestBudget(20, clock))
    requests = [song(str(n), 30) for n in range(30)]
    results = await collect(api, requests, max_in_flight=10, poll=policy(30.0))
    assert all(r.ok for r in results)
    lags = _lags(api)
    assert len(lags) == 30
    assert (statistics.median(lags) <= 10.0) is planned, lags


async def test_a_new_song_lets_only_the_polls_then_waiting_go_first(clock: VirtualClock) -> None:
    """A ready song lets as many polls go as were waiting, then goes, even when the oldest
    due poll keeps losing to likelier ones: beside two 500-s songs polled every second at 6
    requests a minute (the later one's poll always due and preferred), the third song goes
    within 90 s of the start and the fourth within a minute of its slot coming free."""
    api = FakeAPI(clock, RequestBudget(6, clock))
    names = ("long", "also-long", "short", "fourth")
    requests = [song(name, 500 if "long" in name else 30) for name in names]
    results = await collect(api, requests, max_in_flight=3, poll=_PrefersTheLatest(30.0))
    assert all(r.ok for r in results)
    ends = {job["prompt"]: job["end"] for job in api.jobs.values()}
    short = next(prompt for prompt in ends if "short" in prompt)
    freed = min(t + ROUND_TRIP for t, _, p in api.log if p == short and t >= ends[p])
    submitted = {p.split()[1]: t for t, kind, p in api.log if kind == "submit"}
    assert submitted["short"] < 90.0, submitted
    assert freed < submitted["fourth"] < freed + 60.0, (freed, submitted)


class _RecordsContext(_Policy):
    """Polls every second, noting what each decision was told about the batch."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, float, float]] = []  # in flight, budget rate, now

    def next_delay(self, state: PollState) -> float:
        self.seen.append((state.in_flight, state.budget_rate, state.now))
        return 1.0


async def test_the_policy_is_told_the_budget_rate_and_the_songs_in_flight(
    clock: VirtualClock,
) -> None:
    """With 90 requests/min and 3 slots for 6 songs, decisions see rate 90 and 1-3 in flight."""
    api = FakeAPI(clock, RequestBudget(90, clock))
    policy = _RecordsContext()
    results = await collect(api, [song(str(n), 5) for n in range(6)], max_in_flight=3, poll=policy)
    assert all(r.ok for r in results)
    in_flight = {n for n, _, _ in policy.seen}
    assert {rate for _, rate, _ in policy.seen} == {90.0}
    assert max(in_flight) == 3
    assert min(in_flight) >= 1


async def test_a_slow_source_shares_the_budget_among_the_songs_generating(
    clock: VirtualClock,
) -> None:
    """A source handing over a song every 30 s to a batch of 50 slots: once it has kept
    the batch waiting longer than the budget's pace of submissions, decisions see the
    songs generating (one or two) in flight, not 50 slots nobody fills."""
    api = FakeAPI(clock, RequestBudget(120, clock))
    policy = _RecordsContext()

    async def source() -> Any:
        for n in range(4):
            if n:
                await clock.sleep(30.0)
            yield song(str(n), 50)

    results = await collect(api, source(), max_in_flight=50, poll=policy)
    assert all(r.ok for r in results)
    waited = [in_flight for in_flight, _, at in policy.seen if at > 1.0]
    assert waited
    assert max(waited) <= 2


async def test_no_song_is_taken_from_the_source_while_a_429_pauses_the_client(
    clock: VirtualClock,
) -> None:
    """During a Retry-After pause the source is not read, so nothing is journaled as sent."""
    budget = RequestBudget(120, clock)
    api = FakeAPI(clock, budget)
    budget.on_throttled(30.0)
    paused_at = clock.now()
    taken: list[float] = []

    async def source() -> Any:
        for n in range(3):
            taken.append(clock.now())
            yield song(str(n), 5)

    results = await collect(api, source())
    assert all(r.ok for r in results)
    assert len(taken) == 3
    assert min(taken) >= paused_at + 30.0


async def test_ten_thousand_songs_in_flight_at_once(
    clock: VirtualClock, anyio_backend: str
) -> None:
    """10,000 songs are in flight together on one timer heap and a few tasks; memory per
    song in flight is measured on asyncio (printed, not asserted tightly; tracemalloc would
    make the trio run several times slower)."""
    api = FakeAPI(clock)
    api.hold = True
    count = 10_000
    requests = [song(str(n), 60.0) for n in range(count)]
    tasks_before = running_tasks()
    measure = anyio_backend == "asyncio"
    gc.collect()
    if measure:
        tracemalloc.start()
    try:
        async with batch(
            api,
            requests,
            max_in_flight=count,
            deadline=None,
            poll=FixedInterval(interval=100.0, first=300.0),
        ) as results:
            while len(api.jobs) < count:  # watching another object fill up
                await clock.sleep(10.0)
            in_flight_memory, _ = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            tasks_in_flight = running_tasks() - tasks_before
            api.release()
            done = 0
            async for result in results:
                assert result.ok
                done += 1
    finally:
        tracemalloc.stop()
    assert done == count
    assert tasks_in_flight < 100  # a heap and a few workers, not a task per song
    if measure:
        per_song = in_flight_memory / count
        print(
            f"\n10,000 songs in flight: {in_flight_memory / 1e6:.1f} MB traced, "
            f"{per_song:.0f} bytes per song (the fake API's records included)"
        )
        assert per_song < 20_000


# --------------------------------------------------------------------------- end to end


def emulated(
    config: EmulatorConfig, **client: Any
) -> tuple[VirtualClock, Emulator, AsyncMusicClient]:
    """A virtual clock, an emulator on it, and a client in process on the same clock."""
    clock = VirtualClock()
    emulator = Emulator(config, clock=clock)
    return (
        clock,
        emulator,
        AsyncMusicClient(
            TEST_API_KEY,
            base_url="http://127.0.0.1",
            transport=httpx.ASGITransport(app=emulator.app),
            clock=clock,
            **client,
        ),
    )


def e2e_songs(count: int) -> list[tuple[str, SongRequest]]:
    return [
        (f"s{n:03d}", SongRequest(prompt=f"Emulated song {n}: warm piano", lyrics="la " * 5))
        for n in range(count)
    ]


async def land_all(clock: VirtualClock, client: AsyncMusicClient, count: int) -> None:
    """Run ``count`` songs through ``client`` on ``clock``: every one comes back, completed."""
    async with clock, client, client.generate_many(e2e_songs(count)) as results:
        got = [r async for r in results]
    assert len(got) == count
    assert all(r.ok for r in got), [r.error for r in got if not r.ok][:3]


async def test_end_to_end_the_budget_holds_and_every_song_lands_once() -> None:
    """40 songs through the emulator at 30 requests/minute: all complete, no duplicate
    submission, and the emulator's request log never has more than 30 in a minute."""
    clock, emulator, client = emulated(
        EmulatorConfig(seed=1, requests_per_minute=30, durations=Uniform(20, 30)),
        limits=Limits(requests_per_minute=30, max_in_flight=10),
        poll=LearnedPolling(prior=(20.0, 30.0)),
    )
    async with clock, client, client.generate_many(e2e_songs(40)) as results:
        got = [r async for r in results]
    assert len(got) == 40
    assert all(r.ok for r in got)
    stats = emulator.stats()
    assert stats.jobs_submitted == 40
    assert stats.duplicate_submissions == 0
    admitted = sorted(
        e.time for e in emulator.request_log if e.kind in ("submit", "poll") and e.status != 429
    )
    assert max_in_window(admitted, 60.0) <= 30
    # The client keeps a quarter second clear of the server's minute.
    assert stats.rate_limited <= 0.03 * len(admitted)


async def test_end_to_end_a_server_taking_only_small_bursts_is_learned() -> None:
    """A server counting with a 5-request token bucket: after a 429 or two the client sends
    smaller bursts; every song lands once, 429s stay under 2 % and the batch is not stalled."""
    clock, emulator, client = emulated(
        EmulatorConfig(seed=3, requests_per_minute=60, burst=5, durations=Uniform(20, 30)),
        limits=Limits(requests_per_minute=60, max_in_flight=10),
        poll=LearnedPolling(prior=(20.0, 30.0)),
    )
    async with clock, client, client.generate_many(e2e_songs(40)) as results:
        got = [r async for r in results]
    elapsed = clock.now()
    assert len(got) == 40
    assert all(r.ok for r in got)
    stats = emulator.stats()
    assert stats.duplicate_submissions == 0
    requests = stats.requests["submit"] + stats.requests["poll"]
    assert stats.rate_limited <= 0.02 * requests, (stats.rate_limited, requests)
    # Learned near the server's 5 (a minute's 60 at first); it regrows by one a minute.
    assert client.budget.burst < 10
    # 40 songs and ~3 polls each at 60 requests/minute take about 160 s when paced evenly.
    assert elapsed < 260.0, elapsed


def lag_share_p95(jobs: Iterable[JobRecord]) -> float:
    """Lag p95 of the emulator's ``jobs`` (all completed and seen), as a share of each
    song's time from submission to completion."""
    shares = []
    for job in jobs:
        assert job.completed_at is not None
        assert job.first_seen_terminal_at is not None
        lag = job.first_seen_terminal_at - job.completed_at
        shares.append(lag / (job.completed_at - job.submitted_at))
    shares.sort()
    return shares[math.ceil(0.95 * len(shares)) - 1]


async def test_end_to_end_after_small_bursts_are_learned_later_waves_are_spread_out() -> None:
    """A server counting the default 120/minute with a 10-request token bucket: once its
    429s show the small bursts, songs are submitted at the pace their polls can be served,
    so songs after the first wave are noticed within 6.5 % of their duration at p95
    (measured 3.7 %; submitting each as a slot frees, waves stay bunched: 10.1 %)."""
    clock, emulator, client = emulated(
        EmulatorConfig(seed=4, burst=10, durations=Uniform(50, 60)), poll=LearnedPolling()
    )
    await land_all(clock, client, 80)
    jobs = sorted(emulator.jobs.values(), key=lambda job: job.submitted_at)
    assert lag_share_p95(jobs[client.limits.max_in_flight :]) <= 0.065
    assert emulator.stats().duplicate_submissions == 0


async def test_end_to_end_a_service_that_slows_down_at_once_is_followed_within_a_wave() -> None:
    """Songs taking 35-45 s, then from the 61st 80-100 s: the songs submitted a wave (20)
    after the change are noticed within 6 % of their duration at p95 (measured 2.9 %;
    without the change-of-pace test 8.0 %, without the cap on a minute's polls 36.6 %)."""
    drawn = itertools.count()

    def durations(rng: random.Random) -> float:
        return rng.uniform(35, 45) if next(drawn) < 60 else rng.uniform(80, 100)

    clock, emulator, client = emulated(
        EmulatorConfig(seed=6, durations=durations), poll=LearnedPolling()
    )
    await land_all(clock, client, 140)
    jobs = sorted(emulator.jobs.values(), key=lambda job: job.submitted_at)
    assert lag_share_p95(jobs[60 + client.limits.max_in_flight :]) <= 0.06


@pytest.mark.parametrize("seed", [5, 12])
async def test_end_to_end_a_server_counting_fewer_a_minute_than_configured_is_learned(
    seed: int,
) -> None:
    """A server allowing 60 requests a minute to a client configured for the published 120:
    the budget learns the lower limit from its 429s, which stay under 3 % of requests
    (measured 1.5-2 %; before it learned such limits: 7-10 %), every song lands once, and lag
    p95 stays within a third of a song (measured 0.20; taking the first wave's second 429
    for a storm, which halves the rate twice: 0.50; seed 12, a 429 near the learned limit
    left unheld and its pause's first request taken for a storm: 0.59)."""
    clock, emulator, client = emulated(
        EmulatorConfig(seed=seed, requests_per_minute=60),
        poll=LearnedPolling(),
    )
    await land_all(clock, client, 100)
    assert lag_share_p95(emulator.jobs.values()) <= 0.33
    stats = emulator.stats()
    assert stats.duplicate_submissions == 0
    requests = stats.requests["submit"] + stats.requests["poll"]
    assert stats.rate_limited <= 0.03 * requests, (stats.rate_limited, requests)
    assert client.budget.minute_limit < 70


async def test_end_to_end_a_service_faster_than_the_budget_is_polled_at_its_pace() -> None:
    """Songs of 10-20 s where the documented prior says 50-60 s, at the default 120
    requests/minute and 20 in flight: the explorers' ladder finds the real timing within
    the first waves, and the planner polls songs about once, as the budget allows; the
    batch ends within 1.85 x the optimum (measured 1.75; polling from the prior's edge:
    1.9-2.05; the documented loop: 2.07)."""
    clock, emulator, client = emulated(
        EmulatorConfig(seed=4, durations=Uniform(10, 20)),
        poll=LearnedPolling(),
    )
    await land_all(clock, client, 100)
    jobs = list(emulator.jobs.values())
    started = min(job.submitted_at for job in jobs)
    ended = max(job.first_seen_terminal_at or job.submitted_at for job in jobs)
    assert ended - started <= 1.85 * list_schedule([job.duration for job in jobs], 20)
    assert emulator.stats().rate_limited == 0


@pytest.mark.parametrize("retry_after", [None, 3.0])
async def test_end_to_end_a_429_storm_slows_everyone_and_is_ridden_out(
    retry_after: float | None,
) -> None:
    """A 20 s storm of 429s (with or without Retry-After) throttles the batch; every song
    still completes exactly once, and the hook hears about the throttling."""
    clock, emulator, client = emulated(
        EmulatorConfig(seed=2, requests_per_minute=None, durations=Uniform(20, 30)),
        poll=LearnedPolling(prior=(20.0, 30.0)),
    )
    emulator.throttle(21.0, 41.0, retry_after=retry_after)
    hook = Recorder()
    async with clock, client, client.generate_many(e2e_songs(30), events=hook) as results:
        got = [r async for r in results]
    assert len(got) == 30
    assert all(r.ok for r in got)
    stats = emulator.stats()
    assert stats.rate_limited > 0
    assert stats.duplicate_submissions == 0
    assert hook.of(RequestThrottled)
    assert client.budget.effective_rate == client.limits.requests_per_minute  # recovered


async def test_end_to_end_results_match_what_the_emulator_did() -> None:
    """Each result's id, poll count and completion order agree with the emulator's records,
    and a failed generation is a failed result."""
    clock, emulator, client = emulated(
        EmulatorConfig(seed=3, requests_per_minute=None, durations=Uniform(20, 30)),
        poll=LearnedPolling(prior=(20.0, 30.0)),
    )
    emulator.inject("generation_failure", route="submit", count=1)
    async with clock, client, client.generate_many(e2e_songs(10)) as results:
        got = [r async for r in results]
    jobs = emulator.jobs
    failed = [r for r in got if not r.ok]
    assert len(failed) == 1
    assert isinstance(failed[0].error, GenerationFailedError)
    for result in got:
        job = jobs[result.generation_id]  # type: ignore[index]
        assert result.polls == job.polls
    seen = [jobs[r.generation_id].first_seen_terminal_at for r in got]  # type: ignore[index]
    assert seen == sorted(seen)  # delivered in the order they were noticed
    assert not math.isnan(sum(s for s in seen if s is not None))
