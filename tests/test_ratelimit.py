"""The request budget: windows, priorities, throttling and recovery."""

from __future__ import annotations

import math

import anyio
import pytest
from _http_fakes import RecordingClock
from _timing import max_in_window

from aimlmusic import ConfigurationError, Limits
from aimlmusic._ratelimit import RequestBudget
from aimlmusic.testing import VirtualClock

pytestmark = pytest.mark.anyio


async def test_never_more_than_the_limit_in_any_minute_or_ten_seconds() -> None:
    """130 requests at 120/min with burst_share=1/6 never exceed 120 per 60 s nor 20 per 10 s."""
    clock = VirtualClock()
    budget = RequestBudget(120, clock, burst_share=1 / 6)
    sent: list[float] = []

    async def one(kind: str) -> None:
        await budget.acquire("submit" if kind == "s" else "poll")
        sent.append(clock.now())

    async with clock, anyio.create_task_group() as tg:
        for i in range(130):
            tg.start_soon(one, "s" if i % 3 == 0 else "p")
    assert len(sent) == 130
    assert max_in_window(sent, 60.0) <= 120
    assert max_in_window(sent, 10.0) <= 20
    # The first twenty go out at once: a batch can submit its first songs immediately.
    assert sorted(sent)[19] - sorted(sent)[0] < 2.0


async def test_bursts_are_allowed_within_the_minute_by_default() -> None:
    """By default 120/min lets 120 requests out at once, then holds the 121st a minute."""
    clock = VirtualClock()
    budget = RequestBudget(120, clock)
    async with clock:
        for _ in range(120):
            await budget.acquire("poll")
        assert clock.now() == 0.0
        await budget.acquire("poll")
        assert clock.now() >= 60.0


async def test_submissions_are_served_before_waiting_polls() -> None:
    """When both wait, a submission goes before polls that queued earlier."""
    clock = VirtualClock()
    budget = RequestBudget(6, clock, burst_share=1 / 6)  # one request per 10 s window
    order: list[str] = []

    async def one(name: str, kind: str) -> None:
        await budget.acquire(kind)  # type: ignore[arg-type]
        order.append(name)

    async with clock, anyio.create_task_group() as tg:
        await budget.acquire("poll")
        for i in range(2):
            tg.start_soon(one, f"poll{i}", "poll")
        await clock.sleep(1.0)  # the polls queue first
        tg.start_soon(one, "submit", "submit")
    assert order[0] == "submit"
    assert sorted(order[1:]) == ["poll0", "poll1"]


async def test_retry_after_pauses_every_request_until_it_passes() -> None:
    """After a 429 with Retry-After 5 s no request is let through for 5 s."""
    clock = VirtualClock()
    budget = RequestBudget(1200, clock)
    async with clock:
        await budget.acquire("poll")
        throttled_at = clock.now()
        budget.on_throttled(5.0)
        await budget.acquire("submit")
    assert clock.now() - throttled_at >= 5.0
    assert budget.effective_rate == 600  # halved, so the queue does not burst out at once
    for _ in range(20):
        budget.on_success()
    assert budget.effective_rate == 1200


async def test_throttling_without_hint_halves_the_rate_once_per_episode() -> None:
    """429s without Retry-After halve the rate once per episode and successes restore it."""
    clock = VirtualClock()
    budget = RequestBudget(120, clock, seed=1)
    budget.on_throttled(None)
    budget.on_throttled(None)  # same episode: requests that were already in flight
    assert budget.effective_rate == 60
    assert budget.paused_until > clock.now()
    for _ in range(20):
        budget.on_success()
    assert budget.effective_rate == 120


async def burst_then_429(clock: VirtualClock, count: int, seed: int) -> tuple[RequestBudget, float]:
    """A 120/min budget on the running ``clock`` that sent ``count`` polls at once, then
    heard a 429 without a hint; with the moment of the 429."""
    budget = RequestBudget(120, clock, seed=seed)
    for _ in range(count):
        await budget.acquire("poll")
    throttled_at = clock.now()
    budget.on_throttled(None)
    return budget, throttled_at


async def test_a_429_after_a_burst_halves_the_bursts_and_paces_the_rest() -> None:
    """30 requests at once then a 429: bursts drop to ~15, and later requests are paced."""
    async with VirtualClock() as clock:
        budget, throttled_at = await burst_then_429(clock, 30, seed=2)
        assert 14.0 <= budget.burst <= 15.0
        paused_until = budget.paused_until
        sent: list[float] = []
        for _ in range(10):
            await budget.acquire("poll")
            sent.append(clock.now())
    # The bucket was emptied by the 429 and refills at the halved rate (60/min): ten
    # requests need ten seconds' worth of tokens, however long the pause was.
    assert sent[0] >= paused_until
    assert sent[-1] - throttled_at >= 9.0


