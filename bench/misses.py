#!/usr/bin/env python3
"""Misses of a big file: `cachepi serve --workers 2` on a fresh cache fetching a file of
--mib MiB from the fake upstream (bench/upstream.py, a process of its own) while clients
stream it through, all on 127.0.0.1. The reference, measured in the same run, is the same
clients fetching the same file straight from the fake upstream:

- one client: MB/s of the whole transfer;
- --clients clients asking for the same file at once (on the proxy: one miss they share;
  direct: that many GETs): MB/s per client, each client's bytes over the time until the last
  one finished.

Every measurement through a proxy asks for a file that proxy was never asked for, so each
is a miss. Before measuring, the run touches as much memory as its files will take in the
page cache: on a virtual machine whose memory was never used (a new microVM), the host backs
each page on its first use, which made a write to the part file cost ~2 CPU-seconds per GB,
ten times a write to memory used before; a server that has run a while pays none of that.

With --against SRC a second cachepi, run from the `src` directory SRC (another version's),
is measured in the same run, in turn with this one.

    python -m bench.misses [--mib 256] [--clients 8] [--reps 3] [--against SRC] [--profile]

from the repository root. --profile records this cachepi with py-spy over more misses (one
client, then --clients) and prints the top frames.
"""

from __future__ import annotations

import argparse
import asyncio
import mmap
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

from bench import load, servers, spy, tools
from bench.harness import PAGE_HEADERS, fetch
from bench.procs import Processes, log
from bench.servers import FileInfo, Manifest, Running
from bench.tools import ROOT, WORK

_MB = 1_000_000
DIRECT = "direct"
_PAGE = 4096


