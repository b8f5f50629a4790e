"""The commands of ``aimlmusic`` (click), and how their outcomes become exit statuses.

Exit statuses: 0 everything done, 1 some songs (or the one song) failed, 2 bad usage, an
invalid catalog or a configuration problem (nothing was sent), 130 interrupted.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import logging
import os
import shlex
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.logging import RichHandler

from .. import (
    AimlMusicError,
    AudioSetting,
    ConfigurationError,
    Generation,
    GenerationTimeoutError,
    RequestValidationError,
    SongRequest,
    __version__,
)
from .._converter import generation_to_wire
from .._limits import AUDIO_FORMATS, BITRATES, DEFAULT_SONG_DEADLINE, SAMPLE_RATES
from ..catalog import (
    CatalogError,
    CatalogRow,
    JournalError,
    RunStopped,
    RunSummary,
    iter_catalog,
    read_summary,
    run_catalog,
)
from ..catalog._journal import adopted_id_problem
from ..catalog._pg_journal import DEFAULT_LEASE_SECONDS, shown_url
from ..catalog._rows import read_lyrics_file
from ..catalog._tags import TaggingError, mutagen_available, tag_mp3
from ._backend import DEFAULT_EMULATOR_TIME_SCALE, Connection, Interrupted, open_client, run_async
from ._display import LiveDisplay, PlainDisplay, print_summary, terminal_safe
from ._messages import for_the_command_line

__all__ = ["cli", "run"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: The environment variable naming the shared (PostgreSQL) journal; ``--journal`` wins.
JOURNAL_URL_VARIABLE = "AIMLMUSIC_JOURNAL_URL"

#: Where ``aimlmusic demo`` writes by default.
DEMO_OUTPUT = "demo-output"

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


class CommandFailed(Exception):
    """A command's work did not succeed: print ``message`` and exit with ``status``."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        self.message = message
        self.status = status
        super().__init__(message)


def _stdout() -> Console:
    # Resolved at call time: click's test runner swaps sys.stdout per invocation.
    return Console(highlight=False)


def _stderr() -> Console:
    return Console(stderr=True, highlight=False)


#: The library's logger, and its child that logs each HTTP request's outcome (at DEBUG).
LOGGER = "aimlmusic"
REQUEST_LOGGER = "aimlmusic.http"
#: Log lines when stderr is a file or a pipe: one line each, however long, never wrapped.
PLAIN_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _SafeRichHandler(RichHandler):
    """Rich log lines with terminal escapes from server text written as visible escapes."""

    def render_message(self, record: logging.LogRecord, message: str) -> Any:
        return super().render_message(record, terminal_safe(message, keep_newlines=True))


class _SafeFormatter(logging.Formatter):
    """Plain log lines with terminal escapes from server text written as visible escapes."""

    def format(self, record: logging.LogRecord) -> str:
        return terminal_safe(super().format(record), keep_newlines=True)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a line is logged (click's test runner
    swaps it for each invocation)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # always sys.stderr


class _RequestsAsInformation(logging.Filter):
    """The library logs each request's outcome at DEBUG (a library stays quiet); for the
    command's ``-v`` they are the information asked for, so they show as INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == REQUEST_LOGGER and record.levelno == logging.DEBUG:
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def _setup_logging(verbose: int) -> None:
    """``-v``: warnings, information and every request's outcome; ``-vv``: everything."""
    logger = logging.getLogger(LOGGER)
    for old in [h for h in logger.handlers if getattr(h, "_aimlmusic_cli", False)]:
        logger.removeHandler(old)
    handler: logging.Handler
    if sys.stderr.isatty():
        handler = _SafeRichHandler(console=Console(stderr=True), show_path=False)
    else:
        handler = _StderrHandler()
        handler.setFormatter(_SafeFormatter(PLAIN_LOG_FORMAT))
    handler.addFilter(_RequestsAsInformation())
    setattr(handler, "_aimlmusic_cli", True)  # noqa: B010  (marks the handler as ours)
    logger.addHandler(handler)
    logger.setLevel([logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)])
    # The requests log at DEBUG; -v lets them through (and shows them as INFO).
    requests_level = logging.DEBUG if verbose >= 1 else logging.NOTSET
    logging.getLogger(REQUEST_LOGGER).setLevel(requests_level)


# --------------------------------------------------------------------------- shared options


