"""The batch scheduler behind ``AsyncMusicClient.generate_many``.

One batch is a handful of tasks in one task group, whatever the number of songs:

- the **feeder** takes a free slot (at most ``max_in_flight`` songs submitted and not yet
  delivered), only then pulls the next request from the source (so a million-row catalog is
  read as it goes), and starts a short-lived task that submits it;
- the **dispatcher** owns one timer heap of ``(next_poll_at, song)`` (one entry a song,
  rebuilt when polls are planned again); it sleeps until the earliest entry is due (woken
  early when an earlier one is pushed) and hands due songs to
- a small pool of **poll workers**, which call ``transport.get`` and ask the poll policy when
  to look again (back into the heap) or finish the song;
- the **deliverer** passes finished songs' results, in the order they finished, into the
  stream the caller reads, and frees their slots once the caller has room for them.

The transport paces every request through the client's request budget; the scheduler
decides *when* a song is polled, and how polls meet the budget:

- due polls wait in the scheduler, not in the budget's queue, while the budget is busy (or a
  submission waits for it); when it has room, the due song likeliest to be finished goes
  first (``policy.chance_done(state)``; the longest waiting on ties);
- submissions go out no faster than the budget's sustained rate, so a batch's first songs do
  not all finish, and get polled, in one burst every minute;
- polls already planned are planned again when the policy's ``version`` changes (it learned
  something that may move them);
- every poll is planned early by the median of how late recent polls went out after they
  were due (a busy event loop, a busy budget), so that the server sees the policy's spacing
  rather than the policy's plus that lateness; with time compressed, a millisecond of
  real delay is a noticeable share of a song's duration.

A song's failure becomes its result and never touches the others; a poll that fails for a
transient reason (connection, 5xx, 429 after the transport's own retries) is retried later,
until the song's deadline; a 404 or an unreadable answer is given three tries.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import statistics
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeAlias

import anyio
import attrs
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from . import _pacing
from ._clock import Clock
from ._config import RetryPolicy
from ._errors import (
    AimlMusicError,
    AmbiguousSubmissionError,
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    ClientClosedError,
    ConfigurationError,
    GenerationFailedError,
    GenerationTimeoutError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestValidationError,
    ResponseValidationError,
    SendingRefused,
    ServerError,
    SharedStateError,
)
from ._events import (
    BatchEvents,
    RequestKind,
    RequestRetried,
    RequestSending,
    RequestThrottled,
    SongCompleted,
    SongFailed,
    SongStatusChanged,
    SongSubmitted,
    emit,
)
from ._landing import Landing, TaskWatch, tell_left_behind
from ._models import Generation, GenerationStatus, SongRequest, SongResult, SongTimings
from ._pacing import SubmissionPace
from ._polling import PlansWithinBudget, PollPolicy, PollState, is_waiting
from ._ratelimit import Budget
from ._retry import backoff_delay
from ._shared_leases import give_back
from ._transport import SUBMISSION_WATCH, TRY_AGAIN_STATUSES

__all__ = ["InFlightLeases", "SongSource", "follow", "generate_many", "phases"]

logger = logging.getLogger("aimlmusic")

SongItem: TypeAlias = SongRequest | tuple[str, SongRequest]
#: What ``generate_many`` accepts: requests alone (keyed by position) or ``(key, request)``.
SongSource: TypeAlias = Iterable[SongItem] | AsyncIterable[SongItem]

#: Poll workers per batch: polls run concurrently up to this many (the request budget, not
#: this, is what normally limits them).
MAX_POLL_WORKERS = 32
#: Results buffered for a slow reader before finished songs wait (holding their slots).
MAX_RESULT_BUFFER = 32
#: Consecutive 404s / unreadable responses after which a song is given up. A job can take
#: a moment to become visible after it is created, and a body can be garbled once.
MAX_CONSECUTIVE_SUSPECT_POLLS = 3
#: One song's polls failing this many times in a row for a transient reason, each after the
#: transport's own retries, is an outage worth a WARNING; once is a blip, logged at DEBUG.
OUTAGE_POLLS = 2
#: When the budget is busy, due polls wait here and the likeliest to find its song done goes
#: first; this many of the longest-waiting are compared each time (bounded work).
URGENCY_CANDIDATES = 64
#: Recent polls whose lateness (sent after due) is kept, and how often its median is taken.
LATENESS_SAMPLES = 64
LATENESS_REFRESH = 8
#: How soon to look again when submissions are queued at the budget, or when the next song
#: waits for due polls to go (API seconds).
GATE_RECHECK = 0.05
#: Real seconds a source's ``aclose()`` may take when the batch ends.
SOURCE_CLOSE_TIMEOUT = 1.0
#: How long past a song's deadline its poll may still run (API seconds): one normal round
#: trip, so the last look taken at the deadline can come back; a slower answer is cut.
DEADLINE_POLL_GRACE = 2.0
#: ``_Song.timer`` of a song with no live entry in the timer heap (sequence numbers are
#: never negative)...
NO_TIMER = -1
#: ... and of one waiting in the batch's ``_due`` for the budget or a worker.
IN_DUE = -2


class SchedulerTransport(Protocol):
    """What the scheduler needs from the transport (``aimlmusic._transport.Transport``)."""

    async def submit(
        self, request: SongRequest, *, observer: Any = None, retry_throttled: bool = True
    ) -> Generation:
        """POST one song (never resent when it may have arrived); with
        ``retry_throttled=False``, a 429 is raised at once (the scheduler retries it)."""
        ...

    async def get(
        self, generation_id: str, *, observer: Any = None, retry_throttled: bool = True
    ) -> Generation:
        """GET one generation (retried on transient failures; 429s as for ``submit``)."""
        ...


class InFlightLeases(Protocol):
    """Slots of an in-flight cap shared with other processes (``SharedLeases``): a batch
    takes one before each submission and gives it back when the song ends."""

    async def acquire(self) -> str:
        """Wait for a free slot; return the lease's id."""
        ...

    async def release(self, lease: str) -> None:
        """Give the slot of ``lease`` back."""
        ...

    async def keep_alive(self) -> None:
        """Renew the leases held, until cancelled."""
        ...

    def abandon(self, leases: Iterable[str]) -> None:
        """Stop renewing ``leases`` without giving them back: they expire by themselves."""
        ...


