"""aimlmusic: an asyncio client for the AI/ML API music endpoint (``minimax/music-1.5``).

Submit songs, poll them with a policy that learns the service's timing, download the audio,
and batch-generate whole catalogs within the account's limits. See the documentation for
the guides; every public name is importable from this package.
"""

from ._blocking import MusicClient, SongResults
from ._client import AsyncMusicClient
from ._clock import Clock, ScaledClock, SystemClock
from ._config import Limits, RetryPolicy, SizeLimits, Timeout
from ._errors import (
    AimlMusicError,
    AmbiguousSubmissionError,
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    DownloadError,
    GenerationFailedError,
    GenerationTimeoutError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestValidationError,
    ResponseValidationError,
    ServerError,
    SharedStateError,
    SubmissionTimeoutError,
)
from ._events import (
    BatchEvents,
    RequestRetried,
    RequestSending,
    RequestThrottled,
    SongCompleted,
    SongFailed,
    SongStatusChanged,
    SongSubmitted,
)
from ._models import (
    AudioFile,
    AudioSetting,
    Generation,
    GenerationError,
    GenerationStatus,
    MusicInfo,
    SongRequest,
    SongResult,
    SongTimings,
    Usage,
)
from ._polling import ExponentialBackoff, FixedInterval, LearnedPolling, PollPolicy, PollState
from ._shared_budget import SharedBudget
from ._version import __version__

__all__ = [
    "AimlMusicError",
    "AmbiguousSubmissionError",
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncMusicClient",
    "AudioFile",
    "AudioSetting",
    "AuthenticationError",
    "BadRequestError",
    "BatchEvents",
    "Clock",
    "ConfigurationError",
    "DownloadError",
    "ExponentialBackoff",
    "FixedInterval",
    "Generation",
    "GenerationError",
    "GenerationFailedError",
    "GenerationStatus",
    "GenerationTimeoutError",
    "LearnedPolling",
    "Limits",
    "MusicClient",
    "MusicInfo",
    "NotFoundError",
    "PermissionDeniedError",
    "PollPolicy",
    "PollState",
    "RateLimitError",
    "RequestRetried",
    "RequestSending",
    "RequestThrottled",
    "RequestValidationError",
    "ResponseValidationError",
    "RetryPolicy",
    "ScaledClock",
    "ServerError",
    "SharedBudget",
    "SharedStateError",
    "SubmissionTimeoutError",
    "SizeLimits",
    "SongCompleted",
    "SongFailed",
    "SongRequest",
    "SongResult",
    "SongResults",
    "SongStatusChanged",
    "SongSubmitted",
    "SongTimings",
    "SystemClock",
    "Timeout",
    "Usage",
    "__version__",
]


def _present_as_public() -> None:
    # Tracebacks, reprs and the docs then say ``aimlmusic.SongRequest``, the name users
    # import, not the private module it lives in (pickling still finds it by that name).
    for name in __all__:
        obj = globals()[name]
        if isinstance(obj, type) and obj.__module__.startswith("aimlmusic._"):
            obj.__module__ = __name__


_present_as_public()
