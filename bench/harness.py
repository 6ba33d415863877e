"""The benchmark run: servers up, caches warm, the six measurements, the report (run.py
is the entry point)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import shutil
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from tests.clients import isolated_env  # the tests' isolation from this machine

from bench import load, report, scaleout, servers, spy, tools
from bench.procs import Meter, Processes, Server, log, log_findings, wait_until_quiet
from bench.report import Results
from bench.servers import FileInfo, Manifest, PageInfo, Running
from bench.targets import TARGETS
from bench.tools import ROOT, WORK, write_results

RESULTS = ROOT / "bench" / "results" / "latest.md"
# What pip sends for a project page.
PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
    "text/html; q=0.01"
)
PAGE_HEADERS = {"Accept": PIP_ACCEPT, "Accept-Encoding": "gzip, deflate"}
SERVERS = ("cachepi", "nginx", "proxpi")
# Page loads also go to bare aiohttp (bench/bare.py), shown in the baseline column.
PAGE_SERVERS = (*SERVERS, "bare")
MIB = 1024 * 1024  # file sizes are in MiB; rates are in MB/s (10^6 bytes)


@dataclass(frozen=True)
class Plan:
    seconds: int  # per wrk run
    connections: tuple[int, ...]  # wrk's -c, each
    reps: int  # runs of each load; the table shows medians
    file_mb: float
    miss_mb: float
    herd_mb: float
    herd_clients: int
    page_files: int
    install_packages: int
    install_runs: int
    quiet_wait: float  # seconds to wait, at most, for other load on the machine to stop


FULL = Plan(
    seconds=5, connections=(1, 32), reps=3, file_mb=30, miss_mb=100, herd_mb=20,
    herd_clients=32, page_files=5000, install_packages=30, install_runs=5, quiet_wait=180,
)  # fmt: skip
# A smoke run for CI: every load once, briefly, with small files; its numbers mean little.
QUICK = Plan(
    seconds=1, connections=(32,), reps=1, file_mb=4, miss_mb=8, herd_mb=2,
    herd_clients=32, page_files=500, install_packages=6, install_runs=1, quiet_wait=0,
)  # fmt: skip


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    return asyncio.run(load.fetch(url, headers))


class Bench:
    def __init__(self, plan: Plan, procs: Processes, manifest: Manifest) -> None:
        self.plan = plan
        self.procs = procs
        self.manifest = manifest
        self.results = Results()
        self.running: dict[str, Running] = {}
        self.others: list[float] = []  # cores used by other processes during each load
        self.steal: list[float] = []
        self.errors: list[str] = []
        self.workers = 2 if servers.has_workers_flag() else None
        self.page_servers: tuple[str, ...] = PAGE_SERVERS  # those page loads go to

    def cachepi(self, name: str, cache_dir: Path) -> Running:
        return servers.start_cachepi(self.procs, name, self.manifest.url, cache_dir, self.workers)

    # -- preparing ---------------------------------------------------------------------------

    def warm(self, name: str) -> None:
        """The server holds both pages and the file before any load."""
        base = self.running[name].base
        for page in self.manifest.pages.values():
            for _ in range(8):  # on new connections: every worker renders the page once
                status, _ = fetch(base + page.path, PAGE_HEADERS)
                if status != 200:
                    raise RuntimeError(f"{name}: GET {page.path} answered {status}")
        file = self.manifest.file
        for _ in range(60):  # proxpi redirects while its own download is under way
            status, body = fetch(base + file.path)
            if status == 200 and len(body) == file.size:
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"{name}: {file.path} not cached after 30 s ({status})")

    def static_root(self) -> Path:
        """nginx's document root: the bytes cachepi sends, for the file and for each page
        (plain, and gzip for gzip_static), under the same paths as on the proxies."""
        root = WORK / "nginx-root"
        shutil.rmtree(root, ignore_errors=True)
        base = self.running["cachepi"].base
        file = self.manifest.file
        target = root / file.path.lstrip("/")
        target.parent.mkdir(parents=True)
        body = fetch(base + file.path)[1]
        if hashlib.sha256(body).hexdigest() != file.sha256:
            raise RuntimeError(f"cachepi sent other bytes than the upstream's for {file.path}")
        target.write_bytes(body)
        plain_headers = {"Accept": PIP_ACCEPT, "Accept-Encoding": "identity"}
        for page in self.manifest.pages.values():
            _, plain = fetch(base + page.path, plain_headers)
            _, zipped = fetch(base + page.path, PAGE_HEADERS)
            if gzip.decompress(zipped) != plain:
                raise RuntimeError(f"cachepi's gzip {page.path} is not its plain page")
            folder = root / page.path.strip("/")
            folder.mkdir(parents=True)
            (folder / "index.json").write_bytes(plain)
            (folder / "index.json.gz").write_bytes(zipped)
        return root

    def check_pages(self) -> list[str]:
        """Each server answers pip's page request with JSON listing every file."""
        notes = []
        for key, page in self.manifest.pages.items():
            sizes = []
            for name in self.page_servers:
                status, body = fetch(self.running[name].base + page.path, PAGE_HEADERS)
                listed = len(json.loads(gzip.decompress(body))["files"]) if status == 200 else 0
                if listed != page.files:
                    raise RuntimeError(f"{name}: {page.path} lists {listed} of {page.files}")
                sizes.append(f"{name} {len(body):,}")
            notes.append(f"{key} page ({page.files:,} files), gzip bytes sent: {', '.join(sizes)}")
        return notes

    # -- steady loads --------------------------------------------------------------------------

    def all_servers(self) -> list[Server]:
        return [r.server for r in self.running.values()]

    def run_wrk(
        self, name: str, path: str, conns: int, headers: dict[str, str], seconds: int = 0
    ) -> tuple[load.WrkResult, float]:
        """wrk against one server: (result, that server's CPU-seconds meanwhile)."""
        meter = Meter(self.all_servers())
        with meter.measure():
            result = load.wrk(
                self.running[name].base + path,
                connections=conns,
                seconds=seconds or self.plan.seconds,
                headers=headers,
                workdir=WORK,
            )
        self.others.append(meter.others_cores)
        self.steal.append(meter.steal_cores)
        if result.errors:
            self.errors.append(f"{name} {path} c={conns}: {result.errors} wrk errors")
        return result, meter.cpu[self.running[name].server.name]

    @staticmethod
    def rotated(rep: int, names: tuple[str, ...] = SERVERS) -> list[str]:
        """The servers in another order each repetition: none always goes first."""
        shift = rep % len(names)
        return list(names[shift:] + names[:shift])

    def bench_file(self) -> None:
        file = self.manifest.file
        label = f"1. cached {file.size / MIB:.0f} MiB file"
        for rep in range(self.plan.reps):
            for conns in self.plan.connections:
                rate = self.results.metric(
                    f"file-c{conns}-mbps", f"{label}, {conns} conn", "MB/s", higher_better=True
                )
                cost = self.results.metric(
                    f"file-c{conns}-cpu",
                    f"{label}, {conns} conn, server CPU",
                    "CPU-s/GB",
                    higher_better=False,
                )
                for name in self.rotated(rep):
                    result, cpu = self.run_wrk(name, file.path, conns, {})
                    per_gb = cpu / (result.bytes / 1e9)
                    rate.add(name, result.mb_per_s)
                    cost.add(name, per_gb)
                    log(
                        f"  file c={conns:<2} {name:8} {result.mb_per_s:7.0f} MB/s "
                        f"{per_gb:6.2f} CPU-s/GB"
                    )

    def bench_page(self, key: str, page: PageInfo) -> None:
        label = f"2. cached page, {page.files:,} files (pip's JSON, gzip)"
        bare = "bare aiohttp"
        for rep in range(self.plan.reps):
            for conns in self.plan.connections:
                rps = self.results.metric(
                    f"{key}-c{conns}-rps",
                    f"{label}, {conns} conn",
                    "req/s",
                    higher_better=True,
                    baseline=bare,
                )
                p99 = self.results.metric(
                    f"{key}-c{conns}-p99",
                    f"{label}, {conns} conn, p99",
                    "ms",
                    higher_better=False,
                    baseline=bare,
                )
                per_cpu = self.results.metric(
                    f"{key}-c{conns}-rps-cpu",
                    f"{label}, {conns} conn, per server CPU-second",
                    "req/CPU-s",
                    higher_better=True,
                    baseline=bare,
                )
                for name in self.rotated(rep, self.page_servers):
                    result, cpu = self.run_wrk(name, page.path, conns, PAGE_HEADERS)
                    efficiency = result.requests / cpu if cpu > 0 else 0.0
                    column = {"bare": "baseline", "cachepi-before": "before"}.get(name, name)
                    rps.add(column, result.rps)
                    p99.add(column, result.p99_ms)
                    per_cpu.add(column, efficiency)
                    log(
                        f"  {key:5} page c={conns:<2} {name:8} {result.rps:7.0f} req/s "
                        f"p99 {result.p99_ms:7.2f} ms {efficiency:7.0f} req/CPU-s"
                    )

    # -- misses and thundering herds ---------------------------------------------------------

    def upstream_gets(self, file: FileInfo) -> int:
        _, body = fetch(f"{self.manifest.control}/count?prefix={file.upstream_path}")
        return int(json.loads(body)["count"])

    def herd(self, base: str, file: FileInfo) -> tuple[int, float, int]:
        """`herd_clients` GETs of a file nobody asked for yet, at once:
        (upstream GETs, seconds until the last client is done, clients failed or short)."""
        before = self.upstream_gets(file)
        outcomes, seconds = asyncio.run(load.herd(base + file.path, self.plan.herd_clients))
        bad = sum(
            1
            for o in outcomes
            if isinstance(o, BaseException) or o.status != 200 or o.size != file.size
        )
        return self.upstream_gets(file) - before, seconds, bad

    def bench_misses(self) -> list[Server]:
        """A miss and a herd through a fresh cachepi (new cache directory) each repetition,
        a herd through proxpi too; returns the fresh instances (stopped) for their RSS."""
        miss, clients = self.manifest.miss, self.plan.herd_clients
        herd_mib = self.manifest.herd[0].size / MIB
        metric = self.results.metric
        rate = metric(
            "miss-mbps",
            f"3. miss: {miss.size / MIB:.0f} MiB file streamed through",
            "MB/s",
            higher_better=True,
            baseline="upstream direct",
        )
        ttfb = metric(
            "miss-ttfb",
            "3. miss: time to first body byte",
            "ms",
            higher_better=False,
            baseline="upstream direct",
        )
        miss_gets = metric("miss-gets", "3. miss: upstream GETs", "GETs", higher_better=False)
        stall = metric(
            "miss-stall",
            "3. miss: slowest small-page request by another client meanwhile",
            "ms",
            higher_better=False,
            baseline="same, during the direct download",
        )
        herd_label = f"4. {clients} first requests at once, {herd_mib:.0f} MiB file"
        gets = metric("herd-gets", f"{herd_label}: upstream GETs", "GETs", higher_better=False)
        took = metric(
            "herd-time",
            f"{herd_label}: until all done",
            "s",
            higher_better=False,
            baseline="the same from upstream direct",
        )
        failed = metric(
            "herd-failed", f"{herd_label}: failed or short", "clients", higher_better=False
        )
        fresh_servers = []
        for rep in range(self.plan.reps):
            fresh = self.cachepi(f"cachepi-fresh-{rep}", WORK / f"cachepi-fresh-{rep}")
            self.running["cachepi-fresh"] = fresh
            pages = [f"/index/{f.project}/" for f in (miss, self.manifest.herd[0])]
            for path in [*pages, self.manifest.pages["small"].path]:  # pip asks for pages first
                for _ in range(4):  # on new connections: every worker has it
                    status, _ = fetch(fresh.base + path, PAGE_HEADERS)
                    if status != 200:
                        raise RuntimeError(f"cachepi: {path} answered {status}")
            before = self.upstream_gets(miss)
            urls = {
                "direct": self.manifest.origin + miss.upstream_path,
                "cachepi": fresh.base + miss.path,
            }
            order = ("direct", "cachepi") if rep % 2 == 0 else ("cachepi", "direct")
            probe = fresh.base + self.manifest.pages["small"].path
            got = {which: asyncio.run(load.download_probed(urls[which], probe)) for which in order}
            (proxied, probes), (direct, direct_probes) = got["cachepi"], got["direct"]
            stall.add("cachepi", max(probes) * 1000)
            stall.add("baseline", max(direct_probes) * 1000)
            if proxied.status != 200 or proxied.size != miss.size:
                self.errors.append(f"miss: answered {proxied.status}, {proxied.size:,} bytes")
            miss_gets.add("cachepi", self.upstream_gets(miss) - before - 1)  # one was direct
            rate.add("cachepi", proxied.mb_per_s)
            rate.add("baseline", direct.mb_per_s)
            ttfb.add("cachepi", proxied.ttfb * 1000)
            ttfb.add("baseline", direct.ttfb * 1000)
            log(
                f"  miss cachepi {proxied.mb_per_s:5.0f} MB/s, TTFB {proxied.ttfb * 1000:5.1f} ms,"
                f" slowest other request {max(probes) * 1000:5.1f} ms;"
                f" direct {direct.mb_per_s:5.0f} MB/s, TTFB {direct.ttfb * 1000:5.1f} ms"
            )
            contenders = (
                ("cachepi", fresh.base, 2 * rep),
                ("proxpi", self.proxpi_base, 2 * rep + 1),
            )
            for name, base, index in contenders:
                n, seconds, bad = self.herd(base, self.manifest.herd[index])
                gets.add(name, n)
                took.add(name, seconds)
                failed.add(name, bad)
                log(f"  herd {name:8} {n} upstream GETs, {seconds:.2f} s, {bad} failed or short")
            direct_herd = load.herd(
                self.manifest.origin + self.manifest.herd[0].upstream_path, clients
            )
            took.add("baseline", asyncio.run(direct_herd)[1])
            fresh.server.sample_rss("after the miss and the herd")
            del self.running["cachepi-fresh"]
            self.procs.stop(fresh.server)
            fresh_servers.append(fresh.server)
        return fresh_servers

    @property
    def proxpi_base(self) -> str:
        return self.running["proxpi"].base

    # -- installs ------------------------------------------------------------------------------

    def bench_installs(self, uv: str) -> None:
        packages = self.manifest.install
        home = WORK / "client-home"
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir()
        env = isolated_env(home)
        target = WORK / "install-target"
        sources = {
            "cachepi": ["--index-url", self.running["cachepi"].base + "/index/"],
            "proxpi": ["--index-url", self.proxpi_base + "/index/"],
            "baseline": ["--no-index", "--find-links", str(self.manifest.find_links)],
        }
        tools_argv = {
            "uv pip install": [uv, "pip", "install", "--python", sys.executable, "--no-cache"],
            "pip install": [sys.executable, "-m", "pip", "install", "--no-cache-dir"],
        }

        def install(tool: str, source: str) -> float:
            shutil.rmtree(target, ignore_errors=True)
            argv = [*tools_argv[tool], "--target", str(target), *sources[source], *packages]
            return load.timed(argv, env)

        for source in sources:  # warm-up: the proxies hold every page and file after it
            install("uv pip install", source)
        for tool in tools_argv:
            metric = self.results.metric(
                f"install-{tool.split()[0]}",
                f"5. warm `{tool}` of {len(packages)} packages",
                "s",
                higher_better=False,
                baseline="local --find-links dir",
            )
            for _ in range(self.plan.install_runs):
                for source in sources:
                    seconds = install(tool, source)
                    metric.add(source, seconds)
                    log(f"  {tool:14} from {source:8} {seconds:5.2f} s")
        shutil.rmtree(target, ignore_errors=True)

    # -- memory --------------------------------------------------------------------------------

    def sample_rss(self, label: str) -> None:
        for name in SERVERS:
            if name in self.running:
                self.running[name].server.sample_rss(label)

    def record_rss(self, fresh: list[Server]) -> None:
        rss = self.results.metric(
            "rss", "6. peak RSS (sum over the server's processes)", "MB", higher_better=False
        )
        for name in SERVERS:
            rss.add(name, self.running[name].server.peak_rss_kib() / 1024)
        fresh_rss = self.results.metric(
            "rss-fresh", "6. peak RSS, fresh cachepi, miss and herd", "MB", higher_better=False
        )
        for server in fresh:
            fresh_rss.add("cachepi", server.peak_rss_seen / 1024)

    # -- profile -------------------------------------------------------------------------------

    def profile(self, py_spy: Path) -> list[str]:
        """py-spy on cachepi under each 32-connection load (no numbers recorded from these)."""
        seconds = max(5, self.plan.seconds)
        pid = self.running["cachepi"].server.pid
        loads = {
            "big page": (self.manifest.pages["big"].path, PAGE_HEADERS),
            "small page": (self.manifest.pages["small"].path, PAGE_HEADERS),
            "file": (self.manifest.file.path, {}),
        }
        lines = []
        for kind, (path, headers) in loads.items():
            out = WORK / f"profile-{kind.replace(' ', '-')}.svg"

            def run(secs: int, path: str = path, headers: dict[str, str] = headers) -> None:
                self.run_wrk("cachepi", path, 32, headers, secs)

            top = spy.record(py_spy, pid, seconds, run, out)
            log(f"  cached {kind}: {out}")
            lines += [
                f"**cached {kind}, 32 connections** (flame graph: `bench/.work/{out.name}`)",
                "",
            ]
            lines += [*top, ""]
        return lines


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _prepare() -> None:
    # Ctrl-C, and also SIGINT where a shell started this in the background with it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    WORK.mkdir(parents=True, exist_ok=True)
    for old_log in WORK.glob("*.log"):
        old_log.unlink()


