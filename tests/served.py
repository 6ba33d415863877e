"""`python -m cachepi serve` as a real subprocess: start, wait, read its log, kill, measure.

The server runs in a session of its own, so a SIGKILL reaches the parent and every worker
at once (as when a machine or container dies) and never anything of the test's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

from cachepi.workers import LISTENING
from tests.clients import isolated_env
from tests.fetching import wait_healthy

T = TypeVar("T")


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants that are still alive."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the ppid follows the last ")".
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def running(pid: int) -> bool:
    """Whether `pid` is a live process: a zombie, dead but not yet reaped, is not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def memory_kib(pid: int, field: str = "VmRSS") -> int:
    """A /proc/PID/status figure in KiB (VmRSS now, VmHWM the peak); 0 if the process is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    return int(match[1]) if match else 0


def open_fds(pid: int) -> list[str]:
    """What each open descriptor of a process refers to: `socket:[INODE]`, a path,
    `pipe:[INODE]`, `anon_inode:[eventpoll]`...; [] if the process is gone."""
    try:
        entries = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    targets = []
    for entry in entries:
        with contextlib.suppress(OSError):  # closed meanwhile
            targets.append(os.readlink(f"/proc/{pid}/fd/{entry}"))
    return targets


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServedProxy:
    """One `cachepi serve` subprocess at a time on a fixed port and cache directory;
    `start()` again after `kill()` or `stop()` to restart it on the same cache."""

    def __init__(
        self,
        index_url: str,
        cache_dir: Path,
        port: int,
        *,
        workers: int = 1,
        options: Sequence[str] = (),
        env: dict[str, str] | None = None,
        home: Path | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.index_url_upstream = index_url
        self.cache_dir = cache_dir
        self.port = port
        self.workers = workers
        self.options = list(options)
        self.env = env or {}
        self.home = home or cache_dir.parent
        self.preexec_fn = preexec_fn
        self.base = f"http://127.0.0.1:{port}"
        self.index_url = f"{self.base}/index/"
        self.log: list[str] = []
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    async def start(self, within: float = 30) -> None:
        """Start the server and wait until every worker listens."""
        env = isolated_env(self.home) | {"CACHEPI_INDEX_URL": self.index_url_upstream} | self.env
        started_at = len(self.log)
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cachepi", "serve", "--port", str(self.port),
            "--workers", str(self.workers), "--cache-dir", str(self.cache_dir), *self.options,
            env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, start_new_session=True, preexec_fn=self.preexec_fn,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._collect_log(self.process))
        try:
            await asyncio.wait_for(self._ready(started_at), within)
        except TimeoutError:
            raise AssertionError("cachepi serve did not start:\n" + self.log_text()) from None

    async def _ready(self, log_from: int) -> None:
        await self._healthy()
        # Each worker logs a line once its socket listens; the log has no event to await.
        while sum(LISTENING in line for line in self.log[log_from:]) < self.workers:  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    async def _healthy(self) -> None:
        await wait_healthy(self.base)

    async def _collect_log(self, process: asyncio.subprocess.Process) -> None:
        assert process.stderr is not None
        async for line in process.stderr:
            self.log.append(line.decode(errors="replace"))

    def log_text(self) -> str:
        return "".join(self.log)

    def pids(self) -> list[int]:
        return process_tree(self.pid) if self.process and self.process.returncode is None else []

    def worker_pids(self) -> list[int]:
        """The worker processes (`--workers` 2 or more): the supervisor's descendants."""
        return [pid for pid in self.pids() if pid != self.pid]

    def rss_kib(self) -> int:
        """Resident memory of the server now: all its processes together."""
        return sum(memory_kib(pid) for pid in self.pids())

    def cpu_seconds(self) -> float:
        """CPU time used by all its processes so far."""
        return sum(cpu_seconds(pid) for pid in self.pids())

    def peak_kib(self) -> int:
        """The largest peak resident memory (VmHWM) of any one of its processes."""
        return max((memory_kib(pid, "VmHWM") for pid in self.pids()), default=0)

    async def kill(self) -> None:
        """SIGKILL the whole server at once: no cleanup of any kind runs."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        await self._reap()

    async def stop(self) -> None:
        """SIGTERM, as a service manager stops it; SIGKILL if it lingers."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.process.wait(), 20)
        await self.kill()

    async def _reap(self) -> None:
        assert self.process is not None
        await self.process.wait()
        # Workers are not our children: wait until the kernel has taken them too.
        for _ in range(500):
            if not _group_alive(self.process.pid):
                break
            await asyncio.sleep(0.01)
        if self._reader is not None:
            await self._reader
            self._reader = None


class RssWatch:
    """Samples the server's resident memory while something runs; keeps the peak."""

    def __init__(self, served: ServedProxy, every: float = 0.05) -> None:
        self.served = served
        self.every = every
        self.peak_kib = 0  # of the sum over the server's processes

    async def during(self, work: Awaitable[T]) -> T:
        done = asyncio.Event()

        async def sample() -> None:
            while not done.is_set():
                self.peak_kib = max(self.peak_kib, self.served.rss_kib())
                await asyncio.sleep(self.every)

        sampler = asyncio.create_task(sample())
        try:
            return await work
        finally:
            done.set()
            await sampler
            self.peak_kib = max(self.peak_kib, self.served.rss_kib())


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
