"""PyPI-scale pages: cachepi's memory and latency with big pages, in one run.

    python -m bench.pages            # writes bench/results/<date>-pages.md
    python -m bench.pages --quick    # smaller and shorter: bench/.work/pages-quick.md

from the repository root, in the project's environment (the test extra). Everything runs on
127.0.0.1: a fake upstream (tests/fakeupstream) in this process, `cachepi serve` as
subprocesses (tests/served.py), the clients here.

1. The project list: 800,000 names served as HTML (42 MB; PyPI's is ~50 MB) through 2
   workers: the first request, then each of the six variants (HTML and JSON, each
   identity, gzip and zstd) from every worker, then warm requests of each (by curl), and
   the same for the biggest file from a bare sendfile server, the floor; summed RSS
   (supervisor and workers) sampled while they run, and after. Then all of it again with
   3 workers: what one more worker costs (in RSS, and in PSS, which counts the pages a
   worker shares with the others once).
2. 150 projects of 3,000 files, each page asked in pip's, uv's and a browser's way by 16
   clients at once through 2 workers: summed RSS during and after.
3. A mixed load (the list, big and small pages, every format) through 2 workers: each
   process's RSS once it is steady.

The figures are medians and peaks of this run only; the targets they are held to are
those of issue 15 (`TARGETS` below).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import socket
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from tests.cluster import free_ports
from tests.fakeupstream import FakeUpstream
from tests.fakeupstream.big import project_json, project_list_html
from tests.served import RssWatch, ServedProxy, memory_kib

from bench.procs import log
from bench.tools import ROOT, WORK, first_line, write_results

MIB = 1024 * 1024
HTML = "text/html"
JSON = "application/vnd.pypi.simple.v1+json"
PIP = {
    "Accept": f"{JSON}, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01",
    "Accept-Encoding": "gzip, deflate",
}
UV = {
    "Accept": f"{JSON}, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01",
    "Accept-Encoding": "gzip, deflate, br, zstd",
}
BROWSER = {
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Accept-Encoding": "gzip, deflate, br, zstd",
}
VARIANTS = [
    (kind, {"Accept": kind, "Accept-Encoding": coding})
    for kind in (HTML, JSON)
    for coding in ("identity", "gzip", "zstd")
]


@dataclass(frozen=True)
class Plan:
    names: int  # in the project list
    projects: int
    files: int  # per project
    mixed_seconds: float
    warm_requests: int  # of each variant, for the median


FULL = Plan(names=800_000, projects=150, files=3000, mixed_seconds=20, warm_requests=9)
QUICK = Plan(names=80_000, projects=15, files=1000, mixed_seconds=3, warm_requests=3)

# Issue 15's targets: (figure, bound, what it says).
TARGETS = [
    (
        "list-warm-max",
        0.1,
        "a warm request of any variant of the 800,000-name list ≤ 0.1 s (the slowest"
        " variant's median)",
    ),
    ("list-rss-during-2", 350, "summed RSS, 2 workers, during the list's requests ≤ 350 MB"),
    ("list-rss-after-2", 350, "summed RSS, 2 workers, after them ≤ 350 MB"),
    ("list-rss-3", 380, "summed RSS, 3 workers, during and after ≤ 350 + 30 MB"),
    ("list-rss-per-worker", 30, "the third worker adds ≤ 30 MB of summed RSS (peak)"),
    ("list-pss-per-worker", 30, "the third worker adds ≤ 30 MB of summed PSS (after)"),
    ("projects-rss-during", 400, "150 x 3,000 files in 3 clients' formats: ≤ 400 MB"),
]


@dataclass
class Figures:
    values: dict[str, float] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)

    def add(self, key: str, value: float, text: str) -> None:
        self.values[key] = value
        self.lines.append(f"- {text}")
        log(f"  {text}")


def mib(kib: int) -> float:
    return kib / 1024


def pss_kib(pid: int) -> int:
    """A process's proportional set size: its resident pages, each shared one divided by
    the processes sharing it; 0 if it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    line = next((line for line in text.splitlines() if line.startswith("Pss:")), "Pss: 0 kB")
    return int(line.split()[1])


