"""The CLI's first Ctrl-C or SIGTERM: POSTs on their way land, no new one leaves.

``run_async`` installs a ``_Landing`` as the command's submission watch; these tests drive
one directly (signals to the test process itself would reach pytest too), with the emulator
in process and one POST's answer held back.
"""

from __future__ import annotations

import anyio
import httpx
import pytest

from aimlmusic import AsyncMusicClient, Generation, SongRequest
from aimlmusic._errors import SendingRefused
from aimlmusic._transport import SUBMISSION_WATCH
from aimlmusic.cli._backend import _Landing
from aimlmusic.emulator import TEST_API_KEY, Emulator, EmulatorConfig
from aimlmusic.testing import EMULATED_BASE_URL

pytestmark = pytest.mark.anyio

#: Real seconds a test waits for the client to get somewhere (reached only on failure).
REACH_TIMEOUT = 30.0


class _HeldAnswers(httpx.AsyncBaseTransport):
    """The emulator over ASGI, each POST's answer held (its job already created) until
    ``release`` is set."""

    def __init__(self, emulator: Emulator) -> None:
        self.inner = httpx.ASGITransport(app=emulator.app)
        self.reached = anyio.Event()
        self.release = anyio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "POST":
            self.reached.set()
            await self.release.wait()
        return response


def _song(n: int) -> SongRequest:
    return SongRequest(prompt=f"Calm acoustic guitar, take {n}", lyrics="[Verse]\nLa la la la")


async def test_once_stopping_a_post_on_its_way_lands_and_no_new_one_leaves() -> None:
    """After the first signal the POST on its way is answered (its id kept), a new one is
    refused before it leaves, and the work is cancelled once the first has landed."""
    emulator = Emulator(EmulatorConfig(time_scale=1000.0, requests_per_minute=None))
    held = _HeldAnswers(emulator)
    landed: list[Generation] = []
    refused: list[SendingRefused] = []
    async with AsyncMusicClient(
        TEST_API_KEY, base_url=EMULATED_BASE_URL, transport=held, clock=emulator.clock
    ) as client:
        with anyio.fail_after(REACH_TIMEOUT):  # a hang guard only
            async with anyio.create_task_group() as work:
                landing = _Landing(work.cancel_scope)
                SUBMISSION_WATCH.set(landing)

                async def first() -> None:
                    landed.append(await client.submit(_song(0)))

                work.start_soon(first)
                await held.reached.wait()
                landing.cancel_once_landed()  # the first signal
                try:
                    await client.submit(_song(1))
                except SendingRefused as exc:
                    refused.append(exc)
                assert not work.cancel_scope.cancel_called  # the first POST is on its way
                held.release.set()
                await anyio.sleep_forever()  # cancelled once the first POST has landed
    assert [generation.id for generation in landed] == list(emulator.jobs)
    assert len(refused) == 1
    assert emulator.stats().requests["submit"] == 1
