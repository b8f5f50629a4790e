"""Probes that run beside a workload: event-loop lag and resident memory."""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable

import anyio
from _machine import rss_bytes
from _stats import percentile

__all__ = ["LoopLagProbe", "RssSampler"]


class LoopLagProbe:
    """Measures how late the event loop wakes a task: sleep ``interval`` (real seconds)
    over and over and record the overshoot. A loop kept busy by thousands of songs shows it
    here as the delay any other task (a web handler, a progress bar) would suffer.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.recording = False
        self._samples = array("d")

    async def run(self) -> None:
        """Probe until cancelled; only samples taken while ``recording`` count."""
        while True:
            started = time.perf_counter()
            await anyio.sleep(self.interval)
            overshoot = time.perf_counter() - started - self.interval
            if self.recording:
                self._samples.append(max(0.0, overshoot))

    def summary(self) -> dict[str, float]:
        """Overshoot percentiles in milliseconds, and the sample count."""
        samples = list(self._samples)
        return {
            "loop_lag_p50_ms": 1000 * percentile(samples, 50),
            "loop_lag_p99_ms": 1000 * percentile(samples, 99),
            "loop_lag_max_ms": 1000 * max(samples, default=float("nan")),
            "loop_lag_samples": float(len(samples)),
        }


class RssSampler:
    """Samples resident memory and a caller-supplied in-flight count every ``interval``."""

    def __init__(self, in_flight: Callable[[], int], interval: float = 0.05) -> None:
        self._in_flight = in_flight
        self.interval = interval
        self.max_rss = 0
        self.max_in_flight = 0

    def sample(self) -> None:
        """Take one reading now."""
        self.max_rss = max(self.max_rss, rss_bytes())
        self.max_in_flight = max(self.max_in_flight, self._in_flight())

    async def run(self) -> None:
        """Sample until cancelled."""
        while True:
            self.sample()
            await anyio.sleep(self.interval)
