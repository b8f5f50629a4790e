"""Reading an API answer's body without letting the server decide how much memory it takes.

httpx decodes ``Content-Encoding`` by itself, a whole network chunk at a time and without a
limit, so a small gzip (or brotli) "bomb" can expand to gigabytes before anyone counts. Here
the raw bytes are read and decoded by hand, with the output of every step bounded: reading
stops as soon as the decoded body passes the cap, whatever the compression ratio.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import Protocol

import anyio
import httpx

__all__ = ["ACCEPTED_ENCODINGS", "BodyProblem", "decoded_chunks", "read_body"]

#: What we ask servers for: the encodings decoded here (and nothing httpx would add, such as br).
ACCEPTED_ENCODINGS = "gzip, deflate"
#: Raw bytes allowed beyond the cap (headers of a compressed stream, a trailer).
RAW_SLACK_BYTES = 64 * 1024
#: How many more steps a closed response's chain may take to end (data h11 already buffered).
ABANDON_STEPS = 4
#: The most one decoding step may produce: what a compressed "bomb" can cost at once.
PIECE_BYTES = 64 * 1024


class BodyProblem(Exception):
    """The body cannot be read: over the cap, or in an encoding that cannot be decoded.

    ``too_large`` tells the two apart.
    """

    def __init__(self, reason: str, *, too_large: bool = False) -> None:
        self.reason = reason
        self.too_large = too_large
        super().__init__(reason)


class _Decoder(Protocol):
    def decompress(self, data: bytes, max_length: int = ..., /) -> bytes: ...

    @property
    def unconsumed_tail(self) -> bytes: ...


class _Identity:
    """The no-op decoder, shaped like a zlib one."""

    def __init__(self) -> None:
        self.unconsumed_tail = b""

    def decompress(self, data: bytes, max_length: int = 0, /) -> bytes:
        if max_length <= 0 or len(data) <= max_length:
            self.unconsumed_tail = b""
            return data
        self.unconsumed_tail = data[max_length:]
        return data[:max_length]


class _Deflate:
    """``deflate``: zlib-wrapped as the RFC says, or raw deflate as some servers send it."""

    def __init__(self) -> None:
        self._decoder = zlib.decompressobj()
        self._started = False

    @property
    def unconsumed_tail(self) -> bytes:
        return self._decoder.unconsumed_tail

    def decompress(self, data: bytes, max_length: int = 0, /) -> bytes:
        if not self._started:
            self._started = True
            try:
                return self._decoder.decompress(data, max_length)
            except zlib.error:
                self._decoder = zlib.decompressobj(-zlib.MAX_WBITS)
        return self._decoder.decompress(data, max_length)


def _decoder_for(encoding: str) -> _Decoder:
    name = encoding.strip().lower()
    if name in ("", "identity"):
        return _Identity()
    if name in ("gzip", "x-gzip"):
        return zlib.decompressobj(zlib.MAX_WBITS | 16)
    if name == "deflate":
        return _Deflate()
    raise BodyProblem(f"the body uses a content encoding that was not asked for: {encoding!r}")


class SlowBody(Exception):
    """A body still arriving when the reader's deadline passed (see :func:`read_body`)."""


async def decoded_chunks(
    response: httpx.Response,
    limit: int,
    *,
    what: str = "the body",
    late: Callable[[], bool] | None = None,
) -> AsyncGenerator[bytes, None]:
    """The decoded body of ``response`` (opened with ``stream=True``), piece by piece.

    Raises :class:`BodyProblem` (``too_large`` set) as soon as more than ``limit`` decoded
    bytes arrive, or as many raw bytes beyond a small slack, and :class:`BodyProblem` when the
    body cannot be decoded. No piece is larger than :data:`PIECE_BYTES`, whatever the
    compression ratio. Transport errors while reading are httpx's, raised as they come.
    Use it inside ``contextlib.aclosing``.
    """
    encoding = response.headers.get("content-encoding", "")
    decoder = _decoder_for(encoding)
    try:
        # Some transports (httpx.MockTransport) hand over a response already read, and
        # decoded, in memory: only the cap is left to apply.
        source: AsyncIterator[bytes] = _Once(response.content)
        decoder = _Identity()
    except httpx.ResponseNotRead:
        source = response.aiter_raw()
    size = raw_size = 0
    exhausted = False
    try:
        async for raw in source:
            # As raw bytes arrive, not decoded pieces: bytes that decode to nothing (empty
            # compressed blocks) are a drip too.
            if late is not None and late():
                raise SlowBody
            raw_size += len(raw)
            data = raw
            while data:
                try:
                    piece = decoder.decompress(data, PIECE_BYTES)
                except zlib.error as exc:
                    reason = f"{what} could not be decoded as {encoding!r} ({exc})"
                    raise BodyProblem(reason) from None
                size += len(piece)
                if size > limit:
                    fits = len(piece) - (size - limit)
                    if fits > 0:
                        yield piece[:fits]  # what fits, for a reader that keeps a cut body
                    raise _too_large(what, limit)
                if piece:
                    yield piece
                tail = decoder.unconsumed_tail
                if not piece and tail == data:
                    break  # no progress: the rest is trailing data after the stream's end
                data = tail
            if raw_size > limit + RAW_SLACK_BYTES:
                # Bytes that decode to nothing (padding after a compressed stream's end)
                # still cost reading them.
                raise _too_large(what, limit)
        exhausted = True
    finally:
        if not exhausted and isinstance(source, AsyncGenerator):
            with anyio.CancelScope(shield=True):
                await _abandon(response, source)


async def read_body(
    response: httpx.Response,
    limit: int,
    *,
    truncate: bool = False,
    late: Callable[[], bool] | None = None,
) -> bytes:
    """The decoded body of ``response`` (opened with ``stream=True``), at most ``limit`` bytes.

    Over the limit: raises :class:`BodyProblem` with ``too_large`` set, or with ``truncate``
    returns the first ``limit`` bytes and stops reading. Raises :class:`SlowBody` when
    ``late()`` is true as bytes arrive (a server dripping a body a byte at a time, each
    within the read timeout, would otherwise hold the reader for ever), or with
    ``truncate`` returns what arrived until then.
    """
    parts: list[bytes] = []
    try:
        async with aclosing(decoded_chunks(response, limit, late=late)) as chunks:
            async for piece in chunks:
                parts.append(piece)
    except SlowBody:
        if not truncate:
            raise
    except BodyProblem as problem:
        if not (truncate and problem.too_large):
            raise
    return b"".join(parts)[:limit]


class _Once:
    """An async iterator over one chunk (not a generator: nothing to close if left early)."""

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    def __aiter__(self) -> _Once:
        return self

    async def __anext__(self) -> bytes:
        if self._data is None:
            raise StopAsyncIteration
        data, self._data = self._data, None
        return data


async def _abandon(response: httpx.Response, source: AsyncGenerator[bytes, None]) -> None:
    """Stop reading ``response`` part-way, leaving no async generator suspended.

    httpx's body iterator is a chain of async generators; closing the outer one leaves the
    inner ones suspended until the garbage collector finds them (trio then warns). So the
    connection is closed first and the chain stepped until the closed stream ends it from
    the inside.
    """
    await response.aclose()
    for _ in range(ABANDON_STEPS):
        try:
            await source.__anext__()
        except Exception:  # StopAsyncIteration, or the closed stream's error: the chain ended
            return
    await source.aclose()  # a stream that ignores being closed: the outer generator at least


def _too_large(what: str, limit: int) -> BodyProblem:
    return BodyProblem(f"{what} is larger than the cap of {limit:,} bytes", too_large=True)
