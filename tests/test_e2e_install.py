"""Real pip and uv install a small dependency tree through cachepi from the fake upstream."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from tests.clients import isolated_env, pip_install, uv_install
from tests.conftest import ProxyFactory
from tests.fakeupstream import FakeUpstream
from tests.fetching import wait_healthy

pytestmark = pytest.mark.slow  # real pip and uv runs

INSTALLERS = {"pip": pip_install, "uv": uv_install}


def installed(target: Path) -> set[str]:
    return {p.name for p in target.iterdir() if (p / "__init__.py").is_file()}


@pytest.mark.parametrize("installer", INSTALLERS)
async def test_install_cold_then_warm_then_offline_after_restart(
    installer: str, fake_upstream: FakeUpstream, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    install = INSTALLERS[installer]
    proxy = await proxy_factory(fake_upstream)

    cold = await install(proxy.index_url, tmp_path / "cold", "app", home=tmp_path)
    assert installed(tmp_path / "cold") == {"app", "lib", "util_pkg"}, cold.check().output
    assert fake_upstream.count_prefix("/files/") > 0  # the files came through us

    fake_upstream.reset_counts()
    warm = await install(proxy.index_url, tmp_path / "warm", "app", home=tmp_path)
    assert installed(tmp_path / "warm") == {"app", "lib", "util_pkg"}, warm.check().output
    assert fake_upstream.requests == []  # everything served from the cache

    # A new process (same cache dir, pages still fresh) with the upstream gone.
    await proxy.stop()
    await fake_upstream.stop()
    restarted = await proxy_factory(fake_upstream)
    offline = await install(restarted.index_url, tmp_path / "offline", "app", home=tmp_path)
    assert installed(tmp_path / "offline") == {"app", "lib", "util_pkg"}, offline.check().output
    assert fake_upstream.requests == []


async def test_installed_files_are_the_upstream_bytes(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await proxy_factory(fake_upstream)
    (await uv_install(proxy.index_url, tmp_path / "t", "lib==1.0", home=tmp_path)).check()
    wheel = next(d for d in fake_upstream.dists("lib") if d.filename.startswith("lib-1.0-"))
    assert (tmp_path / "t" / "lib" / "__init__.py").read_text().strip().endswith('"1.0"')
    stored = list((proxy.settings.cache_dir / "blobs").rglob(wheel.sha256))
    assert [p.read_bytes() for p in stored] == [wheel.read_bytes()]


async def test_cachepi_serve_command_proxies_for_pip(
    fake_upstream: FakeUpstream, tmp_path: Path, unused_tcp_port: int
) -> None:
    """The command a user runs: `python -m cachepi serve`, configured the proxpi way."""
    env = isolated_env(tmp_path)
    env |= {"PROXPI_INDEX_URL": fake_upstream.url, "PROXPI_CACHE_DIR": str(tmp_path / "c")}
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cachepi", "serve", "--port", str(unused_tcp_port),
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{unused_tcp_port}"
    try:
        await wait_healthy(base)
        result = await pip_install(f"{base}/index/", tmp_path / "t", "app", home=tmp_path)
        assert installed(tmp_path / "t") == {"app", "lib", "util_pkg"}, result.output
    finally:
        server.terminate()
        await server.wait()
    assert (tmp_path / "c" / "cachepi.sqlite3").is_file()
