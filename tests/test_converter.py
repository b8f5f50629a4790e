"""The converter: every response the API's schema allows parses, nothing it sends is lost,
request bodies are terse, and responses it cannot understand fail with a readable reason."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.provisional import urls

from aimlmusic import (
    AimlMusicError,
    APIError,
    AudioFile,
    AudioSetting,
    Generation,
    GenerationError,
    GenerationStatus,
    ResponseValidationError,
    SongRequest,
    Usage,
)
from aimlmusic._converter import (
    generation_from_json,
    generation_to_wire,
    request_to_wire,
    structure_generation,
    unsendable_id_problem,
)

TESTS = Path(__file__).resolve().parent
# In CI the repository is cloned next to ``shared/``; elsewhere the vendored copy is used.
SHARED_API = TESTS.parents[1] / "shared" / "api"
VENDORED_SPEC = TESTS / "data" / "openapi.json"
SPEC_PATH = (
    SHARED_API / "openapi.json" if (SHARED_API / "openapi.json").is_file() else VENDORED_SPEC
)
SPEC: dict[str, Any] = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
OPERATIONS = SPEC["paths"]["/v2/generate/audio"]


def response_schema(method: str) -> dict[str, Any]:
    """The JSON schema of a 200 response of ``method`` on the generate endpoint."""
    schema: dict[str, Any] = OPERATIONS[method]["responses"]["200"]["content"]["application/json"][
        "schema"
    ]
    return schema


REQUEST_SCHEMA: dict[str, Any] = OPERATIONS["post"]["requestBody"]["content"]["application/json"][
    "schema"
]

# The completed generation printed in the Response section of music-1.5.md (there shown as a
# Python dict; here as the JSON the API sent).
DOCUMENTED_COMPLETED = (
    '{"id": "d51032d5-e7b3-4e5b-a5c8-12e0c9474949:minimax/music-1.5", "status": "completed", '
    '"audio_file": {"url": "https://minimax-algeng-chat-tts-us.oss-us-east-1.aliyuncs.com/'
    "music%2Fprod%2Ftts-20251106201349-ESweHLjHtnWFQLwO.mp3?Expires=1762517636&"
    'OSSAccessKeyId=LTAI5tCpJNKCf5EkQHSuL9xg&Signature=ZIKZMHUCU3r30ysGjbSoqc3aVks%3D"}, '
    '"extra_info": {"music_duration": 93022, "music_sample_rate": 44100, "music_channel": 2, '
    '"bitrate": 256000, "music_size": 0}, "trace_id": "055bc3b9622dd73d828276162cc7d516"}'
)
DOCUMENTED_SUBMITTED = (
    '{"id": "d51032d5-e7b3-4e5b-a5c8-12e0c9474949:minimax/music-1.5", "status": "queued"}'
)


# --------------------------------------------------------------------------- the documented example


def test_documented_example_response_parses_with_its_extras() -> None:
    """The docs' completed response parses; ``extra_info`` and ``trace_id`` stay reachable."""
    generation = generation_from_json(DOCUMENTED_COMPLETED)
    assert generation.id == "d51032d5-e7b3-4e5b-a5c8-12e0c9474949:minimax/music-1.5"
    assert generation.status is GenerationStatus.COMPLETED
    assert generation.is_finished
    assert generation.audio_file is not None
    assert generation.audio_file.url.startswith("https://minimax-algeng-chat-tts-us.")
    assert generation.audio_file.url.endswith("Signature=ZIKZMHUCU3r30ysGjbSoqc3aVks%3D")
    assert generation.trace_id == "055bc3b9622dd73d828276162cc7d516"
    assert generation.extra["extra_info"]["music_duration"] == 93022
    info = generation.music_info
    assert info is not None
    assert (info.duration_ms, info.sample_rate, info.channels, info.bitrate, info.size) == (
        93022,
        44100,
        2,
        256000,
        0,
    )
    assert info.duration == pytest.approx(93.022)
    assert generation.error is None
    assert generation.usage is None


def test_documented_example_round_trips_exactly() -> None:
    """Converting the docs' response back to wire JSON gives the very same object."""
    body = json.loads(DOCUMENTED_COMPLETED)
    assert generation_to_wire(generation_from_json(DOCUMENTED_COMPLETED)) == body


