"""``python -m aimlmusic.emulator`` (and ``aimlmusic emulator``): serve an emulator.

The base URL is the only line printed on standard output, so a script can read it; the
rest goes to standard error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._config import DEFAULT_SERVED_TIME_SCALE, FAULT_KINDS, TEST_API_KEY, EmulatorConfig, Faults
from ._durations import Uniform

__all__ = ["build_parser", "config_from_args", "main"]


def _limit(text: str) -> int | None:
    value = int(text)
    return None if value <= 0 else value


def _fault(text: str) -> tuple[str, float]:
    name, separator, probability = text.partition("=")
    if not separator or name not in FAULT_KINDS:
        raise argparse.ArgumentTypeError(
            f"expected NAME=PROBABILITY with NAME one of {', '.join(FAULT_KINDS)}"
        )
    return name, float(probability)


def _retry_after(text: str) -> float | str | None:
    if text in ("none", ""):
        return None
    return "auto" if text == "auto" else float(text)


def build_parser(prog: str = "python -m aimlmusic.emulator") -> argparse.ArgumentParser:
    """The command line's options (shared with ``aimlmusic emulator``)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve a local emulator of the AI/ML API music endpoint (minimax/music-1.5).",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default: %(default)s)"
    )
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (default)")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=DEFAULT_SERVED_TIME_SCALE,
        help="API seconds per real second (default: %(default)g, as the aimlmusic command's "
        "--emulator; 1 is real time). Clients on this machine read it from /_emulator/info",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for every random draw")
    parser.add_argument(
        "--duration",
        nargs=2,
        type=float,
        metavar=("MIN", "MAX"),
        default=(50.0, 60.0),
        help="generating time range in API seconds (default: 50 60)",
    )
    parser.add_argument(
        "--rpm", type=_limit, default=120, help="requests per minute per key; 0 disables"
    )
    parser.add_argument(
        "--burst",
        type=_limit,
        default=0,
        help="count requests with a token bucket of this many (0: a sliding 60-s window)",
    )
    parser.add_argument(
        "--max-concurrent", type=_limit, default=20, help="songs generating at once; 0: no limit"
    )
    parser.add_argument(
        "--retry-after",
        type=_retry_after,
        default=None,
        help="Retry-After on 429: 'none' (default, like the real API), 'auto' or seconds",
    )
    parser.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY",
        help=f"accepted key (repeatable; default: {TEST_API_KEY})",
    )
    parser.add_argument(
        "--accept-any-key", action="store_true", help="accept any key a client could send"
    )
    parser.add_argument(
        "--no-credit-key", action="append", default=[], metavar="KEY", help="key answered 403"
    )
    parser.add_argument(
        "--audio-seconds", type=float, default=3.0, help="length of the served audio (default: 3)"
    )
    parser.add_argument(
        "--fault",
        action="append",
        type=_fault,
        default=[],
        metavar="NAME=P",
        help=f"fault probability, repeatable; NAME in: {', '.join(FAULT_KINDS)}",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request")
    return parser


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """The :class:`EmulatorConfig` the parsed options describe."""
    low, high = args.duration
    return EmulatorConfig(
        time_scale=args.time_scale,
        seed=args.seed,
        durations=Uniform(low, high),
        requests_per_minute=args.rpm,
        burst=args.burst or None,
        retry_after=args.retry_after,
        max_concurrent=args.max_concurrent,
        api_keys=frozenset(args.api_keys or [TEST_API_KEY]),
        accept_any_key=args.accept_any_key,
        no_credit_keys=frozenset(args.no_credit_key),
        audio_seconds=args.audio_seconds,
        faults=Faults(**dict(args.fault)),
    )


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m aimlmusic.emulator") -> int:
    """Parse ``argv``, serve until interrupted, return the exit status."""
    from ._emulator import Emulator  # imported here to keep --help fast
    from ._server import serve

    args = build_parser(prog).parse_args(argv)
    try:
        config = config_from_args(args)
    except (TypeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    emulator = Emulator(config)

    def announce(base_url: str) -> None:
        print(base_url, flush=True)
        # Only the public test key is ever shown: other keys are secrets.
        if config.accept_any_key:
            keys = "any key"
        elif config.api_keys == {TEST_API_KEY}:
            keys = f"the test key {TEST_API_KEY!r}"
        else:
            keys = f"{len(config.api_keys)} configured key(s)"
        print(
            f"aimlmusic emulator at {base_url} (time x{config.time_scale:g}); accepts {keys}; "
            "stats at /_emulator/stats; Ctrl+C to stop",
            file=sys.stderr,
            flush=True,
        )

    try:
        serve(emulator, host=args.host, port=args.port, ready=announce, access_log=args.access_log)
    except KeyboardInterrupt:
        pass
    except (OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
