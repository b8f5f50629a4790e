"""The network transport a client builds when it needs one as an object (to wrap it).

Left alone, the client's HTTP layer makes its own connections: pooled for polls and
downloads, and a fresh one for every submission (a pooled connection the server has just
closed could make a submission ambiguous). Wrapping the network (to follow an emulator's
time, to trace requests) needs it as one transport; this is that transport, with the same
two pools.
"""

from __future__ import annotations

import httpx

from ._transport import _FRESH_CONNECTIONS

__all__ = ["OwnNetwork"]


class OwnNetwork(httpx.AsyncBaseTransport):
    """Pooled connections, except POSTs: each on a fresh connection."""

    def __init__(self) -> None:
        self._pooled = httpx.AsyncHTTPTransport()
        self._fresh = httpx.AsyncHTTPTransport(limits=_FRESH_CONNECTIONS)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` on the pool its method belongs to."""
        pool = self._fresh if request.method == "POST" else self._pooled
        return await pool.handle_async_request(request)

    async def aclose(self) -> None:
        """Close both pools."""
        await self._pooled.aclose()
        await self._fresh.aclose()
