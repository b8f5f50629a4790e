"""Throttling storms: the emulator answers every request with 429 for a while, with and
without ``Retry-After``. No request goes out before a given ``Retry-After``; without one the
request rate backs off; full throughput returns soon after the storm; no POST is duplicated
and no song is lost.

Timeline in API seconds on a virtual clock that the client and the emulator (in process)
share, so the timing laws checked here cannot be blurred by a loaded machine: steady state
until ``STORM_START``, the storm until ``STORM_END``, then recovery until ``RUN_UNTIL``, when
the batch is left (cancelling what is still in flight). Real sockets are covered by the
fault soak and the canary test.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest

from aimlmusic import AsyncMusicClient, SongRequest, SongResult
from aimlmusic.emulator import TEST_API_KEY, Emulator, EmulatorConfig, RequestLogEntry
from aimlmusic.testing import EMULATED_BASE_URL, VirtualClock

from ._support import full_soak, record_figures

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

STORM_START = 150.0
STORM_END = STORM_START + (300.0 if full_soak() else 150.0)
RUN_UNTIL = STORM_END + 150.0
RETRY_AFTER = 20.0
#: Width of the windows rates are measured over (API seconds).
WINDOW = 30.0
#: "Soon": full throughput must be back within this long after the storm (API seconds).
RECOVERY_BOUND = 120.0
#: Real seconds before the run counts as hung (it takes a few: time is virtual).
HANG_LIMIT = 120.0


SEQ_HEADER = "x-reliability-seq"


class WireRecorder(httpx.AsyncBaseTransport):
    """Wraps the client's transport (in process, to ``app``): numbers each request (a
    header), notes on the client's clock when it left and when its answer was fully read.
    The body is read here, so nothing can run between "read" and the client reacting to it."""

    def __init__(self, app: Any, now: Callable[[], float]) -> None:
        self._inner = httpx.ASGITransport(app=app)
        self._now = now
        self._seq = itertools.count()
        self.sent: dict[int, float] = {}
        self.answered: dict[int, tuple[float, int]] = {}  # seq -> (read at, status)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        seq = next(self._seq)
        request.headers[SEQ_HEADER] = str(seq)
        self.sent[seq] = self._now()
        response = await self._inner.handle_async_request(request)
        await response.aread()
        self.answered[seq] = (self._now(), response.status_code)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class ServerLog:
    """ASGI middleware in front of the emulator: notes each numbered request's arrival on
    the emulator's clock and the status it was answered with."""

    def __init__(self, emulator: Emulator) -> None:
        self.app = emulator.app
        self._now = emulator.now
        self.arrivals: dict[int, float] = {}
        self.statuses: dict[int, int] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        seq = dict(scope.get("headers") or ()).get(SEQ_HEADER.encode())
        if scope["type"] != "http" or seq is None:
            await self.app(scope, receive, send)
            return
        number = int(seq)
        self.arrivals[number] = self._now()

        async def noting(message: Any) -> None:
            if message["type"] == "http.response.start":
                self.statuses[number] = message["status"]
            await send(message)

        await self.app(scope, receive, noting)


def _songs() -> Iterator[tuple[str, SongRequest]]:
    """Endless distinct songs; the batch takes them as slots free up."""
    for i in itertools.count():
        yield (
            f"storm-{i:05d}",
            SongRequest(
                prompt=f"Storm song {i:05d}: lo-fi ballad, soft piano",
                lyrics="[Verse]\nRain on the window\n[Chorus]\nWe keep on walking home",
            ),
        )


def _count(log: list[RequestLogEntry], start: float, end: float, status: int | None = None) -> int:
    return sum(1 for e in log if start <= e.time < end and (status is None or e.status == status))


def _recovery(log: list[RequestLogEntry], steady_per_window: float) -> float | None:
    """API seconds after the storm until a window of answered requests reaches 80 % of the
    steady rate again (``None``: it never did before the run ended)."""
    t = STORM_END
    while t + WINDOW <= RUN_UNTIL:
        if _count(log, t, t + WINDOW, 200) >= 0.8 * steady_per_window:
            return t - STORM_END
        t += 1.0
    return None


