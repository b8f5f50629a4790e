"""File names from hostile titles and keys never escape the output directory and never clash."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aimlmusic.catalog._names import (
    MAX_NAME_BYTES,
    NameAllocator,
    fold_name,
    is_inside,
    safe_stem,
)

WINDOWS_RESERVED = (
    {"CON", "PRN", "AUX", "NUL"} | {f"COM{i}" for i in range(10)} | {f"LPT{i}" for i in range(10)}
)


def allocate(key: str, title: str, ext: str = "mp3", taken: set[str] | None = None) -> str:
    used = taken if taken is not None else set()
    name = NameAllocator(lambda folded: folded in used).allocate(key, title, ext)
    used.add(fold_name(name))
    return name


def assert_safe(name: str) -> None:
    assert name
    assert name not in (".", "..")
    assert "/" not in name
    assert "\\" not in name
    assert "\x00" not in name
    assert not name.startswith((".", "-", " "))
    stem = name.rsplit(".", 1)[0]
    assert not stem.endswith((" ", "."))
    assert len(name.encode("utf-8")) <= MAX_NAME_BYTES
    assert all(unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in name)
    assert name.split(".", 1)[0].rstrip(" ").upper() not in WINDOWS_RESERVED
    assert not any(c in '<>:"|?*' for c in name)


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("Neon Rain", "Neon Rain.mp3"),
        ("../../etc/passwd", "etc_passwd.mp3"),
        ("/absolute/path", "absolute_path.mp3"),
        ("C:\\Windows\\system32", "C_Windows_system32.mp3"),
        ("..", "song.mp3"),
        ("...", "song.mp3"),
        ("CON", "_CON.mp3"),
        ("nul.txt", "_nul.txt.mp3"),
        ("com1 ", "_com1.mp3"),
        ("COM\u00b9", "_COM1.mp3"),  # superscript one: NFKC makes it a plain COM1
        ("trailing dots...", "trailing dots.mp3"),
        ("a\x00b\x1bc", "a_b_c.mp3"),
        ("evil\u202egpj.exe", "evil_gpj.exe.mp3"),
        ("full\uff0fwidth", "full_width.mp3"),  # fullwidth solidus
        ("-rf", "rf.mp3"),
        ("", "k.mp3"),
        ("   ", "k.mp3"),
    ],
)
def test_hostile_titles(title: str, expected: str) -> None:
    """Known-hostile titles give the expected safe name."""
    name = allocate("k", title.strip() and title)
    assert name == expected
    assert_safe(name)


def test_long_titles_are_capped_on_a_character_boundary() -> None:
    """A very long multi-byte title is cut to the byte cap without splitting a character."""
    name = allocate("k", "é" * 500)
    assert_safe(name)
    assert name.endswith(".mp3")
    name.encode("utf-8").decode("utf-8")


def test_clashes_append_the_key_then_a_hash() -> None:
    """Equal titles (also differing only by case or normal form) get unique names."""
    taken: set[str] = set()
    first = allocate("one", "Song", taken=taken)
    second = allocate("two", "SONG", taken=taken)
    third = allocate("two", "song", taken=taken)  # same key again: the hash decides
    fourth = allocate("x", "Cafe\u0301", taken=taken)
    fifth = allocate("y", "Caf\u00e9", taken=taken)
    assert first == "Song.mp3"
    assert second == "SONG-two.mp3"
    assert third.startswith("song-")
    assert third not in (first, second)
    assert fourth != fifth
    assert fold_name(fourth) != fold_name(fifth)
    assert len({fold_name(n) for n in (first, second, third, fourth, fifth)}) == 5


def test_is_inside_rejects_escapes(tmp_path: Path) -> None:
    """is_inside accepts plain child names only."""
    assert is_inside(tmp_path, "song.mp3")
    for bad in ("", ".", "..", "../x", "a/b", "a\\b", "x\x00"):
        assert not is_inside(tmp_path, bad)


def test_safe_stem_fallback() -> None:
    """A text with nothing usable falls back to the given stem."""
    assert safe_stem("\x00\x01/..", fallback="zz") == "zz"


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.text(min_size=1, max_size=300), title=st.text(max_size=600))
def test_any_title_or_key_gives_a_path_inside_the_directory(
    tmp_path: Path, key: str, title: str
) -> None:
    """Property: whatever the key and title, the name is safe and resolves inside the dir."""
    for ext in ("mp3", "wav", "pcm"):
        name = allocate(key, title, ext)
        assert_safe(name)
        assert name.endswith("." + ext)
        assert is_inside(tmp_path, name)
        assert (tmp_path / name).resolve().parent == tmp_path.resolve()


@settings(max_examples=100)
@given(titles=st.lists(st.text(max_size=40), min_size=2, max_size=12))
def test_allocated_names_are_unique(titles: list[str]) -> None:
    """Property: names handed out for distinct keys never collide case-insensitively."""
    taken: set[str] = set()
    names = [allocate(f"key{i}", t, taken=taken) for i, t in enumerate(titles)]
    assert len({fold_name(n) for n in names}) == len(names)
