"""The ``events=`` hook of ``generate_many``: a hook whose very lookup raises never breaks a
batch, and an object with none of the hook methods is refused at the call.

The batches run end to end against the bundled emulator on a :class:`VirtualClock`, so a
song's minute takes no real time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from aimlmusic import AsyncMusicClient, MusicClient, SongRequest, SongResult
from aimlmusic.emulator import TEST_API_KEY, Emulator, EmulatorConfig
from aimlmusic.testing import EMULATED_BASE_URL, VirtualClock

pytestmark = pytest.mark.anyio

#: Songs per batch: enough that several are in flight when a hook misbehaves.
SONGS = 4


def _emulated() -> tuple[VirtualClock, Emulator, AsyncMusicClient]:
    """A virtual clock, an emulator on it, and a client in process on the same clock."""
    clock = VirtualClock()
    emulator = Emulator(EmulatorConfig(seed=1, requests_per_minute=None), clock=clock)
    client = AsyncMusicClient(
        TEST_API_KEY,
        base_url=EMULATED_BASE_URL,
        transport=httpx.ASGITransport(app=emulator.app),
        clock=clock,
    )
    return clock, emulator, client


def _songs() -> list[tuple[str, SongRequest]]:
    return [
        (f"k{n}", SongRequest(prompt=f"Calm acoustic guitar, take {n}", lyrics="la " * 5))
        for n in range(SONGS)
    ]


async def _run(events: object) -> tuple[list[SongResult], Emulator]:
    clock, emulator, client = _emulated()
    async with clock, client, client.generate_many(_songs(), events=events) as results:  # type: ignore[arg-type]
        got = [r async for r in results]
    return got, emulator


class _Callbacks:
    """Only the callbacks given, looked up through ``__getattr__`` over a dict: a hook it was
    not given raises KeyError, not AttributeError."""

    def __init__(self, **callbacks: Callable[[Any], None]) -> None:
        self._callbacks = callbacks

    def __getattr__(self, name: str) -> Callable[[Any], None]:
        return self._callbacks[name]


class _NotReadyYet:
    """An ``on_completed`` property that raises (a progress bar not set up yet)."""

    @property
    def on_completed(self) -> Callable[[Any], None]:
        raise RuntimeError("progress bar not initialised yet")


async def test_a_hook_lookup_raising_keyerror_breaks_no_batch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A ``__getattr__`` over a dict of callbacks (KeyError for the others): every song
    completes, the callback given sees each one, and the failed lookups are logged. The
    first KeyError used to end the batch in an ExceptionGroup, its results lost."""
    completed: list[str] = []
    with caplog.at_level(logging.ERROR, logger="aimlmusic"):
        results, emulator = await _run(_Callbacks(on_completed=lambda e: completed.append(e.key)))
    assert sorted(r.key for r in results if r.ok) == [key for key, _ in _songs()]
    assert sorted(completed) == [key for key, _ in _songs()]
    assert emulator.stats().jobs_submitted == SONGS
    messages = {r.getMessage() for r in caplog.records}
    assert "event hook _Callbacks.on_submitted raised; the batch goes on" in messages


async def test_a_hook_property_that_raises_breaks_no_batch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An ``on_completed`` property that raises: every song still completes, once each, and
    the failure is logged. It used to end the batch, an answered POST reported ambiguous."""
    with caplog.at_level(logging.ERROR, logger="aimlmusic"):
        results, emulator = await _run(_NotReadyYet())
    assert len(results) == SONGS
    assert all(r.ok for r in results), [r.error for r in results]
    assert emulator.stats().jobs_submitted == SONGS
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("event hook _NotReadyYet.on_completed raised; the batch goes on") == (
        SONGS
    )


@pytest.mark.parametrize(
    "events",
    [print, lambda event: None, {"on_submitted": print}, object()],
    ids=["print", "lambda", "dict", "object"],
)
async def test_events_without_a_hook_method_are_refused(events: object) -> None:
    """An ``events=`` object with none of the ``on_*`` methods (a function, a dict of
    callbacks) is a TypeError at the call, naming the argument and the methods, and nothing
    is submitted. It used to be taken and never called."""
    clock, emulator, client = _emulated()
    async with clock, client:
        with pytest.raises(TypeError, match=r"^events must .*on_submitted.*on_throttled"):
            client.generate_many(_songs(), events=events)  # type: ignore[arg-type]
    assert emulator.stats().jobs_submitted == 0


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_blocking_client_refuses_events_without_a_hook_method(backend: str) -> None:
    """The blocking client's ``generate_many`` refuses ``events=print`` the same way, in the
    caller's thread."""
    emulator = Emulator(EmulatorConfig(requests_per_minute=None))
    with (
        MusicClient(
            TEST_API_KEY,
            base_url=EMULATED_BASE_URL,
            transport=httpx.ASGITransport(app=emulator.app),
            backend=backend,
        ) as client,
        pytest.raises(TypeError, match=r"^events must .*on_submitted"),
    ):
        client.generate_many(_songs(), events=print)  # type: ignore[arg-type]
    assert emulator.stats().jobs_submitted == 0
