#!/usr/bin/env python3
"""A hot index page whose upstream takes 3 s (issue 17): `cachepi serve --workers 2` with
`STALE_WHILE_REVALIDATE` at its default (a day) and at 0 (before it existed), in the same
run, in front of the fake upstream (in this process), on 127.0.0.1.

Two scenes for each:

- **stale**: the page is past its TTL; --clients clients (keep-alive, as pip's) ask for it
  --requests times in all, at once. Latency of each answer, how many were marked stale,
  and how many revalidations the upstream saw (the one single-flight revalidation, or more).
- **hot**: the page, fresh, is asked for all the time (each client again --pause after each
  answer) through 1.5 of its TTLs (so past its expiry): the latency, stale answers and
  upstream requests over that time. With the bound, the page is refreshed ahead of its
  expiry and no answer waits.

The new page (a version added upstream) must be what clients see once revalidated.

    python -m bench.swr [--requests 200] [--clients 8] [--ttl 10] [--output FILE]

from the repository root. Targets (stale, with the bound): p99 < 50 ms, exactly one
revalidation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from tests.cluster import free_ports
from tests.fakeupstream import FakeUpstream
from tests.served import ServedProxy

from bench.tools import write_results
from cachepi.freshness import refresh_margin

JSON = {"Accept": "application/vnd.pypi.simple.v1+json"}
PROJECT = "hot"
PAGE = f"/simple/{PROJECT}/"
DAY = 86400


@dataclass
class Scene:
    bound: int  # STALE_WHILE_REVALIDATE
    name: str  # stale, hot
    seconds: list[float] = field(default_factory=list)  # each answer's latency
    stale: int = 0  # answers marked X-Cachepi-Stale
    upstream: int = 0  # page requests the upstream saw during the scene (and its revalidation)
    wrong: int = 0  # answers other than a 200 with the page (old or new)

    def percentile(self, share: float) -> float:
        """Nearest rank: the latency `share` of the answers took at most."""
        ordered = sorted(self.seconds)
        return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


async def ask(session: aiohttp.ClientSession, url: str, scene: Scene, versions: int) -> None:
    started = time.perf_counter()
    async with session.get(url, headers=JSON) as response:
        body = await response.read()
        scene.seconds.append(time.perf_counter() - started)
        scene.stale += response.headers.get("X-Cachepi-Stale") == "1"
        files = len(json.loads(body)["files"]) if response.status == 200 else 0
        scene.wrong += files not in (versions - 1, versions)


async def settled(upstream: FakeUpstream, within: float) -> None:
    """Wait until the upstream has answered every page request it got."""
    deadline = time.monotonic() + within
    while any(r.finished is None for r in upstream.requests_to(PAGE)):
        if time.monotonic() > deadline:
            raise RuntimeError("a revalidation did not end")
        await asyncio.sleep(0.05)


async def stale_scene(
    upstream: FakeUpstream, url: str, scene: Scene, args: argparse.Namespace, versions: int
) -> None:
    before = upstream.count(PAGE)
    per_client = [args.requests // args.clients] * args.clients
    per_client[0] += args.requests - sum(per_client)

    async def client(count: int) -> None:
        async with aiohttp.ClientSession() as session:
            for _ in range(count):
                await ask(session, url, scene, versions)

    await asyncio.gather(*(client(count) for count in per_client))
    await settled(upstream, args.upstream_seconds + 15)
    scene.upstream = upstream.count(PAGE) - before


async def hot_scene(
    upstream: FakeUpstream, url: str, scene: Scene, args: argparse.Namespace, versions: int
) -> None:
    before = upstream.count(PAGE)
    until = time.monotonic() + 1.5 * args.ttl

    async def client() -> None:
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < until:
                await ask(session, url, scene, versions)
                await asyncio.sleep(args.pause)

    await asyncio.gather(*(client() for _ in range(args.clients)))
    await settled(upstream, args.upstream_seconds + 15)
    scene.upstream = upstream.count(PAGE) - before


async def one_bound(bound: int, args: argparse.Namespace, work: Path) -> list[Scene]:
    async with FakeUpstream(format="json") as upstream:
        upstream.add_project(PROJECT, ["1.0"], sdist=False)
        served = ServedProxy(
            upstream.url, work / f"cache-{bound}", free_ports(1)[0], workers=args.workers,
            options=("--index-ttl", str(args.ttl), "--stale-while-revalidate", str(bound)),
        )  # fmt: skip
        await served.start()
        try:
            url = served.index_url + PROJECT + "/"
            for _ in range(8):  # on new connections: every worker has the page rendered
                async with aiohttp.ClientSession() as session:
                    await ask(session, url, Scene(bound, "warm"), 1)
            upstream.delay(PAGE, args.upstream_seconds)
            fetched = upstream.requests_to(PAGE)[-1].started
            upstream.add_project(PROJECT, ["2.0"], sdist=False)  # what revalidating brings
            # Past the TTL, without a request in its last part (it would refresh ahead).
            await asyncio.sleep(fetched + args.ttl + 0.2 - asyncio.get_running_loop().time())
            stale = Scene(bound, "stale")
            await stale_scene(upstream, url, stale, args, versions=2)
            hot = Scene(bound, "hot")
            upstream.add_project(PROJECT, ["3.0"], sdist=False)
            await hot_scene(upstream, url, hot, args, versions=3)
        finally:
            await served.stop()
    return [stale, hot]


def table(scenes: list[Scene]) -> list[str]:
    lines = [
        "| STALE_WHILE_REVALIDATE | scene | answers | p50 (ms) | p99 (ms) | max (ms) "
        "| marked stale | upstream page requests | wrong |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in scenes:
        lines.append(
            f"| {s.bound} | {s.name} | {len(s.seconds)} | {s.percentile(0.5) * 1000:.1f} | "
            f"{s.percentile(0.99) * 1000:.1f} | {max(s.seconds) * 1000:.1f} | {s.stale} | "
            f"{s.upstream} | {s.wrong} |"
        )
    return lines


def verdicts(scenes: list[Scene]) -> list[str]:
    by = {(s.bound, s.name): s for s in scenes}
    stale, hot = by[DAY, "stale"], by[DAY, "hot"]
    p99 = stale.percentile(0.99) * 1000

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    return [
        f"- stale page, with the bound: p99 {p99:.1f} ms < 50 ms: {met(p99 < 50)}",
        f"- stale page, with the bound: {stale.upstream} revalidation(s) = 1: "
        f"{met(stale.upstream == 1)}",
        f"- hot page, with the bound: {hot.stale} answers marked stale = 0 (never stale while "
        f"in use): {met(hot.stale == 0)}",
        f"- every answer the page, old or new: {met(not any(s.wrong for s in scenes))}",
    ]


async def main(args: argparse.Namespace) -> str:
    work = Path(tempfile.mkdtemp(prefix="cachepi-bench-swr-"))
    try:
        scenes = []
        for bound in (DAY, 0):
            scenes += await one_bound(bound, args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return "\n".join(
        [
            "# A hot page behind a slow upstream: stale-while-revalidate and refresh-ahead",
            "",
            f"`python -m bench.swr`: `cachepi serve --workers {args.workers} --index-ttl "
            f"{args.ttl}`, page answers of the upstream taking {args.upstream_seconds:g} s, "
            f"{args.clients} keep-alive clients; stale: {args.requests} requests in all, "
            f"all clients at once, past the TTL; hot: each client asking again "
            f"{args.pause * 1000:g} ms after each answer, for {1.5 * args.ttl:g} s. On "
            "127.0.0.1, the upstream and the clients in one process.",
            "",
            *table(scenes),
            "",
            "## Targets",
            "",
            *verdicts(scenes),
            "",
        ]
    )


def cli() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--ttl", type=int, default=10, help="the index TTL, seconds")
    parser.add_argument("--upstream-seconds", type=float, default=3.0)
    parser.add_argument("--pause", type=float, default=0.05, help="between a hot client's asks")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output", type=Path, help="also write the markdown here")
    args = parser.parse_args()
    if args.upstream_seconds >= refresh_margin(args.ttl):
        parser.error("the upstream must answer within the refresh margin of the TTL")
    report = asyncio.run(main(args))
    print(report)
    if args.output is not None:
        write_results(args.output, report)


if __name__ == "__main__":
    cli()