#: --time-scale's help for commands with --emulator, and for those without.
_TIME_SCALE_HELP_EMULATOR = (
    "API seconds per real second. With --emulator, how fast the embedded emulator runs "
    f"(default {DEFAULT_EMULATOR_TIME_SCALE:g}, as 'aimlmusic emulator'). An emulator served "
    "on this machine (--base-url http://127.0.0.1:PORT) tells its own; this overrides it. "
    "Never use it against the real API."
)
_TIME_SCALE_HELP_SERVED = (
    "API seconds per real second of the emulator at --base-url. An emulator served on this "
    "machine tells its own; this overrides it. Never use it against the real API."
)


def _connection_options(func: F, *, with_emulator: bool = False) -> F:
    """--api-key, --base-url and --time-scale (whose help mentions --emulator only where
    the command has it)."""
    func = click.option(
        "--time-scale",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help=_TIME_SCALE_HELP_EMULATOR if with_emulator else _TIME_SCALE_HELP_SERVED,
    )(func)
    func = click.option(
        "--base-url",
        metavar="URL",
        default=None,
        help="The API's base URL (default: $AIMLMUSIC_BASE_URL, else https://api.aimlapi.com).",
    )(func)
    return click.option(
        "--api-key",
        metavar="KEY",
        default=None,
        help="The API key (default: $AIML_API_KEY, else $AIMLAPI_API_KEY). Prefer the "
        "environment: a key on the command line is visible to other users of the machine.",
    )(func)


def _emulator_option(func: F) -> F:
    """--emulator, and the connection options that go with it."""
    func = _connection_options(func, with_emulator=True)
    return click.option(
        "--emulator",
        is_flag=True,
        help="Use an emulator inside this process with compressed time instead of the "
        "network: no key, no charge, synthesized tunes.",
    )(func)


def _journal_option(help_text: str) -> Callable[[F], F]:
    """--journal URL (default: $AIMLMUSIC_JOURNAL_URL; the option wins)."""
    return click.option(
        "--journal",
        metavar="URL",
        envvar=JOURNAL_URL_VARIABLE,
        show_envvar=False,  # said in the help text
        default=None,
        help=help_text,
    )


def _connection(
    api_key: str | None,
    base_url: str | None,
    time_scale: float | None,
    emulator: bool = False,
    **limits: Any,
) -> Connection:
    if emulator and (api_key or base_url):
        raise click.UsageError("--emulator cannot be combined with --api-key or --base-url")
    return Connection(
        api_key=api_key,
        base_url=base_url,
        emulator=emulator,
        time_scale=time_scale,
        **limits,
    )


# --------------------------------------------------------------------------- the group


