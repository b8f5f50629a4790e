"""Deterministic little tunes: a prompt becomes a few bars of melody over a bass line.

The prompt's hash picks a key, a major or minor pentatonic scale, a tempo and a chord
progression; a seeded random walk on the scale makes the melody. Each eighth note is one
*segment* (a melody note over a plucked bass note) rendered to interleaved 16-bit stereo and
cached, so a new song is mostly a concatenation of segments already rendered: thousands of
distinct prompts stay cheap in pure Python.
"""

from __future__ import annotations

import array
import functools
import hashlib
import math
import random
import sys

import attrs

__all__ = ["CHANNELS", "SAMPLE_WIDTH", "Tune", "compose", "render_pcm"]

#: The synthesis is fixed to two channels of signed 16-bit samples.
CHANNELS = 2
SAMPLE_WIDTH = 2

_TEMPOS_BPM = (84, 96, 108, 120)
_MAJOR_PENTATONIC = (0, 2, 4, 7, 9)
_MINOR_PENTATONIC = (0, 3, 5, 7, 10)
#: Chord roots in semitones above the key: I-V-vi-IV and i-VI-III-VII, the pop staples.
_MAJOR_PROGRESSION = (0, 7, 9, 5)
_MINOR_PROGRESSION = (0, 8, 3, 10)
_EIGHTHS_PER_CHORD = 4
_TABLE_SIZE = 4096
_PEAK = 0.55 * 32767


@attrs.frozen
class Tune:
    """A composed piece: per eighth note, the melody's MIDI note (``None`` = rest) and the bass
    note, at ``bpm`` beats per minute."""

    bpm: int
    melody: tuple[int | None, ...]
    bass: tuple[int, ...]

    @property
    def eighth_seconds(self) -> float:
        """Length of one eighth note in seconds."""
        return 30.0 / self.bpm


def _seed(prompt: str) -> int:
    # surrogatepass: JSON may carry a lone surrogate (an escaped \ud800); it is still a prompt.
    digest = hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big")


def compose(prompt: str, seconds: float) -> Tune:
    """Compose at least ``seconds`` of music from ``prompt`` (:func:`render_pcm` trims it)."""
    rng = random.Random(_seed(prompt))
    key = rng.randrange(55, 65)  # G3..E4: a comfortable register for the melody's home note
    minor = rng.random() < 0.5
    scale = _MINOR_PENTATONIC if minor else _MAJOR_PENTATONIC
    progression = _MINOR_PROGRESSION if minor else _MAJOR_PROGRESSION
    bpm = rng.choice(_TEMPOS_BPM)
    eighths = max(1, math.ceil(seconds * bpm / 30.0))

    # Two octaves of the scale; the walk starts on the tonic and moves mostly by step.
    ladder = [key + octave * 12 + step for octave in (0, 1) for step in scale]
    position = 0
    melody: list[int | None] = []
    bass: list[int] = []
    for index in range(eighths):
        chord_root = progression[(index // _EIGHTHS_PER_CHORD) % len(progression)]
        bass.append(key - 24 + chord_root)
        last = index == eighths - 1
        if last:
            melody.append(key)  # end on the tonic so the phrase sounds finished
            continue
        if index % 2 == 1 and rng.random() < 0.15:
            melody.append(None)  # an off-beat breath
            continue
        position = min(len(ladder) - 1, max(0, position + rng.choice((-2, -1, -1, 1, 1, 2, 0))))
        melody.append(ladder[position])
    return Tune(bpm=bpm, melody=tuple(melody), bass=tuple(bass))


def _frequency(midi_note: int) -> float:
    return 440.0 * float(2.0 ** ((midi_note - 69) / 12))


@functools.cache
def _wavetable(harmonics: tuple[float, ...]) -> tuple[float, ...]:
    """One cycle of a waveform made of the given harmonic amplitudes, normalised to +-1."""
    raw = [
        sum(a * math.sin(2 * math.pi * (h + 1) * i / _TABLE_SIZE) for h, a in enumerate(harmonics))
        for i in range(_TABLE_SIZE)
    ]
    peak = max(abs(v) for v in raw)
    return tuple(v / peak for v in raw)


_LEAD = (1.0, 0.35, 0.12, 0.05)  # a soft, slightly reedy lead
_BASS = (1.0, 0.45, 0.1)


def _envelope(n: int, rate: int, attack: float, decay: float) -> list[float]:
    """Pluck-like envelope: linear attack, exponential decay, a short release to exact zero at
    the end so segments join without clicks."""
    attack_n = max(1, int(attack * rate))
    release_n = max(1, min(n // 4, int(0.02 * rate)))
    k = 1.0 / (decay * rate)
    env = [math.exp(-k * i) for i in range(n)]
    for i in range(min(attack_n, n)):
        env[i] *= i / attack_n
    for j in range(release_n):
        env[n - 1 - j] *= j / release_n
    return env


def _voice(
    midi_note: int, n: int, rate: int, table: tuple[float, ...], env: list[float]
) -> list[float]:
    step = _frequency(midi_note) * _TABLE_SIZE / rate
    mask = _TABLE_SIZE - 1
    return [table[int(i * step) & mask] * e for i, e in enumerate(env)]


@functools.lru_cache(maxsize=512)
def _segment(melody_note: int | None, bass_note: int, n: int, rate: int) -> bytes:
    """One eighth note, interleaved s16le stereo: lead panned left of centre, bass right."""
    bass = _voice(bass_note, n, rate, _wavetable(_BASS), _envelope(n, rate, 0.004, 0.18))
    if melody_note is None:
        lead = [0.0] * n
    else:
        lead = _voice(melody_note, n, rate, _wavetable(_LEAD), _envelope(n, rate, 0.01, 0.35))
    samples = array.array("h", bytes(n * CHANNELS * SAMPLE_WIDTH))
    for i in range(n):
        m = lead[i]
        b = bass[i]
        samples[2 * i] = int(_PEAK * (0.62 * m + 0.38 * b))
        samples[2 * i + 1] = int(_PEAK * (0.38 * m + 0.62 * b))
    if sys.byteorder == "big":
        samples.byteswap()
    return samples.tobytes()


def render_pcm(tune: Tune, rate: int, frames: int) -> bytes:
    """The tune as interleaved signed 16-bit little-endian stereo PCM at ``rate`` Hz, exactly
    ``frames`` frames long (trimmed, with a short fade-out, or padded with silence).

    A fixed length makes a file's size and duration depend only on its format, rate and bitrate,
    so ``extra_info`` can be reported without rendering the song.
    """
    n = round(tune.eighth_seconds * rate)
    frame_bytes = CHANNELS * SAMPLE_WIDTH
    pcm = b"".join(
        _segment(melody, bass, n, rate) for melody, bass in zip(tune.melody, tune.bass, strict=True)
    )
    if len(pcm) >= frames * frame_bytes:
        pcm = pcm[: frames * frame_bytes]
    else:
        pcm += bytes(frames * frame_bytes - len(pcm))
    fade = min(frames, int(0.05 * rate))
    if fade == 0:
        return pcm
    tail = array.array("h", pcm[-fade * frame_bytes :])
    if sys.byteorder == "big":
        tail.byteswap()
    for i in range(fade):
        gain = (fade - 1 - i) / fade
        tail[2 * i] = int(tail[2 * i] * gain)
        tail[2 * i + 1] = int(tail[2 * i + 1] * gain)
    if sys.byteorder == "big":
        tail.byteswap()
    return pcm[: -fade * frame_bytes] + tail.tobytes()