@pytest.mark.parametrize("retry_after", [RETRY_AFTER, None], ids=["retry-after", "no-hint"])
async def test_throttling_storm(anyio_backend: str, retry_after: float | None) -> None:
    """Through a storm of 429s: no request leaves before a given Retry-After ends (checked
    on the client's wire and in the server's log); without a hint the request rate falls
    and its gaps grow; throughput is back within RECOVERY_BOUND; every delivered song
    completed, and no POST was paid twice."""
    clock = VirtualClock()
    emulator = Emulator(EmulatorConfig(seed=3, audio_seconds=0.2), clock=clock)
    emulator.throttle(STORM_START, STORM_END, retry_after=retry_after)
    server = ServerLog(emulator)
    wire = WireRecorder(server, clock.now)
    throttles: list[tuple[float, float | None]] = []
    results: list[SongResult] = []
    started = time.monotonic()
    async with (
        clock,
        AsyncMusicClient(
            TEST_API_KEY, base_url=EMULATED_BASE_URL, clock=clock, transport=wire
        ) as client,
    ):
        budget = client.budget
        on_throttled = budget.on_throttled

        def noting(hint: float | None) -> None:
            throttles.append((clock.now(), hint))  # when the client learned of it
            on_throttled(hint)

        budget.on_throttled = noting  # type: ignore[method-assign]
        with anyio.fail_after(HANG_LIMIT):
            async with client.generate_many(_songs()) as stream:
                async for result in stream:
                    results.append(result)
                    if clock.now() >= RUN_UNTIL:
                        break
    real_seconds = time.monotonic() - started
    log = emulator.request_log
    api = [e for e in log if e.kind in ("submit", "poll")]

    # 1. No request leaves before a given Retry-After ends. On our wire: nothing is sent
    # while a pause the client learned of runs...
    hinted = [(at, hint) for at, hint in throttles if hint is not None]
    if retry_after is not None:
        assert hinted, "the storm's Retry-After never reached the client"
        early = [
            (sent, at)
            for sent in wire.sent.values()
            for at, hint in hinted
            if at < sent < at + hint - 1e-6
        ]
        assert early == [], f"requests sent inside a Retry-After pause: {early[:5]}"
        # ...and in the server's log: a request arriving within Retry-After of a 429 was
        # already on its way (sent before that 429's answer was read by the client).
        for seq, status in server.statuses.items():
            if status != 429:
                continue
            told_at, answered = server.arrivals[seq], wire.answered[seq][0]
            late = [
                other
                for other, arrived in server.arrivals.items()
                if told_at < arrived < told_at + retry_after and wire.sent[other] > answered
            ]
            assert late == [], f"requests {late} arrived within Retry-After of request {seq}"
    else:
        assert throttles
        assert not hinted

    # 2. The request rate backs off during the storm.
    steady = _count(api, STORM_START - 2 * WINDOW, STORM_START) / 2  # requests per window
    storm_windows = (STORM_END - STORM_START) / WINDOW
    in_storm = _count(api, STORM_START, STORM_END) / storm_windows
    storm_times = [e.time for e in api if STORM_START <= e.time < STORM_END]
    gaps = [b - a for a, b in itertools.pairwise(storm_times)]
    if retry_after is None:
        # Its own back-off: a fraction of the steady rate, with gaps that grew well past the
        # first pause of 2 s.
        assert in_storm <= 0.35 * steady, (in_storm, steady)
        assert max(gaps) >= 16.0, f"the back-off never grew: largest gap {max(gaps):.1f} s"
    else:
        # The server sets the pace: one round of requests per Retry-After, fewer than in
        # steady state (step 1 proved nothing was sent inside a pause).
        assert in_storm < steady, (in_storm, steady)

    # 3. Full throughput returns soon after the storm.
    steady_answered = _count(api, STORM_START - 2 * WINDOW, STORM_START, 200) / 2
    recovery = _recovery(api, steady_answered)
    assert recovery is not None, "throughput never came back"
    assert recovery <= RECOVERY_BOUND, f"throughput took {recovery:.0f} s to come back"

    # 4. No song lost, nothing paid twice.
    assert results
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    stats = emulator.stats()
    assert stats.duplicate_submissions == 0
    prompts = [job.prompt for job in emulator.jobs.values()]
    assert len(prompts) == len(set(prompts))

    record_figures(
        f"throttling_storm_{'retry_after' if retry_after else 'no_hint'}_{anyio_backend}",
        {
            "clock": "virtual",
            "storm_api_seconds": [STORM_START, STORM_END],
            "retry_after": retry_after,
            "requests_per_30s_before_storm": steady,
            "requests_per_30s_during_storm": round(in_storm, 2),
            "answered_per_30s_before_storm": steady_answered,
            "largest_gap_during_storm_s": round(max(gaps), 1) if gaps else None,
            "recovery_after_storm_s": recovery,
            "throttled_answers": stats.rate_limited,
            "requests_sent_inside_a_retry_after": 0 if retry_after else None,
            "songs_delivered": len(results),
            "duplicate_paid_submissions": stats.duplicate_submissions,
            "real_seconds": round(real_seconds, 2),
        },
    )
