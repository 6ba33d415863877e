"""What a running server's processes use over time (memory, descriptors, CPU), sampled
from /proc, and how to tell whether it stays flat when workers are killed and replaced."""

from __future__ import annotations

import asyncio
import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass

from tests.served import ServedProxy, cpu_seconds, memory_kib, open_fds

LIFE_SETTLE = 10.0  # seconds a new worker takes to warm up, not compared
LIFE_MIN_WINDOW = 6.0  # shorter windows say nothing


@dataclass(frozen=True)
class Sample:
    """One server process at one moment."""

    at: float  # seconds since the load began
    pid: int
    rss_kib: int
    fds: int
    sockets: int  # the listener and connections, from clients and to the upstream
    transfers: int  # files of downloads (part and lock files) and blobs being sent
    cpu: float  # seconds used so far

    @property
    def fixed_fds(self) -> int:
        """The descriptors whose number does not follow the load: the database, metrics
        files, pipes, the event loop's."""
        return self.fds - self.sockets - self.transfers


async def sample_server(
    served: ServedProxy, began: float, samples: list[Sample], every: float
) -> None:
    """Append a Sample of each of `served`'s processes to `samples` every `every` s."""
    loop = asyncio.get_running_loop()
    transfer_dirs = tuple(f"{served.cache_dir / name}/" for name in ("tmp", "blobs"))
    while True:
        at = loop.time() - began
        for pid in served.pids():
            rss, fds = memory_kib(pid), open_fds(pid)
            if rss and fds:  # else it ended meanwhile
                sockets = sum(fd.startswith("socket:") for fd in fds)
                transfers = sum(fd.startswith(transfer_dirs) for fd in fds)
                samples.append(Sample(at, pid, rss, len(fds), sockets, transfers, cpu_seconds(pid)))
        await asyncio.sleep(every)


@dataclass(frozen=True)
class Use:
    """What processes held over a window: the median, over the instants sampled, of their
    sum (a median: a sample taken while a killed worker is not yet replaced is one of many)."""

    rss_mib: float
    fds: float
    fixed_fds: float

    def __str__(self) -> str:
        return f"{self.rss_mib:.0f} MiB, {self.fds:.0f} fds ({self.fixed_fds:.0f} fixed)"


def use(samples: list[Sample], start: float, stop: float = math.inf) -> Use:
    instants: defaultdict[float, list[Sample]] = defaultdict(list)
    for sample in samples:
        if start <= sample.at < stop:
            instants[sample.at].append(sample)
    assert instants, f"no samples from {start:.0f} s to {stop:.0f} s"
    sums = instants.values()
    return Use(
        statistics.median(sum(s.rss_kib for s in sampled) / 1024 for sampled in sums),
        statistics.median(sum(s.fds for s in sampled) for sampled in sums),
        statistics.median(sum(s.fixed_fds for s in sampled) for sampled in sums),
    )


def lives(samples: list[Sample], supervisor: int | None = None) -> dict[int, list[Sample]]:
    """Each process's samples, in order, but the supervisor's: a killed worker's numbers
    end with it, and the one started in its place has its own."""
    by_pid: dict[int, list[Sample]] = defaultdict(list)
    for sample in samples:
        if sample.pid != supervisor:
            by_pid[sample.pid].append(sample)
    return by_pid


def life_flatness(life: list[Sample], window: float) -> tuple[Use, Use] | None:
    """(settled, last) use of one worker: over a window LIFE_SETTLE s after its first
    sample, and over as long a window at its end (up to `window` / 2 each); None if it lived
    too short for two such windows."""
    born, died = life[0].at, life[-1].at
    window = min(window / 2, (died - born - LIFE_SETTLE) / 2)
    if window < LIFE_MIN_WINDOW:
        return None
    settled = use(life, born + LIFE_SETTLE, born + LIFE_SETTLE + window)
    return settled, use(life, died - window)


def describe_lives(samples: list[Sample], supervisor: int, window: float) -> dict[int, str]:
    """Each worker's life, and its use settled and at the end where it was compared."""
    described = {}
    for pid, life in lives(samples, supervisor).items():
        described[pid] = f"{life[0].at:.0f}-{life[-1].at:.0f} s"
        if (flatness := life_flatness(life, window)) is not None:
            described[pid] += f": {flatness[0]} -> {flatness[1]}"
    return described


def peak_rss_mib(samples: list[Sample]) -> tuple[int, int]:
    """The largest RSS of all server processes together, and of one, in MiB."""
    together: Counter[float] = Counter()
    for sample in samples:
        together[sample.at] += sample.rss_kib
    return max(together.values()) // 1024, max(s.rss_kib for s in samples) // 1024
