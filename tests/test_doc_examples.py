"""The documentation's Python examples run as written, against the in-process emulator.

Every ```python block of README.md and docs/*.md is found here and either run (``RUNNERS``)
or listed with its reason (``SKIPPED``); a block that is neither fails
``test_every_block_is_accounted_for``, so a new example cannot go untested by accident.

The example text is never edited. Complete programs are ``exec``-ed in a fresh namespace in a
temporary working directory, with ``AIML_API_KEY`` set to the emulator's test key,
``aimlmusic.AsyncMusicClient`` replaced by a subclass whose defaults point at this test's
emulator (in process, on its compressed clock) and ``anyio.run`` sent to the backend under
test. Fragments (top-level ``await``, names defined by the surrounding prose) run with the
names they assume provided. Each runner then checks what the example claims to do: files
downloaded and playable, what it printed, what the emulator saw.

The examples call ``anyio.run`` themselves, so these are sync tests, parametrized over the
two backends by hand.
"""

from __future__ import annotations

import ast
import doctest
import itertools
import json
import re
import shutil
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import attrs
import httpx
import pytest
from mutagen.mp3 import MP3

import aimlmusic
from aimlmusic.emulator import TEST_API_KEY, Emulator, EmulatorConfig
from aimlmusic.testing import EMULATED_BASE_URL

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
#: The pages whose examples users read; ``docs/*.md`` is globbed so new pages are covered.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: API seconds per real second: a 50-60 s song takes 25-30 ms, a minute of budget 30 ms.
TIME_SCALE = 2000.0
#: The emulator's default length of a song's audio, in seconds.
AUDIO_SECONDS = EmulatorConfig().audio_seconds

# Captured before any test patches them: the harness itself must not be redirected.
_real_anyio_run = anyio.run
_RealClient = aimlmusic.AsyncMusicClient
_RealBlockingClient = aimlmusic.MusicClient


# --------------------------------------------------------------------------- finding blocks


@attrs.frozen
class Block:
    """One fenced code block of a page: ``id`` is ``page#heading-slug`` (``-2``, ``-3``... for
    later blocks of the same language under the same heading), ``line`` the 1-based line of
    its first code line."""

    id: str
    page: Path
    language: str
    line: int
    source: str


def _slug(heading: str) -> str:
    words = re.sub(r"[^\w\s-]", "", heading.lower()).split()
    return "-".join(words)


def find_blocks(page: Path) -> Iterator[Block]:
    """Every fenced block of ``page``, with the heading it sits under."""
    name = page.relative_to(ROOT).as_posix()
    heading = ""
    seen: dict[tuple[str, str], int] = {}
    fence: tuple[str, int] | None = None  # (language, first code line) while inside a block
    body: list[str] = []
    for number, text in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
        if fence is None:
            if text.startswith("```"):
                fence, body = (text[3:].strip(), number + 1), []
            elif text.startswith("#"):
                heading = text.lstrip("#").strip()
            continue
        if text.strip() != "```":
            body.append(text)
            continue
        language, first = fence
        fence = None
        slug = f"{name}#{_slug(heading)}"
        count = seen[slug, language] = seen.get((slug, language), 0) + 1
        block_id = slug if count == 1 else f"{slug}-{count}"
        yield Block(block_id, page, language, first, "\n".join(body) + "\n")


def python_blocks() -> list[Block]:
    """Every ```python block of the documentation pages, in page order."""
    return [block for page in PAGES for block in find_blocks(page) if block.language == "python"]


def block_by_id(block_id: str, language: str = "python") -> Block:
    """A block by its id and language."""
    for page in PAGES:
        for block in find_blocks(page):
            if (block.id, block.language) == (block_id, language):
                return block
    raise LookupError(f"no {language} block {block_id!r}: was its heading renamed?")


def _compile(block: Block, *, top_level_await: bool = False) -> Any:
    # Padding with blank lines makes tracebacks point at the right line of the .md page.
    source = "\n" * (block.line - 1) + block.source
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT if top_level_await else 0
    return compile(source, str(block.page), "exec", flags=flags, dont_inherit=True)


