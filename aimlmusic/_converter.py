"""The one cattrs converter: wire JSON <-> models.

Lenient on the way in (unknown keys are kept in ``extra``, unknown statuses are tolerated,
documented ones are read in any ASCII letter case, ``null`` optional objects are ``None``),
strict about what the schema requires (``id``, ``status``, ``audio_file.url``...), and terse
on the way out (``None`` is omitted). Anything it cannot understand becomes
:class:`~aimlmusic.ResponseValidationError` with a readable reason.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, override

from ._errors import ResponseValidationError
from ._models import (
    AudioFile,
    AudioSetting,
    Generation,
    GenerationError,
    GenerationStatus,
    SongRequest,
    Usage,
)

__all__ = [
    "decode_json",
    "generation_from_json",
    "generation_to_wire",
    "request_to_wire",
    "structure_generation",
    "unsendable_id_problem",
]

T = TypeVar("T")

converter = cattrs.Converter(forbid_extra_keys=False)

#: How much of an unparseable body is kept in the error (bodies can be huge).
BODY_EXCERPT_CHARS = 500
#: How deep the finiteness check follows nested JSON; deeper answers are refused outright.
MAX_CHECKED_DEPTH = 64
#: Numbers of an answer that count or measure something, so can never be negative
#: (``meta.usage.credits_used`` and the undocumented ``extra_info`` sizes and durations).
NON_NEGATIVE_FIELDS = (
    ("meta", "usage", "credits_used"),
    ("extra_info", "music_duration"),
    ("extra_info", "music_sample_rate"),
    ("extra_info", "music_channel"),
    ("extra_info", "bitrate"),
    ("extra_info", "music_size"),
)


def _structure_status(value: Any, _: type) -> GenerationStatus:
    if not isinstance(value, str):
        # _field() prefixes the field name: "status: expected a string, got int".
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return GenerationStatus(value)


def _structure_str(value: Any, _: type) -> str:
    # cattrs would turn 123 into "123"; a wrong type in a response is a wrong response.
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _structure_float(value: Any, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        raise ValueError("the number is too large") from None
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {number!r}")
    return number


converter.register_structure_hook(GenerationStatus, _structure_status)
converter.register_structure_hook(str, _structure_str)
converter.register_structure_hook(float, _structure_float)


def _lenient(cls: type[T], wire_names: Mapping[str, str] | None = None) -> None:
    """Register a structure hook for ``cls`` that keeps unknown keys in its ``extra`` field."""
    renames = dict(wire_names or {})
    overrides: dict[str, Any] = {"extra": override(omit=True)}
    overrides.update({name: override(rename=wire) for name, wire in renames.items()})
    base: Callable[[Mapping[str, Any], Any], T] = make_dict_structure_fn(
        cls, converter, **overrides
    )
    known = {renames.get(a.name, a.name) for a in attrs.fields(cls) if a.name != "extra"}  # type: ignore[arg-type]

    def hook(value: Any, _: type) -> T:
        if not isinstance(value, Mapping):
            raise TypeError(f"expected an object, got {type(value).__name__}")
        obj = base(value, cls)
        unknown = {k: v for k, v in value.items() if k not in known}
        return attrs.evolve(obj, extra=unknown) if unknown else obj  # type: ignore[misc]

    converter.register_structure_hook(cls, hook)


_lenient(AudioFile)
_lenient(GenerationError)
_lenient(Usage)


def _structure_generation(value: Any, _: type) -> Generation:
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a JSON object, got {type(value).__name__}")
    for required in ("id", "status"):
        if required not in value:
            raise KeyError(required)
    meta = value.get("meta")
    if meta is not None and not isinstance(meta, Mapping):
        raise TypeError(f"meta must be an object, got {type(meta).__name__}")
    usage_raw = meta.get("usage") if meta else None
    known = {"id", "status", "audio_file", "error", "meta"}
    extra = {k: v for k, v in value.items() if k not in known}
    if meta:
        meta_extra = {k: v for k, v in meta.items() if k != "usage"}
        if meta_extra:
            extra["meta"] = meta_extra
    return Generation(
        id=_field("id", value["id"], _structure_str),
        status=_field("status", value["status"], _structure_status),
        audio_file=_optional(value.get("audio_file"), AudioFile, "audio_file"),
        error=_optional(value.get("error"), GenerationError, "error"),
        usage=_optional(usage_raw, Usage, "meta.usage"),
        extra=extra,
    )


def _field(name: str, value: Any, hook: Callable[[Any, Any], T]) -> T:
    try:
        return hook(value, None)
    except TypeError as exc:
        raise TypeError(f"{name}: {exc}") from exc


def _optional(value: Any, cls: type[T], where: str) -> T | None:
    if value is None:
        return None
    try:
        return converter.structure(value, cls)
    except Exception as exc:
        raise ValueError(f"{where}: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, cattrs.BaseValidationError):
        return "; ".join(cattrs.transform_error(exc))
    if isinstance(exc, KeyError):
        return f"required field {exc.args[0]!r} is missing"
    return str(exc)


converter.register_structure_hook(Generation, _structure_generation)


def structure_generation(data: Any) -> Generation:
    """Build a :class:`Generation` from decoded JSON or raise ``ResponseValidationError``.

    Besides the schema, every number in the answer must be finite (``1e999`` decodes to
    infinity, which no file format downstream can write) and the counts and measures of
    :data:`NON_NEGATIVE_FIELDS` must not be negative.
    """
    problem = _number_problem(data)
    if problem is not None:
        raise ResponseValidationError(problem, body=_excerpt(data))
    try:
        return converter.structure(data, Generation)
    except Exception as exc:
        raise ResponseValidationError(_describe(exc), body=_excerpt(data)) from exc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def decode_json(text: str | bytes) -> Any:
    """Decode JSON strictly: ``NaN`` and ``Infinity`` literals are refused (``ValueError``)."""
    return json.loads(text, parse_constant=_refuse_constant)


def generation_from_json(text: str | bytes) -> Generation:
    """Decode and structure a generation response body."""
    try:
        data = decode_json(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise ResponseValidationError(
            f"body is not valid JSON ({exc})", body=_excerpt(text)
        ) from exc
    return structure_generation(data)


#: Where a value sits in an answer: ``None`` for the answer itself, else its parent's place
#: and its key there.
_Place = tuple[Any, Any] | None


def _spelled(place: _Place) -> str:
    """``place`` as a dotted path (``extra_info.music_duration``), or "the answer"."""
    keys: list[str] = []
    while place is not None:
        place, key = place
        keys.append(str(key))
    return ".".join(reversed(keys)) or "the answer"


def _number_problem(data: Any) -> str | None:
    """What is wrong with the numbers of an answer, or ``None`` when nothing is."""
    # Iterative, so a deep answer cannot exhaust the stack. Each value carries its place as
    # a link to its parent's (``(parent, key)``): the dotted path is spelled out only for a
    # value found wrong, not for every value of every poll's answer.
    pending: list[tuple[Any, int, _Place]] = [(data, 0, None)]
    while pending:
        value, depth, place = pending.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return f"{_spelled(place)}: expected a finite number, got {value!r}"
        if isinstance(value, dict | list):
            if depth >= MAX_CHECKED_DEPTH:
                return f"{_spelled(place)}: nested more than {MAX_CHECKED_DEPTH} levels deep"
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                pending.append((item, depth + 1, (place, key)))
    if not isinstance(data, Mapping):
        return None
    for path in NON_NEGATIVE_FIELDS:
        value = data
        for part in path:
            value = value.get(part) if isinstance(value, Mapping) else None
        if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            return f"{'.'.join(path)}: must not be negative, got {value!r}"
    return None


def unsendable_id_problem(generation_id: str) -> str | None:
    """Why ``generation_id`` could not be sent back in a request, or ``None`` if it can.

    A lone surrogate cannot be encoded as UTF-8; control characters (a newline, ESC) have no
    business in an id and would garble logs and terminals.
    """
    if generation_id.isascii() and generation_id.isprintable():
        return None  # every id the API hands out: no surrogate, no control character
    for index, char in enumerate(generation_id):
        category = unicodedata.category(char)
        if category == "Cs":
            return f"it contains a lone surrogate at index {index}"
        if category == "Cc":
            return f"it contains a control character (U+{ord(char):04X}) at index {index}"
    return None


def _excerpt(data: Any) -> str:
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    text = data if isinstance(data, str) else repr(data)
    if len(text) > BODY_EXCERPT_CHARS:
        return text[:BODY_EXCERPT_CHARS] + f"... ({len(text)} characters)"
    return text


# --------------------------------------------------------------------------- outgoing


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


def request_to_wire(request: SongRequest) -> dict[str, Any]:
    """The JSON body of ``POST /v2/generate/audio`` for ``request`` (``None`` omitted)."""
    body: dict[str, Any] = {
        "model": request.model,
        "prompt": request.prompt,
        "lyrics": request.lyrics,
    }
    if request.audio_setting is not None:
        body["audio_setting"] = _drop_none(attrs.asdict(request.audio_setting))
    return body


def generation_to_wire(generation: Generation) -> dict[str, Any]:
    """The JSON a generation was built from (used by the emulator and journals)."""
    body: dict[str, Any] = {
        **generation.extra,
        "id": generation.id,
        "status": generation.status.value,
    }
    meta = dict(generation.extra.get("meta") or {})
    if generation.audio_file is not None:
        body["audio_file"] = {**generation.audio_file.extra, "url": generation.audio_file.url}
    if generation.error is not None:
        body["error"] = {
            **generation.error.extra,
            "name": generation.error.name,
            "message": generation.error.message,
        }
    if generation.usage is not None:
        meta["usage"] = {**generation.usage.extra, "credits_used": generation.usage.credits_used}
    if meta:
        body["meta"] = meta
    return body


def audio_setting_from_wire(data: Mapping[str, Any]) -> AudioSetting:
    """Build an :class:`AudioSetting` from a wire object (raises RequestValidationError)."""
    return AudioSetting(
        format=data.get("format", "mp3"),
        sample_rate=data.get("sample_rate"),
        bitrate=data.get("bitrate"),
    )
