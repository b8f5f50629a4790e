"""The emulator's configuration: frozen attrs classes with the real service's defaults.

Every time is in *API seconds*: seconds as the emulated service experiences them. With
``time_scale=1000`` a 55 s song takes 55 ms of real time, a minute of request budget lasts
60 ms, and a client paired with :attr:`Emulator.clock <aimlmusic.emulator.Emulator.clock>`
sees the same compressed time.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from .. import _limits
from ._durations import DurationSource, Uniform

__all__ = ["TEST_API_KEY", "EmulatorConfig", "FaultKind", "Faults", "ThrottleStorm"]

#: The key every emulator accepts unless told otherwise. It is not a secret.
TEST_API_KEY = "test-key"

#: Names of the faults that :class:`Faults` draws and :meth:`Emulator.inject` schedules.
FaultKind = Literal[
    "error_before",
    "error_after",
    "drop_before",
    "drop_after",
    "delay",
    "malformed_json",
    "generation_failure",
    "waiting_status",
    "truncate_download",
]

#: API seconds per real second of a served emulator (``aimlmusic emulator``, ``python -m
#: aimlmusic.emulator``) and of the CLI's embedded one (``--emulator``, ``demo``): a 55 s song
#: takes about half a second, and a minute of request budget 0.6 s.
DEFAULT_SERVED_TIME_SCALE = 100.0

#: The documented generating time: uniform over 50-60 s.
DOCUMENTED_DURATIONS = Uniform(*_limits.DOCUMENTED_DURATION_RANGE)

FAULT_KINDS: tuple[str, ...] = FaultKind.__args__  # type: ignore[attr-defined]
#: The faults :class:`Faults` draws for each API request, in the fixed order in which they are
#: drawn (which keeps a seed's random stream stable); a truncated download is drawn apart, for
#: downloads only, from a generator of its own.
DRAWN_FAULT_KINDS: tuple[str, ...] = tuple(k for k in FAULT_KINDS if k != "truncate_download")


def _probability(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be a probability in [0, 1], got {value!r}")


def _non_negative(_: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{attribute.name} must not be negative, got {value!r}")


def _positive(_: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


@attrs.frozen
class ThrottleStorm:
    """Answer every API request with 429 from ``start`` (inclusive) to ``end`` (exclusive),
    in API seconds on the emulator's clock, optionally with a ``Retry-After`` header."""

    start: float
    end: float = attrs.field()
    retry_after: float | None = attrs.field(default=None, validator=_non_negative)

    @end.validator
    def _check_end(self, _: attrs.Attribute[float], value: float) -> None:
        if value < self.start:
            raise ValueError(f"end ({value!r}) must not be before start ({self.start!r})")

    def covers(self, now: float) -> bool:
        """True while the storm rages."""
        return self.start <= now < self.end


@attrs.frozen
class Faults:
    """Misbehaviour, drawn independently per request (or per job) with these probabilities
    from the emulator's seeded generator. All default to 0: a well-behaved service.

    On ``POST`` and ``GET /v2/generate/audio``:

    - ``error_before``: a 5xx before anything happens (no job is created).
    - ``error_after``: a 5xx *after* the job was created or the poll counted: the ambiguous case.
    - ``drop_before`` / ``drop_after``: the connection closes without a response, before or after
      the work was done. Over a socket the client sees the server hang up; in process (through
      ``httpx.ASGITransport``) the app raises ``httpx.RemoteProtocolError``, which is what httpx
      raises for a real hang-up.
    - ``delay``: the response is held back ``delay_seconds`` API seconds (slow responses, read
      timeouts).
    - ``malformed_json``: a 200 whose body is cut-off JSON (after the work was done).

    Per submitted job:

    - ``generation_failure``: the job ends in status ``error`` with ``error {name, message}``.
    - ``waiting_status``: the job reports the undocumented status ``waiting`` (on submission
      and while queued) instead of ``queued``.

    On downloads:

    - ``truncate_download``: the response sends half its body, then the connection closes.

    5xx statuses are drawn from ``server_error_statuses``; a 502 comes with an HTML body, as
    from a gateway. ``throttle_storms`` answer 429 to everything in their time windows.
    """

    error_before: float = attrs.field(default=0.0, validator=_probability)
    error_after: float = attrs.field(default=0.0, validator=_probability)
    drop_before: float = attrs.field(default=0.0, validator=_probability)
    drop_after: float = attrs.field(default=0.0, validator=_probability)
    delay: float = attrs.field(default=0.0, validator=_probability)
    malformed_json: float = attrs.field(default=0.0, validator=_probability)
    generation_failure: float = attrs.field(default=0.0, validator=_probability)
    waiting_status: float = attrs.field(default=0.0, validator=_probability)
    truncate_download: float = attrs.field(default=0.0, validator=_probability)
    delay_seconds: float = attrs.field(default=5.0, validator=_non_negative)
    server_error_statuses: tuple[int, ...] = attrs.field(default=(500, 502), converter=tuple)
    throttle_storms: tuple[ThrottleStorm, ...] = attrs.field(default=(), converter=tuple)

    @server_error_statuses.validator
    def _check_statuses(self, _: attrs.Attribute[object], value: tuple[int, ...]) -> None:
        if not value or any(not 500 <= status <= 599 for status in value):
            raise ValueError(f"server_error_statuses must be 5xx codes, got {value!r}")


