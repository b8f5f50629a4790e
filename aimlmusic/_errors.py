"""The exception tree of aimlmusic.

Every exception raised by the public API derives from :class:`AimlMusicError`; no httpx
exception escapes::

    AimlMusicError
    ├── ConfigurationError            bad set-up: no API key, insecure base URL, bad settings
    │                                 (also a ValueError)
    ├── RequestValidationError        a request broke a documented limit (also a ValueError)
    ├── APIError                      anything that happened talking to the API
    │   ├── APIStatusError            the API answered with an HTTP error status
    │   │   ├── BadRequestError           400
    │   │   ├── AuthenticationError       401
    │   │   ├── PermissionDeniedError     403 (for example: no credits left)
    │   │   ├── NotFoundError             404
    │   │   ├── RateLimitError            429
    │   │   └── ServerError               5xx
    │   ├── APIConnectionError        no usable HTTP response (refused, reset, DNS, TLS)
    │   │   └── APITimeoutError       the request timed out
    │   ├── ResponseValidationError   the response could not be understood
    │   └── AmbiguousSubmissionError  a POST may or may not have created a (paid) generation
    ├── GenerationFailedError         the generation ended with status ``error``
    ├── GenerationTimeoutError        the generation did not finish in time (also a TimeoutError)
    ├── DownloadError                 the audio file could not be fetched or verified
    └── SharedStateError              the Redis behind ``shared_url`` failed (requests held)

Messages never contain the API key: the transport redacts it before an exception is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._models import Generation, SongRequest

__all__ = [
    "AimlMusicError",
    "AmbiguousSubmissionError",
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConfigurationError",
    "DownloadError",
    "GenerationFailedError",
    "GenerationTimeoutError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestValidationError",
    "ResponseValidationError",
    "ServerError",
    "SharedStateError",
    "SubmissionTimeoutError",
]


class AimlMusicError(Exception):
    """Base class of every exception raised by aimlmusic.

    ``generation_id`` names the generation the error concerns, when one was created: an
    error that ``generate()`` or ``wait()`` raises after the submission was accepted (a
    403 or a lost Redis while polling, say) carries it, so that the song, paid for, can
    still be followed with ``wait()``. ``None`` when no generation is known.
    """

    generation_id: str | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        # The subclasses take keyword-only arguments, which pickle's default (calling the
        # class with ``args``) cannot supply: rebuild from the attributes instead, so errors
        # survive process pools, task queues and ``copy``.
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


def _rebuild(
    cls: type[AimlMusicError], args: tuple[Any, ...], state: dict[str, Any]
) -> AimlMusicError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class ClientClosedError(RuntimeError):
    """The client was closed: nothing more can be sent with it (internal: callers see the
    ``RuntimeError`` it is; a batch whose client is closed under it stops with it)."""


class ConfigurationError(AimlMusicError, ValueError):
    """The client was set up in a way that cannot work (no API key, insecure base URL...)."""


class RequestValidationError(AimlMusicError, ValueError):
    """A request broke a documented limit; raised on construction, before anything is sent.

    ``field`` is the dotted field name (``"prompt"``, ``"audio_setting.bitrate"``), ``limit``
    describes what is allowed and ``got`` what was given (for long text: its length).
    """

    def __init__(self, field: str, limit: str, got: str) -> None:
        self.field = field
        self.limit = limit
        self.got = got
        super().__init__(f"{field}: {limit}; got {got}")


class APIError(AimlMusicError):
    """Something went wrong while talking to the API.

    ``method`` and ``url`` name the request (never its headers); either may be ``None`` when
    the error was raised outside a request.
    """

    def __init__(self, message: str, *, method: str | None = None, url: str | None = None) -> None:
        self.message = message
        self.method = method
        self.url = url
        super().__init__(message)


class APIStatusError(APIError):
    """The API answered with an HTTP error status.

    ``message`` and ``request_id`` come from the AI/ML API error body
    ``{message, path, requestId, statusCode, timestamp}`` when there is one; ``body`` is the
    parsed JSON body, or the raw text when it was not JSON.
    """

    status_code: int

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        request_id: str | None = None,
        body: Mapping[str, Any] | list[Any] | str | None = None,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        self.status_code = status_code
        self.request_id = request_id
        self.body = body
        super().__init__(message, method=method, url=url)

    def __str__(self) -> str:
        where = f" ({self.method} {self.url})" if self.method and self.url else ""
        rid = f" [request id {self.request_id}]" if self.request_id else ""
        return f"HTTP {self.status_code}: {self.message}{rid}{where}"


class BadRequestError(APIStatusError):
    """400: the API rejected the request body."""


class AuthenticationError(APIStatusError):
    """401: the API key is missing or invalid."""


class PermissionDeniedError(APIStatusError):
    """403: authenticated but not allowed, for example because the account has no credits."""


class NotFoundError(APIStatusError):
    """404: no such resource, for example an unknown generation id."""


class RateLimitError(APIStatusError):
    """429: the account's request rate was exceeded.

    ``retry_after`` is the server's requested wait in seconds, or ``None`` when it sent none
    (the AI/ML API normally sends none).
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kwargs)


