"""Starting the servers: the fake upstream, cachepi, proxpi (as its image runs it), nginx
(the same bytes, served statically) and bare aiohttp (the same page bytes, from memory).
All listen on 127.0.0.1 only."""

from __future__ import annotations

import json
import select
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.cluster import free_ports

from bench.procs import Processes, Server, wait_http
from bench.tools import ROOT, WORK, nginx_binary, server_env

# proxpi's image runs `gunicorn --preload --access-logfile - --access-logformat ...
# --logger-class proxpi.server._GunicornLogger proxpi.server:app` (its Dockerfile's
# ENTRYPOINT) with CMD `--bind 0.0.0.0:5000 --threads 2`; here it binds to 127.0.0.1.
PROXPI_ARGS = (
    "--preload",
    "--access-logfile", "-",
    "--access-logformat", '%(h)s "%(r)s" %(s)s %(b)s %(M)dms',
    "--logger-class", "proxpi.server._GunicornLogger",
    "proxpi.server:app",
    "--threads", "2",
)  # fmt: skip


@dataclass(frozen=True)
class FileInfo:
    project: str
    filename: str
    size: int
    sha256: str

    @property
    def path(self) -> str:
        """Its URL path on a proxy."""
        return f"/index/{self.project}/{self.filename}"

    @property
    def upstream_path(self) -> str:
        return f"/files/{self.filename}"


@dataclass(frozen=True)
class PageInfo:
    project: str
    files: int

    @property
    def path(self) -> str:
        return f"/index/{self.project}/"


@dataclass(frozen=True)
class ClusterFiles:
    """The cluster section's files (bench/scaleout.py)."""

    file: FileInfo  # served cached, by an S3-backed node and by a local-store one
    stampede: list[FileInfo]  # one per stampede run, each answered `delay` seconds late
    delay: float


@dataclass(frozen=True)
class Manifest:
    """What bench.upstream serves, as it printed it."""

    url: str  # the index URL
    origin: str
    control: str  # its request counter
    file: FileInfo
    miss: FileInfo
    herd: list[FileInfo]
    pages: dict[str, PageInfo]  # "big", "small"
    install: list[str]
    find_links: Path
    cluster: ClusterFiles | None = None

    @classmethod
    def parse(cls, line: bytes) -> Manifest:
        data = json.loads(line)
        return cls(
            url=data["url"],
            origin=data["origin"],
            control=data["control"],
            file=FileInfo(**data["file"]),
            miss=FileInfo(**data["miss"]),
            herd=[FileInfo(**d) for d in data["herd"]],
            pages={k: PageInfo(**v) for k, v in data["pages"].items()},
            install=list(data["install"]),
            find_links=Path(data["find_links"]),
            cluster=ClusterFiles(
                file=FileInfo(**cluster["file"]),
                stampede=[FileInfo(**d) for d in cluster["stampede"]],
                delay=cluster["stampede_delay"],
            )
            if (cluster := data.get("cluster"))
            else None,
        )


@dataclass(frozen=True)
class Running:
    server: Server
    base: str  # http://127.0.0.1:PORT


def start_upstream(
    procs: Processes, *, file_mb: float, miss_mb: float, herd_mb: float, herd_files: int,
    page_files: int, install_packages: int, cluster: Mapping[str, float] | None = None,
) -> tuple[Running, Manifest]:  # fmt: skip
    """`cluster`: the cluster section's files, as bench.upstream's options
    (`cluster_file_mb`, `stampede_mb`, `stampede_files`, `stampede_delay`)."""
    find_links = WORK / "find-links"
    shutil.rmtree(find_links, ignore_errors=True)
    argv = [
        sys.executable, "-m", "bench.upstream",
        "--file-mb", file_mb, "--miss-mb", miss_mb,
        "--herd-mb", herd_mb, "--herd-files", herd_files,
        "--page-files", page_files, "--install-packages", install_packages,
        "--find-links-dir", find_links,
    ]  # fmt: skip
    for option, value in (cluster or {}).items():
        argv += [f"--{option.replace('_', '-')}", value]
    server = procs.start(
        "upstream",
        [str(a) for a in argv],
        env=server_env(),
        cwd=ROOT,
        stdin=subprocess.PIPE,  # closing it stops the upstream, however this process ends
        stdout=subprocess.PIPE,
    )
    assert server.popen.stdout is not None
    ready, _, _ = select.select([server.popen.stdout], [], [], 180)
    line = server.popen.stdout.readline() if ready else b""
    if not line:
        raise RuntimeError(f"the upstream did not start:\n{server.log_tail()}")
    manifest = Manifest.parse(line)
    return Running(server, manifest.origin), manifest


