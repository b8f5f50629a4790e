"""Keeping the API key and presigned-URL signatures out of reprs, logs and exceptions.

The key lives in a :class:`Secret`, whose ``repr`` and ``str`` never show it, so printing
an object's ``__dict__`` or a debugger's locals view cannot leak it either. Text that came
from outside (a server that echoes the key back in an error body, an exception message) is
passed through :meth:`Redactor.text` before it reaches a message, a log line or a model;
decoded JSON goes through :meth:`Redactor.data`, string by string, *after* decoding, so a key
that a server echoed with JSON escapes (``\\/``, ``\\u0073``) is found all the same.

httpx logs every request's URL at INFO; :func:`install_httpx_log_filter` keeps the presigned
signatures of storage URLs out of those lines.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import urllib.parse
import weakref
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = [
    "REDACTED",
    "Redactor",
    "Secret",
    "install_httpx_log_filter",
    "redact_url",
    "redact_urls_in",
]

REDACTED = "<redacted>"

#: Query parameters that identify, and never authorise, a request: shown in httpx's log lines.
VISIBLE_QUERY_PARAMETERS = frozenset({"generation_id"})
#: How deep :meth:`Redactor.data` follows nested JSON (deeper levels are dropped, not kept raw).
MAX_REDACTION_DEPTH = 64

# A JSON escape: \uXXXX (a pair for characters beyond the BMP) or a one-character escape.
_JSON_ESCAPE = re.compile(
    r"\\u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})"
    r"|\\u([0-9a-fA-F]{4})"
    r'|\\([/"\\bfnrt])'
)
_SHORT_ESCAPES = {
    "/": "/",
    '"': '"',
    "\\": "\\",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}


#: Hex digits of an API key's SHA-256 that name its account (a shared journal's rows, Redis
#: keys): 64 bits, no collision between one user's keys, and too few to help guess the key.
FINGERPRINT_HEX_DIGITS = 16


def key_fingerprint(key: str) -> str:
    """A name for the account behind ``key`` that does not give the key away."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:FINGERPRINT_HEX_DIGITS]


class Secret:
    """A string that does not show itself: use :meth:`reveal` where the value is needed."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret value (only for building the ``Authorization`` header)."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r})"

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[object, ...]:
        # Pickling would write the key to wherever the pickle goes.
        raise TypeError("a Secret cannot be pickled")


class Redactor:
    """Replaces every occurrence of the given secrets in text."""

    __slots__ = ("__weakref__", "_encoded", "_secrets")

    def __init__(self, *secrets: Secret) -> None:
        # Kept wrapped, so expanding the redactor (a debugger, an error tracker) shows no key.
        # Longest first, so a secret that contains another is replaced whole.
        kept = [s for s in secrets if s.reveal()]
        self._secrets = tuple(sorted(kept, key=lambda s: len(s.reveal()), reverse=True))
        # Each secret with any of its characters percent-encoded (``%73k-...``), to find
        # in one linear scan whether unquoting a text could reveal one: unquoting every
        # text with a "%" in it cost half a second of the event loop for a 1 MB answer.
        self._encoded = [
            re.compile(
                "".join(f"(?:{re.escape(c)}|%{ord(c):02x})" for c in secret.reveal()),
                re.IGNORECASE,
            )
            for secret in self._secrets
            if secret.reveal().isascii()
        ]

    def text(self, value: str) -> str:
        """``value`` with every secret replaced by ``<redacted>``.

        Text that is not valid JSON (an excerpt of a broken body) may still carry a key
        written with JSON escapes: when unescaping reveals a secret, the unescaped text is
        returned, redacted.
        """
        value = self._replace(value)
        if "%" in value and self._percent_encoded_in(value):
            # A URL may carry the key percent-encoded (``%73k-...``), one unquote away.
            unquoted = urllib.parse.unquote(value)
            if unquoted != value:
                cleaned = self._replace(unquoted)
                if cleaned != unquoted:
                    value = cleaned
        if "\\" in value and self._secrets:
            unescaped = _unescape_json(value)
            if unescaped != value:
                cleaned = self._replace(unescaped)
                if cleaned != unescaped:
                    return cleaned
        return value

    def data(self, value: Any, _depth: int = 0) -> Any:
        """Decoded JSON with every string in it (keys included) redacted."""
        if isinstance(value, str):
            return self.text(value)
        if _depth >= MAX_REDACTION_DEPTH:
            return REDACTED if isinstance(value, dict | list) else value
        if isinstance(value, dict):
            return {self.text(k): self.data(v, _depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [self.data(v, _depth + 1) for v in value]
        return value

    def decoded(self, source: str, value: Any) -> Any:
        """``value``, decoded from the JSON text ``source``, redacted as :meth:`data` does;
        ``value`` itself when ``source`` holds no secret and no escape (JSON's, or a URL's
        percent-encoding, which :meth:`text` also reads through), since then no string
        decoded from it can (every one is a piece of ``source`` as written): the walk over
        every string of every answer is spared."""
        if (
            "\\" in source
            or ("%" in source and self._percent_encoded_in(source))
            or any(secret.reveal() in source for secret in self._secrets)
        ):
            return self.data(value)
        return value

    def _percent_encoded_in(self, value: str) -> bool:
        """Whether ``value`` holds a secret with some of its characters percent-encoded."""
        return any(pattern.search(value) for pattern in self._encoded)

    def _replace(self, value: str) -> str:
        for secret in self._secrets:
            raw = secret.reveal()
            if raw in value:
                value = value.replace(raw, REDACTED)
        return value

    def __repr__(self) -> str:
        return f"Redactor(<{len(self._secrets)} secrets>)"


def redact_url(url: str) -> str:
    """``url`` without its query string and credentials, which carry presigned signatures.

    ``https://bucket.example/a.mp3?Signature=abc`` becomes ``https://bucket.example/a.mp3?<redacted>``.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    netloc = parts.netloc.rpartition("@")[2]  # drop any user:password@
    query = REDACTED if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _unescape_json(text: str) -> str:
    """``text`` with JSON escape sequences decoded (a lone surrogate escape is kept as is)."""

    def decode(match: re.Match[str]) -> str:
        high, low, single, short = match.groups()
        if high is not None:
            code = 0x10000 + ((int(high, 16) - 0xD800) << 10) + (int(low, 16) - 0xDC00)
            return chr(code)
        if single is not None:
            code = int(single, 16)
            # A lone surrogate cannot be written out as UTF-8: keep its escape.
            return match.group() if 0xD800 <= code <= 0xDFFF else chr(code)
        return _SHORT_ESCAPES[short]

    return _JSON_ESCAPE.sub(decode, text)


