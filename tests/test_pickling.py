"""Errors, generations and results survive pickling and copying (process pools, queues)."""

from __future__ import annotations

import copy
import pickle

import pytest

import aimlmusic
from aimlmusic._converter import generation_from_json

DOCUMENTED = (
    '{"id": "d51032d5-e7b3-4e5b-a5c8-12e0c9474949:minimax/music-1.5", "status": "error",'
    ' "error": {"name": "E", "message": "the model gave up"}, "trace_id": "055bc",'
    ' "extra_info": {"music_duration": 93022}, "meta": {"usage": {"credits_used": 3}}}'
)


def roundtrip(obj: object) -> object:
    return pickle.loads(pickle.dumps(obj))


def test_a_generation_with_extras_pickles_and_deep_copies() -> None:
    """A Generation keeps its unknown fields through pickle and deepcopy, and stays hashable."""
    generation = generation_from_json(DOCUMENTED)
    for clone in (roundtrip(generation), copy.deepcopy(generation)):
        assert clone == generation
        assert isinstance(clone, aimlmusic.Generation)
        assert clone.trace_id == "055bc"
        assert clone.music_info == generation.music_info
    assert hash(generation) == hash(roundtrip(generation))


@pytest.mark.parametrize(
    "error",
    [
        aimlmusic.BadRequestError(
            "Body validation error!",
            status_code=400,
            request_id="r1",
            body={"message": "Body validation error!"},
            method="POST",
            url="https://api.test/v2/generate/audio",
        ),
        aimlmusic.RateLimitError("slow down", status_code=429, retry_after=2.0),
        aimlmusic.RequestValidationError("prompt", "must be 10-300 characters long", "3"),
        aimlmusic.GenerationTimeoutError("gen-1", 600.0),
        aimlmusic.SubmissionTimeoutError(10.0, "the request budget"),
        aimlmusic.AmbiguousSubmissionError(
            "read timeout after sending",
            request=aimlmusic.SongRequest(prompt="a prompt long enough", lyrics="la la la la"),
            cause=aimlmusic.APITimeoutError("read timed out"),
        ),
        aimlmusic.ConfigurationError("no API key"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_every_kind_of_error_pickles_and_copies_with_its_attributes(
    error: aimlmusic.AimlMusicError,
) -> None:
    """An error rebuilt by pickle or copy has the same type, text and attributes."""
    for clone in (roundtrip(error), copy.copy(error)):
        assert type(clone) is type(error)
        assert str(clone) == str(error)
        assert vars(clone).keys() == vars(error).keys()
        for name, value in vars(error).items():
            if isinstance(value, BaseException):
                assert str(getattr(clone, name)) == str(value)
            else:
                assert getattr(clone, name) == value


def test_a_failed_result_pickles_with_its_error_and_generation() -> None:
    """A SongResult carrying GenerationFailedError and the generation survives pickling."""
    generation = generation_from_json(DOCUMENTED)
    result = aimlmusic.SongResult(
        key="k",
        request=aimlmusic.SongRequest(prompt="a prompt long enough", lyrics="la la la la"),
        generation=generation,
        error=aimlmusic.GenerationFailedError(generation),
    )
    clone = roundtrip(result)
    assert isinstance(clone, aimlmusic.SongResult)
    assert clone.generation == generation
    assert isinstance(clone.error, aimlmusic.GenerationFailedError)
    assert clone.error.error_message == "the model gave up"
    assert not clone.ok


def test_public_classes_present_themselves_under_the_package_name() -> None:
    """Reprs and tracebacks say aimlmusic.SongRequest, the name users import."""
    assert aimlmusic.SongRequest.__module__ == "aimlmusic"
    assert aimlmusic.RequestValidationError.__module__ == "aimlmusic"
    assert issubclass(aimlmusic.ConfigurationError, ValueError)