def test_documented_submission_response_parses() -> None:
    """The docs' POST answer ``{id, status: queued}`` parses as an unfinished generation."""
    generation = generation_from_json(DOCUMENTED_SUBMITTED.encode())
    assert generation.status is GenerationStatus.QUEUED
    assert not generation.is_finished
    assert generation.extra == {}


def test_copied_example_matches_the_shared_docs() -> None:
    """The example above is the one printed in music-1.5.md (checked where shared/ is present)."""
    doc = SHARED_API / "music-1.5.md"
    if not doc.is_file():
        pytest.skip("shared/api/music-1.5.md is not beside this clone")
    printed = re.findall(r"Generation complete:\\n (\{.*\})", doc.read_text(encoding="utf-8"))
    assert len(printed) == 1
    assert ast.literal_eval(printed[0]) == json.loads(DOCUMENTED_COMPLETED)


def test_vendored_spec_matches_the_shared_one() -> None:
    """tests/data/openapi.json is an up-to-date copy of shared/api/openapi.json."""
    shared = SHARED_API / "openapi.json"
    if not shared.is_file():
        pytest.skip("shared/api/openapi.json is not beside this clone")
    assert json.loads(VENDORED_SPEC.read_text(encoding="utf-8")) == json.loads(
        shared.read_text(encoding="utf-8")
    )


# --------------------------------------------------------------------------- leniency


@pytest.mark.parametrize("status", ["COMPLETED", "Completed", " completed\n"])
def test_a_completed_status_in_another_letter_case_is_completed(status: str) -> None:
    """A poll answer saying ``COMPLETED`` is a completed generation with its audio file,
    and goes back on the wire in the documented spelling."""
    generation = structure_generation(
        {"id": "g", "status": status, "audio_file": {"url": "https://x.test/a.mp3"}}
    )
    assert generation.status is GenerationStatus.COMPLETED
    assert generation.status.is_terminal
    assert generation_to_wire(generation)["status"] == "completed"


def test_waiting_status_is_tolerated() -> None:
    """An undocumented ``waiting`` status parses as a pending, undocumented status."""
    generation = structure_generation({"id": "g", "status": "waiting"})
    assert generation.status == "waiting"
    assert not generation.status.is_documented
    assert not generation.is_finished


def test_unknown_fields_are_kept_at_every_level() -> None:
    """Unknown keys of the body, audio_file, error, meta and usage all survive the round trip."""
    body = {
        "id": "g",
        "status": "error",
        "audio_file": {"url": "https://files.example/a.mp3", "expires_at": 1762517636},
        "error": {"name": "Upstream", "message": "failed", "code": 17},
        "meta": {"usage": {"credits_used": 3, "unit": "credits"}, "region": "us"},
        "trace_id": "t",
        "future_field": [1, {"nested": None}],
    }
    generation = structure_generation(body)
    assert generation.audio_file is not None
    assert generation.audio_file.url == "https://files.example/a.mp3"
    assert generation.audio_file.extra == {"expires_at": 1762517636}
    assert generation.error is not None
    assert generation.error.extra == {"code": 17}
    assert generation.usage is not None
    assert generation.usage.extra == {"unit": "credits"}
    assert generation.credits_used == 3.0
    assert generation.extra == {
        "trace_id": "t",
        "future_field": [1, {"nested": None}],
        "meta": {"region": "us"},
    }
    assert generation_to_wire(generation) == body


def test_null_optional_objects_are_none() -> None:
    """``null`` audio_file, error, meta and usage (all nullable in the schema) read as None."""
    generation = structure_generation(
        {"id": "g", "status": "queued", "audio_file": None, "error": None, "meta": None}
    )
    assert (generation.audio_file, generation.error, generation.usage) == (None, None, None)
    assert (
        structure_generation({"id": "g", "status": "queued", "meta": {"usage": None}}).usage is None
    )


def test_model_round_trip_through_the_wire() -> None:
    """A generation built in code survives generation_to_wire and back unchanged."""
    generation = Generation(
        id="abc:minimax/music-1.5",
        status=GenerationStatus("waiting"),
        audio_file=AudioFile(url="https://files.example/x.wav", extra={"size": 10}),
        error=GenerationError(name="E", message="m"),
        usage=Usage(credits_used=1.25, extra={"tokens": 3}),
        extra={"trace_id": "t", "meta": {"region": "eu"}},
    )
    wire = generation_to_wire(generation)
    assert json.loads(json.dumps(wire)) == wire
    assert structure_generation(wire) == generation
    assert wire["meta"] == {"region": "eu", "usage": {"tokens": 3, "credits_used": 1.25}}


