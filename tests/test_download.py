"""AsyncMusicClient.download: credentials, atomicity, verification, refresh and retries."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from _http_fakes import AUDIO_URL, GEN_ID, RecordingClock, completed_json, generation_json

from aimlmusic import (
    AsyncMusicClient,
    DownloadError,
    Generation,
    GenerationStatus,
    RetryPolicy,
    SongRequest,
    SongResult,
    Timeout,
)
from aimlmusic._converter import structure_generation
from aimlmusic.testing import VirtualClock

pytestmark = pytest.mark.anyio

AUDIO = b"ID3" + bytes(range(256)) * 300  # ~77 kB: several 64 kB chunks
FRESH_URL = "https://store.test/music/song.mp3?Expires=2&Signature=FRESHSIG"


class Hosts:
    """Routes requests by host: the API on api.test, storage on store.test and cdn.test."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.api: list[httpx.Response] = [httpx.Response(200, json=completed_json(FRESH_URL))]
        self.store: list[httpx.Response | Exception | Callable[[], httpx.Response]] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.host == "api.test":
            return self.api.pop(0) if len(self.api) > 1 else _copy(self.api[0])
        step = self.store.pop(0) if len(self.store) > 1 else self.store[0]
        if isinstance(step, Exception):
            raise step
        if isinstance(step, httpx.Response):
            return _copy(step)
        return step()

    def storage_requests(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.host != "api.test"]

    def api_requests(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.host == "api.test"]


def _copy(response: httpx.Response) -> httpx.Response:
    return httpx.Response(response.status_code, headers=response.headers, content=response.content)


def audio(content: bytes = AUDIO, **headers: str) -> httpx.Response:
    return httpx.Response(200, content=content, headers={"Content-Type": "audio/mpeg", **headers})


def completed(url: str = AUDIO_URL) -> Generation:
    return structure_generation(completed_json(url))


def make_client(hosts: Hosts, **kwargs: Any) -> AsyncMusicClient:
    kwargs.setdefault("clock", RecordingClock())
    kwargs.setdefault("retry", RetryPolicy(attempts=3))
    return AsyncMusicClient(
        "sk-download-test",
        base_url="https://api.test",
        transport=httpx.MockTransport(hosts.handler),
        **kwargs,
    )


def files_in(directory: Path) -> list[str]:
    """Every file name in ``directory``."""
    return sorted(p.name for p in directory.iterdir())


