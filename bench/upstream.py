"""The benchmark's upstream: tests/fakeupstream in a process of its own, so its CPU is not
counted as the proxy's.

    python -m bench.upstream --page-files 5000 --file-mb 30 ...

It builds the benchmark's projects, writes the install set's files to --find-links-dir,
prints one JSON line (the manifest: URLs and what each file is) and serves until its stdin
closes or it gets SIGTERM. A second port answers `GET /count?prefix=/files/x`: how many GETs
of paths starting with that prefix the upstream has answered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
from pathlib import Path

from aiohttp import web
from tests.fakeupstream import Dist, FakeUpstream

FILE_PROJECT = "bench-file"  # one big wheel, served cached
MISS_PROJECT = "bench-miss"  # one bigger wheel, fetched through a fresh proxy
HERD_PROJECT = "bench-herd"  # one wheel per herd run, each asked for by many clients at once
PAGE_PROJECT = "bench-page"  # a project page with many files ("big")
# The cluster section (--cluster): one wheel served cached by S3-backed and local nodes, and
# one wheel per stampede run, answered late (--stampede-delay) so the first requests overlap.
CLUSTER_FILE_PROJECT = "bench-cluster-file"
STAMPEDE_PROJECT = "bench-stampede"
# The install set: small wheels and sdists, a few dependencies; the first one's page is the
# "small" page.
INSTALL_PREFIX = "bench-pkg-"


def describe(dist: Dist) -> dict[str, object]:
    return {
        "project": dist.project,
        "filename": dist.filename,
        "size": dist.size,
        "sha256": dist.sha256,
    }


def install_set(upstream: FakeUpstream, count: int) -> list[str]:
    """`count` projects, three versions each; every fourth one needs the next project."""
    names = [f"{INSTALL_PREFIX}{i:02d}" for i in range(count)]
    for i, name in enumerate(names):
        deps = [f"{names[i + 1]}>=1.0"] if i % 4 == 0 and i + 1 < count else []
        upstream.add_project(name, ["1.0", "1.1", "2.0"], deps=deps, requires_python=">=3.8")
    return names


def populate(upstream: FakeUpstream, args: argparse.Namespace) -> dict[str, object]:
    (cached,) = upstream.add_project(FILE_PROJECT, ["1.0"], sdist=False, big_mb=args.file_mb)
    (miss,) = upstream.add_project(MISS_PROJECT, ["1.0"], sdist=False, big_mb=args.miss_mb)
    herd = upstream.add_project(
        HERD_PROJECT, [f"1.{i}" for i in range(args.herd_files)], sdist=False, big_mb=args.herd_mb
    )
    # Wheel and sdist per version: half as many versions as files.
    versions = [f"{i // 100}.{i % 100}" for i in range(args.page_files // 2)]
    upstream.add_project(PAGE_PROJECT, versions, requires_python=">=3.8")
    packages = install_set(upstream, args.install_packages)
    find_links = Path(args.find_links_dir)
    find_links.mkdir(parents=True, exist_ok=True)
    for name in packages:
        for dist in upstream.dists(name):
            (find_links / dist.filename).write_bytes(dist.read_bytes())
    cluster = None
    if args.cluster_file_mb > 0:
        (cluster_file,) = upstream.add_project(
            CLUSTER_FILE_PROJECT, ["1.0"], sdist=False, big_mb=args.cluster_file_mb
        )
        stampede = upstream.add_project(
            STAMPEDE_PROJECT,
            [f"1.{i}" for i in range(args.stampede_files)],
            sdist=False,
            big_mb=args.stampede_mb,
        )
        for dist in stampede:
            upstream.delay(upstream.file_path(dist.filename), args.stampede_delay)
        cluster = {
            "file": describe(cluster_file),
            "stampede": [describe(d) for d in stampede],
            "stampede_delay": args.stampede_delay,
        }
    return {
        "cluster": cluster,
        "file": describe(cached),
        "miss": describe(miss),
        "herd": [describe(d) for d in herd],
        "pages": {
            "big": {"project": PAGE_PROJECT, "files": len(upstream.dists(PAGE_PROJECT))},
            "small": {"project": packages[0], "files": len(upstream.dists(packages[0]))},
        },
        "install": packages,
        "find_links": str(find_links),
    }


async def count_handler(request: web.Request) -> web.Response:
    upstream: FakeUpstream = request.app["upstream"]
    return web.json_response({"count": upstream.count_prefix(request.query["prefix"])})


async def serve(args: argparse.Namespace) -> None:
    upstream = FakeUpstream()
    manifest = populate(upstream, args)
    control = web.Application()
    control["upstream"] = upstream
    control.router.add_get("/count", count_handler)
    runner = web.AppRunner(control, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    async with upstream:
        await site.start()
        manifest |= {
            "url": upstream.url,
            "origin": upstream.origin,
            "control": f"http://127.0.0.1:{runner.addresses[0][1]}",
        }
        print(json.dumps(manifest), flush=True)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        # A daemon thread: a blocked read must not keep the process from exiting.
        threading.Thread(target=_on_eof, args=(loop, stop), daemon=True).start()
        await stop.wait()
    await runner.cleanup()


def _on_eof(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Set `stop` once stdin closes: the harness went away, however it went."""
    sys.stdin.buffer.read()
    loop.call_soon_threadsafe(stop.set)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file-mb", type=float, default=30)
    parser.add_argument("--miss-mb", type=float, default=100)
    parser.add_argument("--herd-mb", type=float, default=20)
    parser.add_argument("--herd-files", type=int, default=6)
    parser.add_argument("--page-files", type=int, default=5000)
    parser.add_argument("--install-packages", type=int, default=30)
    parser.add_argument("--find-links-dir", required=True)
    parser.add_argument("--cluster-file-mb", type=float, default=0, help="0: no cluster files")
    parser.add_argument("--stampede-mb", type=float, default=20)
    parser.add_argument("--stampede-files", type=int, default=3)
    parser.add_argument("--stampede-delay", type=float, default=1.0, help="seconds")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
