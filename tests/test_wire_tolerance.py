"""Songs finish against servers that spell the wire format a little differently from the
documentation: statuses in another letter case, ids without their model part."""

from __future__ import annotations

from typing import Any

import pytest
from _http_fakes import (
    AUDIO_URL,
    GEN_ID,
    ScriptedAPI,
    generation_json,
    ok,
    song,
)

from aimlmusic import AsyncMusicClient, FixedInterval, GenerationFailedError, GenerationStatus
from aimlmusic.testing import VirtualClock

pytestmark = pytest.mark.anyio

#: GEN_ID without its ':minimax/music-1.5' part, as an independent server answered polls.
BARE_ID = GEN_ID.partition(":")[0]


def client_on(api: ScriptedAPI, clock: VirtualClock) -> AsyncMusicClient:
    """A client whose network is ``api``, on ``clock``, polling every 5 s."""
    return AsyncMusicClient(
        "sk-test-key",
        base_url="https://api.test",
        transport=api.transport,
        clock=clock,
        poll=FixedInterval(interval=5.0, first=0.0),
    )


def answer(status: str, gid: str = GEN_ID, **extra: Any) -> Any:
    """A 200 about ``gid`` with ``status``."""
    return ok({**generation_json(status, **extra), "id": gid})


@pytest.mark.parametrize("status", ["COMPLETED", "Completed", " completed\n"])
async def test_a_completed_status_in_another_letter_case_ends_the_wait(status: str) -> None:
    """A poll answering ``COMPLETED`` finishes the song at once, instead of polling it until
    its deadline as an unknown status."""
    api = ScriptedAPI(
        answer("QUEUED"), answer(status, audio_file={"url": AUDIO_URL}), answer("generating")
    )
    clock = VirtualClock()
    async with clock, client_on(api, clock) as client:
        generation = await client.generate(song(), timeout=600)
    assert generation.status is GenerationStatus.COMPLETED
    assert generation.audio_file is not None
    assert api.methods() == ["POST", "GET"]


async def test_an_error_status_in_another_letter_case_fails_the_song() -> None:
    """A poll answering ``ERROR`` fails the song at once."""
    api = ScriptedAPI(
        answer("queued"),
        answer("ERROR", error={"name": "E", "message": "no"}),
        answer("generating"),
    )
    clock = VirtualClock()
    async with clock, client_on(api, clock) as client:
        with pytest.raises(GenerationFailedError):
            await client.generate(song(), timeout=600)
    assert api.methods() == ["POST", "GET"]


async def test_a_batch_song_polled_under_its_id_without_the_model_completes() -> None:
    """Polls answered about the id minus its ':<model>' part are about that song: it
    completes in a batch, known by the id the POST gave, not failed after three polls."""
    api = ScriptedAPI(
        answer("queued"),
        answer("generating", BARE_ID),
        answer("generating", BARE_ID),
        answer("generating", BARE_ID),
        answer("completed", BARE_ID, audio_file={"url": AUDIO_URL}),
    )
    clock = VirtualClock()
    async with clock, client_on(api, clock) as client, client.generate_many([song()]) as results:
        (result,) = [each async for each in results]
    assert result.ok, result.error
    assert result.generation is not None
    assert result.generation.id == GEN_ID
    assert result.generation.status is GenerationStatus.COMPLETED
    assert api.methods() == ["POST", "GET", "GET", "GET", "GET"]
