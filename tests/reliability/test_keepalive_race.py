"""The keep-alive race: a server closing idle keep-alive connections just as a request is
written to one. For a POST that failure cannot be told from one that was received, so a
submission must never ride a connection that has been idle: none may end ambiguous, and
none may be received twice."""

from __future__ import annotations

import collections
import contextlib
import json

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream

from aimlmusic import (
    AsyncMusicClient,
    Limits,
    RetryPolicy,
    ScaledClock,
    SongRequest,
)

from ._support import CANARY_KEY

pytestmark = pytest.mark.anyio

SUBMISSIONS = 20
#: The idle time after which the timing variant's server closes a connection (real seconds).
IDLE_CLOSE = 0.002


async def _read_request(
    stream: SocketStream, buffer: bytes
) -> tuple[tuple[str, str, bytes], bytes]:
    while b"\r\n\r\n" not in buffer:
        buffer += await stream.receive(65536)
    head, _, rest = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    while len(rest) < length:
        rest += await stream.receive(65536)
    return (method, target, rest[:length]), rest[length:]


class IdleClosingServer:
    """An HTTP/1.1 server on 127.0.0.1 that drops a connection once it has been idle.

    Deterministic by default: a request arriving on a connection that has already served
    one is read and discarded and the connection closed, as if the server's idle close had
    crossed it on the wire. With ``idle_close`` it instead closes any connection idle that
    long (real seconds), racing the client for real. ``received`` counts the submissions it
    processed, by prompt.
    """

    def __init__(self, idle_close: float | None = None) -> None:
        self.idle_close = idle_close
        self.received: collections.Counter[str] = collections.Counter()
        self.connections = 0
        self.discarded = 0
        self.ids: dict[str, str] = {}

    async def handle(self, stream: SocketStream) -> None:
        self.connections += 1
        served = 0
        buffer = b""
        async with stream:
            while True:
                try:
                    if self.idle_close is not None and served:
                        with anyio.move_on_after(self.idle_close) as idle:
                            request, buffer = await _read_request(stream, buffer)
                        if idle.cancelled_caught:
                            return  # idle too long: close
                    else:
                        request, buffer = await _read_request(stream, buffer)
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return
                if self.idle_close is None and served:
                    self.discarded += 1
                    return  # the idle close crossed this request: never processed
                served += 1
                with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    await stream.send(self._answer(*request))

    def _answer(self, method: str, target: str, body: bytes) -> bytes:
        if method == "POST":
            prompt = json.loads(body)["prompt"]
            self.received[prompt] += 1
            gid = f"gen-{len(self.ids)}:minimax/music-1.5"
            self.ids[gid] = prompt
            payload = json.dumps({"id": gid, "status": "queued"}).encode()
        else:
            gid = target.split("generation_id=", 1)[1].replace("%3A", ":").replace("%2F", "/")
            payload = json.dumps({"id": gid, "status": "generating"}).encode()
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
        )


async def _submit_and_poll(server: IdleClosingServer) -> list[BaseException]:
    """Submit SUBMISSIONS songs one after another, each followed by a poll (so the pool
    holds a used connection when the next submission goes out); return the errors."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)
    errors: list[BaseException] = []
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, server.handle)
        client = AsyncMusicClient(
            CANARY_KEY,
            base_url=f"http://127.0.0.1:{port}",
            clock=ScaledClock(1000),  # back-off between GET retries in milliseconds
            limits=Limits(requests_per_minute=1_000_000),
            retry=RetryPolicy(attempts=6),
            timeout=5,
        )
        try:
            with anyio.fail_after(60):
                async with client:
                    for n in range(SUBMISSIONS):
                        song = SongRequest(prompt=f"Keep-alive song {n:03d}", lyrics="[Verse]\nla")
                        try:
                            generation = await client.submit(song)
                            await client.get(generation.id)
                        except Exception as exc:
                            errors.append(exc)
        finally:
            group.cancel_scope.cancel()
    return errors


async def test_a_server_dropping_reused_connections_makes_no_submission_ambiguous() -> None:
    """Every connection that served a request is dropped when the next one arrives on it:
    all submissions still go through, each received exactly once, none ambiguous (each POST
    rides a fresh connection; polls on a dropped connection are retried)."""
    server = IdleClosingServer()
    errors = await _submit_and_poll(server)
    assert errors == []
    assert len(server.received) == SUBMISSIONS
    assert set(server.received.values()) == {1}


async def test_a_server_closing_idle_connections_after_2_ms_makes_no_submission_ambiguous() -> None:
    """The race for real: connections idle for 2 ms are closed. No submission is ambiguous
    or received twice."""
    server = IdleClosingServer(idle_close=IDLE_CLOSE)
    errors = await _submit_and_poll(server)
    assert errors == []
    assert len(server.received) == SUBMISSIONS
    assert set(server.received.values()) == {1}
