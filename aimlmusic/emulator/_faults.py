"""Deciding which faults hit a request: seeded probabilities, injected schedules, storms."""

from __future__ import annotations

import random
from typing import Literal

import attrs

from ._config import DRAWN_FAULT_KINDS, FAULT_KINDS, Faults, ThrottleStorm

__all__ = ["FaultPlanner", "Route"]

#: Where an injected fault may land: a kind of request, or the next request that can take it.
Route = Literal["submit", "poll", "download", "any"]

#: Which faults make sense on which kind of request.
APPLICABLE: dict[str, frozenset[str]] = {
    "submit": frozenset(FAULT_KINDS) - {"truncate_download"},
    "poll": frozenset(FAULT_KINDS) - {"truncate_download", "generation_failure", "waiting_status"},
    "download": frozenset({"error_before", "drop_before", "delay", "truncate_download"}),
}


@attrs.define
class _Injection:
    fault: str
    route: Route
    remaining: int


class FaultPlanner:
    """Draws the faults for each request and keeps the schedule of injected ones."""

    def __init__(
        self, faults: Faults, rng: random.Random, download_rng: random.Random | None = None
    ) -> None:
        self.faults = faults
        self._rng = rng
        # Downloads draw from their own generator, so that turning truncated downloads on
        # does not reshuffle the faults of API requests.
        self._download_rng = download_rng if download_rng is not None else random.Random(0)
        self._injections: list[_Injection] = []
        self._storms: list[ThrottleStorm] = list(faults.throttle_storms)

    def inject(self, fault: str, route: Route, count: int) -> None:
        """Force ``fault`` on the next ``count`` requests of ``route`` that can take it."""
        if fault not in FAULT_KINDS:
            raise ValueError(f"unknown fault {fault!r}; expected one of {', '.join(FAULT_KINDS)}")
        if route != "any" and fault not in APPLICABLE[route]:
            raise ValueError(f"fault {fault!r} cannot happen on a {route} request")
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count!r}")
        self._injections.append(_Injection(fault, route, count))

    def add_storm(self, storm: ThrottleStorm) -> None:
        """Schedule another throttling storm."""
        self._storms.append(storm)

    def storm_at(self, now: float) -> ThrottleStorm | None:
        """The storm raging at ``now``, if any."""
        for storm in self._storms:
            if storm.covers(now):
                return storm
        return None

    def draw(self, kind: str) -> frozenset[str]:
        """The faults that hit one request of ``kind`` (``submit``, ``poll`` or ``download``)."""
        applicable = APPLICABLE[kind]
        chosen: set[str] = set()
        if kind != "download":
            # Every draw consumes the same random numbers whatever the probabilities, so
            # turning one fault on does not reshuffle the others.
            for name in DRAWN_FAULT_KINDS:
                if self._rng.random() < getattr(self.faults, name) and name in applicable:
                    chosen.add(name)
        elif self._download_rng.random() < self.faults.truncate_download:
            chosen.add("truncate_download")
        if self._injections:
            for injection in list(self._injections):
                if injection.route in (kind, "any") and injection.fault in applicable:
                    chosen.add(injection.fault)
                    injection.remaining -= 1
                    if injection.remaining == 0:
                        self._injections.remove(injection)
        return frozenset(chosen)

    def server_error_status(self) -> int:
        """Which 5xx to answer."""
        return self._rng.choice(self.faults.server_error_statuses)