# --------------------------------------------------------------------------- the harness


def _emulated_client_class(
    emulator: Emulator, made: list[aimlmusic.AsyncMusicClient], clock: Any = None
) -> type[aimlmusic.AsyncMusicClient]:
    """``AsyncMusicClient`` with ``emulator`` (and its clock, or ``clock``) as its defaults;
    it records what it makes."""

    class EmulatedMusicClient(_RealClient):
        """The real client, pointed at the emulator unless the caller wires it elsewhere."""

        def __init__(self, api_key: str | None = None, **options: Any) -> None:
            if "transport" not in options and "http_client" not in options:
                options["transport"] = httpx.ASGITransport(app=emulator.app)
            options.setdefault("base_url", EMULATED_BASE_URL)
            options.setdefault("clock", clock if clock is not None else emulator.clock)
            super().__init__(api_key, **options)
            made.append(self)

    return EmulatedMusicClient


def _emulated_blocking_client_class(
    emulator: Emulator, backend: str, made: list[aimlmusic.MusicClient]
) -> type[aimlmusic.MusicClient]:
    """``MusicClient`` with ``emulator`` as its defaults and ``backend`` as its loop."""

    class EmulatedBlockingClient(_RealBlockingClient):
        """The real blocking client, pointed at the emulator unless wired elsewhere."""

        def __init__(self, api_key: str | None = None, **options: Any) -> None:
            if "transport" not in options and "http_client" not in options:
                options["transport"] = httpx.ASGITransport(app=emulator.app)
            options.setdefault("base_url", EMULATED_BASE_URL)
            options.setdefault("clock", emulator.clock)
            options.setdefault("backend", backend)
            super().__init__(api_key, **options)
            made.append(self)

    return EmulatedBlockingClient


class DocsRun:
    """The sandbox one example runs in: a temporary directory, one emulator, one backend."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        tmp_path: Path,
        backend: str,
    ) -> None:
        self.monkeypatch = monkeypatch
        self.capsys = capsys
        self.tmp_path = tmp_path
        self.backend = backend
        self.emulator = Emulator(EmulatorConfig(time_scale=TIME_SCALE))
        self.clients: list[aimlmusic.AsyncMusicClient] = []
        self.client_class = _emulated_client_class(self.emulator, self.clients)
        self.blocking_clients: list[aimlmusic.MusicClient] = []
        self.blocking_client_class = _emulated_blocking_client_class(
            self.emulator, backend, self.blocking_clients
        )
        self.anyio_runs = 0
        monkeypatch.chdir(tmp_path)

    def on_virtual_clock(self) -> Any:
        """Move this run to a fresh emulator on a VirtualClock, the default of the clients it
        makes; return the clock (run the example inside ``async with clock``)."""
        from aimlmusic.testing import VirtualClock

        clock = VirtualClock()
        self.emulator = Emulator(EmulatorConfig(), clock=clock)
        self.client_class = _emulated_client_class(self.emulator, self.clients, clock)
        return clock

    # ---------------------------------------------------------------- patching

    def client(self, api_key: str | None = None, **options: Any) -> aimlmusic.AsyncMusicClient:
        """A client on this run's emulator, unless the caller wires it elsewhere."""
        return self.client_class(api_key, **options)

    def patch_for_examples(self) -> None:
        """Make the examples' real-world set-up (env key, real URL, real time) run here."""
        self.monkeypatch.setenv("AIML_API_KEY", TEST_API_KEY)
        self.monkeypatch.delenv("AIMLAPI_API_KEY", raising=False)
        self.monkeypatch.delenv("AIMLMUSIC_BASE_URL", raising=False)

        def run_on_backend(func: Callable[..., Awaitable[Any]], *args: Any, **_: Any) -> Any:
            self.anyio_runs += 1
            return _real_anyio_run(func, *args, backend=self.backend)

        # ``import aimlmusic`` and ``from aimlmusic import AsyncMusicClient`` both read this.
        self.monkeypatch.setattr(aimlmusic, "AsyncMusicClient", self.client_class)
        self.monkeypatch.setattr(aimlmusic, "MusicClient", self.blocking_client_class)
        self.monkeypatch.setattr(anyio, "run", run_on_backend)

    # ---------------------------------------------------------------- running

    def run(self, func: Callable[[], Awaitable[Any]]) -> Any:
        """Run the harness's own async code on the backend under test."""
        return _real_anyio_run(func, backend=self.backend)

    def run_program(self, block: Block) -> dict[str, Any]:
        """``exec`` a complete program in a fresh namespace; return the namespace."""
        self.patch_for_examples()
        namespace: dict[str, Any] = {"__name__": "__main__"}
        exec(_compile(block), namespace)
        return namespace

    async def run_fragment(self, block: Block, namespace: dict[str, Any]) -> dict[str, Any]:
        """Run a fragment (top-level ``await`` allowed) with the names it assumes."""
        self.patch_for_examples()
        pending = eval(_compile(block, top_level_await=True), namespace)
        if pending is not None:  # a coroutine when the fragment awaits at top level
            await pending
        return namespace

    def output(self) -> str:
        """What the example printed so far."""
        return self.capsys.readouterr().out

    def assert_clients_closed(self) -> None:
        """The example released every client it made (``async with`` or ``aclose``)."""
        assert self.clients, "the example made no AsyncMusicClient"
        assert all(client.closed for client in self.clients)


