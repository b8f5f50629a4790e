"""The emulator's building blocks without HTTP: state machine, durations, window, config."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from aimlmusic.emulator import (
    EmulatorConfig,
    Faults,
    Fixed,
    LogNormal,
    Mixture,
    ThrottleStorm,
    Uniform,
)
from aimlmusic.emulator._audio import AudioSpec
from aimlmusic.emulator._durations import draw
from aimlmusic.emulator._faults import FaultPlanner
from aimlmusic.emulator._ratelimit import SlidingWindow
from aimlmusic.emulator._state import Account, Job

SPEC = AudioSpec("mp3", 44100, 128000)


def _job(
    number: int,
    submitted_at: float,
    duration: float,
    *,
    queue_delay: float = 0.0,
    fails: bool = False,
) -> Job:
    return Job(
        id=f"job-{number}",
        owner="owner",
        prompt="a prompt of some length",
        body_hash=f"hash-{number}",
        spec=SPEC,
        file_id=f"file-{number}",
        trace_id="0" * 32,
        submitted_at=submitted_at,
        queue_delay=queue_delay,
        duration=duration,
        fails=fails,
        shows_waiting=False,
    )


def test_a_job_generates_then_completes_at_its_exact_time() -> None:
    """A job with a free slot starts at submission and completes exactly ``duration`` later."""
    account = Account(None, 20)
    job = _job(1, 10.0, 55.0)
    account.advance(10.0)
    account.submit(job)
    assert (job.status, job.started_at) == ("generating", 10.0)
    account.advance(64.9)
    assert job.status == "generating"
    account.advance(1000.0)  # a late request still records the true completion time
    assert (job.status, job.completed_at) == ("completed", 65.0)


def test_jobs_beyond_the_concurrency_limit_wait_in_fifo_order() -> None:
    """Only ``max_concurrent`` jobs generate; a freed slot goes to the oldest queued job at
    the moment it frees, even when nobody asks until much later."""
    account = Account(None, 2)
    jobs = [_job(n, 0.0, duration) for n, duration in enumerate((10.0, 20.0, 5.0, 5.0))]
    for job in jobs:
        account.submit(job)
    assert [job.status for job in jobs] == ["generating", "generating", "queued", "queued"]
    assert account.counts == {"queued": 2, "generating": 2, "completed": 0, "error": 0}
    account.advance(100.0)
    assert [job.started_at for job in jobs] == [0.0, 0.0, 10.0, 15.0]
    assert [job.completed_at for job in jobs] == [10.0, 20.0, 15.0, 20.0]
    assert account.counts == {"queued": 0, "generating": 0, "completed": 4, "error": 0}


def test_a_failing_job_ends_in_error() -> None:
    """A job drawn to fail finishes with status ``error`` at its completion time."""
    account = Account(None, None)
    job = _job(1, 0.0, 3.0, fails=True)
    account.submit(job)
    account.advance(3.0)
    assert (job.status, job.completed_at, account.counts["error"]) == ("error", 3.0, 1)


def test_queue_delay_keeps_a_job_queued_even_with_free_slots() -> None:
    """A queue delay holds the job in ``queued`` before it may start."""
    account = Account(None, 20)
    job = _job(1, 0.0, 50.0, queue_delay=4.0)
    account.submit(job)
    account.advance(3.9)
    assert job.status == "queued"
    account.advance(4.0)
    assert (job.status, job.started_at) == ("generating", 4.0)
    assert account.next_event_at() == 54.0


def test_ten_thousand_jobs_are_replayed_quickly() -> None:
    """10 000 jobs through 20 slots replay in well under a second (heap, not scans)."""
    rng = random.Random(1)
    account = Account(None, 20)
    jobs = [_job(n, n * 0.01, rng.uniform(50, 60)) for n in range(10_000)]
    for job in jobs:
        account.advance(job.submitted_at)
        account.submit(job)
    account.advance(1e9)
    assert account.counts["completed"] == 10_000
    starts = [job.started_at for job in jobs]
    assert starts == sorted(starts)  # FIFO


def test_the_sliding_window_admits_the_limit_per_window() -> None:
    """The window admits ``limit`` requests, refuses the next with the wait until a slot frees,
    and admits again once the oldest request leaves the window."""
    window = SlidingWindow(3, 60.0)
    assert [window.admit(t) for t in (0.0, 1.0, 2.0)] == [None, None, None]
    assert window.admit(30.0) == pytest.approx(30.0)
    assert window.admit(60.0) is None  # the request at 0.0 has left the window
    assert window.admit(60.5) == pytest.approx(0.5)


def test_distributions_draw_within_their_bounds() -> None:
    """Uniform, log-normal (clipped), fixed, mixtures and plain callables all draw sensibly."""
    rng = random.Random(0)
    assert all(50 <= draw(Uniform(), rng) <= 60 for _ in range(200))
    assert all(40 <= draw(LogNormal(55, 0.5, low=40, high=90), rng) <= 90 for _ in range(200))
    assert draw(Fixed(7.5), rng) == 7.5
    mixture = Mixture(((1.0, Fixed(1.0)), (0.0, Fixed(2.0))))
    assert {draw(mixture, rng) for _ in range(50)} == {1.0}
    assert draw(lambda r: -5.0, rng) == 0.0  # negative durations are clamped


def test_same_seed_same_draws() -> None:
    """Durations depend only on the seed and the sequence of draws."""
    first = [draw(Uniform(), random.Random("7:timing")) for _ in range(3)]
    second = [draw(Uniform(), random.Random("7:timing")) for _ in range(3)]
    assert first == second


@pytest.mark.parametrize(
    "build",
    [
        lambda: Faults(error_before=1.5),
        lambda: Faults(server_error_statuses=(404,)),
        lambda: EmulatorConfig(time_scale=0),
        lambda: EmulatorConfig(retry_after="soon"),
        lambda: ThrottleStorm(10.0, 5.0),
        lambda: Uniform(60.0, 50.0),
        lambda: Mixture(()),
    ],
)
def test_bad_configuration_is_refused(build: Callable[[], object]) -> None:
    """Out-of-range probabilities, statuses, scales and windows raise at construction."""
    with pytest.raises(ValueError):  # each message names its own field
        build()


def test_config_repr_hides_keys() -> None:
    """The configuration's repr shows how many keys there are, never the keys."""
    config = EmulatorConfig(api_keys={"sk-secret-1", "sk-secret-2"}, no_credit_keys="sk-broke")
    assert "sk-" not in repr(config)
    assert "<2 keys>" in repr(config)


