"""Benchmark song requests: distinct texts, made lazily, so the catalog never sits in memory."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import aimlmusic

__all__ = ["API_KEY", "request_text_bytes", "song_requests"]

#: The key the benchmarks give the emulator and the fake server (not a real credential).
API_KEY = "test-key"

_STYLES = ("lo-fi ballad, soft piano", "upbeat synth pop", "acoustic folk, warm guitar")


def _song(index: int) -> aimlmusic.SongRequest:
    # Every song gets its own strings (no interning), like rows read from a catalog file.
    style = _STYLES[index % len(_STYLES)]
    prompt = f"Benchmark song {index:06d}: {style}, brushed drums"
    lyrics = (
        f"[Verse]\nStreetlights flicker on avenue {index}\nEvery window hums a tune\n"
        f"[Chorus]\nSing it back, number {index}, sing it slow\nUntil the morning lets us go\n"
    )
    return aimlmusic.SongRequest(prompt=prompt, lyrics=lyrics)


def song_requests(count: int) -> Iterator[tuple[str, aimlmusic.SongRequest]]:
    """``count`` keyed requests, built one at a time as the scheduler asks for them."""
    for index in range(count):
        yield f"song-{index:06d}", _song(index)


def request_text_bytes() -> float:
    """Memory held by one request's own text (prompt and lyrics string objects)."""
    sample = [_song(index) for index in range(100)]
    total = sum(sys.getsizeof(s.prompt) + sys.getsizeof(s.lyrics) for s in sample)
    return total / len(sample)
