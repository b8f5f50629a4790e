"""Development sessions: ``nox`` runs tests on every supported Python found, lint, typecheck,
docs and ``contract`` (the emulator against the OpenAPI spec, with schemathesis).

Extra sessions, run by name: ``bench``
(benchmarks, quick mode), ``bench_shared`` and ``bench_workers`` (the benchmarks that need
Redis and PostgreSQL: several processes on one budget, catalog workers on one journal; quick
mode, skipped when their server does not answer) and ``reliability`` (the fault-injection
soaks at full size, ``AIMLMUSIC_SOAK=full``).

Interpreters: a supported Python counts as found when a real ``pythonX.Y`` answers with that
version, either on ``PATH`` or under ``$(pyenv root)/versions``. pyenv shims do not count (a
shim for a version that is installed but not selected fails when run). Only found versions
become ``tests-X.Y`` sessions, so a machine without some of them still gets a clean run, also
under ``CI`` where nox treats a missing interpreter as an error.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nox

nox.needs_version = ">=2025.10.14"  # download_python; nox.project.dependency_groups
nox.options.default_venv_backend = "uv|virtualenv"
# Interpreters are found below, never downloaded (the machines reach PyPI only).
nox.options.download_python = "never"
nox.options.error_on_external_run = True
nox.options.sessions = ["tests", "lint", "typecheck", "docs", "contract"]

ROOT = Path(__file__).resolve().parent
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
SUPPORTED = nox.project.python_versions(PYPROJECT)
EXTRAS = ".[emulator,cli,otel,trio,redis,postgres]"
# Tests run in worker processes (pytest-xdist), one per core: on these 2-core machines that
# takes about 40 % off a session. At most four, so that a big machine does not start dozens
# of processes against one Redis and one PostgreSQL. ``-- -n 0`` runs the tests in one
# process, so that ``-s`` shows their output (a later ``-n`` overrides this one; ``--pdb``
# turns the workers off by itself).
PARALLEL = ("--numprocesses=auto", "--maxprocesses=4")
# Wrappers that make each found interpreter the first ``pythonX.Y`` on PATH (see below).
WRAPPERS = ROOT / ".nox" / "_interpreters"


def group(name: str) -> tuple[str, ...]:
    """The requirements of a ``[dependency-groups]`` entry, or nothing if it is not defined."""
    if name not in PYPROJECT.get("dependency-groups", {}):
        return ()
    return nox.project.dependency_groups(PYPROJECT, name)


# --------------------------------------------------------------------------- interpreters


def _pyenv_root() -> Path | None:
    if root := os.environ.get("PYENV_ROOT"):
        return Path(root)
    if pyenv := shutil.which("pyenv"):
        result = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False)
        if result.returncode == 0 and result.stdout.strip():
            return Path(result.stdout.strip())
    default = Path.home() / ".pyenv"
    return default if default.is_dir() else None


def _patch_level(path: Path) -> tuple[int, ...]:
    # .../versions/3.12.10/bin/python3.12 sorts above .../versions/3.12.9/...
    numbers = re.findall(r"\d+", path.parents[1].name)
    return tuple(int(n) for n in numbers)


def _candidates(version: str) -> Iterator[Path]:
    name = f"python{version}"
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if directory:
            yield Path(directory) / name
    if root := _pyenv_root():
        found = (root / "versions").glob(f"{version}.*/bin/{name}")
        yield from sorted(found, key=_patch_level, reverse=True)


def _answers_as(executable: Path, version: str) -> bool:
    if not (executable.is_file() and os.access(executable, os.X_OK)):
        return False
    probe = "import sys; print('%d.%d' % sys.version_info[:2])"
    try:
        result = subprocess.run(
            [str(executable), "-c", probe], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and result.stdout.strip() == version


def find_interpreters() -> dict[str, Path]:
    """Map each supported ``X.Y`` to a working interpreter, for the versions this machine has."""
    found: dict[str, Path] = {}
    for version in SUPPORTED:
        for candidate in _candidates(version):
            if _answers_as(candidate, version):
                found[version] = candidate
                break
    return found


def _put_first_on_path(interpreters: dict[str, Path]) -> None:
    # nox and uv look interpreters up by name on PATH, where a pyenv shim may shadow the real
    # one or nothing may be found at all. A tiny exec wrapper per version fixes the lookup
    # without reordering PATH for every other tool (a pyenv bin dir also holds python3, pip...).
    WRAPPERS.mkdir(parents=True, exist_ok=True)
    for version, executable in interpreters.items():
        wrapper = WRAPPERS / f"python{version}"
        wrapper.write_text(f'#!/bin/sh\nexec "{executable}" "$@"\n', encoding="utf-8")
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    os.environ["PATH"] = f"{WRAPPERS}{os.pathsep}{os.environ.get('PATH', '')}"


INTERPRETERS = find_interpreters()
_put_first_on_path(INTERPRETERS)
# Never an empty list: the interpreter running nox is a supported one at worst.
TEST_PYTHONS = list(INTERPRETERS) or [f"{sys.version_info[0]}.{sys.version_info[1]}"]


# --------------------------------------------------------------------------- sessions


@nox.session(python=TEST_PYTHONS)
def tests(session: nox.Session) -> None:
    """Run the test suite on one Python, against the installed package with all extras."""
    session.install(EXTRAS, *group("test"))
    session.run("pytest", *PARALLEL, *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting."""
    session.install(*group("lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package (Python 3.10 semantics, set in pyproject.toml)."""
    session.install(EXTRAS, *group("typecheck"))
    session.run("mypy", "--strict", "aimlmusic")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the HTML docs; any Sphinx warning fails the build."""
    session.install(EXTRAS, *group("docs"))
    session.run(
        "sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html",
        *session.posargs,
    )  # fmt: skip


@nox.session
def contract(session: nox.Session) -> None:
    """Check the emulator against the OpenAPI spec with schemathesis (tests/test_contract.py)."""
    if not (ROOT / "tests" / "test_contract.py").is_file():
        session.skip("tests/test_contract.py does not exist yet")
    session.install(EXTRAS, *group("test"), *group("contract"))
    session.run("pytest", "tests/test_contract.py", *session.posargs)


@nox.session
def reliability(session: nox.Session) -> None:
    """Run tests/reliability at full size (the default ``pytest`` runs its quick versions)."""
    if not (ROOT / "tests" / "reliability").is_dir():
        session.skip("tests/reliability does not exist yet")
    session.install(EXTRAS, *group("test"), *group("reliability"))
    session.run(
        "pytest", "tests/reliability", *PARALLEL, *session.posargs, env={"AIMLMUSIC_SOAK": "full"}
    )


@nox.session
def bench(session: nox.Session) -> None:
    """Print the benchmark figures in quick mode (figures, never pass/fail on time)."""
    if not (ROOT / "benchmarks" / "run.py").is_file():
        session.skip("benchmarks/run.py does not exist yet")
    session.install(EXTRAS, *group("bench"))
    session.run("python", "benchmarks/run.py", "--quick", *session.posargs)


def _skip_unless_listening(session: nox.Session, what: str, port: int, *options: str) -> None:
    """Skip ``session`` when nothing listens on 127.0.0.1:``port`` (the benchmark's default
    server) and the arguments choose no other (one of ``options``)."""
    if any(arg.startswith(options) for arg in session.posargs):
        return
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2.0).close()
    except OSError:
        session.skip(f"no {what} on 127.0.0.1:{port} (name another with {options[0]} URL)")


@nox.session
def bench_shared(session: nox.Session) -> None:
    """Several client processes on one key, sharing one budget through Redis (quick mode)."""
    _skip_unless_listening(session, "Redis", 6379, "--redis-url")
    session.install(EXTRAS, *group("bench"))
    session.run("python", "benchmarks/shared_budget.py", "--quick", *session.posargs)


@nox.session
def bench_workers(session: nox.Session) -> None:
    """Catalog workers draining one PostgreSQL journal, with a kill soak (quick mode)."""
    # --journal sqlite (one worker) needs no PostgreSQL.
    _skip_unless_listening(session, "PostgreSQL", 5432, "--postgres", "--journal")
    session.install(EXTRAS, *group("bench"))
    session.run("python", "benchmarks/catalog_workers.py", "--quick", *session.posargs)
