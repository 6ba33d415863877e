"""Load generators, all bounded in time and count and aimed at 127.0.0.1 only: wrk for
steady load, aiohttp for single timed downloads and thundering herds, timed installer runs."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

# wrk prints this line from its `done` hook: counts, bytes and latency percentiles.
_WRK_SCRIPT = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\\"requests\\": %d, \\"bytes\\": %d, \\"duration_us\\": %d, \\"connect\\": %d, "
    .. "\\"read\\": %d, \\"write\\": %d, \\"status\\": %d, \\"timeout\\": %d, "
    .. "\\"p50_us\\": %d, \\"p99_us\\": %d, \\"max_us\\": %d}\\n",
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
"""
_MB = 1_000_000


def check_local(url: str) -> str:
    """Refuse any target but loopback: every load here is for this machine only."""
    host = urlsplit(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"refusing to load a non-loopback address: {url}")
    return url


@dataclass(frozen=True)
class WrkResult:
    requests: int
    bytes: int
    seconds: float
    errors: int  # connect, read, write and timeout errors plus non-2xx/3xx answers
    p50_ms: float
    p99_ms: float
    max_ms: float
    client_cpu: float  # CPU-seconds wrk itself used

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / _MB


def wrk(
    url: str,
    *,
    connections: int,
    seconds: int,
    headers: Mapping[str, str],
    workdir: Path,
) -> WrkResult:
    script = workdir / "wrk-report.lua"
    if not script.exists():
        script.write_text(_WRK_SCRIPT)
    threads = min(connections, 2)
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
    argv += ["-s", str(script)]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(check_local(url))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{done.stdout}\n{done.stderr}")
    data = json.loads(line.removeprefix("WRKJSON "))
    errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
    return WrkResult(
        requests=data["requests"],
        bytes=data["bytes"],
        seconds=data["duration_us"] / 1e6,
        errors=errors,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        client_cpu=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
    )


@dataclass(frozen=True)
class Download:
    status: int
    size: int
    ttfb: float  # seconds from sending the request to the first body byte
    seconds: float  # seconds from sending the request to the last body byte
    redirected: bool

    @property
    def mb_per_s(self) -> float:
        return self.size / self.seconds / _MB


def _session(connections: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, force_close=True),
        timeout=aiohttp.ClientTimeout(total=120),
        auto_decompress=False,
    )


async def _download(session: aiohttp.ClientSession, url: str, sink: int | None) -> Download:
    started = time.perf_counter()
    first: float | None = None
    size = 0
    async with session.get(check_local(url)) as response:
        async for chunk in response.content.iter_any():
            if first is None:
                first = time.perf_counter()
            size += len(chunk)
            if sink is not None:
                os.write(sink, chunk)
        ended = time.perf_counter()
        return Download(
            status=response.status,
            size=size,
            ttfb=(first or ended) - started,
            seconds=ended - started,
            redirected=bool(response.history),
        )


async def download(url: str) -> Download:
    """One GET on a new connection, streamed to /dev/null."""
    sink = os.open(os.devnull, os.O_WRONLY)
    try:
        async with _session(1) as session:
            return await _download(session, url, sink)
    finally:
        os.close(sink)


async def download_probed(url: str, probe_url: str) -> tuple[Download, list[float]]:
    """`download(url)`, while GETs of `probe_url` (each on a new connection, one after the
    other, until it ends) measure how long other clients wait meanwhile: (download, the
    probes' latencies in seconds)."""
    latencies: list[float] = []
    done = asyncio.Event()

    async def probe() -> None:
        async with _session(1) as session:
            while not done.is_set():
                started = time.perf_counter()
                async with session.get(check_local(probe_url)) as response:
                    await response.read()
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.002)

    prober = asyncio.create_task(probe())
    try:
        result = await download(url)
    finally:
        done.set()
        await prober
    return result, latencies


async def herd(url: str, clients: int) -> tuple[list[Download | BaseException], float]:
    """`clients` GETs of one URL at once, each on its own connection; (results, seconds)."""
    return await herd_urls([url] * clients)


async def herd_urls(urls: Sequence[str]) -> tuple[list[Download | BaseException], float]:
    """A GET of each URL, all at once, each on its own connection: (results in the order
    of `urls`, seconds until the last one ended)."""
    async with _session(len(urls)) as session:
        started = time.perf_counter()
        results = await asyncio.gather(
            *(_download(session, url, None) for url in urls), return_exceptions=True
        )
        return list(results), time.perf_counter() - started


async def fetch(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    """A plain GET (body as sent, not decoded), for warming caches and copying bytes."""
    async with (
        _session(1) as session,
        session.get(check_local(url), headers=headers, allow_redirects=False) as response,
    ):
        return response.status, await response.read()


def timed(argv: Sequence[str | Path], env: Mapping[str, str], limit: float = 600) -> float:
    """Run a command to completion (it must succeed) and return its wall time in seconds."""
    started = time.perf_counter()
    done = subprocess.run(
        [str(a) for a in argv],
        env=dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=limit,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return elapsed
