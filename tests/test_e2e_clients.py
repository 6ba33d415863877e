"""Real installers and lockers (pip, uv, poetry, pdm) resolve the small fake tree through cachepi.

Each test pins concrete results (installed versions, locked files with the upstream's sha256),
what the client asked of the proxy, and that the client tried to reach nothing beyond
127.0.0.1 (its off-loopback traffic goes to an `EgressTrap`).
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.clients import (
    PDM,
    POETRY,
    EgressTrap,
    Locker,
    lock,
    locked_packages,
    pip_install,
    uv_install,
    write_project,
)
from tests.conftest import ProxyFactory
from tests.fakeupstream import Dist, FakeUpstream, build_wheel
from tests.proxy import RunningProxy, Seen

pytestmark = pytest.mark.slow  # real pip, uv, poetry and pdm runs

# What `app` resolves to on the default fake tree: the newest of everything.
NEWEST = {"app": "1.0", "lib": "1.1", "util-pkg": "0.5"}
INSTALLERS = {"pip": pip_install, "uv": uv_install}
LOCKERS = {"poetry": POETRY, "pdm": PDM}
_PAGE = re.compile(r"/index/[^/]+/\Z")


def installed(target: Path) -> dict[str, str]:
    """{normalized project: version} of what an installer put in `target` (each fake module
    records its version in `__init__.py`)."""
    versions = {}
    for init in target.glob("*/__init__.py"):
        found = re.search(r'__version__ = "(.+)"', init.read_text())
        assert found, init
        versions[init.parent.name.replace("_", "-")] = found[1]
    return versions


def page_requests(proxy: RunningProxy) -> list[Seen]:
    return [s for s in proxy.seen if _PAGE.match(s.path)]


def unlist_core_metadata(upstream: FakeUpstream) -> None:
    """Relist the tree's wheels without PEP 658 metadata, as older indexes serve them, so
    clients read METADATA out of the wheels with Range requests. The app wheel is padded to
    250 KiB: reading its tail is then a true partial read of a file the proxy lacks."""
    for project in NEWEST:
        for dist in upstream.dists(project):
            if dist.is_wheel:
                if project == "app":
                    dist = build_wheel("app", "1.0", requires=["lib>=1.0", "Util_Pkg"],
                                       big_mb=0.25)  # fmt: skip
                upstream.add_dist(Dist.from_bytes(dist.filename, dist.read_bytes()))


def newest_wheel_paths(upstream: FakeUpstream) -> dict[str, Dist]:
    """{proxy path: wheel} for the wheels of NEWEST."""
    return {f"/index/{p}/{d.filename}": d for p in NEWEST for d in upstream.dists(p)
            if d.is_wheel and d.version == NEWEST[p]}  # fmt: skip


def expected_lock(upstream: FakeUpstream) -> dict[str, tuple[str, dict[str, str]]]:
    """NEWEST as `locked_packages` reads a lock: every file of each version, upstream sha256."""
    return {
        name: (version, {d.filename: f"sha256:{d.sha256}" for d in upstream.dists(name)
                         if d.version == version})
        for name, version in NEWEST.items()
    }  # fmt: skip


def assert_clean_run(proxy: RunningProxy, trap: EgressTrap) -> None:
    """No proxy errors, and nothing sent anywhere but loopback."""
    assert [(s.path, s.status) for s in proxy.seen if s.status >= 400] == []
    assert trap.attempts == []


@pytest.mark.parametrize("installer", INSTALLERS)
async def test_installer_installs_newest_tree_through_proxy(
    installer: str,
    fake_upstream: FakeUpstream,
    proxy_factory: ProxyFactory,
    egress_trap: EgressTrap,
    tmp_path: Path,
) -> None:
    proxy = await proxy_factory(fake_upstream)
    install = INSTALLERS[installer]
    result = await install(
        proxy.index_url, tmp_path / "t", "app", home=tmp_path, egress=egress_trap.url
    )
    assert installed(tmp_path / "t") == NEWEST, result.check().output
    # Both read the PEP 658 metadata the proxy lists, then download only the chosen wheels.
    metadata = {s.path.rsplit("/", 1)[1] for s in proxy.seen if s.path.endswith(".metadata")}
    assert metadata == {
        "app-1.0-py3-none-any.whl.metadata",
        "lib-1.1-py3-none-any.whl.metadata",
        "util_pkg-0.5-py3-none-any.whl.metadata",
    }
    assert fake_upstream.count("/files/lib-1.1-py3-none-any.whl") == 1
    assert fake_upstream.count_prefix("/files/lib-1.0") == 0
    assert_clean_run(proxy, egress_trap)


async def test_pip_fast_deps_reads_ranges_of_a_wheel_url_through_the_proxy(
    fake_upstream: FakeUpstream,
    proxy_factory: ProxyFactory,
    egress_trap: EgressTrap,
    tmp_path: Path,
) -> None:
    # pip's fast-deps ("lazy wheel") reads a wheel's METADATA with HEAD and Range requests
    # (10 KiB at a time from the end) when it has no PEP 658 metadata, as for a wheel URL
    # given on its command line. Through the proxy, those ranges are the upstream's: the
    # whole wheel is fetched once, for the install.
    (wheel,) = fake_upstream.add_project(
        "lazy", ["1.0"], deps=["lib>=1.0"], big_mb=0.25, sdist=False
    )
    proxy = await proxy_factory(fake_upstream)
    path = f"/index/lazy/{wheel.filename}"
    result = await pip_install(
        proxy.index_url, tmp_path / "t", proxy.url + path,
        home=tmp_path, options=["--use-feature=fast-deps"], egress=egress_trap.url,
    )  # fmt: skip
    assert installed(tmp_path / "t") == {"lazy": "1.0", "lib": "1.1"}, result.check().output
    asked = [(s.method, s.headers.get("Range"), s.status) for s in proxy.seen if s.path == path]
    assert asked[0] == ("HEAD", None, 200) and asked[-1] == ("GET", None, 200), asked
    ranges = [r for _, r, status in asked[1:-1] if status == 206 and r and r.startswith("bytes=")]
    assert len(ranges) == len(asked) - 2 >= 1, asked
    upstream = [
        r.headers.get("Range")
        for r in fake_upstream.requests_to(fake_upstream.file_path(wheel.filename))
    ]
    assert upstream == [*ranges, None]  # each range passed through, then the whole wheel
    assert_clean_run(proxy, egress_trap)


async def test_uv_exclude_newer_installs_lib_released_before_the_cutoff(
    fake_upstream: FakeUpstream,
    proxy_factory: ProxyFactory,
    egress_trap: EgressTrap,
    tmp_path: Path,
) -> None:
    # The default tree is uploaded in 2024, a minute apart in adding order, util-pkg after
    # lib 1.1: no cutoff between those keeps util-pkg. So lib 1.1 is re-dated to 2030.
    for dist in fake_upstream.dists("lib"):
        if dist.version == "1.1":
            fake_upstream.add_dist(dist, upload_time=datetime(2030, 1, 1, tzinfo=UTC))
    proxy = await proxy_factory(fake_upstream)
    result = await uv_install(
        proxy.index_url, tmp_path / "t", "app",
        home=tmp_path, options=["--exclude-newer", "2029-01-01T00:00:00Z"],
        egress=egress_trap.url,
    )  # fmt: skip
    assert installed(tmp_path / "t") == NEWEST | {"lib": "1.0"}, result.check().output
    # The cutoff works only if the proxy's JSON pages carry each file's upload-time.
    assert not [s for s in proxy.seen if "lib-1.1" in s.path]
    assert_clean_run(proxy, egress_trap)


@pytest.mark.parametrize("tool", LOCKERS)
async def test_locker_locks_tree_with_upstream_hashes_from_proxy_alone(
    tool: str,
    fake_upstream: FakeUpstream,
    proxy_factory: ProxyFactory,
    egress_trap: EgressTrap,
    tmp_path: Path,
) -> None:
    locker: Locker = LOCKERS[tool]
    proxy = await proxy_factory(fake_upstream)
    project = tmp_path / "project"
    write_project(locker, project, proxy.index_url, "app")
    result = await lock(locker, project, home=tmp_path / "home", egress=egress_trap.url)
    assert (project / locker.lock_file).is_file(), result.check().output
    assert locked_packages(project / locker.lock_file) == expected_lock(fake_upstream)
    # The tool asked the proxy for every page itself (no lock came from anywhere else).
    asked = {s.path for s in page_requests(proxy) if s.headers["User-Agent"].startswith(tool)}
    assert asked == {"/index/app/", "/index/lib/", "/index/util-pkg/"}
    assert_clean_run(proxy, egress_trap)


async def test_poetry_locks_an_index_without_pep_658_from_ranges_of_its_wheels(
    fake_upstream: FakeUpstream,
    proxy_factory: ProxyFactory,
    egress_trap: EgressTrap,
    tmp_path: Path,
) -> None:
    # The index offers no PEP 658 metadata; the proxy advertises it for every wheel and
    # reads it from a few ranges of each: locking fetches no wheel whole.
    unlist_core_metadata(fake_upstream)
    proxy = await proxy_factory(fake_upstream)
    project = tmp_path / "project"
    write_project(POETRY, project, proxy.index_url, "app")
    result = await lock(POETRY, project, home=tmp_path / "home", egress=egress_trap.url)
    assert (project / POETRY.lock_file).is_file(), result.check().output
    assert locked_packages(project / POETRY.lock_file) == expected_lock(fake_upstream)
    metadata = {s.path for s in proxy.seen if s.path.endswith(".metadata") and s.status == 200}
    assert metadata == {path + ".metadata" for path in newest_wheel_paths(fake_upstream)}
    wheels = [r for r in fake_upstream.requests if r.path.endswith(".whl")]
    assert wheels and all(r.status == 206 and "Range" in r.headers for r in wheels), wheels
    assert_clean_run(proxy, egress_trap)


async def test_uv_cache_answers_fresh_pages_without_asking_the_proxy(
    fake_upstream: FakeUpstream,
    proxy_factory: ProxyFactory,
    egress_trap: EgressTrap,
    tmp_path: Path,
) -> None:
    proxy = await proxy_factory(fake_upstream)  # pages: Cache-Control max-age=600
    for run in ("first", "second"):
        result = await uv_install(
            proxy.index_url, tmp_path / run, "app",
            home=tmp_path, cache=True, egress=egress_trap.url,
        )  # fmt: skip
        assert installed(tmp_path / run) == NEWEST, result.check().output
        if run == "first":
            assert len(page_requests(proxy)) == 3
            proxy.seen.clear()
    # Pages are fresh (max-age), metadata and wheels immutable: nothing to ask at all.
    assert proxy.seen == []
    assert egress_trap.attempts == []


async def test_uv_revalidates_stale_pages_and_gets_304(
    fake_upstream: FakeUpstream,
    proxy_factory: ProxyFactory,
    egress_trap: EgressTrap,
    tmp_path: Path,
) -> None:
    proxy = await proxy_factory(fake_upstream, page_max_age=1)
    first = await uv_install(
        proxy.index_url, tmp_path / "first", "app",
        home=tmp_path, cache=True, egress=egress_trap.url,
    )  # fmt: skip
    assert installed(tmp_path / "first") == NEWEST, first.check().output
    assert {s.status for s in page_requests(proxy)} == {200}
    proxy.seen.clear()
    # Past max-age (Date has whole seconds, so leave a margin): uv must revalidate.
    await asyncio.sleep(2.2)
    second = await uv_install(
        proxy.index_url, tmp_path / "second", "app",
        home=tmp_path, cache=True, egress=egress_trap.url,
    )  # fmt: skip
    assert installed(tmp_path / "second") == NEWEST, second.check().output
    pages = page_requests(proxy)
    assert sorted(s.path for s in pages) == ["/index/app/", "/index/lib/", "/index/util-pkg/"]
    assert [(s.path, s.status) for s in pages if s.status != 304] == []
    # A strong validator (not W/): uv re-GETs in full unless the 304 matches it.
    assert all(s.headers.get("If-None-Match", "").startswith('"') for s in pages), pages
    assert proxy.seen == pages  # metadata and wheels are immutable: not asked again
    assert_clean_run(proxy, egress_trap)