def leftovers(directory: Path) -> list[str]:
    """Files in ``directory`` other than finished targets (temporary files)."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


async def test_download_writes_the_file_atomically_into_new_directories(tmp_path: Path) -> None:
    """The audio lands at the path (parents created), intact, with no temporary file left."""
    hosts = Hosts()
    hosts.store = [audio()]
    target = tmp_path / "out" / "deep" / "song.mp3"
    async with make_client(hosts) as client:
        result = await client.download(completed(), target)
    assert result == target
    assert target.read_bytes() == AUDIO
    assert leftovers(target.parent) == []
    assert hosts.api_requests() == []


async def test_download_sends_no_authorization_header_but_api_calls_do(tmp_path: Path) -> None:
    """The storage host never sees the key; the API always does."""
    hosts = Hosts()
    hosts.api = [httpx.Response(200, json=completed_json())]
    hosts.store = [audio()]
    async with make_client(hosts) as client:
        await client.download(GEN_ID, tmp_path / "a.mp3")  # by id: GET first
    (api_call,) = hosts.api_requests()
    (store_call,) = hosts.storage_requests()
    assert api_call.headers["Authorization"] == "Bearer sk-download-test"
    assert api_call.headers["User-Agent"].startswith("aimlmusic/")
    assert "Authorization" not in store_call.headers
    assert str(store_call.url) == AUDIO_URL


async def test_a_callers_default_authorization_header_is_stripped_on_every_hop(
    tmp_path: Path,
) -> None:
    """Even an http_client with a default Authorization header sends none to storage,
    including after a cross-origin redirect."""
    hosts = Hosts()
    hosts.store = [
        httpx.Response(302, headers={"Location": "https://cdn.test/x/song.mp3?sig=2"}),
        audio(),
    ]
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(hosts.handler),
        headers={"Authorization": "Bearer sk-default-header"},
    ) as http:
        client = AsyncMusicClient("sk-download-test", base_url="https://api.test", http_client=http)
        await client.download(completed(), tmp_path / "a.mp3")
    first, second = hosts.storage_requests()
    assert first.url.host == "store.test"
    assert second.url.host == "cdn.test"
    assert "Authorization" not in first.headers
    assert "Authorization" not in second.headers
    assert (tmp_path / "a.mp3").read_bytes() == AUDIO


async def test_a_length_mismatch_fails_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """A body shorter than its Content-Length is a DownloadError; the old file is untouched."""
    hosts = Hosts()
    hosts.store = [audio(AUDIO[:1000], **{"Content-Length": str(len(AUDIO))})]
    target = tmp_path / "song.mp3"
    target.write_bytes(b"previous version")
    async with make_client(hosts) as client:
        with pytest.raises(DownloadError) as caught:
            await client.download(completed(), target)
    assert caught.value.generation_id == GEN_ID
    assert "incomplete" in str(caught.value)
    assert target.read_bytes() == b"previous version"
    assert leftovers(tmp_path) == []


async def test_an_empty_body_is_refused(tmp_path: Path) -> None:
    """Zero bytes of audio is not a song."""
    hosts = Hosts()
    hosts.store = [audio(b"")]
    async with make_client(hosts) as client:
        with pytest.raises(DownloadError, match="empty"):
            await client.download(completed(), tmp_path / "a.mp3")
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("status", [403, 404, 410])
async def test_an_expired_url_is_refreshed_once(tmp_path: Path, status: int) -> None:
    """403/404/410 from storage: the generation is fetched again and its fresh URL used."""
    hosts = Hosts()
    hosts.store = [httpx.Response(status, text="AccessDenied: Request has expired"), audio()]
    async with make_client(hosts) as client:
        await client.download(completed(), tmp_path / "a.mp3")
    assert [str(r.url) for r in hosts.storage_requests()] == [AUDIO_URL, FRESH_URL]
    (refresh,) = hosts.api_requests()
    assert refresh.url.params["generation_id"] == GEN_ID
    assert (tmp_path / "a.mp3").read_bytes() == AUDIO


async def test_a_url_still_expired_after_refresh_names_the_generation_not_the_signature(
    tmp_path: Path,
) -> None:
    """A second refusal is a DownloadError with the id and without the URL's signature."""
    hosts = Hosts()
    hosts.store = [httpx.Response(403, text="expired")]
    async with make_client(hosts) as client:
        with pytest.raises(DownloadError) as caught:
            await client.download(completed(), tmp_path / "a.mp3")
    message = str(caught.value)
    assert GEN_ID in message
    assert "HTTP 403" in message
    assert "Signature" not in message
    assert "SIG" not in message
    assert len(hosts.storage_requests()) == 2
    assert len(hosts.api_requests()) == 1
    assert files_in(tmp_path) == []


async def test_refresh_that_finds_no_audio_is_a_download_error(tmp_path: Path) -> None:
    """If the refreshed generation has no URL, the error says so."""
    hosts = Hosts()
    hosts.api = [httpx.Response(200, json=generation_json("error", error=None))]
    hosts.store = [httpx.Response(410)]
    async with make_client(hosts) as client:
        with pytest.raises(DownloadError, match="no audio"):
            await client.download(completed(), tmp_path / "a.mp3")