def touch_memory(size: int) -> None:
    """Use `size` bytes of memory once (at most half of what is available), and let go."""
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    with mmap.mmap(-1, min(size, available // 2)) as memory:
        for offset in range(0, len(memory), _PAGE):
            memory[offset] = 1


def one(url: str, file: FileInfo) -> float:
    """MB/s of one client's GET of `file`; 0 if it failed or came short."""
    got = asyncio.run(load.download(url))
    return file.size / got.seconds / _MB if got.status == 200 and got.size == file.size else 0.0


def many(url: str, file: FileInfo, clients: int) -> float:
    """Each client's MB/s, over the time until the last one finished; 0 if any failed."""
    outcomes, took = asyncio.run(load.herd(url, clients))
    if any(isinstance(o, BaseException) or o.status != 200 or o.size != file.size
           for o in outcomes):  # fmt: skip
        return 0.0
    return file.size / took / _MB


class Misses:
    """Hands out files no proxy was asked for yet, and where to GET them."""

    def __init__(self, manifest: Manifest, proxies: dict[str, Running]) -> None:
        self.manifest = manifest
        self.proxies = proxies
        self._files = list(manifest.herd)

    def fresh(self) -> FileInfo:
        file = self._files.pop()
        for proxy in self.proxies.values():
            for _ in range(2):  # the page first, as pip asks for it, on each worker
                status, _ = fetch(proxy.base + f"/index/{file.project}/", PAGE_HEADERS)
                if status != 200:
                    raise RuntimeError(f"{proxy.base}: {file.project}'s page answered {status}")
        return file

    def url(self, name: str, file: FileInfo) -> str:
        if name == DIRECT:
            return self.manifest.origin + file.upstream_path
        return self.proxies[name].base + file.path


Runs = dict[tuple[str, int], list[float]]


def measure(misses: Misses, clients: int, reps: int) -> tuple[Runs, Runs]:
    """MB/s per run by (source, clients): direct and through each proxy, in turn; and the
    CPU-seconds per GB of file each proxy (all its processes) took."""
    rates: Runs = {}
    cpu: Runs = {}
    names = [DIRECT, *misses.proxies]
    for rep in range(reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for n in (1, clients):
            file = misses.fresh()
            for name in order:
                url = misses.url(name, file)
                proxy = misses.proxies.get(name)
                before = proxy.server.cpu_seconds() if proxy else 0.0
                mbps = one(url, file) if n == 1 else many(url, file, n)
                rates.setdefault((name, n), []).append(mbps)
                line = f"  {name:10} {n} client{'s' if n > 1 else ' '} {mbps:6.0f} MB/s"
                if proxy:
                    per_gb = (proxy.server.cpu_seconds() - before) / (file.size / 1e9)
                    cpu.setdefault((name, n), []).append(per_gb)
                    line += f", {per_gb:.2f} CPU-s/GB"
                log(line)
    return rates, cpu


def profile(misses: Misses, name: str, py_spy: Path, clients: int, count: int) -> list[str]:
    """py-spy on proxy `name` over `count` misses of one client, then `count` of many."""
    raw = WORK / "profile-misses.txt"
    pid = misses.proxies[name].server.pid
    argv = [py_spy, "record", "--pid", pid, "--rate", 250, "--format", "raw"]
    argv += ["--output", raw, "--nonblocking", "--subprocesses"]
    recorder = subprocess.Popen([str(a) for a in argv], stdout=subprocess.DEVNULL)
    try:
        asyncio.run(asyncio.sleep(1.5))  # py-spy attaches
        for n in [1] * count + [clients] * count:
            file = misses.fresh()
            url = misses.url(name, file)
            if n == 1:
                one(url, file)
            else:
                many(url, file, n)
    finally:
        recorder.send_signal(signal.SIGINT)  # py-spy writes what it recorded, and exits
        recorder.wait(60)
    return spy.top_frames(raw, 15)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--mib", type=float, default=256, help="the file's size")
    parser.add_argument("--clients", type=int, default=8, help="on one miss at once")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--against", type=Path, help="another cachepi's src directory")
    parser.add_argument("--profile", action="store_true", help="py-spy cachepi over misses")
    parser.add_argument("--profile-misses", type=int, default=3, help="of each kind")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    py_spy = tools.py_spy_binary() if args.profile else None
    files = 2 * args.reps + (2 * args.profile_misses if args.profile else 0)
    this = Path(sys.modules["cachepi"].__file__ or "").parent.parent
    sources = {"cachepi": this} | ({"against": args.against.resolve()} if args.against else {})
    # In the page cache: the upstream's files, and each proxy's copies.
    log(f"touching {files * (1 + len(sources)) * args.mib / 1024:.1f} GiB of memory once")
    touch_memory(int(files * (1 + len(sources)) * args.mib * 1024 * 1024))
    with Processes(WORK) as procs:
        log(f"starting the fake upstream: {files} files of {args.mib:g} MiB")
        _, manifest = servers.start_upstream(
            procs, file_mb=0.1, miss_mb=0.1, herd_mb=args.mib, herd_files=files,
            page_files=2, install_packages=1,
        )  # fmt: skip
        proxies = {
            name: servers.start_cachepi(
                procs,
                f"misses-{name}",
                manifest.url,
                WORK / f"misses-{name}-cache",
                2,
                env={"PYTHONPATH": f"{src}:{ROOT}"},
            )
            for name, src in sources.items()
        }
        misses = Misses(manifest, proxies)
        runs, cpu = measure(misses, args.clients, args.reps)
        peaks = {name: proxy.server.peak_rss_kib() / 1024 for name, proxy in proxies.items()}
        top = (
            profile(misses, "cachepi", py_spy, args.clients, args.profile_misses) if py_spy else []
        )
    print(f"\n{args.mib:g} MiB misses, medians of {args.reps} runs: MB/s (÷ direct), and the")
    print("CPU-seconds per GB of file the proxy's processes took")
    for name, src in sources.items():
        print(f"- {name}: {src}, peak RSS {peaks[name]:.0f} MB (both workers and the supervisor)")
    print("\n| clients | " + " | ".join([DIRECT, *proxies]) + " |")
    print("| --- |" + " ---: |" * (1 + len(proxies)))
    for n in (1, args.clients):
        direct = statistics.median(runs[DIRECT, n])
        cells = [f"{direct:,.0f}"]
        for name in proxies:
            mbps = statistics.median(runs[name, n])
            per_gb = statistics.median(cpu[name, n])
            cells.append(f"{mbps:,.0f} ({mbps / direct:.2f}x), {per_gb:.2f} CPU-s/GB")
        print(f"| {n} | " + " | ".join(cells) + " |")
    if top:
        print("\npy-spy, cachepi over the profiled misses:\n" + "\n".join(top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
