"""Reading catalogs: JSONL and CSV, validation of every row, problems reported all at once."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from aimlmusic import AudioSetting, SongRequest
from aimlmusic.catalog import (
    CatalogError,
    CatalogProblem,
    CatalogRow,
    iter_catalog,
    load_catalog,
    song_key,
)

PROMPT = "Warm lo-fi ballad with soft piano"
LYRICS = "[Verse]\nStreetlights flicker\n[Chorus]\nHome again"


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def problems_of(path: Path) -> list[CatalogProblem]:
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    return list(info.value.problems)


def test_jsonl_rows_become_requests(tmp_path: Path) -> None:
    """A valid JSONL row becomes a CatalogRow with its key, title, line and audio setting."""
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"key": "a", "title": "A", "prompt": PROMPT, "lyrics": LYRICS},
            {
                "key": "b",
                "title": "B",
                "prompt": PROMPT,
                "lyrics": LYRICS,
                "format": "WAV",
                "sample_rate": 44100,
                "bitrate": "256000",
            },
        ],
    )
    rows = load_catalog(path)
    assert [(r.key, r.title, r.line) for r in rows] == [("a", "A", 1), ("b", "B", 2)]
    assert rows[0].request == SongRequest(prompt=PROMPT, lyrics=LYRICS)
    assert rows[1].request.audio_setting == AudioSetting("wav", 44100, 256000)


def test_bom_blank_lines_and_crlf_are_tolerated(tmp_path: Path) -> None:
    """A UTF-8 BOM, blank lines and CRLF line ends do not disturb JSONL reading."""
    line = json.dumps({"key": "k", "prompt": PROMPT, "lyrics": LYRICS})
    path = tmp_path / "c.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf" + line.encode() + b"\r\n\r\n" + line.replace('"k"', '"j"').encode()
    )
    rows = load_catalog(path)
    assert [(r.key, r.line) for r in rows] == [("k", 1), ("j", 3)]


def test_default_key_is_a_stable_content_hash_shared_by_formats(tmp_path: Path) -> None:
    """Without a key, a row's key is a content hash that is the same in JSONL and CSV."""
    jsonl = write_jsonl(tmp_path / "c.jsonl", [{"title": "T", "prompt": PROMPT, "lyrics": LYRICS}])
    csv_path = tmp_path / "c.csv"
    csv_path.write_text(
        'title,prompt,lyrics\nT,"' + PROMPT + '","' + LYRICS + '"\n', encoding="utf-8"
    )
    (a,) = load_catalog(jsonl)
    (b,) = load_catalog(csv_path)
    assert a.key == b.key == song_key(SongRequest(prompt=PROMPT, lyrics=LYRICS))
    assert len(a.key) == 16
    other = song_key(SongRequest(prompt=PROMPT + "!", lyrics=LYRICS))
    assert other != a.key


def test_a_derived_key_ignores_the_title(tmp_path: Path) -> None:
    """Renaming a keyless song keeps its key (it is not a new, paid song); changing what is
    paid for (prompt, lyrics, audio settings) changes it."""
    first = write_jsonl(
        tmp_path / "a.jsonl", [{"title": "Old", "prompt": PROMPT, "lyrics": LYRICS}]
    )
    renamed = write_jsonl(
        tmp_path / "b.jsonl", [{"title": "New name", "prompt": PROMPT, "lyrics": LYRICS}]
    )
    wav = write_jsonl(
        tmp_path / "c.jsonl",
        [{"title": "Old", "prompt": PROMPT, "lyrics": LYRICS, "format": "wav"}],
    )
    (a,) = load_catalog(first)
    (b,) = load_catalog(renamed)
    (c,) = load_catalog(wav)
    assert a.key == b.key
    assert c.key != a.key


def test_csv_multiline_quoted_lyrics_and_line_numbers(tmp_path: Path) -> None:
    """CSV records spanning several lines are read whole and numbered by their first line."""
    path = tmp_path / "c.csv"
    path.write_text(
        "key,prompt,lyrics,format\n"
        f'one,{PROMPT},"[Verse]\nline one\nline two",mp3\n'
        f'two,{PROMPT},"short",pcm\n',
        encoding="utf-8",
    )
    items = list(iter_catalog(path))
    row = items[0]
    assert isinstance(row, CatalogRow)
    assert row.line == 2
    assert row.request.lyrics == "[Verse]\nline one\nline two"
    problem = items[1]
    assert isinstance(problem, CatalogProblem)
    assert problem.line == 5
    assert problem.field == "lyrics"
    assert problem.key == "two"