# --------------------------------------------------------------------------- malformed responses


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html>502 Bad Gateway</html>", "body is not valid JSON"),
        ("", "body is not valid JSON"),
        ('{"id": "g", "status": "queued"', "body is not valid JSON"),
        ("[]", "expected a JSON object, got list"),
        ('"queued"', "expected a JSON object, got str"),
        ("null", "expected a JSON object, got NoneType"),
        ('{"status": "queued"}', "required field 'id' is missing"),
        ('{"id": "g"}', "required field 'status' is missing"),
        ('{"id": 7, "status": "queued"}', "id: expected a string, got int"),
        ('{"id": "g", "status": 3}', "status: expected a string, got int"),
        ('{"id": "g", "status": null}', "status: expected a string, got NoneType"),
        ('{"id": "g", "status": "completed", "audio_file": "https://x"}', "audio_file: "),
        ('{"id": "g", "status": "completed", "audio_file": {}}', "audio_file: "),
        ('{"id": "g", "status": "completed", "audio_file": {"url": 5}}', "audio_file: "),
        ('{"id": "g", "status": "error", "error": {"name": "E"}}', "error: "),
        ('{"id": "g", "status": "queued", "meta": []}', "meta must be an object, got list"),
        ('{"id": "g", "status": "queued", "meta": {"usage": {}}}', "meta.usage: "),
        (
            '{"id": "g", "status": "queued", "meta": {"usage": {"credits_used": "12"}}}',
            "meta.usage: ",
        ),
        (
            '{"id": "g", "status": "queued", "meta": {"usage": {"credits_used": true}}}',
            "meta.usage: ",
        ),
        (
            '{"id": "g", "status": "queued", "meta": {"usage": {"credits_used": 1'
            + "0" * 400
            + "}}}",
            "meta.usage: ",
        ),
    ],
)
def test_malformed_bodies_raise_a_readable_response_validation_error(
    body: str | bytes, reason: str
) -> None:
    """A body that breaks the schema raises ResponseValidationError saying what is wrong."""
    with pytest.raises(ResponseValidationError) as info:
        generation_from_json(body)
    error = info.value
    assert reason in error.reason
    assert str(error) == f"could not understand the API's response: {error.reason}"
    assert isinstance(error, APIError)
    assert isinstance(error, AimlMusicError)
    assert error.body is not None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        # 1e400 decodes to infinity (a NaN or Infinity literal is not JSON, refused before).
        ('{"id": "g", "status": "queued", "x": {"y": [1, {"z": 1e400}]}}', "x.y.1.z: "),
        ('{"id": "g", "status": "queued", "x": [1e400]}', "x.0: "),
        ('{"id": "g", "status": "queued", "x": -1e400}', "x: "),
        ("1e400", "the answer: "),
        ('{"id": "g", "status": "queued", "x": ' + "[" * 80 + "]" * 80 + "}", "x.0.0.0.0."),
    ],
)
def test_a_wrong_number_or_nesting_is_named_by_its_dotted_path(body: str, reason: str) -> None:
    """A non-finite number or too deep a nesting is named by its dotted path in the answer."""
    with pytest.raises(ResponseValidationError) as info:
        generation_from_json(body)
    assert info.value.reason.startswith(reason)


@pytest.mark.parametrize(
    ("generation_id", "problem"),
    [
        ("6b1f3c2e:minimax/music-1.5", None),
        ("with space and ünïcode ♪", None),
        ("a\x7fb", "control character (U+007F) at index 1"),  # DEL: ASCII, not printable
        ("a\tb", "control character (U+0009) at index 1"),
        ("\x1b[31m", "control character (U+001B) at index 0"),
        ("ok\ud800", "lone surrogate at index 2"),
    ],
)
def test_ids_that_cannot_be_sent_back_are_told_apart(
    generation_id: str, problem: str | None
) -> None:
    """An id with a control character (DEL, tab) or lone surrogate is unsendable, at its index."""
    found = unsendable_id_problem(generation_id)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"id": "g", "status": "completed", "audio_file": {}}, ["url"]),
        ({"id": "g", "status": "error", "error": {"name": "E"}}, ["message"]),
        ({"id": "g", "status": "queued", "meta": {"usage": {}}}, ["credits_used"]),
    ],
)
def test_nested_errors_name_the_missing_field(body: dict[str, Any], names: list[str]) -> None:
    """A nested object missing a required field names that field in the reason."""
    with pytest.raises(ResponseValidationError) as info:
        structure_generation(body)
    for name in names:
        assert name in info.value.reason


