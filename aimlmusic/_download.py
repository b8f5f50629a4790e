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
"""

from __future__ import annotations

import functools
import logging
import os
import re
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import BinaryIO

import anyio
import anyio.to_thread
import httpx

from ._clock import Clock
from ._config import RetryPolicy, Timeout
from ._errors import AimlMusicError, DownloadError
from ._filemode import file_mode_from_umask
from ._models import Generation, GenerationStatus
from ._redact import Redactor, redact_url
from ._retry import backoff_delay

__all__ = ["Downloader"]

logger = logging.getLogger("aimlmusic")

#: Statuses a presigned URL answers with once it has expired or was revoked.
EXPIRED_STATUSES = frozenset({403, 404, 410})
MAX_REDIRECTS = 5
CHUNK_BYTES = 64 * 1024


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
    ) -> None:
        self._http = http
        self._retry = retry
        self._clock = clock
        self._redactor = redactor
        self._user_agent = user_agent
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

        ``refresh(generation_id)`` is called at most once, when the URL turns out expired.
        """
        gid = generation.id
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
            await self._fetch(url, target, gid)
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
        try:
            fresh = await refresh(gid)
        except AimlMusicError as exc:
            raise DownloadError(
                f"the audio URL of generation {gid} was refused (HTTP {first_status}) and "
                f"getting a fresh one failed: {exc}",
                generation_id=gid,
            ) from exc
        fresh_url = audio_url(fresh)
        try:
            await self._fetch(fresh_url, target, gid)
        except _ExpiredURL as again:
            status = again.status
        else:
            return target
        raise DownloadError(
            f"the audio URL of generation {gid} was refused (HTTP {first_status}), and so was a "
            f"fresh one (HTTP {status}): {redact_url(fresh_url)}",
            generation_id=gid,
        )

    # ------------------------------------------------------------------ one URL, with retries

    async def _fetch(self, url: str, target: Path, gid: str) -> None:
        attempts = self._retry.attempts
        for attempt in range(1, attempts + 1):
            try:
                await self._fetch_once(url, target, gid)
            except _TransientFailure as exc:
                if attempt == attempts:
                    reason = str(exc)
                    break
                delay = backoff_delay(attempt - 1, self._retry)
                logger.debug(
                    "download of generation %s failed (%s); retrying in %.3f s", gid, exc, delay
                )
                await self._clock.sleep(delay)
            else:
                return
        raise DownloadError(
            f"could not download the audio of generation {gid} from {redact_url(url)} "
            f"after {attempts} attempts: {reason}",
            generation_id=gid,
        )

    async def _fetch_once(self, url: str, target: Path, gid: str) -> None:
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
                    f"from {redact_url(url)}",
                    generation_id=gid,
                )
            await self._save(response, target, gid)
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
                    f"the audio URL of generation {gid} is not http(s): {redact_url(current)}",
                    generation_id=gid,
                )
            request = self._http.build_request(
                "GET", current, headers={"User-Agent": self._user_agent}, timeout=self._timeout
            )
            # A caller's own http client may carry a default Authorization header: it must
            # not reach the storage host.
            request.headers.pop("Authorization", None)
            logger.debug("GET %s (audio of generation %s)", redact_url(current), gid)
            outcome = await self._send(request, gid)
            if isinstance(outcome, Exception):
                raise outcome  # raised here, not in httpx's except block: no httpx context
            response = outcome
            logger.debug("GET %s -> %d", redact_url(current), response.status_code)
            location = response.headers.get("location")
            if not response.is_redirect or location is None:
                return response
            await response.aclose()
            current = str(response.url.join(location))
        raise DownloadError(
            f"the audio URL of generation {gid} redirected more than {MAX_REDIRECTS} times",
            generation_id=gid,
        )

    async def _send(self, request: httpx.Request, gid: str) -> httpx.Response | Exception:
        try:
            return await self._http.send(request, stream=True, follow_redirects=False)
        except httpx.TransportError as exc:
            return _TransientFailure(self._describe(exc))
        except httpx.HTTPError as exc:
            return DownloadError(
                f"the audio of generation {gid} could not be downloaded from "
                f"{redact_url(str(request.url))}: {self._describe(exc)}",
                generation_id=gid,
            )

    # ------------------------------------------------------------------ writing the file

    async def _save(self, response: httpx.Response, target: Path, gid: str) -> None:
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
                written = await self._stream_into(response, file, gid)
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

    async def _stream_into(self, response: httpx.Response, file: BinaryIO, gid: str) -> int:
        written = 0
        failure: Exception | None = None
        try:
            async for chunk in response.aiter_bytes(CHUNK_BYTES):
                await anyio.to_thread.run_sync(file.write, chunk)
                written += len(chunk)
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

    def _describe(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        # httpx messages may quote the URL, signature included.
        return self._redactor.text(_strip_queries(text))


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
