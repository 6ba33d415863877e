#!/usr/bin/env python3
"""Resolving against an index without PEP 658 metadata (issue 16): `uv pip compile` of
tests/resolving.py's tree (three big wheels with hundreds to thousands of files, a small
tree, a backtrack) directly against the fake upstream, and through `cachepi serve`, cold (a
new cache) and warm (the same cache, a new uv cache). Upstream bytes are what the fake
upstream put on the wire for files (HEADs, ranges, whole files); times are uv's, medians.

The upstream answers each request after a delay, as a remote index does: without one, the
loopback upstream answers in a fraction of a millisecond and a proxy's fixed costs per
request are all there is to measure; the targets are against a remote index (the issue's
1.2 s directly was against one).

    python -m bench.no_pep658 [--runs 3] [--delays 0,0.02] [--output FILE]

from the repository root. Targets: cold at most 2x the direct upstream bytes + 1 MiB and
1.2x the direct time (with a delay), warm no file bytes, the same pins. A last section
weighs an upstream that does no ranges (whole wheels, once; reported, no target).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.cluster import free_ports
from tests.fakeupstream.metered import MeteredUpstream
from tests.resolving import PINS, populate, uv_compile
from tests.served import ServedProxy

from bench.tools import write_results

MIB = 1024 * 1024


@dataclass
class Row:
    delay: float
    how: str  # direct, cold, warm
    seconds: list[float]
    upstream_bytes: list[int]
    pins_ok: bool

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def bytes(self) -> int:
        return max(self.upstream_bytes)


async def measure(upstream: MeteredUpstream, index_url: str, home: Path, row: Row) -> None:
    upstream.reset_counts()
    resolution = await uv_compile(index_url, home)
    row.seconds.append(resolution.seconds)
    row.upstream_bytes.append(upstream.sent("/files/*", None))
    row.pins_ok = row.pins_ok and resolution.pins == PINS
    if resolution.pins != PINS:
        print(resolution.output, file=sys.stderr)


async def one_delay(
    upstream: MeteredUpstream, work: Path, delay: float, runs: int, workers: int
) -> list[Row]:
    upstream.clear()
    if delay:
        upstream.delay("/*", delay)
    rows = [Row(delay, how, [], [], True) for how in ("direct", "cold", "warm")]
    direct, cold, warm = rows
    for run in range(runs):
        await measure(upstream, upstream.url, work / f"direct-{delay}-{run}", direct)
        cache = work / f"cache-{delay}-{run}"
        served = ServedProxy(upstream.url, cache, free_ports(1)[0], workers=workers)
        await served.start()
        try:
            await measure(upstream, served.index_url, work / f"cold-{delay}-{run}", cold)
            await measure(upstream, served.index_url, work / f"warm-{delay}-{run}", warm)
        finally:
            await served.stop()
        shutil.rmtree(cache, ignore_errors=True)
    return rows


def verdicts(rows: list[Row]) -> list[str]:
    lines = []
    by = {(row.delay, row.how): row for row in rows}
    for delay in sorted({row.delay for row in rows}):
        direct, cold, warm = (by[delay, how] for how in ("direct", "cold", "warm"))
        bound = 2 * direct.bytes + MIB
        lines.append(
            f"- delay {delay * 1000:g} ms: cold upstream bytes {cold.bytes:,} ≤ 2x "
            f"{direct.bytes:,} + 1 MiB = {bound:,}: {'met' if cold.bytes <= bound else 'NOT met'}"
        )
        ratio = cold.median / direct.median
        met = "met" if ratio <= 1.2 else ("NOT met" if delay else "not a target without delay")
        lines.append(f"- delay {delay * 1000:g} ms: cold time {ratio:.2f}x direct ≤ 1.2x: {met}")
        lines.append(
            f"- delay {delay * 1000:g} ms: warm file bytes {warm.bytes:,} = 0: "
            f"{'met' if warm.bytes == 0 else 'NOT met'}"
        )
        pins = all(row.pins_ok for row in (direct, cold, warm))
        lines.append(f"- delay {delay * 1000:g} ms: same pins: {'met' if pins else 'NOT met'}")
    return lines


def table(rows: list[Row]) -> list[str]:
    lines = [
        "| upstream delay | resolution | uv time, median (s) | upstream file bytes | pins |",
        "| ---: | --- | ---: | ---: | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row.delay * 1000:g} ms | {row.how} | {row.median:.3f} | {row.bytes:,} | "
            f"{'as direct' if row.pins_ok else 'DIFFERENT'} |"
        )
    return lines


async def without_ranges(work: Path, scale: float, workers: int) -> list[str]:
    async with MeteredUpstream(format="html", pep700=False, ranges=False) as upstream:
        populate(upstream, scale)
        direct = Row(0, "direct", [], [], True)
        cold = Row(0, "cold", [], [], True)
        warm = Row(0, "warm", [], [], True)
        await measure(upstream, upstream.url, work / "nr-direct", direct)
        served = ServedProxy(upstream.url, work / "nr-cache", free_ports(1)[0], workers=workers)
        await served.start()
        try:
            await measure(upstream, served.index_url, work / "nr-cold", cold)
            await measure(upstream, served.index_url, work / "nr-warm", warm)
        finally:
            await served.stop()
    return [
        "| resolution | uv time (s) | upstream file bytes | pins |",
        "| --- | ---: | ---: | --- |",
        *(
            f"| {row.how} | {row.median:.3f} | {row.bytes:,} | "
            f"{'as direct' if row.pins_ok else 'DIFFERENT'} |"
            for row in (direct, cold, warm)
        ),
    ]


async def main(args: argparse.Namespace) -> str:
    work = Path(tempfile.mkdtemp(prefix="cachepi-bench-no-pep658-"))
    try:
        async with MeteredUpstream(format="html", pep700=False) as upstream:
            populate(upstream, args.scale)
            rows = []
            for delay in args.delays:
                rows += await one_delay(upstream, work, delay, args.runs, args.workers)
        plain = await without_ranges(work, args.scale, args.workers)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return "\n".join(
        [
            "# Resolving an index without PEP 658 through cachepi",
            "",
            f"`python -m bench.no_pep658`: {args.runs} runs, `cachepi serve --workers "
            f"{args.workers}`, tree scale {args.scale:g} (tests/resolving.py), on 127.0.0.1.",
            "",
            *table(rows),
            "",
            "## Targets",
            "",
            *verdicts(rows),
            "",
            "## An upstream without ranges (whole wheels, fetched once and kept)",
            "",
            *plain,
            "",
        ]
    )


def cli() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--delays",
        type=lambda text: [float(part) for part in text.split(",")],
        default=[0.0, 0.02],
        help="seconds the upstream waits before each answer, comma-separated",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="of the big wheels' sizes")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output", type=Path, help="also write the markdown here")
    args = parser.parse_args()
    report = asyncio.run(main(args))
    print(report)
    if args.output is not None:
        write_results(args.output, report)


if __name__ == "__main__":
    cli()