class _Group(click.Group):
    """Turns the commands' failures into messages and exit statuses, however it is invoked
    (console script, ``python -m``, click's test runner)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CommandFailed as exc:
            _stderr().print(
                f"error: {terminal_safe(exc.message, keep_newlines=True)}",
                markup=False,
                soft_wrap=True,
            )
            ctx.exit(exc.status)
        except Interrupted as exc:
            _stderr().print(
                f"interrupted: {terminal_safe(exc.advice)}", markup=False, soft_wrap=True
            )
            ctx.exit(EXIT_INTERRUPTED)


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="aimlmusic")
@click.option("-v", "--verbose", count=True, help="Log more (-v requests, -vv everything).")
def cli(verbose: int) -> None:
    """Generate songs with the AI/ML API music model (minimax/music-1.5).

    Try it without a key: `aimlmusic demo`.
    """
    _setup_logging(verbose)


# --------------------------------------------------------------------------- generate


@cli.command()
@click.option("-p", "--prompt", required=True, help="Style, mood and scenario (10-300 chars).")
@click.option("-l", "--lyrics", default=None, help="The lyrics (10-3000 chars); \\n for lines.")
@click.option(
    "--lyrics-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Read the lyrics from this UTF-8 file instead.",
)
@click.option("-t", "--title", default="", help="A title for the MP3 tag.")
@click.option("-f", "--format", "fmt", type=click.Choice(AUDIO_FORMATS), default="mp3")
@click.option("--sample-rate", type=click.Choice([str(r) for r in SAMPLE_RATES]), default=None)
@click.option("--bitrate", type=click.Choice([str(b) for b in BITRATES]), default=None)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to save the song (default: song.<format>).",
)
@click.option("--overwrite", is_flag=True, help="Replace the output file if it exists.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_SONG_DEADLINE,
    show_default=True,
    help="Seconds to wait for the song.",
)
@_emulator_option
def generate(
    prompt: str,
    lyrics: str | None,
    lyrics_file: Path | None,
    title: str,
    fmt: str,
    sample_rate: str | None,
    bitrate: str | None,
    output: Path | None,
    overwrite: bool,
    timeout: float,
    emulator: bool,
    api_key: str | None,
    base_url: str | None,
    time_scale: float | None,
) -> None:
    """Generate one song and save it to a file."""
    if (lyrics is None) == (lyrics_file is None):
        raise click.UsageError("give exactly one of --lyrics and --lyrics-file")
    if lyrics_file is not None:
        # The catalog's reader: size-capped, a clear error for bad UTF-8; a pipe the user
        # named (<(...), /dev/stdin) is read too.
        try:
            lyrics = read_lyrics_file(lyrics_file, str(lyrics_file), streams=True)
        except ValueError as exc:
            raise click.BadParameter(
                f"{exc}; nothing was sent", param_hint="--lyrics-file"
            ) from None
    assert lyrics is not None
    target = output or Path(f"song.{fmt}")
    try:
        request = SongRequest(
            prompt=prompt,
            lyrics=lyrics,
            audio_setting=AudioSetting(
                format=fmt,  # type: ignore[arg-type]
                sample_rate=int(sample_rate) if sample_rate else None,
                bitrate=int(bitrate) if bitrate else None,
            ),
        )
    except RequestValidationError as exc:
        raise click.UsageError(str(exc)) from exc
    connection = _connection(api_key, base_url, time_scale, emulator)
    check_output_file(target, overwrite=overwrite)
    progress = _GenerateProgress(target)

    async def work() -> tuple[Generation, Path]:
        async with open_client(connection) as client:
            started = client.clock.now()
            progress.sending = True
            submitted = await client.submit(request)
            progress.generation_id = submitted.id
            remaining = max(0.0, timeout - (client.clock.now() - started))
            try:
                generation = await client.wait(submitted, timeout=remaining)
            except GenerationTimeoutError as exc:
                raise CommandFailed(
                    f"the song did not finish within {timeout:g} s; {progress.fetch_later()}"
                ) from exc
            try:
                path = await client.download(generation, target)
            except AimlMusicError as exc:
                raise CommandFailed(f"{exc}; {progress.fetch_later()}") from exc
            return generation, path

    try:
        generation, path = _run(work)
    except Interrupted as exc:
        raise Interrupted(progress.interrupted_advice()) from exc
    tagged = ""
    if fmt == "mp3" and mutagen_available():
        try:
            tag_mp3(path, title=title, lyrics=lyrics, prompt=prompt, generation_id=generation.id)
            tagged = ", tagged"
        except TaggingError as exc:
            # The song is fine and saved; only its tags could not be written.
            _stderr().print(f"warning: {terminal_safe(str(exc))}", markup=False, soft_wrap=True)
            tagged = ", not tagged"
    info = generation.music_info
    facts = []
    if info is not None and info.duration is not None:
        facts.append(f"{info.duration:g} s")
    if info is not None and info.sample_rate is not None:
        facts.append(f"{info.sample_rate} Hz")
    if generation.credits_used is not None:
        facts.append(f"{generation.credits_used:g} credits")
    out = _stdout()
    out.print(
        terminal_safe(
            f"Saved {path} ({', '.join([*facts, f'size {path.stat().st_size} bytes'])}{tagged})"
        ),
        markup=False,
    )
    out.print(terminal_safe(f"Generation id: {generation.id}"), markup=False)


class _GenerateProgress:
    """How far ``generate`` got, so an interruption or a failure after the song was paid
    for says how to get it without paying again."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.sending = False
        self.generation_id: str | None = None

    def fetch_later(self) -> str:
        assert self.generation_id is not None
        gid = shlex.quote(self.generation_id)
        path = shlex.quote(str(self.target))
        # download refuses to replace a file unless told to, like generate.
        overwrite = " --overwrite" if self.target.exists() else ""
        return (
            f"generation id {self.generation_id}: check it with `aimlmusic status {gid}` and "
            f"fetch it with `aimlmusic download {gid} {path}{overwrite}` "
            "(running generate again would pay for a new song)"
        )

    def interrupted_advice(self) -> str:
        if self.generation_id is not None:
            return f"stopped after the song was submitted; {self.fetch_later()}"
        if self.sending:
            return (
                "stopped while submitting: the song may or may not have been accepted (and "
                "charged); look for it in your account before running generate again"
            )
        return "stopped before anything was sent; nothing was charged"


