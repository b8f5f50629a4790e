"""``--set NAME=VALUE``: one numeric constant of the learned policy changed for one run.

The planner's and the estimator's constants are globals of ``aimlmusic._planner`` and
``aimlmusic._estimator``. A few are also imported by name elsewhere (``aimlmusic._polling``
holds the planner's ``WINDOW`` and ``MIN_GAP``), so a setting is made in every ``aimlmusic``
module that holds the name, or it would apply in one place and not the other. It is how
``simulate_polling.py`` and ``planner_alone.py`` try a change before the library is edited.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys

__all__ = ["apply", "parse_setting"]

#: The modules whose constants may be set.
MODULES = ("aimlmusic._planner", "aimlmusic._estimator")
#: Constants read once, when the module is imported (the estimator's grid, and what is
#: computed from it): setting them later would change nothing, so they are refused.
READ_AT_IMPORT = frozenset({"GRID_START", "GRID_END", "GRID_RATIO", "BINS", "ADOPTED_SONGS"})


def _owner(name: str) -> str | None:
    """The module of ``MODULES`` that defines the numeric constant ``name``, if one does."""
    for module_name in MODULES:
        value = getattr(importlib.import_module(module_name), name, None)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return module_name
    return None


def parse_setting(text: str) -> tuple[str, str, int | float]:
    """``NAME=VALUE`` as (its module, the name, the value in the constant's own type); an
    ``argparse`` type, so a bad setting is refused before anything runs."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE")
    module_name = _owner(name) if name.isupper() else None
    if module_name is None:
        where = " or ".join(MODULES)
        raise argparse.ArgumentTypeError(f"{name} is not a numeric constant of {where}")
    if name in READ_AT_IMPORT:
        raise argparse.ArgumentTypeError(f"{name} is read at import: it cannot be set here")
    kind = type(getattr(importlib.import_module(module_name), name))
    try:
        value = kind(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}={raw!r}: not a valid {kind.__name__}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{name}={raw!r}: must be finite")
    return module_name, name, value


def apply(settings: list[tuple[str, str, int | float]]) -> None:
    """Make each setting in its module and in every ``aimlmusic`` module that imported the
    same constant by name (the very object); say so on stdout, so that a run's output
    records what it changed."""
    for module_name, name, value in settings:
        original = getattr(importlib.import_module(module_name), name)
        for loaded_name, module in list(sys.modules.items()):
            if loaded_name != module_name and not loaded_name.startswith("aimlmusic."):
                continue
            # The same object, not an equal number: another module may have a constant of
            # its own by the same name and value (a 60-second window of its own).
            if loaded_name == module_name or vars(module).get(name, None) is original:
                setattr(module, name, value)
        print(f"{module_name}.{name} = {value!r} (was {original!r})")