def sendfile_server(path: Path) -> tuple[int, threading.Thread]:
    """A bare blocking server sending `path` with sendfile to each connection: the floor for
    sending it on this machine. Returns its port; it serves until the process ends."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    size = path.stat().st_size

    def serve() -> None:
        while True:
            client, _ = listener.accept()
            with client, path.open("rb") as file:
                client.recv(65536)
                head = f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
                client.sendall(head.encode())
                client.sendfile(file)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


async def get(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> tuple[int, int, float]:
    """(status, body bytes, seconds until the last byte) of one GET on a new connection."""
    began = time.monotonic()
    async with session.get(url, headers=headers) as response:
        body = await response.read()
    return response.status, len(body), time.monotonic() - began


async def curl(url: str, headers: dict[str, str]) -> tuple[int, int, float]:
    """(status, body bytes, seconds until the last byte) of one GET by curl: a client in C,
    so that what is timed is the server's answer more than the client's reading."""
    argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    process = await asyncio.create_subprocess_exec(
        *argv, url, stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL
    )
    out, _ = await process.communicate()
    status, size, seconds = out.decode().split()
    return int(status), int(size), float(seconds)


def new_session() -> aiohttp.ClientSession:
    """Raw bodies (what was sent is what is counted), a connection per request: the kernel
    spreads connections over the workers."""
    connector = aiohttp.TCPConnector(force_close=True, limit=64)
    timeout = aiohttp.ClientTimeout(total=120)
    return aiohttp.ClientSession(connector=connector, auto_decompress=False, timeout=timeout)


async def serving(
    upstream: FakeUpstream, workers: int, name: str, work: Callable[[ServedProxy], Awaitable[None]]
) -> None:
    cache = WORK / f"pages-{name}"
    shutil.rmtree(cache, ignore_errors=True)
    (port,) = free_ports(1)
    served = ServedProxy(upstream.url, cache / "cache", port, workers=workers)
    await served.start(within=60)
    try:
        await work(served)
    finally:
        await served.stop()
        shutil.rmtree(cache, ignore_errors=True)


# -- 1. the project list --------------------------------------------------------------------


async def bench_list(plan: Plan, upstream: FakeUpstream, workers: int, figures: Figures) -> None:
    async def work(served: ServedProxy) -> None:
        idle = served.rss_kib()
        watch = RssWatch(served)
        async with new_session() as session:
            status, size, first = await watch.during(get(session, served.index_url, PIP))
            assert status == 200, status
            figures.add(
                f"list-first-{workers}",
                first,
                f"{workers} workers: idle {mib(idle):.0f} MB; first request (pip's: JSON, gzip)"
                f" {first:.2f} s",
            )

            async def every_variant_from_every_worker() -> None:
                for _ in range(3 * workers):  # new connections: every worker gets some
                    await asyncio.gather(
                        *(get(session, served.index_url, headers) for _, headers in VARIANTS)
                    )

            began = time.monotonic()
            await watch.during(every_variant_from_every_worker())
            took = time.monotonic() - began
            warm = {}
            for kind, headers in VARIANTS:
                times = []
                for _ in range(plan.warm_requests):
                    status, size, seconds = await watch.during(curl(served.index_url, headers))
                    assert status == 200, status
                    times.append(seconds)
                label = f"{'HTML' if kind == HTML else 'JSON'} {headers['Accept-Encoding']}"
                warm[label] = (statistics.median(times), max(times), size)
            biggest = served.cache_dir.parent / "list.html"  # the same bytes, as a plain file
            async with session.get(served.index_url, headers=VARIANTS[0][1]) as response:
                biggest.write_bytes(await response.read())
            port, _ = sendfile_server(biggest)
            floor = [
                (await curl(f"http://127.0.0.1:{port}/", {}))[2] for _ in range(plan.warm_requests)
            ]
        await asyncio.sleep(1.0)
        after = served.rss_kib()
        pss = sum(pss_kib(pid) for pid in served.pids())
        per_process = ", ".join(f"{mib(memory_kib(pid)):.0f}" for pid in served.pids())
        figures.add(
            f"list-rss-during-{workers}",
            mib(watch.peak_kib),
            f"{workers} workers: the six variants from every worker in {took:.1f} s; summed"
            f" RSS idle {mib(idle):.0f} MB, peak {mib(watch.peak_kib):.0f} MB during,"
            f" {mib(after):.0f} MB after (per process: {per_process}); summed PSS after"
            f" {mib(pss):.0f} MB",
        )
        figures.values[f"list-rss-after-{workers}"] = mib(after)
        figures.values[f"list-pss-after-{workers}"] = mib(pss)
        for label, (median, slowest, size) in warm.items():
            figures.add(
                f"list-warm-{workers}-{label}",
                median,
                f"{workers} workers: warm {label} ({size / 1e6:.1f} MB): median"
                f" {median * 1000:.0f} ms, slowest {slowest * 1000:.0f} ms",
            )
        figures.add(
            f"list-floor-{workers}",
            statistics.median(floor),
            f"{workers} workers: the same 44 MB HTML file from a bare sendfile server: median"
            f" {statistics.median(floor) * 1000:.0f} ms, slowest {max(floor) * 1000:.0f} ms",
        )
        figures.values[f"list-warm-max-{workers}"] = max(m for m, _, _ in warm.values())

    await serving(upstream, workers, f"list-{workers}", work)


# -- 2. many big projects ---------------------------------------------------------------------


async def bench_projects(plan: Plan, upstream: FakeUpstream, figures: Figures) -> None:
    names = [f"big{i:03d}" for i in range(plan.projects)]
    for name in names:
        upstream.serve_raw(
            f"/simple/{name}/", project_json(name, plan.files, upstream.files_origin + "/f/"), JSON
        )

    async def work(served: ServedProxy) -> None:
        idle = served.rss_kib()
        watch = RssWatch(served, every=0.2)
        queue = [(name, headers) for name in names for headers in (PIP, UV, BROWSER)]

        async def client(session: aiohttp.ClientSession) -> None:
            while queue:
                name, headers = queue.pop()
                status, _, _ = await get(session, f"{served.index_url}{name}/", headers)
                assert status == 200, status

        began = time.monotonic()
        async with new_session() as session:
            await watch.during(asyncio.gather(*(client(session) for _ in range(16))))
        took = time.monotonic() - began
        await asyncio.sleep(1.0)
        after = served.rss_kib()
        figures.add(
            "projects-rss-during",
            mib(watch.peak_kib),
            f"{plan.projects} projects x {plan.files:,} files, pip's, uv's and a browser's"
            f" formats, 16 clients, 2 workers, {took:.1f} s: idle {mib(idle):.0f} MB, summed"
            f" RSS peak {mib(watch.peak_kib):.0f} MB during, {mib(after):.0f} MB after",
        )

    await serving(upstream, 2, "projects", work)


# -- 3. a mixed load -------------------------------------------------------------------------


async def bench_mixed(plan: Plan, upstream: FakeUpstream, figures: Figures) -> None:
    small = ["small-a", "small-b", "small-c"]
    for name in small:
        upstream.serve_raw(
            f"/simple/{name}/", project_json(name, 5, upstream.files_origin + "/f/"), JSON
        )
    big = [f"big{i:03d}" for i in range(min(plan.projects, 20))]
    requests = [("", headers) for _, headers in VARIANTS]
    requests += [(f"{name}/", h) for name in big + small for h in (PIP, UV, BROWSER)]

    async def work(served: ServedProxy) -> None:
        rng = random.Random(15)
        deadline = time.monotonic() + plan.mixed_seconds
        samples: dict[int, list[int]] = {}
        done = 0

        async def client(session: aiohttp.ClientSession) -> None:
            nonlocal done
            while time.monotonic() < deadline:
                path, headers = rng.choice(requests)
                status, _, _ = await get(session, served.index_url + path, headers)
                assert status == 200, status
                done += 1

        async def sample() -> None:
            while time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                for pid in served.pids():
                    samples.setdefault(pid, []).append(memory_kib(pid))

        async with new_session() as session:
            await asyncio.gather(sample(), *(client(session) for _ in range(8)))
        roles = ["supervisor"] + [f"worker {i}" for i in range(1, len(samples))]
        # Steady: the second half of the run.
        steady = {pid: values[len(values) // 2 :] for pid, values in samples.items()}
        shown = ", ".join(
            f"{role} {mib(int(statistics.median(values))):.0f} MB (max {mib(max(values)):.0f})"
            for role, values in zip(roles, steady.values(), strict=False)
        )
        figures.add(
            "mixed",
            float(done),
            f"mixed load, 8 clients, {plan.mixed_seconds:.0f} s, {done:,} requests (the list's"
            f" six variants, {len(big)} big and {len(small)} small projects in pip's, uv's and"
            f" a browser's formats): RSS in the second half, median per process: {shown}",
        )

    await serving(upstream, 2, "mixed", work)


# -- the run ---------------------------------------------------------------------------------


def verdicts(figures: Figures, plan: Plan) -> list[str]:
    values = figures.values
    derived = {
        "list-warm-max": values.get("list-warm-max-2"),
        "list-rss-during-2": values.get("list-rss-during-2"),
        "list-rss-after-2": values.get("list-rss-after-2"),
        "list-rss-3": (
            max(values["list-rss-during-3"], values["list-rss-after-3"])
            if "list-rss-during-3" in values
            else None
        ),
        "list-rss-per-worker": (
            values["list-rss-during-3"] - values["list-rss-during-2"]
            if "list-rss-during-3" in values and "list-rss-during-2" in values
            else None
        ),
        "list-pss-per-worker": (
            values["list-pss-after-3"] - values["list-pss-after-2"]
            if "list-pss-after-3" in values and "list-pss-after-2" in values
            else None
        ),
        "projects-rss-during": values.get("projects-rss-during"),
    }
    lines = []
    for key, bound, text in TARGETS:
        value = derived[key]
        if value is None:
            lines.append(f"- -: {text} (not measured)")
        else:
            met = "met" if value <= bound else "**MISSED**"
            lines.append(f"- {met}: {text} ({value:,.2f})")
    if plan is not FULL:
        lines.append("- (a quick run: smaller pages than the targets are for)")
    return lines


SECTIONS = ("list", "projects", "mixed")


async def run(plan: Plan, sections: tuple[str, ...]) -> Figures:
    figures = Figures()
    async with FakeUpstream() as upstream:
        upstream.serve_raw("/simple/", project_list_html(plan.names), HTML)
        if "list" in sections:
            log(f"the project list: {plan.names:,} names")
            for workers in (2, 3):
                await bench_list(plan, upstream, workers, figures)
        if "projects" in sections:
            log(f"{plan.projects} projects of {plan.files:,} files")
            await bench_projects(plan, upstream, figures)
        if "mixed" in sections:
            log("a mixed load")
            await bench_mixed(plan, upstream, figures)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller pages, shorter loads")
    parser.add_argument("--output", type=Path, help="where to write the markdown results")
    parser.add_argument("--only", choices=SECTIONS, action="append", help="this section only")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    WORK.mkdir(parents=True, exist_ok=True)
    day = time.strftime("%Y-%m-%d", time.gmtime())
    output = args.output or (
        WORK / "pages-quick.md" if args.quick else ROOT / "bench" / "results" / f"{day}-pages.md"
    )
    figures = asyncio.run(run(plan, tuple(args.only or SECTIONS)))
    commit = first_line(["git", "-C", ROOT, "describe", "--always", "--dirty"])
    text = "\n".join(
        [
            "# PyPI-scale pages",
            "",
            f"`python -m bench.pages{' --quick' if args.quick else ''}` on"
            f" {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, git {commit}, Python"
            f" {sys.version.split()[0]}; everything on 127.0.0.1. RSS is VmRSS from /proc,"
            " summed over the server's processes (supervisor and workers).",
            "",
            "## Targets",
            "",
            *verdicts(figures, plan),
            "",
            "## Figures",
            "",
            *figures.lines,
            "",
        ]
    )
    print("\n" + text)
    write_results(output, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