def assert_mp3(path: Path) -> None:
    """``path`` is a complete, playable MP3 of the emulator's song length."""
    assert path.is_file(), f"{path} was not written"
    info = MP3(path).info
    assert info.length == pytest.approx(AUDIO_SECONDS, abs=0.2)
    assert info.sample_rate > 0


def a_song() -> aimlmusic.SongRequest:
    """The song the quickstart's fragments build before the fragment starts."""
    return aimlmusic.SongRequest(
        prompt="Warm lo-fi ballad, soft piano, brushed drums",
        lyrics="[Verse]\nStreetlights flicker, the night breeze sighs\n[Chorus]\nI find my way",
    )


# --------------------------------------------------------------------------- the runners


def check_readme_quickstart(block: Block, docs: DocsRun) -> None:
    """One song with ``generate``, then three other songs through ``generate_many``."""
    docs.run_program(block)
    assert docs.anyio_runs == 1
    assert_mp3(docs.tmp_path / "ballad.mp3")
    for n in range(3):
        assert_mp3(docs.tmp_path / "out" / f"night-{n}.mp3")
    assert docs.output() == ""  # it prints only failed songs
    stats = docs.emulator.stats()
    assert stats.requests["submit"] == 4
    assert stats.requests["download"] == 4
    docs.assert_clients_closed()


def check_readme_blocking(block: Block, docs: DocsRun) -> None:
    """The blocking client in a script: one song generated and downloaded, client closed."""
    docs.run_program(block)
    assert_mp3(docs.tmp_path / "guitar.mp3")
    assert docs.emulator.stats().requests["submit"] == 1
    assert docs.blocking_clients
    assert all(client.closed for client in docs.blocking_clients)


def check_quickstart_one_song(block: Block, docs: DocsRun) -> None:
    """``generate`` + ``download``, printing the path and the song's ``music_info``."""
    docs.run_program(block)
    assert docs.anyio_runs == 1
    target = docs.tmp_path / "ballad.mp3"
    assert_mp3(target)
    printed = docs.output()
    assert printed.startswith("ballad.mp3 MusicInfo(")
    assert f"size={target.stat().st_size})" in printed
    docs.assert_clients_closed()


class _PublicPathChecker(doctest.OutputChecker):
    # A traceback names the module that defines a class (aimlmusic._errors); the docs name
    # the public path users import it from (aimlmusic), which is what is being checked.
    def check_output(self, want: str, got: str, optionflags: int) -> bool:
        public = re.sub(r"\baimlmusic(\.\w+)*\._\w+\.", "aimlmusic.", got)
        return super().check_output(want, public, optionflags)