def test_error_keeps_only_an_excerpt_of_a_huge_body() -> None:
    """A huge unparseable body is cut to a bounded excerpt that says how long it was."""
    huge = "<html>" + "x" * 100_000
    with pytest.raises(ResponseValidationError) as info:
        generation_from_json(huge)
    excerpt = info.value.body
    assert excerpt is not None
    assert excerpt.startswith("<html>xxx")
    assert len(excerpt) < 600
    assert f"({len(huge)} characters)" in excerpt
    assert len(str(info.value)) < 300


# --------------------------------------------------------------------------- request bodies


def test_minimal_request_body_omits_audio_setting() -> None:
    """Without audio settings the body is exactly model, prompt and lyrics."""
    request = SongRequest(prompt="p" * 10, lyrics="l" * 10)
    assert request_to_wire(request) == {
        "model": "minimax/music-1.5",
        "prompt": "p" * 10,
        "lyrics": "l" * 10,
    }


def test_request_body_omits_none_settings_but_keeps_format() -> None:
    """Unset sample_rate/bitrate are left out; the required format is always sent."""
    request = SongRequest(prompt="p" * 10, lyrics="l" * 10, audio_setting=AudioSetting())
    assert request_to_wire(request)["audio_setting"] == {"format": "mp3"}
    full = SongRequest(
        prompt="p" * 10,
        lyrics="l" * 10,
        audio_setting=AudioSetting(format="wav", sample_rate=44100, bitrate=256000),
    )
    body = request_to_wire(full)
    assert body["audio_setting"] == {"format": "wav", "sample_rate": 44100, "bitrate": 256000}
    assert '"sample_rate": 44100,' in json.dumps(body)


settings_values = st.builds(
    AudioSetting,
    format=st.sampled_from(["mp3", "wav", "pcm"]),
    sample_rate=st.none() | st.sampled_from([16000, 24000, 32000, 44100]),
    bitrate=st.none() | st.sampled_from([32000, 64000, 128000, 256000]),
)
song_requests = st.builds(
    SongRequest,
    prompt=st.text(min_size=10, max_size=300),
    lyrics=st.text(min_size=10, max_size=3000),
    audio_setting=st.none() | settings_values,
)


@given(song_requests)
def test_every_valid_request_body_satisfies_the_post_schema(request: SongRequest) -> None:
    """Any request that constructs yields a JSON body the API's POST schema accepts."""
    body = json.loads(json.dumps(request_to_wire(request)))
    jsonschema.validate(body, openapi_to_json_schema(REQUEST_SCHEMA))
    assert None not in body.values()


# --------------------------------------------------------------------------- the schema property
#
# hypothesis-jsonschema cannot draw objects with current Hypothesis (it calls a removed private
# API), so the bodies are drawn by the small generator below. It understands exactly the
# keywords the spec uses and fails on any other, so a richer spec cannot be under-tested
# silently; and every drawn body is checked against the spec with jsonschema.

HANDLED_KEYWORDS = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "enum",
        "nullable",
        "format",
        "description",
        "title",
        "items",
        "minLength",
        "maxLength",
    }
)
# Integers beyond 2**53 are not interoperable JSON (RFC 7493); floats are finite in JSON.
json_numbers = st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | json_numbers | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
# Extra property names: the undocumented ones the API is known to send, and anything else.
extra_names = st.sampled_from(["extra_info", "trace_id", "extra", "usage", "url"]) | st.text()


def bodies(schema: Mapping[str, Any]) -> st.SearchStrategy[Any]:
    """Every JSON value ``schema`` (an OpenAPI 3.0 schema object) allows, extras included."""
    unknown = set(schema) - HANDLED_KEYWORDS
    if unknown:
        raise NotImplementedError(f"the body generator does not handle {sorted(unknown)}")
    values = _non_null_bodies(schema)
    return st.none() | values if schema.get("nullable") else values


