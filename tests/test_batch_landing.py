"""Leaving ``generate_many`` early lets its submissions on their way land, and names every
song the caller leaves behind.

The client is the real one (transport, scheduler, budget) over ``httpx.MockTransport``, whose
handler plays a server that creates a job as each POST arrives and holds some answers; all
on a virtual clock.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio
import anyio.lowlevel
import httpcore
import httpx
import pytest

from aimlmusic import (
    AsyncMusicClient,
    AuthenticationError,
    FixedInterval,
    RetryPolicy,
    SongRequest,
    SongResult,
)
from aimlmusic.testing import VirtualClock

pytestmark = pytest.mark.anyio

#: API seconds a held POST answer takes to come (the test's own choice).
HELD_FOR = 7.0


class _Server:
    """Creates a job for every POST as it arrives; holds the answer of each POST after the
    first ``answered_at_once`` for ``HELD_FOR`` s. Polls find the first
    ``finished_at_once`` jobs completed and the others generating."""

    def __init__(
        self,
        clock: VirtualClock,
        answered_at_once: int,
        finished_at_once: int,
        held_status: int = 200,
    ) -> None:
        self.clock = clock
        self.answered_at_once = answered_at_once
        self.finished_at_once = finished_at_once
        self.held_status = held_status  # what a held POST is answered with at last
        self.jobs: list[str] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            job = f"job-{len(self.jobs)}"
            self.jobs.append(job)  # created, and paid for, whatever happens to the answer
            if len(self.jobs) > self.answered_at_once:
                await self.clock.sleep(HELD_FOR)
                if self.held_status != 200:
                    return httpx.Response(self.held_status, text="bad gateway")
            return httpx.Response(200, json={"id": job, "status": "queued"})
        job = request.url.params["generation_id"]
        if self.jobs.index(job) < self.finished_at_once:
            body = {"id": job, "status": "completed", "audio_file": {"url": "https://cdn.test/a"}}
        else:
            body = {"id": job, "status": "generating"}
        return httpx.Response(200, json=body)


def _client(server: _Server) -> AsyncMusicClient:
    return AsyncMusicClient(
        "sk-test-key",
        base_url="https://api.test",
        transport=httpx.MockTransport(server),
        clock=server.clock,
        poll=FixedInterval(interval=5.0, first=1.0),
    )


def _client_with_own_http(
    server: _Server, poll_every: float
) -> tuple[httpx.AsyncClient, AsyncMusicClient]:
    """A client of ``server`` over an HTTP client of the caller's own (closing the music
    client leaves it open), polling every ``poll_every`` s from ``min(1, poll_every)``."""
    http = httpx.AsyncClient(transport=httpx.MockTransport(server))
    client = AsyncMusicClient(
        "sk-test-key",
        base_url="https://api.test",
        http_client=http,
        clock=server.clock,
        poll=FixedInterval(interval=poll_every, first=min(1.0, poll_every)),
    )
    return http, client


def _songs(count: int) -> list[tuple[str, SongRequest]]:
    return [(f"k{n}", SongRequest(f"a quiet song number {n}", "la la la la")) for n in range(count)]


class _Submitted:
    """Hooks that remember the ids submitted and the errors of songs that failed."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.failed: list[str] = []

    def on_submitted(self, event: Any) -> None:
        self.ids.append(event.generation.id)

    def on_failed(self, event: Any) -> None:
        self.failed.append(type(event.error).__name__)


