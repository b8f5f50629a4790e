"""Reading a catalog file (JSONL or CSV) into validated :class:`CatalogRow` objects.

Every row is checked completely before anything is sent: each field is validated on its own
(so one row can report several problems) and then the row is built as a
:class:`~aimlmusic.SongRequest`, the single authority on the API's limits. Problems are
collected with their line numbers instead of stopping at the first, so a user fixes a bad
catalog in one go.

The reader streams: it yields one row (or its problems) at a time and keeps only the set of
keys seen, so a catalog of a million songs never sits in memory.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs

from .._converter import request_to_wire
from .._errors import AimlMusicError, RequestValidationError
from .._models import AudioSetting, SongRequest

__all__ = [
    "CatalogError",
    "CatalogProblem",
    "CatalogRow",
    "CatalogFormat",
    "iter_catalog",
    "load_catalog",
    "song_key",
]

CatalogFormat = Literal["jsonl", "csv"]

#: Fields a row may have. Any other field is a problem (a typo such as ``sample-rate`` would
#: otherwise silently change what is paid for), except names starting with ``_``, which are
#: ignored so a spreadsheet can carry its own notes.
KNOWN_FIELDS = (
    "key",
    "title",
    "prompt",
    "lyrics",
    "lyrics_file",
    "format",
    "sample_rate",
    "bitrate",
)

#: Longest key and title accepted, in characters.
MAX_KEY_CHARS = 200
MAX_TITLE_CHARS = 300
#: Largest lyrics file read, in bytes: far above the API's 3000 characters, small enough that a
#: catalog pointing at a huge file cannot exhaust memory.
MAX_LYRICS_FILE_BYTES = 64 * 1024

#: Placeholders that satisfy the limits, used to validate one text field at a time.
_VALID_PROMPT = "placeholder prompt"
_VALID_LYRICS = "placeholder lyrics"

_BOM = "\ufeff"


@attrs.frozen
class CatalogProblem:
    """One thing wrong with a catalog: where (``line``, 0 for the file itself), which ``field``
    (when known), which ``key`` (when known) and a readable ``message``."""

    line: int
    message: str
    field: str | None = None
    key: str | None = None

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "file"
        what = f"{self.field}: " if self.field else ""
        return f"{where}: {what}{self.message}"


class CatalogError(AimlMusicError, ValueError):
    """The catalog cannot be used; ``problems`` lists every problem found, in file order.

    Raised before anything is sent: an invalid catalog spends nothing.
    """

    #: How many problems ``str()`` shows; ``problems`` always has them all.
    SHOWN = 50

    def __init__(self, path: str | os.PathLike[str], problems: Iterable[CatalogProblem]) -> None:
        self.path = Path(path)
        self.problems = tuple(problems)
        lines = [str(p) for p in self.problems[: self.SHOWN]]
        if len(self.problems) > self.SHOWN:
            lines.append(f"... and {len(self.problems) - self.SHOWN} more")
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        super().__init__(f"{count} {noun} in catalog {self.path}:\n  " + "\n  ".join(lines))


@attrs.frozen
class CatalogRow:
    """One valid song of a catalog.

    ``key`` identifies the song across runs (given, or a stable hash of the content: see
    :func:`song_key`); ``title`` names its file and its MP3 tag (empty when the row had none);
    ``line`` is where the row starts in the catalog file.
    """

    key: str
    title: str
    request: SongRequest
    line: int


def song_key(request: SongRequest) -> str:
    """The default key of a song: 16 hex digits of a SHA-256 over what is paid for, the
    request (prompt, lyrics, audio settings, model), never the title.

    Renaming a song (its title) keeps its key, so it is never generated (and paid for) again;
    the same content gives the same key whichever file format it came from, so a song keeps
    its journal entry when the catalog is converted from CSV to JSONL. Two rows without keys
    asking for the same song get the same key, which is reported as a duplicate.
    """
    digest = hashlib.sha256(
        json.dumps(
            request_to_wire(request), sort_keys=True, ensure_ascii=False, separators=(",", ":")
        ).encode("utf-8")
    )
    return digest.hexdigest()[:16]


def detect_format(path: Path) -> CatalogFormat | None:
    """The catalog format from the file name: ``.jsonl``/``.ndjson``/``.json`` or ``.csv``."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    return None


def load_catalog(
    path: str | os.PathLike[str], *, format: CatalogFormat | None = None
) -> list[CatalogRow]:
    """Read and validate a whole catalog; raise :class:`CatalogError` listing every problem.

    ``format`` defaults to what the file name says (``.jsonl``, ``.ndjson``, ``.json`` or
    ``.csv``).
    """
    rows: list[CatalogRow] = []
    problems: list[CatalogProblem] = []
    for item in iter_catalog(path, format=format):
        if isinstance(item, CatalogRow):
            rows.append(item)
        else:
            problems.append(item)
    if problems:
        raise CatalogError(path, problems)
    return rows


