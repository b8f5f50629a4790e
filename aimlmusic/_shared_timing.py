"""Learned timing shared through Redis: a new replica polls as well as an old one.

A client that learns how long songs take (:class:`~aimlmusic.LearnedPolling`) publishes its
estimate to the account's namespace, at most every ``PUBLISH_EVERY`` API seconds and only
when it changed; a client starting on the same Redis reads it once, before its first song,
and starts from it instead of the documented 50-60 s (its own songs then take over, as they
do from the documented prior).

The estimate is one small JSON value (a few kilobytes: the format version, the grid, the
mass of each bin and the songs' worth behind it). An estimate this version cannot read (an
other format, grid or shape) is ignored, never misread. Sharing timing is a help, not a
need: a failure to read or publish is logged and the client goes on with what it knows.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import anyio

from ._clock import Clock
from ._errors import SharedStateError
from ._shared_redis import SharedStore

__all__ = ["PUBLISH_EVERY", "SharedTiming", "SharesEstimate"]

logger = logging.getLogger("aimlmusic")

#: API seconds between two publications: the estimator's own refit pace, so every refit
#: that matters reaches Redis, and Redis sees one small write per process per 20 s at most.
PUBLISH_EVERY = 20.0
#: A client publishes only once it has seen more songs than the documented prior is worth
#: (3): a cold replica must not overwrite a warm one's estimate with the prior.
MIN_SONGS_TO_PUBLISH = 3.0
#: Real seconds a published estimate is kept without a newer one: a day, after which the
#: service may well have changed.
ESTIMATE_LIFETIME = 86_400
#: The biggest estimate read (bytes): anything larger is not ours.
MAX_ESTIMATE_BYTES = 64_000


@runtime_checkable
class SharesEstimate(Protocol):
    """A poll policy whose learned timing can be exported and adopted
    (:class:`~aimlmusic.LearnedPolling`)."""

    @property
    def version(self) -> int:
        """Changes when the estimate changes."""
        ...

    @property
    def snapshot(self) -> Any:
        """The current estimate; ``snapshot.songs`` is the own songs' worth behind it."""
        ...

    def export_estimate(self) -> dict[str, Any]:
        """The estimate as JSON-able data."""
        ...

    def adopt_estimate(self, estimate: Mapping[str, Any]) -> bool:
        """Start from ``estimate``; False if it cannot be read."""
        ...


class SharedTiming:
    """Reads the account's shared estimate into ``policy`` once, and publishes the policy's
    estimate when it changed (rate-limited)."""

    def __init__(self, store: SharedStore, policy: SharesEstimate, clock: Clock) -> None:
        self.store = store
        self.policy = policy
        self._clock = clock
        self._key = store.key("timing")
        self._loaded: anyio.Event | None = None  # set once the first read is done
        self._published_version: int | None = None
        self._published_at = -math.inf

    async def load(self) -> bool:
        """Adopt the shared estimate, the first time only; True if one was adopted."""
        if self._loaded is not None:
            await self._loaded.wait()  # the first caller's read; others start from it too
            return False
        self._loaded = anyio.Event()
        try:
            return await self._adopt_shared()
        finally:
            self._loaded.set()

    async def _adopt_shared(self) -> bool:
        try:
            raw = await self.store.run(lambda client: client.get(self._key))
        except SharedStateError as exc:
            logger.warning("could not read the shared timing estimate: %s", exc)
            return False
        if not isinstance(raw, str) or len(raw) > MAX_ESTIMATE_BYTES:
            return False
        try:
            estimate = json.loads(raw)
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
            logger.debug("the shared timing estimate is not JSON: ignored")
            return False
        if not isinstance(estimate, dict) or not self.policy.adopt_estimate(estimate):
            logger.debug("the shared timing estimate has an unknown format: ignored")
            return False
        # What was just adopted is not news to publish.
        self._published_version = self.policy.version
        logger.info("started from the shared timing estimate at %s", self.store.redacted_url)
        return True

    async def publish(self, *, force: bool = False) -> bool:
        """Publish the estimate if it changed since the last publication, this client has
        seen enough songs, and ``PUBLISH_EVERY`` has passed (``force``: whatever the
        time); True if published."""
        now = self._clock.now()
        if self.policy.version == self._published_version:
            return False
        if float(self.policy.snapshot.songs) < MIN_SONGS_TO_PUBLISH:
            return False
        if not force and now - self._published_at < PUBLISH_EVERY:
            return False
        version = self.policy.version
        data = json.dumps(self.policy.export_estimate(), separators=(",", ":"))
        try:
            await self.store.run(lambda client: client.set(self._key, data, ex=ESTIMATE_LIFETIME))
        except SharedStateError as exc:
            logger.warning("could not publish the timing estimate: %s", exc)
            return False
        self._published_version, self._published_at = version, now
        return True

    async def publish_periodically(self) -> None:
        """Publish every ``PUBLISH_EVERY`` API seconds while the estimate changes, until
        cancelled."""
        while True:
            await self._clock.sleep(PUBLISH_EVERY)
            await self.publish()

    def __repr__(self) -> str:
        return f"SharedTiming(store={self.store!r}, published={self._published_version})"
