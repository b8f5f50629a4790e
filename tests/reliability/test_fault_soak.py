"""The fault soak: a batch against the emulator served over a real loopback socket, injecting
every documented kind of failure, ends with exactly one result per song, pays twice only for
songs reported ambiguous, and never hangs.

Fault rates (per request unless noted): 5xx before processing 10 %, 5xx after the job was
created 2 %, 429 without ``Retry-After`` 5 %, dropped connections 2 % (half before, half
after the work), malformed JSON 1 %, answers slower than the client's read timeout 1 %; per
song: generation errors 5 %, ``waiting`` status 20 %.
Quick by default; ``AIMLMUSIC_SOAK=full`` runs 500 songs.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import anyio
import pytest

from aimlmusic import (
    AmbiguousSubmissionError,
    AsyncMusicClient,
    GenerationFailedError,
    SongRequest,
    SongResult,
)
from aimlmusic.emulator import TEST_API_KEY, Emulator, EmulatorConfig, Faults, serving

from ._support import RandomThrottle, record_figures, soak_size

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SONGS = soak_size(quick=60, full=500)
#: API seconds per real second: a 55 s song takes 0.55 s.
TIME_SCALE = 100.0
#: Real seconds the whole batch may take before the soak counts as hung.
HANG_LIMIT = soak_size(quick=90, full=900)
THROTTLE_SHARE = 0.05

FAULTS = Faults(
    error_before=0.10,
    error_after=0.02,
    drop_before=0.01,
    drop_after=0.01,
    malformed_json=0.01,
    delay=0.01,
    delay_seconds=2 * TIME_SCALE * 1.0,  # two real seconds, twice the client's read timeout
    generation_failure=0.05,
    waiting_status=0.20,
)
#: The client's HTTP timeouts, in real seconds.
READ_TIMEOUT = 1.0


def _songs() -> list[tuple[str, SongRequest]]:
    # Distinct prompts: the emulator spots a duplicate submission by its body.
    return [
        (
            f"song-{i:04d}",
            SongRequest(
                prompt=f"Soak song {i:04d}: warm lo-fi ballad, soft piano, brushed drums",
                lyrics=f"[Verse]\nLine one of song {i}\n[Chorus]\nWe keep on walking home",
            ),
        )
        for i in range(SONGS)
    ]


def _outcome(result: SongResult) -> str:
    if result.ok:
        return "completed"
    if isinstance(result.error, GenerationFailedError):
        return "failed"
    if isinstance(result.error, AmbiguousSubmissionError):
        return "ambiguous"
    return f"other:{type(result.error).__name__}"


async def test_fault_soak_over_real_sockets(anyio_backend: str) -> None:
    """Every song ends in exactly one result (completed, failed with its reason, or
    ambiguous); a completed or failed song has exactly one job on the server, the one it
    reports; an ambiguous song at most one; no job belongs to no song; the only duplicate
    paid submissions are for songs reported ambiguous; the batch finishes within a bound."""
    emulator = Emulator(
        EmulatorConfig(time_scale=TIME_SCALE, seed=7, faults=FAULTS, audio_seconds=0.2)
    )
    throttle = RandomThrottle(emulator.app, THROTTLE_SHARE, seed=11)
    emulator.app = throttle  # type: ignore[assignment]  # serving() serves emulator.app
    songs = _songs()
    results: list[SongResult] = []
    started = time.monotonic()
    with serving(emulator) as base_url:
        async with AsyncMusicClient(
            TEST_API_KEY, base_url=base_url, clock=emulator.clock, timeout=READ_TIMEOUT
        ) as c:
            api_started = c.clock.now()
            with anyio.fail_after(HANG_LIMIT):
                async with c.generate_many(songs) as stream:
                    async for result in stream:
                        results.append(result)
            api_seconds = c.clock.now() - api_started
    real_seconds = time.monotonic() - started

    # Exactly one result per song.
    keys = [r.key for r in results]
    assert len(keys) == len(set(keys)) == SONGS
    assert set(keys) == {key for key, _ in songs}

    # Reconcile with what the server really did, song by song (prompts are unique).
    jobs_by_prompt: dict[str, list[Any]] = collections.defaultdict(list)
    for job in emulator.jobs.values():
        jobs_by_prompt[job.prompt].append(job)
    prompts = {request.prompt for _, request in songs}
    assert set(jobs_by_prompt) <= prompts, "a job on the server belongs to no song"
    outcomes = collections.Counter()
    ambiguous_with_job = 0
    for result in results:
        outcome = _outcome(result)
        outcomes[outcome] += 1
        jobs = jobs_by_prompt.get(result.request.prompt, [])
        if outcome == "completed":
            assert [j.id for j in jobs] == [result.generation_id], result.key
            assert jobs[0].status == "completed"
        elif outcome == "failed":
            assert [j.id for j in jobs] == [result.generation_id], result.key
            assert jobs[0].status == "error"
            assert isinstance(result.error, GenerationFailedError)
            assert result.error.error_message
        elif outcome == "ambiguous":
            assert len(jobs) <= 1, f"{result.key} was paid {len(jobs)} times"
            ambiguous_with_job += len(jobs)
        elif result.generation_id is not None:
            assert [j.id for j in jobs] == [result.generation_id], result.key
        else:
            assert jobs == [], f"{result.key} failed without an id yet has a job"

    stats = emulator.stats()
    ambiguous_prompts = {r.request.prompt for r in results if _outcome(r) == "ambiguous"}
    for group in stats.duplicates:
        prompt = emulator.job(group["generation_ids"][0]).prompt
        assert prompt in ambiguous_prompts, "a duplicate paid submission was not reported"
    assert stats.duplicate_submissions == 0  # generate_many never resends a maybe-sent POST
    assert outcomes["completed"] > SONGS // 2  # the soak really generated music

    completed = [r for r in results if r.ok]
    record_figures(
        f"fault_soak_{anyio_backend}",
        {
            "songs": SONGS,
            "time_scale": TIME_SCALE,
            "outcomes": dict(sorted(outcomes.items())),
            "ambiguous_with_a_job_on_the_server": ambiguous_with_job,
            "ambiguous_without_a_job": outcomes["ambiguous"] - ambiguous_with_job,
            "duplicate_paid_submissions": stats.duplicate_submissions,
            "jobs_on_server": stats.jobs_submitted,
            "requests": stats.requests,
            "random_429s_answered": throttle.answered,
            "server_statuses": stats.statuses,
            "faults_served": stats.faults,
            "polls_per_completed_song": round(
                sum(r.polls for r in completed) / max(1, len(completed)), 2
            ),
            "retries_total": sum(r.retries for r in results),
            "api_seconds": round(api_seconds, 1),
            "real_seconds": round(real_seconds, 2),
        },
    )
