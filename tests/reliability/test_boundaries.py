"""Boundaries the key and the files must not cross: no ``Authorization`` header reaches the
storage host or follows a redirect, plain ``http://`` is refused unless loopback or opted in,
and no catalog title or key makes a file outside the output directory."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aimlmusic import (
    AsyncMusicClient,
    ConfigurationError,
    DownloadError,
    RetryPolicy,
    SongRequest,
)
from aimlmusic.catalog import CatalogError, load_catalog, run_catalog
from aimlmusic.catalog._names import MAX_NAME_BYTES, NameAllocator, is_inside
from aimlmusic.emulator import Emulator, EmulatorConfig

from ._support import CANARY_KEY, InstantClock, emulated_client, files_under, leaked_in

API = "https://api.boundary.test"
GEN_ID = "d51032d5-e7b3-4e5b-a5c8-12e0c9474949:minimax/music-1.5"
AUDIO = b"ID3" + bytes(2000)


class Network:
    """Several hosts behind one MockTransport; records who received which headers."""

    def __init__(self, audio_url: str, routes: dict[str, httpx.Response]) -> None:
        self.audio_url = audio_url
        self.routes = routes
        self.seen: list[tuple[str, str, str | None]] = []  # (host, path, authorization)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.seen.append((host, request.url.path, request.headers.get("authorization")))
        if host == httpx.URL(API).host and request.url.path == "/v2/generate/audio":
            body = {"id": GEN_ID, "status": "completed", "audio_file": {"url": self.audio_url}}
            return httpx.Response(200, json=body)
        answer = self.routes.get(f"{host}{request.url.path}")
        if answer is None:
            return httpx.Response(404)
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    def hosts_with_credentials(self) -> set[str]:
        return {host for host, _, auth in self.seen if auth is not None}

    def hosts(self) -> set[str]:
        return {host for host, _, _ in self.seen}


def _redirect(to: str, status: int = 302) -> httpx.Response:
    return httpx.Response(status, headers={"Location": to})


def _audio() -> httpx.Response:
    return httpx.Response(200, content=AUDIO, headers={"Content-Length": str(len(AUDIO))})


# --------------------------------------------------------------------------- downloads


@pytest.mark.anyio
@pytest.mark.parametrize("client_has_default_auth", [False, True])
async def test_no_authorization_reaches_the_store_or_any_redirect_hop(
    tmp_path: Path, client_has_default_auth: bool
) -> None:
    """The audio is fetched through a chain of cross-origin redirects (store -> CDN -> a
    path on the API's own host -> mirror) without an Authorization header on any hop, even
    when the caller's own httpx client carries one by default; the API itself gets the key."""
    network = Network(
        "https://store.test/a.mp3?Signature=s",
        {
            "store.test/a.mp3": _redirect("https://cdn.test/b.mp3", 301),
            "cdn.test/b.mp3": _redirect(f"{API}/mirror/c.mp3", 307),
            "api.boundary.test/mirror/c.mp3": _redirect("https://mirror.test/d.mp3", 308),
            "mirror.test/d.mp3": _audio(),
        },
    )
    headers = {"Authorization": f"Bearer {CANARY_KEY}"} if client_has_default_auth else {}
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(network), headers=headers) as http,
        AsyncMusicClient(CANARY_KEY, base_url=API, http_client=http, clock=InstantClock()) as c,
    ):
        with anyio.fail_after(30):
            path = await c.download(GEN_ID, tmp_path / "song.mp3")
    assert path.read_bytes() == AUDIO
    assert network.hosts() >= {"store.test", "cdn.test", "mirror.test"}
    api_calls = [auth for host, p, auth in network.seen if p == "/v2/generate/audio"]
    assert api_calls == [f"Bearer {CANARY_KEY}"]
    downloads = [(h, p, auth) for h, p, auth in network.seen if p != "/v2/generate/audio"]
    assert all(auth is None for _, _, auth in downloads), downloads


