"""A scripted HTTP server on a loopback socket, for attacks on the CLI (which builds its own
client from ``--base-url``, so ``httpx.MockTransport`` cannot reach it).

``answer(method, path_and_query, body)`` returns ``(status, json_or_bytes)``; the server
counts POSTs (each one a paid submission on the real API) and records every request line.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = Callable[[str, str, bytes], tuple[int, Any]]

#: Real seconds the server thread gets to stop when a test ends.
_SHUTDOWN_TIMEOUT = 5.0


class HostileServer:
    """What the server saw: ``posts`` (submissions received) and ``requests`` (method, path)."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.posts = 0
        self.requests: list[tuple[str, str]] = []
        self.base_url = ""
        self._lock = threading.Lock()

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, bytes, str]:
        with self._lock:
            self.requests.append((method, path))
            if method == "POST":
                self.posts += 1
        status, payload = self.answer(method, path, body)
        if isinstance(payload, bytes):
            return status, payload, "application/octet-stream"
        return status, json.dumps(payload).encode(), "application/json"


@contextmanager
def hostile_server(answer: Answer) -> Iterator[HostileServer]:
    """Serve ``answer`` on 127.0.0.1 (a free port) in a thread until the block ends."""
    state = HostileServer(answer)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status, payload, content_type = state.handle(self.command, self.path, body)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = _serve
        do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: the test reads ``state.requests`` instead

    class Server(ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            # A client that connects and leaves without a request (a POST refused at its
            # first byte, once connected) is no server error; anything else is printed.
            if not isinstance(sys.exc_info()[1], ConnectionError):
                super().handle_error(request, client_address)

    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(_SHUTDOWN_TIMEOUT)