def check_output_file(target: Path, *, overwrite: bool) -> None:
    """Refuse, before anything is paid for, an output file that could not be written: an
    existing directory, an existing file without ``--overwrite``, or a parent directory that
    cannot be created or written to."""
    if target.is_dir():
        raise click.UsageError(f"{target} is a directory; give a file name")
    if target.exists() and not overwrite:
        raise click.UsageError(f"{target} exists; pass --overwrite to replace it")
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        # The one reliable test (permissions, read-only mounts, ACLs, another user's
        # directory): make a file where the song will be written, and remove it.
        probe = tempfile.NamedTemporaryFile(dir=parent, prefix=".aimlmusic-probe-")  # noqa: SIM115
        probe.close()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise click.UsageError(f"cannot write {target}: {reason}") from exc


# --------------------------------------------------------------------------- batch


def _adopt_pairs(values: Sequence[str], catalog: Path) -> dict[str, str]:
    pairs: dict[str, str] = {}
    keys: list[set[str]] = []  # the catalog's keys, read once if a value needs them

    def catalog_keys() -> set[str]:
        if not keys:
            try:
                rows = iter_catalog(catalog)
                keys.append({item.key for item in rows if isinstance(item, CatalogRow)})
            except (OSError, CatalogError):  # the run reports an unreadable catalog itself
                keys.append(set())
        return keys[0]

    for value in values:
        key, generation_id = _split_adoption(value, catalog_keys)
        generation_id = generation_id.strip()  # a pasted id often brings a newline or a CR
        if not key or not generation_id:
            raise click.BadParameter(
                f"expected KEY=GENERATION_ID, got {value!r}", param_hint="--adopt"
            )
        problem = adopted_id_problem(generation_id)
        if problem is not None:
            raise click.BadParameter(
                f"the generation id {ascii(generation_id)[:120]} for song {key!r} could never "
                f"be sent to the API: {problem}; nothing was sent",
                param_hint="--adopt",
            )
        pairs[key] = generation_id
    return pairs


def _split_adoption(value: str, catalog_keys: Callable[[], set[str]]) -> tuple[str, str]:
    """``KEY=GENERATION_ID`` as its key and id. Keys and ids may both hold ``=`` (ids are
    the API's, opaque), so with several the split is the one whose key is in the catalog;
    none matching, the first (the run then says no song has that key)."""
    splits = [(value[:at], value[at + 1 :]) for at, char in enumerate(value) if char == "="]
    splits = [(key, ident) for key, ident in splits if key and ident.strip()]
    if len(splits) <= 1:
        return splits[0] if splits else ("", "")
    keys = catalog_keys()
    matching = [split for split in splits if split[0] in keys]
    if len(matching) > 1:
        raise click.BadParameter(
            f"{value!r} could be any of the songs {', '.join(repr(k) for k, _ in matching)}",
            param_hint="--adopt",
        )
    return matching[0] if matching else splits[0]


