"""Plain HTTP values between the ASGI adapter and the emulator's logic, and the error bodies
the real services send: the AI/ML API's JSON error, an object store's XML error, and a
gateway's HTML page."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal
from xml.sax.saxutils import escape

import attrs

__all__ = [
    "HttpRequest",
    "Reply",
    "api_error",
    "gateway_error",
    "json_reply",
    "store_error",
]

JSON_TYPE = "application/json; charset=utf-8"

#: What the ASGI adapter does with a reply: send it, hang up instead, or send the headers and
#: part of the body and then hang up.
ReplyAction = Literal["respond", "drop", "truncate"]


@attrs.frozen
class HttpRequest:
    """An incoming request: header names are lower-case; a repeated header's values are
    joined with ``", "``; ``query`` maps each parameter to its values in order."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str] = attrs.field(repr=False)  # carries the Authorization header
    body: bytes = attrs.field(repr=False)
    scheme: str = "http"
    host: str = "localhost"

    @property
    def base_url(self) -> str:
        """``scheme://host`` as the client addressed this server."""
        return f"{self.scheme}://{self.host}"

    def query_value(self, name: str) -> str | None:
        """The first value of query parameter ``name``."""
        values = self.query.get(name)
        return values[0] if values else None


@attrs.frozen
class Reply:
    """A response to send, with the ``delay`` (real seconds) to wait before sending it and
    the ``action`` to take. ``head_only`` sends the headers (with the body's length) only."""

    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    action: ReplyAction = "respond"
    delay: float = 0.0
    head_only: bool = False

    def header_list(self) -> list[tuple[bytes, bytes]]:
        """The raw ASGI header list, Content-Type and Content-Length included."""
        raw = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in self.headers
        ]
        if self.content_type is not None:
            raw.append((b"content-type", self.content_type.encode("latin-1")))
        if not any(name == b"content-length" for name, _ in raw):
            raw.append((b"content-length", str(len(self.body)).encode("ascii")))
        return raw


def encode_json(value: Any) -> bytes:
    """Compact JSON, ASCII-escaped so that even a lone surrogate from a client's prompt
    comes out as valid JSON."""
    return json.dumps(value, separators=(",", ":")).encode("ascii")


def json_reply(status: int, value: Any, *headers: tuple[str, str]) -> Reply:
    """A JSON response."""
    return Reply(status, encode_json(value), JSON_TYPE, tuple(headers))


def api_error(
    status: int,
    message: str,
    *,
    path: str,
    request_id: str,
    timestamp: str,
    headers: tuple[tuple[str, str], ...] = (),
    **details: Any,
) -> Reply:
    """The AI/ML API's error body ``{message, path, requestId, statusCode, timestamp}``, plus
    any ``details`` (for example the validation ``errors``)."""
    body = {
        "message": message,
        "path": path,
        "requestId": request_id,
        "statusCode": status,
        "timestamp": timestamp,
        **details,
    }
    return json_reply(status, body, *headers)


def store_error(status: int, code: str, message: str, *, request_id: str) -> Reply:
    """An object store's XML error (what a presigned URL answers when it refuses)."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"<RequestId>{escape(request_id)}</RequestId></Error>\n"
    )
    return Reply(status, body.encode("utf-8"), "application/xml")


_GATEWAY_PAGE = (
    "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
    "<center><h1>{status} {reason}</h1></center>\r\n</body>\r\n</html>\r\n"
)
_REASONS = {
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Time-out",
}


def gateway_error(status: int) -> Reply:
    """A reverse proxy's HTML error page: not JSON, as real gateways answer."""
    reason = _REASONS.get(status, "Server Error")
    page = _GATEWAY_PAGE.format(status=status, reason=reason)
    return Reply(status, page.encode("ascii"), "text/html")
