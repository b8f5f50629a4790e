"""The audio files the emulator serves: a tune from :mod:`._synth` encoded as WAV, MP3 or PCM.

WAV uses the standard library's :mod:`wave`; MP3 uses ``lameenc`` (the ``emulator`` extra,
imported only when an MP3 is first needed); PCM is the raw signed 16-bit little-endian stereo
stream. Every file comes with its true facts (duration, sample rate, channels, bitrate, size),
read back from the encoded bytes, because a client is entitled to check ``extra_info`` against
what it downloaded. Rendered files are cached by (prompt hash, format, rate, bitrate).
"""

from __future__ import annotations

import collections
import hashlib
import io
import threading
import wave
from typing import Any

import attrs

from ._synth import CHANNELS, SAMPLE_WIDTH, compose, render_pcm

__all__ = [
    "AudioFacts",
    "AudioFile",
    "AudioRenderer",
    "AudioSpec",
    "MissingEncoderError",
    "mp3_facts",
]

CONTENT_TYPES = {"mp3": "audio/mpeg", "wav": "audio/wav", "pcm": "application/octet-stream"}


class MissingEncoderError(RuntimeError):
    """MP3 output was requested but the ``lameenc`` encoder is not installed."""


@attrs.frozen
class AudioSpec:
    """What the request asked for: ``format`` (mp3, wav or pcm), ``sample_rate`` in Hz and
    ``bitrate`` in bit/s (only meaningful for MP3)."""

    format: str
    sample_rate: int
    bitrate: int


@attrs.frozen
class AudioFacts:
    """The true facts of a served file, as ``extra_info`` reports them."""

    format: str
    content_type: str
    duration_ms: int
    sample_rate: int
    channels: int
    bitrate: int
    size: int

    def extra_info(self) -> dict[str, Any]:
        """The undocumented ``extra_info`` object, with the real API's field names."""
        return {
            "music_duration": self.duration_ms,
            "music_sample_rate": self.sample_rate,
            "music_channel": self.channels,
            "bitrate": self.bitrate,
            "music_size": self.size,
        }


@attrs.frozen
class AudioFile:
    """An encoded file and its facts."""

    data: bytes = attrs.field(repr=lambda d: f"<{len(d)} bytes>")
    facts: AudioFacts

    @property
    def etag(self) -> str:
        """A strong validator for the bytes, as object stores send it."""
        return '"' + hashlib.md5(self.data, usedforsecurity=False).hexdigest() + '"'


class AudioRenderer:
    """Composes, encodes and caches the file for a (prompt, spec) pair. Thread-safe.

    Every file of one spec has the same length in samples, so its duration and size (CBR MP3
    included) do not depend on the prompt: :meth:`facts` encodes silence of that length once
    per spec, and a poll that reports ``extra_info`` never has to compose the song itself.
    """

    def __init__(self, seconds: float, *, cache_size: int = 128) -> None:
        if seconds <= 0:
            raise ValueError(f"audio length must be positive, got {seconds!r}")
        self.seconds = seconds
        self._cache_size = cache_size
        self._cache: collections.OrderedDict[tuple[bytes, AudioSpec], AudioFile] = (
            collections.OrderedDict()
        )
        self._facts: dict[AudioSpec, AudioFacts] = {}
        self._lock = threading.Lock()

    def facts(self, spec: AudioSpec) -> AudioFacts:
        """The facts of any file rendered for ``spec``."""
        known = self._facts.get(spec)
        if known is None:
            frames = self._frames(spec)
            silence = bytes(frames * CHANNELS * SAMPLE_WIDTH)
            known = self._facts[spec] = _encode(silence, frames, spec).facts
        return known

    def _frames(self, spec: AudioSpec) -> int:
        return max(1, round(self.seconds * spec.sample_rate))

    def render(self, prompt: str, spec: AudioSpec) -> AudioFile:
        """The file for ``prompt`` in ``spec`` (from the cache when already rendered)."""
        key = (hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).digest(), spec)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        frames = self._frames(spec)
        pcm = render_pcm(compose(prompt, self.seconds), spec.sample_rate, frames)
        rendered = _encode(pcm, frames, spec)
        with self._lock:
            self._cache[key] = rendered
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return rendered


