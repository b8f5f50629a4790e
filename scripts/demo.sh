#!/bin/sh
# The main job: install aimlmusic with its command-line tool into .venv and run
# `aimlmusic demo`, which generates a small catalog against the bundled emulator (no API key,
# no network, time compressed). Arguments go to `aimlmusic demo`.
# Environment: PYTHON picks the interpreter (default python3), AIMLMUSIC_VENV the venv.
set -eu
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
venv=${AIMLMUSIC_VENV:-.venv}

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "scripts/demo.sh: needs Python 3.10 or newer; set PYTHON=/path/to/python3.x" >&2
    exit 1
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet '.[cli]'
exec "$venv/bin/aimlmusic" demo "$@"
