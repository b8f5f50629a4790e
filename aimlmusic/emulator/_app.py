"""The ASGI adapter: a plain ASGI 3 callable, no web framework, no asyncio.

It reads the request, asks the emulator for a :class:`~._http.Reply` and carries it out:
waits out a delay on the emulator's clock (anyio only: it runs on asyncio and on trio), sends the
response, or hangs up. Hanging up needs help from the server: :func:`~._server.serving`
puts a callable under the ``aimlmusic.drop_connection`` scope extension that aborts the
socket. Without it (in process, through ``httpx.ASGITransport``) the app raises
``httpx.RemoteProtocolError``, the very exception httpx raises when a real server hangs up,
so a client sees the same failure either way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs

import anyio

from ._http import HttpRequest, Reply

if TYPE_CHECKING:
    from .._clock import Clock
    from ._config import EmulatorConfig

__all__ = ["DROP_EXTENSION", "EmulatorApp"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Scope extension a server may provide: a no-argument callable that aborts the connection.
DROP_EXTENSION = "aimlmusic.drop_connection"

#: Real seconds to wait for the server to report the aborted connection (bounded, never hangs).
_DISCONNECT_WAIT = 5.0


class _Handler(Protocol):
    config: EmulatorConfig

    @property
    def clock(self) -> Clock: ...

    def handle(self, request: HttpRequest) -> Reply: ...


class EmulatorApp:
    """The emulator as an ASGI application; ``app.emulator`` is the emulator behind it."""

    def __init__(self, emulator: _Handler) -> None:
        self.emulator = emulator

    def __repr__(self) -> str:
        return f"EmulatorApp({self.emulator!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # no websockets here; the server closes the connection
        received = await _read_body(receive, self.emulator.config.max_body_bytes)
        if received is None:
            return  # the client went away
        body, complete = received
        if complete:
            reply = self.emulator.handle(_request(scope, body))
        else:
            reply = Reply(
                413, b'{"message":"Payload Too Large","statusCode":413}', "application/json"
            )
        if reply.delay > 0:
            # On the emulator's clock, so a clock shared with the client (a test's virtual
            # clock) holds the answer back in its own time; otherwise a real sleep as before.
            await self.emulator.clock.sleep(reply.delay * self.emulator.config.time_scale)
        if reply.action == "drop":
            await _hang_up(scope, receive, "Server disconnected without sending a response.")
            return
        await send(
            {"type": "http.response.start", "status": reply.status, "headers": reply.header_list()}
        )
        if reply.head_only:
            await send({"type": "http.response.body", "body": b""})
        elif reply.action == "truncate":
            part = reply.body[: len(reply.body) // 2]
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await _hang_up(
                scope,
                receive,
                "peer closed connection without sending complete message body "
                f"(received {len(part)} bytes, expected {len(reply.body)})",
            )
        else:
            await send({"type": "http.response.body", "body": reply.body})


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, bool] | None:
    """The body and whether it fit in ``limit`` bytes; ``None`` if the client disconnected."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", False
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _request(scope: Scope, body: bytes) -> HttpRequest:
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    host = headers.get("host")
    if not host:
        server = scope.get("server") or ("localhost", None)
        host = server[0] if server[1] in (None, 80, 443) else f"{server[0]}:{server[1]}"
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    return HttpRequest(
        method=scope["method"],
        path=scope["path"],
        query=query,
        headers=headers,
        body=body,
        scheme=scope.get("scheme", "http"),
        host=host,
    )


async def _hang_up(scope: Scope, receive: Receive, message: str) -> None:
    drop = (scope.get("extensions") or {}).get(DROP_EXTENSION)
    if drop is None:
        import httpx  # only the in-process path needs it

        raise httpx.RemoteProtocolError(message)
    drop()
    # Wait until the server notices, so it does not try to answer on the dead connection.
    with anyio.move_on_after(_DISCONNECT_WAIT):
        while (await receive())["type"] != "http.disconnect":
            pass


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
