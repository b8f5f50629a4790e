#!/bin/sh
# Run every check: the tests on each supported Python found on this machine (3.10-3.13),
# lint, typecheck and the docs build, through nox (see noxfile.py).
#
# Bootstraps a small tools virtualenv with nox and uv (reused on later runs). Arguments go to
# nox, e.g. `./scripts/test.sh -s tests-3.11 -- -k converter`. Environment: PYTHON picks the
# interpreter for the tools venv (default python3), AIMLMUSIC_TOOLS_VENV its location.
set -eu
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
venv=${AIMLMUSIC_TOOLS_VENV:-.venv-tools}

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "scripts/test.sh: needs Python 3.10 or newer; set PYTHON=/path/to/python3.x" >&2
    exit 1
fi
if [ ! -x "$venv/bin/nox" ] || [ ! -x "$venv/bin/uv" ]; then
    echo "scripts/test.sh: installing nox and uv into $venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet "nox>=2025.10.14" "uv>=0.5"
fi
# uv, like pip, must trust the system's certificate store (it bundles its own otherwise).
UV_NATIVE_TLS=${UV_NATIVE_TLS:-1}
export UV_NATIVE_TLS
exec "$venv/bin/nox" "$@"