def _non_null_bodies(schema: Mapping[str, Any]) -> st.SearchStrategy[Any]:
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        return _objects(schema)
    if kind == "string":
        fmt = schema.get("format")
        if fmt == "uri":
            return urls()
        if fmt is not None:
            raise NotImplementedError(f"string format {fmt!r}")
        return st.text(min_size=schema.get("minLength", 0), max_size=schema.get("maxLength"))
    if kind == "number":
        # The schema's numbers count something (credits_used): a negative count is a broken
        # answer the client refuses (see test_negative_counts_are_refused...).
        return json_numbers.filter(lambda n: n >= 0)
    if kind == "integer":
        return st.integers()
    if kind == "boolean":
        return st.booleans()
    if kind == "array":
        return st.lists(bodies(schema.get("items", {})), max_size=3)
    if kind is None:
        return json_values
    raise NotImplementedError(f"type {kind!r}")


def _objects(schema: Mapping[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    properties: Mapping[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", ()))
    named = st.fixed_dictionaries(
        {name: bodies(sub) for name, sub in properties.items() if name in required},
        optional={name: bodies(sub) for name, sub in properties.items() if name not in required},
    )
    additional = schema.get("additionalProperties", True)
    if additional is False:
        return named
    extra_values = json_values if additional is True else bodies(additional)
    extras = st.dictionaries(
        extra_names.filter(lambda name: name not in properties), extra_values, max_size=3
    )
    return st.builds(lambda known, more: {**more, **known}, named, extras)


def openapi_to_json_schema(schema: Any) -> Any:
    """Translate OpenAPI 3.0's ``nullable`` into JSON Schema so jsonschema can validate."""
    if isinstance(schema, list):
        return [openapi_to_json_schema(item) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    out = {key: openapi_to_json_schema(value) for key, value in schema.items()}
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def expected_wire(body: Mapping[str, Any]) -> dict[str, Any]:
    """What generation_to_wire gives back for ``body``: the same, less null or empty optionals."""
    out = {key: value for key, value in body.items() if not (key in OPTIONALS and value is None)}
    meta = out.pop("meta", None)
    if meta:
        meta = {key: value for key, value in meta.items() if not (key == "usage" and value is None)}
        if meta:
            out["meta"] = meta
    return out


OPTIONALS = frozenset({"audio_file", "error", "meta"})


@pytest.mark.parametrize("method", ["get", "post"])
def test_every_body_the_response_schema_allows_parses(method: str) -> None:
    """Every 200 body allowed by the spec (extras and nulls included) parses and loses nothing."""
    schema = response_schema(method)
    validator = jsonschema.Draft4Validator(openapi_to_json_schema(schema))

    @settings(max_examples=200)
    @given(bodies(schema))
    def check(body: dict[str, Any]) -> None:
        validator.validate(body)  # the generator only draws bodies the spec allows
        generation = generation_from_json(json.dumps(body))
        assert generation.id == body["id"]
        assert generation.status == body["status"]
        assert generation.status.is_documented
        audio_file = body.get("audio_file")
        assert (generation.audio_file is None) is (audio_file is None)
        if audio_file is not None:
            assert generation.audio_file is not None
            assert generation.audio_file.url == audio_file["url"]
        # The undocumented extras are read defensively, whatever they hold.
        assert generation.trace_id is None or generation.trace_id == body["trace_id"]
        assert generation.music_info is None or isinstance(body["extra_info"], dict)
        assert generation_to_wire(generation) == expected_wire(body)

    check()


def test_the_generator_draws_extras_and_nulls() -> None:
    """The body generator really draws extra properties and nulls: the property is not vacuous."""
    seen: set[str] = set()

    @settings(max_examples=200)
    @given(bodies(response_schema("get")))
    def collect(body: dict[str, Any]) -> None:
        if set(body) - set(response_schema("get")["properties"]):
            seen.add("extra")
        if body.get("audio_file", 0) is None:
            seen.add("null")
        if isinstance(body.get("audio_file"), dict) and len(body["audio_file"]) > 1:
            seen.add("nested extra")

    collect()
    assert seen == {"extra", "null", "nested extra"}
