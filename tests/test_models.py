"""The data model: requests validate themselves, responses tolerate what the docs do not list."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import aimlmusic
from aimlmusic import (
    AimlMusicError,
    AudioFile,
    AudioSetting,
    Generation,
    GenerationError,
    GenerationFailedError,
    GenerationStatus,
    GenerationTimeoutError,
    MusicInfo,
    RequestValidationError,
    SongRequest,
    SongResult,
    SongTimings,
    Usage,
)

PROMPT = "Warm lo-fi ballad, soft piano, brushed drums"
LYRICS = "[Verse]\nStreetlights flicker, the night breeze sighs\n[Chorus]\nIn this small cafe"


def song(**changes: Any) -> SongRequest:
    """A valid request with ``changes`` applied."""
    fields: dict[str, Any] = {"prompt": PROMPT, "lyrics": LYRICS}
    fields.update(changes)
    return SongRequest(**fields)


def rejected(**changes: Any) -> RequestValidationError:
    """The error raised by building a request with ``changes``."""
    with pytest.raises(RequestValidationError) as info:
        song(**changes)
    return info.value


# --------------------------------------------------------------------------- text limits


@pytest.mark.parametrize(
    ("field", "length", "ok"),
    [
        ("prompt", 9, False),
        ("prompt", 10, True),
        ("prompt", 300, True),
        ("prompt", 301, False),
        ("lyrics", 9, False),
        ("lyrics", 10, True),
        ("lyrics", 3000, True),
        ("lyrics", 3001, False),
    ],
)
def test_text_length_boundaries(field: str, length: int, ok: bool) -> None:
    """Prompt accepts exactly 10-300 characters and lyrics exactly 10-3000, inclusive."""
    text = "x" * length
    if ok:
        assert getattr(song(**{field: text}), field) == text
    else:
        error = rejected(**{field: text})
        assert error.field == field


@pytest.mark.parametrize(
    ("field", "length", "limit"),
    [("prompt", 9, "10-300"), ("prompt", 301, "10-300"), ("lyrics", 3001, "10-3000")],
)
def test_length_error_names_field_limit_and_length(field: str, length: int, limit: str) -> None:
    """A length error says which field, what the limit is and how long the value was."""
    error = rejected(**{field: "y" * length})
    assert error.field == field
    assert limit in error.limit
    assert error.got == f"{length} characters"
    message = str(error)
    assert message.startswith(f"{field}:")
    assert limit in message
    assert f"got {length} characters" in message


def test_length_error_does_not_echo_the_text() -> None:
    """A rejected lyric is described by its length, not repeated in the message."""
    secret_lyrics = "confidential unreleased verse " * 101
    error = rejected(lyrics=secret_lyrics)
    assert "confidential" not in str(error)


def test_length_counts_characters_not_bytes() -> None:
    """Limits count Unicode characters: ten accented letters are ten, not twenty bytes."""
    accented = "é" * 10
    assert song(prompt=accented).prompt == accented
    assert rejected(prompt="🎵" * 301).got == "301 characters"


@given(prompt_len=st.integers(0, 400), lyrics_len=st.integers(0, 3200))
def test_any_length_is_accepted_exactly_within_limits(prompt_len: int, lyrics_len: int) -> None:
    """For any two lengths, construction succeeds iff both are inside the documented limits."""
    prompt_ok = 10 <= prompt_len <= 300
    lyrics_ok = 10 <= lyrics_len <= 3000
    if prompt_ok and lyrics_ok:
        SongRequest(prompt="p" * prompt_len, lyrics="l" * lyrics_len)
        return
    with pytest.raises(RequestValidationError) as info:
        SongRequest(prompt="p" * prompt_len, lyrics="l" * lyrics_len)
    # The prompt is checked first, so it is the one named when both are wrong.
    assert info.value.field == ("lyrics" if prompt_ok else "prompt")


@pytest.mark.parametrize("field", ["prompt", "lyrics"])
@pytest.mark.parametrize("value", [None, 12345678901, b"bytes are not text", ["a" * 20]])
def test_text_fields_must_be_strings(field: str, value: object) -> None:
    """A non-string prompt or lyrics is rejected, naming the field and the type it got."""
    error = rejected(**{field: value})
    assert error.field == field
    assert error.got == type(value).__name__


# --------------------------------------------------------------------------- audio settings


@pytest.mark.parametrize("fmt", ["mp3", "wav", "pcm"])
@pytest.mark.parametrize("sample_rate", [None, 16000, 24000, 32000, 44100])
@pytest.mark.parametrize("bitrate", [None, 32000, 64000, 128000, 256000])
def test_every_documented_audio_setting_is_accepted(
    fmt: str, sample_rate: int | None, bitrate: int | None
) -> None:
    """Every combination of documented format, sample rate and bitrate builds."""
    setting = AudioSetting(format=fmt, sample_rate=sample_rate, bitrate=bitrate)  # type: ignore[arg-type]
    assert (setting.format, setting.sample_rate, setting.bitrate) == (fmt, sample_rate, bitrate)
    assert song(audio_setting=setting).format == fmt


@pytest.mark.parametrize(
    ("changes", "field", "got"),
    [
        ({"format": "flac"}, "audio_setting.format", "'flac'"),
        ({"format": "MP3"}, "audio_setting.format", "'MP3'"),
        ({"format": None}, "audio_setting.format", "None"),
        ({"sample_rate": 22050}, "audio_setting.sample_rate", "22050"),
        ({"sample_rate": 0}, "audio_setting.sample_rate", "0"),
        ({"sample_rate": "44100"}, "audio_setting.sample_rate", "'44100'"),
        ({"sample_rate": 44100.0}, "audio_setting.sample_rate", "44100.0"),
        ({"sample_rate": True}, "audio_setting.sample_rate", "True"),
        ({"bitrate": 320000}, "audio_setting.bitrate", "320000"),
        ({"bitrate": 256000.0}, "audio_setting.bitrate", "256000.0"),
        ({"bitrate": False}, "audio_setting.bitrate", "False"),
    ],
)
def test_audio_setting_rejects_undocumented_values(
    changes: dict[str, Any], field: str, got: str
) -> None:
    """An undocumented or wrongly typed format/rate/bitrate (bool and float included) is refused."""
    with pytest.raises(RequestValidationError) as info:
        AudioSetting(**changes)
    error = info.value
    assert error.field == field
    assert error.got == got
    assert error.limit.startswith("must be one of")
    assert f"got {got}" in str(error)


def test_audio_setting_error_lists_the_allowed_values() -> None:
    """The limit in a sample-rate error lists every documented rate."""
    with pytest.raises(RequestValidationError) as info:
        AudioSetting(sample_rate=48000)
    for rate in ("16000", "24000", "32000", "44100"):
        assert rate in info.value.limit


def test_audio_setting_always_has_a_format() -> None:
    """The API requires ``format`` inside ``audio_setting``; it defaults to mp3."""
    assert AudioSetting().format == "mp3"
    assert AudioSetting(sample_rate=44100).format == "mp3"


def test_audio_setting_must_be_an_audio_setting() -> None:
    """A plain dict in place of an AudioSetting is rejected rather than sent unchecked."""
    error = rejected(audio_setting={"format": "mp3"})
    assert error.field == "audio_setting"
    assert error.got == "dict"


# --------------------------------------------------------------------------- the request


def test_model_defaults_to_music_1_5() -> None:
    """Without a model the request targets minimax/music-1.5."""
    assert song().model == "minimax/music-1.5"


def test_model_must_be_a_non_empty_string() -> None:
    """An empty or non-string model is refused; another model name is passed through."""
    assert rejected(model="").field == "model"
    assert rejected(model=None).field == "model"
    assert song(model="minimax/music-2").model == "minimax/music-2"


def test_format_defaults_to_the_apis_mp3() -> None:
    """A request without audio settings is delivered as mp3, the API's default."""
    assert song().format == "mp3"
    assert song(audio_setting=AudioSetting(format="wav")).format == "wav"


