"""`cachepi serve --certfile F --keyfile K`: https on the same port, for real clients."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
import trustme

from tests.clients import Result, isolated_env, run
from tests.fakeupstream import FakeUpstream
from tests.fetching import fetch
from tests.rawclient import close_all, closed_by_server_within, open_silent
from tests.served import ServedProxy
from tests.warming import pylock

pytestmark = pytest.mark.slow  # real servers and clients over https

# requests lets these override the CA a client asks for (pip's --cert): a machine's own
# setting, like PIP_CERT, that must not decide what a test trusts.
_CA_OVERRIDES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def wheel_downloads(upstream: FakeUpstream) -> int:
    """Wheels the upstream sent (not their PEP 658 `.metadata`)."""
    return sum(r.path.endswith(".whl") for r in upstream.requests if r.path.startswith("/files/"))


def client_env(home: Path) -> dict[str, str]:
    env = isolated_env(home)
    for name in _CA_OVERRIDES:
        env.pop(name, None)
    return env


async def pip_install(index_url: str, target: Path, *args: str, home: Path) -> Result:
    """`pip install --target` with no pip cache, trusting only what `args` say."""
    return await run(
        sys.executable, "-m", "pip", "install", "--no-cache-dir", "--index-url", index_url,
        "--target", target, *args, env=client_env(home),
    )  # fmt: skip


@dataclass(frozen=True)
class Certs:
    ca: Path  # what clients trust
    cert: Path  # the server's chain
    key: Path
    context: ssl.SSLContext  # a client context trusting `ca`


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    authority = trustme.CA()
    server = authority.issue_cert("127.0.0.1", "localhost")
    ca, cert, key = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    authority.cert_pem.write_to_path(str(ca))
    server.private_key_pem.write_to_path(str(key))
    for i, blob in enumerate(server.cert_chain_pems):
        blob.write_to_path(str(cert), append=i > 0)
    return Certs(ca, cert, key, ssl.create_default_context(cafile=ca))


class HttpsProxy(ServedProxy):
    """ServedProxy whose readiness check and URLs speak https."""

    def __init__(self, *args: object, context: ssl.SSLContext, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.context = context
        self.base = f"https://127.0.0.1:{self.port}"
        self.index_url = f"{self.base}/index/"

    async def _healthy(self) -> None:
        deadline = time.monotonic() + 30
        connector = aiohttp.TCPConnector(ssl=self.context)
        async with aiohttp.ClientSession(connector=connector) as session:
            while time.monotonic() < deadline:
                try:
                    async with session.get(self.base + "/health") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)


@pytest_asyncio.fixture
async def https_proxy(
    fake_upstream: FakeUpstream, certs: Certs, tmp_path: Path, unused_tcp_port: int
) -> AsyncIterator[HttpsProxy]:
    server = HttpsProxy(
        fake_upstream.url, tmp_path / "cache", unused_tcp_port, context=certs.context,
        options=["--certfile", str(certs.cert), "--keyfile", str(certs.key)],
    )  # fmt: skip
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def get(url: str, context: ssl.SSLContext) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session,
        session.get(url) as response,
    ):
        return response.status, await response.read()


async def test_health_and_pages_over_https(https_proxy: HttpsProxy, certs: Certs) -> None:
    status, body = await get(https_proxy.base + "/health", certs.context)
    assert status == 200 and b'"status"' in body
    status, body = await get(https_proxy.index_url + "app/", certs.context)
    assert status == 200
    assert b"app-1.0-py3-none-any.whl" in body


async def test_pip_installs_through_https_with_the_ca(
    https_proxy: HttpsProxy, certs: Certs, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    target = tmp_path / "target"
    result = await pip_install(
        https_proxy.index_url, target, "--cert", str(certs.ca), "app", home=tmp_path
    )
    result.check()
    assert (target / "app-1.0.dist-info").is_dir()
    assert (target / "lib-1.1.dist-info").is_dir()
    assert wheel_downloads(fake_upstream) == 3


async def test_pip_refuses_the_proxy_without_the_ca(
    https_proxy: HttpsProxy, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    result = await pip_install(
        https_proxy.index_url, tmp_path / "target", "--retries", "0", "app", home=tmp_path
    )
    assert result.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in result.output or "certificate" in result.output.lower()
    assert fake_upstream.count_prefix("/files/") == 0


async def test_plain_http_to_the_https_port_gets_nothing(https_proxy: HttpsProxy) -> None:
    try:
        reply = await fetch(f"http://127.0.0.1:{https_proxy.port}/health", seconds=10)
    except (aiohttp.ClientError, TimeoutError):
        return  # the TLS server drops a request that is not a handshake
    assert reply.status >= 400, reply


async def warm(proxy: HttpsProxy, certs: Certs, home: Path, env: dict[str, str]) -> Result:
    requirements = home / "requirements.txt"
    requirements.write_text("app\n")
    return await run(
        sys.executable, "-m", "cachepi", "warm", "-r", requirements,
        "--index-url", proxy.index_url, "--cert", certs.ca, env=env,
    )  # fmt: skip


async def test_warm_through_https_with_the_ca(
    https_proxy: HttpsProxy, certs: Certs, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    result = await warm(https_proxy, certs, tmp_path, client_env(tmp_path))
    result.check()
    assert "warmed 3 files" in result.output
    assert wheel_downloads(fake_upstream) == 3


async def test_warm_cert_wins_over_a_ca_bundle_in_the_environment(
    https_proxy: HttpsProxy, certs: Certs, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Machines often set REQUESTS_CA_BUNDLE (this one does); `warm --cert` must still
    trust the CA it was given."""
    system_bundle = ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"
    env = client_env(tmp_path) | {name: system_bundle for name in _CA_OVERRIDES}
    result = await warm(https_proxy, certs, tmp_path, env)
    result.check()
    assert wheel_downloads(fake_upstream) == 3


