"""The object store behind ``audio_file.url``: presigned URLs, a store's refusals, the bytes.

It behaves like the storage a real presigned URL points at, not like the API: errors are XML,
the URL is the only credential (a request that also carries ``Authorization`` is refused),
expired or altered URLs get 403, and it serves ``HEAD`` and single byte ranges.
"""

from __future__ import annotations

import attrs

from ._audio import AudioFacts, AudioRenderer
from ._http import HttpRequest, Reply, store_error
from ._presign import UrlSigner
from ._state import Job

__all__ = ["FILES_PREFIX", "FileStore"]

FILES_PREFIX = "/files/"
FILE_METHODS = "GET, HEAD"


class FileStore:
    """Audio files of finished jobs, reachable through presigned URLs."""

    def __init__(self, renderer: AudioRenderer, url_ttl: float) -> None:
        self._renderer = renderer
        self._signer = UrlSigner()
        self._url_ttl = url_ttl
        self._files: dict[str, Job] = {}

    def add(self, job: Job) -> None:
        """Make ``job``'s file addressable (its URL works once the job completed)."""
        self._files[job.file_id] = job

    def clear(self) -> None:
        """Forget every file."""
        self._files.clear()

    def facts(self, job: Job) -> AudioFacts:
        """The facts of ``job``'s file, without rendering it."""
        return self._renderer.facts(job.spec)

    def presigned_url(self, job: Job, base_url: str, unix_now: float) -> str:
        """A URL for ``job``'s file valid for the configured lifetime from ``unix_now``."""
        path = f"{FILES_PREFIX}{job.file_id}.{job.spec.format}"
        return self._signer.url(base_url, path, int(unix_now + self._url_ttl))

    def authorize(self, request: HttpRequest, unix_now: float, request_id: str) -> Job | Reply:
        """The job whose file ``request`` may fetch, or the store's refusal."""
        if "authorization" in request.headers:
            # A presigned URL is its own credential; stores refuse a second one.
            return store_error(
                400,
                "InvalidArgument",
                "Only one auth mechanism allowed; a presigned URL must be sent "
                "without an Authorization header.",
                request_id=request_id,
            )
        file_id, _, extension = request.path[len(FILES_PREFIX) :].partition(".")
        job = self._files.get(file_id)
        if job is None or job.status != "completed" or extension != job.spec.format:
            return store_error(
                404, "NoSuchKey", "The specified key does not exist.", request_id=request_id
            )
        expires_text = request.query_value("Expires")
        signature = request.query_value("Signature")
        if expires_text is None or signature is None or not expires_text.isdigit():
            return store_error(
                403,
                "AccessDenied",
                "Anonymous access is forbidden for this operation.",
                request_id=request_id,
            )
        expires = int(expires_text)
        if not self._signer.verify(request.path, expires, signature):
            return store_error(
                403,
                "SignatureDoesNotMatch",
                "The request signature does not match the signature calculated for it.",
                request_id=request_id,
            )
        if unix_now > expires:
            return store_error(403, "AccessDenied", "Request has expired.", request_id=request_id)
        return job

    def serve(self, job: Job, request: HttpRequest) -> Reply:
        """The file (rendered or from the cache), or the byte range asked for."""
        audio = self._renderer.render(job.prompt, job.spec)
        return _file_reply(audio.data, audio.facts.content_type, audio.etag, request)

    @staticmethod
    def method_not_allowed(request_id: str) -> Reply:
        """What the store answers to a method other than GET and HEAD."""
        refusal = store_error(
            405, "MethodNotAllowed", "The specified method is not allowed.", request_id=request_id
        )
        return attrs.evolve(refusal, headers=(("Allow", FILE_METHODS),))


def _file_reply(data: bytes, content_type: str, etag: str, request: HttpRequest) -> Reply:
    """The file, or the single byte range asked for, as an object store serves it."""
    headers: list[tuple[str, str]] = [("ETag", etag), ("Accept-Ranges", "bytes")]
    head_only = request.method == "HEAD"
    size = len(data)
    wanted = request.headers.get("range")
    if wanted is not None and wanted.startswith("bytes=") and "," not in wanted:
        first_text, _, last_text = wanted[len("bytes=") :].strip().partition("-")
        try:
            if first_text:
                first = int(first_text)
                last = min(int(last_text), size - 1) if last_text else size - 1
            else:  # a suffix: the last N bytes
                first, last = max(0, size - int(last_text)), size - 1
        except ValueError:
            pass  # an unreadable range is ignored, as HTTP allows: send the whole file
        else:
            if first > last or first >= size:
                return Reply(416, b"", content_type, (("Content-Range", f"bytes */{size}"),))
            headers.append(("Content-Range", f"bytes {first}-{last}/{size}"))
            part = data[first : last + 1]
            return Reply(206, part, content_type, tuple(headers), head_only=head_only)
    return Reply(200, data, content_type, tuple(headers), head_only=head_only)