async def wave_then_burst_then_429(clock: VirtualClock) -> RequestBudget:
    """A wave's 20 submissions over 10 s, 15 polls at once at 50 s, and a 429 to them."""
    budget = RequestBudget(120, clock, seed=3)
    for _ in range(20):
        await budget.acquire("submit")
        await clock.sleep(0.5)
    await clock.sleep(40.0)
    for _ in range(15):
        await budget.acquire("poll")
    budget.on_throttled(None)
    return budget


async def test_a_429_after_a_burst_is_answered_by_a_smaller_burst_not_a_hold() -> None:
    """A 429 to a burst of polls, as a bucket's server sends: the next request goes after
    the pause, not when the wave's submissions start leaving the minute (a bucket takes
    requests again at once, while the wave's songs finish), and once it gets through, the
    rate was never halved (the smaller burst answered the 429)."""
    async with VirtualClock() as clock:
        budget = await wave_then_burst_then_429(clock)
        assert budget.burst < 120
        assert budget.minute_limit == 120
        paused_until = budget.paused_until
        await budget.acquire("poll")
        # Held at 90 % of the 35 counted, it would wait for the fourth submission to
        # leave the minute: until 61.75 s, about 10 s after the pause.
        assert clock.now() - paused_until < 2.0
        budget.on_success()
        assert budget.paced_rate == 120


async def test_refused_again_after_that_pause_the_minute_is_held_after_all() -> None:
    """The first request after that pause refused too, as a server counting a minute does
    (a bucket would have refilled): the minute is held at 90 % of the 429's count until
    room appears, the rate is halved once (the burst's 429 put that off), and refusals of
    requests still on their way belong to that episode (not a storm that would undo the
    hold or halve the rate again)."""
    async with VirtualClock() as clock:
        budget = await wave_then_burst_then_429(clock)
        assert budget.paced_rate == 120  # a burst's 429: the smaller burst answers it
        await clock.sleep(budget.paused_until - clock.now())
        await budget.acquire("poll")
        budget.on_throttled(None)
        assert budget.minute_limit == pytest.approx(0.9 * 35)
        assert budget.paced_rate == 60  # the minute was at fault: the slow-down is due
        assert budget.effective_rate == budget.minute_limit  # the minute held caps it
        # Nothing goes until the fourth submission (sent at 1.5 s) leaves the minute.
        assert budget.paused_until >= 1.5 + 60.25
        budget.on_throttled(None)  # a second request's refusal, on its way meanwhile
        assert budget.minute_limit == pytest.approx(0.9 * 35)
        assert budget.paced_rate == 60
        await budget.acquire("poll")
        assert clock.now() >= 1.5 + 60.25


async def test_a_retry_after_on_that_refusal_is_honoured() -> None:
    """Refused again after that pause with a Retry-After of 30 s: the next request waits
    the 30 s the server asked for, and the rate is halved twice, once for the burst's 429
    (put off until now) and once for this one."""
    async with VirtualClock() as clock:
        budget = await wave_then_burst_then_429(clock)
        await clock.sleep(budget.paused_until - clock.now())
        await budget.acquire("poll")
        refused_at = clock.now()
        budget.on_throttled(30.0)
        assert budget.paced_rate == 30
        await budget.acquire("poll")
        assert clock.now() >= refused_at + 30.0


async def test_a_deferred_hold_does_not_outlive_its_pause() -> None:
    """No request after that pause (the batch ended), then a 429 five minutes later: it is
    an episode of its own, not the old 429's minute held at its old count."""
    async with VirtualClock() as clock:
        budget = await wave_then_burst_then_429(clock)
        await clock.sleep(300.0)
        await budget.acquire("poll")
        refused_at = clock.now()
        budget.on_throttled(None)
        assert budget.minute_limit == 120
        await budget.acquire("poll")
        assert clock.now() - refused_at < 10.0


async def test_a_halved_rate_does_not_stall_a_full_minute() -> None:
    """100 requests, then a 429: the next request waits seconds, not until the minute rolls."""
    async with VirtualClock() as clock:
        budget, throttled_at = await burst_then_429(clock, 100, seed=3)
        await budget.acquire("poll")
    assert clock.now() - throttled_at < 10.0


async def test_the_burst_allowance_grows_back_slowly_without_429s() -> None:
    """A burst cut to 3 by a 429 is back to about 5 two minutes later."""
    async with VirtualClock() as clock:
        budget, _ = await burst_then_429(clock, 6, seed=4)
        assert budget.burst == pytest.approx(3.0, abs=0.1)
        await clock.sleep(120.0)
    budget.delay()  # any look at the budget brings it up to date
    assert 4.9 <= budget.burst <= 5.5