def iter_catalog(
    path: str | os.PathLike[str], *, format: CatalogFormat | None = None
) -> Iterator[CatalogRow | CatalogProblem]:
    """Stream a catalog: each valid row as a :class:`CatalogRow`, each problem as a
    :class:`CatalogProblem`, in file order. Duplicate keys are problems of the later row.

    Never raises for bad content; a catalog that cannot be opened yields one problem.
    """
    catalog = Path(path)
    fmt = format or detect_format(catalog)
    if fmt is None:
        yield CatalogProblem(
            0, f"cannot tell the format of {catalog.name!r}: name it .jsonl or .csv"
        )
        return
    try:
        handle = catalog.open("rb")
    except OSError as exc:
        yield CatalogProblem(0, f"cannot open the catalog: {exc.strerror or exc}")
        return
    seen: dict[str, int] = {}
    records = 0
    with handle:
        lines = _decoded_lines(handle)
        reader = _jsonl_records(lines) if fmt == "jsonl" else _csv_records(lines)
        for line, fields, record_problems in reader:
            records += 1
            if record_problems:
                yield from record_problems
                continue
            outcome = _build_row(line, fields, catalog.parent)
            problems = [] if isinstance(outcome, CatalogRow) else outcome
            # Keys of invalid rows count too: fixing a row must not reveal a new duplicate.
            key = outcome.key if isinstance(outcome, CatalogRow) else _key_of(outcome)
            if key is not None:
                first = seen.setdefault(key, line)
                if first != line:
                    derived = "key" not in fields
                    hint = (
                        ": it asks for the same song (prompt, lyrics and audio settings) as "
                        "that row; give each row its own key to pay for it twice"
                        if derived
                        else ""
                    )
                    problems.append(
                        CatalogProblem(
                            line,
                            f"duplicate key {key!r} (first used on line {first}){hint}",
                            field="key",
                            key=key,
                        )
                    )
            if problems or not isinstance(outcome, CatalogRow):
                yield from problems
            else:
                yield outcome
    if records == 0:
        yield CatalogProblem(0, "the catalog has no songs")


def _key_of(problems: list[CatalogProblem]) -> str | None:
    return next((p.key for p in problems if p.key is not None), None)


# --------------------------------------------------------------------------- decoding


@attrs.frozen
class _Line:
    number: int
    text: str
    problem: CatalogProblem | None


def _decoded_lines(handle: Iterable[bytes]) -> Iterator[_Line]:
    """Decode line by line so a bad byte is reported on its own line, not as a failed file."""
    for number, raw in enumerate(handle, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield _Line(
                number,
                raw.decode("utf-8", "replace"),
                CatalogProblem(
                    number,
                    f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})",
                ),
            )
            continue
        if number == 1 and text.startswith(_BOM):
            text = text[1:]
        yield _Line(number, text, None)


_Record = tuple[int, Mapping[str, Any], list[CatalogProblem]]


def _jsonl_records(lines: Iterable[_Line]) -> Iterator[_Record]:
    for line in lines:
        if line.problem is not None:
            yield line.number, {}, [line.problem]
            continue
        if not line.text.strip():
            continue
        try:
            value = json.loads(line.text)
        except ValueError as exc:
            yield line.number, {}, [CatalogProblem(line.number, f"not valid JSON ({exc})")]
            continue
        except RecursionError:  # arrays or objects nested thousands deep
            problem = CatalogProblem(line.number, "not valid JSON (nested too deeply)")
            yield line.number, {}, [problem]
            continue
        if not isinstance(value, dict):
            yield (
                line.number,
                {},
                [CatalogProblem(line.number, f"expected a JSON object, got {_json_type(value)}")],
            )
            continue
        yield line.number, value, []


