#!/usr/bin/env python3
"""The dashboard and /metrics of a big cache: `cachepi serve --workers 2` on a cache of
200,000 files (records added through the metadata store, each file a sparse file of its
size, nothing downloaded), all on 127.0.0.1. The reference, measured in the same run, is
`/health` on the idle server; every figure is also given as a ratio to it:

- `GET /` (the dashboard) and `GET /metrics`, one request at a time;
- `/health` while 4 clients reload `/` as fast as they can: what every other request of a
  worker waits while the dashboard's figures are gathered.

    python -m bench.dashboard [--files 200000] [--seconds 5]

from the repository root. To compare two versions, run it with each one's `src` first on
PYTHONPATH (the server runs whichever cachepi the bench imports).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import aiohttp
from tests.cluster import free_ports

from bench.load import check_local
from bench.procs import Processes, log, wait_http
from bench.tools import WORK, server_env
from cachepi.store import DATABASE
from cachepi.store.sqlite import SqliteMetadata

CLIENTS = 4  # reloading the dashboard at once
PROJECTS = 5000


def make_cache(root: Path, files: int) -> int:
    """`files` stored files over PROJECTS projects, as the server finds them at its start;
    returns their total size."""
    shutil.rmtree(root, ignore_errors=True)
    store = SqliteMetadata(root / DATABASE)
    total = 0
    now = time.time()
    try:
        for i in range(files):
            sha256 = hashlib.sha256(str(i).encode()).hexdigest()
            size = 10_000 + i % 7 * 100_000
            path = root / "blobs" / sha256[:2] / sha256
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as file:
                file.truncate(size)  # sparse: no disk space taken
            project = f"project-{i % PROJECTS}"
            # One at a time: every version of the store has add_blob, so older ones run too.
            store.add_blob(sha256, size, now - files + i, project, f"{project}-{i}.tar.gz")
            total += size
    finally:
        store.close()
    return total


async def timed_get(session: aiohttp.ClientSession, url: str) -> float:
    started = time.perf_counter()
    async with session.get(check_local(url)) as response:
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {url} answered {response.status}")
    return time.perf_counter() - started


async def series(url: str, count: int, pause: float = 0.0) -> list[float]:
    """Latencies of `count` GETs, each on a new connection (so both workers answer)."""
    took = []
    for _ in range(count):
        async with aiohttp.ClientSession() as session:
            took.append(await timed_get(session, url))
        await asyncio.sleep(pause)
    return took


async def under_hammer(base: str, seconds: float) -> tuple[list[float], int]:
    """/health latencies while CLIENTS clients reload `/`; and how many `/` they got."""
    stop = time.monotonic() + seconds
    pages = 0

    async def reload() -> None:
        nonlocal pages
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < stop:
                await timed_get(session, base + "/")
                pages += 1

    hammers = [asyncio.create_task(reload()) for _ in range(CLIENTS)]
    await asyncio.sleep(0.5)  # they are all at it
    probes = []
    while time.monotonic() < stop:
        probes += await series(base + "/health", 1, pause=0.05)
    await asyncio.gather(*hammers)
    return probes, pages


def ms(values: list[float], which: str) -> float:
    return 1000 * (statistics.median(values) if which == "p50" else max(values))


async def measure(base: str, seconds: float) -> list[tuple[str, list[float]]]:
    await series(base + "/", 2)  # warm: imports, first queries
    health = await series(base + "/health", 50, pause=0.01)
    dashboard = await series(base + "/", 20, pause=0.25)
    metrics = await series(base + "/metrics", 20, pause=0.25)
    hammered, pages = await under_hammer(base, seconds)
    log(f"{CLIENTS} clients got {pages} dashboards in {seconds:.0f} s")
    return [
        ("/health, idle (the reference)", health),
        ("GET / (dashboard)", dashboard),
        ("GET /metrics", metrics),
        (f"/health while {CLIENTS} clients reload /", hammered),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=5.0, help="of reloading /")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    cache = WORK / "dashboard-cache"
    log(f"making a cache of {args.files:,} files")
    total = make_cache(cache, args.files)
    with Processes(WORK) as procs:
        (port,) = free_ports(1)
        argv = [
            sys.executable, "-m", "cachepi", "serve", "--host", "127.0.0.1", "--port", port,
            "--workers", 2, "--cache-dir", cache, "--cache-size", total * 2,
            "--index-url", "http://127.0.0.1:9/simple/", "--access-log", "off",
        ]  # fmt: skip
        server = procs.start("dashboard-cachepi", argv, env=server_env(), cwd=WORK)
        base = f"http://127.0.0.1:{port}"
        wait_http(server, base + "/health", timeout=300)  # the start lists every file
        log("measuring")
        rows = asyncio.run(measure(base, args.seconds))
    reference = ms(rows[0][1], "p50")
    source = os.path.dirname(sys.modules["cachepi"].__file__ or "")
    print(f"\n{args.files:,} files, cachepi from {source}")
    print("| measurement | p50 ms | max ms | p50 ÷ reference | max ÷ reference |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, values in rows:
        p50, worst = ms(values, "p50"), ms(values, "max")
        ratios = f"{p50 / reference:.1f}x | {worst / reference:.1f}x"
        print(f"| {label} | {p50:.1f} | {worst:.1f} | {ratios} |")
    shutil.rmtree(cache, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
