"""The index cache: fresh pages cost nothing upstream, stale ones one conditional GET.

Tests that wait out a TTL here turn STALE_WHILE_REVALIDATE off, so a stale page is waited
for (tests/test_stale_while_revalidate.py has the other way)."""

from __future__ import annotations

import asyncio
import threading

import aiohttp
import pytest
from yarl import URL

from cachepi import upstream_pages
from cachepi.simple.model import Project, ProjectList
from cachepi.upstream import PageResponse
from tests.conftest import ProxyFactory
from tests.fakeupstream import FakeUpstream
from tests.proxy import RunningProxy

JSON = "application/vnd.pypi.simple.v1+json"
PIP_ACCEPT = f"{JSON}, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"


async def get(
    url: str, *, allow_redirects: bool = True, **headers: str
) -> tuple[int, aiohttp.typedefs.LooseHeaders, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(URL(url, encoded=True), headers=headers, allow_redirects=allow_redirects) as r,
    ):
        return r.status, r.headers, await r.read()


async def get_json(url: str) -> dict:
    async with aiohttp.ClientSession() as session, session.get(url, headers={"Accept": JSON}) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"] == JSON
        return await r.json(content_type=None)


async def test_fresh_page_is_served_without_asking_upstream(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    for _ in range(3):
        await get_json(proxy.index_url + "lib/")
    assert fake_upstream.count("/simple/lib/") == 1


async def test_stale_page_is_revalidated_and_a_304_renews_it(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory((fake_upstream.url, 1), stale_while_revalidate=0)
    await get_json(proxy.index_url + "lib/")
    await asyncio.sleep(1.1)
    await get_json(proxy.index_url + "lib/")
    second = fake_upstream.requests_to("/simple/lib/")[-1]
    assert second.headers.get("If-None-Match") and second.status == 304
    await get_json(proxy.index_url + "lib/")  # renewed by the 304: still fresh
    assert fake_upstream.count("/simple/lib/") == 2


async def test_new_upload_appears_after_the_ttl(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory((fake_upstream.url, 1), stale_while_revalidate=0)
    before = await get_json(proxy.index_url + "lib/")
    fake_upstream.add_project("lib", ["2.0"])
    assert await get_json(proxy.index_url + "lib/") == before  # still fresh
    await asyncio.sleep(1.1)
    after = await get_json(proxy.index_url + "lib/")
    assert "lib-2.0.tar.gz" in {f["filename"] for f in after["files"]}


@pytest.mark.parametrize("cached_before", [False, True], ids=["cold", "stale"])
async def test_concurrent_requests_cause_one_upstream_request(
    cached_before: bool, fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory((fake_upstream.url, 1), stale_while_revalidate=0)
    if cached_before:
        await get_json(proxy.index_url + "lib/")
        await asyncio.sleep(1.1)
        fake_upstream.reset_counts()
    fake_upstream.delay("/simple/lib/", 0.3)
    pages = await asyncio.gather(*(get_json(proxy.index_url + "lib/") for _ in range(30)))
    assert fake_upstream.count("/simple/lib/") == 1
    assert all(page == pages[0] for page in pages)


async def test_pages_survive_a_restart(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(fake_upstream)
    before = await get_json(proxy.index_url + "app/")
    await proxy.stop()
    fake_upstream.reset_counts()
    restarted = await proxy_factory(fake_upstream)
    assert await get_json(restarted.index_url + "app/") == before
    assert fake_upstream.requests == []


@pytest.mark.slow  # waits out a TTL and retries: ~4 s
async def test_stale_page_served_when_upstream_down(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory((fake_upstream.url, 1), stale_while_revalidate=0)
    before = await get_json(proxy.index_url + "lib/")
    await asyncio.sleep(1.1)
    fake_upstream.fail("/simple/lib/", 503)
    status, headers, _ = await get(proxy.index_url + "lib/", Accept=JSON)
    assert (status, headers.get("X-Cachepi-Stale")) == (200, "1")
    assert fake_upstream.count("/simple/lib/") == 1 + 3  # the first fetch, then 3 tries
    assert before == (await get_json(proxy.index_url + "lib/"))


async def test_passing_upstream_failures_are_retried_before_anyone_sees_them(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(fake_upstream)
    fake_upstream.fail("/simple/lib/", 503, times=2)
    fake_upstream.reset(fake_upstream.file_path("lib-1.1-py3-none-any.whl"), times=1)
    status, headers, _ = await get(proxy.index_url + "lib/", Accept=JSON)
    assert (status, headers.get("X-Cachepi-Stale")) == (200, None)
    assert fake_upstream.count("/simple/lib/") == 3
    status, _, body = await get(proxy.index_url + "lib/lib-1.1-py3-none-any.whl")
    assert (status, body) == (200, fake_upstream.dist("lib-1.1-py3-none-any.whl").read_bytes())
    assert fake_upstream.count(fake_upstream.file_path("lib-1.1-py3-none-any.whl")) == 2


async def test_client_errors_from_upstream_are_not_retried(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(fake_upstream)
    fake_upstream.fail("/simple/lib/", 403)
    status, _, body = await get(proxy.index_url + "lib/", Accept=JSON)
    assert (status, body) == (502, f"{fake_upstream.url}lib/: upstream answered 403\n".encode())
    assert fake_upstream.count("/simple/lib/") == 1


async def test_uncached_page_with_upstream_down_is_502_not_404(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(fake_upstream)
    await fake_upstream.stop()
    status, _, body = await get(proxy.index_url + "lib/")
    assert status == 502
    assert body.count(b"\n") == 1


async def test_unknown_project_is_404_and_remembered_briefly(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    for _ in range(2):
        assert (await get(proxy.index_url + "nope/"))[0] == 404
    assert fake_upstream.count("/simple/nope/") == 1


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("Util_Pkg/", "/index/util-pkg/"),
        ("util-pkg", "/index/util-pkg/"),
        ("UTIL.PKG/?format=json", "/index/util-pkg/?format=json"),
        ("Lib/lib-1.0.tar.gz", "/index/lib/lib-1.0.tar.gz"),
    ],
)
async def test_non_canonical_urls_redirect_permanently(
    path: str, location: str, proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    status, headers, _ = await get(proxy.index_url + path, allow_redirects=False)
    assert (status, headers["Location"]) == (301, location)
    assert fake_upstream.requests == []


@pytest.mark.parametrize("name", ["%2e%2e", "..", "-lib", "lib%2Fx", "caf%C3%A9", "a" * 300])
async def test_invalid_project_names_are_400_without_upstream_requests(
    name: str, proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    status, _, _ = await get(f"{proxy.index_url}{name}/")
    assert status in (400, 404)
    assert fake_upstream.requests == []


async def test_simple_is_an_alias_of_index(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    assert await get_json(proxy.url + "/simple/lib/") == await get_json(proxy.index_url + "lib/")


async def test_format_negotiation_and_etags(proxy: RunningProxy) -> None:
    url = proxy.index_url + "lib/"
    status, headers, body = await get(url, Accept=PIP_ACCEPT)
    assert headers["Content-Type"] == JSON
    assert headers["Vary"] == "Accept, Accept-Encoding"
    assert headers["Cache-Control"] == "max-age=600, public"
    status, headers, body = await get(url)
    assert headers["Content-Type"].startswith("text/html")
    assert b'href="lib-1.0-py3-none-any.whl#sha256=' in body
    status, headers, _ = await get(url + "?format=" + JSON, Accept="text/html")
    assert headers["Content-Type"] == JSON
    status, again, _ = await get(url, Accept=PIP_ACCEPT, **{"If-None-Match": headers["ETag"]})
    assert (status, again["ETag"]) == (304, headers["ETag"])
    assert (await get(url, Accept=f"{JSON};q=0, text/html;q=0, */*;q=0"))[0] == 406


async def test_project_list(proxy: RunningProxy) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(proxy.index_url, headers={"Accept": JSON}) as response,
    ):
        names = {p["name"] for p in (await response.json(content_type=None))["projects"]}
    assert names == {"app", "lib", "util-pkg"}


async def test_invalidation_refetches_once(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    await get_json(proxy.index_url + "lib/")
    await get_json(proxy.index_url)
    async with aiohttp.ClientSession() as session:
        for path in ("/cache/lib", "/cache/list"):
            async with session.delete(proxy.url + path) as response:
                assert response.status == 200
    await get_json(proxy.index_url + "lib/")
    await get_json(proxy.index_url)
    assert fake_upstream.count("/simple/lib/") == 2
    assert fake_upstream.count("/simple/") == 2


async def test_extra_index_adds_files_the_first_lacks_and_files_come_from_their_index(
    fake_upstream_factory, proxy_factory: ProxyFactory
) -> None:
    main = await fake_upstream_factory()
    extra = await fake_upstream_factory()
    main.add_project("shared", ["1.0"])
    extra.add_project("shared", ["1.0", "2.0"])  # 1.0 files: same names, other bytes
    extra.add_project("extraonly", ["0.1"])
    proxy = await proxy_factory(main, (extra.url, 180))
    page = await get_json(proxy.index_url + "shared/")
    filenames = [f["filename"] for f in page["files"]]
    assert filenames == [
        "shared-1.0-py3-none-any.whl",
        "shared-1.0.tar.gz",
        "shared-2.0-py3-none-any.whl",
        "shared-2.0.tar.gz",
    ]
    main_wheel = main.dist("shared-1.0-py3-none-any.whl")
    assert page["files"][0]["hashes"]["sha256"] == main_wheel.sha256
    status, _, body = await get(proxy.index_url + "shared/shared-1.0-py3-none-any.whl")
    assert (status, body) == (200, main_wheel.read_bytes())
    status, _, body = await get(proxy.index_url + "shared/shared-2.0.tar.gz")
    assert (status, body) == (200, extra.dist("shared-2.0.tar.gz").read_bytes())
    assert extra.count(extra.file_path("shared-1.0-py3-none-any.whl")) == 0
    assert (await get_json(proxy.index_url + "extraonly/"))["name"] == "extraonly"


async def test_html_only_upstream_is_served_as_json(fake_upstream_factory, proxy_factory) -> None:
    upstream = await fake_upstream_factory(format="html", links="relative")
    upstream.add_project("oldidx", ["1.0"], requires_python=">=3.8", yanked={"1.0": "broken"})
    proxy = await proxy_factory(upstream)
    page = await get_json(proxy.index_url + "oldidx/")
    wheel = page["files"][0]
    assert wheel["requires-python"] == ">=3.8"
    assert wheel["yanked"] == "broken"
    assert wheel["core-metadata"] == {"sha256": upstream.dists("oldidx")[0].metadata_sha256}
    status, _, body = await get(proxy.index_url + "oldidx/" + wheel["url"])
    assert (status, body) == (200, upstream.dists("oldidx")[0].read_bytes())


async def test_a_small_page_is_parsed_on_the_event_loop_and_a_big_one_on_a_thread(
    proxy: RunningProxy, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page of a few files parses in less than a thread's round trip costs; a big one
    (seconds for PyPI's project list) never holds up the event loop."""
    fake_upstream.add_project("small", ["1.0"])
    fake_upstream.add_project("big", [f"1.{i}" for i in range(100)])
    parsed_in: dict[str, str] = {}
    parse = upstream_pages.parse_and_encode

    def watched(key: str, response: PageResponse) -> tuple[Project | ProjectList, bytes]:
        parsed_in[key] = threading.current_thread().name
        return parse(key, response)

    monkeypatch.setattr(upstream_pages, "parse_and_encode", watched)
    for name in ("small", "big"):
        assert (await get_json(f"{proxy.index_url}{name}/"))["name"] == name
    assert parsed_in["small"] == threading.current_thread().name  # the event loop's
    assert parsed_in["big"] != parsed_in["small"]