async def test_warm_of_a_lock_through_https_with_the_ca(
    https_proxy: HttpsProxy, certs: Certs, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A lock goes to the proxy as a warm job (POST /warm): over https, with the CA given."""
    lock = tmp_path / "pylock.toml"
    lock.write_text(pylock(d for d in fake_upstream.dists("app") if d.is_wheel))
    result = await run(
        sys.executable, "-m", "cachepi", "warm", lock, "--index-url", https_proxy.index_url,
        "--cert", certs.ca, env=client_env(tmp_path),
    )  # fmt: skip
    result.check()
    assert "pylock.toml: 1 file (933 B): 1 cached" in result.output, result.output
    untrusted = await run(
        sys.executable, "-m", "cachepi", "warm", lock, "--index-url", https_proxy.index_url,
        env=client_env(tmp_path),
    )  # fmt: skip
    assert untrusted.returncode == 2 and "CERTIFICATE_VERIFY_FAILED" in untrusted.output


async def test_certificate_settings_from_the_environment(
    fake_upstream: FakeUpstream, certs: Certs, tmp_path: Path, unused_tcp_port: int
) -> None:
    server = HttpsProxy(
        fake_upstream.url, tmp_path / "cache", unused_tcp_port, context=certs.context,
        env={"CACHEPI_CERTFILE": str(certs.cert), "CACHEPI_KEYFILE": str(certs.key)},
    )  # fmt: skip
    await server.start()
    try:
        status, _ = await get(server.base + "/health", certs.context)
        assert status == 200
    finally:
        await server.stop()


async def test_sockets_that_never_start_tls_make_room_for_clients(
    fake_upstream: FakeUpstream, certs: Certs, tmp_path: Path, unused_tcp_port: int
) -> None:
    """A connection is in the book from the moment it is accepted, handshake or not: at the
    cap the longest waiting are closed, and an https client gets through."""
    server = HttpsProxy(
        fake_upstream.url, tmp_path / "cache", unused_tcp_port, context=certs.context,
        options=["--certfile", str(certs.cert), "--keyfile", str(certs.key),
                 "--client-connections", "8", "--head-timeout", "60"],
    )  # fmt: skip
    await server.start()
    silent = await open_silent(server.port, 50)
    try:
        status, _ = await asyncio.wait_for(get(server.base + "/health", certs.context), 5)
        assert status == 200
        await closed_by_server_within(silent, 50 - 8, within=5)
    finally:
        close_all(silent)
        await server.stop()


async def test_a_socket_that_never_starts_tls_is_cut_at_the_head_timeout(
    fake_upstream: FakeUpstream, certs: Certs, tmp_path: Path, unused_tcp_port: int
) -> None:
    server = HttpsProxy(
        fake_upstream.url, tmp_path / "cache", unused_tcp_port, context=certs.context,
        options=["--certfile", str(certs.cert), "--keyfile", str(certs.key),
                 "--head-timeout", "1"],
    )  # fmt: skip
    await server.start()
    silent = await open_silent(server.port, 1)
    began = time.monotonic()
    try:
        await closed_by_server_within(silent, 1, within=5)
        took = time.monotonic() - began
    finally:
        close_all(silent)
        await server.stop()
    assert took > 0.9, took


async def test_a_slow_https_download_outlives_the_timeouts(
    fake_upstream: FakeUpstream, certs: Certs, tmp_path: Path, unused_tcp_port: int
) -> None:
    """Half-second head and keep-alive timeouts, about 4 s of reading. A request may arrive
    with the end of the handshake, before the connection is handed to its handler: it is
    busy from the start all the same. The answer is done while much of it still waits in
    the TLS layer's buffers: a keep-alive timeout then must let that tail out."""
    (big,) = fake_upstream.add_project("slowtls", ["1.0"], big_mb=10, sdist=False)
    server = HttpsProxy(
        fake_upstream.url, tmp_path / "cache", unused_tcp_port, context=certs.context,
        options=["--certfile", str(certs.cert), "--keyfile", str(certs.key),
                 "--head-timeout", "0.5", "--keepalive-timeout", "0.5"],
    )  # fmt: skip
    await server.start()
    url = f"{server.index_url}{big.project}/{big.filename}"
    try:
        assert (await get(url, certs.context))[0] == 200  # cached
        digest = hashlib.sha256()
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=certs.context)) as session,
            session.get(url, read_bufsize=64 * 1024) as response,
        ):
            async for chunk in response.content.iter_chunked(64 * 1024):
                digest.update(chunk)
                await asyncio.sleep(0.025)
    finally:
        await server.stop()
    assert digest.hexdigest() == big.sha256