def _key_set(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset({value})
    return frozenset(value)


def _usable_keys(_: object, attribute: attrs.Attribute[Any], keys: frozenset[str]) -> None:
    # A key the client would refuse to send is a configuration mistake, not a test of 401s;
    # the error names the field and the problem, never the key (it may be a real one).
    for key in keys:
        problem = _limits.api_key_problem(key) if isinstance(key, str) else "a non-string value"
        if problem is not None:
            raise ValueError(f"{attribute.name}: a key has {problem}")


def _keys_repr(keys: frozenset[str]) -> str:
    # Keys are credentials as far as a repr is concerned, even if the test key is public.
    return f"<{len(keys)} key{'s' if len(keys) != 1 else ''}>"


def _retry_after(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None or value == "auto":
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"retry_after must be None, 'auto' or seconds >= 0, got {value!r}")


@attrs.frozen
class EmulatorConfig:
    """How the emulated service behaves. The defaults are the real service's documented
    behaviour, in real time.

    Time: ``time_scale`` API seconds pass per real second; ``durations`` is the generating time
    of a song (default uniform 50-60 s); ``queue_delay`` an extra wait in ``queued`` before a
    song may start (default none); ``seed`` makes every draw reproducible.

    Account (each API key is its own account): ``requests_per_minute`` over a sliding 60 s
    window of ``POST`` and ``GET /v2/generate/audio`` (``None`` disables it), or, with
    ``burst``, a token bucket refilled at that rate and holding ``burst`` requests (a
    gateway that tolerates smaller bursts than a whole minute's worth); 429s carry no
    ``Retry-After`` unless ``retry_after`` is seconds or ``"auto"`` (the time until the window
    admits a request); ``max_concurrent`` songs generate at once, the rest stay ``queued`` and
    start first-in first-out.

    Auth: ``api_keys`` are accepted (default: :data:`TEST_API_KEY`), or with
    ``accept_any_key`` any key a client could send (printable ASCII, no spaces, at least
    ``MIN_API_KEY_LENGTH`` characters; anything else gets 401, as no real key is like that);
    ``no_credit_keys`` authenticate but get 403 on submission. A configured key that a client
    would refuse to send is a ``ValueError`` naming the field.

    Responses: a completed song's URL expires ``url_ttl`` seconds after the poll that returned
    it; ``credits_per_song`` is reported in ``meta.usage``; ``include_extra_info`` /
    ``include_trace_id`` / ``include_usage`` toggle those fields; the audio is
    ``audio_seconds`` long.
    """

    time_scale: float = attrs.field(default=1.0, validator=_positive)
    seed: int = 0
    durations: DurationSource = DOCUMENTED_DURATIONS
    queue_delay: DurationSource | None = None
    requests_per_minute: int | None = attrs.field(
        default=_limits.REQUESTS_PER_MINUTE, validator=_positive
    )
    burst: int | None = attrs.field(default=None, validator=_positive)
    retry_after: float | Literal["auto"] | None = attrs.field(default=None, validator=_retry_after)
    max_concurrent: int | None = attrs.field(
        default=_limits.CONCURRENT_GENERATIONS, validator=_positive
    )
    api_keys: frozenset[str] = attrs.field(
        default=frozenset({TEST_API_KEY}),
        converter=_key_set,
        validator=_usable_keys,
        repr=_keys_repr,
    )
    accept_any_key: bool = False
    no_credit_keys: frozenset[str] = attrs.field(
        default=frozenset(), converter=_key_set, validator=_usable_keys, repr=_keys_repr
    )
    url_ttl: float = attrs.field(default=86_400.0, validator=_positive)
    credits_per_song: float = attrs.field(default=100.0, validator=_non_negative)
    include_extra_info: bool = True
    include_trace_id: bool = True
    include_usage: bool = True
    audio_seconds: float = attrs.field(default=3.0, validator=_positive)
    faults: Faults = Faults()
    keep_request_log: bool = True
    max_body_bytes: int = attrs.field(default=1 << 20, validator=_positive)