def check_quickstart_validation_doctest(block: Block, docs: DocsRun) -> None:
    """The interactive session: a too-short prompt raises the error shown, word for word."""
    test = doctest.DocTestParser().get_doctest(
        block.source, {"aimlmusic": aimlmusic}, block.id, str(block.page), block.line - 1
    )
    report: list[str] = []
    runner = doctest.DocTestRunner(checker=_PublicPathChecker())
    result = runner.run(test, out=report.append)
    assert result.attempted == 1
    assert result.failed == 0, "".join(report)


def check_quickstart_step_by_step(block: Block, docs: DocsRun) -> None:
    """``submit``, keep the id, ``wait`` on the id, download into a new directory."""

    async def main() -> None:
        async with docs.client(TEST_API_KEY) as client:
            await docs.run_fragment(block, {"client": client, "song": a_song()})

    docs.run(main)
    (printed_id,) = docs.output().split()
    assert printed_id in docs.emulator.jobs
    assert printed_id.endswith(":minimax/music-1.5")
    assert_mp3(docs.tmp_path / "out" / "ballad.mp3")


def check_quickstart_many_songs(block: Block, docs: DocsRun) -> None:
    """100 keyed songs through ``generate_many``: every one downloaded under its key."""

    def make_request(n: int) -> aimlmusic.SongRequest:
        # One prompt, so the emulator renders the audio once; the lyrics tell songs apart.
        return aimlmusic.SongRequest(
            prompt="Warm lo-fi ballad, soft piano, brushed drums",
            lyrics=f"[Verse]\nTrack number {n} of the night\n[Chorus]\nI find my way",
        )

    async def main() -> None:
        async with docs.client(TEST_API_KEY) as client:
            await docs.run_fragment(block, {"client": client, "make_request": make_request})

    docs.run(main)
    assert docs.output() == ""  # no song failed
    written = sorted(path.name for path in (docs.tmp_path / "out").iterdir())
    assert written == [f"track-{n:03}.mp3" for n in range(100)]
    assert_mp3(docs.tmp_path / "out" / "track-042.mp3")
    stats = docs.emulator.stats()
    assert stats.requests["submit"] == 100
    assert stats.duplicate_submissions == 0


def check_quickstart_blocking(block: Block, docs: DocsRun) -> None:
    """The blocking client: one song downloaded, three through generate_many, all closed."""
    docs.run_program(block)
    assert_mp3(docs.tmp_path / "ballad.mp3")
    printed = sorted(docs.output().splitlines())
    assert printed == [f"night-{n} ok" for n in range(3)]
    assert docs.emulator.stats().requests["submit"] == 4
    assert docs.blocking_clients
    assert all(client.closed for client in docs.blocking_clients)


def check_observability_otel(block: Block, docs: DocsRun) -> None:
    """The in-memory OpenTelemetry script prints the songs, a span per song with its id and
    polls, and the metric names. The process-wide providers can be set once only, so the
    API's setters and getters are pointed at this run's."""
    from opentelemetry import metrics, trace

    providers: dict[str, Any] = {
        "trace": trace.ProxyTracerProvider(),
        "metrics": metrics.get_meter_provider(),
    }
    docs.monkeypatch.setattr(trace, "set_tracer_provider", lambda p: providers.update(trace=p))
    docs.monkeypatch.setattr(trace, "get_tracer_provider", lambda: providers["trace"])
    docs.monkeypatch.setattr(metrics, "set_meter_provider", lambda p: providers.update(metrics=p))
    docs.monkeypatch.setattr(metrics, "get_meter_provider", lambda: providers["metrics"])
    docs.run_program(block)
    assert docs.anyio_runs == 1
    printed = docs.output().splitlines()
    assert sorted(printed[:3]) == ["0 ok", "1 ok", "2 ok"]
    jobs = docs.emulator.jobs
    song_lines = printed[3:6]
    assert {line.split()[0] for line in song_lines} == set(jobs)
    assert all(line.endswith(" polls") for line in song_lines)
    assert {
        "aimlmusic.requests",
        "aimlmusic.song.polls",
        "aimlmusic.song.lag",
        "aimlmusic.songs.in_flight",
    } <= set(printed[6:])
    providers["metrics"].shutdown()
    providers["trace"].shutdown()


