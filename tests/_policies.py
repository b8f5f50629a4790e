"""A poll policy for tests that records what the client or the batch tells it."""

from __future__ import annotations

from aimlmusic import PollState


class RecordingPolicy:
    """A poll policy that polls every second and records what it is told."""

    version = 0

    def __init__(self) -> None:
        self.states: list[PollState] = []
        self.running: list[tuple[str, float, float]] = []
        self.finished: list[tuple[str, float, float, float]] = []
        self.forgotten: list[str] = []

    def next_delay(self, state: PollState) -> float:
        self.states.append(state)
        return 1.0

    def chance_done(self, state: PollState) -> float:
        return 0.0

    def observe_running(self, song: str, reference_at: float, seen_at: float) -> None:
        self.running.append((song, reference_at, seen_at))

    def observe_finished(self, song: str, reference_at: float, after: float, by: float) -> None:
        self.finished.append((song, reference_at, after, by))

    def forget(self, song: str) -> None:
        self.forgotten.append(song)
