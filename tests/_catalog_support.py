"""Pieces shared by the catalog runner's tests and the shared journal's workers' tests: an
in-process client of an emulator, a catalog file of numbered songs, the manifest read back."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

import aimlmusic
from aimlmusic.catalog import CatalogJournal, _runner
from aimlmusic.emulator import TEST_API_KEY, Emulator

LYRICS = "[Verse]\nNeon rain on empty streets\n[Chorus]\nWe keep on walking home"
#: Audio formats the numbered songs cycle through.
FORMATS = ("mp3", "wav", "pcm")


@asynccontextmanager
async def client_for(
    emulator: Emulator, api_key: str = TEST_API_KEY
) -> AsyncIterator[aimlmusic.AsyncMusicClient]:
    """A client of ``emulator`` in process, on its clock."""
    async with aimlmusic.AsyncMusicClient(
        api_key,
        base_url="http://127.0.0.1",
        transport=httpx.ASGITransport(app=emulator.app),
        clock=emulator.clock,
    ) as client:
        yield client


def write_catalog(path: Path, count: int, formats: Sequence[str] = FORMATS) -> Path:
    """A JSONL catalog of ``count`` songs ``song-00``... whose formats cycle ``formats``."""
    rows = [
        {
            "key": f"song-{i:02d}",
            "title": f"Track {i:02d}",
            "prompt": f"Synthwave night drive number {i}, warm pads",
            "lyrics": LYRICS,
            "format": formats[i % len(formats)],
        }
        for i in range(count)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def manifest(out: Path) -> list[dict[str, object]]:
    """The records of ``out``'s manifest, in file order."""
    text = (out / "manifest.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def handed_run(
    client: aimlmusic.AsyncMusicClient, journal: CatalogJournal, out: Path, key: str
) -> _runner._Run:
    """A catalog run on ``journal`` with no task running, and song ``key`` handed to its
    scheduler, not sent yet: a test calls its hooks itself, as the scheduler and the
    transport would."""
    entry = journal.entry(key)
    assert entry is not None
    run = _runner._Run(
        client, journal, out, max_in_flight=1, deadline=None, resubmit_ambiguous=False,
        retry_failed=False, tag=False, download_concurrency=1, on_event=None,
    )  # fmt: skip
    run.handed[key] = entry.state
    return run
