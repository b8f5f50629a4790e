"""Safe, unique file names for songs, whatever the catalog says.

A name is built from the song's title (or its key when it has none) and can never escape the
output directory: separators, NUL, control and format characters are replaced, Unicode is
normalised (NFKC, so look-alikes such as a fullwidth solidus become a plain ``/`` first and
are then replaced), leading dots and dashes and trailing dots and spaces are stripped, Windows'
reserved device names are defused, and the UTF-8 length is capped. Uniqueness (compared
case-insensitively, as macOS and Windows compare names) is the caller's job through
:class:`NameAllocator`, which appends the key, then a short hash.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path

__all__ = ["MAX_NAME_BYTES", "NameAllocator", "fold_name", "is_inside", "safe_stem"]

#: Longest file name produced, in UTF-8 bytes, extension included. Most file systems allow
#: 255; the margin leaves room for the temporary names used while downloading.
MAX_NAME_BYTES = 180

#: Longest stem taken from a title or key before the extension and any suffix are added.
_MAX_STEM_BYTES = 96

#: Characters that Windows forbids in names, plus both separators.
_FORBIDDEN = set('<>:"/\\|?*')

#: Unicode categories that must not reach a file name: controls, format characters (bidi
#: overrides can disguise an extension), separators other than space, surrogates, unassigned.
_DROPPED_CATEGORIES = {"Cc", "Cf", "Cs", "Cn", "Zl", "Zp", "Co"}

_WINDOWS_RESERVED = {
    "CON",
    "PRN",
    "AUX",
    "NUL",
    "CONIN$",
    "CONOUT$",
    *(f"COM{i}" for i in range(10)),
    *(f"LPT{i}" for i in range(10)),
}

_RUNS = re.compile(r"[\s_]*_[\s_]*|\s+")


def _clean_char(char: str) -> str:
    if char in _FORBIDDEN:
        return "_"
    category = unicodedata.category(char)
    if category in _DROPPED_CATEGORIES:
        return "_"
    if category.startswith("Z"):  # any other space becomes a plain one
        return " "
    return char


def _cap_bytes(text: str, limit: int) -> str:
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    # Cut on a character boundary: drop the partial character at the end.
    return encoded[:limit].decode("utf-8", "ignore")


def _trim(text: str) -> str:
    # Leading dots make hidden files (or "." and ".."); a leading dash reads as an option to
    # command-line tools; Windows drops trailing dots and spaces, making names collide.
    return text.lstrip(" .-_").rstrip(" ._")


def safe_stem(text: str, *, fallback: str = "song", limit: int = _MAX_STEM_BYTES) -> str:
    """A file-name stem from any text: no separators, no control characters, no leading dot,
    no trailing dot or space, not a Windows device name, at most ``limit`` UTF-8 bytes.

    Returns ``fallback`` when nothing usable is left.
    """
    normalised = unicodedata.normalize("NFKC", text)
    cleaned = "".join(_clean_char(c) for c in normalised)
    cleaned = _RUNS.sub(lambda m: "_" if "_" in m.group() else " ", cleaned)
    stem = _trim(_cap_bytes(_trim(cleaned), limit))
    return _defuse(stem) if stem else fallback


def _defuse(stem: str) -> str:
    # Windows treats "NUL", "nul.txt" and "Nul .tar.gz" alike: the part before the first dot.
    device = stem.split(".", 1)[0].rstrip(" ").upper()
    return f"_{stem}" if device in _WINDOWS_RESERVED else stem


def fold_name(name: str) -> str:
    """The form two names are compared in: case- and normalisation-insensitive."""
    return unicodedata.normalize("NFC", name).casefold()


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]


class NameAllocator:
    """Hands out unique file names; ``taken`` decides whether a folded name is in use.

    The first choice is ``<title>.<ext>`` (or ``<key>.<ext>`` without a title); on a clash,
    ``<title>-<key>.<ext>``; then ``<title>-<hash of key>.<ext>``; then a counter. ``taken``
    is usually backed by the journal, which stores every name it gave out, so a name stays
    the same across runs.
    """

    def __init__(self, taken: Callable[[str], bool]) -> None:
        self._taken = taken

    def allocate(self, key: str, title: str, extension: str) -> str:
        """A name for the song ``key`` not yet taken; does not reserve it."""
        ext = safe_stem(extension, fallback="bin", limit=8).lower().replace(" ", "")
        stem = safe_stem(title or key)
        key_stem = safe_stem(key, fallback=_short_hash(key), limit=48)
        candidates = [stem, f"{stem}-{key_stem}", f"{stem}-{_short_hash(key)}"]
        if not title:
            candidates = [stem, f"{stem}-{_short_hash(key)}"]
        for candidate in candidates:
            name = self._fit(candidate, ext)
            if not self._taken(fold_name(name)):
                return name
        counter = 2
        while True:
            name = self._fit(f"{stem}-{_short_hash(key)}-{counter}", ext)
            if not self._taken(fold_name(name)):
                return name
            counter += 1

    @staticmethod
    def _fit(stem: str, ext: str) -> str:
        room = MAX_NAME_BYTES - len(ext.encode("utf-8")) - 1
        return f"{_defuse(_cap_bytes(stem, room).rstrip(' ._') or 'song')}.{ext}"


def is_inside(directory: Path, name: str) -> bool:
    """True when ``directory / name`` is a direct child of ``directory`` (defence in depth)."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        return False
    root = directory.resolve()
    return (root / name).resolve().parent == root