@cli.command()
@click.argument("catalog", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The output directory: audio files, manifest.jsonl and the journal.",
)
@click.option(
    "--max-in-flight",
    type=click.IntRange(min=1),
    default=None,
    help="Songs generating at once (default 20; free tier: 3).",
)
@click.option(
    "--requests-per-minute",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="The account's request budget (default 120; free tier: 6).",
)
@click.option(
    "--deadline",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_SONG_DEADLINE,
    show_default=True,
    help="Seconds each song may take; later ones stay pending until the next run.",
)
@click.option("--retry-failed", is_flag=True, help="Send again songs whose generation failed.")
@click.option(
    "--resubmit-ambiguous",
    is_flag=True,
    help="Send again songs whose earlier submission may or may not have been accepted. "
    "This can pay twice.",
)
@click.option(
    "--adopt",
    "adopt",
    multiple=True,
    metavar="KEY=GENERATION_ID",
    help="Attach a generation found in your account to an ambiguous or failed song, so it "
    "is downloaded instead of paid for again. Repeatable.",
)
@click.option("--no-tag", is_flag=True, help="Do not write ID3 tags into MP3s.")
@click.option("--plain", is_flag=True, help="Print one line per event even on a terminal.")
@_journal_option(
    "Keep the journal in PostgreSQL (postgresql://user:password@host/db) instead of the "
    "output directory, so several workers (processes, hosts) drain one catalog together; "
    "default: $AIMLMUSIC_JOURNAL_URL, else the SQLite journal in the output directory."
)
@click.option(
    "--lease-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="With --journal: how long a worker's claim on a song lasts unless its heartbeat "
    "renews it, so how soon other workers take over the songs of one that died "
    f"[default: {DEFAULT_LEASE_SECONDS:g}].",
)
@_emulator_option
def batch(
    catalog: Path,
    output: Path,
    max_in_flight: int | None,
    requests_per_minute: float | None,
    deadline: float,
    retry_failed: bool,
    resubmit_ambiguous: bool,
    adopt: tuple[str, ...],
    no_tag: bool,
    plain: bool,
    journal: str | None,
    lease_seconds: float | None,
    emulator: bool,
    api_key: str | None,
    base_url: str | None,
    time_scale: float | None,
) -> None:
    """Generate every song of CATALOG (JSONL or CSV) into a directory; rerun to resume.

    The journal in the output directory records every step, so an interrupted run (Ctrl-C,
    a crash, a reboot) resumes where it stopped and never pays twice for a song. With
    --journal, the journal is in PostgreSQL and any number of workers running this same
    command share the catalog.
    """
    if journal is not None and emulator:
        raise click.UsageError(
            "--journal needs a server that keeps its generations; --emulator forgets them "
            "when the process ends (serve one with `aimlmusic emulator` and use --base-url)"
        )
    if lease_seconds is not None and journal is None:
        raise click.UsageError(
            "--lease-seconds applies to a shared journal: give --journal URL (or set "
            f"{JOURNAL_URL_VARIABLE})"
        )
    connection = _connection(
        api_key,
        base_url,
        time_scale,
        emulator,
        requests_per_minute=requests_per_minute,
        max_in_flight=max_in_flight,
    )
    summary = _run_batch(
        catalog,
        output,
        connection,
        plain=plain,
        command_hint=f"aimlmusic batch {shlex.quote(str(catalog))} -o {shlex.quote(str(output))}"
        + (f" --journal {shlex.quote(shown_url(journal))}" if journal else ""),
        deadline=deadline,
        retry_failed=retry_failed,
        resubmit_ambiguous=resubmit_ambiguous,
        adopt=_adopt_pairs(adopt, catalog),
        tag_mp3=not no_tag,
        journal_url=journal,
        lease_seconds=lease_seconds,
    )
    if not summary.all_done:
        raise click.exceptions.Exit(EXIT_FAILED)


def _run_batch(
    catalog: Path,
    output: Path,
    connection: Connection,
    *,
    plain: bool,
    command_hint: str,
    **options: Any,
) -> RunSummary:
    out = _stdout()
    live = not plain and out.is_terminal

    async def work() -> RunSummary:
        async with open_client(connection) as client:
            if live:
                with LiveDisplay(out) as display:
                    return await run_catalog(
                        client,
                        catalog,
                        output,
                        server_is_ephemeral=connection.emulator,
                        on_event=display,
                        **options,
                    )
            return await run_catalog(
                client,
                catalog,
                output,
                server_is_ephemeral=connection.emulator,
                on_event=PlainDisplay(),
                **options,
            )

    try:
        summary = _run(work)
    except Interrupted:
        with contextlib.suppress(OSError, AimlMusicError):
            summary = read_summary(output, journal_url=options.get("journal_url"))
            print_summary(out, summary, command_hint=command_hint)
        raise
    except CatalogError as exc:
        err = _stderr()
        err.print(
            f"error: {len(exc.problems)} problem(s) in {exc.path}; nothing was sent:",
            markup=False,
            soft_wrap=True,
        )
        for problem in exc.problems:
            err.print(terminal_safe(f"  {exc.path}:{problem}"), markup=False, soft_wrap=True)
        raise click.exceptions.Exit(EXIT_USAGE) from exc
    except JournalError as exc:
        raise CommandFailed(str(exc), EXIT_USAGE) from exc
    except RunStopped as exc:
        print_summary(out, exc.summary, command_hint=command_hint)
        raise CommandFailed(_stopped_message(exc, command_hint), _stopped_status(exc)) from exc
    print_summary(out, summary, command_hint=command_hint)
    return summary


