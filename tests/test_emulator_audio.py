"""The audio the emulator serves, and its presigned download route, in process."""

from __future__ import annotations

import array
import io
import itertools
import sys
import wave
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from aimlmusic.emulator import TEST_API_KEY, Emulator, EmulatorConfig, Fixed, MissingEncoderError
from aimlmusic.emulator._audio import AudioRenderer, AudioSpec, mp3_facts

pytestmark = pytest.mark.anyio

PATH = "/v2/generate/audio"
AUTH = {"Authorization": f"Bearer {TEST_API_KEY}"}
PROMPT = "Warm lo-fi ballad, soft piano, brushed drums"


class ManualClock:
    """API time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> ManualClock:
    """A hand-driven API clock."""
    return ManualClock()


@pytest.fixture
async def client(clock: ManualClock) -> AsyncIterator[httpx.AsyncClient]:
    """A client on an emulator whose download URLs live 100 API seconds."""
    emulator = Emulator(EmulatorConfig(durations=Fixed(50.0), url_ttl=100.0), clock=clock)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=emulator.app), base_url="http://127.0.0.1"
    ) as http:
        http.emulator = emulator  # type: ignore[attr-defined]
        yield http


async def finished_song(
    client: httpx.AsyncClient, clock: ManualClock, audio_setting: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Submit a song, move time past its end, and return the completed generation."""
    body: dict[str, Any] = {"model": "minimax/music-1.5", "prompt": PROMPT, "lyrics": "la " * 10}
    if audio_setting is not None:
        body["audio_setting"] = audio_setting
    generation_id = (await client.post(PATH, json=body, headers=AUTH)).json()["id"]
    clock.now += 60.0
    done = (await client.get(PATH, params={"generation_id": generation_id}, headers=AUTH)).json()
    assert done["status"] == "completed"
    return done


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize("rate", [16000, 44100])
async def test_wav_is_a_valid_riff_file_matching_extra_info(
    client: httpx.AsyncClient, clock: ManualClock, rate: int
) -> None:
    """A WAV download opens with :mod:`wave` and has exactly the reported duration, rate,
    channels and size."""
    done = await finished_song(client, clock, {"format": "wav", "sample_rate": rate})
    response = await client.get(done["audio_file"]["url"])
    assert response.headers["content-type"] == "audio/wav"
    info = done["extra_info"]
    with wave.open(io.BytesIO(response.content)) as reader:
        assert reader.getframerate() == info["music_sample_rate"] == rate
        assert reader.getnchannels() == info["music_channel"] == 2
        assert reader.getsampwidth() == 2
        assert round(reader.getnframes() * 1000 / rate) == info["music_duration"] == 3000
    assert len(response.content) == info["music_size"]
    assert info["bitrate"] == rate * 2 * 16


@pytest.mark.parametrize(
    ("rate", "bitrate", "true_bitrate"),
    [
        (44100, 256000, 256000),
        (32000, 128000, 128000),
        (24000, 64000, 64000),
        (16000, 256000, 160000),
    ],
)
async def test_mp3_decodes_with_the_reported_facts(
    client: httpx.AsyncClient, clock: ManualClock, rate: int, bitrate: int, true_bitrate: int
) -> None:
    """An MP3 download is a real MPEG Layer III stream (mutagen reads it) whose duration,
    sample rate, channels, bitrate and size are what ``extra_info`` said. MPEG-2 rates cap
    the bitrate at 160 kbit/s, and the report tells that truth."""
    mp3 = pytest.importorskip("mutagen.mp3")
    pytest.importorskip("lameenc")
    done = await finished_song(
        client, clock, {"format": "mp3", "sample_rate": rate, "bitrate": bitrate}
    )
    response = await client.get(done["audio_file"]["url"])
    assert response.headers["content-type"] == "audio/mpeg"
    info = done["extra_info"]
    parsed = mp3.MP3(io.BytesIO(response.content))
    assert parsed.info.sample_rate == info["music_sample_rate"] == rate
    assert parsed.info.channels == info["music_channel"] == 2
    assert parsed.info.bitrate == info["bitrate"] == true_bitrate
    assert abs(parsed.info.length * 1000 - info["music_duration"]) < 1.0
    assert 3000 <= info["music_duration"] < 3200  # 3 s of music plus the encoder's padding
    assert len(response.content) == info["music_size"]


async def test_pcm_is_raw_stereo_s16le(client: httpx.AsyncClient, clock: ManualClock) -> None:
    """A PCM download is headerless 16-bit stereo: size = frames x 4 bytes."""
    done = await finished_song(client, clock, {"format": "pcm", "sample_rate": 24000})
    response = await client.get(done["audio_file"]["url"])
    assert done["audio_file"]["url"].split("?")[0].endswith(".pcm")
    assert len(response.content) == 24000 * 3 * 4 == done["extra_info"]["music_size"]


def test_audio_is_deterministic_and_depends_on_the_prompt() -> None:
    """The same prompt gives the same bytes; another prompt gives another tune."""
    renderer = AudioRenderer(1.0)
    spec = AudioSpec("pcm", 16000, 128000)
    first = renderer.render(PROMPT, spec).data
    assert AudioRenderer(1.0).render(PROMPT, spec).data == first
    assert renderer.render("Driving synthwave at night, neon", spec).data != first