@pytest.mark.parametrize("audio_file", [None, {"url": ""}, "absent"])
async def test_a_completed_generation_without_its_audio_url_is_fetched_again(
    tmp_path: Path, audio_file: object
) -> None:
    """A completed generation without an audio URL (the schema allows a null audio_file) is
    fetched again once and its URL used; it used to fail the paid song for good."""
    body = generation_json("completed")
    if audio_file != "absent":
        body["audio_file"] = audio_file
    hosts = Hosts()
    hosts.store = [audio()]
    async with make_client(hosts) as client:
        await client.download(structure_generation(body), tmp_path / "a.mp3")
    (again,) = hosts.api_requests()
    assert again.url.params["generation_id"] == GEN_ID
    assert [str(r.url) for r in hosts.storage_requests()] == [FRESH_URL]
    assert (tmp_path / "a.mp3").read_bytes() == AUDIO


async def test_a_generation_still_without_audio_when_fetched_again_is_a_download_error(
    tmp_path: Path,
) -> None:
    """Fetched again and still without an audio URL, the download fails saying so, after
    one GET and with nothing fetched from storage."""
    hosts = Hosts()
    hosts.api = [httpx.Response(200, json=generation_json("completed"))]
    async with make_client(hosts) as client:
        with pytest.raises(DownloadError, match="completed but the API gave no audio URL"):
            await client.download(
                structure_generation(generation_json("completed")), tmp_path / "a.mp3"
            )
    assert len(hosts.api_requests()) == 1
    assert hosts.storage_requests() == []


async def test_a_generation_that_is_not_completed_is_refused_without_a_request(
    tmp_path: Path,
) -> None:
    """Downloading a queued generation is a clear error, and nothing is fetched."""
    hosts = Hosts()
    hosts.store = [audio()]
    queued = Generation(id=GEN_ID, status=GenerationStatus.QUEUED)
    async with make_client(hosts) as client:
        with pytest.raises(DownloadError, match="'queued', not 'completed'"):
            await client.download(queued, tmp_path / "a.mp3")
    assert hosts.requests == []


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.Response(503, text="busy"),
    ],
)
async def test_transient_storage_failures_are_retried(
    tmp_path: Path, failure: Exception | httpx.Response
) -> None:
    """Connection errors, timeouts and 5xx are retried with back-off, then succeed."""
    hosts = Hosts()
    hosts.store = [failure, failure, audio()]
    clock = RecordingClock()
    async with make_client(hosts, clock=clock) as client:
        await client.download(completed(), tmp_path / "a.mp3")
    assert len(hosts.storage_requests()) == 3
    assert len(clock.sleeps) == 2
    assert (tmp_path / "a.mp3").read_bytes() == AUDIO


async def test_persistent_connection_failure_gives_up_cleanly(tmp_path: Path) -> None:
    """After the retry budget a DownloadError names the id; no partial or temp file remains."""
    hosts = Hosts()
    hosts.store = [httpx.ConnectError("refused")]
    async with make_client(hosts) as client:
        with pytest.raises(DownloadError) as caught:
            await client.download(completed(), tmp_path / "a.mp3")
    assert GEN_ID in str(caught.value)
    assert "after 3 attempts" in str(caught.value)
    assert "Signature" not in str(caught.value)
    assert files_in(tmp_path) == []


def _broken_stream() -> httpx.Response:
    async def body() -> AsyncIterator[bytes]:
        yield AUDIO[:70_000]
        raise httpx.ReadError("connection reset mid-body")

    return httpx.Response(200, content=body())


async def test_a_connection_dropped_mid_body_is_retried_without_leftovers(
    tmp_path: Path,
) -> None:
    """A stream that breaks after some bytes is discarded and fetched again."""
    hosts = Hosts()
    hosts.store = [_broken_stream, audio()]
    async with make_client(hosts) as client:
        await client.download(completed(), tmp_path / "a.mp3")
    assert (tmp_path / "a.mp3").read_bytes() == AUDIO
    assert leftovers(tmp_path) == []