async def test_a_429_without_a_burst_before_it_leaves_the_burst_alone() -> None:
    """A 429 after requests sent one at a time (a storm, say) halves the rate, not bursts."""
    clock = VirtualClock()
    budget = RequestBudget(120, clock, seed=5)
    async with clock:
        for _ in range(3):
            await budget.acquire("poll")
            await clock.sleep(5.0)
    budget.on_throttled(None)
    assert budget.burst == 120
    assert budget.effective_rate == 60


async def test_after_a_long_storm_successes_bring_the_rate_back_within_seconds() -> None:
    """Rate at its floor after five episodes: the next 20 requests, all accepted, take < 12 s."""
    clock = VirtualClock()
    budget = RequestBudget(120, clock, seed=6)
    async with clock:
        for _ in range(5):
            await clock.sleep(budget.paused_until - clock.now())
            budget.on_throttled(None)
        assert budget.effective_rate == 120 / 16
        await clock.sleep(budget.paused_until - clock.now())
        resumed = clock.now()
        for _ in range(20):
            await budget.acquire("poll")
            budget.on_success()
    # Without the slow start, tokens come at the rate the storm left (one per 8 s at first,
    # then a little faster with each success): about 35 s for these 20.
    assert clock.now() - resumed < 12.0


async def paced_then_429(
    budget: RequestBudget, clock: RecordingClock, count: int, *, retry_after: float | None = None
) -> None:
    """Send ``count`` requests a second apart, then hear a 429."""
    for _ in range(count):
        await budget.acquire("poll")
        budget.on_success()
        await clock.sleep(1.0)
    budget.on_throttled(retry_after)


async def after_the_pause(budget: RequestBudget, clock: RecordingClock) -> None:
    """Wait out the pause, then send one request that the server accepts."""
    await clock.sleep(max(0.0, budget.paused_until - clock.now()))
    await budget.acquire("poll")
    budget.on_success()


async def test_a_server_counting_fewer_a_minute_than_configured_is_learned() -> None:
    """Refused twice at the 60th request of a paced minute, each time passed right after
    the pause: the minute's limit comes down to 54 (and the budget's window with it)."""
    clock = RecordingClock()
    budget = RequestBudget(120, clock, seed=7)
    await paced_then_429(budget, clock, 60)
    assert budget.minute_limit == pytest.approx(54.0)  # held there until the pause tells
    await after_the_pause(budget, clock)
    assert budget.minute_limit == 120  # once could be a bucket refusing a burst
    await paced_then_429(budget, clock, 60)
    await after_the_pause(budget, clock)
    assert budget.minute_limit == pytest.approx(54.0, abs=2.0)  # and what it grew back
    # Sent as fast as the budget allows, the next minute holds the limit and what it grew
    # back meanwhile (a request every 10 s), not the ~100 the recovering rate would send.
    start = clock.now()
    sent = []
    while clock.now() < start + 60.0:
        await budget.acquire("poll")
        budget.on_success()
        sent.append(clock.now())
    assert len([t for t in sent if t < start + 60.0]) <= 55 + 6 + 1


async def test_the_rate_it_sustains_never_exceeds_the_minute_limit_learned() -> None:
    """Once the server's 60 a minute is learned and the halved rate has recovered, the rate
    the budget says it sustains (what polls are planned for) is the limit, not the 120
    configured."""
    clock = RecordingClock()
    budget = RequestBudget(120, clock, seed=7)
    for _ in range(2):
        await paced_then_429(budget, clock, 60)
        await after_the_pause(budget, clock)
    for _ in range(40):
        budget.on_success()
    assert budget.minute_limit < 60
    assert budget.effective_rate == budget.minute_limit


async def test_the_minute_limit_is_probed_ever_more_rarely_while_it_holds() -> None:
    """Learned, it grows back a request every 10 s; refused again near it, every 20 s."""
    clock = RecordingClock()
    budget = RequestBudget(120, clock, seed=8)
    for _ in range(2):
        await paced_then_429(budget, clock, 60)
        await after_the_pause(budget, clock)
    first = budget.minute_limit
    await clock.sleep(50.0)
    budget.delay()  # any look at the budget brings it up to date
    assert budget.minute_limit == pytest.approx(first + 5.0, abs=0.5)
    await paced_then_429(budget, clock, 58)
    await after_the_pause(budget, clock)
    second = budget.minute_limit
    assert second < first + 5.0
    await clock.sleep(50.0)
    budget.delay()
    assert budget.minute_limit == pytest.approx(second + 2.5, abs=0.5)


