"""Shared test set-up: every async test runs on asyncio and on trio."""

from __future__ import annotations

import pytest
from _servers import journal_url, postgres_url, redis_prefix, redis_url

__all__ = ["journal_url", "postgres_url", "redis_prefix", "redis_url"]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test once per backend."""
    return str(request.param)