def check_quickstart_settings(block: Block, docs: DocsRun) -> None:
    """The settings are accepted, reach the client, and a song goes through under them."""

    async def main() -> aimlmusic.AsyncMusicClient:
        namespace = await docs.run_fragment(block, {"aimlmusic": aimlmusic})
        client: aimlmusic.AsyncMusicClient = namespace["client"]
        async with client:
            await client.generate(a_song())
        return client

    # In virtual time: a loaded machine must not change how many polls the song takes.
    clock = docs.on_virtual_clock()

    async def in_virtual_time() -> aimlmusic.AsyncMusicClient:
        async with clock:
            return await main()

    client = docs.run(in_virtual_time)
    assert client.limits == aimlmusic.Limits(requests_per_minute=6, max_in_flight=3)
    assert isinstance(client.poll_policy, aimlmusic.FixedInterval)
    # The free tier's 6 requests/minute held while the fixed 10 s loop polled the 50-60 s
    # song: the submission and a poll every 10 s from 0 to at least 50 s, no minute over 6.
    log = [entry for entry in docs.emulator.request_log if entry.kind in ("submit", "poll")]
    assert len(log) >= 7
    assert all(sum(1 for other in log if 0 <= entry.time - other.time < 60) <= 6 for entry in log)
    assert docs.emulator.stats().rate_limited == 0


def check_polling_own_policy(block: Block, docs: DocsRun) -> None:
    """The page's own policy is a PollPolicy and drives a song: first poll at 30 s, then
    every 5 s, until the 50-60 s song is seen done."""

    async def main() -> dict[str, Any]:
        namespace = await docs.run_fragment(block, {"aimlmusic": aimlmusic})
        async with docs.client(poll=namespace["EveryFiveSeconds"]()) as client:
            await client.generate(a_song())
        return namespace

    clock = docs.on_virtual_clock()

    async def in_virtual_time() -> dict[str, Any]:
        async with clock:
            return await main()

    docs.run(in_virtual_time)
    (job,) = docs.emulator.jobs.values()
    polls = [e.time - job.submitted_at for e in docs.emulator.request_log if e.kind == "poll"]
    assert polls[0] >= 30.0
    assert all(4.9 <= b - a <= 5.5 for a, b in itertools.pairwise(polls))
    assert polls[-1] - job.duration < 5.5


def check_catalog_from_python(block: Block, docs: DocsRun) -> None:
    """``run_catalog`` over the page's own two-song catalog: files, manifest, summary line."""
    # The catalog shown under "The catalog file", with the lyrics file its second row names.
    catalog = block_by_id("docs/catalog.md#the-catalog-file", "json")
    (docs.tmp_path / "songs.jsonl").write_text(catalog.source, encoding="utf-8")
    (docs.tmp_path / "lyrics").mkdir()
    shutil.copy(ROOT / "examples" / "lyrics" / "harbor-lights.txt", docs.tmp_path / "lyrics")

    docs.run_program(block)
    assert docs.anyio_runs == 1
    printed = [line.rstrip() for line in docs.output().splitlines()]
    assert printed[-1] == "2/2 downloaded, 200 credits"
    assert "neon-rain downloaded Neon Rain.mp3" in printed
    assert "harbor-lights downloaded Harbor Lights.mp3" in printed
    out = docs.tmp_path / "out"
    for title in ("Neon Rain", "Harbor Lights"):
        assert_mp3(out / f"{title}.mp3")
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(row["key"], row["status"]) for row in manifest] == [
        ("neon-rain", "downloaded"),
        ("harbor-lights", "downloaded"),
    ]
    docs.assert_clients_closed()


def _plugin_args() -> tuple[str, ...]:
    """``-p aimlmusic.testing`` when aimlmusic runs from a checkout rather than installed
    (no ``pytest11`` entry point to load the plugin, as an install registers)."""
    from importlib.metadata import entry_points

    installed = any(ep.value == "aimlmusic.testing" for ep in entry_points(group="pytest11"))
    return () if installed else ("-p", "aimlmusic.testing")


_PLUGIN_ARGS = _plugin_args()