def command_line(quick: bool, profile: bool = False, with_cluster: bool = False) -> str:
    return " ".join(
        [
            "python -m bench.run",
            *(["--quick"] if quick else []),
            *(["--profile"] if profile else []),
            *(["--cluster"] if with_cluster else []),
        ]
    )


def main_cluster_only(quick: bool, output: Path | None) -> int:
    """Only the cluster section, spliced into `output` (the results of the last full run
    by default): the other sections stay as they were."""
    output = output or (WORK / "quick.md" if quick else RESULTS)
    reason = scaleout.unavailable()
    if reason is not None:
        print(f"bench: cluster section skipped: {reason}", file=sys.stderr)
        return 1
    _prepare()
    plan = scaleout.QUICK if quick else scaleout.FULL
    log(f"cluster only: {plan}")
    tools.ensure_apt_tools()
    workers = 2 if servers.has_workers_flag() else None
    with Processes(WORK) as procs:
        log("starting the fake upstream (building its files)")
        _, manifest = servers.start_upstream(
            procs, file_mb=1, miss_mb=1, herd_mb=1, herd_files=0, page_files=2,
            install_packages=1, cluster=plan.upstream_options(),
        )  # fmt: skip
        result = scaleout.run(plan, procs, manifest, workers)
    command = command_line(quick).replace("bench.run", "bench.run --cluster-only")
    text = scaleout.section(result, command)
    old = output.read_text() if output.exists() else "# cachepi benchmark\n"
    write_results(output, scaleout.splice(old, text))
    return 0