class _Song:
    """Everything the scheduler keeps about one song in flight (fixed size, no history)."""

    __slots__ = (
        "deadline_at",
        "due_at",
        "generating",
        "generation",
        "id",
        "key",
        "learns",
        "lease",
        "phase",
        "poll_scope",
        "polls",
        "queued_at",
        "request",
        "requests",
        "retries",
        "started_at",
        "submitted_at",
        "suspect_polls",
        "timer",
        "transient_failures",
        "unfinished_from",
        "unfinished_to",
        "watched",
    )

    def __init__(self, key: str, request: SongRequest) -> None:
        self.key = key
        self.request = request
        self.generating = False  # submitted and not yet seen finished
        self.lease: str | None = None  # its slot of a shared in-flight cap, if any
        self.generation: Generation | None = None
        self.id: str | None = None  # the generation id, once known
        self.submitted_at: float | None = None
        self.deadline_at = math.inf
        self.due_at = math.inf  # when its next poll is planned
        self.started_at: float | None = None  # first seen generating (for SongTimings)
        self.learns = True  # whether its reference time is known, so polls may teach
        self.phase = 0.0  # spreads its polls among others' (PollState.phase); set on start
        self.queued_at: float | None = None
        self.poll_scope: anyio.CancelScope | None = None  # the poll in flight, if any
        self.watched = False  # whether the watchdog knows its deadline
        # Sending and arrival time of the last poll that saw the song unfinished.
        self.unfinished_from: float | None = None
        self.unfinished_to: float | None = None
        self.polls = 0
        self.requests = 0  # attempts that left, submissions and polls (what it cost)
        self.retries = 0
        self.transient_failures = 0
        self.suspect_polls = 0
        # Sequence number of this song's live entry in the timer heap (others are stale);
        # NO_TIMER when it has none, IN_DUE when it waits in the batch's ``_due`` instead.
        self.timer = NO_TIMER

    @property
    def generation_id(self) -> str:
        assert self.id is not None
        return self.id


class _Observer:
    """Per-request observer handed to the transport: counts retries, reports events, and
    notes when the latest attempt left (``sent_at``): what the answer says, it said then,
    however long the budget or retries held the request before."""

    __slots__ = ("batch", "kind", "sent_at", "song")

    def __init__(self, batch: _Batch, song: _Song, kind: RequestKind) -> None:
        self.batch = batch
        self.song = song
        self.kind = kind
        self.sent_at: float | None = None

    def on_retry(self, attempt: int, error: AimlMusicError, delay: float) -> None:
        self.song.retries += 1
        self.batch.emit_retried(self.song, self.kind, attempt, error, delay)

    def on_throttled(self, retry_after: float | None) -> None:
        self.song.retries += 1
        at = self.batch.clock.now()
        emit(
            self.batch.events,
            "on_throttled",
            RequestThrottled(self.song.key, self.kind, retry_after, at),
        )

    def on_sending(self) -> None:
        song = self.song
        at = self.batch.clock.now()
        # First, for the hook may refuse the request (SendingRefused): then it never left.
        if self.kind == "submit" and (self.batch.landing.leaving or self.batch.refusal is not None):
            # Counted on its way while it waited for a pooled connection, and about to send
            # its first byte only now: the batch is being left, or the API refused the key
            # meanwhile, so it stays home.
            raise SendingRefused("the batch is being left or was refused")
        emit(self.batch.events, "on_sending", RequestSending(self.song.key, self.kind, at))
        song.requests += 1
        if self.kind == "poll" and self.sent_at is None:
            self.batch.note_lateness(song, at)  # its first attempt: how late the poll left
        self.sent_at = at


def phases() -> Iterator[float]:
    """Songs' phases (:attr:`PollState.phase`), in turn: the base-2 van der Corput sequence
    (0, 1/2, 1/4, 3/4, ...), which spreads evenly over [0, 1) however many songs draw from
    it. A client keeps one for all its batches and waits, so its first song explores."""
    return map(_van_der_corput, itertools.count())


def _van_der_corput(index: int) -> float:
    """The ``index``-th point of the base-2 van der Corput sequence (0, 1/2, 1/4, 3/4, ...):
    phases that spread evenly over [0, 1) however many songs there are."""
    point, denominator = 0.0, 1.0
    while index:
        denominator *= 2
        index, bit = divmod(index, 2)
        point += bit / denominator
    return point


def _sharing_id(generation: Generation, generation_id: str) -> Generation:
    """``generation`` holding the song's own id string when it is the same id: each answer
    decodes its own copy, and a second copy per song is about 60 bytes of the under 1 KB a
    song in flight costs."""
    if generation.id == generation_id and generation.id is not generation_id:
        return attrs.evolve(generation, id=generation_id)
    return generation


def _is_transient(error: AimlMusicError) -> bool:
    """A poll failure worth retrying until the deadline (the service may come back). A
    shared Redis whose failure may pass held the poll back unsent: retrying cannot exceed
    the limit (one that refused for good would refuse the same again)."""
    if isinstance(error, ServerError | APIConnectionError):
        return True
    if isinstance(error, SharedStateError):
        return error.transient
    return isinstance(error, APIStatusError) and error.status_code in TRY_AGAIN_STATUSES


