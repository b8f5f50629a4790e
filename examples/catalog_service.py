"""Generate catalogs from inside an async service with ``aimlmusic.catalog``.

A tiny job queue: the service accepts catalog jobs, a worker runs them one at a time with
``run_catalog`` (sharing one client, so one request budget), and progress goes to the log.
Jobs survive restarts: rerunning a job resumes it from its journal without paying twice.

    python examples/catalog_service.py                 # the emulator (no key needed)
    AIML_API_KEY=... python examples/catalog_service.py --real
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream

import aimlmusic
from aimlmusic.catalog import CatalogError, CatalogEvent, SongState, run_catalog

log = logging.getLogger("catalog-service")
HERE = Path(__file__).parent


def progress(job: str) -> Callable[[CatalogEvent], None]:
    """An ``on_event`` callback logging one job's songs as they finish."""

    def on_event(event: CatalogEvent) -> None:
        if event.kind == "state" and event.state in (
            SongState.DOWNLOADED,
            SongState.FAILED,
            SongState.AMBIGUOUS,
        ):
            counts = event.progress.counts
            log.info(
                "[%s] %s %s (%d/%d done)",
                job,
                event.key,
                event.state.value,
                counts[SongState.DOWNLOADED],
                event.progress.total,
            )
        elif event.kind == "throttled":
            log.warning("[%s] throttled by the API, slowing down", job)

    return on_event


async def worker(
    client: aimlmusic.AsyncMusicClient, jobs: MemoryObjectReceiveStream[tuple[str, Path]]
) -> None:
    """Run catalog jobs one after the other; a bad catalog fails its job, not the service."""
    async with jobs:
        async for catalog, output in jobs:
            job = output.name
            try:
                summary = await run_catalog(client, catalog, output, on_event=progress(job))
            except CatalogError as exc:
                # The problems are the message: no traceback wanted.
                log.error("[%s] rejected, nothing spent:\n%s", job, exc)  # noqa: TRY400
                continue
            log.info(
                "[%s] %d/%d downloaded into %s, %g credits; manifest %s",
                job,
                summary.downloaded,
                summary.total,
                output,
                summary.credits_used,
                summary.manifest_path,
            )


def make_client(real: bool) -> aimlmusic.AsyncMusicClient:
    if real:
        return aimlmusic.AsyncMusicClient()  # AIML_API_KEY from the environment
    from aimlmusic.emulator import TEST_API_KEY, Emulator, EmulatorConfig

    emulator = Emulator(EmulatorConfig(time_scale=100))  # a 55 s song takes 0.55 s
    return aimlmusic.AsyncMusicClient(
        TEST_API_KEY,
        base_url="http://127.0.0.1",
        transport=httpx.ASGITransport(app=emulator.app),
        clock=emulator.clock,
    )


async def main(real: bool, output_root: Path) -> None:
    send, receive = anyio.create_memory_object_stream[tuple[str, Path]](8)
    async with make_client(real) as client, anyio.create_task_group() as tg:
        tg.start_soon(worker, client, receive)
        async with send:  # the "API" of the service: enqueue jobs
            await send.send((HERE / "catalog.jsonl", output_root / "jsonl"))
            await send.send((HERE / "catalog.csv", output_root / "csv"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="use the real API (AIML_API_KEY)")
    parser.add_argument("-o", "--output", type=Path, default=Path("service-output"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is too much
    anyio.run(main, args.real, args.output)