async def test_cancelling_a_download_leaves_no_partial_file(tmp_path: Path) -> None:
    """Cancelled mid-stream: neither the target nor a temporary file remains."""
    first_chunk_sent = anyio.Event()

    def stalled() -> httpx.Response:
        async def body() -> AsyncIterator[bytes]:
            yield AUDIO[:70_000]
            first_chunk_sent.set()
            await anyio.sleep_forever()
            yield b""  # pragma: no cover

        return httpx.Response(200, content=body())

    hosts = Hosts()
    hosts.store = [stalled]
    target = tmp_path / "a.mp3"
    async with make_client(hosts) as client:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as group:
                group.start_soon(client.download, completed(), target)
                await first_chunk_sent.wait()
                while not leftovers(tmp_path):  # noqa: ASYNC110  (a file, not an event)
                    await anyio.sleep(0.001)  # the temporary file exists mid-download
                group.cancel_scope.cancel()
    assert files_in(tmp_path) == []


async def test_a_content_encoded_body_is_checked_on_the_wire_and_saved_decoded(
    tmp_path: Path,
) -> None:
    """With Content-Encoding, Content-Length counts compressed bytes; the file is the audio."""
    packed = gzip.compress(AUDIO)

    def encoded() -> httpx.Response:
        async def body() -> AsyncIterator[bytes]:
            yield packed

        headers = {"Content-Encoding": "gzip", "Content-Length": str(len(packed))}
        return httpx.Response(200, content=body(), headers=headers)

    hosts = Hosts()
    hosts.store = [encoded]
    async with make_client(hosts) as client:
        await client.download(completed(), tmp_path / "a.mp3")
    assert (tmp_path / "a.mp3").read_bytes() == AUDIO


# ------------------------------------------------------------------ what may be downloaded


async def test_a_directory_as_target_is_refused_before_anything_is_fetched(tmp_path: Path) -> None:
    """download(gen, "out/") names the problem and fetches nothing, instead of an OSError."""
    hosts = Hosts()
    hosts.store = [audio()]
    async with make_client(hosts) as client:
        with pytest.raises(DownloadError, match="it is a directory") as caught:
            await client.download(completed(), tmp_path)
    assert caught.value.generation_id == GEN_ID
    assert hosts.storage_requests() == []


async def test_an_unwritable_target_is_a_download_error(tmp_path: Path) -> None:
    """A parent that is a file (so nothing can be created) raises DownloadError, not OSError."""
    hosts = Hosts()
    hosts.store = [audio()]
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    async with make_client(hosts) as client:
        with pytest.raises(DownloadError, match="cannot save") as caught:
            await client.download(completed(), blocker / "song.mp3")
    assert caught.value.generation_id == GEN_ID


async def test_a_song_result_can_be_downloaded_directly(tmp_path: Path) -> None:
    """download(result) takes the result's generation; a failed result says why it can't."""
    hosts = Hosts()
    hosts.store = [audio()]
    request = SongRequest(prompt="a prompt long enough", lyrics="some lyrics here")
    done = SongResult(key="k1", request=request, generation=completed())
    failed = SongResult(key="k2", request=request, error=DownloadError("boom"))
    async with make_client(hosts) as client:
        assert (await client.download(done, tmp_path / "a.mp3")).read_bytes() == AUDIO
        with pytest.raises(DownloadError, match="'k2' has no generation"):
            await client.download(failed, tmp_path / "b.mp3")
        with pytest.raises(DownloadError, match="nothing to download"):
            await client.download(None, tmp_path / "c.mp3")
    assert not (tmp_path / "b.mp3").exists()


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/role",
        "http://2852039166/latest/meta-data/",  # the same address, as a resolver reads it
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "http://127.0.0.1:8080/admin",
        "http://10.0.0.7/internal.mp3",
        "http://localhost/a.mp3",
    ],
)
async def test_audio_on_an_address_that_is_not_public_is_refused(tmp_path: Path, url: str) -> None:
    """An audio URL on a loopback, private or link-local address (a cloud's metadata
    service, a local admin port) is refused before any request, when the API is on a public
    host: a hostile answer used to have whatever such a host answered saved as the song."""
    hosts = Hosts()
    hosts.store = [audio()]
    async with make_client(hosts) as client:
        with pytest.raises(DownloadError, match="not public"):
            await client.download(completed(url), tmp_path / "a.mp3")
    assert hosts.storage_requests() == []
    assert files_in(tmp_path) == []


