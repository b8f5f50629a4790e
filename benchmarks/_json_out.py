"""How each benchmark part hands its figures to ``run.py``: JSON, to a file or stdout."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["emit_json"]


def emit_json(figures: Any, path: str | None) -> None:
    """Write ``figures`` as indented JSON to ``path``, or print them when it is ``None``."""
    text = json.dumps(figures, indent=1)
    if path:
        with open(path, "w", encoding="utf-8") as out:
            out.write(text)
    else:
        print(text)