def has_workers_flag() -> bool:
    help_text = subprocess.run(
        [sys.executable, "-m", "cachepi", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return "--workers" in help_text


def start_cachepi(
    procs: Processes,
    name: str,
    index_url: str,
    cache_dir: Path,
    workers: int | None,
    env: Mapping[str, str] | None = None,
) -> Running:
    """`env`: settings on top of the harness's clean environment (the cluster's)."""
    shutil.rmtree(cache_dir, ignore_errors=True)
    (port,) = free_ports(1)
    argv = [
        sys.executable, "-m", "cachepi", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--cache-dir", str(cache_dir), "--index-url", index_url,
    ]  # fmt: skip
    if workers is not None:
        argv += ["--workers", str(workers)]
    server = procs.start(name, argv, env=server_env() | dict(env or {}), cwd=WORK)
    running = Running(server, f"http://127.0.0.1:{port}")
    wait_http(server, running.base + "/health")
    return running


def start_proxpi(procs: Processes, bin_dir: Path, index_url: str) -> Running:
    (port,) = free_ports(1)
    cache_dir = WORK / "proxpi-cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    env = server_env() | {"PROXPI_INDEX_URL": index_url, "PROXPI_CACHE_DIR": str(cache_dir)}
    argv = [bin_dir / "gunicorn", *PROXPI_ARGS, "--bind", f"127.0.0.1:{port}"]
    server = procs.start("proxpi", [str(a) for a in argv], env=env, cwd=WORK)
    running = Running(server, f"http://127.0.0.1:{port}")
    wait_http(server, running.base + "/index/")
    return running


def start_bare(procs: Processes, root: Path, workers: int) -> Running:
    """bench/bare.py: aiohttp answering page requests from memory, nothing more."""
    (port,) = free_ports(1)
    argv = [sys.executable, ROOT / "bench" / "bare.py", "--port", port, "--root", root]
    argv += ["--workers", workers]
    server = procs.start("bare", [str(a) for a in argv], env=server_env(), cwd=WORK)
    running = Running(server, f"http://127.0.0.1:{port}")
    wait_http(server, running.base + "/")
    return running


def start_nginx(procs: Processes, root: Path) -> Running:
    (port,) = free_ports(1)
    prefix = WORK / "nginx"
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_config(prefix, root, port))
    argv = [nginx_binary(), "-p", prefix, "-c", conf, "-e", prefix / "error.log"]
    server = procs.start("nginx", [str(a) for a in argv], env=server_env(), cwd=prefix)
    running = Running(server, f"http://127.0.0.1:{port}")
    wait_http(server, running.base + "/")
    return running


def nginx_config(prefix: Path, root: Path, port: int) -> str:
    """Static files with sendfile, pages as `index.json` (+ `.gz` for gzip_static)."""
    tmp = prefix / "tmp"
    return f"""\
worker_processes auto;
daemon off;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{ worker_connections 1024; }}
http {{
    types {{ application/vnd.pypi.simple.v1+json json; application/octet-stream whl; }}
    default_type application/octet-stream;
    access_log {prefix / "access.log"} combined buffer=64k flush=1s;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    gzip_static on;
    gzip_vary on;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        index index.json;
    }}
}}
"""