class _Batch:
    """The state and tasks of one ``generate_many`` call."""

    def __init__(
        self,
        transport: SchedulerTransport,
        requests: SongSource,
        *,
        clock: Clock,
        max_in_flight: int,
        deadline: float | None,
        poll: PollPolicy,
        events: BatchEvents | None,
        budget: Budget | None,
        retry: RetryPolicy,
        phases: Iterator[float],
        leases: InFlightLeases | None = None,
    ) -> None:
        self.transport = transport
        self.leases = leases
        self._leases_held: set[str] = set()  # this batch's, given back when it ends
        self.requests = requests
        self.clock = clock
        self.max_in_flight = max_in_flight
        self.deadline = deadline
        self.poll = poll
        self.events = events
        self.budget = budget
        self.retry = retry
        self.phases = phases
        self.source_error: Exception | None = None
        # Leaving the batch early lets its POSTs on their way land first (see _landing).
        self.landing = Landing()
        # A submission answered 401 or 403: the key or the account is refused, and every
        # other submission would be too.
        self._refusal: AuthenticationError | PermissionDeniedError | None = None
        self._slots = anyio.Semaphore(max_in_flight)
        self._heap: list[tuple[float, int, _Song]] = []
        # Songs due for a poll while the budget is busy, oldest first.
        self._due: deque[_Song] = deque()
        # Polls handed to a worker that has not yet asked the budget.
        self._launching = 0
        # Polls handed to a worker so far: a song held for the polls waiting when its slot
        # came free counts them off here.
        self._polls_dispatched = 0
        self._next_submit_at = -math.inf
        # Songs wait for earlier polls, and waves spread, for a policy that plans within the
        # budget (see PlansWithinBudget).
        self._plans_within_budget = isinstance(poll, PlansWithinBudget)
        self._submission_pace = SubmissionPace(
            max_in_flight,
            _pacing.WAVE_SHARE if self._plans_within_budget else _pacing.UNPLANNED_WAVE_SHARE,
        )
        self._sequence = itertools.count()
        # (deadline + grace, sequence, song) for songs whose polls the watchdog may cut.
        self._deadlines: list[tuple[float, int, _Song]] = []
        # Due songs past their deadline whose watch found the budget with room: watched
        # again if the budget holds them after all.
        self._unwatched_due: list[_Song] = []
        self._watchdog_scope: anyio.CancelScope | None = None
        self._watchdog_until = math.inf
        self._nap_scope: anyio.CancelScope | None = None
        self._nap_until = math.inf
        self._ready: deque[tuple[_Song, SongResult]] = deque()
        self._delivering: tuple[_Song, SongResult] | None = None
        self._ready_event = anyio.Event()
        # Songs started and not yet delivered, by key (keys are unique among them).
        self._in_flight: dict[str, _Song] = {}
        # Songs submitted before and followed here (``adopt``), until they end.
        self._followed: set[_Song] = set()
        self._active = 0
        self._generating = 0  # songs submitted and not yet seen finished
        self._source_done = False
        # When the feed began waiting for the source's next song (None: not waiting), and
        # whether the last one came later than the budget's pace would have taken it: a
        # source that slow (a queue fed slowly, say) leaves slots empty.
        self._source_asked_at: float | None = None
        self._source_lagged = False
        self._finished = anyio.Event()
        self._task_group: TaskGroup | None = None
        self._version = poll.version
        # How late polls went out after they were due (event loop, workers, budget): the
        # median of recent ones is taken off every planned delay, so that the spacing the
        # server sees is the policy's, not the policy's plus this.
        self._lateness: deque[float] = deque(maxlen=LATENESS_SAMPLES)
        self._typical_lateness = 0.0
        #: Polls failed for a transient reason since one was last answered, and since when
        #: an outage (a song's ``OUTAGE_POLLS`` failures in a row: the API's 5xx, a Redis
        #: out of reach) was reported (None: none is): it is logged once as it begins and
        #: once as it ends, however many songs it holds.
        self._failed_polls = 0
        self._outage_since: float | None = None

    # ------------------------------------------------------------------ running

    async def run(self, results: MemoryObjectSendStream[SongResult]) -> None:
        """Run the batch until every song is delivered (or the batch is cancelled)."""
        due_send, due_receive = anyio.create_memory_object_stream[_Song](0)
        workers = min(self.max_in_flight, MAX_POLL_WORKERS)
        try:
            with results, due_send, due_receive:
                async with anyio.create_task_group() as task_group:
                    self._task_group = task_group
                    task_group.start_soon(self._feed)
                    task_group.start_soon(self._dispatch, due_send)
                    task_group.start_soon(self._watchdog)
                    for _ in range(workers):
                        task_group.start_soon(self._poll_worker, due_receive)
                    task_group.start_soon(self._deliver, results)
                    if self.leases is not None:
                        task_group.start_soon(self.leases.keep_alive)
                    await self._finished.wait()
                    task_group.cancel_scope.cancel()
        finally:
            if self._leases_held:
                # Cancelled with songs in flight: their slots go back now rather than when
                # the leases expire (the generations may run on: a lease is our count only).
                await self._give_back_all()
            # Songs left running when the batch was cancelled are no evidence any more.
            for song in (*self._in_flight.values(), *self._followed):
                if song.generating and song.learns and song.generation is not None:
                    self._teach("forget", song.generation_id)

    async def _take_lease(self) -> str | None:
        if self.leases is None:
            return None
        lease = await self.leases.acquire()
        self._leases_held.add(lease)
        return lease

    async def _give_back(self, lease: str) -> None:
        if lease in self._leases_held:
            self._leases_held.discard(lease)
            assert self.leases is not None
            await give_back(self.leases, lease)

    async def _give_back_all(self) -> None:
        assert self.leases is not None
        held, self._leases_held = list(self._leases_held), set()
        with anyio.CancelScope(shield=True):
            for index, lease in enumerate(held):
                try:
                    await self.leases.release(lease)
                except AimlMusicError as exc:
                    # Redis failing: rather than wait on it for each slot (the cancellation
                    # waits too), the rest are no longer renewed, so they expire.
                    logger.warning("could not give shared in-flight slots back: %s", exc)
                    self.leases.abandon(held[index + 1 :])
                    return

    def _spawn(self, song: _Song) -> None:
        assert self._task_group is not None
        self._task_group.start_soon(self._submit, song)

    def _stop(self) -> None:
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()

    @property
    def refusal(self) -> AuthenticationError | PermissionDeniedError | None:
        """The 401 or 403 a submission of the batch was answered with, if any."""
        return self._refusal

    def _refused(self, error: AuthenticationError | PermissionDeniedError) -> None:
        """A submission was answered 401 (the key is wrong) or 403 (the account may not:
        no credits left): every other would be too. The batch takes no new song, those not
        yet sent fail with the same error unsent, those in flight finish, and the error is
        raised when the block exits (as a failing source's is), rather than a source of a
        million songs spending days of the budget on refusals."""
        if self._refusal is None:
            self._refusal = error
            # A song already waiting to send (the budget, a back-off) stays home too.
            self.landing.refuse_new("the API refused the key")
            if self.source_error is None:
                self.source_error = error

    def _client_closed(self, error: ClientClosedError) -> None:
        """The client was closed under the batch (from its loop, say): nothing more can be
        sent, so the batch stops, and the error is raised when its block exits, once, not as
        every song's failure (the songs not yet submitted were never sent, none is
        ambiguous). The songs left running are named as the block exits."""
        if self.source_error is None:
            self.source_error = error
        # Left as a caller leaves it: the POSTs on their way (sent with an HTTP client of the
        # caller's own, which closing ours leaves open) land first.
        self._leave_soon()

    def _leave_soon(self) -> None:
        """Leave the batch as a caller leaves it, from within: no new song or POST, those
        on their way land, then everything stops. Once (leaving is decided here, at once)."""
        if self.landing.leaving or self._task_group is None:
            return  # being left already: whoever began it stops the batch
        self.landing.start_leaving()
        self._task_group.start_soon(self._leave_and_stop)

    async def _leave_and_stop(self) -> None:
        await self.landing.leave()
        self._stop()

    # ------------------------------------------------------------------ feeding

    async def _feed(self) -> None:
        source = self.requests
        iterator: Iterator[SongItem] | AsyncIterator[SongItem] = (
            aiter(source) if isinstance(source, AsyncIterable) else iter(source)
        )
        try:
            for index in itertools.count():
                await self._slots.acquire()
                # Pace before taking the song: a source that journals "about to submit" as it
                # hands a song over (the catalog runner does) then does so as late as possible.
                await self._pace()
                if self.landing.leaving or self._refusal is not None:
                    # The caller left, or the API refused the key: no new song is taken.
                    self._slots.release()
                    return
                # The account's slot (shared with other processes) before the song is taken.
                try:
                    lease = await self._take_lease()
                except AimlMusicError as exc:
                    # The shared Redis failed: no new song, those in flight finish, and the
                    # error is raised when the block exits (as a failing source's is).
                    self._slots.release()
                    self.source_error = exc
                    return
                try:
                    self._source_asked_at = asked = self.clock.now()
                    try:
                        item = await _next_item(iterator)
                    finally:
                        self._source_asked_at = None
                    self._source_lagged = self.clock.now() - asked > self._submission_gap()
                    if item is _END:
                        self._slots.release()
                        if lease is not None:
                            await self._give_back(lease)
                        return
                    key, request = _unpack(item, index)
                except Exception as exc:
                    # A source that raises, or an item that is not a song: stop taking new
                    # songs, let those in flight finish, raise it when the block exits.
                    self._slots.release()
                    if lease is not None:
                        await self._give_back(lease)
                    self.source_error = exc
                    return
                self._start(key, request, lease)
        finally:
            self._source_done = True
            self._maybe_finished()
            try:
                await _close_source(iterator)
            except Exception as exc:
                # A source whose close raises (its finally fails, a generator two batches
                # share is still running) is the source's error, raised when the block
                # exits; it must not end the songs in flight. A first error is kept.
                if self.source_error is None:
                    self.source_error = exc
                else:
                    logger.warning("closing the song source failed too: %s", type(exc).__name__)

    async def _pace(self) -> None:
        """Submit no faster than the budget's sustained rate, nor faster than it can serve
        songs.

        Songs submitted in one burst finish, and are polled, in one burst a minute later,
        and again the minute after: spreading the first ``max_in_flight`` submissions over a
        few seconds keeps their polls from crowding the budget for the rest of the batch.
        Against a server that takes only small bursts, the songs' own pace
        (:class:`~aimlmusic._pacing.SubmissionPace`) spreads later waves too.

        For a policy that plans its polls within the budget, the next song also lets as many
        polls go first as were waiting for the budget when it became ready: first come,
        first served, so its wait is bounded by the polls then due, at most one a song in
        flight (docs/polling.md, "The request budget", says why, and what it changes).
        """
        budget = self.budget
        if budget is None:
            return
        now = self.clock.now()
        waits_for_polls = self._plans_within_budget and _pacing.SONGS_WAIT_FOR_EARLIER_POLLS
        owed, dispatched = len(self._due), self._polls_dispatched
        if self._next_submit_at > now:
            await self.clock.sleep(self._next_submit_at - now)
            now = self.clock.now()
        while True:
            # While the client is paused by a 429, no song is taken from the source at all.
            wait = max(budget.paused_until - now, self._submission_pace.delay(budget, now))
            if wait <= 0 and waits_for_polls and self._owes_polls(owed, dispatched):
                wait = GATE_RECHECK  # the dispatcher sends them as the budget makes room
            if wait <= 0:
                break
            await self.clock.sleep(wait)
            now = self.clock.now()
        self._submission_pace.take(budget, now)
        self._next_submit_at = now + self._submission_gap()

    def _submission_gap(self) -> float:
        """The least time between two submissions at the budget's sustained rate (0: no
        budget)."""
        if self.budget is None:
            return 0.0
        return 60.0 / max(1.0, self.budget.effective_rate)

    def _owes_polls(self, owed: int, dispatched: int) -> bool:
        """Whether a song that became ready while ``owed`` polls waited, when
        ``dispatched`` had been dispatched, should let more go first: fewer than ``owed``
        have gone since, and due polls still wait for the budget. Counted, not matched by
        due time: the dispatcher sends the likeliest to find a finished song, not the
        oldest, so the polls that go are not always the ones that were waiting."""
        return (
            self._polls_dispatched - dispatched < owed
            and bool(self._due)
            and self._budget_wait() > 0
        )

    def _start(self, key: str, request: SongRequest, lease: str | None = None) -> None:
        song = _Song(key, request)
        song.lease = lease
        song.phase = next(self.phases)
        self._active += 1
        if key in self._in_flight:
            error = RequestValidationError(
                "key", "must be unique among the songs of a batch", f"{key!r} again"
            )
            self._finish(song, error=error)
            return
        self._in_flight[key] = song
        self._spawn(song)

    def adopt(
        self,
        generation_id: str,
        last: Generation | None,
        *,
        submitted_at: float | None,
        deadline: float | None,
    ) -> None:
        """Follow a generation submitted before (by this client at ``submitted_at``, or
        elsewhere: ``None``) to its end, as a song of this batch; call before :meth:`run`.

        Only a song whose submission time is known teaches the poll policy. Without
        ``last`` it is polled at once; a finished ``last`` is its result without a request.
        """
        self._slots.acquire_nowait()
        self._active += 1
        song = _Song(generation_id, _FOLLOWED)
        song.id = generation_id
        song.generation = last
        song.phase = next(self.phases)
        now = self.clock.now()
        song.learns = submitted_at is not None
        song.submitted_at = submitted_at if submitted_at is not None else now
        if deadline is not None:
            song.deadline_at = now + deadline
        self._generating += 1
        song.generating = True
        self._followed.add(song)
        if last is not None and last.is_finished:
            self._conclude(song, last, now, now)
        elif last is None:
            self._schedule(song, now)
        else:
            self._schedule_next(song, now)

    # ------------------------------------------------------------------ submitting

    async def _submit(self, song: _Song) -> None:
        # This task's own context: its POSTs are counted for the batch, and still told to the
        # watch of the task running the batch.
        watch = self.landing.watch(SUBMISSION_WATCH.get())
        SUBMISSION_WATCH.set(watch)
        try:
            await self._submit_watched(song, watch)
        except anyio.get_cancelled_exc_class():
            if watch.cut:
                # Cancelled from outside the batch (a timeout around it, a second Ctrl-C)
                # while its POST was on its way: what the POST did is unknown.
                logger.warning(
                    "the submission of song %r was cut on its way by a cancellation: it may "
                    "have created a generation, paid for, whose id is lost; look for it before "
                    "submitting it again",
                    song.key,
                )
            raise

    async def _submit_watched(self, song: _Song, watch: TaskWatch) -> None:
        observer = _Observer(self, song, "submit")
        give_up_at = math.inf if self.deadline is None else self.clock.now() + self.deadline
        failures = 0
        while True:
            if self._refusal is not None:  # refused while this song waited to try again
                self._finish(song, error=self._refusal)
                return
            try:
                generation = await self.transport.submit(
                    song.request, observer=observer, retry_throttled=False
                )
                break
            except RateLimitError as exc:
                # Refused, so not received: sent again once the budget's pause, which the
                # transport just started for every request, is over (acquire waits for it).
                if self.clock.now() >= give_up_at:
                    self._finish(song, error=exc)
                    return
                watch.cut = False  # answered: nothing was created, whatever comes next
            except APIConnectionError as exc:
                # The transport raises this for a POST only when it surely did not arrive
                # (after its own retries): resending later cannot pay twice.
                delay = backoff_delay(failures, self.retry)
                failures += 1
                if self.clock.now() + delay > give_up_at:
                    self._finish(song, error=exc)
                    return
                song.retries += 1
                self.emit_retried(song, "submit", failures, exc, delay)
                watch.cut = False  # it surely never arrived
                await self.clock.sleep(delay)
            except (AuthenticationError, PermissionDeniedError) as exc:
                self._finish(song, error=exc)
                self._refused(exc)
                return
            except SendingRefused as exc:  # nothing was sent
                if self.landing.leaving:
                    return  # the caller left the batch: no result (none is read), no hook
                self._finish(song, error=self._refusal or exc)
                return
            except AimlMusicError as exc:
                self._finish(song, error=exc)
                return
            except ClientClosedError as exc:  # nothing was sent
                self._client_closed(exc)
                return
            except Exception as exc:  # one song's failure, whatever it is
                self._finish(song, error=_unforeseen_submission(song, exc))
                return
        now = self.clock.now()
        song.generation = generation
        song.id = generation.id
        song.submitted_at = now
        self._generating += 1
        song.generating = True
        if self.deadline is not None:
            song.deadline_at = now + self.deadline
        emit(self.events, "on_submitted", SongSubmitted(song.key, song.request, generation, now))
        if generation.is_finished:
            self._conclude(song, generation, now, now)
        else:
            self._schedule_next(song, now)

    # ------------------------------------------------------------------ the timer heap

    def _plan(self, start: float, delay: float) -> float:
        """When to poll, ``delay`` after ``start``, early by the typical lateness (never by
        more than half the delay)."""
        return start + delay - min(self._typical_lateness, delay / 2)

    def note_lateness(self, song: _Song, sent: float) -> None:
        """Count how late ``song``'s poll, due at ``song.due_at``, left at ``sent``: the
        event loop, the workers, the budget and the connection all delay it, and the next
        plans go early by the typical delay, so that polls reach the server when planned
        (and the times polls are dated by, those they left at, agree with the plans)."""
        if song.due_at == math.inf:
            return
        self._lateness.append(max(0.0, sent - song.due_at))
        if len(self._lateness) % LATENESS_REFRESH == 0:
            self._typical_lateness = statistics.median(self._lateness)

    def _schedule_next(self, song: _Song, start: float) -> None:
        """Put ``song`` in the heap for the poll its policy plans after ``start``."""
        delay = self._next_delay(song, start)
        if delay is not None:
            self._schedule(song, self._plan(start, delay))

    def _note_unreported(self, song: _Song, observer: _Observer, dispatched: float) -> None:
        """A transport that never reported sending the poll: it left when dispatched."""
        if observer.sent_at is None:
            self.note_lateness(song, dispatched)

    def _schedule(self, song: _Song, due: float) -> None:
        """Put ``song`` (not in the heap: new, or just polled) in the heap, due at ``due``."""
        due = min(due, song.deadline_at)
        song.due_at = due
        song.timer = next(self._sequence)
        heapq.heappush(self._heap, (due, song.timer, song))
        self._wake_for(due)

    def _wake_for(self, due: float) -> None:
        if due < self._nap_until and self._nap_scope is not None:
            self._nap_scope.cancel()  # the dispatcher sleeps past this one: wake it

    def _replan(self, now: float) -> None:
        """Plan every planned poll again when the policy's ``version`` changed: what it
        learned may move them either way (songs found finishing sooner, or later).

        The heap is rebuilt rather than pushed to: pushing a new entry per song would leave
        its old one behind, and with thousands of songs in flight and a new version every
        few seconds those stale entries were most of the batch's memory."""
        version = self.poll.version
        if version == self._version:
            return
        self._version = version
        entries = []
        for due, timer, song in self._heap:
            if timer != song.timer:
                continue  # the song ended: its entry goes
            # Entries due already (waiting for the budget) and songs backing off after
            # errors stay as they are.
            if due > now and not song.transient_failures:
                delay = self._next_delay(song, now)
                if delay is None:
                    continue  # the policy failed: the song ended with that failure
                due = song.due_at = min(self._plan(now, delay), song.deadline_at)
            entries.append((due, timer, song))
        heapq.heapify(entries)
        self._heap[:] = entries  # in place: the dispatcher holds this list
        if entries:
            self._wake_for(entries[0][0])

    async def _dispatch(self, workers: MemoryObjectSendStream[_Song]) -> None:
        heap, due = self._heap, self._due
        while True:
            now = self.clock.now()
            while heap and heap[0][0] <= now:
                _, timer, song = heapq.heappop(heap)
                if timer == song.timer:  # else rescheduled since: a stale entry
                    song.timer = IN_DUE
                    due.append(song)
                    # Watched from now, not from its poll: the budget may hold it long.
                    self._watch_deadline(song)
            if due:
                wait = self._budget_wait()
                if wait > 0:
                    for song in self._unwatched_due:  # held now: their deadline ends them
                        if song.timer == IN_DUE:
                            self._watch_deadline(song)
                    self._unwatched_due.clear()
                    # Woken for polls falling due meanwhile too: a poll the budget holds
                    # waits in ``_due``, where the watchdog ends it at its deadline.
                    await self._nap(min(now + wait, heap[0][0]) if heap else now + wait)
                    continue
                urgent = self._most_urgent(now)
                if urgent is None:
                    continue  # the policy failed for every candidate: they ended
                self._launching += 1
                await workers.send(urgent)  # waits for a free worker
                self._polls_dispatched += 1
            elif heap:
                await self._nap(heap[0][0])
            else:
                await self._nap(math.inf)

    def _watch_deadline(self, song: _Song) -> None:
        """Have the watchdog end ``song`` at its deadline (and a grace): cut its poll in
        flight, or time it out while its poll waits for the budget."""
        if song.deadline_at == math.inf or song.watched:
            return
        song.watched = True
        # A last poll that goes out after the deadline (the loop, the workers or the
        # budget were late) still has the grace to be answered.
        at = max(song.deadline_at, self.clock.now()) + DEADLINE_POLL_GRACE
        heapq.heappush(self._deadlines, (at, next(self._sequence), song))
        if at < self._watchdog_until and self._watchdog_scope is not None:
            self._watchdog_scope.cancel()  # it sleeps past this one: wake it

    async def _watchdog(self) -> None:
        """Cancel polls still in flight at their song's deadline, on the batch's clock (the
        event loop's deadlines cannot follow a compressed or virtual clock)."""
        deadlines = self._deadlines
        while True:
            now = self.clock.now()
            while deadlines and deadlines[0][0] <= now:
                _, _, song = heapq.heappop(deadlines)
                if song.poll_scope is not None:
                    song.poll_scope.cancel()
                elif not song.generating:
                    pass  # it ended meanwhile
                elif song.timer == IN_DUE and self._budget_holds():
                    # Its last poll is held by the budget (a 429's pause, say): the caller
                    # is not kept waiting for a poll the budget may hold for longer still.
                    # The dispatcher drops it from ``_due`` (it ended).
                    self._time_out(song)
                else:
                    # Queued a moment (the budget has room), or on its way to a worker: its
                    # last poll, when it starts or is held again, is watched afresh.
                    song.watched = False
                    if song.timer == IN_DUE:
                        self._unwatched_due.append(song)
            with anyio.CancelScope() as scope:
                self._watchdog_scope = scope
                self._watchdog_until = deadlines[0][0] if deadlines else math.inf
                if deadlines:
                    await self.clock.sleep(self._watchdog_until - now)
                else:
                    await anyio.sleep_forever()
            self._watchdog_scope, self._watchdog_until = None, math.inf

    def _budget_holds(self) -> bool:
        """Whether the budget lets no request go now (paused, or out of room)."""
        return self.budget is not None and self.budget.delay() > 0

    def _budget_wait(self) -> float:
        """How long due polls should stay here rather than queue inside the budget.

        A poll queued inside the budget waits its turn in arrival order; held here, the
        likeliest to find its song finished goes first when the budget has room, and
        submissions (which the budget serves first anyway) never queue behind polls.
        """
        budget = self.budget
        if budget is None:
            return 0.0
        if self._launching:
            return GATE_RECHECK / 10  # let the worker just started reach the budget
        wait = budget.delay()
        if budget.waiting:
            wait = max(wait, GATE_RECHECK)
        return wait

    def _most_urgent(self, now: float) -> _Song | None:
        """Take the due song whose poll is likeliest to find it finished (oldest on ties);
        None if none is left to poll (those the watchdog ended, or for which the policy
        failed, are dropped)."""
        due = self._due
        if any(not song.generating for song in itertools.islice(due, URGENCY_CANDIDATES)):
            kept = [song for song in due if song.generating]  # in place: _dispatch holds it
            due.clear()
            due.extend(kept)
        if len(due) <= 1:
            return self._take(due.popleft()) if due else None
        best: _Song | None = None
        best_chance = 0.0
        failed: list[tuple[_Song, Exception]] = []
        for song in itertools.islice(due, URGENCY_CANDIDATES):
            try:
                chance = float(self.poll.chance_done(self._poll_state(song, now)))
            except Exception as exc:
                failed.append((song, exc))
                continue
            if math.isnan(chance):
                chance = 0.0  # unknown
            if best is None or chance > best_chance:
                best, best_chance = song, chance
        for song, cause in failed:
            due.remove(song)
            self._take(song)
            self._policy_failed(song, "chance_done", cause)
        if best is None:
            return None
        due.remove(best)
        return self._take(best)

    @staticmethod
    def _take(song: _Song) -> _Song:
        song.timer = NO_TIMER  # out of ``_due``, to a worker or ended
        return song

    async def _nap(self, until: float) -> None:
        with anyio.CancelScope() as scope:
            self._nap_scope, self._nap_until = scope, until
            if until == math.inf:
                await anyio.sleep_forever()
            else:
                await self.clock.sleep(until - self.clock.now())
        self._nap_scope, self._nap_until = None, math.inf

    # ------------------------------------------------------------------ polling

    async def _poll_worker(self, due: MemoryObjectReceiveStream[_Song]) -> None:
        async for song in due:
            # Runs on to the budget's acquire() before its first real wait.
            self._launching -= 1
            await self._poll(song)

    async def _poll(self, song: _Song) -> None:
        dispatched = self.clock.now()
        song.polls += 1
        observer = _Observer(self, song, "poll")
        # The song's deadline bounds its polls in flight too (a GET is safe to cut; a POST
        # never is, so submissions are not cut).
        failure: AimlMusicError | None = None
        with anyio.CancelScope() as scope:
            song.poll_scope = scope
            self._watch_deadline(song)
            try:
                generation = await self.transport.get(
                    song.generation_id,
                    observer=observer,
                    retry_throttled=False,
                )
            except AimlMusicError as exc:
                failure = exc
            except ClientClosedError as exc:
                self._client_closed(exc)
                return
            except Exception as exc:  # one song's failure, whatever it is
                failure = _unforeseen_poll(song, exc)
            finally:
                song.poll_scope = None
                self._note_unreported(song, observer, dispatched)
        if failure is not None:
            self._poll_failed(song, failure)
            return
        if scope.cancelled_caught:
            self._time_out(song)
            return
        now = self.clock.now()
        # What the poll saw, it saw when its answered attempt left, not when it was
        # dispatched: the budget or a retry after a 5xx may have held it since. (Without
        # httpcore's trace, as with httpx.MockTransport or ASGITransport, the transport
        # reports sending when the answer comes: dated by the answer, then. A transport
        # that reports nothing leaves the dispatch time.)
        sent = observer.sent_at if observer.sent_at is not None else dispatched
        song.transient_failures = song.suspect_polls = 0
        if self._outage_since is not None:
            logger.info(
                "polls are answered again, after %d failed over %.0f s",
                self._failed_polls,
                now - self._outage_since,
            )
            self._outage_since = None
        self._failed_polls = 0
        self._record(song, generation, sent, now)
        self._replan(now)
        if generation.is_finished:
            self._conclude(song, generation, sent, now)
        elif now >= song.deadline_at:
            self._time_out(song)
        else:
            # Spaced from when this poll went out, not from when its answer came back: the
            # server saw the two polls that far apart, whatever the round trip took.
            self._schedule_next(song, sent)

    def _poll_failed(self, song: _Song, error: AimlMusicError) -> None:
        now = self.clock.now()
        if isinstance(error, RateLimitError):
            if now >= song.deadline_at:
                self._time_out(song)  # what the caller waited for is the song, not the 429
                return
            # Refused by the server: due again at once; the dispatcher holds it until the
            # budget's pause (started by the transport for every request) is over.
            self._schedule(song, now)
            return
        suspect = isinstance(error, NotFoundError | ResponseValidationError)
        if suspect:
            song.suspect_polls += 1
        if not (_is_transient(error) or suspect) or (
            song.suspect_polls >= MAX_CONSECUTIVE_SUSPECT_POLLS
        ):
            self._finish(song, error=error)
            return
        if now >= song.deadline_at:
            self._time_out(song)
            return
        planned = self._next_delay(song, now)
        if planned is None:
            return
        delay = max(backoff_delay(song.transient_failures, self.retry), planned)
        song.transient_failures += 1
        if not suspect:
            self._note_failed_poll(song, error, now)
        logger.debug("poll of %s failed (%s); again in %.1f s", song.key, error, delay)
        song.retries += 1
        self.emit_retried(song, "poll", song.transient_failures, error, delay)
        self._schedule(song, now + delay)

    def _note_failed_poll(self, song: _Song, error: AimlMusicError, now: float) -> None:
        """Count a poll failed for a transient reason; the first song to fail
        ``OUTAGE_POLLS`` times in a row while none is reported begins an outage."""
        self._failed_polls += 1
        if self._outage_since is None and song.transient_failures >= OUTAGE_POLLS:
            self._outage_since = now
            logger.warning(
                "polls are failing (%s); the songs are polled again, backing off, until "
                "they are answered",
                error,
            )

    def _record(self, song: _Song, generation: Generation, sent: float, now: float) -> None:
        """Take in what a poll sent at ``sent`` saw: status changes, and what the policy
        learns (only from songs whose submission this batch saw)."""
        assert song.submitted_at is not None
        previous = song.generation.status if song.generation is not None else None
        status = generation.status
        if status != previous:
            emit(
                self.events,
                "on_status_changed",
                SongStatusChanged(song.key, generation.id, previous, status, now),
            )
        reference = song.queued_at if song.queued_at is not None else song.submitted_at
        if is_waiting(status):
            song.queued_at = reference = sent
        elif status == GenerationStatus.GENERATING and song.started_at is None:
            song.started_at = now
        if status == GenerationStatus.COMPLETED and song.learns:
            after = song.unfinished_from if song.unfinished_from is not None else reference
            self._teach(
                "observe_finished", song.generation_id, reference, max(after, reference), sent
            )
        if not status.is_terminal:
            song.unfinished_from, song.unfinished_to = sent, now
            if song.learns:
                self._teach("observe_running", song.generation_id, reference, sent)
        if generation != song.generation:  # else the one kept says the same
            song.generation = _sharing_id(generation, song.generation_id)

    def _poll_state(self, song: _Song, now: float) -> PollState:
        assert song.submitted_at is not None
        return PollState(
            submitted_at=song.submitted_at,
            now=now,
            polls=song.polls,
            status=song.generation.status if song.generation is not None else None,
            last_poll_at=song.unfinished_from if song.polls else None,
            queued_at=song.queued_at,
            budget_rate=self.budget.effective_rate if self.budget is not None else 0.0,
            in_flight=self._kept_in_flight(),
            phase=song.phase,
        )

    def _kept_in_flight(self) -> int:
        """How many songs this batch keeps generating: all its slots while the source
        hands songs over as fast as the budget's pace takes them; once the source has
        ended, or while it is slower than that, those generating (the budget of slots
        nobody fills goes to the songs there are)."""
        if self._source_done or self._source_lags():
            return self._generating
        return max(self._generating, self.max_in_flight)

    def _source_lags(self) -> bool:
        """Whether the source leaves slots empty: its last song came later than the
        budget's pace of submissions would have taken it, or the feed has been waiting for
        the next one for longer than that."""
        if self._source_lagged:
            return True
        asked = self._source_asked_at
        return asked is not None and self.clock.now() - asked > self._submission_gap()

    def _next_delay(self, song: _Song, now: float) -> float | None:
        """The policy's delay before ``song``'s next poll (one already past: 0, now).

        None when the policy failed (raised, or gave no finite delay: NaN, or never),
        after ending the song with a :class:`ConfigurationError` saying so: the song was
        paid for, so its result names its generation (to follow with ``wait()``) rather
        than the failure ending every song of the batch."""
        try:
            delay = float(self.poll.next_delay(self._poll_state(song, now)))
        except Exception as exc:
            self._policy_failed(song, "next_delay", exc)
            return None
        if not math.isfinite(delay):
            cause = ValueError(f"returned {delay!r}, not a finite delay")
            self._policy_failed(song, "next_delay", cause)
            return None
        return max(0.0, delay)

    def _policy_failed(self, song: _Song, method: str, cause: Exception) -> None:
        """End ``song`` because the policy's ``method`` failed for it (see _next_delay)."""
        error = ConfigurationError(
            f"{type(self.poll).__name__}.{method} failed for generation "
            f"{song.generation_id}: {cause}"
        )
        error.__cause__ = cause
        self._finish(song, error=error)

    def _teach(self, method: str, *args: Any) -> None:
        """Tell the policy what a poll saw (``observe_*``, ``forget``). A policy that fails
        to learn is logged, not fatal: what the poll saw stands, and the song goes on."""
        try:
            getattr(self.poll, method)(*args)
        except Exception:
            logger.warning(
                "%s.%s failed; the song goes on", type(self.poll).__name__, method, exc_info=True
            )

    # ------------------------------------------------------------------ finishing

    def _conclude(self, song: _Song, generation: Generation, sent: float, now: float) -> None:
        """A poll (or the submission) saw the song finished."""
        song.generation = generation
        if generation.status == GenerationStatus.COMPLETED:
            self._finish(song, noticed_at=now, sent=sent)
        else:
            self._finish(song, error=GenerationFailedError(generation), noticed_at=now, sent=sent)

    def _time_out(self, song: _Song) -> None:
        assert self.deadline is not None
        error = GenerationTimeoutError(song.generation_id, self.deadline, song.generation)
        self._finish(song, error=error)

    def _finish(
        self,
        song: _Song,
        *,
        error: AimlMusicError | None = None,
        noticed_at: float | None = None,
        sent: float | None = None,
    ) -> None:
        song.timer = NO_TIMER  # an entry it may have left in the heap is stale
        if song.lease is not None:
            # The song ended (or never started): its slot is free for the whole account.
            assert self._task_group is not None
            self._task_group.start_soon(self._give_back, song.lease)
            song.lease = None
        if song.submitted_at is not None:
            self._generating -= 1
            song.generating = False
            self._followed.discard(song)
            self._submission_pace.song_ended(song.requests, self.clock.now() - song.submitted_at)
            if error is not None and song.generation is not None:
                self._teach("forget", song.generation_id)
        completed_at = None
        if noticed_at is not None and sent is not None:
            # Midway between the last poll that saw it unfinished and the one that saw it
            # finished (each taken at the middle of its round trip).
            if song.unfinished_from is not None and song.unfinished_to is not None:
                before = (song.unfinished_from + song.unfinished_to) / 2
            else:
                before = song.submitted_at if song.submitted_at is not None else sent
            completed_at = (before + (sent + noticed_at) / 2) / 2
        result = SongResult(
            key=song.key,
            request=song.request,
            generation=song.generation,
            error=error,
            timings=SongTimings(
                submitted_at=song.submitted_at,
                started_at=song.started_at,
                completed_at=completed_at,
                noticed_at=noticed_at,
            ),
            polls=song.polls,
            retries=song.retries,
        )
        at = self.clock.now()
        if error is None:
            emit(self.events, "on_completed", SongCompleted(song.key, result, at))
        else:
            logger.debug("song %s failed: %s", song.key, error)
            emit(self.events, "on_failed", SongFailed(song.key, result, at))
        self._ready.append((song, result))
        self._ready_event.set()

    async def _deliver(self, results: MemoryObjectSendStream[SongResult]) -> None:
        while True:
            while not self._ready:
                self._ready_event = anyio.Event()
                await self._ready_event.wait()
            song, result = self._ready.popleft()
            self._delivering = (song, result)  # neither ready nor read while being sent
            try:
                await results.send(result)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                # Nobody reads any more: stop submitting and polling, as a caller leaving.
                self._leave_soon()
                return
            self._delivering = None
            if self._in_flight.get(song.key) is song:
                del self._in_flight[song.key]
            self._active -= 1
            self._slots.release()
            self._maybe_finished()

    def left_behind(
        self, results: MemoryObjectReceiveStream[SongResult]
    ) -> list[tuple[str, str | None]]:
        """The key and generation id of each song submitted whose result the caller did not
        read (still running, finished and waiting to be delivered, or waiting in ``results``,
        drained here); ``None`` for a song whose submission was ambiguous."""
        finished = [*self._ready, *([self._delivering] if self._delivering else [])]
        done = {id(song) for song, _ in finished}
        left: list[tuple[str, str | None]] = [
            (song.key, song.id)
            for song in self._in_flight.values()
            if song.id is not None and id(song) not in done
        ]
        unread = [result for _, result in finished]
        while True:
            try:
                unread.append(results.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
        for result in unread:
            # A paid generation whose id could not be used still has its raw id on the error.
            generation_id = result.generation_id or getattr(result.error, "generation_id", None)
            if generation_id is not None:
                left.append((result.key, generation_id))
            elif isinstance(result.error, AmbiguousSubmissionError):
                left.append((result.key, None))
        return left

    def _maybe_finished(self) -> None:
        if self._source_done and self._active == 0:
            self._finished.set()

    def emit_retried(
        self, song: _Song, kind: RequestKind, attempt: int, error: AimlMusicError, delay: float
    ) -> None:
        """Report a retry of one of ``song``'s requests to the event hook."""
        event = RequestRetried(song.key, kind, attempt, error, delay, self.clock.now())
        emit(self.events, "on_retried", event)


# --------------------------------------------------------------------------- the source


class _EndOfSource:
    pass


_END = _EndOfSource()


async def _next_item(iterator: Iterator[SongItem] | AsyncIterator[SongItem]) -> object:
    if isinstance(iterator, AsyncIterator):
        try:
            return await anext(iterator)
        except StopAsyncIteration:
            return _END
    return next(iterator, _END)


def _unpack(item: object, index: int) -> tuple[str, SongRequest]:
    """``(key, request)`` for one source item; a bare request is keyed by its position."""
    if isinstance(item, SongRequest):
        return str(index), item
    if isinstance(item, tuple) and len(item) == 2:
        key, request = item
        if isinstance(key, int) and not isinstance(key, bool):
            key = str(key)
        if isinstance(key, str) and isinstance(request, SongRequest):
            return key, request
    raise TypeError(
        "generate_many() takes SongRequest items or (key, SongRequest) pairs with a str key; "
        f"item {index} {_what_is_wrong(item)}"
    )


def _what_is_wrong(item: object) -> str:
    """What is wrong with a source item that is no song, said without quoting it whole (a
    request's text may be long, or private)."""
    if not isinstance(item, tuple):
        return f"is a {type(item).__name__}"
    if len(item) != 2:
        return f"is a tuple of {len(item)} items, not a (key, SongRequest) pair"
    key, request = item
    if not isinstance(key, str | int) or isinstance(key, bool):
        return f"has a key that is a {type(key).__name__}, not a str"
    return f"(key {str(key)[:80]!r}) holds a {type(request).__name__}, not a SongRequest"


async def _close_source(iterator: Iterator[SongItem] | AsyncIterator[SongItem]) -> None:
    """Close a generator source we stopped reading, so its ``finally`` blocks run now."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        with anyio.move_on_after(SOURCE_CLOSE_TIMEOUT, shield=True):
            await aclose()
        return
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


# --------------------------------------------------------------------------- entry point


@asynccontextmanager
async def generate_many(
    transport: SchedulerTransport,
    requests: SongSource,
    *,
    clock: Clock,
    max_in_flight: int,
    deadline: float | None,
    poll: PollPolicy,
    events: BatchEvents | None,
    budget: Budget | None = None,
    retry: RetryPolicy | None = None,
    song_phases: Iterator[float] | None = None,
    leases: InFlightLeases | None = None,
) -> AsyncIterator[MemoryObjectReceiveStream[SongResult]]:
    """Submit and poll many songs; yield a stream of their results in completion order.

    ``requests`` is an iterable or async iterable of :class:`SongRequest` (keyed by their
    0-based position in the source, as a string: ``"0"``, ``"1"``...) or ``(key, request)``
    pairs (``key`` a ``str``; an ``int`` is turned into one). It is read lazily: the next item
    is taken only when one of the ``max_in_flight`` slots is free. A song whose key equals
    that of a song still in flight is not submitted; its result carries a
    :class:`RequestValidationError`. A slot is freed when the song's result has been taken
    by the stream (which buffers a few), so a slow reader slows submissions, not polls.

    ``deadline`` is each song's limit in API seconds from its submission (``None``: none);
    past it the song's result carries :class:`GenerationTimeoutError` with its id.
    ``song_phases`` gives each song its phase (default: a fresh :func:`phases`).
    ``leases``, when given, caps the songs in flight across processes too: a lease is taken
    before each submission and given back when the song ends. ``budget`` is the request
    budget the transport paces every request with: the scheduler
    holds due polls while it is busy and tells the poll policy the rate it sustains (``None``:
    no budget). ``retry`` gives the back-off between tries of a poll that failed for a
    transient reason and of a submission that surely did not arrive.

    Leaving the ``async with`` block, or cancelling the scope around it, cancels every
    submission and poll. If the source raises (or yields something that is not a song), no
    new song is started, those in flight finish and are delivered, and the error is raised
    when the block exits.
    """
    if isinstance(requests, SongRequest | str | bytes):
        raise TypeError("generate_many() takes an iterable of songs, not a single one")
    if not isinstance(requests, Iterable | AsyncIterable):
        raise TypeError(f"generate_many() takes an iterable, got {type(requests).__name__}")
    if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
        raise ValueError(f"max_in_flight must be a positive int, got {max_in_flight!r}")
    if deadline is not None and not deadline > 0:
        raise ValueError(f"deadline must be positive or None, got {deadline!r}")
    batch = _Batch(
        transport,
        requests,
        clock=clock,
        max_in_flight=max_in_flight,
        deadline=deadline,
        poll=poll,
        events=events,
        budget=budget,
        retry=retry if retry is not None else RetryPolicy(),
        phases=song_phases if song_phases is not None else phases(),
        leases=leases,
    )
    send, receive = anyio.create_memory_object_stream[SongResult](
        min(max_in_flight, MAX_RESULT_BUFFER)
    )
    body_error: Exception | None = None
    with receive, send:  # closed here too in case the batch task never got to run
        try:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(batch.run, send)
                try:
                    yield receive
                except Exception as exc:
                    # Raised in the caller's block: re-raised below, as itself rather than
                    # wrapped in the task group's ExceptionGroup.
                    body_error = exc
                finally:
                    try:
                        await batch.landing.leave()
                    finally:
                        task_group.cancel_scope.cancel()
        finally:
            tell_left_behind(batch.left_behind(receive))
    if body_error is not None:
        raise body_error
    if batch.source_error is not None:
        raise batch.source_error


#: The request of a song followed by :func:`follow` (it was submitted before; its result is
#: never handed to a user as a ``SongResult``).
_FOLLOWED = SongRequest(prompt="a generation submitted before", lyrics="not known here")


async def follow(
    transport: SchedulerTransport,
    generation_id: str,
    *,
    last: Generation | None,
    submitted_at: float | None,
    clock: Clock,
    poll: PollPolicy,
    budget: Budget | None,
    retry: RetryPolicy | None = None,
    deadline: float | None,
    song_phases: Iterator[float] | None = None,
) -> SongResult:
    """Poll one generation to its end through the same engine as :func:`generate_many` (a
    batch of one): the budget, the policy and the back-off behave exactly as in a batch.

    ``deadline`` (API seconds from now; ``None``: none) ends it with
    :class:`GenerationTimeoutError` in the result; ``submitted_at`` is the submission's time
    on ``clock`` when this client made it (``None``: unknown; the policy learns nothing).
    """
    if deadline is not None and not deadline > 0:
        raise ValueError(f"deadline must be positive or None, got {deadline!r}")
    batch = _Batch(
        transport,
        (),
        clock=clock,
        max_in_flight=1,
        deadline=deadline,
        poll=poll,
        events=None,
        budget=budget,
        retry=retry if retry is not None else RetryPolicy(),
        phases=song_phases if song_phases is not None else phases(),
    )
    batch.adopt(generation_id, last, submitted_at=submitted_at, deadline=deadline)
    send, receive = anyio.create_memory_object_stream[SongResult](1)
    with receive:
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(batch.run, send)
            result = await receive.receive()
            task_group.cancel_scope.cancel()
    return result


def _unforeseen_submission(song: _Song, exc: Exception) -> AmbiguousSubmissionError:
    """The error of a submission that failed with an exception none of the library's (a
    transport's bug, or an answer nothing foresaw): it may have reached the server, so it
    is ambiguous, never resent. Only the exception's type is told (its text could quote
    what a server sent, a key echoed); it is logged, so the cause can be found."""
    logger.warning("the submission of %s failed with %s", song.key, type(exc).__name__)
    return AmbiguousSubmissionError(
        f"the submission failed with {type(exc).__name__}, which nothing foresaw; it may have "
        "reached the server, so it was not resent: a generation may exist and cost credits, "
        "look for it before submitting again",
        request=song.request,
    )


def _unforeseen_poll(song: _Song, exc: Exception) -> ResponseValidationError:
    """The error of a poll that failed with an exception none of the library's: an answer
    that could not be read, retried like one a few times, then the song's error."""
    logger.warning("a poll of %s failed with %s", song.key, type(exc).__name__)
    return ResponseValidationError(
        f"the poll failed with {type(exc).__name__}, which nothing foresaw",
        generation_id=song.id,
    )