def test_every_bad_row_is_reported_at_once_with_line_numbers(tmp_path: Path) -> None:
    """Bad lengths, bad enums, bad types, missing fields and bad JSON are all listed together."""
    path = tmp_path / "c.jsonl"
    lines = [
        json.dumps({"key": "ok", "prompt": PROMPT, "lyrics": LYRICS}),
        json.dumps({"key": "short", "prompt": "tiny", "lyrics": "x" * 3001}),
        json.dumps(
            {
                "key": "enums",
                "prompt": PROMPT,
                "lyrics": LYRICS,
                "format": "ogg",
                "sample_rate": 48000,
                "bitrate": True,
            }
        ),
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"key": "nolyrics", "prompt": PROMPT}),
        json.dumps({"key": 7, "prompt": 12, "lyrics": LYRICS, "sample_rate": "44.1k"}),
        json.dumps({"prompt": PROMPT, "lyrics": LYRICS, "lyric": "typo"}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    problems = problems_of(path)
    by_line: dict[int, list[str]] = {}
    for p in problems:
        by_line.setdefault(p.line, []).append(p.field or "")
    assert {line: sorted(fields) for line, fields in by_line.items()} == {
        2: ["lyrics", "prompt"],
        3: ["audio_setting.bitrate", "audio_setting.format", "audio_setting.sample_rate"],
        4: [""],
        5: [""],
        6: ["lyrics"],
        7: ["audio_setting.sample_rate", "prompt"],
        8: [""],
    }
    (short_prompt,) = [p for p in problems if p.line == 2 and p.field == "prompt"]
    assert "10-300 characters" in str(short_prompt)
    assert "got 4 characters" in str(short_prompt)
    messages = " | ".join(str(p) for p in problems)
    assert "3001 characters" in messages
    assert "'ogg'" in messages
    assert "48000" in messages
    assert "unknown fields ['lyric']" in messages
    assert "line 4: not valid JSON" in messages


def test_duplicate_keys_are_reported_with_the_first_line(tmp_path: Path) -> None:
    """A repeated key (given or content-derived) is an error naming both lines."""
    row = {"prompt": PROMPT, "lyrics": LYRICS}
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [{"key": "x", **row}, {"key": "y", **row}, {"key": "x", **row}, row, row],
    )
    problems = problems_of(path)
    assert [(p.line, p.field) for p in problems] == [(3, "key"), (5, "key")]
    assert "first used on line 1" in str(problems[0])
    assert "first used on line 4" in str(problems[1])


def test_bad_encoding_is_reported_on_its_line(tmp_path: Path) -> None:
    """A line that is not UTF-8 is reported with its number; other lines still parse."""
    good = json.dumps({"key": "g", "prompt": PROMPT, "lyrics": LYRICS}).encode()
    bad = (
        json.dumps({"key": "b", "prompt": PROMPT, "lyrics": LYRICS})
        .encode()
        .replace(b"Warm", b"W\xe9rm")
    )
    path = tmp_path / "c.jsonl"
    path.write_bytes(good + b"\n" + bad + b"\n" + good.replace(b'"g"', b'"h"') + b"\n")
    problems = problems_of(path)
    assert len(problems) == 1
    assert problems[0].line == 2
    assert "not valid UTF-8" in problems[0].message
    assert "0xe9" in problems[0].message


def test_bad_encoding_inside_a_csv_record(tmp_path: Path) -> None:
    """A CSV record with a non-UTF-8 byte on its second line is reported at the record."""
    path = tmp_path / "c.csv"
    path.write_bytes(
        b"key,prompt,lyrics\n"
        + f'a,{PROMPT},"first line\n'.encode()
        + b'second \xff line"\n'
        + f'b,{PROMPT},"{LYRICS}"\n'.encode()
    )
    items = list(iter_catalog(path))
    assert isinstance(items[0], CatalogProblem)
    assert items[0].line == 3
    assert "not valid UTF-8" in items[0].message
    assert isinstance(items[1], CatalogRow)
    assert items[1].key == "b"


def test_csv_cell_count_and_header_problems(tmp_path: Path) -> None:
    """A CSV record with the wrong number of cells and repeated header columns are errors."""
    path = tmp_path / "c.csv"
    path.write_text(f"key,prompt,lyrics\na,{PROMPT}\n", encoding="utf-8")
    (problem,) = problems_of(path)
    assert problem.line == 2
    assert "2 cells" in problem.message
    path.write_text(f"key,key,lyrics\na,{PROMPT},x\n", encoding="utf-8")
    (problem,) = problems_of(path)
    assert "repeated columns ['key']" in problem.message


