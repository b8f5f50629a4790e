"""Validating a submission exactly as the spec describes it (``openapi.json``, POST body).

The checks follow JSON Schema, not Python: ``true`` is not an integer, ``44100.0`` is not one
of the integer enum values, ``NaN`` is not JSON, unknown properties are allowed. A body that is
not declared as JSON is treated as missing, as the service's body parser does.
"""

from __future__ import annotations

import json
from typing import Any

from .. import _limits

__all__ = ["validate_submission"]

#: One problem with the body: which field and what is wrong.
Problem = dict[str, str]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _is_json_media_type(content_type: str | None) -> bool:
    if not content_type:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def _text(body: dict[str, Any], field: str, low: int, high: int, problems: list[Problem]) -> None:
    if field not in body:
        problems.append({"field": field, "message": f"{field} is required"})
        return
    value = body[field]
    if not isinstance(value, str):
        problems.append({"field": field, "message": f"{field} must be a string"})
    elif not low <= len(value) <= high:
        problems.append(
            {
                "field": field,
                "message": f"{field} must be {low}-{high} characters, got {len(value)}",
            }
        )


def _choice(
    setting: dict[str, Any],
    field: str,
    choices: tuple[Any, ...],
    kind: type,
    problems: list[Problem],
) -> None:
    if field not in setting:
        return
    value = setting[field]
    if isinstance(value, bool) or not isinstance(value, kind) or value not in choices:
        allowed = ", ".join(str(choice) for choice in choices)
        problems.append(
            {"field": f"audio_setting.{field}", "message": f"{field} must be one of {allowed}"}
        )


def validate_submission(
    content_type: str | None, raw: bytes
) -> tuple[dict[str, Any], list[Problem]]:
    """Parse and check a ``POST /v2/generate/audio`` body: ``(body, [])`` when valid, else
    ``({}, problems)`` or ``(body, problems)``."""
    if not _is_json_media_type(content_type):
        return {}, [{"field": "body", "message": "Content-Type must be application/json"}]
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return {}, [{"field": "body", "message": f"body is not valid JSON: {exc}"}]
    if not isinstance(body, dict):
        return {}, [{"field": "body", "message": "body must be a JSON object"}]

    problems: list[Problem] = []
    if "model" not in body:
        problems.append({"field": "model", "message": "model is required"})
    elif body["model"] != _limits.DEFAULT_MODEL or not isinstance(body["model"], str):
        problems.append({"field": "model", "message": f"model must be {_limits.DEFAULT_MODEL!r}"})
    _text(body, "prompt", _limits.PROMPT_MIN_CHARS, _limits.PROMPT_MAX_CHARS, problems)
    _text(body, "lyrics", _limits.LYRICS_MIN_CHARS, _limits.LYRICS_MAX_CHARS, problems)
    if "audio_setting" in body:
        setting = body["audio_setting"]
        if not isinstance(setting, dict):
            problems.append(
                {"field": "audio_setting", "message": "audio_setting must be an object"}
            )
        else:
            if "format" not in setting:
                problems.append(
                    {
                        "field": "audio_setting.format",
                        "message": "format is required in audio_setting",
                    }
                )
            _choice(setting, "format", _limits.AUDIO_FORMATS, str, problems)
            _choice(setting, "sample_rate", _limits.SAMPLE_RATES, int, problems)
            _choice(setting, "bitrate", _limits.BITRATES, int, problems)
    return body, problems