async def test_a_429_near_the_limit_learned_waits_for_the_minute_and_keeps_the_rate() -> None:
    """Learned at 60, refused at 60 again: the pause lasts until the minute makes room, the
    rate is not halved, and a refusal to a request already on its way does not undo it."""
    clock = RecordingClock()
    budget = RequestBudget(120, clock, seed=9)
    for _ in range(2):
        await paced_then_429(budget, clock, 60)
        await after_the_pause(budget, clock)
    await clock.sleep(120.0)  # the rate recovers, the limit grows back towards 120
    for _ in range(60):
        await budget.acquire("poll")
        budget.on_success()
        await clock.sleep(1.0)
    rate = budget.paced_rate
    budget.on_throttled(None)
    held = budget.minute_limit
    assert held == pytest.approx(0.9 * 60, abs=1.0)
    assert budget.paced_rate == rate  # not halved
    assert budget.effective_rate == held  # the minute held caps it
    assert budget.paused_until - clock.now() > 5.0  # the 7th oldest leaves the minute first
    await clock.sleep(3.0)  # a back-off's pause would have ended by now
    budget.on_throttled(None)  # a request sent before the first 429, refused late
    assert budget.minute_limit == pytest.approx(held, abs=0.5)
    assert budget.paced_rate == rate


async def test_a_storm_a_burst_or_a_retry_after_leave_the_minute_limit_alone() -> None:
    """Refused again right after each pause (a storm), refused at different counts (a
    bucket refusing bursts), or told when to come back (Retry-After), twice: none of these
    says how many a minute the server counts."""
    clock = RecordingClock()
    storm = RequestBudget(120, clock, seed=9)
    for _ in range(2):
        await paced_then_429(storm, clock, 60)
        await clock.sleep(storm.paused_until - clock.now())
        await storm.acquire("poll")
        storm.on_throttled(None)  # the first request after the pause: refused too
        await after_the_pause(storm, clock)
    assert storm.minute_limit == 120
    hinted = RequestBudget(120, clock, seed=10)
    for _ in range(2):
        await paced_then_429(hinted, clock, 60, retry_after=5.0)
        await after_the_pause(hinted, clock)
    assert hinted.minute_limit == 120
    bursty = RequestBudget(120, clock, seed=11)
    for count in (40, 70):  # a bucket refuses at whatever count the minute holds
        for _ in range(count):
            await bursty.acquire("poll")
        bursty.on_throttled(None)
        await after_the_pause(bursty, clock)
        await clock.sleep(60.0)
    assert bursty.minute_limit == 120
    assert bursty.burst < 120


async def test_a_cancelled_waiter_does_not_block_the_others() -> None:
    """Cancelling the request at the head of the queue lets the next one through."""
    clock = VirtualClock()
    budget = RequestBudget(6, clock, burst_share=1 / 6)
    got: list[str] = []

    async def cancel_after(scope: anyio.CancelScope, seconds: float) -> None:
        await clock.sleep(seconds)
        scope.cancel()

    async with clock:
        await budget.acquire("poll")
        with anyio.CancelScope() as head:
            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_after, head, 1.0)
                await budget.acquire("submit")
                got.append("cancelled one")
        await budget.acquire("poll")
        got.append("next")
    assert got == ["next"]
    assert budget.waiting == 0


async def test_rejects_a_non_positive_rate() -> None:
    """A budget of zero requests per minute is refused with the value in the message."""
    with pytest.raises(ValueError, match="requests_per_minute must be positive, got 0"):
        RequestBudget(0, VirtualClock())


async def test_a_rate_below_one_a_minute_sends_one_request_each_time_the_rate_allows() -> None:
    """At 0.5 requests/minute the budget sends at once, then one request every 120 s."""
    clock = VirtualClock()
    budget = RequestBudget(0.5, clock)
    sent: list[float] = []

    async def three() -> None:
        for _ in range(3):
            await budget.acquire("poll")
            sent.append(clock.now())

    async with clock:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(three)
                await clock.sleep(400.0)  # far past the third request's due time
                scope.cancel()
    assert sent == pytest.approx([0.0, 120.0, 240.0])


@pytest.mark.parametrize("rate", [math.inf, -math.inf, math.nan])
async def test_a_non_finite_rate_is_refused_naming_the_field(rate: float) -> None:
    """An infinite or NaN requests_per_minute is refused by Limits and by the budget alike."""
    with pytest.raises(ConfigurationError, match="requests_per_minute must be finite, got"):
        Limits(requests_per_minute=rate)
    with pytest.raises(ValueError, match="requests_per_minute must be finite, got"):
        RequestBudget(rate, VirtualClock())
