"""Keeping the API key and presigned-URL signatures out of reprs, logs and exceptions.

The key lives in a :class:`Secret`, whose ``repr`` and ``str`` never show it, so printing
an object's ``__dict__`` or a debugger's locals view cannot leak it either. Text that came
from outside (a server that echoes the key back in an error body, an exception message) is
passed through :meth:`Redactor.text` before it reaches a message, a log line or a model.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["REDACTED", "Redactor", "Secret", "redact_url"]

REDACTED = "<redacted>"


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

    __slots__ = ("_secrets",)

    def __init__(self, *secrets: Secret) -> None:
        # Kept wrapped, so expanding the redactor (a debugger, an error tracker) shows no key.
        # Longest first, so a secret that contains another is replaced whole.
        kept = [s for s in secrets if s.reveal()]
        self._secrets = tuple(sorted(kept, key=lambda s: len(s.reveal()), reverse=True))

    def text(self, value: str) -> str:
        """``value`` with every secret replaced by ``<redacted>``."""
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