def test_audio_sounds_like_music_not_noise_or_silence() -> None:
    """The tune is loud enough to hear, never clips, and is mostly tonal: neighbouring
    samples are strongly correlated (white noise would not be)."""
    pcm = AudioRenderer(2.0).render(PROMPT, AudioSpec("pcm", 16000, 128000)).data
    samples = array.array("h", pcm)
    if sys.byteorder == "big":
        samples.byteswap()
    left = samples[0::2]
    peak = max(abs(value) for value in left)
    assert 8000 < peak < 32767
    products = sum(a * b for a, b in itertools.pairwise(left))
    energy = sum(a * a for a in left)
    assert products / energy > 0.9


def test_facts_do_not_depend_on_the_prompt() -> None:
    """The reported facts (from one silent encoding per spec) equal every rendered file's."""
    pytest.importorskip("lameenc")
    renderer = AudioRenderer(1.0)
    for spec in (
        AudioSpec("mp3", 44100, 128000),
        AudioSpec("mp3", 24000, 32000),
        AudioSpec("wav", 32000, 0),
    ):
        for prompt in (PROMPT, "a completely different style", "x" * 300):
            assert renderer.render(prompt, spec).facts == renderer.facts(spec)


def test_mp3_facts_rejects_garbage() -> None:
    """The frame walker refuses data that is not MPEG Layer III."""
    with pytest.raises(ValueError, match="not an MPEG"):
        mp3_facts(b"RIFF\x00\x00\x00\x00WAVE")
    with pytest.raises(ValueError, match="no MP3 frames"):
        mp3_facts(b"")


def test_a_missing_encoder_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without lameenc, asking for MP3 raises MissingEncoderError naming the extra to install."""
    monkeypatch.setitem(sys.modules, "lameenc", None)
    with pytest.raises(MissingEncoderError, match=r"aimlmusic\[emulator\]"):
        AudioRenderer(1.0).facts(AudioSpec("mp3", 44100, 128000))


# --------------------------------------------------------------------------- presigned URLs


async def test_a_download_with_authorization_is_refused(
    client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """Sending the API key to the presigned URL gets a 400 from the store."""
    done = await finished_song(client, clock, {"format": "wav"})
    refused = await client.get(done["audio_file"]["url"], headers=AUTH)
    assert refused.status_code == 400
    assert "<Code>InvalidArgument</Code>" in refused.text


async def test_tampered_or_unsigned_urls_are_refused(
    client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """A changed expiry, a wrong signature or no signature: 403; an unknown file: 404."""
    done = await finished_song(client, clock, {"format": "wav"})
    url = httpx.URL(done["audio_file"]["url"])
    expires = int(url.params["Expires"])
    extended = url.copy_set_param("Expires", str(expires + 3600))
    assert (await client.get(extended)).status_code == 403
    assert (await client.get(url.copy_set_param("Signature", "forged"))).status_code == 403
    assert (await client.get(url.copy_with(query=None))).status_code == 403
    assert (await client.get("/files/000000000000000000000000.wav")).status_code == 404


async def test_an_expired_url_is_refused_and_a_fresh_poll_renews_it(
    client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """After ``url_ttl`` the URL answers 403 "expired"; polling again gives a new URL that works."""
    done = await finished_song(client, clock, {"format": "wav"})
    old_url = done["audio_file"]["url"]
    clock.now += 101.0
    expired = await client.get(old_url)
    assert expired.status_code == 403
    assert "expired" in expired.text
    renewed = (await client.get(PATH, params={"generation_id": done["id"]}, headers=AUTH)).json()
    assert renewed["audio_file"]["url"] != old_url
    assert (await client.get(renewed["audio_file"]["url"])).status_code == 200


async def test_head_and_ranges_work_like_an_object_store(
    client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """HEAD gives the length without a body; a byte range gives 206 with Content-Range."""
    done = await finished_song(client, clock, {"format": "wav", "sample_rate": 16000})
    url = done["audio_file"]["url"]
    size = done["extra_info"]["music_size"]
    head = await client.head(url)
    assert (head.status_code, head.content, int(head.headers["content-length"])) == (200, b"", size)
    whole = (await client.get(url)).content
    part = await client.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.content == whole[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{size}"
    tail = await client.get(url, headers={"Range": "bytes=-10"})
    assert tail.content == whole[-10:]
    assert (await client.get(url, headers={"Range": f"bytes={size}-"})).status_code == 416
    assert (await client.post(url)).status_code == 405


async def test_a_truncated_download_fails_like_a_cut_connection(
    client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """``truncate_download`` sends half the body then hangs up: httpx reports an incomplete body."""
    done = await finished_song(client, clock, {"format": "wav"})
    client.emulator.inject("truncate_download", route="download")  # type: ignore[attr-defined]
    with pytest.raises(httpx.RemoteProtocolError, match="complete message body"):
        await client.get(done["audio_file"]["url"])
    assert (await client.get(done["audio_file"]["url"])).status_code == 200


async def test_a_prompt_with_a_lone_surrogate_is_served(
    client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """JSON allows an escaped lone surrogate in a prompt: the song is still composed, served
    and listed in the stats as valid JSON."""
    body = (
        b'{"model":"minimax/music-1.5","prompt":"odd \\ud800 prompt here","lyrics":"la la la la"}'
    )
    headers = {**AUTH, "Content-Type": "application/json"}
    generation_id = (await client.post(PATH, content=body, headers=headers)).json()["id"]
    clock.now += 60.0
    done = (await client.get(PATH, params={"generation_id": generation_id}, headers=AUTH)).json()
    assert (await client.get(done["audio_file"]["url"])).status_code == 200
    records = (await client.get("/_emulator/stats", params={"jobs": 1})).json()["job_records"]
    assert records[0]["prompt"] == "odd \ud800 prompt here"