def test_hostile_titles_and_keys(tmp_path: Path) -> None:
    """Path-like titles are accepted (names are made safe later); control characters are not."""
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {
                "key": "../../etc/passwd",
                "title": "../../../evil",
                "prompt": PROMPT,
                "lyrics": LYRICS,
            },
            {"key": "esc", "title": "bad\x1b[31mred", "prompt": PROMPT, "lyrics": LYRICS},
            {"key": "bidi\u202e", "prompt": PROMPT, "lyrics": LYRICS},
            {"key": "", "prompt": PROMPT, "lyrics": LYRICS},
            {"key": "k" * 201, "prompt": PROMPT, "lyrics": LYRICS},
        ],
    )
    items = list(iter_catalog(path))
    assert isinstance(items[0], CatalogRow)
    assert items[0].title == "../../../evil"
    problems = [i for i in items if isinstance(i, CatalogProblem)]
    assert [(p.line, p.field) for p in problems] == [
        (2, "title"),
        (3, "key"),
        (4, "key"),
        (5, "key"),
    ]
    assert "U+001B" in str(problems[0])
    assert "U+202E" in str(problems[1])


def test_rows_that_would_break_the_parser_or_the_files_are_problems(tmp_path: Path) -> None:
    """JSON nested too deeply, a number past Python's 4,300 digits and lone surrogates (JSON
    escapes no file or request can hold) are reported as problems on their lines, not
    raised."""
    good = {"key": "fine", "prompt": PROMPT, "lyrics": LYRICS}
    rows = [
        {"key": "digits", "prompt": PROMPT, "lyrics": LYRICS, "sample_rate": "1" * 5000},
        {"key": "bad\ud800", "prompt": PROMPT, "lyrics": LYRICS},
        {"key": "t", "title": "x\udfff", "prompt": PROMPT, "lyrics": LYRICS},
        {"key": "p", "prompt": "Synth\ud800 pads", "lyrics": LYRICS},
        {"key": "l", "prompt": PROMPT, "lyrics": "[Verse]\n\udc00"},
        {"key": "f", "prompt": PROMPT, "lyrics_file": "a\ud800.txt"},
    ]
    # json.dumps writes a lone surrogate as its escape, as a hostile catalog would.
    lines = [json.dumps(good), "[" * 100_000, *(json.dumps(row) for row in rows)]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    items = list(iter_catalog(path))
    assert isinstance(items[0], CatalogRow)
    problems = [i for i in items if isinstance(i, CatalogProblem)]
    assert [(p.line, p.field) for p in problems] == [
        (2, None),
        (3, "audio_setting.sample_rate"),
        (4, "key"),
        (5, "title"),
        (6, "prompt"),
        (7, "lyrics"),
        (8, "lyrics_file"),
    ]
    assert "nested too deeply" in str(problems[0])
    assert "U+D800" in str(problems[2])


def test_lyrics_file_relative_to_the_catalog(tmp_path: Path) -> None:
    """lyrics_file is read relative to the catalog, BOM and CRLF normalised."""
    (tmp_path / "lyrics").mkdir()
    (tmp_path / "lyrics" / "one.txt").write_bytes(
        b"\xef\xbb\xbf[Verse]\r\nA line of words\r\n[Chorus]\r\nAnother line\r\n"
    )
    path = write_jsonl(
        tmp_path / "c.jsonl", [{"key": "a", "prompt": PROMPT, "lyrics_file": "lyrics/one.txt"}]
    )
    (row,) = load_catalog(path)
    assert row.request.lyrics == "[Verse]\nA line of words\n[Chorus]\nAnother line"