def _csv_records(lines: Iterable[_Line]) -> Iterator[_Record]:
    # csv needs the text; bad lines are remembered by number so the record that spans them is
    # reported as an encoding problem rather than as whatever the replacement characters did.
    bad: dict[int, CatalogProblem] = {}

    def texts() -> Iterator[str]:
        for line in lines:
            if line.problem is not None:
                bad[line.number] = line.problem
            yield line.text

    reader = csv.reader(texts(), strict=True)
    previous_end = 0
    header: list[str] | None = None
    header_line = 0
    while True:
        start = previous_end + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield start, {}, [CatalogProblem(start, f"not valid CSV ({exc})")]
            return
        end = reader.line_num
        previous_end = end
        encoding = [bad[n] for n in range(start, end + 1) if n in bad]
        if not cells or all(not c.strip() for c in cells):
            if encoding:
                yield start, {}, encoding
            continue
        if header is None:
            if encoding:
                yield start, {}, encoding
                return
            header = [c.strip() for c in cells]
            header_line = start
            dupes = sorted({h for h in header if header.count(h) > 1})
            if dupes:
                yield start, {}, [CatalogProblem(start, f"repeated columns {dupes}")]
                return
            continue
        if encoding:
            yield start, {}, encoding
            continue
        if len(cells) != len(header):
            yield (
                start,
                {},
                [
                    CatalogProblem(
                        start,
                        f"has {len(cells)} cells but the header (line {header_line}) "
                        f"has {len(header)} columns",
                    )
                ],
            )
            continue
        # An empty cell means "not given", as a spreadsheet would have it.
        yield start, {h: c for h, c in zip(header, cells, strict=True) if c != ""}, []


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


# --------------------------------------------------------------------------- validation


class _RowChecker:
    """Collects the problems of one row, field by field."""

    def __init__(self, line: int) -> None:
        self.line = line
        self.problems: list[CatalogProblem] = []

    def add(self, field: str | None, message: str) -> None:
        self.problems.append(CatalogProblem(self.line, message, field=field))

    def check(self, build: Callable[[], object]) -> bool:
        """Run a model constructor; record its validation error, if any."""
        try:
            build()
        except RequestValidationError as exc:
            self.add(exc.field, f"{exc.limit}; got {exc.got}")
            return False
        return True


def _build_row(
    line: int, fields: Mapping[str, Any], base_dir: Path
) -> CatalogRow | list[CatalogProblem]:
    row = _RowChecker(line)
    unknown = sorted(k for k in fields if k not in KNOWN_FIELDS and not str(k).startswith("_"))
    if unknown:
        row.add(None, f"unknown fields {unknown}; known fields are {list(KNOWN_FIELDS)}")

    key = _label(row, fields, "key", MAX_KEY_CHARS)
    title = _label(row, fields, "title", MAX_TITLE_CHARS)
    prompt = _text(row, fields, "prompt")
    lyrics = _lyrics(row, fields, base_dir)
    setting = _audio_setting(row, fields)

    if prompt is not None:
        row.check(lambda: SongRequest(prompt=prompt, lyrics=_VALID_LYRICS))
    if lyrics is not None:
        row.check(lambda: SongRequest(prompt=_VALID_PROMPT, lyrics=lyrics))
    if row.problems or prompt is None or lyrics is None:
        return _with_key(row.problems, key)
    request = SongRequest(prompt=prompt, lyrics=lyrics, audio_setting=setting)
    title = title or ""
    return CatalogRow(key=key or song_key(request), title=title, request=request, line=line)


def _with_key(problems: list[CatalogProblem], key: str | None) -> list[CatalogProblem]:
    return [attrs.evolve(p, key=key) for p in problems] if key else problems


def _text(row: _RowChecker, fields: Mapping[str, Any], name: str) -> str | None:
    value = fields.get(name)
    if value is None:
        row.add(name, "is required")
        return None
    if not isinstance(value, str):
        row.add(name, f"must be a string; got {_json_type(value)}")
        return None
    return _unicode(row, name, value)


def _unicode(row: _RowChecker, name: str, value: str) -> str | None:
    """``value`` if it is text that can be written out (UTF-8): JSON's ``\\ud800`` escapes
    make lone surrogates, which no file, journal or request can hold."""
    lone = sorted({f"U+{ord(c):04X}" for c in value if unicodedata.category(c) == "Cs"})
    if lone:
        row.add(name, f"must be valid Unicode text; got lone surrogates {', '.join(lone)}")
        return None
    return value


def _label(row: _RowChecker, fields: Mapping[str, Any], name: str, limit: int) -> str | None:
    """A key or title: optional, one line of printable text, bounded length."""
    value = fields.get(name)
    if value is None:
        return None
    if name == "key" and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        row.add(name, f"must be a string; got {_json_type(value)}")
        return None
    if not value.strip():
        row.add(name, "must not be blank")
        return None
    if len(value) > limit:
        row.add(name, f"must be at most {limit} characters long; got {len(value)} characters")
        return None
    # Control and format characters (newlines, escape sequences, bidi overrides) would let a
    # catalog rewrite the terminal or disguise a name.
    odd = sorted({f"U+{ord(c):04X}" for c in value if unicodedata.category(c) in ("Cc", "Cf")})
    if odd:
        row.add(name, f"must not contain control characters; got {', '.join(odd)}")
        return None
    return _unicode(row, name, value)


