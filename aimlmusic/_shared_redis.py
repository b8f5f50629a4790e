"""The connection to the Redis (or Valkey) that several clients of one API key share.

Every shared part (the request budget, the in-flight leases, the learned timing) talks to
Redis through one :class:`SharedStore`: it owns the connection pool, names the keys and turns
any Redis failure into a :class:`~aimlmusic.SharedStateError` that names the server by its URL
without the password.

On asyncio the store uses redis-py's asyncio client (``redis.asyncio``): a call is one
round trip awaited in the event loop. redis-py's asyncio client does not run on trio, so on
trio the store uses redis-py's blocking client from a worker thread
(``anyio.to_thread.run_sync``): one thread hop more per call, measured in
``docs/shared-budget.md``. A client on a :class:`~aimlmusic.testing.VirtualClock` calls the
blocking client inline instead, on either loop (a thread, or a socket awaited in the loop,
would count as blocked and let virtual time jump while Redis answers).

The keys of one account live under a namespace made from a hash of the API key, never the key
itself: ``aimlmusic:<first 16 hex digits of sha256(key)>:...``.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

import anyio
import anyio.to_thread

from ._errors import ConfigurationError, SharedStateError
from ._redact import REDACTED, Redactor, Secret, key_fingerprint

if TYPE_CHECKING:
    import redis
    from redis.asyncio import Redis as AsyncRedis
    from redis.commands.core import AsyncScript, Script

__all__ = [
    "DEFAULT_KEY_PREFIX",
    "LUA_NOW",
    "SharedScript",
    "SharedStore",
    "account_namespace",
    "redact_redis_url",
]

T = TypeVar("T")

#: The start of every key the library writes: one prefix to find (or delete) them all.
DEFAULT_KEY_PREFIX = "aimlmusic:"
#: Real seconds to connect to Redis, and to wait for one answer: a Redis that does not answer
#: this fast is reported as unreachable instead of holding every request (never a hang).
CONNECT_TIMEOUT = 2.0
ANSWER_TIMEOUT = 2.0
#: The start of every Lua script of the shared parts: ``now`` is ``ARGV[1]`` (a test's
#: virtual time) or, when that is empty, the Redis server's own clock, the one clock every
#: process on every host agrees on.
LUA_NOW = """
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[1])
end
"""
#: URL schemes redis-py understands.
REDIS_SCHEMES = ("redis", "rediss", "unix", "valkey", "valkeys")


def _client_options() -> dict[str, Any]:
    """What both redis-py clients are made with: the same timeouts and decoding."""
    return {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": ANSWER_TIMEOUT,
        "decode_responses": True,
    }


def account_namespace(api_key: str, key_prefix: str = DEFAULT_KEY_PREFIX) -> str:
    """The key namespace of the account behind ``api_key``: the prefix and a hash of the key."""
    return f"{key_prefix}{key_fingerprint(api_key)}"


def _split_credentials(url: str) -> tuple[str, str | None, str | None, str]:
    """``url`` as its scheme, user, password (None: none given) and what follows the
    credentials.

    The credentials end at the *last* ``@``: a password holding an unencoded ``/``, ``?``
    or ``#`` ends the authority early for a URL parser, which would put the rest of the
    password in the path, query or fragment (and show it)."""
    scheme, _, rest = url.partition("://")
    credentials, at, after = rest.rpartition("@")
    if not at:
        return scheme, None, None, rest
    user, colon, password = credentials.partition(":")
    return scheme, user, (unquote(password) if colon else None), after


def redact_redis_url(url: str) -> str:
    """``url`` with any password (and query string) replaced, for messages and reprs."""
    if "://" not in url:
        return REDACTED
    scheme, user, password, rest = _split_credentials(url)
    place, question, _ = rest.partition("#")[0].partition("?")
    query = f"?{REDACTED}" if question else ""
    if user is None:
        return f"{scheme}://{place}{query}"
    secret = f":{REDACTED}" if password is not None else ""
    return f"{scheme}://{user}{secret}@{place}{query}"


def _running_on_asyncio() -> bool:
    """Whether the running event loop is asyncio's (else trio's)."""
    try:
        import sniffio
    except ImportError:  # trio needs sniffio: without it, the loop can only be asyncio's
        return True
    return sniffio.current_async_library() == "asyncio"


class SharedScript:
    """A Lua script of :meth:`SharedStore.script`, registered with each client the store
    has (``EVALSHA``, loaded when missing); run it with :meth:`SharedStore.run_script`."""

    def __init__(self, lua: str, blocking: Script) -> None:
        self.lua = lua
        self._blocking = blocking
        self._async: AsyncScript | None = None

    def call(self, client: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run on ``client``: the blocking client's answer, or the asyncio client's
        awaitable."""
        import redis.asyncio

        if isinstance(client, redis.asyncio.Redis):
            if self._async is None:
                self._async = client.register_script(self.lua)
            return self._async(keys=keys, args=args, client=client)
        return self._blocking(keys=keys, args=args, client=client)


