#!/bin/sh
# The catalog command line: generate every song of examples/catalog.jsonl into a directory.
#
#   examples/catalog_cli.sh [OUTPUT_DIR]                  # no key: the embedded emulator
#   AIML_API_KEY=... examples/catalog_cli.sh [OUTPUT_DIR]  # the real API (costs credits)
#
# Needs the cli extra: pip install 'aimlmusic[cli]'. The journal in OUTPUT_DIR records every
# step, so running the same command again (after Ctrl-C, a crash, a reboot) resumes where it
# stopped and never pays twice for a song.
set -eu

catalog="$(dirname "$0")/catalog.jsonl"
output="${1:-catalog-output}"
if [ -n "${AIML_API_KEY:-}" ]; then
    where=""
else
    where="--emulator"
fi

# --plain: one line per event, as in a log (a terminal shows a live view instead).
aimlmusic batch "$catalog" -o "$output" --plain $where

# Running it again finds everything downloaded and sends nothing.
aimlmusic batch "$catalog" -o "$output" --plain $where
