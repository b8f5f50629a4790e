"""``AsyncMusicClient``: the public façade over the transport, the poll policy and downloads."""

from __future__ import annotations

import ipaddress
import logging
import os
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import anyio

from . import _limits
from ._clock import Clock, SystemClock, finished_by
from ._config import Limits, RetryPolicy, SizeLimits, Timeout
from ._download import Downloader
from ._emulator_time import TimeScaleProbe, follow_emulator_time
from ._errors import (
    AimlMusicError,
    ClientClosedError,
    ConfigurationError,
    DownloadError,
    GenerationFailedError,
    GenerationTimeoutError,
    SubmissionTimeoutError,
)
from ._events import BatchEvents, check_events
from ._models import Generation, GenerationStatus, SongRequest, SongResult
from ._network import OwnNetwork
from ._polling import PollPolicy, default_policy
from ._ratelimit import Budget, RequestBudget
from ._redact import REDACTED, Redactor, Secret, install_httpx_log_filter, key_fingerprint
from ._shared_budget import SharedBudget
from ._shared_leases import SharedLeases, give_back
from ._shared_redis import SharedStore
from ._shared_timing import SharedTiming, SharesEstimate
from ._telemetry import telemetry_if_configured
from ._transport import SUBMISSION_WATCH, USER_AGENT, Transport
from ._virtual_clock import VirtualClock

if TYPE_CHECKING:
    import httpx
    from anyio.streams.memory import MemoryObjectReceiveStream

__all__ = ["AsyncMusicClient"]

logger = logging.getLogger("aimlmusic")

#: Environment variables read for the API key, in order (the official SDK's names).
API_KEY_VARIABLES = ("AIML_API_KEY", "AIMLAPI_API_KEY")
#: Shortest API key accepted (see :data:`aimlmusic._limits.MIN_API_KEY_LENGTH`).
MIN_API_KEY_LENGTH = _limits.MIN_API_KEY_LENGTH
BASE_URL_VARIABLE = "AIMLMUSIC_BASE_URL"
#: The Redis URL that shares the account's budget between processes when shared_url= is not
#: given (so every worker of a service shares it without code changes).
SHARED_URL_VARIABLE = "AIMLMUSIC_SHARED_URL"
DEFAULT_BASE_URL = "https://api.aimlapi.com"
#: Submission times remembered so that ``wait`` after ``submit`` can teach the poll policy.
_REMEMBERED_SUBMISSIONS = 1024


def warn_submitted(generation_id: str, interruption: BaseException) -> None:
    """Say that ``interruption`` stopped a call after it submitted ``generation_id``: the
    song may be paid for and goes on without the caller, who holds nothing else to find it
    by."""
    logger.warning(
        "generation %s was submitted and may still finish; %s interrupted waiting for it: "
        "fetch it later with wait(%r)",
        generation_id,
        type(interruption).__name__,
        generation_id,
    )


def submitted_note(generation_id: str) -> str:
    """The note added to an exception that interrupted a call after it submitted
    ``generation_id``."""
    return f"generation {generation_id} was submitted and may still finish"


def tell_submitted(generation_id: str, interruption: BaseException) -> None:
    """:func:`warn_submitted`, and the same as a note on the exception (Python 3.11 on)."""
    warn_submitted(generation_id, interruption)
    add_note = getattr(interruption, "add_note", None)  # Python 3.11 on
    if add_note is not None:
        add_note(submitted_note(generation_id))


