"""Against the real default upstream: run with CACHEPI_LIVE_TESTS=1 (skipped otherwise)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import aiohttp
import pytest

from cachepi.config import default_index_url
from tests.clients import pip_install, uv_install
from tests.conftest import ProxyFactory

pytestmark = pytest.mark.live
JSON = "application/vnd.pypi.simple.v1+json"


async def test_real_index_pages_and_files_pass_through(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await proxy_factory((default_index_url(), 1800))
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.index_url + "six/", headers={"Accept": JSON}) as response:
            assert response.status == 200, await response.text()
            page = await response.json(content_type=None)
        wheel = next(f for f in page["files"] if f["filename"] == "six-1.16.0-py2.py3-none-any.whl")
        async with session.get(proxy.index_url + "six/" + wheel["url"]) as response:
            body = await response.read()
    assert hashlib.sha256(body).hexdigest() == wheel["hashes"]["sha256"]
    assert isinstance(page["meta"]["_last-serial"], str | int)


@pytest.mark.parametrize("install", [pip_install, uv_install], ids=["pip", "uv"])
async def test_real_install_through_the_proxy(
    install, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await proxy_factory((default_index_url(), 1800))
    (await install(proxy.index_url, tmp_path / "t", "six==1.16.0", home=tmp_path)).check()
    assert (tmp_path / "t" / "six.py").is_file()
