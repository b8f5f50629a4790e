"""Learned timing kept in the journal: a catalog run starts where the last one left off.

A client learns how long songs take as it polls (:class:`~aimlmusic.LearnedPolling`); a new
process starts from the documented 50-60 s and spends its first wave of songs learning the
service again. The journal outlives the process, so a run saves the estimate in it (when
the estimate changed, at most every ``SAVE_EVERY`` seconds and when the run ends) and the
next run against the same journal, or another worker of a shared one, adopts it before its
first song. An adopted estimate is worth the songs behind it and fades as the run's own
songs arrive (see :meth:`~aimlmusic.LearnedPolling.adopt_estimate`), so a service that
changed in between is followed within about a wave.

The saved value is JSON: when it was saved (Unix time) and the exported estimate. One older
than ``ESTIMATE_LIFETIME`` (or more than ``CLOCK_SKEW`` in the future), unreadable, or of
another format is ignored, never misread; a policy that does not learn (``FixedInterval``,
a user's own) is left alone. A journal that fails to read or save it costs the head start,
never the run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from .._estimator import finite_number
from .._shared_timing import (
    ESTIMATE_LIFETIME,
    MAX_ESTIMATE_BYTES,
    MIN_SONGS_TO_PUBLISH,
    SharesEstimate,
)
from ._journal import JournalError
from ._journal_api import CatalogJournal

__all__ = ["CLOCK_SKEW", "SAVE_EVERY", "JournalTiming"]

logger = logging.getLogger("aimlmusic")

#: Real seconds between two saves while the estimate changes: a few small writes a minute
#: at most, and a process killed mid-run loses at most this much learning.
SAVE_EVERY = 30.0
#: A saved estimate up to this many seconds in the future is accepted: workers of a shared
#: journal run on hosts whose clocks may disagree (by far less, under NTP).
CLOCK_SKEW = 300.0


class JournalTiming:
    """Adopts the journal's saved estimate into ``policy`` and saves the policy's back;
    ``wall`` is the clock of the save times (Unix seconds)."""

    def __init__(
        self,
        journal: CatalogJournal,
        policy: object,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.journal = journal
        self.policy = policy if isinstance(policy, SharesEstimate) else None
        self._wall = wall
        self._monotonic = monotonic
        self._saved_version: int | None = None
        self._saved_at = -math.inf

    def adopt(self) -> bool:
        """Start the policy from the saved estimate, if there is a fresh, readable one and
        the policy has seen no song of its own yet; True if it was adopted."""
        if self.policy is None or float(self.policy.snapshot.songs) > 0:
            return False
        try:
            raw = self.journal.timing_estimate()
        except JournalError as exc:  # timing is a help: the run goes on from the prior
            logger.warning("could not read the journal's timing estimate: %s", exc)
            return False
        if raw is None or len(raw) > MAX_ESTIMATE_BYTES:
            return False
        saved = _parsed(raw)
        if saved is None:
            logger.debug("the journal's timing estimate is unreadable: ignored")
            return False
        saved_at, estimate = saved
        age = self._wall() - saved_at
        if age < -CLOCK_SKEW:
            logger.debug("the journal's timing estimate is from the future: ignored")
            return False
        if age > ESTIMATE_LIFETIME:
            logger.debug("the journal's timing estimate is stale: ignored")
            return False
        if not self.policy.adopt_estimate(estimate):
            logger.debug("the journal's timing estimate has an unknown format: ignored")
            return False
        self._saved_version = self.policy.version  # adopted, not news to save
        logger.info("started from the timing estimate saved in the journal")
        return True

    def save(self, *, force: bool = False) -> bool:
        """Save the policy's estimate if it changed since the last save, rests on enough
        songs of this run, and ``SAVE_EVERY`` has passed (``force``: whatever the time);
        True if saved."""
        if self.policy is None or self.policy.version == self._saved_version:
            return False
        if float(self.policy.snapshot.songs) < MIN_SONGS_TO_PUBLISH:
            return False  # the prior, or next to it: not worth keeping over a saved estimate
        now = self._monotonic()
        if not force and now - self._saved_at < SAVE_EVERY:
            return False
        version = self.policy.version
        data = {"saved_at": round(self._wall(), 3), "estimate": self.policy.export_estimate()}
        self._saved_at = now  # a failed save is not retried at once either
        try:
            self.journal.save_timing_estimate(json.dumps(data, separators=(",", ":")))
        except JournalError as exc:
            logger.warning("could not save the timing estimate in the journal: %s", exc)
            return False
        self._saved_version = version
        return True


def _parsed(raw: str) -> tuple[float, dict[str, Any]] | None:
    """``(saved_at, estimate)`` from a saved value, or None if it is not one."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        return None
    if not isinstance(data, dict):
        return None
    saved_at, estimate = finite_number(data.get("saved_at")), data.get("estimate")
    if saved_at is None or not isinstance(estimate, dict):
        return None
    return saved_at, estimate
