"""The ``aimlmusic`` command: generate one song, a whole catalog, or the demo.

Needs the ``cli`` extra (``pip install 'aimlmusic[cli]'``): click, rich, mutagen and the
emulator's encoder. Run ``aimlmusic --help`` for the commands; the CLI reference in the docs
describes every option and the exit codes (0 all done, 1 some songs failed, 2 bad usage or
an invalid catalog, 130 interrupted).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status.

    The console script ``aimlmusic`` and ``python -m aimlmusic.cli`` both end up here.
    """
    try:
        from ._app import run
    except ImportError as exc:  # click or rich missing: say how to get them
        print(
            f"error: the aimlmusic command needs the 'cli' extra ({exc.name} is missing): "
            "pip install 'aimlmusic[cli]'",
            file=sys.stderr,
        )
        return 2
    return run(argv)
