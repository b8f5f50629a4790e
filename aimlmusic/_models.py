"""The data model: frozen attrs classes with no knowledge of the wire format.

``_converter`` maps these to and from JSON. Requests validate themselves on construction so a
bad song raises before any credit is spent; responses are built leniently by the converter.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import attrs

from . import _limits
from ._errors import AimlMusicError, RequestValidationError

__all__ = [
    "AudioFile",
    "AudioFormat",
    "AudioSetting",
    "Generation",
    "GenerationError",
    "GenerationStatus",
    "MusicInfo",
    "SongRequest",
    "SongResult",
    "SongTimings",
    "Usage",
]

AudioFormat = Literal["mp3", "wav", "pcm"]


class _ReadOnlyMapping(Mapping[str, Any]):
    """A read-only copy of a mapping that, unlike ``MappingProxyType``, pickles and copies
    (results travel through process pools and task queues)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self._data = dict(data or {})

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return repr(self._data)

    def __reduce__(self) -> tuple[type[_ReadOnlyMapping], tuple[dict[str, Any]]]:
        return (type(self), (self._data,))


_EMPTY: Mapping[str, Any] = _ReadOnlyMapping()


def _frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return _ReadOnlyMapping(value) if value else _EMPTY


# --------------------------------------------------------------------------- requests


