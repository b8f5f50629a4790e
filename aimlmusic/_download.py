"""Downloading a finished song's audio: streamed, verified, atomic, and without credentials.

``audio_file.url`` is a presigned URL on a storage host. The request carries **no**
``Authorization`` header (a presigned store rejects or logs a second credential, and the key
must not travel to a third party), and redirects are followed by hand so no hop can carry
one either. The body streams into a temporary file beside the target, its length is checked
against ``Content-Length``, it is fsynced and then renamed over the target in one step: the
target is either the complete file or untouched, and no temporary file survives a failure or
a cancellation. An expired URL (403/404/410) is refreshed once through the caller's
``refresh`` (a ``GET`` of the generation). Signatures in the URL's query string never appear
in messages or logs.

The storage request is built from scratch, not from the client's defaults, and sent with a
no-op ``auth``: a caller's ``http_client`` lends its connection pool, never its ``auth``,
default headers or cookies. A whole download (attempts, back-off, refresh) has a deadline on
the client's clock, checked before each attempt and as each piece of the body arrives (so it
is overrun by at most one HTTP timeout), and the body a size cap: the reported
``extra_info.music_size`` plus a margin when known, else a generous default. Over either, the
download fails and its partial file is removed.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import re
import socket
import tempfile
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from pathlib import Path
from typing import BinaryIO

import anyio
import anyio.to_thread
import httpx

from ._bodies import BodyProblem, decoded_chunks
from ._clock import Clock, api_seconds, finished_by
from ._config import DEFAULT_DOWNLOAD_BYTES, RetryPolicy, Timeout
from ._errors import AimlMusicError, DownloadError
from ._filemode import file_mode_from_umask
from ._models import Generation, GenerationStatus
from ._redact import Redactor, redact_url
from ._retry import backoff_delay
from ._transport import NO_AUTH, bounded

__all__ = ["Downloader"]

logger = logging.getLogger("aimlmusic")
#: Each request's outcome, on its own logger so that a CLI's -v can show just these.
request_logger = logging.getLogger("aimlmusic.http")

#: Statuses a presigned URL answers with once it has expired or was revoked.
EXPIRED_STATUSES = frozenset({403, 404, 410})
MAX_REDIRECTS = 5
#: Room above the reported ``music_size`` before a body counts as oversized: the size is
#: the API's (undocumented) word, and containers or re-encoding may differ a little.
SIZE_MARGIN = 0.25
#: ...and at least this much room, for very short songs.
SIZE_SLACK_BYTES = 1024 * 1024


def _host_of(url: str) -> str:
    """The host of ``url`` ("" when it has none or cannot be read)."""
    try:
        return httpx.URL(url).host
    except (httpx.InvalidURL, ValueError, UnicodeError):
        return ""


def not_public(host: str) -> bool:
    """Whether ``host`` names an address that is not a public one: ``localhost``, or an IP
    address (in any form the resolver takes: ``2852039166`` and ``0xA9FEA9FE`` are
    169.254.169.254) that is loopback, private, link-local, reserved, multicast or
    unspecified. A name that resolves to such an address is not caught: checking the
    address a connection reached refuses too much (a proxy's, a VPN's fake-ip range, the
    API's own private name), so only the URL is read."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:  # the shorthands inet_aton reads: decimal, hexadecimal, octal, dotted or not
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except (OSError, ValueError):
            return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


#: The most characters of a URL an error or a log line shows: a hostile redirect may be
#: tens of kilobytes long.
SHOWN_URL_CHARS = 300


class _ExpiredURL(Exception):
    def __init__(self, status: int) -> None:
        self.status = status
        super().__init__(f"HTTP {status}")


class _TransientFailure(Exception):
    """A failure worth another try: connection trouble, a timeout, 429 or 5xx."""


class Downloader:
    """Fetches audio files with ``http`` (an API client's connection pool, minus its key)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        retry: RetryPolicy,
        clock: Clock,
        timeout: Timeout,
        redactor: Redactor,
        user_agent: str,
        max_bytes: int = DEFAULT_DOWNLOAD_BYTES,
        api_host: str = "",
    ) -> None:
        self._http = http
        # Audio on a host that is no public address (a cloud's metadata service, a local
        # admin port) is refused, unless the API itself is on one (an emulator, a test).
        self._private_allowed = not_public(api_host)
        self._retry = retry
        self._clock = clock
        self._redactor = redactor
        self._user_agent = user_agent
        self._max_bytes = max_bytes
        self._deadline = timeout.download
        self._timeout = httpx.Timeout(
            connect=timeout.connect, read=timeout.read, write=timeout.write, pool=timeout.pool
        )

    async def download(
        self,
        generation: Generation,
        target: Path,
        *,
        refresh: Callable[[str], Awaitable[Generation]],
    ) -> Path:
        """Write ``generation``'s audio to ``target`` and return ``target``.

        ``refresh(generation_id)`` fetches the generation again: when it is completed but
        came without an audio URL, and when the URL turns out expired (once each). The whole
        of it, those included, runs within ``Timeout.download`` seconds of the client's clock.
        """
        # A transfer takes real time: on a compressed clock the deadline spans as many API
        # seconds as the real seconds it stands for (like the HTTP timeouts, which are real),
        # at the scale of the moment (a clock following an emulator learns it late).
        until = self._clock.now() + api_seconds(self._clock, self._deadline)
        return await self._download(generation, target, refresh=refresh, until=until)

    async def _download(
        self,
        generation: Generation,
        target: Path,
        *,
        refresh: Callable[[str], Awaitable[Generation]],
        until: float,
    ) -> Path:
        gid = generation.id
        if _completed_without_audio(generation):
            # The API's schema lets a completed generation come without its audio file (it
            # may be attached a moment later): ask once more rather than fail a paid song.
            logger.debug("generation %s is completed without an audio URL: fetching it again", gid)
            generation = await self._refreshed(
                refresh,
                gid,
                until,
                failed=f"generation {gid} is completed but the API gave no audio URL, and "
                "asking again failed",
            )
        url = audio_url(generation)
        if await anyio.to_thread.run_sync(target.is_dir):
            raise DownloadError(
                f"cannot save the audio of generation {gid} to {str(target)!r}: it is a "
                "directory; give a file name",
                generation_id=gid,
            )
        try:
            await anyio.to_thread.run_sync(
                functools.partial(target.parent.mkdir, parents=True, exist_ok=True)
            )
            await self._fetch(url, target, gid, self._cap_for(generation), until)
        except _ExpiredURL as expired:
            first_status = expired.status
        except OSError as exc:  # disk full, permission denied...: the library's error, named
            raise DownloadError(
                f"cannot save the audio of generation {gid} to {str(target)!r}: "
                f"{exc.strerror or exc}",
                generation_id=gid,
            ) from exc
        else:
            return target
        logger.debug(
            "audio URL of generation %s answered HTTP %d: fetching a fresh one", gid, first_status
        )
        fresh = await self._refreshed(
            refresh,
            gid,
            until,
            failed=f"the audio URL of generation {gid} was refused (HTTP {first_status}) and "
            "getting a fresh one failed",
        )
        fresh_url = audio_url(fresh)
        try:
            await self._fetch(fresh_url, target, gid, self._cap_for(fresh), until)
        except _ExpiredURL as again:
            status = again.status
        else:
            return target
        raise DownloadError(
            f"the audio URL of generation {gid} was refused (HTTP {first_status}), and so was a "
            f"fresh one (HTTP {status}): {self._shown(fresh_url)}",
            generation_id=gid,
        )

    def _cap_for(self, generation: Generation) -> int:
        """The most bytes this generation's audio may have."""
        info = generation.music_info
        size = info.size if info is not None else None
        if size is None or size <= 0:
            return self._max_bytes
        expected = size + max(int(size * SIZE_MARGIN), SIZE_SLACK_BYTES)
        return min(expected, self._max_bytes)

    # ------------------------------------------------------------------ one URL, with retries

    async def _fetch(self, url: str, target: Path, gid: str, cap: int, until: float) -> None:
        attempts = self._retry.attempts
        for attempt in range(1, attempts + 1):
            self._check_deadline(until, gid)
            try:
                await self._fetch_once(url, target, gid, cap, until)
            except _TransientFailure as exc:
                if attempt == attempts:
                    reason = str(exc)
                    break
                delay = backoff_delay(attempt - 1, self._retry)
                self._check_deadline(until - delay, gid)  # no sleeping past the deadline
                logger.debug(
                    "download of generation %s failed (%s); retrying in %.3f s", gid, exc, delay
                )
                await self._clock.sleep(delay)
            else:
                return
        raise DownloadError(
            f"could not download the audio of generation {gid} from {self._shown(url)} "
            f"after {attempts} attempts: {reason}",
            generation_id=gid,
        )

    async def _fetch_once(self, url: str, target: Path, gid: str, cap: int, until: float) -> None:
        response = await self._open(url, gid)
        try:
            status = response.status_code
            if status in EXPIRED_STATUSES:
                raise _ExpiredURL(status)
            if status == 429 or status >= 500:
                raise _TransientFailure(f"HTTP {status}")
            if not response.is_success:
                raise DownloadError(
                    f"the audio of generation {gid} could not be downloaded: HTTP {status} "
                    f"from {self._shown(url)}",
                    generation_id=gid,
                )
            declared = response.headers.get("content-length", "").strip()
            if declared.isdigit() and int(declared) > cap:
                raise self._oversized(gid, cap, f"the server announced {int(declared):,} bytes")
            await self._save(response, target, gid, cap, until)
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()

    async def _open(self, url: str, gid: str) -> httpx.Response:
        """Send the GET, following redirects by hand; never with credentials."""
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            scheme = current.partition(":")[0].lower()
            if scheme not in ("http", "https"):
                raise DownloadError(
                    f"the audio URL of generation {gid} is not http(s): {self._shown(current)}",
                    generation_id=gid,
                )
            host = _host_of(current)
            if not self._private_allowed and not_public(host):
                raise DownloadError(
                    f"the audio URL of generation {gid} is on an address that is not public "
                    f"({self._shown(current)}): refused, since the API is not on one",
                    generation_id=gid,
                )
            # Built from scratch rather than with build_request(): a caller's http client
            # may carry default headers (Authorization, an API key header) and cookies,
            # none of which may reach the storage host. The audio is not worth compressing,
            # so no Accept-Encoding is offered (httpx would offer br, decoded unbounded).
            try:
                request = httpx.Request(
                    "GET",
                    current,
                    headers={"User-Agent": self._user_agent, "Accept-Encoding": "identity"},
                    extensions={"timeout": self._timeout.as_dict()},
                )
            except (httpx.InvalidURL, ValueError, UnicodeError):
                raise DownloadError(
                    f"the audio URL of generation {gid} is not a valid URL: {self._shown(current)}",
                    generation_id=gid,
                ) from None
            logger.debug("GET %s (audio of generation %s)", self._shown(current), gid)
            outcome = await self._send(request, gid)
            if isinstance(outcome, Exception):
                raise outcome  # raised here, not in httpx's except block: no httpx context
            response = outcome
            request_logger.debug("GET %s -> %d", self._shown(current), response.status_code)
            location = response.headers.get("location")
            if not response.is_redirect or location is None:
                return response
            await response.aclose()
            try:
                current = str(response.url.join(location))
            except (httpx.InvalidURL, ValueError, UnicodeError):  # too long, or not a URL
                raise DownloadError(
                    f"the audio URL of generation {gid} redirected to an invalid URL",
                    generation_id=gid,
                ) from None
        raise DownloadError(
            f"the audio URL of generation {gid} redirected more than {MAX_REDIRECTS} times",
            generation_id=gid,
        )

    async def _send(self, request: httpx.Request, gid: str) -> httpx.Response | Exception:
        try:
            return await self._http.send(request, stream=True, auth=NO_AUTH, follow_redirects=False)
        except httpx.TransportError as exc:
            return _TransientFailure(self._describe(exc))
        except httpx.InvalidURL:
            # Raised once answered: httpx builds a redirect's URL from its Location even
            # when it does not follow it, and refuses one too long.
            return DownloadError(
                f"the audio of generation {gid} could not be downloaded from "
                f"{self._shown(str(request.url))}: it redirected to an invalid URL",
                generation_id=gid,
            )
        except httpx.HTTPError as exc:
            return DownloadError(
                f"the audio of generation {gid} could not be downloaded from "
                f"{self._shown(str(request.url))}: {self._describe(exc)}",
                generation_id=gid,
            )

    # ------------------------------------------------------------------ writing the file

    async def _save(
        self, response: httpx.Response, target: Path, gid: str, cap: int, until: float
    ) -> None:
        # Synchronous on purpose (it is quick): awaited, a cancellation arriving just after the
        # file was made could leave it behind unnamed by anyone.
        fd, tmp_name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".part"
        )
        tmp = Path(tmp_name)
        try:
            file = os.fdopen(fd, "wb")
            try:
                # mkstemp makes it 0600; the delivered file gets the umask's mode like any other.
                os.chmod(tmp, file_mode_from_umask())
                written = await self._stream_into(response, file, gid, cap, until)
                await anyio.to_thread.run_sync(_flush_and_sync, file)
            finally:
                file.close()  # synchronous: runs even while being cancelled
            self._verify(response, written, gid)
            await anyio.to_thread.run_sync(os.replace, tmp, target)
        except BaseException:
            _discard(tmp)  # synchronous: it must happen even while being cancelled
            raise
        await anyio.to_thread.run_sync(_sync_directory, target.parent)
        logger.debug("saved %d bytes of generation %s to %s", written, gid, target)

    async def _stream_into(
        self, response: httpx.Response, file: BinaryIO, gid: str, cap: int, until: float
    ) -> int:
        written = 0
        failure: Exception | None = None
        try:
            async with aclosing(decoded_chunks(response, cap, what="the audio")) as chunks:
                async for chunk in chunks:
                    # Checked as each piece arrives: a store dripping a byte at a time resets
                    # the read timeout with every byte, but not this.
                    self._check_deadline(until, gid)
                    await anyio.to_thread.run_sync(file.write, chunk)
                    written += len(chunk)
        except BodyProblem as problem:
            failure = (
                self._oversized(gid, cap, "it sent more")
                if problem.too_large
                else DownloadError(
                    f"the audio of generation {gid} could not be read: {problem.reason}",
                    generation_id=gid,
                )
            )
        except httpx.TransportError as exc:
            failure = _TransientFailure(self._describe(exc))
        except httpx.HTTPError as exc:
            failure = DownloadError(
                f"the audio of generation {gid} could not be read: {self._describe(exc)}",
                generation_id=gid,
            )
        if failure is not None:
            raise failure
        return written

    def _verify(self, response: httpx.Response, written: int, gid: str) -> None:
        declared = response.headers.get("content-length")
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        # Content-Length counts the bytes on the wire, before any content decoding.
        received = written if encoding == "identity" else response.num_bytes_downloaded
        if declared is not None and declared.strip().isdigit() and int(declared) != received:
            raise DownloadError(
                f"the audio of generation {gid} is incomplete: the server announced "
                f"{int(declared)} bytes and sent {received}",
                generation_id=gid,
            )
        if written == 0:
            raise DownloadError(f"the audio of generation {gid} is empty", generation_id=gid)

    async def _refreshed(
        self,
        refresh: Callable[[str], Awaitable[Generation]],
        gid: str,
        until: float,
        *,
        failed: str,
    ) -> Generation:
        """``refresh(gid)`` within the download's deadline (the GET retries and waits for
        the budget: its time counts too); its failure is a ``DownloadError`` saying
        ``failed``."""
        fresh: list[Generation] = []

        async def ask() -> None:
            fresh.append(await refresh(gid))

        try:
            finished = await finished_by(self._clock, until, ask)
        except AimlMusicError as exc:
            raise DownloadError(f"{failed}: {exc}", generation_id=gid) from exc
        if not finished:
            raise self._out_of_time(gid)
        return fresh[0]

    def _check_deadline(self, until: float, gid: str) -> None:
        if self._clock.now() > until:
            raise self._out_of_time(gid)

    def _out_of_time(self, gid: str) -> DownloadError:
        return DownloadError(
            f"the download of the audio of generation {gid} did not finish within "
            f"{self._deadline:g} s (Timeout.download); nothing was saved",
            generation_id=gid,
        )

    def _oversized(self, gid: str, cap: int, detail: str) -> DownloadError:
        return DownloadError(
            f"the audio of generation {gid} is larger than expected ({detail}; the cap is "
            f"{cap:,} bytes, from extra_info.music_size with a margin when the API reports "
            "it, else SizeLimits.download_bytes); nothing was saved",
            generation_id=gid,
        )

    def _shown(self, url: str) -> str:
        """``url`` as logs and errors show it: its query values hidden (presigned
        signatures), and the client's key hidden wherever a server put it (in a redirect's
        path, say: a hostile host has the key from the POST)."""
        shown = self._redactor.text(redact_url(url))
        return bounded(shown, SHOWN_URL_CHARS)

    def _describe(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        # httpx messages may quote the URL, signature included; h11's a whole illegal
        # status line, however long.
        text = self._redactor.text(_strip_queries(text))
        return bounded(text, SHOWN_URL_CHARS)


def _completed_without_audio(generation: Generation) -> bool:
    return generation.status == GenerationStatus.COMPLETED and (
        generation.audio_file is None or not generation.audio_file.url
    )


def audio_url(generation: Generation) -> str:
    """The audio URL of a completed generation, or ``DownloadError`` saying why there is none."""
    if generation.status != GenerationStatus.COMPLETED:
        raise DownloadError(
            f"generation {generation.id} has no audio to download: its status is "
            f"{generation.status.value!r}, not 'completed'",
            generation_id=generation.id,
        )
    if generation.audio_file is None or not generation.audio_file.url:
        raise DownloadError(
            f"generation {generation.id} is completed but the API gave no audio URL",
            generation_id=generation.id,
        )
    return generation.audio_file.url


_URL_IN_TEXT = re.compile(r"https?://[^\s'\"<>]+")


def _strip_queries(text: str) -> str:
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group()), text)


def _discard(path: Path) -> None:
    path.unlink(missing_ok=True)


def _flush_and_sync(file: BinaryIO) -> None:
    file.flush()
    os.fsync(file.fileno())


def _sync_directory(directory: Path) -> None:
    """Persist the rename itself (best effort: not every platform can fsync a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
