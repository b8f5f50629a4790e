"""Following the time scale of an emulator served on this machine.

An emulator started with ``--time-scale 100`` runs a 55-second song in 0.55 s. A client that
waits in real seconds would poll it a hundred times too slowly, so a client pointed at a
loopback URL without a ``clock=`` asks the server once, before its first request, whether it
is an emulator and how fast it runs (``GET /_emulator/info``), and runs its clock at that
speed. Anything else on a loopback port (a proxy, a mock, an emulator without the route)
leaves the clock at real time.
"""

from __future__ import annotations

import json
import logging
import time

import anyio
import httpx

from ._network import OwnNetwork

__all__ = ["EmulatorPacedClock", "TimeScaleProbe", "follow_emulator_time"]

logger = logging.getLogger("aimlmusic")

#: The emulator's route that reports its time scale (no key needed, not counted).
INFO_PATH = "/_emulator/info"
#: Real seconds the one-off question may take, all of it (a body dripped a byte at a time
#: too); a server that does not answer this fast is taken for one that is not an emulator.
PROBE_TIMEOUT = 5.0
#: The most bytes an emulator's answer takes (it is about a hundred): a longer one is
#: not an emulator's, and is not read further.
PROBE_BODY_BYTES = 4096
#: The time scales followed: an emulator runs at most this many times faster than real
#: time (a 10-minute deadline then lasts 6 ms) ...
FASTEST_SCALE = 100_000.0
#: ... and at most this many times slower; a scale outside means real time (a server's
#: 1e300 would end every deadline at once, its 1e-300 make every wait endless).
SLOWEST_SCALE = 0.01


class EmulatorPacedClock:
    """Real time (the event loop's clock) until :meth:`adopt` sets a speed; ``now()`` goes on
    from where it was, so durations measured across the change stay right."""

    def __init__(self) -> None:
        self.scale = 1.0
        self._adopted_at: float | None = None  # time.monotonic() when the scale was adopted
        self._offset = 0.0  # now() at that moment

    def now(self) -> float:
        """API seconds: the event loop's clock, then scaled time from the adoption on."""
        if self._adopted_at is None:
            return anyio.current_time()
        return self._offset + (time.monotonic() - self._adopted_at) * self.scale

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of API time."""
        await anyio.sleep(max(0.0, seconds) / self.scale)

    def adopt(self, scale: float) -> None:
        """Run ``scale`` API seconds per real second from now on."""
        offset = self.now() if self._adopted_at is not None else anyio.current_time()
        self._offset, self._adopted_at, self.scale = offset, time.monotonic(), float(scale)

    def __repr__(self) -> str:
        return f"EmulatorPacedClock(scale={self.scale:g})"


class TimeScaleProbe(httpx.AsyncBaseTransport):
    """Wraps the network transport: before the first request, asks the server for its time
    scale and gives it to the clock."""

    def __init__(
        self, inner: httpx.AsyncBaseTransport, clock: EmulatorPacedClock, base_url: str
    ) -> None:
        self._inner = inner
        self._clock = clock
        self._info_url = base_url.rstrip("/") + INFO_PATH
        self._asked = False
        self._lock: anyio.Lock | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Ask once (the first request waits for the answer), then pass ``request`` on."""
        await self.learn_scale()
        return await self._inner.handle_async_request(request)

    async def learn_scale(self) -> None:
        """Ask the server for its time scale, the first time only (later calls return at
        once). A shared budget calls it before its first request: its windows are in API
        seconds, which the scale turns into the real ones it keeps in Redis."""
        if not self._asked:
            if self._lock is None:
                self._lock = anyio.Lock()
            async with self._lock:
                if not self._asked:
                    await self._ask()
                    self._asked = True

    async def _ask(self) -> None:
        # Whatever goes wrong here (an answer of any shape, a body nested too deep to parse,
        # a scale too large for a float) only means "not an emulator": the probe runs before
        # a request, so an exception escaping it would fail that request (a submission as
        # ambiguous, though nothing was sent) and, never marked as asked, every later one.
        # Cancellation is not an Exception and still propagates.
        scale = None
        try:
            with anyio.move_on_after(PROBE_TIMEOUT):  # the event loop's clock: real time
                scale = await self._answered_scale()
        except Exception as exc:
            # Lazy %r: formatting happens only if logged, and logging contains its failures.
            logger.debug("no emulator time scale at %s: %r", self._info_url, exc)
            return
        if scale is None:
            logger.debug("%s is not an aimlmusic emulator: real time", self._info_url)
            return
        logger.info(
            "the emulator at %s runs %gx real time; so does this client", self._info_url, scale
        )
        self._clock.adopt(scale)

    async def _answered_scale(self) -> float | None:
        """The scale an aimlmusic emulator's answer gives, or None for any other answer."""
        timeout = dict.fromkeys(("connect", "read", "write", "pool"), PROBE_TIMEOUT)
        question = httpx.Request("GET", self._info_url, extensions={"timeout": timeout})
        response = await self._inner.handle_async_request(question)
        body = bytearray()
        try:
            # An emulator answers 200 in plain JSON (a compressed answer could decode to any
            # size from a few bytes): read raw, and no further than an answer of its size.
            if response.status_code != 200 or response.headers.get(
                "content-encoding", "identity"
            ).strip().lower() not in ("", "identity"):
                return None
            if response.is_stream_consumed:  # already in memory (a mock's answer)
                body += response.content[: PROBE_BODY_BYTES + 1]
            else:
                async for chunk in response.aiter_raw():
                    body += chunk
                    if len(body) > PROBE_BODY_BYTES:
                        break
            if len(body) > PROBE_BODY_BYTES:
                return None
        finally:
            await response.aclose()
        info = json.loads(bytes(body))
        if not isinstance(info, dict) or info.get("emulator") != "aimlmusic":
            return None
        return _usable_scale(info.get("time_scale"))

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self._inner.aclose()


def _usable_scale(value: object) -> float | None:
    """``value`` as a time scale: a number (not a bool) from ``SLOWEST_SCALE`` to
    ``FASTEST_SCALE``, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        scale = float(value)
    except OverflowError:  # an integer beyond any float
        return None
    # json.loads reads Infinity and NaN: neither is within the range.
    return scale if SLOWEST_SCALE <= scale <= FASTEST_SCALE else None


def follow_emulator_time(base_url: str) -> tuple[EmulatorPacedClock, TimeScaleProbe]:
    """A clock and a network transport for a client of ``base_url`` (a loopback URL) that
    was given neither a clock nor a transport of its own."""
    clock = EmulatorPacedClock()
    return clock, TimeScaleProbe(OwnNetwork(), clock, base_url)