class ServerError(APIStatusError):
    """5xx: the server failed."""


class APIConnectionError(APIError):
    """No usable HTTP response: the connection was refused, reset or failed."""


class APITimeoutError(APIConnectionError):
    """The request timed out."""


class ResponseValidationError(APIError):
    """The API's response could not be understood (not JSON, wrong types, missing fields).

    ``reason`` is a readable account of what was wrong; ``body`` is a bounded excerpt of the
    response text. ``generation_id`` is the id the answer carried when it names a generation
    that exists but cannot be used as given (an id that cannot be sent back in a request,
    because it holds a lone surrogate or a control character): the raw string, kept so you
    can look the generation up later by other means; ``None`` otherwise.
    """

    def __init__(
        self,
        reason: str,
        *,
        body: str | None = None,
        generation_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.reason = reason
        self.body = body
        self.generation_id = generation_id
        super().__init__(f"could not understand the API's response: {reason}", **kwargs)


class AmbiguousSubmissionError(APIError):
    """A submission may or may not have created a generation, so it was **not** resent.

    Raised when a POST failed after it may have reached the server (a read timeout, a dropped
    connection after sending, a 5xx). A generation may exist and cost credits; resending
    blindly could pay twice. ``request`` is the :class:`~aimlmusic.SongRequest` and ``cause``
    the underlying failure; look for the song in your account before resubmitting it.
    """

    def __init__(
        self,
        message: str,
        *,
        request: SongRequest,
        cause: BaseException | None = None,
        **kwargs: Any,
    ) -> None:
        self.request = request
        self.cause = cause
        super().__init__(message, **kwargs)


class GenerationFailedError(AimlMusicError):
    """The generation ended with status ``error``; carries its id and the API's error."""

    generation_id: str  # always known here

    def __init__(self, generation: Generation) -> None:
        self.generation = generation
        self.generation_id = generation.id
        err = generation.error
        self.error_name = err.name if err is not None else None
        self.error_message = err.message if err is not None else None
        detail = (
            f"{self.error_name}: {self.error_message}" if err is not None else "no detail given"
        )
        super().__init__(f"generation {self.generation_id} failed ({detail})")


class SubmissionTimeoutError(AimlMusicError, TimeoutError):
    """A song was not submitted within its time limit: it waited for one of the account's
    in-flight slots, or for the request budget, until the time ran out. Nothing was sent,
    so nothing was created or paid for. ``timeout`` is the limit (seconds) and
    ``waiting_for`` what held the song back."""

    def __init__(self, timeout: float, waiting_for: str) -> None:
        self.timeout = timeout
        self.waiting_for = waiting_for
        super().__init__(
            f"the song was not submitted within {timeout:g} s: it waited for {waiting_for}; "
            "nothing was sent"
        )


class SendingRefused(AimlMusicError):
    """An ``on_sending`` hook refused a request before its first byte: nothing was sent.

    Internal (not exported): the catalog runner raises it when its journal cannot record a
    submission as being sent, so that this one POST stays home and no other is cut. Only a
    transport that reports sending before the first byte (httpcore's trace, over a socket)
    can be stopped so; one that reports it once answered has already sent the request, and
    the refusal is dropped there."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"not sent: {reason}")


class GenerationTimeoutError(AimlMusicError, TimeoutError):
    """The generation did not finish before its deadline.

    It may still finish: ``generation_id`` lets you fetch it later with ``get`` or ``wait``.
    ``last_seen`` is the last status the client saw, if any.
    """

    generation_id: str  # always known here

    def __init__(
        self, generation_id: str, timeout: float, last_seen: Generation | None = None
    ) -> None:
        self.generation_id = generation_id
        self.timeout = timeout
        self.last_seen = last_seen
        status = f", last status {last_seen.status.value!r}" if last_seen is not None else ""
        super().__init__(
            f"generation {generation_id} did not finish within {timeout:g} s{status}; "
            "it may still finish: fetch it later by its id"
        )


class DownloadError(AimlMusicError):
    """The audio file could not be downloaded or failed verification."""

    def __init__(self, message: str, *, generation_id: str | None = None) -> None:
        self.generation_id = generation_id
        super().__init__(message)


class SharedStateError(AimlMusicError):
    """The Redis that shares the account's budget (``shared_url``) could not be reached or
    failed; ``url`` names it without its password. Requests are held, never sent unshared.
    ``transient`` is true for a failure that may pass (a connection refused or timed out, a
    replica read-only after a failover, Redis loading or busy), false for one Redis would
    answer the same way again (a wrong password, a refused command, a key of the wrong
    type)."""

    def __init__(self, message: str, *, url: str, transient: bool = False) -> None:
        self.url = url
        self.transient = transient
        super().__init__(message)
