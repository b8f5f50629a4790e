"""Tagging downloaded MP3s with what the song is: title, lyrics, prompt and generation id.

Uses mutagen (in the ``cli`` extra), imported lazily so the rest of the catalog works without
it. WAV and raw PCM files are left exactly as delivered. Tagging rewrites the head of the file,
so the caller hashes the file *after* tagging.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import Any

__all__ = [
    "GENERATION_ID_DESC",
    "PROMPT_DESC",
    "TaggingError",
    "TaggingUnavailableError",
    "mutagen_available",
    "tag_mp3",
]

logger = logging.getLogger("aimlmusic.catalog")

#: Descriptions of the two comment frames, so tools (and our tests) can find them.
PROMPT_DESC = "prompt"
GENERATION_ID_DESC = "aimlmusic generation id"

#: ID3 frames are written in UTF-8 with this language code (ISO 639-2, "undetermined"): the
#: catalog does not say which language the lyrics are in.
_LANGUAGE = "und"


class TaggingUnavailableError(RuntimeError):
    """mutagen is not installed."""


class TaggingError(ValueError):
    """The file could not be tagged (not an MP3, or a tag mutagen cannot read or rewrite,
    such as an ID3v2.9 or oversized header); the file is left as it was."""


def mutagen_available() -> bool:
    """True when mutagen can be imported (``pip install 'aimlmusic[cli]'``)."""
    try:
        importlib.import_module("mutagen")
    except ImportError:
        return False
    return True


def tag_mp3(
    path: str | os.PathLike[str],
    *,
    title: str,
    lyrics: str,
    prompt: str,
    generation_id: str,
) -> None:
    """Write ID3v2.4 tags into the MP3 at ``path``: ``TIT2`` title (when not empty), ``USLT``
    unsynchronised lyrics, and two ``COMM`` comments: the prompt and the generation id.

    Frames already in the file are kept, except ones with the same keys as ours. Raises
    :class:`TaggingError` (a :class:`ValueError`) when the file is not an MP3 or holds a tag
    mutagen cannot handle (so a file we do not understand is never altered),
    :class:`OSError` when the file cannot be read or written, and
    :class:`TaggingUnavailableError` when mutagen is missing.
    """
    # mutagen has no type hints: its modules are used as Any.
    try:
        id3: Any = importlib.import_module("mutagen.id3")
        mp3: Any = importlib.import_module("mutagen.mp3")
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise TaggingUnavailableError(
            "tagging MP3s needs mutagen: pip install 'aimlmusic[cli]'"
        ) from exc

    mutagen: Any = importlib.import_module("mutagen")
    target = Path(path)
    try:
        _write_tags(id3, mp3, target, title, lyrics, prompt, generation_id)
    except mp3.HeaderNotFoundError as exc:
        raise TaggingError(f"{target.name} is not an MP3 file: {exc}") from exc
    except OSError:
        raise
    except Exception as exc:  # mutagen's own errors, and whatever a hostile tag provokes
        # mutagen wraps real I/O errors (a full disk) too: those stay OSErrors for the caller.
        # A bare IOError without errno is mutagen's "short read" of a malformed tag.
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, OSError) and cause.errno is not None:
            raise cause from None
        if not isinstance(exc, mutagen.MutagenError):
            logger.debug("mutagen failed on %s", target.name, exc_info=True)
        detail = str(exc) or type(exc).__name__
        raise TaggingError(f"cannot tag {target.name}: {detail}") from exc


def _write_tags(
    id3: Any, mp3: Any, target: Path, title: str, lyrics: str, prompt: str, generation_id: str
) -> None:
    mp3.MP3(target)  # raises HeaderNotFoundError when the file is not an MP3
    try:
        tags = id3.ID3(target)  # keep what the encoder wrote; replace only our frames
    except id3.ID3NoHeaderError:
        tags = id3.ID3()
    utf8 = id3.Encoding.UTF8
    frames: list[Any] = [
        id3.USLT(encoding=utf8, lang=_LANGUAGE, desc="", text=lyrics),
        id3.COMM(encoding=utf8, lang=_LANGUAGE, desc=PROMPT_DESC, text=[prompt]),
        id3.COMM(encoding=utf8, lang=_LANGUAGE, desc=GENERATION_ID_DESC, text=[generation_id]),
    ]
    if title:
        frames.insert(0, id3.TIT2(encoding=utf8, text=[title]))
    for frame in frames:
        tags.setall(frame.HashKey, [frame])
    # Padding 0 keeps the file exactly tag + audio; v2.4 is what mutagen writes natively.
    tags.save(target, v2_version=4, padding=lambda info: 0)