@pytest.mark.anyio
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("method", ["get", "submit"])
@pytest.mark.parametrize("follow_redirects", [False, True])
async def test_an_api_redirect_is_never_followed_with_the_key(
    status: int, method: str, follow_redirects: bool
) -> None:
    """An API answer redirecting elsewhere is not followed (not even by a caller's client
    configured to follow redirects): the other host never sees a request, let alone the key."""
    network = Network("https://store.test/a.mp3", {})

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == httpx.URL(API).host:
            network.seen.append((request.url.host, request.url.path, "api"))
            return _redirect("https://evil.test/steal", status)
        return network(request)

    async with (
        httpx.AsyncClient(
            transport=httpx.MockTransport(handler), follow_redirects=follow_redirects
        ) as http,
        AsyncMusicClient(
            CANARY_KEY,
            base_url=API,
            http_client=http,
            clock=InstantClock(),
            retry=RetryPolicy(attempts=2),
        ) as client,
    ):
        song = SongRequest(prompt="A calm piano song", lyrics="[Verse]\nla la la la")
        with anyio.fail_after(30), pytest.raises(Exception) as info:
            await (client.get(GEN_ID) if method == "get" else client.submit(song))
    assert "evil.test" not in network.hosts()
    assert type(info.value).__module__.startswith("aimlmusic")
    assert not leaked_in(str(info.value))


@pytest.mark.anyio
async def test_a_non_http_audio_url_is_refused(tmp_path: Path) -> None:
    """A completed generation pointing at file://, data: or ftp:// is a DownloadError; nothing
    is read from the local disk or sent anywhere."""
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("private")
    for url in (secret_file.as_uri(), "data:audio/mpeg;base64,SUQz", "ftp://store.test/a.mp3"):
        network = Network(url, {})
        async with AsyncMusicClient(
            CANARY_KEY,
            base_url=API,
            transport=httpx.MockTransport(network),
            clock=InstantClock(),
        ) as client:
            with anyio.fail_after(30), pytest.raises(DownloadError):
                await client.download(GEN_ID, tmp_path / "out.mp3")
        assert network.hosts() == {"api.boundary.test"}
        assert not (tmp_path / "out.mp3").exists()


# --------------------------------------------------------------------------- base URLs

REFUSED = [
    "http://api.aimlapi.com",
    "HTTP://api.aimlapi.com",
    "http://example.com:8080/v2",
    "http://127.0.0.1.evil.test",
    "http://localhost.evil.test",
    "http://10.0.0.5",
    "http://192.168.1.10:8000",
    "http://0.0.0.0:8000",
    "http://[::ffff:8.8.8.8]",
    "https://user:pass@api.aimlapi.com",
    "https://api.aimlapi.com@evil.test",
    "ftp://api.aimlapi.com",
    "file:///etc/passwd",
    "api.aimlapi.com",
    "",
]
ALLOWED_LOOPBACK = [
    "http://127.0.0.1:8000",
    "http://127.9.9.9",
    "http://localhost:8000",
    "http://LOCALHOST",
    "http://[::1]:8000",
    "https://api.aimlapi.com",
]


@pytest.mark.parametrize("url", REFUSED)
def test_insecure_or_odd_base_urls_are_refused(url: str) -> None:
    """Plain http to a host that is not this machine, credentials in the URL, other schemes
    and host-less URLs are refused at construction, without showing the key."""
    with pytest.raises(ConfigurationError) as info:
        AsyncMusicClient(CANARY_KEY, base_url=url)
    assert not leaked_in(str(info.value))


