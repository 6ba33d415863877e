"""pytest fixtures around FakeUpstream; import them into conftest.py to use them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest_asyncio

from .server import FakeUpstream, add_default_tree

FakeUpstreamFactory = Callable[..., Awaitable[FakeUpstream]]


@pytest_asyncio.fixture
async def fake_upstream() -> AsyncIterator[FakeUpstream]:
    """A started upstream serving the default tree (app -> lib, util-pkg)."""
    async with FakeUpstream() as upstream:
        add_default_tree(upstream)
        yield upstream


@pytest_asyncio.fixture
async def fake_upstream_factory() -> AsyncIterator[FakeUpstreamFactory]:
    """Start more upstreams, empty, with any FakeUpstream options; all stop at teardown."""
    started: list[FakeUpstream] = []

    async def start(**options: Any) -> FakeUpstream:
        upstream = FakeUpstream(**options)
        await upstream.start()
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        await upstream.stop()
