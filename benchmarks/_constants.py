"""``--set NAME=VALUE``: one numeric constant of the learned policy or the pace changed for a run.

The planner's, the estimator's and the submission pace's constants are globals of
``aimlmusic._planner``, ``aimlmusic._estimator`` and ``aimlmusic._pacing``. A few are also
imported by name elsewhere (``aimlmusic._polling`` holds the planner's ``WINDOW`` and
``MIN_GAP``), and one is a copy made at import (``ADOPTED_SONGS = MEMORY``), so a setting is
made in every module that imports the name and in the copies, or it would apply in one place
and not the other. It is how ``simulate_polling.py`` and ``planner_alone.py`` try a change
before the library is edited. A value the library cannot work with (``SPLITS=0``) fails as
the library would.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

__all__ = ["applied", "parse_setting"]

#: The modules whose constants may be set.
MODULES = ("aimlmusic._planner", "aimlmusic._estimator", "aimlmusic._pacing")
#: Constants that are not tuning: the grid must agree with the bin edges computed from it at
#: import, and the export's layout with every estimate already written.
REFUSED = frozenset({"GRID_START", "GRID_END", "GRID_RATIO", "ESTIMATE_FORMAT", "EXPORT_DIGITS"})
#: Constants defined as a copy of another at import: set along with it.
COPIES = {"MEMORY": ("ADOPTED_SONGS",)}

Setting = tuple[str, str, int | float]


def _owner(name: str) -> str | None:
    """The module of ``MODULES`` that defines the numeric constant ``name``, if one does."""
    for module_name in MODULES:
        value = getattr(importlib.import_module(module_name), name, None)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return module_name
    return None


def parse_setting(text: str) -> Setting:
    """``NAME=VALUE`` as (its module, the name, the value in the constant's own type); an
    ``argparse`` type, so a bad setting is refused before anything runs."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE")
    module_name = _owner(name) if name.isupper() else None
    if module_name is None:
        where = ", ".join(MODULES)
        raise argparse.ArgumentTypeError(f"{name} is not a numeric constant of any of {where}")
    if name in REFUSED:
        raise argparse.ArgumentTypeError(f"{name} is not a tuning constant: it cannot be set")
    kind = type(getattr(importlib.import_module(module_name), name))
    try:
        value = kind(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}={raw!r}: not a valid {kind.__name__}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{name}={raw!r}: must be finite and not negative")
    return module_name, name, value


def _importers(module_name: str, name: str) -> Iterator[tuple[ModuleType, str]]:
    """Each loaded ``aimlmusic`` module that imports ``name`` from ``module_name`` with a
    ``from ... import``, and the name it binds. Read from the source, not by comparing
    values: small integers are one shared object, so an equal value proves nothing."""
    package = module_name.partition(".")[0]
    for loaded_name, module in list(sys.modules.items()):
        if loaded_name != package and not loaded_name.startswith(package + "."):
            continue
        source = getattr(module, "__file__", None)
        if loaded_name == module_name or source is None:
            continue
        for node in ast.walk(ast.parse(Path(source).read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            written = "." * node.level + (node.module or "")
            if importlib.util.resolve_name(written, module.__package__) != module_name:
                continue
            for alias in node.names:
                if alias.name == name:
                    yield module, alias.asname or name


@contextmanager
def applied(settings: list[Setting]) -> Iterator[None]:
    """Make each setting, in its module, in every ``aimlmusic`` module that imports it and in
    its copies, while the block runs, then put the originals back; say so on stdout, so that
    a run's output records what it changed."""
    undo: list[tuple[ModuleType, str, object]] = []
    try:
        for module_name, name, value in settings:
            module = importlib.import_module(module_name)
            print(f"{module_name}.{name} = {value!r} (was {getattr(module, name)!r})")
            places = [(module, name), *_importers(module_name, name)]
            places += [(module, copy) for copy in COPIES.get(name, ())]
            for place, bound in places:
                undo.append((place, bound, getattr(place, bound)))
                setattr(place, bound, value)
        yield
    finally:
        for place, bound, original in reversed(undo):
            setattr(place, bound, original)
