"""When the upstream fails or must not be asked: every fault injected for real.

What is cached keeps working (stale pages marked `X-Cachepi-Stale: 1`, cached files, whole
pip and uv installs, also after a restart); what is not cached is a one-line 502/503/504,
never a 404. Then the limits: retries, negative caching, the upstream connection cap.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.cachedir import blobs_on_disk, misnamed_blobs, recorded_blobs
from tests.clients import pip_install, uv_install
from tests.conftest import ProxyFactory
from tests.fakeupstream import Dist, FakeUpstream
from tests.fetching import JSON, Reply, fetch, get_json
from tests.proxy import RunningProxy

UNRESOLVABLE_INDEX = "http://nonexistent.invalid/simple/"
GATEWAY_STATUSES = {502, 503, 504}

# Ways a path on the upstream can fail while the upstream stays up.
Fault = Callable[[FakeUpstream, str], None]
PATH_FAULTS: dict[str, Fault] = {
    "timeout": lambda up, path: up.hang(path),
    "reset": lambda up, path: up.reset(path),
    "5xx": lambda up, path: up.fail(path, 503),
    "truncated": lambda up, path: up.wrong_length(path),
    "garbage-json": lambda up, path: up.garbage(path, format="json"),
    "garbage-html": lambda up, path: up.garbage(path, format="html"),
}
# ...and every way at once: the upstream is gone (connections refused).
ALL_FAULTS = [*PATH_FAULTS, "down"]
# A read timeout short enough for "timeout" to take a second, not a minute.
READ_TIMEOUT = 0.3


async def break_upstream(upstream: FakeUpstream, fault: str, prefix: str = "/") -> None:
    """Make every request under `prefix` fail the way `fault` says."""
    if fault == "down":
        await upstream.stop()
    else:
        PATH_FAULTS[fault](upstream, prefix + "*")


def installed(target: Path) -> set[str]:
    return {p.name for p in target.iterdir() if (p / "__init__.py").is_file()}


def file_url(proxy: RunningProxy, dist: Dist) -> str:
    return f"{proxy.index_url}{dist.project}/{dist.filename}"


async def always_revalidating_proxy(
    upstream: FakeUpstream, proxy_factory: ProxyFactory, **options: object
) -> RunningProxy:
    """TTL 0: every page request asks the upstream, so every one meets the fault."""
    return await proxy_factory((upstream.url, 0), read_timeout=READ_TIMEOUT, **options)


# -- 1. Cached things survive any upstream failure -------------------------------------------


@pytest.mark.parametrize("fault", ALL_FAULTS)
async def test_stale_pages_and_cached_files_served_when_upstream_fails(
    fault: str, fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await always_revalidating_proxy(fake_upstream, proxy_factory)
    wheel = fake_upstream.dists("lib")[0]
    page = await get_json(proxy.index_url + "lib/")
    listing = await get_json(proxy.index_url)
    cached = await fetch(file_url(proxy, wheel))
    assert (page.status, listing.status, cached.sha256) == (200, 200, wheel.sha256)

    # Something changed upstream, so the revalidations cannot end in a 304 before the fault.
    fake_upstream.add_project("lib", ["2.0"])
    fake_upstream.add_project("newcomer", ["1.0"])
    await break_upstream(fake_upstream, fault)
    stale_page, stale_list, again = await asyncio.gather(
        get_json(proxy.index_url + "lib/"), get_json(proxy.index_url), fetch(file_url(proxy, wheel))
    )
    assert (stale_page.status, stale_page.stale, stale_page.body) == (200, True, page.body)
    assert (stale_list.status, stale_list.stale, stale_list.body) == (200, True, listing.body)
    assert (again.status, again.sha256) == (200, wheel.sha256)


@pytest.mark.slow  # real DNS failures, retried: ~4 s
async def test_stale_page_served_when_the_index_host_does_not_resolve(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # While "online", the proxy reaches the unresolvable index through an HTTP proxy (the
    # fake upstream answers absolute-form requests); then the proxy setting goes, and the
    # index host's name no longer resolves: a real DNS failure, on the very same cache.
    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, fake_upstream.origin)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    # The files are on 127.0.0.1, another origin than the index's: private, so allowed here.
    online = await proxy_factory((UNRESOLVABLE_INDEX, 0), upstream_private_addresses="allow")
    wheel = fake_upstream.dists("lib")[0]
    page = await get_json(online.index_url + "lib/")
    assert (await fetch(file_url(online, wheel))).sha256 == wheel.sha256
    assert fake_upstream.count("/simple/lib/") >= 1  # it came through the HTTP proxy
    await online.stop()

    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(name)
    fake_upstream.reset_counts()
    proxy = await proxy_factory((UNRESOLVABLE_INDEX, 0))
    stale = await get_json(proxy.index_url + "lib/")
    assert (stale.status, stale.stale, stale.body) == (200, True, page.body)
    assert (await fetch(file_url(proxy, wheel))).sha256 == wheel.sha256
    uncached = await get_json(proxy.index_url + "app/")
    assert uncached.status == 502 and uncached.one_line, uncached
    assert b"nonexistent.invalid" in uncached.body
    assert fake_upstream.requests == []


@pytest.mark.slow  # real pip and uv runs, a restart
@pytest.mark.parametrize(
    ("installer", "fault"),
    [("pip", "down"), ("uv", "down"), ("pip", "reset"), ("uv", "5xx")],
)
async def test_cached_install_succeeds_while_upstream_fails_right_after_a_restart(
    installer: str,
    fault: str,
    fake_upstream: FakeUpstream,
    proxy_factory: ProxyFactory,
    tmp_path: Path,
) -> None:
    install = {"pip": pip_install, "uv": uv_install}[installer]
    first = await always_revalidating_proxy(fake_upstream, proxy_factory)
    (await install(first.index_url, tmp_path / "warm", "app", home=tmp_path)).check()
    await first.stop()

    await break_upstream(fake_upstream, fault)
    restarted = await always_revalidating_proxy(fake_upstream, proxy_factory)
    result = await install(restarted.index_url, tmp_path / "t", "app", home=tmp_path)
    assert installed(tmp_path / "t") == {"app", "lib", "util_pkg"}, result.output
    pages = [s for s in restarted.seen if s.path.count("/") == 3 and s.path.endswith("/")]
    assert pages and all(s.status == 200 for s in pages)


# -- 1. ...uncached things are a one-line gateway error, never a 404 ------------------------


@pytest.mark.parametrize("fault", ALL_FAULTS)
async def test_uncached_page_is_a_one_line_gateway_error_when_upstream_fails(
    fault: str, fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await always_revalidating_proxy(fake_upstream, proxy_factory)
    await break_upstream(fake_upstream, fault)
    page, listing = await asyncio.gather(
        get_json(proxy.index_url + "lib/"), get_json(proxy.index_url)
    )
    for reply in (page, listing):
        assert reply.status in GATEWAY_STATUSES and reply.one_line, reply
    if fault == "timeout":
        assert page.status == 504


@pytest.mark.parametrize(("fault", "status"), [("timeout", 504), ("5xx", 502), ("down", 502)])
async def test_uncached_file_is_a_one_line_gateway_error_when_upstream_fails(
    fault: str, status: int, fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(fake_upstream, read_timeout=READ_TIMEOUT)
    wheel = fake_upstream.dists("lib")[0]
    assert (await get_json(proxy.index_url + "lib/")).status == 200  # page fresh for 30 min
    await break_upstream(fake_upstream, fault, "/files/")
    reply = await fetch(file_url(proxy, wheel))
    assert (reply.status, reply.one_line) == (status, True), reply
    assert not list((proxy.settings.cache_dir / "blobs").rglob(wheel.sha256))


async def test_uncached_file_on_an_unresolvable_host_is_a_gateway_error(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    wheel = fake_upstream.dists("lib")[0]
    fake_upstream.serve_raw(
        "/simple/lib/",
        b'{"meta": {"api-version": "1.1"}, "name": "lib", "files": [{"filename": "%s", '
        b'"url": "http://nonexistent.invalid/files/%s", "hashes": {"sha256": "%s"}}]}'
        % (wheel.filename.encode(), wheel.filename.encode(), wheel.sha256.encode()),
    )
    proxy = await proxy_factory(fake_upstream)
    reply = await fetch(file_url(proxy, wheel))
    assert (reply.status, reply.one_line) == (502, True), reply
    assert b"nonexistent.invalid" in reply.body


@pytest.mark.parametrize("fault", ["truncated", "garbage-json"])
async def test_wrong_file_bytes_fail_the_client_transfer_and_store_nothing(
    fault: str, fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    # The upstream's status looks fine, but its Content-Length is not the size the index
    # gave: refused before a byte goes out. (Had the length been right, the client would
    # already have a 200, and the withheld last byte would fail its transfer.)
    (dist,) = fake_upstream.add_project("shortpkg", ["1.0"], big_mb=1, sdist=False)
    PATH_FAULTS[fault](fake_upstream, fake_upstream.file_path(dist.filename))
    proxy = await proxy_factory(fake_upstream)
    reply = await fetch(file_url(proxy, dist))
    assert (reply.status, reply.one_line) == (502, True), reply
    assert str(dist.size).encode() in reply.body
    assert list((proxy.settings.cache_dir / "blobs").rglob("*")) == []
    assert list((proxy.settings.cache_dir / "tmp").iterdir()) == []
    fake_upstream.clear()
    assert (await fetch(file_url(proxy, dist))).sha256 == dist.sha256


# -- 2. Sane limits -------------------------------------------------------------------------


async def test_retries_pause_a_quarter_second_then_a_second(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(fake_upstream)
    fake_upstream.fail("/simple/lib/", 503)
    began = time.monotonic()
    reply = await get_json(proxy.index_url + "lib/")
    elapsed = time.monotonic() - began
    assert (reply.status, reply.one_line) == (502, True)
    tries = [r.started for r in fake_upstream.requests_to("/simple/lib/")]
    gaps = [later - earlier for earlier, later in itertools.pairwise(tries)]
    assert len(tries) == 3
    assert 0.25 <= gaps[0] < 0.9 and 1.0 <= gaps[1] < 2.0, gaps  # upper bounds: slack
    assert elapsed < 4


@pytest.mark.parametrize("status", [429, 500])
async def test_overload_statuses_are_retried_until_they_pass(
    status: int, fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(fake_upstream)
    fake_upstream.fail("/simple/lib/", status, times=2)
    reply = await get_json(proxy.index_url + "lib/")
    assert (reply.status, reply.stale) == (200, False)
    assert fake_upstream.count("/simple/lib/") == 3


async def test_no_retry_once_bytes_reached_a_client(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    (dist,) = fake_upstream.add_project("halfpkg", ["1.0"], big_mb=1, sdist=False)
    path = fake_upstream.file_path(dist.filename)
    fake_upstream.reset(path, after_bytes=200_000)
    proxy = await proxy_factory(fake_upstream)
    with pytest.raises(aiohttp.ClientPayloadError):
        await fetch(file_url(proxy, dist))
    assert fake_upstream.count(path) == 1


@pytest.mark.parametrize("after_bytes", [0, 1, 64 * 1024, 200_000])
async def test_a_download_that_broke_once_never_serves_or_stores_wrong_bytes(
    after_bytes: int, fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    """The first attempt breaks after `after_bytes`; a retry, if the proxy makes one, must
    start the file afresh: the client gets the right file or a failed transfer."""
    (dist,) = fake_upstream.add_project("brokeonce", ["1.0"], big_mb=1, sdist=False)
    fake_upstream.reset(fake_upstream.file_path(dist.filename), after_bytes, times=1)
    proxy = await proxy_factory(fake_upstream)
    try:
        reply = await fetch(file_url(proxy, dist))
    except aiohttp.ClientPayloadError:
        assert after_bytes > 0  # bytes had reached the client: no retry, a failed transfer
    else:
        assert (reply.status, len(reply.body), reply.sha256) == (200, dist.size, dist.sha256)
    cache_dir = proxy.settings.cache_dir
    assert misnamed_blobs(cache_dir) == []
    assert recorded_blobs(cache_dir) == blobs_on_disk(cache_dir)
    again = await fetch(file_url(proxy, dist))
    assert (again.status, again.sha256) == (200, dist.sha256)


@pytest.mark.parametrize(
    ("ttl", "negative_ttl"), [(1800, 1), (1, 60)], ids=["negative-ttl", "capped-by-ttl"]
)
async def test_upstream_404_is_remembered_for_the_negative_ttl_at_most_the_ttl(
    ttl: int,
    negative_ttl: int,
    fake_upstream: FakeUpstream,
    proxy_factory: ProxyFactory,
) -> None:
    proxy = await proxy_factory((fake_upstream.url, ttl), negative_ttl=negative_ttl)
    for _ in range(3):
        reply = await get_json(proxy.index_url + "nothere/")
        assert reply.status == 404
    assert fake_upstream.count("/simple/nothere/") == 1
    await asyncio.sleep(1.1)
    fake_upstream.add_project("nothere", ["1.0"])  # it exists now
    assert (await get_json(proxy.index_url + "nothere/")).status == 200
    assert fake_upstream.count("/simple/nothere/") == 2


def test_default_negative_ttl_is_a_minute() -> None:
    from cachepi.config import load_settings

    assert load_settings({}, {}).negative_ttl == 60
    assert load_settings({}, {"CACHEPI_NEGATIVE_TTL": "5"}).negative_ttl == 5


async def test_upstream_connection_cap_holds_for_concurrent_misses(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    dists = [
        fake_upstream.add_project(f"capped{i}", ["1.0"], big_mb=0.25, sdist=False)[0]
        for i in range(10)
    ]
    fake_upstream.throttle("/files/*", 1024**2)  # each file takes about 0.25 s
    proxy = await proxy_factory(fake_upstream, upstream_connections=2)
    # Pages first, one at a time, so the cap is measured on the file misses alone.
    for dist in dists:
        assert (await get_json(proxy.index_url + dist.project + "/")).status == 200
    replies = await asyncio.gather(*(fetch(file_url(proxy, dist)) for dist in dists))
    assert [r.sha256 for r in replies] == [d.sha256 for d in dists]
    assert fake_upstream.count_prefix("/files/") == 10
    assert fake_upstream.peak_concurrency("/files/") == 2


# -- the upstream must not be asked --------------------------------------------------------


@pytest.mark.slow  # real pip runs
async def test_offline_serves_the_cache_and_never_contacts_upstream(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    online = await proxy_factory((fake_upstream.url, 1))
    (await pip_install(online.index_url, tmp_path / "a", "app", home=tmp_path)).check()
    await online.stop()
    await asyncio.sleep(1.1)  # every page is past its TTL now
    fake_upstream.reset_counts()
    offline = await proxy_factory((fake_upstream.url, 1), offline=True)
    (await pip_install(offline.index_url, tmp_path / "b", "app", home=tmp_path)).check()
    reply = await fetch(offline.index_url + "nothere/")
    assert (reply.status, reply.one_line) == (503, True)
    assert b"offline" in reply.body
    uncached = fake_upstream.dists("lib")[-1]  # the sdist: pip took the wheels
    assert (await fetch(f"{offline.index_url}lib/{uncached.filename}")).status == 503
    assert fake_upstream.requests == []


async def test_upstream_timeout_is_a_504_with_a_reason(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(fake_upstream, read_timeout=READ_TIMEOUT)
    fake_upstream.hang("/simple/lib/")
    reply = await fetch(proxy.index_url + "lib/", headers=JSON)
    assert reply.status == 504
    assert reply.body == f"{fake_upstream.url}lib/: upstream timed out\n".encode()


async def test_files_only_come_from_allowed_hosts(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(fake_upstream, file_hosts=frozenset({"files.example.org"}))
    wheel = fake_upstream.dists("lib")[0]
    reply: Reply = await fetch(file_url(proxy, wheel))
    assert reply.status == 502
    assert b"'127.0.0.1' are not allowed" in reply.body
    assert fake_upstream.count_prefix("/files/") == 0
