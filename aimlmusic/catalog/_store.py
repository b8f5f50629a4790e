"""Turning a downloaded file into a finished song in the output directory.

The client downloads into :data:`PARTIAL_DIR`, a hidden directory inside the output
directory; this module tags the file (MP3 only), measures and hashes the *final* bytes, makes
it durable and renames it into place in one step. Whatever a crash leaves in the partial
directory is thrown away by the next run (:func:`clear_partial`), so no half-written file
ever sits among the songs. Blocking work: the runner calls these in a worker thread or at
start-up.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import os
import shutil
import wave
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import attrs

from .._models import Generation, SongRequest
from ._tags import TaggingError, tag_mp3

__all__ = [
    "PARTIAL_DIR",
    "StoredFile",
    "clear_dead_partials",
    "clear_partial",
    "finish_download",
    "fsync_directory",
    "part_path",
    "partial_dir",
    "remove_partial",
]

logger = logging.getLogger("aimlmusic.catalog")

_HASH_CHUNK = 1024 * 1024


@attrs.frozen
class StoredFile:
    """What was stored: size in bytes, SHA-256 of the final file, whether it was tagged, the
    duration (seconds) and sample rate when known, and why tagging was skipped (a warning,
    never a failure: the file is kept as delivered)."""

    size: int
    sha256: str
    tagged: bool
    duration: float | None
    sample_rate: int | None
    tag_problem: str | None = None


#: Where songs are downloaded before they are finished and moved into place.
PARTIAL_DIR = ".aimlmusic-partial"


def partial_dir(directory: Path, worker: str | None = None) -> Path:
    """The partial directory of a run: :data:`PARTIAL_DIR`, or for one of several workers
    sharing the output directory (a shared journal) a directory of its own inside it."""
    partial = directory / PARTIAL_DIR
    if worker is None:
        return partial
    return partial / ("worker-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in worker))


def part_path(directory: Path, file_name: str, *, worker: str | None = None) -> Path:
    """Where a song is downloaded to before it is finished (same file system as its final
    place, so the last step is an atomic rename)."""
    return partial_dir(directory, worker) / file_name


def clear_partial(directory: Path, *, worker: str | None = None) -> None:
    """Throw away downloads a crash interrupted (also the client's own temporary files) and
    make the partial directory ready. Only the run holding the journal's lock calls this;
    a worker of a shared journal clears only its own."""
    top = directory / PARTIAL_DIR
    if top.is_symlink():  # never follow a planted link out of the output directory
        top.unlink()
    partial = partial_dir(directory, worker)
    if partial.is_symlink():
        partial.unlink()
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True, exist_ok=True)


def clear_dead_partials(directory: Path, *, worker: str, live: Iterable[str]) -> list[str]:
    """Throw away the partial directories of workers of a shared journal that hold no live
    lease (a killed worker's half-written downloads: whoever takes its songs over downloads
    them again into a directory of its own). Keeps this ``worker``'s and those of the
    ``live`` workers; returns the names of the directories removed."""
    top = directory / PARTIAL_DIR
    if top.is_symlink() or not top.is_dir():
        return []
    keep = {partial_dir(directory, name).name for name in (worker, *live)}
    removed: list[str] = []
    for child in sorted(top.iterdir()):
        if not child.name.startswith("worker-") or child.name in keep:
            continue
        if child.is_symlink():
            child.unlink()
        else:
            shutil.rmtree(child, ignore_errors=True)
        removed.append(child.name)
    return removed


def remove_partial(directory: Path, *, worker: str | None = None) -> None:
    """Remove the partial directory at the end of a run, if nothing is left in it."""
    with contextlib.suppress(OSError):
        partial_dir(directory, worker).rmdir()
    with contextlib.suppress(OSError):
        (directory / PARTIAL_DIR).rmdir()


def finish_download(
    part: Path,
    final: Path,
    *,
    title: str,
    request: SongRequest,
    generation: Generation,
    tag: bool,
) -> StoredFile:
    """Tag ``part`` (when an MP3 and ``tag``), hash it, fsync it and rename it to ``final``.

    A file already at ``final`` is replaced only when it is this song, stored by a run that
    died before the journal recorded it: the very same bytes, or (MP3) the same audio under
    other tags, as when the title was edited or ``--no-tag`` changed since. Any other file
    there (the user's, put there after the name was given out) raises
    :class:`FileExistsError` and is left untouched: the song stays to download once it is
    moved away."""
    tagged = False
    tag_problem: str | None = None
    if tag and request.format == "mp3":
        try:
            tag_mp3(
                part,
                title=title,
                lyrics=request.lyrics,
                prompt=request.prompt,
                generation_id=generation.id,
            )
            tagged = True
        except TaggingError as exc:
            # Not an MP3 after all, or a tag mutagen cannot handle: keep the bytes as
            # delivered rather than alter them; the song itself is fine.
            tag_problem = f"not tagged: {exc}"
            logger.warning("not tagging %s: %s", final.name, exc)
    duration, sample_rate = _audio_facts(part, request, generation)
    digest = hashlib.sha256()
    size = 0
    with part.open("rb+") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
        os.fsync(handle.fileno())
    if os.path.lexists(final) and not _holds_this_song(final, part, digest.hexdigest(), request):
        raise FileExistsError(
            f"{final.name} is already in the output directory and is not this song's; "
            "it is never replaced: move it away and run again to store the song"
        )
    os.replace(part, final)
    fsync_directory(final.parent)
    return StoredFile(
        size=size,
        sha256=digest.hexdigest(),
        tagged=tagged,
        duration=duration,
        sample_rate=sample_rate,
        tag_problem=tag_problem,
    )


def _holds_this_song(existing: Path, part: Path, part_sha256: str, request: SongRequest) -> bool:
    """Whether the file at the song's name is the song itself: the same bytes, or for an MP3
    the same audio frames (tagging rewrites only the ID3 tags at either end)."""
    if _sha256_of(existing) == part_sha256:
        return True
    if request.format != "mp3":
        return False
    theirs = _sha256_of(existing, audio_only=True)
    return theirs is not None and theirs == _sha256_of(part, audio_only=True)


def _sha256_of(path: Path, *, audio_only: bool = False) -> str | None:
    """The SHA-256 of the regular file ``path`` (a link is never followed), or None; with
    ``audio_only``, of its bytes without a leading ID3v2 tag and a trailing ID3v1 tag."""
    if path.is_symlink() or not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        start, end = _audio_span(handle) if audio_only else (0, os.fstat(handle.fileno()).st_size)
        handle.seek(start)
        left = end - start
        while left > 0 and (chunk := handle.read(min(_HASH_CHUNK, left))):
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


#: An ID3v2 header: "ID3", version (2 bytes), flags, then the tag's size in 4 syncsafe bytes.
_ID3V2_HEADER = 10
#: The ID3v2.4 flag saying a 10-byte footer follows the tag (ID3v2.4 section 3.1; the bit
#: means nothing in earlier versions).
_ID3V2_FOOTER_FLAG = 0x10
#: Where a tag was rewritten in front of another (mutagen keeps an old v2.4 footer, "3DI"),
#: several tag pieces lead the audio: at most this many are skipped.
_MOST_LEADING_TAGS = 8
#: An ID3v1 tag: the last 128 bytes of the file, starting with "TAG".
_ID3V1_SIZE = 128


def _audio_span(handle: BinaryIO) -> tuple[int, int]:
    """Where an MP3's audio starts and ends, leaving out the ID3 tags at either end."""
    size = os.fstat(handle.fileno()).st_size
    start = 0
    for _ in range(_MOST_LEADING_TAGS):
        handle.seek(start)
        header = handle.read(_ID3V2_HEADER)
        if len(header) < _ID3V2_HEADER or any(b >= 0x80 for b in header[6:]):
            break
        if header[:3] == b"3DI":  # a footer whose tag was replaced: 10 bytes of its own
            start = min(size, start + _ID3V2_HEADER)
            continue
        if header[:3] != b"ID3":
            break
        body = 0
        for byte in header[6:]:
            body = body << 7 | byte
        footer = _ID3V2_HEADER if header[3] >= 4 and header[5] & _ID3V2_FOOTER_FLAG else 0
        start = min(size, start + _ID3V2_HEADER + body + footer)
    end = size
    if end - start >= _ID3V1_SIZE:
        handle.seek(end - _ID3V1_SIZE)
        if handle.read(3) == b"TAG":
            end -= _ID3V1_SIZE
    return start, end


def _audio_facts(
    path: Path, request: SongRequest, generation: Generation
) -> tuple[float | None, int | None]:
    """Duration and sample rate: the API's ``extra_info`` when given, else read from the file."""
    info = generation.music_info
    duration = info.duration if info is not None else None
    sample_rate = info.sample_rate if info is not None else None
    if duration is not None and sample_rate is not None:
        return duration, sample_rate
    probed_duration, probed_rate = _probe(path, request.format)
    return (
        duration if duration is not None else probed_duration,
        sample_rate if sample_rate is not None else probed_rate,
    )


def _probe(path: Path, format: str) -> tuple[float | None, int | None]:
    try:
        if format == "wav":
            with wave.open(str(path), "rb") as audio:
                rate = audio.getframerate()
                return audio.getnframes() / rate, rate
        if format == "mp3":
            mp3: Any = importlib.import_module("mutagen.mp3")
            info = mp3.MP3(path).info
            return float(info.length), int(info.sample_rate)
    except Exception:  # a file we cannot read is still delivered; the facts stay unknown
        logger.debug("could not read the audio facts of %s", path.name, exc_info=True)
    return None, None


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; a no-op where impossible)."""
    # Makes the rename durable on POSIX; not possible (nor needed) on Windows.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