async def test_a_redirect_to_an_address_that_is_not_public_is_refused(tmp_path: Path) -> None:
    """A storage host redirecting to a link-local address is refused at that hop."""
    hosts = Hosts()
    hosts.store = [httpx.Response(302, headers={"location": "http://169.254.169.254/x"})]
    async with make_client(hosts) as client:
        with pytest.raises(DownloadError, match="not public"):
            await client.download(completed(), tmp_path / "a.mp3")
    assert [r.url.host for r in hosts.storage_requests()] == ["store.test"]


async def test_audio_on_a_private_address_is_fetched_when_the_api_is_on_one(
    tmp_path: Path,
) -> None:
    """With the API itself on a private or loopback address (an emulator, a test server),
    audio on such addresses is fetched as any other."""
    hosts = Hosts()
    hosts.store = [audio()]
    client = AsyncMusicClient(
        "sk-download-test",
        base_url="http://127.0.0.1:9",
        transport=httpx.MockTransport(hosts.handler),
        clock=RecordingClock(),
    )
    async with client:
        path = await client.download(completed("http://127.0.0.1:9/a.mp3"), tmp_path / "a.mp3")
    assert path.read_bytes() == AUDIO


async def test_a_redirect_to_a_url_too_long_for_httpx_is_a_download_error(tmp_path: Path) -> None:
    """A storage redirect whose Location, joined to the URL, passes httpx's length limit is a
    DownloadError with the URL shown bounded; httpx.InvalidURL, which is no httpx.HTTPError,
    came out of client.download() raw."""
    hosts = Hosts()
    hosts.store = [httpx.Response(302, headers={"location": "a" * 65_520})]
    async with make_client(hosts) as client:
        with pytest.raises(DownloadError, match="invalid URL") as caught:
            await client.download(completed(), tmp_path / "a.mp3")
    assert len(str(caught.value)) < 1_000


class _Peer:
    """The network_stream extension of a response, as httpcore gives it: the address the
    connection reached."""

    def __init__(self, address: str) -> None:
        self.address = address

    def get_extra_info(self, name: str) -> object:
        return (self.address, 80) if name == "server_addr" else None


@pytest.mark.parametrize("peer", ["10.0.0.1", "198.18.0.23", "100.64.3.7"])
async def test_the_address_a_storage_name_reached_is_not_judged(tmp_path: Path, peer: str) -> None:
    """A storage host *name* whose connection reached a private address is fetched: that
    address may be a proxy's, a VPN's fake-ip range (198.18/15) or carrier-grade NAT
    (100.64/10). Refusing by it, tried and reverted, refused every download behind them."""
    hosts = Hosts()
    hosts.store = [
        lambda: httpx.Response(200, content=AUDIO, extensions={"network_stream": _Peer(peer)})
    ]
    async with make_client(hosts) as client:
        path = await client.download(completed(), tmp_path / "a.mp3")
    assert path.read_bytes() == AUDIO


async def test_fetching_a_generation_again_counts_in_the_download_deadline(tmp_path: Path) -> None:
    """The GET that fetches a completed generation's missing URL again is within
    Timeout.download: a 408 asking for 2 s more ends the download at its 1 s (it ran 4 s)."""
    clock = VirtualClock()
    hosts = Hosts()
    hosts.api = [httpx.Response(408, headers={"Retry-After": "2"}, text="slow")]
    async with clock, make_client(hosts, clock=clock, timeout=Timeout(download=1.0)) as client:
        with pytest.raises(DownloadError, match=r"did not finish within 1 s"):
            await client.download(
                structure_generation(generation_json("completed")), tmp_path / "a.mp3"
            )
        assert clock.now() <= 1.5
    assert hosts.storage_requests() == []