class SharedStore:
    """One Redis connection pool and the key namespace of one account.

    ``url`` is a ``redis://``, ``rediss://`` or ``unix://`` URL; ``api_key`` chooses the
    namespace (hashed, see :func:`account_namespace`); ``key_prefix`` replaces
    ``"aimlmusic:"`` (tests give each test its own). Calls go through the asyncio client on
    asyncio and through the blocking client in a worker thread on trio; with
    ``offload=False`` they run on the blocking client inline in the event loop's thread
    (for virtual-time tests). Each client has its own connection pool; nothing connects
    until the first call.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        key_prefix: str | None = None,
        offload: bool = True,
    ) -> None:
        url = url.strip()
        self.redacted_url = redact_redis_url(url)
        scheme = urlsplit(url).scheme.lower() if "://" in url else ""
        if scheme not in REDIS_SCHEMES:
            raise ConfigurationError(
                f"shared_url {self.redacted_url!r} must be a Redis URL "
                f"({', '.join(s + '://' for s in REDIS_SCHEMES[:3])}...); pass shared_url='' "
                "to turn sharing off"
            )
        try:
            import redis
        except ImportError:
            raise ConfigurationError(
                "shared_url needs redis-py: pip install 'aimlmusic[redis]'"
            ) from None
        password = _split_credentials(url)[2]
        self._redactor = Redactor(Secret(password)) if password else None
        if scheme.startswith("valkey"):
            url = "redis" + url[len("valkey") :]  # redis-py speaks to Valkey as to Redis
        self.namespace = account_namespace(
            api_key, DEFAULT_KEY_PREFIX if key_prefix is None else key_prefix
        )
        self.offload = offload
        self._url = url
        try:
            self._redis: redis.Redis = redis.Redis.from_url(url, **_client_options())
        except (ValueError, TypeError):
            # redis-py's own text may quote the URL, password and all: not shown.
            raise ConfigurationError(
                f"shared_url {self.redacted_url!r} is not a valid Redis URL (percent-encode "
                "any '/', '?', '#' or '@' in the user name or password)"
            ) from None
        # Made at the first call on asyncio, and remade on a new loop (see _async_client).
        self._async_redis: AsyncRedis | None = None
        self._async_loop: Callable[[], asyncio.AbstractEventLoop | None] = lambda: None

    @property
    def redis(self) -> redis.Redis:
        """The blocking redis-py client (used on trio and inline; tests read through it)."""
        return self._redis

    def key(self, name: str) -> str:
        """The full Redis key of ``name`` in this account's namespace."""
        return f"{self.namespace}:{name}"

    def script(self, lua: str) -> SharedScript:
        """A Lua script, run atomically on the server by :meth:`run_script`."""
        return SharedScript(lua, self._redis.register_script(lua))

    async def run(self, call: Callable[[Any], Any]) -> Any:
        """``call(client)`` with the client this loop uses (see the class): redis-py calls
        on it, returning their answer or (asyncio client) an awaitable of it, awaited here.
        A Redis failure becomes a :class:`SharedStateError` naming the URL without its
        password."""
        try:
            if not self.offload:
                return call(self._redis)
            if _running_on_asyncio():
                return await call(self._async_client())
            return await anyio.to_thread.run_sync(call, self._redis)
        except Exception as exc:
            raise self._failure(exc) from None

    async def run_script(
        self, script: SharedScript, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        """``script`` on ``keys`` and ``args``, as :meth:`run` runs a call."""
        return await self.run(lambda client: script.call(client, keys, args))

    def run_inline(self, call: Callable[[Any], T]) -> T:
        """``call(client)`` with the blocking client in this thread, with the same error
        mapping as :meth:`run`."""
        try:
            return call(self._redis)
        except Exception as exc:
            raise self._failure(exc) from None

    def _async_client(self) -> AsyncRedis:
        # Made in the running loop: its connections belong to that loop, so a store used
        # again on a new loop (asyncio.run once per job) makes a new one; the old loop is
        # closed, and its connections with it (the server drops them).
        if self._async_redis is None or not self._made_in_running_loop():
            from redis.asyncio import Redis as AsyncRedis

            self._async_redis = AsyncRedis.from_url(self._url, **_client_options())
            self._async_loop = weakref.ref(asyncio.get_running_loop())
        return self._async_redis

    def _made_in_running_loop(self) -> bool:
        """Whether the asyncio client exists for the loop running now (never on trio)."""
        if not _running_on_asyncio():
            return False
        return self._async_loop() is asyncio.get_running_loop()

    def _failure(self, exc: Exception) -> Exception:
        import redis

        if not isinstance(exc, redis.RedisError):
            return exc
        detail = f"{type(exc).__name__}: {exc}"
        if self._redactor is not None:
            detail = self._redactor.text(detail)
        return SharedStateError(
            f"the shared Redis at {self.redacted_url} failed ({detail}); nothing is sent "
            "around it (unshared, the account's limits could be exceeded)",
            url=self.redacted_url,
            transient=_may_pass(exc),
        )

    def close(self) -> None:
        """Close the blocking client's connection pool (the asyncio client's needs
        :meth:`aclose`)."""
        self._redis.close()

    async def aclose(self) -> None:
        """Close both clients' connection pools. Safe to call twice."""
        try:
            self.close()
        finally:
            client, self._async_redis = self._async_redis, None
            # Its connections belong to the loop it was made in: closed from that loop only
            # (from another, they are dropped and the server closes them).
            if client is not None and self._made_in_running_loop():
                with anyio.CancelScope(shield=True):  # closing sends nothing: it is quick
                    await client.aclose()

    def __repr__(self) -> str:
        return f"SharedStore({self.redacted_url!r}, namespace={self.namespace!r})"


def _may_pass(exc: Exception) -> bool:
    """Whether a Redis failure may pass if the request is made again later: the connection
    (but not a refused password or permission, which redis-py counts as connection errors
    too) or a state Redis leaves (a replica made read-only by a failover, loading, busy
    with a script, out of memory, a cluster re-sharding)."""
    from redis import exceptions as failed

    if isinstance(exc, failed.AuthenticationError | failed.AuthorizationError):
        return False
    if isinstance(
        exc,
        failed.ConnectionError
        | failed.TimeoutError
        | failed.ReadOnlyError
        | failed.TryAgainError
        | failed.ClusterDownError
        | failed.OutOfMemoryError,
    ):
        return True
    return isinstance(exc, failed.ResponseError) and str(exc).startswith(("BUSY", "LOADING"))