def _lyrics(row: _RowChecker, fields: Mapping[str, Any], base_dir: Path) -> str | None:
    inline = fields.get("lyrics")
    file_name = fields.get("lyrics_file")
    if inline is not None and file_name is not None:
        row.add("lyrics", "give either lyrics or lyrics_file, not both")
        return None
    if file_name is None:
        return _text(row, fields, "lyrics")
    if not isinstance(file_name, str):
        row.add("lyrics_file", f"must be a string; got {_json_type(file_name)}")
        return None
    if _unicode(row, "lyrics_file", file_name) is None:
        return None  # no file system takes such a name
    return _read_lyrics_file(row, file_name, base_dir)


def _read_lyrics_file(row: _RowChecker, name: str, base_dir: Path) -> str | None:
    """Read a lyrics file that must stay inside the catalog's directory."""
    if "\x00" in name:
        row.add("lyrics_file", "must not contain NUL")
        return None
    relative = Path(name)
    if relative.is_absolute() or relative.drive or name.startswith(("/", "\\")):
        row.add("lyrics_file", f"must be relative to the catalog's directory; got {name!r}")
        return None
    try:
        root = base_dir.resolve()
        target = (root / relative).resolve()
    except (OSError, RuntimeError) as exc:
        # Python 3.11 reports a symlink loop as RuntimeError; later versions as OSError.
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        row.add("lyrics_file", f"cannot resolve {name!r}: {reason}")
        return None
    # resolve() follows symlinks, so a link pointing outside is refused too.
    if target != root and root not in target.parents:
        row.add("lyrics_file", f"must stay inside the catalog's directory; got {name!r}")
        return None
    try:
        return read_lyrics_file(target, name)
    except ValueError as exc:
        row.add("lyrics_file", str(exc))
        return None


def read_lyrics_file(path: Path, name: str, *, streams: bool = False) -> str:
    """The lyrics in ``path``: a regular file of at most :data:`MAX_LYRICS_FILE_BYTES` bytes
    of UTF-8 (a BOM is dropped, and Windows' and old Macs' line ends become ``\n``). With
    ``streams``, a pipe or a device too (``<(...)``, ``/dev/stdin``: a path the user named
    on the command line). Anything else raises :class:`ValueError` saying why, naming the
    file as ``name``."""
    try:
        # A catalog's FIFO or device would block open() or read() for ever: there only
        # regular files qualify. A directory never does.
        if path.exists() and not path.is_file() and (not streams or path.is_dir()):
            raise ValueError(f"must be a regular file; got {name!r}")
        with path.open("rb") as handle:
            data = handle.read(MAX_LYRICS_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ValueError(f"no such file {name!r}") from None
    except OSError as exc:
        raise ValueError(f"cannot read {name!r}: {exc.strerror or exc}") from None
    if len(data) > MAX_LYRICS_FILE_BYTES:
        raise ValueError(f"{name!r} is larger than {MAX_LYRICS_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        lineno = data[: exc.start].count(b"\n") + 1
        raise ValueError(f"{name!r} is not valid UTF-8 (its line {lineno})") from None
    # The API separates lines with \n; files written on Windows use \r\n, old Macs' \r.
    return text.removeprefix(_BOM).replace("\r\n", "\n").replace("\r", "\n").strip()


def _audio_setting(row: _RowChecker, fields: Mapping[str, Any]) -> AudioSetting | None:
    fmt: Any = fields.get("format")  # checked by AudioSetting itself
    sample_rate = _integer(row, fields, "sample_rate")
    bitrate = _integer(row, fields, "bitrate")
    if fmt is None and sample_rate is None and bitrate is None:
        return None
    if fmt is not None and isinstance(fmt, str):
        fmt = fmt.strip().lower()
    ok = True
    if fmt is not None:
        ok &= row.check(lambda: AudioSetting(format=fmt))
    if sample_rate is not None:
        ok &= row.check(lambda: AudioSetting(sample_rate=sample_rate))
    if bitrate is not None:
        ok &= row.check(lambda: AudioSetting(bitrate=bitrate))
    if not ok:
        return None
    return AudioSetting(format=fmt or "mp3", sample_rate=sample_rate, bitrate=bitrate)


def _integer(row: _RowChecker, fields: Mapping[str, Any], name: str) -> int | None:
    value = fields.get(name)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    # A whole number written as a float (44100.0, "44100.0": spreadsheets and JSON
    # encoders write them so) is that number; 44100.5 is not.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isascii():
        text = value.strip()
        if text.isdigit():
            with contextlib.suppress(ValueError):  # past Python's 4,300 digits
                return int(text)
        with contextlib.suppress(ValueError):
            number = float(text)
            if number.is_integer():
                return int(number)
    row.add(f"audio_setting.{name}", f"must be a whole number; got {value!r}")
    return None