class AsyncMusicClient:
    """An async client for the AI/ML API music endpoint (``minimax/music-1.5``).

    ``api_key`` defaults to the ``AIML_API_KEY`` environment variable, then
    ``AIMLAPI_API_KEY``; ``base_url`` to ``AIMLMUSIC_BASE_URL``, then
    ``https://api.aimlapi.com``. A plain ``http://`` base URL is refused unless its host is
    loopback (an emulator on this machine) or ``allow_insecure_http=True``, because the key
    would travel in clear text.

    ``timeout`` is a number of seconds (read, write and pool; connect at most 10 s) or a
    :class:`Timeout`. ``retry`` says how failed requests are retried, ``poll`` when
    generations are polled (one instance per client, so a learning policy learns across
    calls), ``limits`` the account's request rate and concurrency. ``transport`` (for
    example ``httpx.MockTransport``) or ``http_client`` replace the network; a client passed
    in is not closed by :meth:`aclose`, and of its settings only the connection pool, its
    transport, proxies, TLS settings, event hooks (and, for API calls only, its default
    headers and cookies) are used: never its ``auth``, and nothing but the URL and a
    ``User-Agent`` goes to the storage host. ``size_limits`` caps how much an answer or a
    download may be (see :class:`SizeLimits`). ``clock`` decides what a second is (see
    :class:`ScaledClock`); without one, a client of a loopback URL asks the server once
    whether it is an aimlmusic emulator and runs at its time scale. ``shared_url`` (default:
    the ``AIMLMUSIC_SHARED_URL`` environment variable; ``""`` turns sharing off) is a Redis
    URL: every client of the same API key on that Redis then shares one request budget
    (see :class:`SharedBudget`). Use it as an async
    context manager, or call :meth:`aclose`.

    Creating a client adds a filter to the ``httpx`` logger that hides URL query values
    (presigned signatures) in httpx's own ``HTTP Request: ...`` log lines.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float | Timeout | None = None,
        retry: RetryPolicy | None = None,
        poll: PollPolicy | None = None,
        limits: Limits | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
        clock: Clock | None = None,
        allow_insecure_http: bool = False,
        size_limits: SizeLimits | None = None,
        shared_url: str | None = None,
    ) -> None:
        key = _resolve_api_key(api_key)
        self._key_fingerprint = key_fingerprint(key)
        self._base_url = _resolve_base_url(base_url, allow_insecure_http=allow_insecure_http)
        if transport is not None and http_client is not None:
            raise ConfigurationError("give either transport= or http_client=, not both")
        self._timeout = _resolve_timeout(timeout)
        self._retry = retry if retry is not None else RetryPolicy()
        self._limits = limits if limits is not None else Limits()
        local = _is_loopback(urlsplit(self._base_url).hostname or "")
        scale_probe: TimeScaleProbe | None = None
        if local and clock is None and transport is None and http_client is None:
            # Most likely an emulator: run at its speed (see _emulator_time).
            clock, scale_probe = follow_emulator_time(self._base_url)
            transport = scale_probe
        self._scale_probe = scale_probe
        self._telemetry = telemetry_if_configured()
        if self._telemetry is not None and http_client is None:
            # Spans and counts per request (a caller's http_client is left as it is).
            transport = self._telemetry.wrap(
                transport if transport is not None else OwnNetwork(), Redactor(Secret(key))
            )
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._poll: PollPolicy = poll if poll is not None else default_policy()
        self._shared = _shared_state(shared_url, key, self._clock)
        self._budget: Budget = (
            RequestBudget(self._limits.requests_per_minute, self._clock)
            if self._shared is None
            else SharedBudget(
                self._limits.requests_per_minute,
                self._clock,
                self._shared,
                use_clock_time=isinstance(self._clock, VirtualClock),
                before_first_use=None if scale_probe is None else scale_probe.learn_scale,
            )
        )
        # The learned timing, shared when the policy can export it (LearnedPolling).
        self._timing = (
            SharedTiming(self._shared, self._poll, self._clock)
            if self._shared is not None and isinstance(self._poll, SharesEstimate)
            else None
        )
        # The account's in-flight cap, across processes (None: each batch's own semaphore).
        self._leases = (
            None
            if self._shared is None
            else SharedLeases(
                self._limits.max_in_flight,
                self._clock,
                self._shared,
                use_clock_time=isinstance(self._clock, VirtualClock),
                before_first_use=None if scale_probe is None else scale_probe.learn_scale,
            )
        )
        self._size_limits = size_limits if size_limits is not None else SizeLimits()
        self._transport = Transport(
            api_key=key,
            base_url=self._base_url,
            timeout=self._timeout,
            retry=self._retry,
            clock=self._clock,
            budget=self._budget,
            transport=transport,
            http_client=http_client,
            size_limits=self._size_limits,
            before_requests=None if scale_probe is None else scale_probe.learn_scale,
        )
        install_httpx_log_filter(self._transport.redactor)
        self._downloader = Downloader(
            self._transport.http_client,
            retry=self._retry,
            clock=self._clock,
            timeout=self._timeout,
            redactor=self._transport.redactor,
            user_agent=USER_AGENT,
            max_bytes=self._size_limits.download_bytes,
            api_host=urlsplit(self._base_url).hostname or "",
        )
        # id -> when this client submitted it, for wait() after submit(): only songs whose
        # submission time is known may teach the poll policy.
        self._submissions: OrderedDict[str, float] = OrderedDict()
        self._phases: Iterator[float] | None = None  # see _song_phases

    # ------------------------------------------------------------------ properties

    @property
    def base_url(self) -> str:
        """The API's base URL, without a trailing slash."""
        return self._base_url

    @property
    def limits(self) -> Limits:
        """The account limits this client paces itself to."""
        return self._limits

    @property
    def key_fingerprint(self) -> str:
        """The first 16 hex digits of the API key's SHA-256: tells the accounts of several
        keys apart (a shared journal records it per song) without showing the key."""
        return self._key_fingerprint

    @property
    def clock(self) -> Clock:
        """The clock every wait of this client uses."""
        return self._clock

    @property
    def poll_policy(self) -> PollPolicy:
        """The poll policy shared by ``wait``, ``generate`` and ``generate_many``."""
        return self._poll

    @property
    def budget(self) -> Budget:
        """The request budget shared by every request of this client (a
        :class:`SharedBudget` when ``shared_url`` is set, else a local one)."""
        return self._budget

    @property
    def shared_url(self) -> str | None:
        """The Redis that shares the account's budget, without its password (``None``: this
        client's budget is its own)."""
        return None if self._shared is None else self._shared.redacted_url

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` was called."""
        return self._transport.closed

    # ------------------------------------------------------------------ single calls

    async def submit(self, request: SongRequest) -> Generation:
        """Submit one song (one ``POST``) and return the new generation, usually ``queued``.

        Raises :class:`AmbiguousSubmissionError` rather than resending when the submission
        may have reached the server.
        """
        return await self._submit(request)

    async def _submit(self, request: SongRequest, send_by: float | None = None) -> Generation:
        self._check_open()
        if not isinstance(request, SongRequest):
            # A dict would fail deep in the converter; say what is expected instead.
            raise TypeError(f"submit() takes a SongRequest, got {type(request).__name__}")
        generation = await self._transport.submit(request, send_by=send_by)
        watch = SUBMISSION_WATCH.get()
        if watch is not None:  # the blocking client: the id must reach an interrupted caller
            watch.submitted(generation.id)
        self._remember_submission(generation)
        return generation

    async def get(self, generation_id: str) -> Generation:
        """Fetch a generation's current state (one ``GET``, retried when it fails)."""
        self._check_open()
        return await self._transport.get(generation_id)

    async def wait(
        self,
        generation: str | Generation,
        *,
        timeout: float | None = None,  # noqa: ASYNC109  (API seconds on the client's clock)
    ) -> Generation:
        """Poll until the generation is finished and return it (status ``completed``).

        Given an id, it fetches the generation at once, then polls as the poll policy says;
        given a :class:`Generation` it polls from there (a finished one returns or raises
        without any request). Polls go through the same scheduler, request budget and poll
        policy as :meth:`generate_many`; only a generation this client submitted teaches the
        policy (its submission time is known). ``timeout`` is in seconds of the client's
        clock; ``None`` waits for ever. Raises :class:`GenerationFailedError` on status
        ``error`` and :class:`GenerationTimeoutError` (carrying the id and the last status
        seen) when the deadline passes first. A status the API does not document counts as
        not finished.
        """
        self._check_open()
        if self._timing is not None:
            await self._timing.load()
        if isinstance(generation, Generation):
            return await self._follow(generation.id, generation, timeout)
        return await self._follow(generation, None, timeout)

    async def generate(
        self,
        request: SongRequest,
        *,
        timeout: float | None = None,  # noqa: ASYNC109  (on the client's clock, as in wait)
    ) -> Generation:
        """Submit ``request`` and wait for it: :meth:`submit` then :meth:`wait`.

        ``timeout`` covers both, and the waits before the submission: with ``shared_url``
        for one of the account's in-flight slots (shared with every client of the key, and
        held until the song ends), and for the request budget. Still waiting for them when
        the time runs out, it raises :class:`SubmissionTimeoutError`, nothing sent. The
        submission itself is never cut short (an interrupted POST could be paid for and
        lost), so the deadline is checked again once it returns.
        """
        send_by = None if timeout is None else self._clock.now() + timeout
        try:
            if self._timing is None:
                return await self._generate_in_slot(request, timeout, send_by)
            await self._timing.load()
            try:
                return await self._generate_in_slot(request, timeout, send_by)
            finally:
                with anyio.CancelScope(shield=True):
                    await self._timing.publish()
        except SubmissionTimeoutError as exc:
            assert timeout is not None
            raise SubmissionTimeoutError(timeout, exc.waiting_for) from None

    async def _generate_in_slot(
        self,
        request: SongRequest,
        timeout: float | None,  # noqa: ASYNC109  (on the client's clock, as in wait)
        send_by: float | None,
    ) -> Generation:
        """:meth:`_generate` holding one of the account's shared in-flight slots, if any."""
        if self._leases is None:
            return await self._generate(request, timeout, send_by)
        leases = self._leases
        taken: list[str] = []

        async def take() -> None:
            taken.append(await leases.acquire())

        try:
            if send_by is None:
                await take()
            else:
                await finished_by(self._clock, send_by, take)
        except BaseException:
            # Cancelled (or failed) after the slot was taken: give it back, or it would be
            # renewed with the client's other slots for as long as the client runs.
            for lease in taken:
                await give_back(leases, lease)
            raise
        if not taken:
            # Nothing was sent. (A slot taken in Redis as the alarm rang is given back by
            # acquire itself.)
            assert timeout is not None  # the alarm rings only with a timeout
            raise SubmissionTimeoutError(timeout, "one of the account's in-flight slots")
        (lease,) = taken
        outcome: Generation | None = None
        error: BaseException | None = None
        try:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(leases.keep_alive)
                try:
                    outcome = await self._generate(request, timeout, send_by)
                except Exception as exc:
                    error = exc  # raised below as itself, not in an ExceptionGroup
                task_group.cancel_scope.cancel()
        finally:
            await give_back(leases, lease)
        if error is not None:
            raise error
        assert outcome is not None
        return outcome

    async def _generate(
        self,
        request: SongRequest,
        timeout: float | None,  # noqa: ASYNC109  (on the client's clock, as in wait)
        send_by: float | None,
    ) -> Generation:
        generation = await self._submit(request, send_by)
        try:
            return await self._follow_submitted(generation, timeout, send_by)
        except AimlMusicError:
            raise  # each carries the generation's id, or says why there is none
        except BaseException as exc:  # cancelled, interrupted (Ctrl-C), or a bug
            tell_submitted(generation.id, exc)
            raise

    async def _follow_submitted(
        self,
        generation: Generation,
        timeout: float | None,  # noqa: ASYNC109  (on the client's clock, as in wait)
        send_by: float | None,
    ) -> Generation:
        """Follow a song :meth:`generate` has just submitted until ``send_by``."""
        if timeout is None or send_by is None:
            return await self._follow(generation.id, generation, None)
        remaining = send_by - self._clock.now()
        if remaining <= 0 and not generation.is_finished:
            raise GenerationTimeoutError(generation.id, timeout, generation)
        return await self._follow(generation.id, generation, max(remaining, 1e-9), timeout)

    async def download(
        self,
        generation: Generation | SongResult | str | None,
        path: str | os.PathLike[str],
    ) -> Path:
        """Download a completed generation's audio to ``path`` and return it as a ``Path``.

        ``generation`` is a :class:`Generation`, a :class:`SongResult` (or its
        ``generation``, typed optional, so a checked ``result.generation`` can be passed as
        it is), or an id, which is fetched first. The file is written atomically (the target
        is the complete, length-checked file or untouched), parent directories are created,
        and no ``Authorization`` header goes to the storage host. An expired URL is refreshed
        once. Raises :class:`DownloadError` naming the generation on failure.
        """
        self._check_open()
        if isinstance(generation, SongResult):
            if generation.generation is None:
                raise DownloadError(
                    f"song {generation.key!r} has no generation to download: "
                    f"{generation.error or 'it was never submitted'}"
                )
            generation = generation.generation
        if generation is None:
            raise DownloadError("nothing to download: the generation is None")
        if not isinstance(generation, Generation):
            generation = await self.get(generation)
        if self._scale_probe is not None:
            # The deadline spans API seconds at the emulator's pace: learn it first (a
            # download as a client's first request would count 600 s at a pace of 1).
            await self._scale_probe.learn_scale()
        return await self._downloader.download(generation, Path(path), refresh=self.get)

    def generate_many(
        self,
        requests: Iterable[SongRequest | tuple[str, SongRequest]]
        | AsyncIterable[SongRequest | tuple[str, SongRequest]],
        *,
        max_in_flight: int | None = None,
        deadline: float | None = 600.0,
        poll: PollPolicy | None = None,
        events: BatchEvents | None = None,
    ) -> AbstractAsyncContextManager[MemoryObjectReceiveStream[SongResult]]:
        """Generate many songs at once; an async context manager yielding a receive stream
        of :class:`SongResult` in completion order.

        ``requests`` is consumed lazily: ``SongRequest`` items or ``(key, SongRequest)``
        pairs, from an iterable or an async iterable. At most ``max_in_flight`` generations
        run at once (default: ``limits.max_in_flight``; the limit is per batch);
        ``deadline`` is each song's time limit in API seconds from its submission (``None``:
        none); with ``shared_url`` the account's ``limits.max_in_flight`` also caps the
        generations of every client of the key together. ``poll`` replaces the client's
        poll policy for this batch; ``events``
        receives progress events (see :class:`BatchEvents`). Leaving the block early cancels
        everything cleanly.
        """
        self._check_open()
        check_events(events)
        from . import _scheduler  # imported late: the scheduler is the heaviest layer

        songs = self._telemetry.batch(events) if self._telemetry is not None else None
        batch = _scheduler.generate_many(
            self._transport,
            requests,
            clock=self._clock,
            max_in_flight=self._limits.max_in_flight if max_in_flight is None else max_in_flight,
            deadline=deadline,
            poll=self._poll if poll is None else poll,
            events=songs if songs is not None else events,  # songs forwards to events
            budget=self._budget,
            retry=self._retry,
            song_phases=self._song_phases(),
            leases=self._leases,
        )
        observed = (
            batch
            if self._telemetry is None or songs is None
            else self._telemetry.observe(songs, batch)
        )
        if self._timing is None or poll is not None:
            return observed
        return self._sharing_timing(self._timing, observed)

    @asynccontextmanager
    async def _sharing_timing(
        self,
        timing: SharedTiming,
        batch: AbstractAsyncContextManager[MemoryObjectReceiveStream[SongResult]],
    ) -> AsyncIterator[MemoryObjectReceiveStream[SongResult]]:
        """``batch``, started from the account's shared timing estimate and publishing this
        client's while it runs and at its end."""
        await timing.load()
        body_error: Exception | None = None
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(timing.publish_periodically)
            try:
                async with batch as results:
                    yield results
            except Exception as exc:
                body_error = exc  # raised below as itself, not in an ExceptionGroup
            finally:
                task_group.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await timing.publish(force=True)
        if body_error is not None:
            raise body_error

    # ------------------------------------------------------------------ lifecycle

    async def aclose(self) -> None:
        """Release the connection pool (unless it was passed in) and the shared Redis's.
        Safe to call twice."""
        try:
            await self._transport.aclose()
        finally:
            if self._shared is not None:
                await self._shared.aclose()

    async def __aenter__(self) -> AsyncMusicClient:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = ", closed" if self.closed else ""
        return f"AsyncMusicClient(base_url={self._base_url!r}{state})"

    # ------------------------------------------------------------------ waiting

    def _check_open(self) -> None:
        if self._transport.closed:
            raise ClientClosedError("this AsyncMusicClient is closed; create a new one")

    def _song_phases(self) -> Iterator[float]:
        """The client's one sequence of song phases, shared by its batches and waits."""
        if self._phases is None:
            from . import _scheduler

            self._phases = _scheduler.phases()
        return self._phases

    def _remember_submission(self, generation: Generation) -> None:
        self._submissions[generation.id] = self._clock.now()
        while len(self._submissions) > _REMEMBERED_SUBMISSIONS:
            self._submissions.popitem(last=False)

    async def _follow(
        self,
        generation_id: str,
        last: Generation | None,
        seconds: float | None,
        reported_timeout: float | None = None,
    ) -> Generation:
        """Poll one generation to its end within ``seconds``; return it or raise."""
        from . import _scheduler  # imported late: the scheduler is the heaviest layer

        if last is None or not last.is_finished:
            if seconds is not None and seconds <= 0:
                raise GenerationTimeoutError(generation_id, 0.0, last)
            result = await _scheduler.follow(
                self._transport,
                generation_id,
                last=last,
                submitted_at=self._submissions.get(generation_id),
                clock=self._clock,
                poll=self._poll,
                budget=self._budget,
                retry=self._retry,
                deadline=seconds,
                song_phases=self._song_phases(),
            )
            if isinstance(result.error, GenerationTimeoutError) and reported_timeout is not None:
                raise GenerationTimeoutError(generation_id, reported_timeout, result.generation)
            if result.error is not None and not isinstance(result.error, GenerationFailedError):
                if result.error.generation_id is None:
                    # The song exists (and was paid for): the caller can follow it by this.
                    result.error.generation_id = generation_id
                raise result.error
            last = result.generation
        assert last is not None  # finished implies seen
        if last.status == GenerationStatus.ERROR:
            raise GenerationFailedError(last)
        return last


# --------------------------------------------------------------------------- configuration


def _resolve_api_key(api_key: str | None) -> str:
    if api_key is None:
        for name in API_KEY_VARIABLES:
            value = os.environ.get(name, "").strip()
            if value:
                return _checked_key(value, f"the {name} environment variable")
        raise ConfigurationError(
            "no API key: pass api_key= or set the AIML_API_KEY (or AIMLAPI_API_KEY) "
            "environment variable"
        )
    if not isinstance(api_key, str) or not api_key.strip():
        raise ConfigurationError(
            "the API key is empty: pass a key, or set AIML_API_KEY (or AIMLAPI_API_KEY)"
        )
    return _checked_key(api_key.strip(), "the API key given as api_key=")


def _checked_key(key: str, source: str) -> str:
    """``key`` if it can travel in an ``Authorization`` header; else a ConfigurationError
    naming the problem and where it is, never the key or any character of it."""
    problem = _limits.api_key_problem(key)
    if problem is not None:
        raise ConfigurationError(f"{source} is unusable: it has {problem}; nothing was sent")
    return key


def _resolve_base_url(base_url: str | None, *, allow_insecure_http: bool) -> str:
    url = (
        base_url if base_url is not None else os.environ.get(BASE_URL_VARIABLE) or DEFAULT_BASE_URL
    )
    url = url.strip()
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018  (raises for a port that is no number: read, not used)
    except ValueError:
        # Not quoted, nor is the parser's text (it can quote the host): the URL may hold
        # credentials.
        raise ConfigurationError(
            f"base URL is not a valid URL (such as {DEFAULT_BASE_URL!r})"
        ) from None
    shown = _shown_base_url(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host:
        raise ConfigurationError(
            f"base URL {shown!r} must be an http(s) URL with a host, such as {DEFAULT_BASE_URL!r}"
        )
    # Any '@' counts: a password holding an unencoded '/' puts its end, and the '@', in
    # what a URL parser reads as the path (the host then reads as the user name).
    if "@" in url or parts.query or parts.fragment:
        raise ConfigurationError(
            f"base URL {shown!r} must not contain credentials, a query or a fragment"
        )
    if scheme == "http" and not (allow_insecure_http or _is_loopback(host)):
        raise ConfigurationError(
            f"base URL {shown!r} uses plain http to a host that is not this machine, which "
            "would send the API key in clear text; use https, or pass allow_insecure_http=True"
        )
    return url.rstrip("/")


def _shown_base_url(url: str) -> str:
    """``url`` for a message: whatever stands before its last ``@`` (a user and password,
    which may hold an unencoded ``/``, ``?`` or ``#``), its query and its fragment masked."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    _, at, rest = rest.rpartition("@")
    rest, hash_mark, _ = rest.partition("#")
    rest, question, _ = rest.partition("?")
    shown = f"{scheme}{separator}{REDACTED + '@' if at else ''}{rest}"
    return shown + (f"?{REDACTED}" if question else "") + (f"#{REDACTED}" if hash_mark else "")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _shared_state(shared_url: str | None, api_key: str, clock: Clock) -> SharedStore | None:
    """The shared Redis of ``shared_url``, else of ``AIMLMUSIC_SHARED_URL``; ``None`` when
    the one that applies is empty (sharing off)."""
    url = shared_url if shared_url is not None else os.environ.get(SHARED_URL_VARIABLE, "")
    if not isinstance(url, str):
        raise ConfigurationError(f"shared_url must be a Redis URL string, got {type(url).__name__}")
    if not url.strip():
        return None
    # On a virtual clock (tests) Redis is called inline: a worker thread would count as
    # blocked and let virtual time jump while Redis answers.
    return SharedStore(url, api_key, offload=not isinstance(clock, VirtualClock))


def _resolve_timeout(timeout: float | Timeout | None) -> Timeout:
    if timeout is None:
        return Timeout()
    if isinstance(timeout, Timeout):
        return timeout
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise ConfigurationError(f"timeout must be seconds or a Timeout, got {timeout!r}")
    if timeout <= 0:
        raise ConfigurationError(f"timeout must be positive, got {timeout!r}")
    seconds = float(timeout)
    return Timeout(connect=min(10.0, seconds), read=seconds, write=seconds, pool=seconds)