def test_requests_are_frozen_and_hashable() -> None:
    """Requests are immutable values: equal fields, equal requests, usable as keys."""
    first = song(audio_setting=AudioSetting(format="wav", bitrate=128000))
    second = song(audio_setting=AudioSetting(format="wav", bitrate=128000))
    assert first == second
    assert len({first, second}) == 1
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        first.prompt = "changed after validation"  # type: ignore[misc]


def test_evolve_revalidates() -> None:
    """attrs.evolve cannot smuggle an invalid value past validation."""
    with pytest.raises(RequestValidationError):
        attrs.evolve(song(), lyrics="short")


def test_request_repr_shows_lyrics_length_only() -> None:
    """repr() shows the prompt but only the length of the (possibly long) lyrics."""
    text = repr(song())
    assert PROMPT in text
    assert f"<{len(LYRICS)} chars>" in text
    assert "Streetlights" not in text


def test_validation_error_is_a_value_error_in_the_tree() -> None:
    """RequestValidationError is both an AimlMusicError and a ValueError."""
    error = rejected(prompt="short")
    assert isinstance(error, AimlMusicError)
    assert isinstance(error, ValueError)


# --------------------------------------------------------------------------- statuses


@pytest.mark.parametrize(
    ("text", "terminal"),
    [("queued", False), ("generating", False), ("completed", True), ("error", True)],
)
def test_documented_statuses(text: str, terminal: bool) -> None:
    """The four documented statuses are members; only completed and error are terminal."""
    status = GenerationStatus(text)
    assert status in list(GenerationStatus)
    assert status.is_documented
    assert status.is_terminal is terminal
    assert status == text
    assert str(status) == text