def main_pages_only(quick: bool, output: Path | None, against: Path | None) -> int:
    """Only the cached pages (section 2): cachepi, nginx and bare aiohttp, and with
    `against` (another cachepi's src directory) that cachepi too, as the "before" column,
    each repetition in another order."""
    plan = QUICK if quick else FULL
    output = output or WORK / ("quick-pages.md" if quick else "pages.md")
    _prepare()
    log(f"pages only: {plan}" + (f", against {against}" if against else ""))
    tools.ensure_apt_tools()
    with Processes(WORK) as procs:
        log("starting the fake upstream (building its files) and cachepi")
        upstream, manifest = servers.start_upstream(
            procs, file_mb=1, miss_mb=1, herd_mb=1, herd_files=0,
            page_files=plan.page_files, install_packages=1,
        )  # fmt: skip
        bench = Bench(plan, procs, manifest)
        bench.running["upstream"] = upstream
        bench.running["cachepi"] = bench.cachepi("cachepi", WORK / "cachepi-cache")
        names = ["cachepi", "nginx", "bare"]
        if against is not None:
            env = {"PYTHONPATH": f"{against}:{ROOT}"}
            bench.running["cachepi-before"] = servers.start_cachepi(
                procs, "cachepi-before", manifest.url, WORK / "cachepi-before-cache",
                bench.workers, env,
            )  # fmt: skip
            names.append("cachepi-before")
        bench.page_servers = tuple(names)
        for name in names:
            if name.startswith("cachepi"):
                bench.warm(name)
        static = bench.static_root()
        bench.running["nginx"] = servers.start_nginx(procs, static)
        bench.running["bare"] = servers.start_bare(procs, static, bench.workers or 1)
        notes = bench.check_pages()
        for key, page in manifest.pages.items():
            log(f"2. cached {key} page")
            wait_until_quiet(plan.quiet_wait, bench.all_servers())
            bench.bench_page(key, page)
    notes += [
        f"other processes on the machine used {statistics.median(bench.others):.2f} cores "
        f"(median over the loads, max {max(bench.others):.2f}); hypervisor steal "
        f"{statistics.median(bench.steal):.2f} cores",
        "cachepi: `python -m cachepi serve`, default settings (access log on)"
        + (f", `--workers {bench.workers}`" if bench.workers else ""),
        *([f"before: the same, from {against}"] if against else []),
        *(f"error: {e}" for e in bench.errors),
    ]
    text = "\n".join(
        [
            f"# cached pages, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            "",
            f"medians of {plan.reps} runs, each load {plan.seconds} s of wrk",
            "",
            report.table(bench.results),
            "",
            report.targets_section(bench.results, TARGETS),
            "",
            *(f"- {note}" for note in notes),
            "",
            report.runs_section(bench.results),
            "",
        ]
    )
    print("\n" + text)
    write_results(output, text)
    return 0