def _redact_query(url: str) -> str:
    """``url`` with every query value but the identifying ones replaced, and no userinfo."""
    try:
        parts = urlsplit(url)
        pairs = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return REDACTED
    netloc = parts.netloc.rpartition("@")[2]
    kept = [(k, v if k in VISIBLE_QUERY_PARAMETERS else REDACTED) for k, v in pairs]
    query = urlencode(kept, safe="<>:/") if kept else (REDACTED if parts.query else "")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment and REDACTED))


_URL_IN_TEXT = re.compile(r"https?://[^\s'\"<>]+")


def redact_urls_in(text: str) -> str:
    """``text`` with the query values (signatures) of every URL in it replaced."""
    return _URL_IN_TEXT.sub(lambda match: _redact_query(match.group()), text)


class _URLQueryFilter(logging.Filter):
    """Rewrites a log record so no URL in it shows its query values (presigned signatures),
    and no key of a live client shows either (httpx quotes a server's reason phrase)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken record is the logging module's to report
            return True
        cleaned = redact_urls_in(message)
        for redactor in list(_LIVE_REDACTORS):
            cleaned = redactor.text(cleaned)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


_FILTER_LOCK = threading.Lock()
# The redactors of the clients alive in this process (weakly: a closed and dropped client's
# key is forgotten with it).
_LIVE_REDACTORS: weakref.WeakSet[Redactor] = weakref.WeakSet()


#: The loggers that write what a server answered, each filtered itself (a logger's filters
#: do not apply to its children's records): httpx's request line at INFO, and httpcore's
#: status line and headers at DEBUG, where a server may echo a key.
HTTP_LOGGERS = (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)


def install_httpx_log_filter(redactor: Redactor | None = None) -> None:
    """Add (once) a filter to the ``httpx`` and ``httpcore`` loggers (``HTTP_LOGGERS``) that
    hides URL query values, and the secrets of ``redactor`` from then on.

    httpx logs ``HTTP Request: GET <url> "HTTP/1.1 401 <reason>"`` at INFO, which under
    ``logging.basicConfig(level=logging.INFO)`` would print a presigned URL's signature, or
    a key that a server echoed in its reason phrase.
    """
    with _FILTER_LOCK:
        if redactor is not None:
            _LIVE_REDACTORS.add(redactor)
        for name in HTTP_LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(f, _URLQueryFilter) for f in logger.filters):
                logger.addFilter(_URLQueryFilter())
