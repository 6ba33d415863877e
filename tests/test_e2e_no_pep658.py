"""Real uv and pip resolving an index without PEP 658 metadata through cachepi (issue 16):
the same pins as directly, at most twice the upstream's bytes (and 1 MiB) cold, no file
bytes warm, pip with and without fast-deps, and two workers that each serve whatever any
of them advertised. The fake upstream counts the bytes; the tree is tests/resolving.py's
(bench/no_pep658.py measures it full size, with times)."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio

from tests.clients import isolated_env, run
from tests.conftest import ProxyFactory
from tests.fakeupstream import FakeUpstream
from tests.fakeupstream.metered import MeteredUpstream
from tests.resolving import PINS, populate, uv_compile
from tests.served import ServedProxy

pytestmark = pytest.mark.slow  # real uv and pip runs

MIB = 1024 * 1024


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[MeteredUpstream]:
    async with MeteredUpstream(format="html", pep700=False) as up:
        populate(up, scale=0.3)
        yield up


def file_bytes(upstream: MeteredUpstream) -> int:
    return upstream.sent("/files/*", None)


async def test_uv_through_a_cold_proxy_costs_at_most_twice_the_bytes_and_warm_none(
    upstream: MeteredUpstream, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    direct = await uv_compile(upstream.url, tmp_path / "direct")
    assert direct.pins == PINS, direct.output
    direct_bytes = file_bytes(upstream)
    assert direct_bytes < MIB  # ranges of the wheels, not the wheels (about 20 MB)
    upstream.reset_counts()
    proxy = await proxy_factory(upstream)
    cold = await uv_compile(proxy.index_url, tmp_path / "cold")
    assert cold.pins == PINS, cold.output
    cold_bytes = file_bytes(upstream)
    assert cold_bytes <= 2 * direct_bytes + MIB, (cold_bytes, direct_bytes)
    assert all(r.status == 206 for r in upstream.requests if r.path.startswith("/files/"))
    upstream.reset_counts()
    warm = await uv_compile(proxy.index_url, tmp_path / "warm")
    assert warm.pins == PINS, warm.output
    assert file_bytes(upstream) == 0
    assert [s for s in proxy.seen if s.status >= 400] == []


async def pip_resolve(index_url: str, home: Path, *options: str) -> dict[str, str]:
    """What `pip install --dry-run` would install: {name: version}."""
    report = home / "report.json"
    result = await run(
        sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
        "--no-cache-dir", "--index-url", index_url, "--report", report, *options, "app",
        env=isolated_env(home),
    )  # fmt: skip
    assert report.is_file(), result.output
    installs = json.loads(report.read_text())["install"]
    return {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in installs}


@pytest.mark.parametrize("fast_deps", [False, True], ids=["plain", "fast-deps"])
async def test_pip_resolves_through_the_proxy_with_and_without_fast_deps(
    fast_deps: bool, upstream: MeteredUpstream, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await proxy_factory(upstream)
    options = ["--use-feature=fast-deps"] if fast_deps else []
    assert await pip_resolve(proxy.index_url, tmp_path, *options) == PINS
    # pip resolved from the advertised metadata: the candidate it backtracked from was
    # read, never fetched whole (pip fetches the wheels it pins, even for a dry run).
    seen = {s.path.rsplit("/", 1)[1]: s.status for s in proxy.seen}
    assert seen["bigwheel_c-2.0-py3-none-any.whl.metadata"] == 200
    assert "bigwheel_c-2.0-py3-none-any.whl" not in seen
    assert {status for path, status in seen.items() if path.endswith(".metadata")} == {200}
    candidate = upstream.file_path("bigwheel_c-2.0-py3-none-any.whl")
    assert {r.status for r in upstream.requests_to(candidate)} == {206}


def metadata_answers(served: ServedProxy) -> list[tuple[str, str]]:
    """(path, status) of every .metadata request in the server's access log."""
    return re.findall(r'"GET (\S+\.metadata) HTTP/1\.1" (\d{3})', served.log_text())


async def test_two_workers_serve_every_metadata_either_of_them_advertised(
    upstream: MeteredUpstream, tmp_path: Path, unused_tcp_port: int
) -> None:
    """A resolution right after a cold one, and two at once: every page a worker rendered
    advertises METADATA (`true`, or its hash when that worker knows the pair), and every
    such file is there, whichever worker uv asks. Once, the second resolution failed on a
    404 from the worker that had not yet heard of the pair."""
    served = ServedProxy(upstream.url, tmp_path / "cache", unused_tcp_port, workers=2)
    await served.start()
    try:
        cold = await uv_compile(served.index_url, tmp_path / "cold")
        right_after = await uv_compile(served.index_url, tmp_path / "right-after")
        both = await asyncio.gather(
            *(uv_compile(served.index_url, tmp_path / f"at-once-{i}") for i in range(2))
        )
    finally:
        await served.stop()
    for resolution in (cold, right_after, *both):
        assert resolution.pins == PINS, resolution.output
    answers = metadata_answers(served)
    assert answers and {status for _, status in answers} == {"200"}, answers
    assert len(set(re.findall(r"pid=(\d+)", served.log_text()))) == 2  # both workers answered


async def test_uv_exclude_newer_uses_the_upload_times_learned_from_last_modified(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    """An index without upload times: uv's --exclude-newer excludes every file it cannot
    date. Through the proxy, the files resolutions touched are dated by their
    Last-Modified; then a cutoff between lib 1.0 and 1.1 picks lib 1.0."""
    async with FakeUpstream(format="html", pep700=False) as upstream:
        upstream.add_project("app", ["1.0"], deps=["lib>=1.0"], core_metadata=False)
        upstream.add_project("lib", ["1.0"], core_metadata=False)
        for dist in upstream.add_project("lib", ["1.1"], core_metadata=False):
            upstream.add_dist(
                dist, upload_time=datetime(2025, 6, 1, tzinfo=UTC), core_metadata=False
            )
        proxy = await proxy_factory(upstream)
        for requirement in ("app", "lib==1.0"):  # touches the wheels of both versions
            touched = await uv_compile(
                proxy.index_url, tmp_path / requirement, requirements=[requirement]
            )
            assert touched.pins, touched.output
        cutoff = ["--exclude-newer", "2025-01-01T00:00:00Z"]
        resolved = await uv_compile(proxy.index_url, tmp_path / "cutoff", *cutoff)
        assert resolved.pins == {"app": "1.0", "lib": "1.0"}, resolved.output
        direct = await uv_compile(upstream.url, tmp_path / "direct", *cutoff)
        assert direct.pins == {}, direct.output  # directly, nothing can be dated
