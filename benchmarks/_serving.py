"""The emulator served by uvicorn in a separate process, for benchmarks over real sockets.

A separate process keeps the server's CPU out of the client's ``time.process_time()`` and
lets the two use different cores, as they would against the real API.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["served_emulator"]

_STOP_SECONDS = 10.0


@contextmanager
def served_emulator(*, time_scale: float, song_seconds: float | None = None) -> Iterator[str]:
    """Start the emulator in a child process on 127.0.0.1; yield its base URL.

    Songs take the documented 50-60 s of API time, or exactly ``song_seconds``."""
    command = [sys.executable, str(Path(__file__).resolve()), "--time-scale", str(time_scale)]
    if song_seconds is not None:
        command += ["--song-seconds", str(song_seconds)]
    # The child serves until its stdin closes: when this block ends, or when this process
    # dies in any way, so a killed benchmark never leaves a server behind.
    server = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline().strip()
        if not line.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the emulator did not start (said {line!r})")
        yield line
    finally:
        for stream in (server.stdin, server.stdout):
            if stream is not None:
                stream.close()
        try:
            server.wait(timeout=_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _serve(time_scale: float, song_seconds: float | None) -> None:
    # Imported here: the parent process never needs uvicorn or the emulator.
    import socket

    import uvicorn

    from aimlmusic.emulator import Emulator, EmulatorConfig, Fixed, Uniform

    emulator = Emulator(
        EmulatorConfig(
            time_scale=time_scale,
            durations=Uniform(50.0, 60.0) if song_seconds is None else Fixed(song_seconds),
            requests_per_minute=None,  # the overhead benchmark measures CPU, not the limit
            max_concurrent=None,
            keep_request_log=False,  # a log growing for the whole run is not what we measure
        )
    )
    # The protocol must be named: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on
    # sockets whose ``proto`` says TCP, and without that every response whose headers and
    # body go out in two writes waits ~40 ms for the client's delayed ACK.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    listener.setblocking(False)
    # The settings of ``aimlmusic.emulator.serve``, without its start-up chatter.
    server = uvicorn.Server(
        uvicorn.Config(
            emulator.app,
            lifespan="off",
            http="h11",
            loop="asyncio",
            ws="none",
            access_log=False,
            log_level="warning",
        )
    )
    threading.Thread(target=_stop_on_eof, args=(server,), daemon=True).start()
    print(f"http://127.0.0.1:{listener.getsockname()[1]}", flush=True)
    server.run(sockets=[listener])


def _stop_on_eof(server: Any) -> None:
    sys.stdin.read()  # returns when the parent closes our stdin or dies
    server.should_exit = True


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="serve the emulator for a benchmark")
    parser.add_argument("--time-scale", type=float, default=100.0)
    parser.add_argument("--song-seconds", type=float, default=None)
    arguments = parser.parse_args()
    _serve(arguments.time_scale, arguments.song_seconds)