def test_waiting_is_an_undocumented_pending_status() -> None:
    """``waiting`` (seen in the docs' example loop) is tolerated: pending, equal to its text."""
    waiting = GenerationStatus("waiting")
    assert isinstance(waiting, GenerationStatus)
    assert waiting == "waiting"
    assert str(waiting) == "waiting"
    assert f"{waiting}" == "waiting"
    assert waiting.value == "waiting"
    assert not waiting.is_terminal
    assert not waiting.is_documented
    assert waiting not in list(GenerationStatus)
    assert GenerationStatus("waiting") == waiting
    assert hash(GenerationStatus("waiting")) == hash(waiting)


#: The documented statuses' texts.
DOCUMENTED = {"queued", "generating", "completed", "error"}


def _names_a_documented_status(text: str) -> bool:
    """True for a documented status in any ASCII letter case, padded with JSON whitespace."""
    trimmed = text.strip(" \t\r\n")
    return trimmed.isascii() and trimmed.lower() in DOCUMENTED


@pytest.mark.parametrize(
    ("text", "member"),
    [
        ("COMPLETED", GenerationStatus.COMPLETED),
        ("Completed", GenerationStatus.COMPLETED),
        ("cOmPlEtEd", GenerationStatus.COMPLETED),
        (" completed ", GenerationStatus.COMPLETED),
        ("\tCOMPLETED\r\n", GenerationStatus.COMPLETED),
        ("ERROR", GenerationStatus.ERROR),
        ("Queued", GenerationStatus.QUEUED),
        ("GENERATING", GenerationStatus.GENERATING),
    ],
)
def test_a_documented_status_in_another_letter_case_is_that_status(
    text: str, member: GenerationStatus
) -> None:
    """A documented status in any ASCII letter case, with JSON whitespace around it, is the
    documented member itself: documented, terminal or not as that member is."""
    status = GenerationStatus(text)
    assert status is member
    assert status.is_documented
    assert status.is_terminal is member.is_terminal
    assert str(status) == member.value


@pytest.mark.parametrize(
    "text",
    ["complete", "COMPLETED.", "completed\u00a0", "GENERAT\u0130NG", "comp leted", "WAITING", ""],
)
def test_nothing_else_is_taken_for_a_documented_status(text: str) -> None:
    """Other texts (other words, non-JSON whitespace, a non-ASCII look-alike) stay
    undocumented, pending and equal to their own text."""
    status = GenerationStatus(text)
    assert status == text
    assert not status.is_documented
    assert not status.is_terminal


@given(st.text().filter(lambda s: not _names_a_documented_status(s)))
def test_any_unknown_status_text_is_pending(text: str) -> None:
    """Every string outside the documented enum becomes a non-terminal, undocumented status."""
    status = GenerationStatus(text)
    assert status == text
    assert not status.is_terminal
    assert not status.is_documented


@pytest.mark.parametrize("value", [3, None, 1.5])
def test_status_must_be_text(value: object) -> None:
    """A status that is not a string is not silently accepted as a pseudo-member."""
    with pytest.raises(ValueError, match="is not a valid GenerationStatus"):
        GenerationStatus(value)


# --------------------------------------------------------------------------- generations


def test_generation_properties() -> None:
    """A completed generation exposes finished, credits used, trace id and music info."""
    generation = Generation(
        id="abc:minimax/music-1.5",
        status=GenerationStatus.COMPLETED,
        audio_file=AudioFile(url="https://files.example/a.mp3"),
        usage=Usage(credits_used=12.5),
        extra={
            "trace_id": "t-1",
            "extra_info": {
                "music_duration": 93022,
                "music_sample_rate": 44100.0,
                "music_channel": 2,
                "bitrate": 256000,
                "music_size": 0,
            },
        },
    )
    assert generation.is_finished
    assert generation.credits_used == 12.5
    assert generation.trace_id == "t-1"
    assert generation.music_info == MusicInfo(
        duration_ms=93022, sample_rate=44100, channels=2, bitrate=256000, size=0
    )
    assert generation.music_info is not None
    assert generation.music_info.duration == pytest.approx(93.022)