async def test_leaving_early_lets_the_submissions_on_their_way_land(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Breaking out while POSTs are on their way waits for their answers (no job the server
    created is left without its id reaching the hook and a WARNING); no new POST leaves."""
    clock = VirtualClock()
    server = _Server(clock, answered_at_once=1, finished_at_once=1)
    hook = _Submitted()
    caplog.set_level(logging.WARNING, logger="aimlmusic")
    async with clock, _client(server) as client:
        async with client.generate_many(_songs(10), max_in_flight=4, events=hook) as results:
            first = await results.receive()
            left_at = clock.now()
            created_before_leaving = len(server.jobs)
        assert first.key == "k0"
        assert first.ok
        assert created_before_leaving >= 2  # at least one POST was on its way
        # Its answer was waited for, and no other POST was sent meanwhile.
        assert clock.now() > left_at
        assert len(server.jobs) == created_before_leaving
        assert sorted(hook.ids) == server.jobs
        warned = "\n".join(r.getMessage() for r in caplog.records)
        for n, job in enumerate(server.jobs[1:], start=1):
            assert f"song 'k{n}' was submitted as generation {job} " in warned
        assert "job-0" not in warned  # its result was read
        assert hook.failed == []  # the songs refused as the batch was left were never sent


async def test_leaving_early_names_finished_songs_whose_results_were_not_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Songs that finished but whose results the caller never read are named too, with
    their ids: they are paid for like the others."""
    clock = VirtualClock()
    server = _Server(clock, answered_at_once=5, finished_at_once=5)
    caplog.set_level(logging.WARNING, logger="aimlmusic")
    async with (
        clock,
        _client(server) as client,
        client.generate_many(_songs(5), max_in_flight=5) as results,
    ):
        first = await results.receive()
        # Every song has finished and waits to be read.
        await clock.sleep(30.0)
    warned = "\n".join(r.getMessage() for r in caplog.records)
    named = [job for job in server.jobs if f"generation {job} " in warned]
    assert sorted([first.generation_id, *named]) == server.jobs


async def test_a_batch_read_to_its_end_warns_of_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """A batch whose every result was read leaves nothing behind, and says nothing."""
    clock = VirtualClock()
    server = _Server(clock, answered_at_once=3, finished_at_once=3)
    caplog.set_level(logging.WARNING, logger="aimlmusic")
    async with clock, _client(server) as client, client.generate_many(_songs(3)) as results:
        keys = sorted([result.key async for result in results])
    assert keys == ["k0", "k1", "k2"]
    assert not [r for r in caplog.records if "was submitted as generation" in r.getMessage()]


async def test_a_cancelled_caller_is_told_the_songs_it_leaves_behind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A caller cancelled from outside (a timeout around the batch) is told, in a WARNING,
    the id of every song submitted and left running."""
    clock = VirtualClock()
    server = _Server(clock, answered_at_once=2, finished_at_once=0)
    caplog.set_level(logging.WARNING, logger="aimlmusic")
    async with clock, _client(server) as client:
        with anyio.CancelScope() as scope:
            async with client.generate_many(_songs(2)) as results:
                await clock.sleep(20.0)  # both submitted, and polled as generating
                scope.cancel()
                async for _ in results:
                    pass
        assert scope.cancelled_caught
    assert server.jobs == ["job-0", "job-1"]
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert "generation job-0 " in warned
    assert "generation job-1 " in warned


async def test_closing_the_client_in_the_loop_stops_the_batch_with_one_error() -> None:
    """A client closed inside the loop over its batch stops the batch: the source is not
    drained, no song is reported ambiguous (nothing more was sent), and the block raises
    the closed client's RuntimeError once."""
    clock = VirtualClock()
    server = _Server(clock, answered_at_once=100, finished_at_once=1)
    pulled = 0
    seen: list[object] = []

    def source() -> Any:
        nonlocal pulled
        for key, request in _songs(40):
            pulled += 1
            yield key, request

    client = _client(server)

    async def read_and_close() -> None:
        async with clock, client, client.generate_many(source(), max_in_flight=4) as results:
            async for result in results:
                seen.append(result.error)
                await client.aclose()

    with pytest.raises(RuntimeError, match="closed"):
        await read_and_close()
    assert seen == [None]  # the song read before closing; no other song's failure
    assert pulled <= 5
    assert len(server.jobs) <= 4


async def test_a_submission_left_ambiguous_as_the_batch_is_left_is_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A POST on its way when the batch is left, answered 502 (it may have created a
    generation), is named in a WARNING as ambiguous: it was dropped without a word."""
    clock = VirtualClock()
    server = _Server(clock, answered_at_once=1, finished_at_once=1, held_status=502)
    caplog.set_level(logging.WARNING, logger="aimlmusic")
    async with clock, _client(server) as client:
        async with client.generate_many(_songs(2), max_in_flight=2) as results:
            first = await results.receive()
        assert first.key == "k0"
    assert server.jobs == ["job-0", "job-1"]
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert "song 'k1' may have been submitted (its submission was ambiguous)" in warned


async def test_a_submission_cut_by_a_cancellation_from_outside_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A cancellation from outside the block (a timeout around it) cuts a POST on its way,
    as any cancelled await: a WARNING says so, naming the song (nothing was said)."""
    clock = VirtualClock()
    server = _Server(clock, answered_at_once=1, finished_at_once=1)
    caplog.set_level(logging.WARNING, logger="aimlmusic")
    async with clock, _client(server) as client:
        with anyio.CancelScope() as scope:
            async with client.generate_many(_songs(2), max_in_flight=2) as results:
                await results.receive()
                await clock.sleep(1.0)  # the second POST is on its way, held
                scope.cancel()
                await anyio.lowlevel.checkpoint()
    assert server.jobs == ["job-0", "job-1"]
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert "the submission of song 'k1' was cut on its way by a cancellation" in warned


async def test_closing_the_client_lets_the_batchs_submission_on_its_way_land(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client closed under its batch while a POST is on its way (sent with the caller's
    own HTTP client, which closing ours leaves open) lets it land and names its song; the
    batch was cancelled at once, the POST cut and its paid id lost."""
    clock = VirtualClock()
    server = _Server(clock, answered_at_once=1, finished_at_once=1)
    hook = _Submitted()
    caplog.set_level(logging.WARNING, logger="aimlmusic")
    http, client = _client_with_own_http(server, poll_every=5.0)

    async def read_and_close() -> None:
        async with clock, http, client.generate_many(_songs(3), events=hook) as results:
            await results.receive()
            await clock.sleep(1.0)  # the second POST is on its way, held
            await client.aclose()
            async for _ in results:
                pass

    with pytest.raises(RuntimeError, match="closed"):
        await read_and_close()
    assert "job-1" in server.jobs
    assert sorted(hook.ids) == server.jobs
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert "song 'k1' was submitted as generation job-1 " in warned


async def test_a_client_closed_while_a_submission_backs_off_is_no_ambiguous_song() -> None:
    """A client closed while a batch's submission waits to try again (its POST never
    connected) stops the batch with the closed client's RuntimeError: nothing was sent, so
    no song is reported ambiguous (it was), and no second attempt is made."""
    clock = VirtualClock()
    attempts = 0
    results_seen: list[SongResult] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        attempts += 1
        raise httpx.ConnectError("connection refused")

    client = AsyncMusicClient(
        "sk-test-key",
        base_url="https://api.test",
        transport=httpx.MockTransport(refuse),
        clock=clock,
        retry=RetryPolicy(attempts=3, base_delay=30.0, max_delay=30.0),
    )

    async def close_soon() -> None:
        await clock.sleep(1.0)
        await client.aclose()

    async def read_all() -> None:
        async with clock, anyio.create_task_group() as group:
            group.start_soon(close_soon)
            async with client.generate_many(_songs(1)) as results:
                results_seen.extend([result async for result in results])

    with pytest.raises(BaseException) as caught:
        await read_all()
    assert "ClientClosedError" in repr(caught.value)
    assert results_seen == []
    assert attempts == 1


async def test_a_client_closed_under_its_batch_then_left_does_not_hang(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client closed under its batch while a POST is on its way, then the block left at
    once: both leavers wait for the same landing and the block exits (the first leaver
    waited for an event nobody set, for ever)."""
    clock = VirtualClock()
    server = _Server(clock, answered_at_once=1, finished_at_once=0)
    caplog.set_level(logging.WARNING, logger="aimlmusic")
    http, client = _client_with_own_http(server, poll_every=0.5)

    async def close_then_leave() -> None:
        async with clock, http, client.generate_many(_songs(2)):
            await clock.sleep(1.5)  # k0 answered and polled; k1's POST on its way, held
            await client.aclose()
            await clock.sleep(1.0)  # a poll meets the closed client: the batch starts leaving
            raise LookupError("the caller leaves")

    with anyio.fail_after(30), pytest.raises(LookupError):  # real seconds: a hang
        await close_then_leave()
    assert server.jobs == ["job-0", "job-1"]
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert "generation job-1 " in warned


class _OneConnection(httpx.AsyncBaseTransport):
    """``server`` behind a pool of one connection, traced as httpcore traces a request on a
    kept-alive connection: nothing while it waits for the connection, then "sending"."""

    def __init__(self, server: _Server) -> None:
        self.server = server
        self.connection = anyio.Lock()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        trace = request.extensions.get("trace")
        async with self.connection:
            if trace is not None:
                sent = httpcore.Request(request.method.encode(), str(request.url))
                await trace("http11.send_request_headers.started", {"request": sent})
            return await self.server(request)


async def test_a_submission_waiting_for_a_connection_is_not_sent_once_the_batch_is_left() -> None:
    """A POST still waiting for a pooled connection when the batch is left stays home when
    the connection frees: it was sent, and paid for, after the caller had left."""
    clock = VirtualClock()
    server = _Server(clock, answered_at_once=0, finished_at_once=0)
    client = AsyncMusicClient(
        "sk-test-key",
        base_url="https://api.test",
        transport=_OneConnection(server),
        clock=clock,
        poll=FixedInterval(interval=5.0, first=1.0),
    )

    async def leave_while_waiting() -> None:
        async with clock, client, client.generate_many(_songs(2)):
            await clock.sleep(3.0)  # k0's POST holds the connection; k1's waits for it
            raise LookupError("the caller leaves")

    with pytest.raises(LookupError):
        await leave_while_waiting()
    assert server.jobs == ["job-0"]


async def test_closing_the_results_inside_the_block_lets_the_submissions_land(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Results closed by the caller inside the block stop the batch as leaving it does:
    the POST on its way lands and its song is named (it was cut when the next result
    found nobody reading)."""
    clock = VirtualClock()
    server = _Server(clock, answered_at_once=2, finished_at_once=3)
    caplog.set_level(logging.WARNING, logger="aimlmusic")
    async with (
        clock,
        _client(server) as client,
        client.generate_many(_songs(3), max_in_flight=3) as results,
    ):
        await results.receive()
        await results.aclose()
        await clock.sleep(30.0)  # the other songs finish, and find nobody reading
    assert server.jobs == ["job-0", "job-1", "job-2"]
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert "generation job-2 " in warned  # on its way as job-1 found nobody reading


async def test_a_song_waiting_out_a_429_is_not_sent_once_the_key_is_refused() -> None:
    """A song waiting out a 429 when another song's submission is answered 401 is not sent
    again: it fails with the 401, unsent (it was sent, and could be paid for)."""
    clock = VirtualClock()
    posts: list[str] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        prompt = json.loads(request.content)["prompt"]
        posts.append(prompt)
        if "number 1" in prompt:
            if sum("number 1" in p for p in posts) == 1:
                return httpx.Response(429, headers={"Retry-After": "5"}, json={"message": "slow"})
            return httpx.Response(200, json={"id": "job-1", "status": "queued"})
        await clock.sleep(3.0)  # the 401 comes while song 1 waits out its 429
        return httpx.Response(401, json={"message": "Invalid API key"})

    client = AsyncMusicClient(
        "sk-test-key",
        base_url="https://api.test",
        transport=httpx.MockTransport(answer),
        clock=clock,
    )
    errors: list[str] = []

    async def read_all() -> None:
        async with clock, client, client.generate_many(_songs(2), max_in_flight=2) as results:
            errors.extend([type(r.error).__name__ async for r in results])

    with pytest.raises(AuthenticationError):
        await read_all()
    assert sum("number 1" in p for p in posts) == 1
    assert errors == ["AuthenticationError", "AuthenticationError"]
