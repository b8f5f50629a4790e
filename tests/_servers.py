"""Real Redis and PostgreSQL servers for the tests of the shared budget and journal (and a
Redis outage, and a client sharing one, for those of the shared budget).

Each test gets its own namespace on the one server: a Redis key prefix (every key it made is
deleted afterwards) and a PostgreSQL schema (dropped afterwards). The servers are found at
``AIMLMUSIC_TEST_REDIS_URL`` and ``AIMLMUSIC_TEST_POSTGRES_URL`` (default: the standard ports
on 127.0.0.1; ``.ci/servers.sh`` starts its own where nothing answers there). Where a server
does not answer, its tests skip with one line naming what is missing and how to provide it;
under CI (``CI`` set) they fail instead, so a missing server is never a silent pass.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urlsplit, urlunsplit

import pytest

if TYPE_CHECKING:
    import aimlmusic
    from aimlmusic.emulator import Emulator
    from aimlmusic.testing import VirtualClock

__all__ = [
    "journal_url",
    "postgres_url",
    "redis_down",
    "redis_prefix",
    "redis_url",
    "shared_client",
    "with_search_path",
]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
#: Seconds to wait for a server to answer before calling it missing.
CONNECT_TIMEOUT = 3.0


def _missing(what: str, url: str, error: BaseException, variable: str) -> None:
    message = (
        f"{what} is not reachable at {url} ({type(error).__name__}: {error}); "
        f"start one or point {variable} at one (.ci/servers.sh starts both)"
    )
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The URL of the test Redis (a test keeps to its own keys: see ``redis_prefix``)."""
    redis = pytest.importorskip("redis", reason="redis-py is not installed (extra: redis)")
    url = os.environ.get("AIMLMUSIC_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    client = redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT)
    try:
        client.ping()
    except Exception as error:  # any connection problem: the server is missing
        client.close()
        _missing("Redis", url, error, "AIMLMUSIC_TEST_REDIS_URL")
    yield url
    client.close()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own on the test Redis; its keys are deleted afterwards."""
    import redis

    prefix = f"aimlmusic-test:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL URL whose ``search_path`` is a schema of this test's own (dropped
    afterwards)."""
    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (extra: postgres)")
    url = os.environ.get("AIMLMUSIC_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    try:
        admin = psycopg.connect(url, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT))
    except Exception as error:  # any connection problem: the server is missing
        _missing("PostgreSQL", url, error, "AIMLMUSIC_TEST_POSTGRES_URL")
    schema = f"aimlmusic_test_{uuid.uuid4().hex}"
    with admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield with_search_path(url, schema)
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def with_search_path(url: str, schema: str) -> str:
    """``url`` with ``schema`` as the connection's ``search_path`` (libpq ``options``)."""
    parts = urlsplit(url)
    option = urlencode({"options": f"-csearch_path={schema}"})
    query = f"{parts.query}&{option}" if parts.query else option
    return urlunsplit(parts._replace(query=query))


@pytest.fixture(params=["sqlite", "postgres"])
def journal_url(request: pytest.FixtureRequest) -> str | None:
    """Run a test with the SQLite journal (``None``) and with the PostgreSQL one."""
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("postgres_url"))


@contextlib.contextmanager
def redis_down(client: aimlmusic.AsyncMusicClient) -> Iterator[None]:
    """The client's Redis unreachable for the block: its store's connection points at a
    closed port (each call fails at once with a connection refused)."""
    store = client._shared
    assert store is not None
    reachable = store._redis
    import redis  # only the tests of the shared budget need it installed
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # No retries: redis-py's own back-off would sleep for real on every refused call.
    store._redis = redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    try:
        yield
    finally:
        store._redis = reachable


def shared_client(
    emulator: Emulator, clock: VirtualClock, redis_url: str, max_in_flight: int
) -> aimlmusic.AsyncMusicClient:
    """A client of the in-process ``emulator``, on ``clock``, sharing its account's budget
    and in-flight cap (``max_in_flight``) through the Redis at ``redis_url``."""
    import httpx

    import aimlmusic
    from aimlmusic.emulator import TEST_API_KEY

    return aimlmusic.AsyncMusicClient(
        TEST_API_KEY,
        base_url="http://127.0.0.1",
        transport=httpx.ASGITransport(app=emulator.app),
        clock=clock,
        limits=aimlmusic.Limits(max_in_flight=max_in_flight),
        shared_url=redis_url,
    )