@pytest.mark.parametrize(
    "value", [10**19, 10**400, 2**53 + 1, -1, 1e300, float("nan"), float("inf")]
)
def test_an_absurd_figure_in_extra_info_reads_as_none(value: object) -> None:
    """A figure of ``extra_info`` no real song has (past 2**53, negative, not finite) reads
    as None: 10**19 overflowed the SQLite journal and 10**400 the duration in seconds,
    crashing every catalog run that polled the song."""
    raw = {"music_duration": value, "music_sample_rate": value, "music_size": value}
    generation = Generation(id="g", status=GenerationStatus.COMPLETED, extra={"extra_info": raw})
    info = generation.music_info
    assert info is not None
    assert (info.duration_ms, info.sample_rate, info.size, info.duration) == (None,) * 4


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"trace_id": 123, "extra_info": "not an object"},
        {"trace_id": None, "extra_info": None},
        {"extra_info": []},
    ],
)
def test_missing_or_odd_extras_read_as_none(extra: dict[str, Any]) -> None:
    """Absent or oddly typed ``trace_id``/``extra_info`` read as None instead of raising."""
    generation = Generation(id="g", status=GenerationStatus("waiting"), extra=extra)
    assert generation.trace_id is None
    assert generation.music_info is None
    assert generation.credits_used is None
    assert not generation.is_finished


def test_music_info_ignores_values_that_are_not_whole_numbers() -> None:
    """Booleans, fractions and strings in ``extra_info`` become None, not wrong numbers."""
    generation = Generation(
        id="g",
        status=GenerationStatus.COMPLETED,
        extra={
            "extra_info": {
                "music_duration": 1.5,
                "music_sample_rate": "44100",
                "music_channel": True,
            }
        },
    )
    info = generation.music_info
    assert info == MusicInfo()
    assert info is not None
    assert info.duration is None


def test_generation_extra_is_read_only() -> None:
    """The kept unknown fields cannot be changed through the frozen model."""
    source = {"trace_id": "t"}
    generation = Generation(id="g", status=GenerationStatus.QUEUED, extra=source)
    source["trace_id"] = "changed"
    assert generation.trace_id == "t"
    with pytest.raises(TypeError):
        generation.extra["trace_id"] = "x"  # type: ignore[index]


def test_generations_are_hashable_values() -> None:
    """Frozen generations hash despite their extras mapping; equal generations hash alike."""
    first = Generation(
        id="g",
        status=GenerationStatus("waiting"),
        audio_file=AudioFile(url="https://files.example/a.mp3", extra={"size": [1]}),
        usage=Usage(credits_used=1.0, extra={"unit": {}}),
        extra={"trace_id": "t", "extra_info": {}},
    )
    second = attrs.evolve(first)
    assert first == second
    assert len({first, second}) == 1
    assert first != attrs.evolve(first, extra={})


def test_generation_failed_error_carries_the_api_error() -> None:
    """GenerationFailedError carries the id, error name and message of the failed generation."""
    failed = Generation(
        id="gen-1",
        status=GenerationStatus.ERROR,
        error=GenerationError(name="ContentPolicy", message="lyrics refused"),
    )
    error = GenerationFailedError(failed)
    assert (error.generation_id, error.error_name, error.error_message) == (
        "gen-1",
        "ContentPolicy",
        "lyrics refused",
    )
    assert "gen-1" in str(error)
    assert "ContentPolicy: lyrics refused" in str(error)


def test_generation_timeout_error_is_a_timeout_error() -> None:
    """GenerationTimeoutError is a TimeoutError that names the id and the last status seen."""
    last = Generation(id="gen-2", status=GenerationStatus.GENERATING)
    error = GenerationTimeoutError("gen-2", 600.0, last_seen=last)
    assert isinstance(error, TimeoutError)
    assert error.generation_id == "gen-2"
    assert "gen-2" in str(error)
    assert "'generating'" in str(error)


# --------------------------------------------------------------------------- batch results


def test_song_timings_total() -> None:
    """``total`` is noticed minus submitted, and None until both are known."""
    assert SongTimings(submitted_at=10.0, noticed_at=70.5).total == pytest.approx(60.5)
    assert SongTimings(submitted_at=10.0).total is None


def test_song_result_ok_and_generation_id() -> None:
    """A result is ok only with a generation and no error; a failure keeps the last generation."""
    request = song()
    done = Generation(id="gen-3", status=GenerationStatus.COMPLETED)
    assert SongResult(key="a", request=request, generation=done).ok
    timed_out = SongResult(
        key="b",
        request=request,
        generation=done,
        error=GenerationTimeoutError("gen-3", 1.0),
    )
    assert not timed_out.ok
    assert timed_out.generation_id == "gen-3"
    never_submitted = SongResult(key="c", request=request)
    assert not never_submitted.ok
    assert never_submitted.generation_id is None


def test_public_names_are_exported() -> None:
    """Every model of the contract is importable from the package and listed in ``__all__``."""
    for name in (
        "SongRequest",
        "AudioSetting",
        "Generation",
        "GenerationStatus",
        "AudioFile",
        "GenerationError",
        "SongResult",
        "Usage",
    ):
        assert name in aimlmusic.__all__
        assert getattr(aimlmusic, name) is not None
