"""A local emulator of the AI/ML API music endpoint (``minimax/music-1.5``).

It speaks the same wire format with the same states, realistic (and compressible) timing,
the account's limits, configurable faults and real audio files, so code can be developed and
tested without a key or a bill::

    import httpx
    import aimlmusic
    from aimlmusic.emulator import Emulator, EmulatorConfig, TEST_API_KEY

    emulator = Emulator(EmulatorConfig(time_scale=1000))  # a 55 s song takes 55 ms
    client = aimlmusic.AsyncMusicClient(
        TEST_API_KEY,
        base_url="http://127.0.0.1",
        transport=httpx.ASGITransport(app=emulator.app),
        clock=emulator.clock,
    )

Over a real socket: ``with serving(emulator) as base_url: ...`` (needs the ``emulator``
extra), or ``python -m aimlmusic.emulator --port 0`` from a shell. The emulator imports
nothing from the client: it is an independent implementation of the service.
"""

from __future__ import annotations

from ._app import EmulatorApp
from ._audio import MissingEncoderError
from ._cli import main
from ._config import TEST_API_KEY, EmulatorConfig, FaultKind, Faults, ThrottleStorm
from ._durations import Distribution, Fixed, LogNormal, Mixture, Uniform
from ._emulator import Emulator
from ._records import EmulatorStats, JobRecord, RequestKind, RequestLogEntry
from ._server import serve, serving

__all__ = [
    "Distribution",
    "Emulator",
    "EmulatorApp",
    "EmulatorConfig",
    "EmulatorStats",
    "FaultKind",
    "Faults",
    "Fixed",
    "JobRecord",
    "LogNormal",
    "main",
    "MissingEncoderError",
    "Mixture",
    "RequestKind",
    "RequestLogEntry",
    "serve",
    "serving",
    "TEST_API_KEY",
    "ThrottleStorm",
    "Uniform",
    "create_app",
]


def create_app(config: EmulatorConfig | None = None) -> EmulatorApp:
    """A new emulator's ASGI app (its :class:`Emulator` is ``app.emulator``)."""
    return Emulator(config).app
