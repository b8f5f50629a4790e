"""``python -m aimlmusic.emulator --host 127.0.0.1 --port 0``: serve a local emulator."""

from __future__ import annotations

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