def _check_text(field: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, str):
        raise RequestValidationError(
            field, f"must be a string of {low}-{high} characters", type(value).__name__
        )
    n = len(value)
    if n < low or n > high:
        raise RequestValidationError(
            field, f"must be {low}-{high} characters long", f"{n} character{'s' if n != 1 else ''}"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        # A lone surrogate cannot be sent as UTF-8 JSON: refuse it before any credit is spent.
        raise RequestValidationError(
            field, "must be valid Unicode text", f"an unpaired surrogate at index {exc.start}"
        ) from None


def _check_choice(field: str, value: object, choices: tuple[object, ...]) -> None:
    # bool is an int subclass: True must not pass for a sample rate. And 44100.0 == 44100, but
    # it would be sent as a JSON float where the API's schema says integer.
    kind = type(choices[0])
    if isinstance(value, bool) or not isinstance(value, kind) or value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise RequestValidationError(field, f"must be one of {allowed}", repr(value))


@attrs.frozen
class AudioSetting:
    """Output settings: ``format`` (required by the API once the object is sent), optional
    ``sample_rate`` in Hz and ``bitrate`` in bit/s, each restricted to the documented values."""

    format: AudioFormat = "mp3"
    sample_rate: int | None = None
    bitrate: int | None = None

    def __attrs_post_init__(self) -> None:
        _check_choice("audio_setting.format", self.format, _limits.AUDIO_FORMATS)
        if self.sample_rate is not None:
            _check_choice("audio_setting.sample_rate", self.sample_rate, _limits.SAMPLE_RATES)
        if self.bitrate is not None:
            _check_choice("audio_setting.bitrate", self.bitrate, _limits.BITRATES)


@attrs.frozen
class SongRequest:
    """One song to generate: a style ``prompt`` (10-300 characters) and ``lyrics``
    (10-3000 characters, ``\\n`` between lines, optional ``[Verse]``/``[Chorus]`` tags).

    Validated on construction: a value outside the documented limits raises
    :class:`~aimlmusic.RequestValidationError` naming the field, the limit and what it got.
    """

    prompt: str
    lyrics: str = attrs.field(repr=lambda s: f"<{len(s)} chars>")
    audio_setting: AudioSetting | None = None
    model: str = _limits.DEFAULT_MODEL

    def __attrs_post_init__(self) -> None:
        _check_text("prompt", self.prompt, _limits.PROMPT_MIN_CHARS, _limits.PROMPT_MAX_CHARS)
        _check_text("lyrics", self.lyrics, _limits.LYRICS_MIN_CHARS, _limits.LYRICS_MAX_CHARS)
        if self.audio_setting is not None and not isinstance(self.audio_setting, AudioSetting):
            raise RequestValidationError(
                "audio_setting", "must be an AudioSetting", type(self.audio_setting).__name__
            )
        if not isinstance(self.model, str) or not self.model:
            raise RequestValidationError("model", "must be a non-empty string", repr(self.model))

    @property
    def format(self) -> AudioFormat:
        """The audio format the song will be delivered in (the API's default is mp3)."""
        return self.audio_setting.format if self.audio_setting is not None else "mp3"


# --------------------------------------------------------------------------- responses


#: The characters JSON itself treats as insignificant whitespace, forgiven around a status.
_JSON_WHITESPACE = " \t\r\n"


def status_word(text: str) -> str:
    """``text`` as a status word: lower case without surrounding JSON whitespace when it is
    ASCII (Unicode case folding would let other characters, such as the Kelvin sign, stand
    in for letters); any other text as it is."""
    trimmed = text.strip(_JSON_WHITESPACE)
    return trimmed.lower() if trimmed.isascii() else text


class GenerationStatus(str, enum.Enum):
    """The status of a generation.

    The documented values are members, matched whatever their ASCII letter case and
    surrounding JSON whitespace (``"COMPLETED"`` is :attr:`COMPLETED`). Any other string the
    API sends (the documented example's loop also expects ``"waiting"``) becomes a
    non-member value that compares equal to its text and counts as *not finished yet*, so
    an undocumented status never crashes a client.
    """

    QUEUED = "queued"
    GENERATING = "generating"
    COMPLETED = "completed"
    ERROR = "error"

    @classmethod
    def _missing_(cls, value: object) -> GenerationStatus | None:
        if not isinstance(value, str):
            return None
        # "COMPLETED" or " completed " can only mean the documented status: read as an
        # unknown one, a finished song would be polled until its deadline. Only ASCII letter
        # case and JSON's own whitespace are forgiven (Unicode case folding would let other
        # characters, such as the Kelvin sign, stand in for letters).
        member = cls._value2member_map_.get(status_word(value))
        if member is not None:
            return member  # type: ignore[return-value]
        # A pseudo-member: an instance of the enum that is not listed in it.
        pseudo = str.__new__(cls, value)
        pseudo._name_ = value.upper()
        pseudo._value_ = value
        return pseudo

    def __str__(self) -> str:
        return str(self.value)

    @property
    def word(self) -> str:
        """The status as the word it stands for: lower case, without surrounding JSON
        whitespace, for a status in ASCII; any other text as it is."""
        return status_word(self.value)

    @property
    def is_terminal(self) -> bool:
        """True for ``completed`` and ``error``, after which polling stops."""
        return self in (GenerationStatus.COMPLETED, GenerationStatus.ERROR)

    @property
    def is_documented(self) -> bool:
        """False for a status the API documentation does not list (such as ``waiting``)."""
        return (
            self.value in type(self)._value2member_map_
            and type(self)._value2member_map_[self.value] is self
        )


@attrs.frozen
class AudioFile:
    """Where the finished song can be downloaded: a presigned ``url`` that expires."""

    url: str
    # hash=False: a mapping is unhashable, yet frozen models must hash (equality still counts it).
    extra: Mapping[str, Any] = attrs.field(
        default=_EMPTY, converter=_frozen_mapping, repr=False, hash=False
    )


@attrs.frozen
class GenerationError:
    """The API's description of why a generation failed."""

    name: str
    message: str
    # hash=False: a mapping is unhashable, yet frozen models must hash (equality still counts it).
    extra: Mapping[str, Any] = attrs.field(
        default=_EMPTY, converter=_frozen_mapping, repr=False, hash=False
    )


@attrs.frozen
class Usage:
    """What the generation cost."""

    credits_used: float
    # hash=False: a mapping is unhashable, yet frozen models must hash (equality still counts it).
    extra: Mapping[str, Any] = attrs.field(
        default=_EMPTY, converter=_frozen_mapping, repr=False, hash=False
    )


@attrs.frozen
class MusicInfo:
    """Facts about the delivered audio from the undocumented ``extra_info`` object.

    Every field is optional because the schema does not promise any of them.
    """

    duration_ms: int | None = None
    sample_rate: int | None = None
    channels: int | None = None
    bitrate: int | None = None
    size: int | None = None

    @property
    def duration(self) -> float | None:
        """Duration in seconds, when reported."""
        return self.duration_ms / 1000 if self.duration_ms is not None else None


#: The largest figure ``extra_info`` may report (2**53, the largest integer a JSON number
#: holds exactly): a larger one is no real duration, rate or size, and it would overflow a
#: float or a SQLite integer downstream.
MAX_INFO_VALUE = 2**53


def _int_or_none(value: object) -> int | None:
    """``value`` as a whole number in ``[0, MAX_INFO_VALUE]``, or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and 0 <= value <= MAX_INFO_VALUE:
        return value
    return None


@attrs.frozen
class Generation:
    """A generation as the API last reported it.

    ``extra`` keeps every response field the schema does not list (the documented example
    returns ``extra_info`` and ``trace_id``); :attr:`music_info` and :attr:`trace_id` read them.
    """

    id: str
    status: GenerationStatus
    audio_file: AudioFile | None = None
    error: GenerationError | None = None
    usage: Usage | None = None
    # hash=False: a mapping is unhashable, yet frozen models must hash (equality still counts it).
    extra: Mapping[str, Any] = attrs.field(
        default=_EMPTY, converter=_frozen_mapping, repr=False, hash=False
    )

    @property
    def is_finished(self) -> bool:
        """True when the status is terminal (``completed`` or ``error``)."""
        return self.status.is_terminal

    @property
    def credits_used(self) -> float | None:
        """Credits the generation consumed, when the API reported them."""
        return self.usage.credits_used if self.usage is not None else None

    @property
    def trace_id(self) -> str | None:
        """The undocumented ``trace_id`` the API returns, useful when reporting a problem."""
        value = self.extra.get("trace_id")
        return value if isinstance(value, str) else None

    @property
    def music_info(self) -> MusicInfo | None:
        """The undocumented ``extra_info`` (duration, sample rate, channels, bitrate, size)."""
        raw = self.extra.get("extra_info")
        if not isinstance(raw, Mapping):
            return None
        return MusicInfo(
            duration_ms=_int_or_none(raw.get("music_duration")),
            sample_rate=_int_or_none(raw.get("music_sample_rate")),
            channels=_int_or_none(raw.get("music_channel")),
            bitrate=_int_or_none(raw.get("bitrate")),
            size=_int_or_none(raw.get("music_size")),
        )


# --------------------------------------------------------------------------- batch results


@attrs.frozen
class SongTimings:
    """When things happened to one song, in seconds of the client's clock (``Clock.now()``:
    the event loop's clock by default, API time under a :class:`ScaledClock`), or ``None``
    when it did not happen or was not seen.

    ``started_at`` is the first poll that saw ``generating``; ``completed_at`` is the
    scheduler's best estimate of when the song finished (between the last unfinished poll and
    the poll that saw it finished); ``noticed_at`` is when that poll returned.
    """

    submitted_at: float | None = None
    started_at: float | None = None
    completed_at: float | None = None
    noticed_at: float | None = None

    @property
    def total(self) -> float | None:
        """Seconds from submission to noticing the result."""
        if self.submitted_at is None or self.noticed_at is None:
            return None
        return self.noticed_at - self.submitted_at


@attrs.frozen
class SongResult:
    """The outcome of one song in :meth:`~aimlmusic.AsyncMusicClient.generate_many`.

    Exactly one of ``generation`` (on success, status ``completed``) and ``error`` is
    meaningful for deciding what happened: ``ok`` is true when there is no error. A failed
    song may still carry the last ``generation`` seen (for example after a deadline).
    """

    key: str
    request: SongRequest
    generation: Generation | None = None
    error: AimlMusicError | None = None
    timings: SongTimings = SongTimings()
    polls: int = 0
    retries: int = 0

    @property
    def ok(self) -> bool:
        """True when the song completed and its audio can be downloaded."""
        return self.error is None and self.generation is not None

    @property
    def generation_id(self) -> str | None:
        """The generation id, when the submission got one."""
        return self.generation.id if self.generation is not None else None
