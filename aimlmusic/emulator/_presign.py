"""Presigned download URLs, in the style of an object store: ``?Expires=<unix>&Signature=...``.

The signature is an HMAC of the path and the expiry under a secret that never leaves the
emulator, so a URL cannot be altered or extended, and it dies at its expiry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from urllib.parse import quote

__all__ = ["UrlSigner"]


class UrlSigner:
    """Signs and checks download URLs."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret if secret is not None else secrets.token_bytes(32)

    def __repr__(self) -> str:
        return "UrlSigner(<secret>)"

    def signature(self, path: str, expires: int) -> str:
        """The signature of ``path`` valid until ``expires`` (unix seconds)."""
        digest = hmac.new(self._secret, f"{path}\n{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def url(self, base_url: str, path: str, expires: int) -> str:
        """The absolute presigned URL."""
        signature = quote(self.signature(path, expires), safe="")
        return f"{base_url}{path}?Expires={expires}&Signature={signature}"

    def verify(self, path: str, expires: int, signature: str) -> bool:
        """True if ``signature`` was made by :meth:`signature` for this path and expiry."""
        return hmac.compare_digest(self.signature(path, expires), signature)
