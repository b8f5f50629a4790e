"""Hostile input on the way out: whatever a caller builds a request from, the only possible
failure is :class:`RequestValidationError`, and anything accepted is a body the API's schema
accepts and that can be sent (valid UTF-8 JSON)."""

from __future__ import annotations

import decimal
import enum
import fractions
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aimlmusic import AudioSetting, RequestValidationError, SongRequest
from aimlmusic._converter import request_to_wire
from aimlmusic._limits import DEFAULT_MODEL

SPEC = Path(__file__).resolve().parents[1] / "data" / "openapi.json"
REQUEST_SCHEMA = json.loads(SPEC.read_text(encoding="utf-8"))["paths"]["/v2/generate/audio"][
    "post"
]["requestBody"]["content"]["application/json"]["schema"]

FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Rate(enum.IntEnum):
    """An int subclass a caller might use for settings."""

    CD = 44100
    HIGH = 256000


class Markup(str):
    """A str subclass, as template libraries hand out."""

    __slots__ = ()


class Unhashable:
    """An object that refuses hashing and equality with anything else."""

    __hash__ = None  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        return other is self


# Characters that break naive code: NUL, controls, bidi overrides, lone surrogates (not
# encodable as UTF-8), astral emoji, combining marks, the BOM, a fullwidth solidus.
NASTY_CHARS = st.sampled_from(
    ["\x00", "\x1b", "\u202e", "\ud800", "\udfff", "\U0001f3b5", "\u0301", "\ufeff", "\uff0f"]
)
CHARS = st.one_of(st.characters(), NASTY_CHARS)


