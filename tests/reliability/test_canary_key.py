"""A canary API key never appears in DEBUG logs, reprs, exception text or tracebacks, even
when a hostile server echoes the credentials it received into every place it can: bodies,
headers, the reason phrase, generation fields and download errors."""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import aimlmusic
from aimlmusic import (
    AimlMusicError,
    AsyncMusicClient,
    SongRequest,
)
from aimlmusic.catalog import run_catalog
from aimlmusic.emulator import Emulator, EmulatorConfig, Faults, serving

from ._support import CANARY_KEY, files_under, leaked_in, mock_client

pytestmark = pytest.mark.anyio

API = "https://api.hostile.test"
STORE = "https://store.hostile.test"
GEN_ID = "d51032d5-e7b3-4e5b-a5c8-12e0c9474949:minimax/music-1.5"
PACKAGE_DIR = Path(aimlmusic.__file__).resolve().parent

Handler = Callable[[httpx.Request], httpx.Response]


def _song() -> SongRequest:
    return SongRequest(prompt="Warm lo-fi ballad, soft piano", lyrics="[Verse]\nStreetlights")


def _credentials(request: httpx.Request) -> str:
    """What the hostile server echoes: everything it was sent as credentials."""
    return request.headers.get("authorization", "")


def _json_echo(status: int) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        echo = _credentials(request)
        return httpx.Response(
            status,
            json={"message": f"bad key {echo}", "requestId": echo, "path": echo, "key": echo},
        )

    return handler


def _text_echo(status: int) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, text=f"<html>rejected {_credentials(request)}</html>")

    return handler


def _header_echo(status: int) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        echo = _credentials(request)
        return httpx.Response(
            status,
            headers={"x-request-id": echo, "retry-after": echo, "location": f"{API}/{echo}"},
        )

    return handler


def _reason_echo(status: int) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        reason = f"Nope {_credentials(request)}".encode()
        return httpx.Response(status, extensions={"reason_phrase": reason})

    return handler