def main(quick: bool, profile: bool, output: Path | None, with_cluster: bool = False) -> int:
    plan = QUICK if quick else FULL
    output = output or (WORK / "quick.md" if quick else RESULTS)
    skip_cluster = scaleout.unavailable() if with_cluster else None
    if skip_cluster is not None:
        print(f"bench: cluster section skipped: {skip_cluster}", file=sys.stderr)
    cluster_plan = scaleout.QUICK if quick else scaleout.FULL
    _prepare()
    log(f"{'quick' if quick else 'full'} run: {plan}")
    tools.ensure_apt_tools()
    proxpi_bin = tools.ensure_proxpi()
    uv = tools.uv_binary()
    py_spy = tools.py_spy_binary() if profile else None
    with Processes(WORK) as procs:
        log("starting the fake upstream (building its files), cachepi and proxpi")
        upstream, manifest = servers.start_upstream(
            procs,
            file_mb=plan.file_mb,
            miss_mb=plan.miss_mb,
            herd_mb=plan.herd_mb,
            herd_files=2 * plan.reps,
            page_files=plan.page_files,
            install_packages=plan.install_packages,
            cluster=cluster_plan.upstream_options() if with_cluster else None,
        )
        bench = Bench(plan, procs, manifest)
        bench.running["upstream"] = upstream
        bench.running["cachepi"] = bench.cachepi("cachepi", WORK / "cachepi-cache")
        bench.running["proxpi"] = servers.start_proxpi(procs, proxpi_bin, manifest.url)
        for name in ("cachepi", "proxpi"):
            bench.warm(name)
        static = bench.static_root()
        bench.running["nginx"] = servers.start_nginx(procs, static)
        bench.running["bare"] = servers.start_bare(procs, static, bench.workers or 1)
        notes = bench.check_pages()
        bench.sample_rss("warm")
        log("1. cached file")
        wait_until_quiet(plan.quiet_wait, bench.all_servers())
        bench.bench_file()
        bench.sample_rss("after the file loads")
        for key, page in manifest.pages.items():
            log(f"2. cached {key} page")
            wait_until_quiet(plan.quiet_wait, bench.all_servers())
            bench.bench_page(key, page)
            bench.sample_rss(f"after the {key} page loads")
        log("3-4. misses and thundering herds")
        wait_until_quiet(plan.quiet_wait, bench.all_servers())
        fresh = bench.bench_misses()
        bench.sample_rss("after the herds")
        log("5. installs")
        bench.bench_installs(uv)
        bench.sample_rss("after the installs")
        bench.record_rss(fresh)
        profile_lines = []
        if py_spy is not None:
            log("profiling cachepi")
            profile_lines = bench.profile(py_spy)
        cachepi = bench.running["cachepi"].server
        upstream_rss = upstream.server.peak_rss_kib() / 1024
        cluster_text = scaleout.skipped_section(skip_cluster) if skip_cluster else ""
        if with_cluster and skip_cluster is None:
            for name in ("proxpi", "nginx", "bare"):  # idle, but out of the cluster's way
                procs.stop(bench.running.pop(name).server)
            log("cluster (S3 + Redis)")
            result = scaleout.run(cluster_plan, procs, manifest, bench.workers)
            cluster_text = scaleout.section(result, command_line(quick, profile, with_cluster))
    notes += [
        f"other processes on the machine used {statistics.median(bench.others):.2f} cores "
        f"(median over the loads, max {max(bench.others):.2f}); hypervisor steal "
        f"{statistics.median(bench.steal):.2f} cores",
        "cachepi RSS: "
        + ", ".join(f"{label} {kib / 1024:.0f} MB" for label, kib in cachepi.rss_samples),
        f"cachepi's log: {log_findings(cachepi.log)}",
        *(f"{s.name}'s log: {log_findings(s.log)}" for s in fresh),
        f"the fake upstream's peak RSS: {upstream_rss:.0f} MB",
        "cachepi: `python -m cachepi serve`, default settings (access log on)"
        + (f", `--workers {bench.workers}`" if bench.workers else ", one process (no --workers)"),
        "proxpi: gunicorn as its Docker image runs it (`--preload --threads 2`, one worker, "
        "access log on); nginx: `worker_processes auto`, `sendfile on`, `gzip_static on`, "
        "serving the exact bytes cachepi sent (the file, and each page plain and gzip); "
        "bare aiohttp: bench/bare.py, the same gzip page bytes from memory, as many "
        "processes as cachepi, no logging",
        *(f"error: {e}" for e in bench.errors),
    ]
    command = command_line(quick, profile, with_cluster)
    title = (
        f"`{command}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: medians of {plan.reps} runs "
        f"({plan.install_runs} for installs), each load {plan.seconds} s of wrk; "
        "everything on 127.0.0.1."
    )
    text = report.document(
        title_line=title,
        versions=tools.versions(proxpi_bin, uv),
        results=bench.results,
        targets=TARGETS,
        notes=notes,
        profile=profile_lines,
    )
    if cluster_text:
        text = scaleout.splice(text, cluster_text)
    print("\n" + report.table(bench.results) + "\n")
    print(report.targets_section(bench.results, TARGETS))
    write_results(output, text)
    return 0