def _stopped_message(stopped: RunStopped, command_hint: str) -> str:
    """Why a batch stopped early, and what to do: said the command line's way."""
    if stopped.reason == "auth":
        return (
            f"the API refused the key ({stopped.cause}): check AIML_API_KEY (or --api-key) "
            f"and the account's credits, then run `{command_hint}` again. Nothing was "
            "charged; every song not generated yet is still pending."
        )
    return for_the_command_line(f"{stopped}; when it is reachable, run `{command_hint}` again")


def _stopped_status(stopped: RunStopped) -> int:
    # A refused key or a full disk is the user's to fix (like a missing key); an outage not.
    return EXIT_USAGE if stopped.reason in ("auth", "disk") else EXIT_FAILED


# --------------------------------------------------------------------------- demo


@cli.command()
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(DEMO_OUTPUT),
    show_default=True,
    help="Where to write the demo's songs, manifest and journal.",
)
@click.option(
    "--time-scale",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_EMULATOR_TIME_SCALE,
    show_default=True,
    help="How much faster than real time the embedded emulator runs.",
)
@click.option("--plain", is_flag=True, help="Print one line per event even on a terminal.")
def demo(output: Path, time_scale: float, plain: bool) -> None:
    """Generate the bundled example catalog with the embedded emulator: no key, no network.

    The songs are short synthesized tunes in real MP3 and WAV files, with a manifest and a
    journal, exactly as a real run writes them.
    """
    resource = importlib.resources.files("aimlmusic.catalog").joinpath("demo_catalog.jsonl")
    with importlib.resources.as_file(resource) as catalog:
        summary = _run_batch(
            catalog,
            output,
            Connection(emulator=True, time_scale=time_scale),
            plain=plain,
            command_hint=f"aimlmusic demo -o {shlex.quote(str(output))}",
        )
    out = _stdout()
    out.print(
        f"Listen to the files in {output}{os.sep} (emulated tunes; a real run with "
        "your AIML_API_KEY: aimlmusic batch CATALOG -o DIR).",
        markup=False,
        soft_wrap=True,
    )
    if not summary.all_done:
        raise click.exceptions.Exit(EXIT_FAILED)


# --------------------------------------------------------------------------- status, download


@cli.command()
@click.argument("generation_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the API's response as JSON.")
@_journal_option(
    "Without GENERATION_ID: show the progress of the catalog in this PostgreSQL journal, "
    "per state and per worker (default: $AIMLMUSIC_JOURNAL_URL)."
)
@_connection_options
def status(
    generation_id: str | None,
    as_json: bool,
    journal: str | None,
    api_key: str | None,
    base_url: str | None,
    time_scale: float | None,
) -> None:
    """Show the status of a generation by its id, or of a shared catalog (--journal)."""
    if generation_id is None:
        if journal is None:
            raise click.UsageError(
                "give a GENERATION_ID, or --journal URL (or $AIMLMUSIC_JOURNAL_URL) for the "
                "progress of a shared catalog"
            )
        _catalog_status(journal, as_json=as_json)
        return
    connection = _connection(api_key, base_url, time_scale)

    async def work() -> Generation:
        async with open_client(connection) as client:
            return await client.get(generation_id)

    generation = _run(work)
    out = _stdout()
    if as_json:
        # JSON escapes every control character itself.
        out.print_json(json.dumps(generation_to_wire(generation)))
        return
    lines = [f"id:      {generation.id}", f"status:  {generation.status.value}"]
    if generation.credits_used is not None:
        lines.append(f"credits: {generation.credits_used:g}")
    info = generation.music_info
    if info is not None and info.duration is not None:
        lines.append(f"audio:   {info.duration:g} s, {info.sample_rate} Hz")
    if generation.audio_file is not None:
        lines.append(f"url:     {generation.audio_file.url}")
    if generation.error is not None:
        lines.append(f"error:   {generation.error.name}: {generation.error.message}")
    for line in lines:
        # Every field came from the server: no terminal escapes get through.
        out.print(terminal_safe(line), markup=False, soft_wrap=True)