@pytest.mark.parametrize("url", REFUSED[:3])
def test_insecure_base_url_from_the_environment_is_refused(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AIMLMUSIC_BASE_URL gets the same check as the argument."""
    monkeypatch.setenv("AIMLMUSIC_BASE_URL", url)
    monkeypatch.setenv("AIML_API_KEY", CANARY_KEY)
    with pytest.raises(ConfigurationError) as info:
        AsyncMusicClient()
    assert not leaked_in(str(info.value))


@pytest.mark.parametrize("url", ALLOWED_LOOPBACK)
def test_https_and_loopback_http_are_accepted(url: str) -> None:
    """https anywhere, and http to a loopback address (an emulator on this machine), work."""
    client = AsyncMusicClient(CANARY_KEY, base_url=url)
    assert client.base_url.lower().startswith(url.lower().rstrip("/")[:6])


@pytest.mark.parametrize("url", ["http://api.aimlapi.com", "http://10.0.0.5:8000"])
def test_plain_http_is_accepted_when_opted_in(url: str) -> None:
    """allow_insecure_http=True is the explicit opt-in for plain http elsewhere."""
    assert AsyncMusicClient(CANARY_KEY, base_url=url, allow_insecure_http=True).base_url == url


# --------------------------------------------------------------------------- file names

HOSTILE_NAMES = [
    "../../../../etc/passwd",
    "..",
    ".",
    "",
    " ",
    "/etc/shadow",
    "C:\\Windows\\System32\\drivers\\etc\\hosts",
    "\\\\server\\share\\x",
    "a\x00b",
    "CON",
    "nul.txt",
    "Com1 .mp3",
    "LPT9",
    "aux.tar.gz",
    "x" * 5000,
    "é" * 400,
    "\U0001f3b5" * 200,
    "\u202etxt.exe",
    "..\u2215..\u2215escape",
    "\uff0e\uff0e\uff0fescape",
    "~/.ssh/authorized_keys",
    "%2e%2e%2fescape",
    "-rf",
    ".hidden",
    "trailing. . .",
    "line\nbreak\rand\ttab",
    "a/b/c",
    "manifest.jsonl",
    "aimlmusic-journal.sqlite3",
]


def _assert_safe(directory: Path, name: str) -> None:
    assert is_inside(directory, name), name
    assert len(name.encode("utf-8")) <= MAX_NAME_BYTES
    assert not name.startswith((".", "-"))
    for forbidden in ("\x00", "/", "\\"):
        assert forbidden not in name


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    title=st.one_of(st.sampled_from(HOSTILE_NAMES), st.text(max_size=300)),
    key=st.one_of(st.sampled_from(HOSTILE_NAMES), st.text(min_size=1, max_size=200)),
    extension=st.sampled_from(["mp3", "wav", "pcm", "../x", "", "MP3\x00"]),
)
def test_allocated_names_are_real_files_inside_the_directory(
    tmp_path: Path, title: str, key: str, extension: str
) -> None:
    """Any title, key and extension gives a name that can be created on this file system
    and lands directly inside the output directory."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    name = NameAllocator(lambda folded: False).allocate(key, title, extension)
    _assert_safe(out, name)
    created = out / name
    created.write_bytes(b"x")
    try:
        assert created.resolve().parent == out.resolve()
    finally:
        created.unlink()


@pytest.mark.anyio
async def test_hostile_catalog_titles_and_keys_stay_in_the_output_directory(
    tmp_path: Path,
) -> None:
    """A catalog whose titles and keys try ../, absolute paths, NUL, reserved device names,
    very long names and the run's own file names either is rejected before anything is sent,
    or produces every file inside the output directory and touches nothing outside it."""
    root = tmp_path / "sandbox"
    out = root / "a" / "out"
    catalog_dir = root / "a" / "catalog"
    catalog_dir.mkdir(parents=True)
    rows = []
    for index, name in enumerate(HOSTILE_NAMES):
        rows.append(
            {
                "key": f"k{index}-{name}"[:190],
                "title": name[:290],
                "prompt": f"Hostile name test number {index}, calm piano",
                "lyrics": "[Verse]\nla la la la la",
                "format": ("mp3", "wav", "pcm")[index % 3],
            }
        )
    # Titles are free text; keys with NUL or line breaks may be refused as a catalog error.
    # Keep one catalog of rows the reader accepts, and check the refused ones separately.
    accepted: list[dict[str, str]] = []
    for row in rows:
        single = catalog_dir / "single.jsonl"
        single.write_text(json.dumps(row) + "\n", encoding="utf-8")
        try:
            load_catalog(single)
        except CatalogError:
            continue
        accepted.append(row)
    single.unlink()
    assert len(accepted) >= len(rows) // 2, "the reader refused most hostile names"
    catalog = catalog_dir / "songs.jsonl"
    catalog.write_text("".join(json.dumps(r) + "\n" for r in accepted), encoding="utf-8")
    before = set(root.rglob("*"))

    emulator = Emulator(EmulatorConfig(time_scale=2000.0, audio_seconds=0.2, accept_any_key=True))
    async with emulated_client(emulator) as client:
        with anyio.fail_after(60):
            summary = await run_catalog(client, catalog, out, server_is_ephemeral=True)
    assert summary.downloaded == len(accepted)
    after = set(root.rglob("*"))
    outside = {p for p in after - before if out not in p.parents and p != out}
    assert outside == set(), sorted(map(str, outside))
    audio = [p for p in out.iterdir() if p.suffix in (".mp3", ".wav", ".pcm")]
    assert len(audio) == len(accepted)
    for path in audio:
        _assert_safe(out, path.name)
        assert path.resolve().parent == out.resolve()
    # The run's own bookkeeping files were not overwritten by a song named like them.
    manifest = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == len(accepted)
    for path in files_under(out):
        assert not leaked_in(path.read_bytes()), f"{path} contains the key"
    assert os.path.commonpath([out, *audio]) == str(out)


@pytest.mark.anyio
async def test_a_hostile_catalog_spends_nothing_and_reads_nothing_outside(tmp_path: Path) -> None:
    """A catalog whose rows try to read lyrics from outside its directory (``../``, an
    absolute path, a symlink out), or carry bad lengths, enums and encodings, is
    refused as a whole with every bad row listed: no request is sent, no output directory is
    made, and the outside file's text appears in no problem message."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-LYRICS " * 10, encoding="utf-8")
    catalog_dir = tmp_path / "catalog"
    catalog_dir.mkdir()
    (catalog_dir / "link.txt").symlink_to(secret)
    (catalog_dir / "latin1.txt").write_bytes("caf\xe9 au lait, la la la".encode("latin-1"))
    (catalog_dir / "huge.txt").write_bytes(b"la " * 100_000)
    good = {"prompt": "A calm piano song", "lyrics": "[Verse]\nla la la la"}
    rows: list[dict[str, object]] = [
        {"key": "ok-1", **good},
        {"key": "up", "prompt": good["prompt"], "lyrics_file": "../secret.txt"},
        {"key": "abs", "prompt": good["prompt"], "lyrics_file": str(secret)},
        {"key": "link", "prompt": good["prompt"], "lyrics_file": "link.txt"},
        {"key": "latin1", "prompt": good["prompt"], "lyrics_file": "latin1.txt"},
        {"key": "huge", "prompt": good["prompt"], "lyrics_file": "huge.txt"},
        {"key": "short", "prompt": "too short", "lyrics": good["lyrics"]},
        {"key": "enum", **good, "format": "flac", "sample_rate": 48000},
        {"key": "ok-1", **good},  # duplicate key
        {"key": "ok-2", **good},
    ]
    catalog = catalog_dir / "songs.jsonl"
    catalog.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    emulator = Emulator(EmulatorConfig(time_scale=2000.0, accept_any_key=True))
    out = tmp_path / "out"
    async with emulated_client(emulator) as client:
        with anyio.fail_after(30), pytest.raises(CatalogError) as info:
            await run_catalog(client, catalog, out)
    flagged = {problem.line for problem in info.value.problems}
    assert flagged == set(range(2, 10)), info.value  # every bad row (lines 2-9), only them
    assert "TOP-SECRET" not in str(info.value)
    assert emulator.stats().total_requests == 0
    assert not out.exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_a_fifo_named_as_lyrics_file_does_not_block_the_reader(tmp_path: Path) -> None:
    """A ``lyrics_file`` that is a FIFO (or any other non-regular file) in the catalog's
    directory is reported as a problem at once; reading it would block the run for ever."""
    fifo = tmp_path / "lyrics.txt"
    os.mkfifo(fifo)
    catalog = tmp_path / "songs.jsonl"
    row = {"key": "pipe", "prompt": "A calm piano song", "lyrics_file": fifo.name}
    catalog.write_text(json.dumps(row) + "\n", encoding="utf-8")
    outcome: list[BaseException | None] = []

    def load() -> None:
        try:
            load_catalog(catalog)
        except BaseException as exc:  # the outcome is examined below
            outcome.append(exc)
        else:
            outcome.append(None)

    reader = threading.Thread(target=load, daemon=True)
    reader.start()
    reader.join(5.0)
    if reader.is_alive():
        # Stuck in open(): give it a writer that hangs up at once, so the thread ends.
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(5.0)
        pytest.fail("reading the catalog blocked on a FIFO named as a lyrics_file")
    assert isinstance(outcome[0], CatalogError)
    assert [p.field for p in outcome[0].problems] == ["lyrics_file"]