def test_injected_faults_hit_the_next_matching_requests_only() -> None:
    """An injection lands on the next ``count`` requests of its route that can take it."""
    planner = FaultPlanner(Faults(), random.Random(0))
    planner.inject("generation_failure", "any", 1)
    planner.inject("error_after", "poll", 2)
    assert planner.draw("poll") == {"error_after"}  # a poll cannot take generation_failure
    assert planner.draw("submit") == {"generation_failure"}
    assert planner.draw("poll") == {"error_after"}
    assert planner.draw("poll") == frozenset()
    with pytest.raises(ValueError, match="cannot happen"):
        planner.inject("truncate_download", "poll", 1)
    with pytest.raises(ValueError, match="unknown fault"):
        planner.inject("gremlins", "any", 1)


def test_fault_probabilities_are_honoured_and_seeded() -> None:
    """A probability of 1 always hits, 0 never does, and the same seed gives the same draws."""
    always = FaultPlanner(Faults(error_after=1.0), random.Random(0))
    assert all(always.draw("submit") == {"error_after"} for _ in range(20))
    half = Faults(delay=0.5)
    planners = (FaultPlanner(half, random.Random(3)), FaultPlanner(half, random.Random(3)))
    runs = [[planner.draw("poll") for _ in range(50)] for planner in planners]
    assert runs[0] == runs[1]
    assert 10 < sum(1 for faults in runs[0] if faults) < 40
