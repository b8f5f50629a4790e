"""Run the aimlmusic benchmarks and print (``--quick``) or publish (``--full``) the figures.

    python benchmarks/run.py --quick     # a few minutes at most: prints markdown tables
    python benchmarks/run.py --full      # longer: also writes docs/performance.md and the plot

Each part runs in its own Python process, so one part's memory peak or warm caches never
colour another's figures: ``bench_polling.py`` (polling efficiency, end to end against the
emulator), ``bench_overhead.py`` (client CPU against bare httpx, emulator served by uvicorn in
yet another process) and ``bench_scale.py`` (10,000 songs in flight). Nothing here passes or
fails on time: every figure is printed next to its target with ✓ or ✗.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _page
import _report
from _machine import machine_facts

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

#: The polling strategies every run compares: ours and the documented loop it is held to.
_COMPARED = ["--strategy", "learned", "--strategy", "documented loop"]
#: Sizes of each part; --quick must finish in under 3 minutes on 2 cores.
SETTINGS: dict[str, dict[str, list[str]]] = {
    "quick": {
        "polling": ["--songs", "200", "--time-scale", "150", "--repeats", "1", *_COMPARED],
        "overhead": ["--requests", "1500", "--song-rounds", "3", "--songs", "100"],
        "scale": ["--songs", "10000", "--time-scale", "4"],
    },
    # The same experiments, with time compressed less and more repetitions.
    "full": {
        "polling": ["--songs", "200", "--time-scale", "50", "--repeats", "3", *_COMPARED],
        "overhead": ["--requests", "10000", "--song-rounds", "10", "--songs", "100"],
        "scale": ["--songs", "10000", "--time-scale", "2"],
    },
}
PARTS = ("polling", "overhead", "scale")


def _run_part(part: str, args: list[str]) -> Any:
    """Run one benchmark script in a fresh interpreter and read back its JSON figures."""
    with tempfile.TemporaryDirectory(prefix="aimlmusic-bench-") as tmp:
        out = Path(tmp) / f"{part}.json"
        command = [sys.executable, str(HERE / f"bench_{part}.py"), *args, "--json", str(out)]
        print(f"» {part}: {shlex.join(command[1:])}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        completed = subprocess.run(command, cwd=REPO, check=False)
        if completed.returncode != 0 or not out.exists():
            print(f"» {part} FAILED (exit {completed.returncode})", file=sys.stderr, flush=True)
            return None
        print(f"» {part} took {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        return json.loads(out.read_text(encoding="utf-8"))


def collect(mode: str, parts: list[str]) -> dict[str, Any]:
    """Run the chosen parts at the chosen size; return every figure plus the context."""
    started = time.perf_counter()
    results: dict[str, Any] = {
        "mode": mode,
        "settings": {part: SETTINGS[mode][part] for part in parts},
        "machine": machine_facts(),
    }
    for part in parts:
        results[part] = _run_part(part, SETTINGS[mode][part])
    results["seconds"] = time.perf_counter() - started
    return results


def markdown(results: dict[str, Any]) -> str:
    """All tables and the target verdicts, as markdown."""
    sections = []
    if results.get("polling"):
        sections += ["### Polling efficiency", "", _report.polling_table(results["polling"]), ""]
    if results.get("overhead"):
        sections += ["### Client overhead", "", _report.overhead_table(results["overhead"]), ""]
    if results.get("scale"):
        sections += ["### Scale", "", _report.scale_table(results["scale"]), ""]
    found = _report.verdicts(results)
    missed = [v for v in found if not v.met]
    sections.append(
        f"Targets met: {len(found) - len(missed)} of {len(found)}"
        + (
            "."
            if not missed
            else "; missed: "
            + "; ".join(f"{v.what} = {v.figure} (target {v.target})" for v in missed)
            + "."
        )
    )
    return "\n".join(sections)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (``nox -s bench`` runs ``--quick``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="mode", const="quick")
    size.add_argument("--full", action="store_const", dest="mode", const="full")
    parser.add_argument("--only", action="append", choices=PARTS, help="run only this part")
    parser.add_argument("--json", type=Path, help="also save every figure to this file")
    parser.add_argument(
        "--from-json", type=Path, help="render saved figures instead of running anything"
    )
    parser.add_argument(
        "--write-docs",
        action="store_true",
        help="write docs/performance.md and the plot (implied by --full)",
    )
    args = parser.parse_args(argv)
    mode = args.mode or "quick"
    if args.from_json:
        results = json.loads(args.from_json.read_text(encoding="utf-8"))
    else:
        results = collect(mode, args.only or list(PARTS))
        results["command"] = shlex.join(["python", "benchmarks/run.py", f"--{mode}"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(markdown(results))
    if args.write_docs or (mode == "full" and not args.from_json):
        page = _page.write(results, docs=REPO / "docs")
        print(f"\nwrote {page.relative_to(REPO)}", file=sys.stderr)
    failed = [part for part in PARTS if part in results and results[part] is None]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
