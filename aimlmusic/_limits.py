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

#: The documented example gives up after 10 minutes.
DEFAULT_SONG_DEADLINE: Final = 600.0

GENERATE_PATH: Final = "/v2/generate/audio"
