"""Attacks on the catalog layer (``run_catalog``, the journal, the stored files): each
hostile answer or broken environment must fail one song or stop with one clear message,
never crash a run, pay twice, or strand a paid song."""

from __future__ import annotations

import contextlib
import errno
import json
import socket
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from aimlmusic import (
    APIConnectionError,
    AsyncMusicClient,
    AudioSetting,
    RetryPolicy,
    ScaledClock,
    SongRequest,
    Timeout,
)
from aimlmusic._converter import structure_generation
from aimlmusic.catalog import CatalogEvent, JournalError, RunStopped, SongState, run_catalog
from aimlmusic.catalog._store import clear_partial, finish_download, part_path
from aimlmusic.emulator import TEST_API_KEY, Emulator, EmulatorConfig
from aimlmusic.emulator._audio import AudioRenderer, AudioSpec

from ._hostile_server import hostile_server
from ._support import InstantClock

PROMPT = "Warm lo-fi ballad with soft piano"
LYRICS = "[Verse]\nStreetlights flicker\n[Chorus]\nHome again"

#: ID3 headers mutagen cannot read: an unknown major version, a size past the file's end, and
#: flags no version defines.
HOSTILE_ID3_HEADERS = {
    "ID3v2.9": b"ID3\x09\x00\x00\x00\x00\x00\x10",
    "oversized": b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f",
    "invalid flags": b"ID3\x03\x00\xff\x00\x00\x00\x10",
}


def mp3_bytes() -> bytes:
    return AudioRenderer(0.5).render(PROMPT, AudioSpec("mp3", 44100, 128000)).data


def completed_generation() -> object:
    return structure_generation(
        {"id": "gen-1", "status": "completed", "audio_file": {"url": "http://127.0.0.1/x"}}
    )


@pytest.mark.parametrize("header", sorted(HOSTILE_ID3_HEADERS))
def test_an_mp3_whose_tag_mutagen_cannot_read_is_kept_untagged(tmp_path: Path, header: str) -> None:
    """A hostile ID3 header is a warning on that song: the file is stored as delivered."""
    data = HOSTILE_ID3_HEADERS[header] + b"\x00" * 16 + mp3_bytes()
    clear_partial(tmp_path)
    part = part_path(tmp_path, "song.mp3")
    part.write_bytes(data)
    stored = finish_download(
        part,
        tmp_path / "song.mp3",
        title="T",
        request=SongRequest(prompt=PROMPT, lyrics=LYRICS, audio_setting=AudioSetting("mp3")),
        generation=completed_generation(),  # type: ignore[arg-type]
        tag=True,
    )
    assert stored.tagged is False
    assert stored.tag_problem is not None
    assert "not tagged" in stored.tag_problem
    assert (tmp_path / "song.mp3").read_bytes() == data


