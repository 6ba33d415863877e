#!/usr/bin/env python3
"""Misses of a big file: `cachepi serve --workers 2` on a fresh cache fetching a file of
--mib MiB from the fake upstream (bench/upstream.py, a process of its own) while clients
stream it through, all on 127.0.0.1. The reference, measured in the same run, is the same
clients fetching the same size straight from the fake upstream:

- one client: MB/s of the whole transfer;
- --clients clients asking for the same file at once (on the proxy: one miss they share;
  direct: that many GETs): MB/s per client, each client's bytes over the time until the last
  one finished.

Every measurement asks for a file nobody asked for before, so each is a miss.

    python -m bench.misses [--mib 256] [--clients 8] [--reps 3] [--profile]

from the repository root. --profile records cachepi with py-spy over more misses (one
client, then --clients) and prints the top frames. To compare two versions, run it with
each one's `src` first on PYTHONPATH (the server runs whichever cachepi the bench imports).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bench import load, servers, spy, tools
from bench.harness import PAGE_HEADERS, fetch
from bench.procs import Processes, log
from bench.servers import FileInfo, Manifest, Running
from bench.tools import WORK

_MB = 1_000_000


def per_client_mbps(
    file: FileInfo, outcomes: list[load.Download | BaseException], took: float
) -> float:
    """Each client's MB/s, over the time until the last one finished; 0 if any failed."""
    if any(isinstance(o, BaseException) or o.status != 200 or o.size != file.size
           for o in outcomes):  # fmt: skip
        return 0.0
    return file.size / took / _MB


def one(url: str, file: FileInfo) -> float:
    got = asyncio.run(load.download(url))
    return file.size / got.seconds / _MB if got.status == 200 and got.size == file.size else 0.0


def many(url: str, file: FileInfo, clients: int) -> float:
    outcomes, took = asyncio.run(load.herd(url, clients))
    return per_client_mbps(file, outcomes, took)


class Misses:
    """Hands out files nobody asked for yet, and measures them through cachepi and direct."""

    def __init__(self, manifest: Manifest, cachepi: Running, clients: int) -> None:
        self.manifest = manifest
        self.cachepi = cachepi
        self.clients = clients
        self._files = list(manifest.herd)

    def fresh(self) -> FileInfo:
        file = self._files.pop()
        for _ in range(2):  # the page first, as pip asks for it, on each worker
            status, _ = fetch(self.cachepi.base + f"/index/{file.project}/", PAGE_HEADERS)
            if status != 200:
                raise RuntimeError(f"cachepi: the page of {file.project} answered {status}")
        return file

    def direct_url(self, file: FileInfo) -> str:
        return self.manifest.origin + file.upstream_path

    def proxied_url(self, file: FileInfo) -> str:
        return self.cachepi.base + file.path


def measure(misses: Misses, reps: int) -> dict[str, list[float]]:
    """MB/s per run: direct and through cachepi, one client and many, in alternating order."""
    runs: dict[str, list[float]] = {}
    n = misses.clients
    for rep in range(reps):
        file = misses.fresh()
        cases: list[tuple[str, Callable[[], float]]] = [
            ("direct, 1 client", lambda f=file: one(misses.direct_url(f), f)),
            ("cachepi, 1 client", lambda f=file: one(misses.proxied_url(f), f)),
        ]
        herd_file = misses.fresh()
        cases += [
            (f"direct, {n} clients", lambda f=herd_file: many(misses.direct_url(f), f, n)),
            (f"cachepi, {n} clients", lambda f=herd_file: many(misses.proxied_url(f), f, n)),
        ]
        if rep % 2:
            cases = [cases[1], cases[0], cases[3], cases[2]]
        for label, run in cases:
            mbps = run()
            runs.setdefault(label, []).append(mbps)
            log(f"  {label:20} {mbps:6.0f} MB/s")
    return runs


def profile(misses: Misses, py_spy: Path, server_pid: int, count: int) -> list[str]:
    """py-spy on cachepi over `count` misses of one client, then `count` of many."""
    raw = WORK / "profile-misses.txt"
    argv = [py_spy, "record", "--pid", server_pid, "--rate", 250, "--format", "raw"]
    argv += ["--output", raw, "--nonblocking", "--subprocesses"]
    recorder = subprocess.Popen([str(a) for a in argv], stdout=subprocess.DEVNULL)
    try:
        asyncio.run(asyncio.sleep(1.5))  # py-spy attaches
        for _ in range(count):
            file = misses.fresh()
            one(misses.proxied_url(file), file)
        for _ in range(count):
            file = misses.fresh()
            many(misses.proxied_url(file), file, misses.clients)
    finally:
        recorder.send_signal(signal.SIGINT)  # py-spy writes what it recorded, and exits
        recorder.wait(60)
    return spy.top_frames(raw, 15)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--mib", type=float, default=256, help="the file's size")
    parser.add_argument("--clients", type=int, default=8, help="on one miss at once")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="py-spy cachepi over misses")
    parser.add_argument("--profile-misses", type=int, default=3, help="of each kind")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    py_spy = tools.py_spy_binary() if args.profile else None
    files = 2 * args.reps + (2 * args.profile_misses if args.profile else 0)
    with Processes(WORK) as procs:
        log(f"starting the fake upstream: {files} files of {args.mib:g} MiB")
        _, manifest = servers.start_upstream(
            procs, file_mb=0.1, miss_mb=0.1, herd_mb=args.mib, herd_files=files,
            page_files=2, install_packages=1,
        )  # fmt: skip
        cache = WORK / "misses-cache"
        cachepi = servers.start_cachepi(procs, "misses-cachepi", manifest.url, cache, 2)
        misses = Misses(manifest, cachepi, args.clients)
        runs = measure(misses, args.reps)
        peak = cachepi.server.peak_rss_kib() / 1024
        top = profile(misses, py_spy, cachepi.server.pid, args.profile_misses) if py_spy else []
    source = Path(sys.modules["cachepi"].__file__ or "").parent
    print(f"\n{args.mib:g} MiB misses, medians of {args.reps} runs, cachepi from {source}")
    print("| clients | direct MB/s | cachepi MB/s | cachepi ÷ direct |")
    print("| --- | ---: | ---: | ---: |")
    for clients in (1, args.clients):
        suffix = "1 client" if clients == 1 else f"{clients} clients"
        direct = statistics.median(runs[f"direct, {suffix}"])
        proxied = statistics.median(runs[f"cachepi, {suffix}"])
        print(f"| {clients} | {direct:,.0f} | {proxied:,.0f} | {proxied / direct:.2f}x |")
    print(f"\ncachepi's peak RSS (both workers and the supervisor): {peak:.0f} MB")
    if top:
        print("\npy-spy, cachepi over the profiled misses:\n" + "\n".join(top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
