"""Pytest fixtures for testing code that uses aimlmusic, without a key or a network.

Installed as a pytest plugin (the ``pytest11`` entry point), so the fixtures are available in
every project that has aimlmusic installed:

- ``music_emulator``: a fresh :class:`~aimlmusic.emulator.Emulator` running 1000x faster than
  real time, with no request budget (override ``music_emulator_config`` to change that).
- ``emulated_client``: an :class:`~aimlmusic.AsyncMusicClient` wired to ``music_emulator`` in
  process (``httpx.ASGITransport``, no socket) and sharing its compressed clock. An async
  fixture: use it from ``@pytest.mark.anyio`` tests.
- ``music_emulator_url``: the base URL of ``music_emulator`` served on a loopback socket, for
  code that builds its own HTTP client (needs the ``emulator`` extra for uvicorn).

It also exports :class:`VirtualClock`, a clock that jumps when every task waits, for tests
of timing that must not depend on how loaded the machine is.

This module is imported by every pytest run, so it imports nothing heavy at the top: the
emulator and the client are imported inside the fixtures.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest

from ._virtual_clock import VirtualClock, VirtualClockDeadlock

if TYPE_CHECKING:
    from . import AsyncMusicClient
    from .emulator import Emulator, EmulatorConfig

__all__ = [
    "EMULATED_BASE_URL",
    "VirtualClock",
    "VirtualClockDeadlock",
    "emulated_client",
    "music_emulator",
    "music_emulator_config",
    "music_emulator_url",
]

#: The base URL ``emulated_client`` uses in process. Loopback, so plain http is allowed.
EMULATED_BASE_URL = "http://127.0.0.1"

#: API seconds per real second in the fixtures: a 50-60 s song takes 50-60 ms.
FIXTURE_TIME_SCALE = 1000.0


@pytest.fixture
def music_emulator_config() -> EmulatorConfig:
    """The configuration of ``music_emulator``: the real service's behaviour at 1000x speed,
    without the per-minute request budget. Override this fixture to change it."""
    from .emulator import EmulatorConfig

    return EmulatorConfig(time_scale=FIXTURE_TIME_SCALE, requests_per_minute=None)


@pytest.fixture
def music_emulator(music_emulator_config: EmulatorConfig) -> Emulator:
    """A fresh emulator of the AI/ML API music endpoint; inspect it with ``.stats()``,
    ``.jobs`` and ``.request_log``, misconfigure it with ``.inject()`` and ``.throttle()``."""
    from .emulator import Emulator

    return Emulator(music_emulator_config)


@pytest.fixture
async def emulated_client(music_emulator: Emulator) -> AsyncIterator[AsyncMusicClient]:
    """An ``AsyncMusicClient`` talking to ``music_emulator`` in process, on its clock."""
    import httpx

    from . import AsyncMusicClient
    from .emulator import TEST_API_KEY

    async with AsyncMusicClient(
        TEST_API_KEY,
        base_url=EMULATED_BASE_URL,
        transport=httpx.ASGITransport(app=music_emulator.app),
        clock=music_emulator.clock,
    ) as client:
        yield client


@pytest.fixture
def music_emulator_url(music_emulator: Emulator) -> Iterator[str]:
    """The base URL of ``music_emulator`` served on 127.0.0.1 (a free port) for the test."""
    from .emulator import serving

    with serving(music_emulator) as base_url:
        yield base_url