def test_a_full_disk_while_tagging_stays_an_os_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while mutagen rewrites the tag is an OSError (the run stops), not a warning."""
    import mutagen.id3

    def no_space(self: object, *args: object, **kwargs: object) -> None:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise mutagen.MutagenError(exc) from exc

    monkeypatch.setattr(mutagen.id3.ID3, "save", no_space)
    from aimlmusic.catalog._tags import tag_mp3

    path = tmp_path / "song.mp3"
    path.write_bytes(mp3_bytes())
    with pytest.raises(OSError) as caught:
        tag_mp3(path, title="T", lyrics=LYRICS, prompt=PROMPT, generation_id="g")
    assert caught.value.errno == errno.ENOSPC


# --------------------------------------------------------------------------- unreachable API


def closed_port_url() -> str:
    """A loopback base URL where nothing listens (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def write_catalog(path: Path, count: int) -> Path:
    rows = [
        {"key": f"song-{i:02d}", "title": f"Track {i}", "prompt": f"{PROMPT} {i}", "lyrics": LYRICS}
        for i in range(count)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def journal_states(out: Path) -> dict[str, str]:
    with contextlib.closing(sqlite3.connect(out / "aimlmusic-journal.sqlite")) as db:
        return dict(db.execute("SELECT key, state FROM songs").fetchall())


@pytest.mark.anyio
async def test_an_unreachable_api_stops_the_run_with_every_song_pending(tmp_path: Path) -> None:
    """Connection refused: the run stops after MAX_CONNECT_FAILURES failures in a row, not at
    the song deadline, and no song is submitting or ambiguous (nothing ever left)."""
    catalog = write_catalog(tmp_path / "songs.jsonl", 8)
    out = tmp_path / "out"
    events: list[CatalogEvent] = []
    async with AsyncMusicClient(
        "sk-test-key", base_url=closed_port_url(), clock=InstantClock()
    ) as client:
        with pytest.raises(RunStopped) as stopped:
            await run_catalog(client, catalog, out, tag_mp3=False, on_event=events.append)
    assert stopped.value.reason == "unreachable"
    assert "could not be reached" in str(stopped.value)
    assert set(journal_states(out).values()) == {"pending"}
    assert not [e for e in events if e.state is SongState.SUBMITTING]
    # A rerun sends them as new songs: nothing to adopt, nothing ambiguous.
    assert stopped.value.summary.ambiguous == ()


@pytest.mark.anyio
async def test_submitting_is_journaled_as_the_bytes_go_out(tmp_path: Path) -> None:
    """Over a real socket, the `sending` event (which the catalog journals as `submitting`)
    comes before the server has the request, once per POST; never for a refused connect."""
    order: list[str] = []

    def answer(method: str, path: str, body: bytes) -> tuple[int, Any]:
        if method == "POST":  # a loopback client may ask GET /_emulator/info first
            order.append("server POST")
        return 200, {"id": "gen-1", "status": "queued"}

    class Observer:
        def on_sending(self) -> None:
            order.append("sending")

        def on_retry(self, attempt: int, error: object, delay: float) -> None:
            order.append("retry")

        def on_throttled(self, retry_after: float | None) -> None:
            order.append("throttled")

    with hostile_server(answer) as server:
        async with AsyncMusicClient("sk-test-key", base_url=server.base_url) as client:
            await client._transport.submit(
                SongRequest(prompt=PROMPT, lyrics=LYRICS),
                observer=Observer(),  # type: ignore[arg-type]
            )
    assert order == ["sending", "server POST"]
    order.clear()
    async with AsyncMusicClient(
        "sk-test-key",
        base_url=closed_port_url(),
        clock=InstantClock(),
        retry=RetryPolicy(attempts=2),
    ) as client:
        with pytest.raises(APIConnectionError):
            await client._transport.submit(
                SongRequest(prompt=PROMPT, lyrics=LYRICS),
                observer=Observer(),  # type: ignore[arg-type]
            )
    assert order == ["retry"]  # the first attempt failed to connect; nothing ever left


# --------------------------------------------------------------------------- a refused key


@pytest.mark.anyio
async def test_a_refused_key_stops_the_run_at_the_first_401(tmp_path: Path) -> None:
    """Every POST answered 401: the run stops after the first answers (at most the songs
    already in flight), every song stays pending, nothing is failed or ambiguous."""

    def answer(method: str, path: str, body: bytes) -> tuple[int, Any]:
        return 401, {"message": "Unauthorized", "statusCode": 401}

    catalog = write_catalog(tmp_path / "songs.jsonl", 30)
    out = tmp_path / "out"
    with hostile_server(answer) as server:
        async with AsyncMusicClient("sk-wrong", base_url=server.base_url) as client:
            with pytest.raises(RunStopped) as stopped:
                await run_catalog(client, catalog, out, max_in_flight=3, tag_mp3=False)
    assert stopped.value.reason == "auth"
    assert server.posts <= 3
    assert set(journal_states(out).values()) == {"pending"}


# --------------------------------------------------------------------------- broken disks


@pytest.mark.anyio
async def test_a_full_disk_stops_the_run_with_every_paid_id_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while writing downloads: the run stops (RunStopped "disk"), every generation
    the emulator created has its id in the journal (none ambiguous), and a rerun with room
    finishes without a second submission."""
    import aimlmusic._download

    def no_space(file: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    emulator = Emulator(EmulatorConfig(time_scale=2000.0, audio_seconds=0.3))
    catalog = write_catalog(tmp_path / "songs.jsonl", 6)
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(aimlmusic._download, "_flush_and_sync", no_space)
        async with emulated(emulator) as client:
            with pytest.raises(RunStopped) as stopped:
                await run_catalog(client, catalog, out, tag_mp3=False)
    assert stopped.value.reason == "disk"
    assert "No space left on device" in str(stopped.value)
    with contextlib.closing(sqlite3.connect(out / "aimlmusic-journal.sqlite")) as db:
        rows = db.execute("SELECT state, generation_id FROM songs").fetchall()
    assert not [r for r in rows if r[0] in ("ambiguous", "submitting")]
    assert len([r for r in rows if r[1]]) == emulator.stats().jobs_submitted
    async with emulated(emulator) as client:
        summary = await run_catalog(client, catalog, out, tag_mp3=False)
    assert summary.all_done
    assert emulator.stats().jobs_submitted == 6
    assert emulator.stats().duplicate_submissions == 0


def emulated(emulator: Emulator) -> AsyncMusicClient:
    return AsyncMusicClient(
        TEST_API_KEY,
        base_url="http://127.0.0.1",
        transport=httpx.ASGITransport(app=emulator.app),
        clock=emulator.clock,
    )


# --------------------------------------------------------------------------- paying twice


@pytest.mark.anyio
async def test_renaming_a_keyless_song_does_not_generate_it_again(tmp_path: Path) -> None:
    """Keyless rows: a new title keeps the song's key, so the rerun sends nothing."""
    emulator = Emulator(EmulatorConfig(time_scale=2000.0, audio_seconds=0.3))
    catalog = tmp_path / "songs.jsonl"
    row = {"title": "First title", "prompt": PROMPT, "lyrics": LYRICS}
    catalog.write_text(json.dumps(row) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    async with emulated(emulator) as client:
        assert (await run_catalog(client, catalog, out, tag_mp3=False)).all_done
    catalog.write_text(json.dumps({**row, "title": "A better title"}) + "\n", encoding="utf-8")
    async with emulated(emulator) as client:
        summary = await run_catalog(client, catalog, out, tag_mp3=False)
    assert summary.all_done
    assert emulator.stats().jobs_submitted == 1


@pytest.mark.anyio
async def test_an_emptied_journal_beside_a_manifest_is_refused(tmp_path: Path) -> None:
    """The journal deleted (or replaced) beside a manifest of downloaded songs: the run is
    refused before anything is sent or overwritten."""
    emulator = Emulator(EmulatorConfig(time_scale=2000.0, audio_seconds=0.3))
    catalog = write_catalog(tmp_path / "songs.jsonl", 3)
    out = tmp_path / "out"
    async with emulated(emulator) as client:
        assert (await run_catalog(client, catalog, out, tag_mp3=False)).all_done
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".mp3"}
    for journal_file in out.glob("aimlmusic-journal.sqlite*"):
        journal_file.unlink()
    async with emulated(emulator) as client:
        with pytest.raises(JournalError, match="does not know"):
            await run_catalog(client, catalog, out, tag_mp3=False)
    assert emulator.stats().jobs_submitted == 3
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".mp3"} == files


@pytest.mark.anyio
async def test_a_key_refused_while_polling_stops_the_run_too(tmp_path: Path) -> None:
    """A key revoked mid-run (the poll answered 401): the run stops, the submitted song keeps
    its id (resumed later), the songs not sent stay pending: one POST in all."""

    def answer(method: str, path: str, body: bytes) -> tuple[int, Any]:
        if method == "POST":
            return 200, {"id": "gen-1", "status": "queued"}
        return 401, {"message": "Unauthorized", "statusCode": 401}

    catalog = write_catalog(tmp_path / "songs.jsonl", 3)
    out = tmp_path / "out"
    with hostile_server(answer) as server:
        # 1000x real time: the first poll comes within tens of real ms (on a clock that
        # jumps, the song deadline would pass before any poll).
        async with AsyncMusicClient(
            "sk-revoked", base_url=server.base_url, clock=ScaledClock(1000)
        ) as client:
            with pytest.raises(RunStopped) as stopped:
                await run_catalog(client, catalog, out, max_in_flight=1, tag_mp3=False)
    assert stopped.value.reason == "auth"
    assert server.posts == 1
    assert sorted(journal_states(out).values()) == ["pending", "pending", "submitted"]


# --------------------------------------------------------------------------- odd text


def surrogate_api(mode: str) -> tuple[Any, dict[str, int]]:
    """An API whose answers about songs with 'odd' in their prompt carry a lone-surrogate
    escape (``\\ud800``, valid JSON) in ``mode``: an extra field, the error message, or the
    audio URL; ``posts`` counts POSTs per prompt."""
    posts: dict[str, int] = {}
    prompts: dict[str, str] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            prompt = json.loads(request.content)["prompt"]
            posts[prompt] = posts.get(prompt, 0) + 1
            gid = f"gen-{len(prompts)}"
            prompts[gid] = prompt
            return httpx.Response(200, json={"id": gid, "status": "queued"})
        if request.url.path.startswith("/files/"):
            return httpx.Response(200, content=b"\x00\x01" * 4000)
        gid = request.url.params["generation_id"]
        url = f"http://127.0.0.1/files/{gid}.pcm"
        done: dict[str, Any] = {"id": gid, "status": "completed", "audio_file": {"url": url}}
        text = json.dumps(done)
        if "odd" in prompts[gid]:
            if mode == "extra":
                text = text[:-1] + ', "note": "\\ud800"}'
            elif mode == "message":
                error = {"name": "GenerationError", "message": "bad XXX input"}
                text = json.dumps({"id": gid, "status": "error", "error": error})
                text = text.replace("XXX", "\\ud800")
            else:
                text = text.replace(".pcm", "\\ud800.pcm")
        return httpx.Response(
            200, content=text.encode(), headers={"Content-Type": "application/json"}
        )

    return handler, posts


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["extra", "message", "url"])
async def test_a_lone_surrogate_in_an_answer_fails_its_song_at_most(
    tmp_path: Path, mode: str
) -> None:
    """A lone surrogate in a server answer (extra field, error message, audio URL) never
    crashes the run: the journal keeps it escaped, the other songs download, reruns work,
    and nothing is sent twice."""
    catalog = tmp_path / "songs.jsonl"
    rows = [{"key": "odd", "prompt": f"{PROMPT} odd", "lyrics": LYRICS, "format": "pcm"}]
    rows += [
        {"key": f"fine{i}", "prompt": f"{PROMPT} {i}", "lyrics": LYRICS, "format": "pcm"}
        for i in range(3)
    ]
    catalog.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    handler, posts = surrogate_api(mode)
    for _ in range(2):  # the rerun reads back what the first run stored
        async with AsyncMusicClient(
            "sk-test-key",
            base_url="http://127.0.0.1",
            transport=httpx.MockTransport(handler),
            clock=InstantClock(),
            # Virtual time jumps with every poll's wait: no download may time out on it.
            timeout=Timeout(download=1e9),
        ) as client:
            await run_catalog(client, catalog, out, tag_mp3=False)
        states = journal_states(out)
        assert {k: v for k, v in states.items() if k != "odd"} == dict.fromkeys(
            ["fine0", "fine1", "fine2"], "downloaded"
        )
        assert (
            states["odd"] == {"extra": "downloaded", "message": "failed", "url": "completed"}[mode]
        )
    assert set(posts.values()) == {1}
    lines = (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    records = {r["key"]: r for r in map(json.loads, lines)}
    if mode == "message":
        assert records["odd"]["error"]["message"].endswith("(GenerationError: bad \\ud800 input)")
    if mode == "extra":
        with contextlib.closing(sqlite3.connect(out / "aimlmusic-journal.sqlite")) as db:
            (stored,) = db.execute("SELECT generation_json FROM songs WHERE key = 'odd'").fetchone()
        assert json.loads(stored)["note"] == "\ud800"  # kept as sent, escaped in ASCII JSON
