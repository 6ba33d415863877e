"""Shared fixtures: a real fake upstream (tests/fakeupstream) and cachepi in front of it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, settings

from tests.clients import EgressTrap
from tests.fakeupstream import FakeUpstream
from tests.fakeupstream.fixtures import fake_upstream, fake_upstream_factory
from tests.proxy import RunningProxy, settings_for, start_proxy

__all__ = ["fake_upstream", "fake_upstream_factory"]

ProxyFactory = Callable[..., Awaitable[RunningProxy]]

# On a 2-core CI machine running other tests at once, generating examples can be slow:
# neither that nor a slow example is a finding (time bounds live in bench/).
settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.load_profile("ci")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("CACHEPI_LIVE_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="talks to the real upstream; set CACHEPI_LIVE_TESTS=1")
    for item in items:
        if "live" in item.keywords:
            item.add_marker(skip)


@pytest_asyncio.fixture
async def proxy_factory(tmp_path: Path) -> AsyncIterator[ProxyFactory]:
    """Start cachepi proxies (all sharing one cache dir unless told otherwise)."""
    running: list[RunningProxy] = []

    async def start(*upstreams: FakeUpstream | tuple[str, int], **options: Any) -> RunningProxy:
        pairs = [(u.url, 1800) if isinstance(u, FakeUpstream) else u for u in upstreams]
        cache_dir = options.pop("cache_dir", tmp_path / "cache")
        reconcile = options.pop("reconcile", True)
        proxy = await start_proxy(settings_for(cache_dir, *pairs, **options), reconcile)
        running.append(proxy)
        return proxy

    yield start
    for proxy in running:
        await proxy.stop()


@pytest_asyncio.fixture
async def proxy(fake_upstream: FakeUpstream, proxy_factory: ProxyFactory) -> RunningProxy:
    """cachepi in front of the default fake upstream."""
    return await proxy_factory(fake_upstream)


@pytest_asyncio.fixture
async def egress_trap() -> AsyncIterator[EgressTrap]:
    """Pass its `url` as a client's `egress`: whatever the client tries to reach beyond
    127.0.0.1 lands here, refused and recorded in `attempts`."""
    trap = EgressTrap()
    await trap.start()
    yield trap
    await trap.stop()