def test_lyrics_file_problems(tmp_path: Path) -> None:
    """Missing, absolute, escaping, symlinked-out, non-UTF-8 and doubled lyrics are all errors."""
    catalog_dir = tmp_path / "cat"
    catalog_dir.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the catalog directory", encoding="utf-8")
    (catalog_dir / "link.txt").symlink_to(secret)
    (catalog_dir / "latin1.txt").write_bytes(b"line one\nla\xefne two\n")
    rows = [
        {"key": "missing", "prompt": PROMPT, "lyrics_file": "nope.txt"},
        {"key": "absolute", "prompt": PROMPT, "lyrics_file": str(secret)},
        {"key": "escape", "prompt": PROMPT, "lyrics_file": "../secret.txt"},
        {"key": "link", "prompt": PROMPT, "lyrics_file": "link.txt"},
        {"key": "latin1", "prompt": PROMPT, "lyrics_file": "latin1.txt"},
        {"key": "both", "prompt": PROMPT, "lyrics": LYRICS, "lyrics_file": "x.txt"},
        {"key": "neither", "prompt": PROMPT},
    ]
    path = write_jsonl(catalog_dir / "c.jsonl", rows)
    problems = problems_of(path)
    assert [p.line for p in problems] == [1, 2, 3, 4, 5, 6, 7]
    text = [str(p) for p in problems]
    assert "no such file 'nope.txt'" in text[0]
    assert "must be relative" in text[1]
    assert "inside the catalog's directory" in text[2]
    assert "inside" in text[3]
    assert "not valid UTF-8 (its line 2)" in text[4]
    assert "not both" in text[5]
    assert "lyrics: is required" in text[6]
    assert all(p.key == rows[i]["key"] for i, p in enumerate(problems))


def test_a_lyrics_file_in_a_symlink_loop_is_a_problem_of_its_line(tmp_path: Path) -> None:
    """A lyrics_file that is a symlink loop is a lyrics_file problem on its line (Python
    3.11's resolve() raises RuntimeError for it, 3.13's leaves it to the read), never a
    traceback; other rows still load."""
    (tmp_path / "loop1").symlink_to("loop2")
    (tmp_path / "loop2").symlink_to("loop1")
    rows = [
        {"key": "a", "prompt": PROMPT, "lyrics_file": "loop1"},
        {"key": "b", "prompt": PROMPT, "lyrics_file": "loop2/deeper.txt"},
        {"key": "c", "prompt": PROMPT, "lyrics": LYRICS},
    ]
    problems = problems_of(write_jsonl(tmp_path / "c.jsonl", rows))
    assert [(p.line, p.field) for p in problems] == [(1, "lyrics_file"), (2, "lyrics_file")]
    assert re.search(r"cannot (resolve|read) 'loop1'", problems[0].message)


def test_file_level_problems(tmp_path: Path) -> None:
    """A missing file, an unknown extension and an empty catalog are reported at line 0."""
    (p,) = problems_of(tmp_path / "missing.jsonl")
    assert p.line == 0
    assert "cannot open" in p.message
    (tmp_path / "songs.txt").write_text("", encoding="utf-8")
    (p,) = problems_of(tmp_path / "songs.txt")
    assert "name it .jsonl or .csv" in p.message
    (tmp_path / "empty.csv").write_text("key,prompt,lyrics\n", encoding="utf-8")
    (p,) = problems_of(tmp_path / "empty.csv")
    assert "no songs" in p.message


def test_catalog_error_message_lists_problems(tmp_path: Path) -> None:
    """CatalogError's text counts the problems and shows each with its line."""
    path = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "x", "lyrics": "y"}])
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    text = str(info.value)
    assert text.startswith("2 problems in catalog")
    assert "line 1: prompt:" in text
    assert "line 1: lyrics:" in text
    assert isinstance(info.value, ValueError)


def test_underscore_columns_are_ignored(tmp_path: Path) -> None:
    """Columns starting with an underscore carry notes and are not errors."""
    path = tmp_path / "c.csv"
    path.write_text(f'_note,prompt,lyrics\nhello,{PROMPT},"{LYRICS}"\n', encoding="utf-8")
    (row,) = load_catalog(path)
    assert row.title == ""


def test_the_shipped_catalogs_are_valid() -> None:
    """The examples (JSONL and CSV, with lyrics files) and the bundled demo catalog load,
    and the CSV version describes the same songs as the JSONL one."""
    import importlib.resources

    examples = Path(__file__).resolve().parents[1] / "examples"
    jsonl = load_catalog(examples / "catalog.jsonl")
    csv_rows = load_catalog(examples / "catalog.csv")
    assert len(jsonl) == 12
    assert [(r.key, r.title, r.request) for r in jsonl] == [
        (r.key, r.title, r.request) for r in csv_rows
    ]
    assert {r.request.format for r in jsonl} == {"mp3", "wav", "pcm"}
    demo = importlib.resources.files("aimlmusic.catalog").joinpath("demo_catalog.jsonl")
    with importlib.resources.as_file(demo) as path:
        rows = load_catalog(path)
    assert len(rows) == 12
    assert {r.request.format for r in rows} == {"mp3", "wav"}