def _encode(pcm: bytes, frames: int, spec: AudioSpec) -> AudioFile:
    pcm_bitrate = spec.sample_rate * CHANNELS * SAMPLE_WIDTH * 8
    duration_ms = round(frames * 1000 / spec.sample_rate)
    if spec.format == "mp3":
        data = _encode_mp3(pcm, spec.sample_rate, spec.bitrate)
        stream = mp3_facts(data)
        facts = AudioFacts(
            "mp3",
            CONTENT_TYPES["mp3"],
            round(stream.duration * 1000),
            stream.sample_rate,
            stream.channels,
            stream.bitrate,
            len(data),
        )
        return AudioFile(data, facts)
    if spec.format == "wav":
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as writer:
            writer.setnchannels(CHANNELS)
            writer.setsampwidth(SAMPLE_WIDTH)
            writer.setframerate(spec.sample_rate)
            writer.writeframes(pcm)
        data = buffer.getvalue()
    elif spec.format == "pcm":
        data = pcm
    else:
        raise ValueError(f"unknown audio format {spec.format!r}")
    facts = AudioFacts(
        spec.format,
        CONTENT_TYPES[spec.format],
        duration_ms,
        spec.sample_rate,
        CHANNELS,
        pcm_bitrate,
        len(data),
    )
    return AudioFile(data, facts)


def _encode_mp3(pcm: bytes, sample_rate: int, bitrate: int) -> bytes:
    try:
        import lameenc  # optional: only MP3 needs it
    except ImportError as exc:
        raise MissingEncoderError(
            "the emulator needs the 'lameenc' package to serve MP3 files: "
            "pip install 'aimlmusic[emulator]' (or request format 'wav' or 'pcm')"
        ) from exc
    encoder = lameenc.Encoder()
    # MPEG-2 (16/24 kHz) tops out at 160 kbit/s: LAME clamps, and mp3_facts reports the truth.
    encoder.set_bit_rate(bitrate // 1000)
    encoder.set_in_sample_rate(sample_rate)
    # Without this LAME resamples low bitrates down, and the file would not have the rate asked.
    encoder.set_out_sample_rate(sample_rate)
    encoder.set_channels(CHANNELS)
    encoder.set_quality(5)
    return bytes(encoder.encode(pcm)) + bytes(encoder.flush())


# --------------------------------------------------------------------------- MP3 inspection

_MPEG1_BITRATES = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
_MPEG2_BITRATES = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
_SAMPLE_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


@attrs.frozen
class Mp3Facts:
    """What the frame headers of an MP3 (Layer III) stream say."""

    frames: int
    duration: float
    sample_rate: int
    channels: int
    bitrate: int


def mp3_facts(data: bytes) -> Mp3Facts:
    """Walk the Layer III frame headers of ``data`` (no ID3 tag expected) and report the
    stream's real frame count, duration, sample rate, channels and (first frame) bitrate."""
    offset = 0
    frames = 0
    first: tuple[int, int, int] | None = None
    samples = 0
    while offset + 4 <= len(data):
        header = int.from_bytes(data[offset : offset + 4], "big")
        version = (header >> 19) & 0b11
        layer = (header >> 17) & 0b11
        bitrate_index = (header >> 12) & 0b1111
        rate_index = (header >> 10) & 0b11
        if (
            header >> 21 != 0x7FF
            or version == 1
            or layer != 1
            or bitrate_index in (0, 15)
            or rate_index == 3
        ):
            raise ValueError(f"not an MPEG Layer III frame at byte {offset}")
        mpeg1 = version == 3
        bitrate = (_MPEG1_BITRATES if mpeg1 else _MPEG2_BITRATES)[bitrate_index] * 1000
        sample_rate = _SAMPLE_RATES[version][rate_index]
        padding = (header >> 9) & 1
        channels = 1 if (header >> 6) & 0b11 == 3 else 2
        per_frame = 1152 if mpeg1 else 576
        offset += (144 if mpeg1 else 72) * bitrate // sample_rate + padding
        frames += 1
        samples += per_frame
        if first is None:
            first = (sample_rate, channels, bitrate)
    if first is None:
        raise ValueError("no MP3 frames found")
    sample_rate, channels, bitrate = first
    return Mp3Facts(frames, samples / sample_rate, sample_rate, channels, bitrate)