def _write_pytest_project(pytester: pytest.Pytester, backend: str, conftest: str = "") -> None:
    # The inner run uses the plugin's fixtures as a user's project would, on our backend.
    pin_backend = "\n\n@pytest.fixture\ndef anyio_backend():\n    return " + repr(backend) + "\n"
    pytester.makeconftest("import pytest\n" + conftest + pin_backend)


def check_testing_fixture_test(block: Block, docs: DocsRun, pytester: pytest.Pytester) -> None:
    """The page's test passes in a fresh pytest project, with the installed plugin's fixtures."""
    _write_pytest_project(pytester, docs.backend)
    pytester.makepyfile(test_jingle=block.source)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", *_PLUGIN_ARGS)
    result.assert_outcomes(passed=1)


def check_testing_fixture_override(block: Block, docs: DocsRun, pytester: pytest.Pytester) -> None:
    """The page's ``conftest.py`` override reaches ``music_emulator``; the page's test passes."""
    _write_pytest_project(pytester, docs.backend, conftest=block.source)
    pytester.makepyfile(
        test_jingle=block_by_id("docs/testing.md#in-a-pytest-suite-the-fixtures").source,
        test_override=(
            "def test_config(music_emulator):\n"
            "    config = music_emulator.config\n"
            "    assert (config.time_scale, config.max_concurrent) == (1000, 3)\n"
            "    assert config.requests_per_minute == 120\n"
            "    assert config.faults.generation_failure == 0.05\n"
        ),
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", *_PLUGIN_ARGS)
    result.assert_outcomes(passed=2)


def check_testing_by_hand(block: Block, docs: DocsRun) -> None:
    """The hand-wired client talks to the page's own emulator, on its clock."""
    namespace = docs.run_program(block)
    client, emulator = namespace["client"], namespace["emulator"]

    async def main() -> None:
        async with client:
            await client.generate(a_song())

    docs.run(main)
    assert emulator.stats().requests["submit"] == 1
    assert docs.emulator.stats().total_requests == 0  # not the harness's emulator
    # On the emulator's compressed clock, not the event loop's (which would be far off).
    assert client.clock.now() == pytest.approx(emulator.now(), abs=60.0)


def check_testing_virtual_time(block: Block, docs: DocsRun, pytester: pytest.Pytester) -> None:
    """The page's virtual-time test passes in a fresh pytest project (fifty songs, no sleep)."""
    _write_pytest_project(pytester, docs.backend)
    pytester.makepyfile(test_virtual=block.source)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", *_PLUGIN_ARGS)
    result.assert_outcomes(passed=1)


def check_testing_over_a_socket(block: Block, docs: DocsRun) -> None:
    """``serving`` yields a loopback URL with a real port."""
    namespace = docs.run_program(block)
    assert re.fullmatch(r"http://127\.0\.0\.1:[1-9]\d*", namespace["base_url"])


def check_testing_inspecting(block: Block, docs: DocsRun) -> None:
    """The inspection snippet reads stats, a job record and the log after one song."""

    async def one_song() -> str:
        async with docs.client(TEST_API_KEY) as client:
            generation = await client.generate(a_song())
        return generation.id

    generation_id = docs.run(one_song)

    async def main() -> dict[str, Any]:
        return await docs.run_fragment(
            block, {"emulator": docs.emulator, "generation_id": generation_id}
        )

    namespace = docs.run(main)
    assert namespace["stats"].requests["submit"] == 1
    record = namespace["record"]
    assert record == docs.emulator.jobs[generation_id]
    assert record.completed_at >= record.started_at >= record.submitted_at
    assert record.polls >= 1
    assert record.lag >= 0


Runner = Callable[..., None]

#: How each block is run and checked.
RUNNERS: dict[str, Runner] = {
    "README.md#quickstart": check_readme_quickstart,
    "README.md#quickstart-2": check_readme_blocking,
    "docs/quickstart.md#one-song": check_quickstart_one_song,
    "docs/quickstart.md#requests-are-checked-before-anything-is-sent": (
        check_quickstart_validation_doctest
    ),
    "docs/quickstart.md#step-by-step": check_quickstart_step_by_step,
    "docs/quickstart.md#many-songs": check_quickstart_many_songs,
    "docs/quickstart.md#without-async-the-blocking-client": check_quickstart_blocking,
    "docs/quickstart.md#settings": check_quickstart_settings,
    "docs/catalog.md#from-python": check_catalog_from_python,
    "docs/polling.md#your-own-policy": check_polling_own_policy,
    "docs/observability.md#opentelemetry": check_observability_otel,
    "docs/testing.md#in-a-pytest-suite-the-fixtures": check_testing_fixture_test,
    "docs/testing.md#in-a-pytest-suite-the-fixtures-2": check_testing_fixture_override,
    "docs/testing.md#in-process-by-hand": check_testing_by_hand,
    "docs/testing.md#in-virtual-time": check_testing_virtual_time,
    "docs/testing.md#over-a-socket": check_testing_over_a_socket,
    "docs/testing.md#inspecting-what-happened": check_testing_inspecting,
}

#: Blocks deliberately not run, each with why. Empty today: every block runs, fragments
#: with the names their prose defines. Add a block here only if it cannot run offline
#: (for example one that needs a real key), never to silence a failing example.
SKIPPED: dict[str, str] = {}

#: Runners that drive a nested pytest session.
NEEDS_PYTESTER = {
    check_testing_fixture_test,
    check_testing_fixture_override,
    check_testing_virtual_time,
}


# --------------------------------------------------------------------------- the tests


def test_every_block_is_accounted_for() -> None:
    """Every python block of the docs is run or skipped with a reason, and no entry is stale."""
    found = {block.id for block in python_blocks()}
    listed = set(RUNNERS) | set(SKIPPED)
    assert not set(RUNNERS) & set(SKIPPED)
    assert found - listed == set(), "new doc examples: add them to RUNNERS (or SKIPPED)"
    assert listed - found == set(), "examples gone or their headings renamed"


def _cases() -> list[Any]:
    return [
        pytest.param(
            block,
            id=block.id,
            marks=[pytest.mark.skip(reason=SKIPPED[block.id])] if block.id in SKIPPED else [],
        )
        for block in python_blocks()
        if block.id in RUNNERS or block.id in SKIPPED
    ]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("block", _cases())
def test_doc_example(
    block: Block,
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """The example runs unedited against the emulator and does what its page says."""
    runner = RUNNERS[block.id]
    docs = DocsRun(monkeypatch, capsys, tmp_path, backend)
    if runner in NEEDS_PYTESTER:
        runner(block, docs, request.getfixturevalue("pytester"))
    else:
        runner(block, docs)


# --------------------------------------------------------------------------- examples/

EXAMPLES = ROOT / "examples"
#: The programs of examples/ and the test that runs each (data files are not programs).
EXAMPLE_PROGRAMS = {
    "catalog_cli.sh": "test_catalog_cli_example",
    "catalog_service.py": "test_catalog_service_example",
    "notebook.py": "test_notebook_example",
    "starlette_app.py": "test_starlette_example",
}


def test_every_example_program_is_run() -> None:
    """Each program in examples/ has a test here, and each listed test exists."""
    programs = {p.name for p in EXAMPLES.iterdir() if p.suffix in (".py", ".sh")}
    assert programs == set(EXAMPLE_PROGRAMS)
    assert all(name in globals() for name in EXAMPLE_PROGRAMS.values())


def _docs_run(
    backend: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp: Path
) -> DocsRun:
    docs = DocsRun(monkeypatch, capsys, tmp, backend)
    docs.patch_for_examples()
    return docs


def _load_example(name: str) -> dict[str, Any]:
    """The example's module namespace (not run as ``__main__``)."""
    import runpy

    return runpy.run_path(str(EXAMPLES / name), run_name=f"example_{Path(name).stem}")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_starlette_example(
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """The Starlette app makes one client in its lifespan, starts a song (202 with its id),
    reports its status until completed with an audio URL, refuses a bad song with 422
    naming the field, and closes the client at shutdown."""
    docs = _docs_run(backend, monkeypatch, capsys, tmp_path)
    app = _load_example("starlette_app.py")["app"]
    song = {"prompt": "Warm lo-fi ballad, soft piano", "lyrics": "[Verse]\nLa la la la la"}

    async def main() -> tuple[list[dict[str, Any]], httpx.Response, httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
                started = await http.post("/songs", json=song)
                assert started.status_code == 202, started.text
                generation_id = started.json()["id"]
                statuses = []
                for _ in range(100):  # 100 x 10 API seconds: far past any song's end
                    statuses.append((await http.get(f"/songs/{generation_id}")).json())
                    if statuses[-1]["status"] == "completed":
                        break
                    await docs.emulator.clock.sleep(10.0)
                bad = await http.post("/songs", json={**song, "prompt": "short"})
                missing = await http.get("/songs/no-such-id")
        return statuses, bad, missing

    statuses, bad, missing = docs.run(main)
    assert statuses[-1]["status"] == "completed"
    assert statuses[-1]["audio_url"].startswith(EMULATED_BASE_URL + "/files/")
    assert {s["id"] for s in statuses} == set(docs.emulator.jobs)
    assert (bad.status_code, missing.status_code) == (422, 404)
    assert "prompt" in bad.json()["error"]
    assert len(docs.clients) == 1  # one client for the app, not one per request
    docs.assert_clients_closed()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_notebook_example(
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """The notebook's cells run top to bottom with the blocking client; on asyncio they run
    inside a running event loop, as in Jupyter. Every song is saved and the client closed."""
    import asyncio
    import runpy

    docs = _docs_run(backend, monkeypatch, capsys, tmp_path)
    script = str(EXAMPLES / "notebook.py")
    if backend == "asyncio":

        async def jupyter_cell() -> None:
            runpy.run_path(script, run_name="__main__")  # synchronously, under the loop

        asyncio.run(jupyter_cell())
    else:
        runpy.run_path(script, run_name="__main__")
    out = tmp_path / "notebook-output"
    for name in ("ballad", "sunrise", "rainy afternoon", "midnight"):
        assert_mp3(out / f"{name}.mp3")
    printed = docs.output().splitlines()
    assert printed[0].startswith(str(Path("notebook-output") / "ballad.mp3") + " MusicInfo(")
    assert sorted(line.split(":")[0] for line in printed[1:]) == [
        "midnight",
        "rainy afternoon",
        "sunrise",
    ]
    assert docs.blocking_clients
    assert all(client.closed for client in docs.blocking_clients)


@pytest.mark.slow
def test_catalog_cli_example(tmp_path: Path) -> None:
    """The shell script generates the example catalog with the embedded emulator, then runs
    again and finds everything done (nothing sent twice)."""
    import os
    import subprocess
    import sys

    if shutil.which("sh") is None:
        pytest.skip("no POSIX shell")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "aimlmusic"  # the console script, as an install would provide it
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m aimlmusic.cli "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("AIML_API_KEY", "AIMLAPI_API_KEY")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = tmp_path / "out"
    done = subprocess.run(
        ["sh", str(EXAMPLES / "catalog_cli.sh"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    rows = (EXAMPLES / "catalog.jsonl").read_text().splitlines()
    assert len(manifest) == len([row for row in rows if row.strip()])
    assert {row["status"] for row in manifest} == {"downloaded"}
    summaries = [line for line in done.stdout.splitlines() if line.startswith("Downloaded ")]
    assert len(summaries) == 2
    assert "submitted " not in done.stdout.split(summaries[0])[1]  # the rerun sent nothing


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_catalog_service_example(
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """The catalog service runs both example catalogs through one client, on its own
    emulator, and writes each one's manifest with every song downloaded."""
    docs = _docs_run(backend, monkeypatch, capsys, tmp_path)
    example = _load_example("catalog_service.py")
    anyio.run(example["main"], False, tmp_path / "service")
    for job in ("jsonl", "csv"):
        manifest = (tmp_path / "service" / job / "manifest.jsonl").read_text().splitlines()
        assert manifest
        assert {json.loads(line)["status"] for line in manifest} == {"downloaded"}
    assert docs.anyio_runs == 1
