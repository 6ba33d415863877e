"""Servers the benchmark starts: started in their own process group, measured through /proc
(CPU time and peak RSS summed over the process and its descendants), always stopped."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.served import memory_kib, process_tree

_TICKS = os.sysconf("SC_CLK_TCK")
_START = time.monotonic()
# No proxies from the environment: every request here is for 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def log(message: str) -> None:
    """A progress line, stamped with the seconds since the benchmark started."""
    print(f"[{time.monotonic() - _START:6.1f}s] {message}", flush=True)


@dataclass
class Server:
    """One started process (and whatever it forks), its log going to a file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    peak_rss_seen: int = 0  # KiB: the largest tree-wide VmHWM sum read so far
    rss_samples: list[tuple[str, int]] = field(default_factory=list)  # (label, KiB VmRSS)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def pids(self) -> list[int]:
        """The process and all its descendants, alive now."""
        return process_tree(self.pid) if self.alive() else []

    def cpu_seconds(self) -> float:
        """User + system time of the live tree, plus that of children it has reaped (which
        tests/served.py's `cpu_seconds` leaves out)."""
        ticks = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                ticks += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
        return ticks / _TICKS

    def _status_kib(self, key: str) -> int:
        return sum(memory_kib(pid, key) for pid in self.pids())

    def peak_rss_kib(self) -> int:
        """Sum over the tree of each process's peak resident set (VmHWM), largest seen."""
        self.peak_rss_seen = max(self.peak_rss_seen, self._status_kib("VmHWM"))
        return self.peak_rss_seen

    def sample_rss(self, label: str) -> int:
        """Record the current resident set (VmRSS, summed) under `label`; also updates the peak."""
        rss = self._status_kib("VmRSS")
        self.rss_samples.append((label, rss))
        self.peak_rss_kib()
        return rss

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


class Processes:
    """Starts servers and stops every one of them on exit, whatever the exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.servers: list[Server] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()

    def start(
        self,
        name: str,
        argv: Sequence[str | Path],
        *,
        env: dict[str, str],
        cwd: Path | None = None,
        stdin: int = subprocess.DEVNULL,
        stdout: int | None = None,
    ) -> Server:
        """Start `argv` in a new session (so its whole group can be stopped at once);
        its stderr (and stdout unless `stdout` is given) goes to workdir/<name>.log."""
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [str(arg) for arg in argv],
                env=env,
                cwd=cwd,
                stdin=stdin,
                stdout=out if stdout is None else stdout,
                stderr=out,
                start_new_session=True,
            )
        server = Server(name, popen, log)
        self.servers.append(server)
        return server

    def adopt(self, name: str, popen: subprocess.Popen[bytes], log: Path) -> Server:
        """A server started elsewhere, in a session of its own (its pid is its process
        group's): measured and stopped like the others."""
        server = Server(name, popen, log)
        self.servers.append(server)
        return server

    def stop(self, server: Server, grace: float = 5.0) -> None:
        """SIGTERM to the server's own process group, SIGKILL if it lingers."""
        if server in self.servers:
            self.servers.remove(server)
        if server.alive():
            server.peak_rss_kib()
        if server.popen.stdin is not None:
            server.popen.stdin.close()  # servers that wait on stdin take this as "stop"
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if server.popen.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, sig)  # the group this harness created for it
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.popen.wait(grace)
        # Descendants that outlived their leader share its group id: end them too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        if server.popen.stdout is not None:
            server.popen.stdout.close()

    def stop_all(self) -> None:
        for server in reversed(list(self.servers)):
            self.stop(server)


def wait_http(server: Server, url: str, timeout: float = 30.0) -> None:
    """Wait until `url` answers anything over HTTP; fail early if the server died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"{server.name} exited early:\n{server.log_tail()}")
        try:
            with _OPENER.open(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # an error status is still an answer
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{server.name} did not answer {url} within {timeout:.0f}s")


def _machine_ticks() -> tuple[int, int]:
    """(busy, steal) jiffies of the whole machine; busy is user+nice+system+irq+softirq."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return user + nice + system + irq + softirq, steal


def _own_cpu() -> float:
    """CPU-seconds of this process and of the children it has reaped (wrk, installers)."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


@dataclass
class Meter:
    """CPU-seconds each server used during `measure()`, and what the rest of the machine did
    meanwhile: cores busy in processes this harness did not start, and hypervisor steal."""

    servers: Sequence[Server]
    cpu: dict[str, float] = field(default_factory=dict)
    others_cores: float = 0.0
    steal_cores: float = 0.0

    @contextlib.contextmanager
    def measure(self) -> Iterator[Meter]:
        before = {s.name: s.cpu_seconds() for s in self.servers}
        busy0, steal0 = _machine_ticks()
        own0, started = _own_cpu(), time.monotonic()
        yield self
        wall = time.monotonic() - started
        busy1, steal1 = _machine_ticks()
        self.cpu = {s.name: s.cpu_seconds() - before[s.name] for s in self.servers}
        ours = sum(self.cpu.values()) + _own_cpu() - own0
        self.others_cores = max(0.0, (busy1 - busy0) / _TICKS - ours) / wall
        self.steal_cores = (steal1 - steal0) / _TICKS / wall


def wait_until_quiet(limit: float, servers: Sequence[Server]) -> float:
    """Wait, at most `limit` seconds, until processes this harness did not start use under a
    quarter of a core; returns the cores they used in the last second looked at."""
    started = time.monotonic()
    said = -10.0
    while True:
        meter = Meter(servers)
        with meter.measure():
            time.sleep(1.0)
        waited = time.monotonic() - started
        if meter.others_cores < 0.25 or waited >= limit:
            if waited >= limit > 0:
                log(f"  others still use {meter.others_cores:.2f} cores; going on anyway")
            return meter.others_cores
        if waited - said >= 10:
            said = waited
            log(f"  others use {meter.others_cores:.2f} cores: waiting up to {limit:.0f} s")


def log_findings(path: Path) -> str:
    """ERROR and WARNING records in a server's log, and the exceptions named in them."""
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    records = Counter(
        level for line in lines for level in ("ERROR", "WARNING") if f" {level} " in line[:40]
    )
    if not records:
        return f"no warnings or errors in {len(lines):,} lines"
    exceptions = Counter(
        line[:100] for line in lines if re.match(r"[A-Za-z_.]+(Error|Exception|Warning)\b", line)
    )
    found = ", ".join(f"{n} {level}" for level, n in records.items())
    named = "; ".join(f"{n} x `{text}`" for text, n in exceptions.most_common(3))
    return f"{found} records in {len(lines):,} lines" + (f"; exceptions: {named}" if named else "")