def _raises_with_echo(kind: type[httpx.TransportError]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise kind(f"connection trouble with {_credentials(request)}", request=request)

    return handler


def _success_echo(status: str, **fields: Any) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        echo = _credentials(request)
        body: dict[str, Any] = {"id": GEN_ID, "status": status, "trace_id": echo, "echo": echo}
        body.update({k: (v(echo) if callable(v) else v) for k, v in fields.items()})
        return httpx.Response(200, json=body)

    return handler


def _store_echo(status: int) -> Handler:
    """The API says completed; the store answers ``status`` echoing whatever it got."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == httpx.URL(STORE).host:
            seen = f"{dict(request.headers)} {CANARY_KEY}"  # even if it knew the key somehow
            return httpx.Response(status, text=f"denied {seen}", headers={"x-amz-id": seen})
        body = {"id": GEN_ID, "status": "completed", "audio_file": {"url": f"{STORE}/a.mp3?X=1"}}
        return httpx.Response(200, json=body)

    return handler


# (name, handler, what to call) - every place a server's text can reach our errors.
SCENARIOS: dict[str, tuple[Handler, str]] = {
    "400 json echo": (_json_echo(400), "get"),
    "401 json echo": (_json_echo(401), "get"),
    "403 text echo": (_text_echo(403), "submit"),
    "404 header echo": (_header_echo(404), "get"),
    "401 reason phrase echo": (_reason_echo(401), "get"),
    "500 reason phrase echo": (_reason_echo(500), "get"),
    "429 header echo": (_header_echo(429), "get"),
    "500 json echo, get": (_json_echo(500), "get"),
    "500 json echo, submit": (_json_echo(500), "submit"),
    "502 header echo, submit": (_header_echo(502), "submit"),
    "307 redirect echo": (_header_echo(307), "get"),
    "connect error echo": (_raises_with_echo(httpx.ConnectError), "get"),
    "read error echo, submit": (_raises_with_echo(httpx.ReadError), "submit"),
    "timeout echo": (_raises_with_echo(httpx.ReadTimeout), "get"),
    "bad body echo": (_success_echo("completed", audio_file=lambda e: e), "get"),
    "failed generation echo": (
        _success_echo("error", error=lambda e: {"name": e, "message": f"failed for {e}"}),
        "wait",
    ),
    "store 500 echo": (_store_echo(500), "download"),
    "store 400 echo": (_store_echo(400), "download"),
}


def _client(handler: Handler) -> AsyncMusicClient:
    return mock_client(handler, base_url=API, attempts=2)


async def _call(client: AsyncMusicClient, what: str, tmp_path: Path) -> object:
    if what == "get":
        return await client.get(GEN_ID)
    if what == "submit":
        return await client.submit(_song())
    if what == "wait":
        return await client.wait(GEN_ID, timeout=60)
    return await client.download(await client.get(GEN_ID), tmp_path / "song.mp3")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        stack.extend(e for e in vars(current).values() if isinstance(e, BaseException))


def _renderings(exc: BaseException) -> Iterator[tuple[str, str]]:
    """Every way an exception gets shown: str, repr, attributes, formatted tracebacks
    (with the chain), and the locals of the library's frames, as error trackers capture."""
    for link in _chain(exc):
        yield "str", str(link)
        yield "repr", repr(link)
        yield "attributes", repr(vars(link))
        yield "args", repr(link.args)
    yield "traceback", "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    pending = [traceback.TracebackException(type(exc), exc, exc.__traceback__, capture_locals=True)]
    while pending:
        link = pending.pop()
        pending.extend(e for e in (link.__cause__, link.__context__) if e is not None)
        for frame in link.stack:
            if Path(frame.filename).resolve().is_relative_to(PACKAGE_DIR) and frame.locals:
                yield f"locals of {frame.name}", repr(frame.locals)


@pytest.fixture
def debug_everything(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every logger (ours, httpx, httpcore) at DEBUG, whatever an earlier test (or a CLI
    run in this process) set their own levels to."""
    caplog.set_level(logging.DEBUG)
    for name in ("aimlmusic", "httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def _log_leaks(caplog: pytest.LogCaptureFixture, prefix: str = "") -> list[str]:
    """Log lines (of loggers named ``prefix...``) that show the key."""
    leaks = []
    for record in caplog.records:
        if not record.name.startswith(prefix):
            continue
        text = f"{record.getMessage()} {record.exc_text or ''} {record.args!r}"
        if leaked_in(text):
            leaks.append(f"{record.name}: {record.getMessage()}")
    return leaks


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
async def test_echoed_key_never_shows(
    scenario: str, tmp_path: Path, debug_everything: pytest.LogCaptureFixture
) -> None:
    """Whatever a server echoes back of our credentials, no exception rendering (str, repr,
    attributes, chained causes, tracebacks, library frame locals) and no DEBUG line of the
    library's loggers contains the key; and no httpx exception is chained to ours.

    (httpx's own INFO line quotes the status line verbatim, so a server that puts the key
    in its reason phrase is quoted there: a documented limit, outside the library.)"""
    handler, what = SCENARIOS[scenario]
    sent: list[str] = []

    def recording(request: httpx.Request) -> httpx.Response:
        sent.append(_credentials(request))
        return handler(request)

    async with _client(recording) as client:
        with anyio.fail_after(30), pytest.raises(AimlMusicError) as info:
            await _call(client, what, tmp_path)
    assert f"Bearer {CANARY_KEY}" in sent  # the server really had the key to echo
    for where, text in _renderings(info.value):
        assert not leaked_in(text), f"the key shows in the {where}: {text[:300]}"
    for link in _chain(info.value):
        assert not type(link).__module__.startswith(("httpx", "httpcore")), type(link)
    assert _log_leaks(debug_everything, "aimlmusic") == []
    assert any(r.name.startswith("aimlmusic") for r in debug_everything.records)  # not vacuous


async def test_nothing_reachable_from_a_client_shows_the_key() -> None:
    """The repr of the client and of every object reachable through its attributes (what a
    debugger's variables view or an error tracker shows) hides the key."""
    async with _client(_json_echo(401)) as client:
        seen: set[int] = set()
        stack: list[tuple[str, object]] = [("client", client)]
        checked = 0
        while stack:
            path, obj = stack.pop()
            if id(obj) in seen or isinstance(obj, str | bytes | int | float | type(None)):
                continue
            seen.add(id(obj))
            checked += 1
            assert not leaked_in(repr(obj)), f"{path} shows the key: {obj!r}"
            if type(obj).__module__.startswith("aimlmusic"):
                attributes = dict(getattr(obj, "__dict__", {}))
                for slot in getattr(type(obj), "__slots__", ()):
                    if slot != "_value" and hasattr(obj, slot):  # Secret._value is the vault
                        attributes[slot] = getattr(obj, slot)
                stack.extend((f"{path}.{name}", value) for name, value in attributes.items())
        assert checked > 5  # the walk really went through the client's parts


async def test_a_faulty_batch_over_a_real_socket_leaks_the_key_nowhere(
    tmp_path: Path, debug_everything: pytest.LogCaptureFixture
) -> None:
    """A catalog run against the emulator served on a loopback socket, with faults that
    make the library retry, fail and report ambiguity, logs at DEBUG on every logger
    (ours, httpx, httpcore, uvicorn) and writes a journal, a manifest and audio files: the
    key shows in none of them, nor in any result's error."""
    faults = Faults(error_before=0.2, drop_after=0.05, malformed_json=0.05, generation_failure=0.2)
    emulator = Emulator(
        EmulatorConfig(
            time_scale=500.0, seed=5, accept_any_key=True, audio_seconds=0.2, faults=faults
        )
    )
    catalog = tmp_path / "songs.jsonl"
    catalog.write_text(
        "".join(
            json.dumps(
                {
                    "key": f"k{i}",
                    "prompt": f"Canary song {i}: soft piano",
                    "lyrics": "[Verse]\nla la la la",
                    "format": ("mp3", "wav")[i % 2],
                }
            )
            + "\n"
            for i in range(12)
        ),
        encoding="utf-8",
    )
    out = tmp_path / "out"
    with serving(emulator) as base_url:
        async with AsyncMusicClient(CANARY_KEY, base_url=base_url, clock=emulator.clock) as c:
            with anyio.fail_after(60):
                summary = await run_catalog(c, catalog, out)
    assert summary.total == 12
    assert summary.downloaded > 0
    assert summary.downloaded < 12  # the faults really made some songs fail
    assert emulator.stats().requests["submit"] > 0
    leaks = _log_leaks(debug_everything)
    assert leaks == []
    assert {r.name.split(".")[0] for r in debug_everything.records} >= {"aimlmusic", "httpcore"}
    for path in files_under(tmp_path):
        assert not leaked_in(path.read_bytes()), f"{path} contains the key"
