"""Serving the emulator on a real socket with uvicorn (the ``emulator`` extra).

:func:`serving` runs uvicorn in a background thread for the duration of a ``with`` block and
yields the base URL; :func:`serve` runs in the foreground until interrupted. Both bind the
socket themselves, so ``port=0`` gives a free port whose URL is known at once.

Dropped connections: the server wraps the app to put an ``aimlmusic.drop_connection``
callable in each HTTP scope; it finds the request's connection among uvicorn's open ones
and aborts its transport, so the client sees the peer hang up with no response at all.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ._app import DROP_EXTENSION, Receive, Scope, Send

if TYPE_CHECKING:
    from ._emulator import Emulator

__all__ = ["serve", "serving"]

#: Real seconds to wait for the server thread to start or to stop.
_STARTUP_TIMEOUT = 10.0
_SHUTDOWN_TIMEOUT = 10.0


def _import_uvicorn() -> Any:
    try:
        import uvicorn  # optional: the emulator extra
    except ImportError as exc:
        raise RuntimeError(
            "serving the emulator on a socket needs uvicorn: pip install 'aimlmusic[emulator]' "
            "(in-process use through httpx.ASGITransport needs nothing extra)"
        ) from exc
    return uvicorn


class _DroppableApp:
    """Wraps the emulator's app so it can abort the connection of the request it serves."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Any]) -> None:
        self.app = app
        self.server: Any = None  # the uvicorn.Server, set once created

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            extensions = {**(scope.get("extensions") or {})}
            extensions[DROP_EXTENSION] = functools.partial(self._abort, scope.get("client"))
            scope = {**scope, "extensions": extensions}
        await self.app(scope, receive, send)

    def _abort(self, client: Any) -> None:
        address = tuple(client) if client else None
        for connection in list(self.server.server_state.connections):
            if getattr(connection, "client", None) == address:
                connection.transport.abort()
                return


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def _make_server(emulator: Emulator, *, quiet: bool, access_log: bool) -> Any:
    uvicorn = _import_uvicorn()
    app = _DroppableApp(emulator.app)
    config = uvicorn.Config(
        app,
        lifespan="off",
        http="h11",
        loop="asyncio",
        ws="none",
        access_log=access_log,
        log_level="warning" if quiet else "info",
        # In a test process, leave the host's logging configuration alone.
        log_config=None if quiet else uvicorn.config.LOGGING_CONFIG,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    app.server = server
    return server


@contextlib.contextmanager
def serving(emulator: Emulator, *, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``emulator`` on ``host:port`` in a background thread; yield its base URL
    (``port=0`` picks a free port). The server stops when the block exits."""
    server = _make_server(emulator, quiet=True, access_log=False)
    sock = _bind(host, port)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="aimlmusic-emulator", daemon=True
    )
    try:
        thread.start()
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the emulator's server did not start")
            time.sleep(0.002)
        yield _base_url(sock)
    finally:
        server.should_exit = True
        if thread.is_alive():
            thread.join(_SHUTDOWN_TIMEOUT)
        sock.close()


def serve(
    emulator: Emulator,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    ready: Callable[[str], None] | None = None,
    access_log: bool = False,
) -> None:
    """Serve ``emulator`` in the foreground until interrupted (Ctrl+C). ``ready`` is called
    with the base URL once the socket is bound (the CLI prints it)."""
    server = _make_server(emulator, quiet=False, access_log=access_log)
    sock = _bind(host, port)
    try:
        if ready is not None:
            ready(_base_url(sock))
        server.run(sockets=[sock])
    finally:
        sock.close()
