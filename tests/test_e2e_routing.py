"""Dependency confusion, end to end: real pip and uv install through two upstreams where the
public one carries a look-alike `acme-lib` 99.0 and a route pins `acme-*` to the private index.
"""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from cachepi.config import load_settings
from tests.clients import pip_install, uv_install
from tests.fakeupstream import FakeUpstream
from tests.fakeupstream.fixtures import FakeUpstreamFactory
from tests.proxy import RunningProxy, start_proxy

pytestmark = pytest.mark.slow  # real pip and uv runs

INSTALLERS = {"pip": pip_install, "uv": uv_install}
USER, PASSWORD = "deploy-bot", "e2e-Pw-77"


def dist_infos(target: Path) -> set[str]:
    return {p.name for p in target.glob("*.dist-info")}


@pytest_asyncio.fixture
async def upstreams(
    fake_upstream_factory: FakeUpstreamFactory,
) -> tuple[FakeUpstream, FakeUpstream]:
    private = await fake_upstream_factory(require_auth=(USER, PASSWORD))
    public = await fake_upstream_factory()
    private.add_project("acme-lib", ["1.0"])
    # The attack: the same name, a higher version, on the public index.
    public.add_project("acme-lib", ["99.0"])
    public.add_project("lib", ["1.0"])
    public.add_project("app", ["1.0"], deps=["acme-lib", "lib>=1"])
    return private, public


@pytest_asyncio.fixture
async def routed_proxy(
    upstreams: tuple[FakeUpstream, FakeUpstream], tmp_path: Path
) -> AsyncIterator[RunningProxy]:
    private, public = upstreams
    config = tmp_path / "cachepi.toml"
    config.write_text(
        textwrap.dedent(
            f"""\
            [[index]]
            name = "public"
            url = "{public.url}"

            [[index]]
            name = "internal"
            url = "{private.url_with_auth}"

            [[route]]
            projects = ["acme-*"]
            index = "internal"
            """
        )
    )
    settings = load_settings(
        {"config": str(config), "cache_dir": str(tmp_path / "cache"), "port": 0}, env={}
    )
    proxy = await start_proxy(settings)
    yield proxy
    await proxy.stop()


@pytest.mark.parametrize("installer", INSTALLERS)
async def test_routed_private_package_wins_over_public_look_alike(
    installer: str,
    upstreams: tuple[FakeUpstream, FakeUpstream],
    routed_proxy: RunningProxy,
    tmp_path: Path,
) -> None:
    private, public = upstreams
    target = tmp_path / "target"
    result = await INSTALLERS[installer](routed_proxy.index_url, target, "app", home=tmp_path)
    assert result.returncode == 0, result.output

    infos = dist_infos(target)
    assert {"app-1.0.dist-info", "lib-1.0.dist-info", "acme_lib-1.0.dist-info"} <= infos, infos
    assert not any(name.startswith("acme_lib-99") for name in infos), infos
    assert (target / "acme_lib" / "__init__.py").read_text().strip().endswith('"1.0"')
    # The private index supplied it; the public one never heard the name.
    assert private.count("/simple/acme-lib/") >= 1
    assert private.count("/files/acme_lib-1.0-py3-none-any.whl") == 1
    asked = [r.path for r in public.requests if "acme" in r.path.lower()]
    assert asked == []
    assert public.count("/simple/app/") >= 1 and public.count("/simple/lib/") >= 1