@st.composite
def texts(draw: st.DrawFn, low: int, high: int) -> str:
    """Text whose length is drawn around the limits ``low`` and ``high``, nasty characters
    included, built from a repeated fragment so long values stay cheap to draw."""
    length = draw(
        st.one_of(
            st.integers(low, high),  # valid, so accepted requests get checked too
            st.integers(0, high + 20),
            st.sampled_from([0, 1, low - 1, low, low + 1, high - 1, high, high + 1]),
        )
    )
    # Joined from a list: st.text() never draws surrogates, whatever its alphabet says.
    fragment = "".join(draw(st.lists(CHARS, min_size=1, max_size=12)))
    text = (fragment * (length // len(fragment) + 1))[:length]
    return draw(st.one_of(st.just(text), st.builds(Markup, st.just(text))))


def mostly(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``common`` three times in four, ``rare`` otherwise (a plain ``one_of`` would weigh
    each of ``rare``'s many branches like ``common``, and almost nothing would be valid)."""
    return st.integers(0, 3).flatmap(lambda n: rare if n == 0 else common)


def junk() -> st.SearchStrategy[Any]:
    """Values of every wrong type a caller might pass by mistake."""
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.complex_numbers(),
        st.binary(max_size=20),
        st.text(CHARS, max_size=20),
        st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
        st.sets(st.integers(), max_size=3),
        st.just(decimal.Decimal("44100")),
        st.just(fractions.Fraction(44100, 1)),
        st.just(bytearray(b"mp3")),
        st.just(object()),
        st.builds(Unhashable),
        st.just(Ellipsis),
        st.just(float("nan")),
    )


def sample_rates() -> st.SearchStrategy[Any]:
    """Valid, near-valid and wrong sample rates."""
    return mostly(
        st.sampled_from([None, 16000, 24000, 32000, 44100, 44100.0, 48000, 0, -44100]),
        st.one_of(st.sampled_from([Rate.CD, True, "44100", 2**80]), junk()),
    )


def bitrates() -> st.SearchStrategy[Any]:
    """Valid, near-valid and wrong bitrates."""
    return mostly(
        st.sampled_from([None, 32000, 64000, 128000, 256000, 256000.0, 320000, Rate.HIGH]),
        junk(),
    )


def formats() -> st.SearchStrategy[Any]:
    """Valid, near-valid and wrong formats."""
    return mostly(
        st.sampled_from(["mp3", "wav", "pcm", "MP3", " mp3", "flac", "", Markup("wav")]), junk()
    )


def setting_kwargs() -> st.SearchStrategy[dict[str, Any]]:
    """Keyword arguments for AudioSetting, any of them missing."""
    return st.fixed_dictionaries(
        {}, optional={"format": formats(), "sample_rate": sample_rates(), "bitrate": bitrates()}
    )


def audio_settings() -> st.SearchStrategy[Any]:
    """What a caller might pass as ``audio_setting``: a real one, a dict, junk."""
    valid = st.builds(
        AudioSetting,
        format=st.sampled_from(["mp3", "wav", "pcm"]),
        sample_rate=st.sampled_from([None, 16000, 44100]),
        bitrate=st.sampled_from([None, 32000, 256000]),
    )
    return mostly(st.one_of(st.none(), valid, setting_kwargs()), junk())


def song_kwargs() -> st.SearchStrategy[dict[str, Any]]:
    """Keyword arguments for SongRequest: each field valid, near a limit, or junk."""
    return st.fixed_dictionaries(
        {
            # Mostly text, so that many requests are accepted and their bodies checked.
            "prompt": mostly(texts(10, 300), junk()),
            "lyrics": mostly(texts(10, 3000), junk()),
        },
        optional={
            "audio_setting": audio_settings(),
            "model": mostly(st.sampled_from([DEFAULT_MODEL, "", " ", "other/model"]), junk()),
        },
    )


def assert_sendable(request: SongRequest) -> None:
    """An accepted request becomes a body the schema accepts, encodable as UTF-8 JSON."""
    body = request_to_wire(request)
    encoded = json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")
    decoded = json.loads(encoded)
    schema_body = {**decoded, "model": DEFAULT_MODEL}  # the model is a free choice of the caller
    jsonschema.validate(schema_body, REQUEST_SCHEMA)
    assert isinstance(decoded["model"], str)
    assert decoded["model"]


@FUZZ
@given(kwargs=setting_kwargs())
def test_audio_setting_fails_only_with_the_validation_error(kwargs: dict[str, Any]) -> None:
    """Any AudioSetting arguments either build a documented setting or raise
    RequestValidationError naming an audio_setting field; nothing else escapes."""
    try:
        setting = AudioSetting(**kwargs)
    except RequestValidationError as exc:
        refused: RequestValidationError | None = exc
    else:
        refused = None
    if refused is not None:
        assert refused.field.startswith("audio_setting.")
        assert str(refused)
        return
    assert setting.format in ("mp3", "wav", "pcm")
    assert setting.sample_rate in (None, 16000, 24000, 32000, 44100)
    assert setting.bitrate in (None, 32000, 64000, 128000, 256000)


@FUZZ
@given(kwargs=song_kwargs(), build_setting=st.booleans())
def test_song_request_fails_only_with_the_validation_error(
    kwargs: dict[str, Any], build_setting: bool
) -> None:
    """Any SongRequest arguments either build a request whose wire body the schema accepts
    and that encodes as UTF-8 JSON, or raise RequestValidationError; nothing else escapes."""
    setting = kwargs.get("audio_setting")
    if (
        build_setting
        and isinstance(setting, dict)
        and set(setting) <= {"format", "sample_rate", "bitrate"}
    ):
        # The dict goes through AudioSetting first, as a careful caller does.
        try:
            kwargs = {**kwargs, "audio_setting": AudioSetting(**setting)}
        except RequestValidationError:
            return
    try:
        request = SongRequest(**kwargs)
    except RequestValidationError as exc:
        refused: RequestValidationError | None = exc
    else:
        refused = None
    if refused is not None:
        assert refused.field in {"prompt", "lyrics", "audio_setting", "model"}
        assert refused.limit
        return
    assert_sendable(request)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prompt", "A calm song \ud800 with a lone surrogate"),
        ("lyrics", "[Verse]\nla la la \udfff la la"),
    ],
)
def test_text_that_cannot_be_sent_is_refused_on_construction(field: str, value: str) -> None:
    """Text with a lone surrogate (not encodable as UTF-8, so unsendable) is refused with
    RequestValidationError naming the field, before any credit could be spent."""
    fields = {"prompt": "A calm piano song", "lyrics": "[Verse]\nla la la la", field: value}
    with pytest.raises(RequestValidationError) as info:
        SongRequest(**fields)
    assert info.value.field == field


@pytest.mark.parametrize(
    "value", ["\x00" * 10, "\u202e" * 10, "\U0001f3b5" * 10, "a\u0301" * 5, "\ufeff" * 10]
)
def test_odd_but_valid_unicode_is_accepted_and_sendable(value: str) -> None:
    """NUL, bidi overrides, astral emoji, combining marks and BOMs count as characters
    (code points, as the schema's minLength does) and are sent intact."""
    request = SongRequest(prompt=value, lyrics=value)
    assert_sendable(request)
    assert request_to_wire(request)["prompt"] == value