def _catalog_status(url: str, *, as_json: bool) -> None:
    """Print a shared journal's progress: songs per state, and per worker what it holds
    (leases alive and expired) and what it downloaded."""
    from ..catalog._pg_journal import PgJournal

    try:
        with PgJournal(url, endpoint=None) as journal:
            counts = journal.counts()
            workers = journal.workers()
            location = journal.location
    except JournalError as exc:
        raise CommandFailed(str(exc), EXIT_USAGE) from None
    if as_json:
        report = {
            "journal": location,
            "counts": {state.value: n for state, n in counts.items()},
            "workers": workers,
        }
        _stdout().print_json(json.dumps(report))
        return
    out = _stdout()

    def say(line: str) -> None:
        out.print(terminal_safe(line), markup=False, highlight=False, soft_wrap=True)

    total = sum(counts.values())
    say(f"journal: {location}")
    say(f"songs:   {total}  " + "  ".join(f"{s.value} {n}" for s, n in counts.items() if n))
    if not workers:
        say("workers: none yet")
    for w in workers:
        held = ", ".join(f"{state} {n}" for state, n in sorted(w["held"].items())) or "nothing"
        say(
            f"worker {w['worker']}: holds {held}; leases alive {w['alive']}, expired "
            f"{w['expired']}; downloaded {w['downloaded']}; last run {_last_run(w)}"
        )


def _last_run(worker: dict[str, Any]) -> str:
    """How a worker's last run stands: its outcome, running, or gone without one (killed:
    its heartbeat stopped)."""
    if worker["outcome"]:
        return str(worker["outcome"])
    if worker["running"]:
        return "running"
    return "gone (its heartbeat stopped)" if worker["started_at"] else "-"


@cli.command()
@click.argument("generation_id")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace PATH if it exists.")
@_connection_options
def download(
    generation_id: str,
    path: Path,
    overwrite: bool,
    api_key: str | None,
    base_url: str | None,
    time_scale: float | None,
) -> None:
    """Download a completed generation's audio to PATH."""
    if path.exists() and not overwrite:
        raise click.UsageError(f"{path} exists; pass --overwrite to replace it")
    connection = _connection(api_key, base_url, time_scale)

    async def work() -> Path:
        async with open_client(connection) as client:
            return await client.download(generation_id, path)

    saved = _run(work)
    _stdout().print(terminal_safe(f"Saved {saved} ({saved.stat().st_size} bytes)"), markup=False)


# --------------------------------------------------------------------------- emulator


@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def emulator(args: tuple[str, ...]) -> None:
    """Serve the emulator on a local port (aimlmusic emulator --help for its options)."""
    from ..emulator import main as emulator_main

    status_code = emulator_main(list(args), prog="aimlmusic emulator")
    raise click.exceptions.Exit(status_code)


# --------------------------------------------------------------------------- running


def _run(work: Callable[[], Awaitable[T]]) -> T:
    """Run a command's coroutine, turning library errors into messages and statuses."""
    try:
        return run_async(work)
    except ConfigurationError as exc:
        context = click.get_current_context(silent=True)
        params = context.command.params if context is not None else []
        has_emulator = any(param.name == "emulator" for param in params)
        message = for_the_command_line(str(exc), has_emulator=has_emulator)
        raise CommandFailed(message, EXIT_USAGE) from exc
    except (CatalogError, JournalError, RunStopped, CommandFailed, Interrupted):
        raise
    except AimlMusicError as exc:
        raise CommandFailed(str(exc)) from exc
    except OSError as exc:
        # The file system refused (full, read-only, not a directory...): the user's to fix.
        where = f"{exc.filename}: " if exc.filename else ""
        raise CommandFailed(f"{where}{exc.strerror or exc}", EXIT_USAGE) from exc


def run(argv: Sequence[str] | None = None) -> int:
    """Run ``cli`` on ``argv`` and return the exit status (never exits the process)."""
    try:
        # Without standalone mode click returns the status of an explicit exit (--help,
        # --version, Exit(n)) and re-raises everything else for us to report.
        status = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="aimlmusic",
            standalone_mode=False,
        )
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return EXIT_USAGE
    except click.exceptions.Abort:
        _stderr().print("interrupted", markup=False)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # stdout was closed early (`| head`): nothing more can be said. Point it at devnull
        # so the interpreter's final flush does not complain a second time.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    return status if isinstance(status, int) else EXIT_OK
