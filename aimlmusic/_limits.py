"""The documented limits of ``minimax/music-1.5``, shared by the models and the emulator.

Source: the API page (``api/music-1.5.md``) and its OpenAPI schema. Kept in one place so the
client's validation and the emulator's validation can never disagree.
"""

from __future__ import annotations

from typing import Final

DEFAULT_MODEL: Final = "minimax/music-1.5"

PROMPT_MIN_CHARS: Final = 10
PROMPT_MAX_CHARS: Final = 300
LYRICS_MIN_CHARS: Final = 10
LYRICS_MAX_CHARS: Final = 3000

AUDIO_FORMATS: Final = ("mp3", "wav", "pcm")
SAMPLE_RATES: Final = (16000, 24000, 32000, 44100)
BITRATES: Final = (32000, 64000, 128000, 256000)

#: Published per-account limits for music generation (paid tier).
REQUESTS_PER_MINUTE: Final = 120
CONCURRENT_GENERATIONS: Final = 20

#: The documented generation time: "completed in 50-60 seconds or take a bit more".
DOCUMENTED_DURATION_RANGE: Final = (50.0, 60.0)

#: Shortest API key the client sends and the emulator accepts (the API's keys have 32
#: characters): the client redacts every occurrence of the key in what the server sends, and
#: a key of a character or two would mangle ordinary text.
MIN_API_KEY_LENGTH: Final = 8

#: The documented example gives up after 10 minutes.
DEFAULT_SONG_DEADLINE: Final = 600.0

GENERATE_PATH: Final = "/v2/generate/audio"


def api_key_problem(key: str) -> str | None:
    """What makes ``key`` unusable as an API key, as a noun phrase ("a line break at character
    3 of 40"), or None: a key must be printable ASCII without spaces (it travels in an
    ``Authorization`` header) and at least ``MIN_API_KEY_LENGTH`` long. The answer names
    positions and lengths, never a character of the key."""
    for index, char in enumerate(key):
        position = f"at character {index + 1} of {len(key)}"
        if char in "\r\n":
            return f"a line break {position} (two keys pasted together, or a stray newline?)"
        if not char.isascii():
            return f"a non-ASCII character {position} (a mistyped or mis-pasted key?)"
        if not char.isprintable() or char.isspace():
            return f"a space or control character {position} (a key is printable ASCII)"
    if len(key) < MIN_API_KEY_LENGTH:
        return (
            f"{len(key)} characters, fewer than the {MIN_API_KEY_LENGTH} an API key has at "
            "least (the API's keys have 32)"
        )
    return None
