"""Many upstream indexes at once (README, "Several indexes, routing and policy"): merge and
first, routes, explicit indexes, partial outages, per-index TTLs, release cooldown, deny/allow
rules, and credentials kept secret.

Every proxy here is configured the way a user configures it: a `cachepi.toml` read by
`load_settings`, in front of two or three real fake upstreams on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from yarl import URL

from cachepi.config import ConfigError, Settings, load_settings
from tests.fakeupstream import Dist, FakeUpstream
from tests.fakeupstream.dists import build_sdist, build_wheel, normalize
from tests.fakeupstream.fixtures import FakeUpstreamFactory
from tests.fetching import Reply, fetch, get_json
from tests.proxy import RunningProxy, start_proxy

# Long enough that nothing expires during a test unless it is meant to.
LONG_TTL = 3600
OLD = datetime(2024, 1, 1, tzinfo=UTC)

# -- configuration helpers ------------------------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)  # strings and lists of strings: JSON is valid TOML here


def top(**options: object) -> str:
    """Top-level settings; keyword names in snake_case become kebab-case keys."""
    return "".join(f"{key.replace('_', '-')} = {_toml_value(v)}\n" for key, v in options.items())


def index(name: str, url: str, *, ttl: int = LONG_TTL, **options: object) -> str:
    """One `[[index]]` table."""
    lines = f'\n[[index]]\nname = "{name}"\nurl = "{url}"\nttl = {ttl}\n'
    return lines + top(**options)


def route(projects: Sequence[str], to: str | Sequence[str]) -> str:
    return f"\n[[route]]\nprojects = {_toml_value(list(projects))}\nindex = {_toml_value(to)}\n"


def settings_from_toml(
    directory: Path, text: str, env: Mapping[str, str] | None = None, cache: str = "cache"
) -> Settings:
    """Settings through the real path: a cachepi.toml file, `load_settings`, no outside env."""
    config = directory / "cachepi.toml"
    config.write_text(textwrap.dedent(text))
    flags = {"config": str(config), "cache_dir": str(directory / cache), "port": 0}
    return load_settings(flags, env=dict(env or {}))


ProxyFromToml = Callable[..., Awaitable[RunningProxy]]


@pytest_asyncio.fixture
async def proxy_from_toml(tmp_path: Path) -> AsyncIterator[ProxyFromToml]:
    """Start cachepi from a TOML text (and optional env); all stop at teardown."""
    running: list[RunningProxy] = []

    async def start(text: str, env: Mapping[str, str] | None = None) -> RunningProxy:
        settings = settings_from_toml(tmp_path, text, env, cache=f"cache{len(running)}")
        proxy = await start_proxy(settings)
        running.append(proxy)
        return proxy

    yield start
    for proxy in running:
        await proxy.stop()


# -- page helpers ---------------------------------------------------------------------------


def page_url(proxy: RunningProxy, project: str) -> str:
    return f"{proxy.index_url}{project}/"


def file_url(proxy: RunningProxy, project: str, filename: str) -> str:
    return f"{proxy.index_url}{project}/{filename}"


def parsed(reply: Reply) -> dict[str, Any]:
    assert reply.status == 200, (reply.status, reply.body[:300])
    return json.loads(reply.body)


def filenames(reply: Reply) -> list[str]:
    return [f["filename"] for f in parsed(reply)["files"]]


def file_entry(reply: Reply, filename: str) -> dict[str, Any]:
    return next(f for f in parsed(reply)["files"] if f["filename"] == filename)


async def download(proxy: RunningProxy, project: str, filename: str) -> Reply:
    """A file through the URL the proxy's own page gives for it."""
    page = await get_json(page_url(proxy, project))
    href = file_entry(page, filename)["url"]
    return await fetch(str(URL(page_url(proxy, project)).join(URL(href))))


def names(dists: Sequence[Dist]) -> list[str]:
    return [d.filename for d in dists]


def wheel_of(upstream: FakeUpstream, project: str, version: str) -> Dist:
    return next(
        d for d in upstream.dists(project) if d.version == version and d.filename.endswith(".whl")
    )


def add_release(upstream: FakeUpstream, project: str, version: str, uploaded: datetime) -> Dist:
    """A wheel of `project` `version` uploaded at `uploaded`; returns it."""
    return upstream.add_dist(build_wheel(project, version), upload_time=uploaded)


def ago(**delta: float) -> datetime:
    """An upload time that long before now."""
    return datetime.now(UTC) - timedelta(**delta)


def page_requests(upstream: FakeUpstream, project: str) -> int:
    """Requests of any kind about `project`: its page, however spelled, and its files."""
    count = 0
    for r in upstream.requests:
        page = re.fullmatch(r"/simple/([^/]+)/?", r.path)
        file = re.fullmatch(r"/files/([^/-]+)-.*", r.path)
        named = page[1] if page else file[1] if file else None
        count += named is not None and normalize(named) == normalize(project)
    return count


# == merge ==================================================================================


async def test_merge_keeps_index_order_and_later_indexes_add_missing_filenames(
    fake_upstream_factory: FakeUpstreamFactory, proxy_from_toml: ProxyFromToml
) -> None:
    first, second, third = [await fake_upstream_factory() for _ in range(3)]
    first.add_project("lib", ["1.0", "1.1"])
    # The same 1.0 files (byte-identical builds) plus an older release the first lacks.
    second.add_project("lib", ["0.9", "1.0"])
    third.add_project("lib", ["2.0"], sdist=False)
    proxy = await proxy_from_toml(
        top(combine="merge")
        + index("first", first.url)
        + index("second", second.url)
        + index("third", third.url)
    )

    page = await get_json(page_url(proxy, "lib"))
    # The first index's files in its order, then what each later one adds: not version order.
    additions = ["lib-0.9-py3-none-any.whl", "lib-0.9.tar.gz", "lib-2.0-py3-none-any.whl"]
    expected = [*names(first.dists("lib")), *additions]
    assert filenames(page) == expected
    assert sorted(parsed(page)["versions"], key=lambda v: tuple(map(int, v.split(".")))) == [
        "0.9",
        "1.0",
        "1.1",
        "2.0",
    ]

    # Each file comes from the index whose entry is shown.
    for upstream, filename in [
        (first, "lib-1.0-py3-none-any.whl"),
        (second, "lib-0.9-py3-none-any.whl"),
        (third, "lib-2.0-py3-none-any.whl"),
    ]:
        reply = await download(proxy, "lib", filename)
        assert (reply.status, reply.sha256) == (200, upstream.dist(filename).sha256)
        assert upstream.count(f"/files/{filename}") == 1
    assert second.count("/files/lib-1.0-py3-none-any.whl") == 0
    # A project only a later index has is served from it.
    third.add_project("only-third", ["0.1"])
    assert filenames(await get_json(page_url(proxy, "only-third"))) == names(
        third.dists("only-third")
    )


async def test_merge_hash_conflict_serves_the_first_index_bytes_and_logs_it(
    fake_upstream_factory: FakeUpstreamFactory,
    proxy_from_toml: ProxyFromToml,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    first, second = await fake_upstream_factory(), await fake_upstream_factory()
    first.add_project("lib", ["1.0"], sdist=False)
    genuine = wheel_of(first, "lib", "1.0")
    impostor = second.add_dist(
        Dist.from_bytes(genuine.filename, b"not the wheel the first index has")
    )
    assert impostor.sha256 != genuine.sha256
    proxy = await proxy_from_toml(index("first", first.url) + index("second", second.url))

    page = await get_json(page_url(proxy, "lib"))
    assert filenames(page) == [genuine.filename]
    assert file_entry(page, genuine.filename)["hashes"]["sha256"] == genuine.sha256
    reply = await download(proxy, "lib", genuine.filename)
    assert (reply.status, reply.body) == (200, genuine.read_bytes())
    assert second.count(f"/files/{genuine.filename}") == 0
    conflicts = [
        r
        for r in caplog.records
        if r.name == "cachepi.combine"
        and r.levelno >= logging.WARNING
        and "hash conflict" in r.getMessage()
    ]
    assert conflicts, caplog.text
    assert genuine.filename in conflicts[0].getMessage()


async def test_a_merged_page_lists_each_upstreams_versions_and_no_last_serial(
    fake_upstream_factory: FakeUpstreamFactory, proxy_from_toml: ProxyFromToml
) -> None:
    pypi = await fake_upstream_factory(format="json", last_serial="100")
    html = await fake_upstream_factory(format="html", links="relative", last_serial=300)
    # PyPI files the post-release-named sdist under 1.0; the HTML index, which lists no
    # versions, has the same sdist (shown from PyPI) and a 3.0 wheel of its own.
    pypi.add_project("lib", ["1.0"], sdist=False)
    post = pypi.add_dist(build_sdist("lib", "1.0.post1"), release="1.0")
    html.add_dist(post)
    html.add_project("lib", ["3.0"], sdist=False)
    pypi.add_project("solo", ["1.0"])
    proxy = await proxy_from_toml(index("pypi", pypi.url) + index("html", html.url))

    merged = await get_json(page_url(proxy, "lib"))
    assert parsed(merged)["versions"] == ["1.0", "3.0"]  # no 1.0.post1, nor a lost 3.0
    assert post.filename in filenames(merged)
    # Two indexes made it: neither one's serial numbers it.
    assert "_last-serial" not in parsed(merged)["meta"]
    assert "X-PyPI-Last-Serial" not in merged.headers
    html_page = await fetch(page_url(proxy, "lib"), headers={"Accept": "text/html"})
    assert (b"SERIAL" in html_page.body, "X-PyPI-Last-Serial" in html_page.headers) == (
        False,
        False,
    )
    listing = await get_json(proxy.index_url)
    assert "_last-serial" not in parsed(listing)["meta"]
    assert "X-PyPI-Last-Serial" not in listing.headers
    # One index made it: its serial, as it spelled it.
    solo = await get_json(page_url(proxy, "solo"))
    assert (parsed(solo)["meta"]["_last-serial"], solo.headers["X-PyPI-Last-Serial"]) == (
        "100",
        "100",
    )


async def test_a_project_list_filtered_from_one_index_keeps_its_last_serial(
    fake_upstream_factory: FakeUpstreamFactory, proxy_from_toml: ProxyFromToml
) -> None:
    pypi = await fake_upstream_factory(format="json", last_serial="100")
    pypi.add_project("lib", ["1.0"])
    pypi.add_project("evil", ["1.0"])
    proxy = await proxy_from_toml(top(deny=["evil"]) + index("pypi", pypi.url))
    listing = await get_json(proxy.index_url)
    assert [p["name"] for p in parsed(listing)["projects"]] == ["lib"]
    assert (parsed(listing)["meta"]["_last-serial"], listing.headers["X-PyPI-Last-Serial"]) == (
        "100",
        "100",
    )


PYPI_LIB = "https://pypi.example/simple/lib/"
TEST_LIB = "https://test.example/simple/lib/"
ALT_LIB = "https://alt.example/simple/lib/"


@pytest.mark.parametrize("accept", ["json", "html"])
async def test_a_merged_page_claims_the_pep_708_urls_every_upstream_claims(
    accept: str, fake_upstream_factory: FakeUpstreamFactory, proxy_from_toml: ProxyFromToml
) -> None:
    first, second, plain = [await fake_upstream_factory(format=accept) for _ in range(3)]
    for upstream in (first, second, plain):
        upstream.add_project("lib", ["1.0"])
    first.add_project("alone", ["1.0"])
    for project in ("lib", "alone"):
        first.set_tracks(project, [TEST_LIB, PYPI_LIB])
        first.set_alternate_locations(project, [ALT_LIB, TEST_LIB])
    second.set_tracks("lib", [PYPI_LIB, TEST_LIB])
    second.set_alternate_locations("lib", [ALT_LIB])
    both = await proxy_from_toml(index("first", first.url) + index("second", second.url))
    three = await proxy_from_toml(
        index("first", first.url) + index("second", second.url) + index("plain", plain.url)
    )

    async def claims(proxy: RunningProxy, project: str) -> tuple[list[Any], list[Any]]:
        if accept == "json":
            page = parsed(await get_json(page_url(proxy, project)))
            return page["meta"].get("tracks", []), page.get("alternate-locations", [])
        body = (await fetch(page_url(proxy, project), headers={"Accept": "text/html"})).body
        metas = re.findall(r'<meta name="pypi:([a-z-]+)" content="([^"]*)">', body.decode())
        return [url for name, url in metas if name == "tracks"], [
            url for name, url in metas if name == "alternate-locations"
        ]

    # One index: what it says. Merged: what every index says, in the first one's order.
    assert await claims(both, "alone") == ([TEST_LIB, PYPI_LIB], [ALT_LIB, TEST_LIB])
    assert await claims(both, "lib") == ([TEST_LIB, PYPI_LIB], [ALT_LIB])
    # An index that claims nothing (it owns its namespace) leaves nothing to claim.
    assert await claims(three, "lib") == ([], [])


# == first ==================================================================================


async def test_first_takes_the_whole_project_from_the_first_index_that_has_it(
    fake_upstream_factory: FakeUpstreamFactory, proxy_from_toml: ProxyFromToml
) -> None:
    first, second = await fake_upstream_factory(), await fake_upstream_factory()
    first.add_project("lib", ["1.0"])
    second.add_project("lib", ["1.0", "2.0"])
    first.add_project("empty", [])  # a 200 page with no files still counts as "has it"
    second.add_project("empty", ["1.0"])
    second.add_project("only-second", ["3.0"])
    proxy = await proxy_from_toml(
        top(combine="first") + index("first", first.url) + index("second", second.url)
    )

    assert filenames(await get_json(page_url(proxy, "lib"))) == names(first.dists("lib"))
    assert second.count("/simple/lib/") == 0
    empty = await get_json(page_url(proxy, "empty"))
    assert (filenames(empty), parsed(empty)["versions"]) == ([], [])
    assert second.count("/simple/empty/") == 0
    # The first index says 404: the next one is asked, and supplies everything.
    only = await get_json(page_url(proxy, "only-second"))
    assert filenames(only) == names(second.dists("only-second"))
    assert (first.count("/simple/only-second/"), second.count("/simple/only-second/")) == (1, 1)
    # A file the second index has but the first's page does not list is not served.
    hidden = file_url(proxy, "lib", "lib-2.0-py3-none-any.whl")
    assert (await fetch(hidden)).status == 404
    assert second.count_prefix("/files/") == 0


async def test_cachepi_combine_env_beats_the_toml_file(
    fake_upstream_factory: FakeUpstreamFactory, proxy_from_toml: ProxyFromToml
) -> None:
    first, second = await fake_upstream_factory(), await fake_upstream_factory()
    first.add_project("lib", ["1.0"])
    second.add_project("lib", ["2.0"])
    text = top(combine="merge") + index("first", first.url) + index("second", second.url)
    proxy = await proxy_from_toml(text, env={"CACHEPI_COMBINE": "first"})
    assert filenames(await get_json(page_url(proxy, "lib"))) == names(first.dists("lib"))
    assert second.count("/simple/lib/") == 0


# == routes =================================================================================


async def private_and_public(
    factory: FakeUpstreamFactory,
) -> tuple[FakeUpstream, FakeUpstream]:
    """`acme-lib` on both (1.0 private, 99.0 public: dependency confusion), `lib` on both,
    `acme-bogus` only on the public index, `internal-tool` only on the private one."""
    private, public = await factory(), await factory()
    private.add_project("acme-lib", ["1.0"])
    private.add_project("lib", ["1.0"])
    private.add_project("internal-tool", ["0.1"])
    public.add_project("acme-lib", ["99.0"])
    public.add_project("acme-bogus", ["1.0"])
    public.add_project("lib", ["2.0"])
    return private, public


async def test_routed_project_comes_only_from_its_index(
    fake_upstream_factory: FakeUpstreamFactory, proxy_from_toml: ProxyFromToml
) -> None:
    private, public = await private_and_public(fake_upstream_factory)
    proxy = await proxy_from_toml(
        index("internal", private.url)
        + index("public", public.url)
        + route(["acme-*", "acme"], "internal")
    )

    acme = await get_json(page_url(proxy, "acme-lib"))
    assert filenames(acme) == names(private.dists("acme-lib"))
    assert parsed(acme)["versions"] == ["1.0"]
    # The public index was never asked about it, and its 99.0 file is not served.
    public_file = file_url(proxy, "acme-lib", "acme_lib-99.0-py3-none-any.whl")
    assert (await fetch(public_file)).status in (403, 404)
    assert page_requests(public, "acme-lib") == 0, public.requests
    # The HTML page says the same.
    html = await fetch(page_url(proxy, "acme-lib"), headers={"Accept": "text/html"})
    assert b"acme_lib-1.0" in html.body and b"99.0" not in html.body
    # A routed name the route's index lacks is a 404, not the public project.
    assert (await get_json(page_url(proxy, "acme-bogus"))).status == 404
    assert page_requests(public, "acme-bogus") == 0

    # Unrouted projects merge both, the first index first.
    lib = await get_json(page_url(proxy, "lib"))
    assert filenames(lib) == names(private.dists("lib")) + names(public.dists("lib"))
    assert (private.count("/simple/lib/"), public.count("/simple/lib/")) == (1, 1)


async def test_route_to_several_indexes_uses_combine_and_skips_the_rest(
    fake_upstream_factory: FakeUpstreamFactory, proxy_from_toml: ProxyFromToml
) -> None:
    one, two, public = [await fake_upstream_factory() for _ in range(3)]
    one.add_project("corp-lib", ["1.0"], sdist=False)
    two.add_project("corp-lib", ["1.1"], sdist=False)
    public.add_project("corp-lib", ["66.6"])
    proxy = await proxy_from_toml(
        top(combine="merge")
        + index("public", public.url)
        + index("one", one.url)
        + index("two", two.url)
        + route(["corp-*"], ["one", "two"])
    )
    page = await get_json(page_url(proxy, "corp-lib"))
    assert filenames(page) == ["corp_lib-1.0-py3-none-any.whl", "corp_lib-1.1-py3-none-any.whl"]
    assert page_requests(public, "corp-lib") == 0


async def test_first_matching_route_wins(
    fake_upstream_factory: FakeUpstreamFactory, proxy_from_toml: ProxyFromToml
) -> None:
    left, right = await fake_upstream_factory(), await fake_upstream_factory()
    left.add_project("acme-special", ["1.0"])
    right.add_project("acme-special", ["2.0"])
    proxy = await proxy_from_toml(
        index("left", left.url)
        + index("right", right.url)
        + route(["acme-special"], "right")
        + route(["acme-*"], "left")
    )
    page = await get_json(page_url(proxy, "acme-special"))
    assert filenames(page) == names(right.dists("acme-special"))
    assert page_requests(left, "acme-special") == 0


async def test_explicit_index_serves_only_projects_routed_to_it(
    fake_upstream_factory: FakeUpstreamFactory, proxy_from_toml: ProxyFromToml
) -> None:
    private, public = await private_and_public(fake_upstream_factory)
    proxy = await proxy_from_toml(
        index("public", public.url)
        + index("internal", private.url, explicit=True)
        + route(["acme-*"], "internal")
    )
    acme = await get_json(page_url(proxy, "acme-lib"))
    assert filenames(acme) == names(private.dists("acme-lib"))
    assert page_requests(public, "acme-lib") == 0
    # Unrouted: only the public index, however much the explicit one has.
    lib = await get_json(page_url(proxy, "lib"))
    assert filenames(lib) == names(public.dists("lib"))
    assert (await get_json(page_url(proxy, "internal-tool"))).status == 404
    assert page_requests(private, "lib") == page_requests(private, "internal-tool") == 0


@pytest.mark.parametrize("explicit", [False, True])
async def test_project_list_is_the_union_filtered_by_routes(
    explicit: bool, fake_upstream_factory: FakeUpstreamFactory, proxy_from_toml: ProxyFromToml
) -> None:
    private, public = await private_and_public(fake_upstream_factory)
    proxy = await proxy_from_toml(
        index("internal", private.url, explicit=explicit)
        + index("public", public.url)
        + route(["acme-*"], "internal")
    )
    listing = parsed(await get_json(proxy.index_url))
    shown = {p["name"] for p in listing["projects"]}
    # acme-bogus: only the public index has it, and it may not serve acme-*.
    # internal-tool: unrouted, so only listed when the private index is not explicit.
    expected = {"acme-lib", "lib"} | (set() if explicit else {"internal-tool"})
    assert shown == expected
    assert len(listing["projects"]) == len(shown)  # each name once


# == one index down =========================================================================


@pytest.mark.slow  # waits out retries: ~4 s
@pytest.mark.parametrize("fault", ["down", "5xx"])
async def test_one_index_failing_degrades_but_still_serves(
    fault: str, fake_upstream_factory: FakeUpstreamFactory, proxy_from_toml: ProxyFromToml
) -> None:
    main, mirror = await fake_upstream_factory(), await fake_upstream_factory()
    main.add_project("lib", ["1.0"])
    main.add_project("app", ["1.0"])
    mirror.add_project("lib", ["2.0"])
    mirror.add_project("mirror-only", ["1.0"])
    proxy = await proxy_from_toml(
        index("main", main.url, ttl=0) + index("mirror", mirror.url, ttl=0)
    )
    before = await get_json(page_url(proxy, "lib"))
    assert filenames(before) == names(main.dists("lib")) + names(mirror.dists("lib"))
    assert "X-Cachepi-Unavailable" not in before.headers and not before.stale
    healthy = parsed(await fetch(proxy.url + "/health"))
    assert healthy["status"] == "ok"

    if fault == "down":
        await mirror.stop()
    else:
        mirror.fail("/simple/*", 503)

    # Cached from the mirror: its stale copy still merged in, and said so.
    lib = await get_json(page_url(proxy, "lib"))
    assert filenames(lib) == filenames(before)
    assert lib.headers.get("X-Cachepi-Unavailable") == "mirror"
    assert lib.headers.get("X-Cachepi-Stale") == "1"
    assert "no-cache" in lib.headers.get("Cache-Control", "")
    # Never cached from the mirror: what the main index has, no stale copy involved.
    app = await get_json(page_url(proxy, "app"))
    assert filenames(app) == names(main.dists("app"))
    assert app.headers.get("X-Cachepi-Unavailable") == "mirror"
    assert "X-Cachepi-Stale" not in app.headers
    assert "no-cache" in app.headers.get("Cache-Control", "")
    # Only the failing index could have it: not a 404 that is not known.
    unknown = await get_json(page_url(proxy, "mirror-only"))
    assert unknown.status in (502, 504), unknown

    health = await fetch(proxy.url + "/health")
    assert health.status == 200
    report = json.loads(health.body)
    assert report["status"] == "degraded"
    by_name = {entry["name"]: entry for entry in report["indexes"]}
    assert [entry["name"] for entry in report["indexes"]] == ["main", "mirror"]
    assert by_name["main"]["healthy"] is True
    assert by_name["main"]["url"] == main.url
    assert by_name["main"]["ttl"] == 0
    assert isinstance(by_name["main"]["last_success"], int | float)
    assert by_name["main"]["last_error"] is None
    assert by_name["mirror"]["healthy"] is False
    assert by_name["mirror"]["url"] == mirror.url
    assert isinstance(by_name["mirror"]["last_failure"], int | float)
    assert abs(by_name["mirror"]["last_failure"] - time.time()) < 60
    assert isinstance(by_name["mirror"]["last_error"], str) and by_name["mirror"]["last_error"]

    home = (await fetch(proxy.url + "/")).body.decode()
    mirror_row = home[home.index(mirror.url) :]
    assert "mirror" in home and "main" in home and main.url in home
    assert "failing" in mirror_row.split("</tr>")[0], home
    assert "ok" in home[home.index(main.url) :].split("</tr>")[0], home


async def test_all_indexes_failing_with_nothing_cached_is_a_gateway_error(
    fake_upstream_factory: FakeUpstreamFactory, proxy_from_toml: ProxyFromToml
) -> None:
    main, mirror = await fake_upstream_factory(), await fake_upstream_factory()
    main.add_project("lib", ["1.0"])
    mirror.add_project("lib", ["2.0"])
    proxy = await proxy_from_toml(index("main", main.url, ttl=0) + index("mirror", mirror.url))
    await main.stop()
    await mirror.stop()
    reply = await get_json(page_url(proxy, "lib"))
    assert reply.status == 502, reply
    assert reply.status != 404


async def test_failing_indexes_are_all_named_in_order(
    fake_upstream_factory: FakeUpstreamFactory, proxy_from_toml: ProxyFromToml
) -> None:
    main, second, third = [await fake_upstream_factory() for _ in range(3)]
    main.add_project("lib", ["1.0"])
    proxy = await proxy_from_toml(
        index("main", main.url) + index("second", second.url) + index("third", third.url)
    )
    await second.stop()
    third.fail("/simple/*", 500)
    page = await get_json(page_url(proxy, "lib"))
    assert filenames(page) == names(main.dists("lib"))
    assert page.headers.get("X-Cachepi-Unavailable") == "second, third"


async def test_index_names_and_ttls_default_to_host_port_1800_and_180(
    fake_upstream_factory: FakeUpstreamFactory, proxy_from_toml: ProxyFromToml
) -> None:
    first, second = await fake_upstream_factory(), await fake_upstream_factory()
    proxy = await proxy_from_toml(
        f'[[index]]\nurl = "{first.url}"\n\n[[index]]\nurl = "{second.url}"\n'
    )
    report = parsed(await fetch(proxy.url + "/health"))
    assert report["status"] == "ok"
    described = [(i["name"], i["url"], i["ttl"], i["healthy"]) for i in report["indexes"]]
    assert described == [
        (f"127.0.0.1:{first.port}", first.url, 1800, True),
        (f"127.0.0.1:{second.port}", second.url, 180, True),
    ]
    for entry in report["indexes"]:  # never asked anything yet
        assert entry["last_failure"] is None and entry["last_error"] is None
    home = (await fetch(proxy.url + "/")).body.decode()
    first_row = home[home.index(first.url) :].split("</tr>")[0]
    second_row = home[home.index(second.url) :].split("</tr>")[0]
    assert "1800" in first_row and "180" in second_row and "1800" not in second_row
    assert f"127.0.0.1:{first.port}" in home and "ok" in first_row


# == per-index TTL and yanks ================================================================


async def test_each_index_is_refetched_after_its_own_ttl(
    fake_upstream_factory: FakeUpstreamFactory, proxy_from_toml: ProxyFromToml
) -> None:
    quick, slow = await fake_upstream_factory(), await fake_upstream_factory()
    quick.add_project("lib", ["1.0"])
    slow.add_project("lib", ["2.0"])
    proxy = await proxy_from_toml(
        top(stale_while_revalidate=0) + index("quick", quick.url, ttl=1) + index("slow", slow.url)
    )
    await get_json(page_url(proxy, "lib"))
    await get_json(page_url(proxy, "lib"))
    assert (quick.count("/simple/lib/"), slow.count("/simple/lib/")) == (1, 1)
    await asyncio.sleep(1.2)
    page = await get_json(page_url(proxy, "lib"))
    assert (quick.count("/simple/lib/"), slow.count("/simple/lib/")) == (2, 1)
    # Conditionally: the unchanged page is revalidated, not fetched again whole.
    revalidation = quick.requests_to("/simple/lib/")[-1]
    assert revalidation.status == 304
    assert "If-None-Match" in revalidation.headers or "If-Modified-Since" in revalidation.headers
    assert filenames(page) == names(quick.dists("lib")) + names(slow.dists("lib"))


async def test_yank_and_unyank_show_after_the_index_ttl(
    fake_upstream_factory: FakeUpstreamFactory, proxy_from_toml: ProxyFromToml
) -> None:
    quick, slow = await fake_upstream_factory(), await fake_upstream_factory()
    (wheel,) = quick.add_project("lib", ["1.0"], sdist=False)
    slow.add_project("other", ["1.0"])
    proxy = await proxy_from_toml(
        top(stale_while_revalidate=0) + index("quick", quick.url, ttl=1) + index("slow", slow.url)
    )

    def yanked(reply: Reply) -> object:
        return file_entry(reply, wheel.filename).get("yanked", False)

    assert yanked(await get_json(page_url(proxy, "lib"))) is False
    quick.add_dist(wheel, yanked="broken build")
    await asyncio.sleep(1.2)
    assert yanked(await get_json(page_url(proxy, "lib"))) == "broken build"
    quick.add_dist(wheel, yanked=False)
    await asyncio.sleep(1.2)
    assert yanked(await get_json(page_url(proxy, "lib"))) is False


# == cooldown ===============================================================================


async def test_cooldown_hides_recent_files_per_index_and_exempts_projects(
    fake_upstream_factory: FakeUpstreamFactory, proxy_from_toml: ProxyFromToml
) -> None:
    strict, lenient = await fake_upstream_factory(), await fake_upstream_factory()
    settled = add_release(strict, "lib", "1.0", OLD)
    fresh = add_release(strict, "lib", "2.0", ago(hours=2))
    fresh_sdist = strict.add_dist(build_sdist("lib", "2.0"), upload_time=ago(hours=2))
    # The lenient index's own cooldown (30 minutes) applies to its files.
    day_old = add_release(lenient, "tool", "1.0", ago(hours=1))
    brand_new = add_release(lenient, "tool", "1.1", ago(minutes=5))
    exempt_fresh = add_release(strict, "exempt-tool", "3.0", ago(minutes=1))
    proxy = await proxy_from_toml(
        top(min_release_age="1d", cooldown_exempt=["exempt-*", "certifi"])
        + index("strict", strict.url)
        + index("lenient", lenient.url, min_release_age="30m")
    )

    lib = await get_json(page_url(proxy, "lib"))
    assert filenames(lib) == [settled.filename]
    assert parsed(lib)["versions"] == ["1.0"]  # 2.0 only had hidden files
    for dist in (fresh, fresh_sdist):
        refused = await fetch(file_url(proxy, "lib", dist.filename))
        assert refused.status == 403, refused
        assert b"cooldown" in refused.body.lower()
    assert strict.count_prefix("/files/lib-2.0") == 0
    assert (await download(proxy, "lib", settled.filename)).sha256 == settled.sha256

    tool = await get_json(page_url(proxy, "tool"))
    assert filenames(tool) == [day_old.filename]
    assert parsed(tool)["versions"] == ["1.0"]
    assert (await fetch(file_url(proxy, "tool", brand_new.filename))).status == 403

    exempt = await get_json(page_url(proxy, "exempt-tool"))
    assert filenames(exempt) == [exempt_fresh.filename]
    assert (await download(proxy, "exempt-tool", exempt_fresh.filename)).status == 200


@pytest.mark.parametrize("age", ["3600", "60m", "1h"])
async def test_cooldown_units(
    age: str, fake_upstream_factory: FakeUpstreamFactory, proxy_from_toml: ProxyFromToml
) -> None:
    upstream = await fake_upstream_factory()
    older = add_release(upstream, "lib", "1.0", ago(minutes=90))
    newer = add_release(upstream, "lib", "1.1", ago(minutes=30))
    proxy = await proxy_from_toml(top(min_release_age=age) + index("only", upstream.url))
    assert filenames(await get_json(page_url(proxy, "lib"))) == [older.filename]
    assert (await fetch(file_url(proxy, "lib", newer.filename))).status == 403


async def test_cooldown_from_cachepi_env(
    fake_upstream_factory: FakeUpstreamFactory, proxy_from_toml: ProxyFromToml
) -> None:
    upstream = await fake_upstream_factory()
    older = add_release(upstream, "lib", "1.0", OLD)
    add_release(upstream, "lib", "1.1", ago(minutes=30))
    proxy = await proxy_from_toml(
        index("only", upstream.url), env={"CACHEPI_MIN_RELEASE_AGE": "2h"}
    )
    assert filenames(await get_json(page_url(proxy, "lib"))) == [older.filename]


@pytest.mark.parametrize("policy", ["show", "hide"])
async def test_unknown_upload_time_shown_or_hidden(
    policy: str, fake_upstream_factory: FakeUpstreamFactory, proxy_from_toml: ProxyFromToml
) -> None:
    dated, undated = await fake_upstream_factory(), await fake_upstream_factory(pep700=False)
    old = add_release(dated, "lib", "1.0", OLD)
    (mystery,) = undated.add_project("lib", ["1.5"], sdist=False)
    proxy = await proxy_from_toml(
        top(min_release_age="7d", unknown_upload_time=policy)
        + index("dated", dated.url)
        + index("undated", undated.url)
    )
    page = await get_json(page_url(proxy, "lib"))
    reply = await fetch(file_url(proxy, "lib", mystery.filename))
    if policy == "show":
        assert filenames(page) == [old.filename, mystery.filename]
        assert parsed(page)["versions"] == ["1.0", "1.5"]
        assert (reply.status, reply.sha256) == (200, mystery.sha256)
    else:
        assert filenames(page) == [old.filename]
        assert parsed(page)["versions"] == ["1.0"]
        assert reply.status == 403 and b"cooldown" in reply.body.lower(), reply
        assert undated.count_prefix("/files/") == 0


async def test_unknown_upload_time_defaults_to_show(
    fake_upstream_factory: FakeUpstreamFactory, proxy_from_toml: ProxyFromToml
) -> None:
    undated = await fake_upstream_factory(pep700=False)
    (mystery,) = undated.add_project("lib", ["1.5"], sdist=False)
    proxy = await proxy_from_toml(top(min_release_age="7d") + index("undated", undated.url))
    assert filenames(await get_json(page_url(proxy, "lib"))) == [mystery.filename]


# == deny and allow =========================================================================


async def test_deny_rules_for_projects_versions_and_files(
    fake_upstream_factory: FakeUpstreamFactory, proxy_from_toml: ProxyFromToml
) -> None:
    upstream, extra = await fake_upstream_factory(), await fake_upstream_factory()
    for up in (upstream, extra):
        up.add_project("evil", ["1.0"])
        up.add_project("evil-twin", ["1.0"])
    upstream.add_project("requests", ["2.31.0", "2.32.0", "2.33.0"], sdist=False)
    upstream.add_project("urllib3", ["2.2.0", "3.0.0", "3.1.0rc1"], sdist=False)
    upstream.add_project("bad", ["1.0", "1.1"])
    upstream.add_project("evilish", ["1.0"])  # `evil-*` matches whole names only
    proxy = await proxy_from_toml(
        top(deny=["requests==2.32.0", "urllib3>=3", "evil", "evil-*", "bad-1.0-py3-none-any.whl"])
        + index("main", upstream.url)
        + index("extra", extra.url)
    )

    # Projects: 403 for page and files, no upstream asked anything about them.
    for project in ("evil", "evil-twin", "Evil_Twin"):
        page = await get_json(page_url(proxy, project), allow_redirects=True)
        assert page.status == 403, (project, page)
    wheel = wheel_of(upstream, "evil", "1.0")
    assert (await fetch(file_url(proxy, "evil", wheel.filename))).status == 403
    for up in (upstream, extra):
        assert page_requests(up, "evil") == page_requests(up, "evil-twin") == 0, up.requests
    assert filenames(await get_json(page_url(proxy, "evilish"))) == names(upstream.dists("evilish"))

    # Versions: those files unlisted and refused, naming the rule.
    requests_page = await get_json(page_url(proxy, "requests"))
    assert filenames(requests_page) == [
        "requests-2.31.0-py3-none-any.whl",
        "requests-2.33.0-py3-none-any.whl",
    ]
    assert parsed(requests_page)["versions"] == ["2.31.0", "2.33.0"]
    refused = await fetch(file_url(proxy, "requests", "requests-2.32.0-py3-none-any.whl"))
    assert refused.status == 403 and b"requests==2.32.0" in refused.body, refused
    # Pre-releases match specifiers too.
    assert filenames(await get_json(page_url(proxy, "urllib3"))) == [
        "urllib3-2.2.0-py3-none-any.whl"
    ]
    for version in ("3.0.0", "3.1.0rc1"):
        reply = await fetch(file_url(proxy, "urllib3", f"urllib3-{version}-py3-none-any.whl"))
        assert reply.status == 403 and b"urllib3>=3" in reply.body, reply

    # Filenames: that one file only.
    assert filenames(await get_json(page_url(proxy, "bad"))) == [
        "bad-1.0.tar.gz",
        "bad-1.1-py3-none-any.whl",
        "bad-1.1.tar.gz",
    ]
    assert (await fetch(file_url(proxy, "bad", "bad-1.0-py3-none-any.whl"))).status == 403
    assert (await download(proxy, "bad", "bad-1.0.tar.gz")).status == 200
    assert upstream.count("/files/bad-1.0-py3-none-any.whl") == 0
    assert upstream.count("/files/requests-2.32.0-py3-none-any.whl") == 0


async def test_allow_list_serves_only_matching_projects_and_versions(
    fake_upstream_factory: FakeUpstreamFactory, proxy_from_toml: ProxyFromToml
) -> None:
    upstream = await fake_upstream_factory()
    upstream.add_project("app", ["1.0", "2.0"], sdist=False)
    upstream.add_project("lib", ["0.9", "1.0", "1.1b1"], sdist=False)
    upstream.add_project("util-pkg", ["0.5"])
    proxy = await proxy_from_toml(top(allow=["app", "lib>=1"]) + index("main", upstream.url))

    assert filenames(await get_json(page_url(proxy, "app"))) == names(upstream.dists("app"))
    lib = await get_json(page_url(proxy, "lib"))
    assert filenames(lib) == ["lib-1.0-py3-none-any.whl", "lib-1.1b1-py3-none-any.whl"]
    assert (await fetch(file_url(proxy, "lib", "lib-0.9-py3-none-any.whl"))).status == 403
    assert (await download(proxy, "lib", "lib-1.0-py3-none-any.whl")).status == 200
    assert (await get_json(page_url(proxy, "util-pkg"))).status == 403
    assert (await fetch(file_url(proxy, "util-pkg", "util_pkg-0.5.tar.gz"))).status == 403


# == configuration errors ===================================================================


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (top(colour="blue") + index("a", "http://127.0.0.1:1/simple/"), "colour"),
        (index("a", "http://127.0.0.1:1/simple/", flavour="x"), "flavour"),
        (top(min_release_age="7 weeks ago") + index("a", "http://127.0.0.1:1/"), "min-release-age"),
        (top(min_release_age="-1d") + index("a", "http://127.0.0.1:1/"), "min-release-age"),
        (index("a", "http://127.0.0.1:1/", min_release_age="soon"), "min-release-age"),
        (top(combine="both") + index("a", "http://127.0.0.1:1/"), "combine"),
        (top(unknown_upload_time="ask") + index("a", "http://127.0.0.1:1/"), "unknown-upload-time"),
        (index("a", "http://127.0.0.1:1/", ttl=-5), "ttl"),
        (index("a", "http://127.0.0.1:1/") + route(["x-*"], "a") + "priority = 1\n", "priority"),
        (index("a", "http://127.0.0.1:1/") + route(["x-*"], "nowhere"), "nowhere"),
        (index("a", "http://127.0.0.1:1/") + route(["x-*"], ["a", "nowhere"]), "nowhere"),
        (top(index_url="http://127.0.0.1:2/") + index("a", "http://127.0.0.1:1/"), "index-url"),
    ],
)  # fmt: skip
def test_config_errors_name_the_key(text: str, named: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        settings_from_toml(tmp_path, text)
    assert named in str(raised.value)


@pytest.mark.parametrize(
    "env",
    [
        {"PROXPI_INDEX_URL": "http://127.0.0.1:2/simple/"},
        {"PROXPI_EXTRA_INDEX_URLS": "http://127.0.0.1:2/simple/"},
        {"CACHEPI_INDEX_URL": "http://127.0.0.1:2/simple/"},
    ],
)
def test_index_tables_and_index_url_settings_conflict(env: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        settings_from_toml(tmp_path, index("a", "http://127.0.0.1:1/simple/"), env)
    (variable,) = env
    message = str(raised.value)
    assert variable in message or variable.split("_", 1)[1].lower().replace("_", "-") in message


@pytest.mark.parametrize(
    ("env", "flags", "expected"),
    [
        ({}, {}, 100),
        ({"PROXPI_PAGE_MAX_AGE": "200"}, {}, 200),
        ({"PROXPI_PAGE_MAX_AGE": "200", "CACHEPI_PAGE_MAX_AGE": "300"}, {}, 300),
        ({"CACHEPI_PAGE_MAX_AGE": "300"}, {"page_max_age": 400}, 400),
    ],
)
def test_flat_settings_in_toml_rank_below_env_and_flags(
    env: dict[str, str], flags: dict[str, object], expected: int, tmp_path: Path
) -> None:
    config = tmp_path / "cachepi.toml"
    config.write_text(
        top(page_max_age=100, cache_size="2G") + index("a", "http://127.0.0.1:1/simple/")
    )
    settings = load_settings(
        {"config": str(config), "cache_dir": str(tmp_path), "port": 0, **flags}, env=env
    )
    assert settings.page_max_age == expected
    assert settings.cache_size == 2 * 1024**3


# == proxpi variables =======================================================================


async def test_proxpi_variables_still_give_a_two_index_merge(
    fake_upstream_factory: FakeUpstreamFactory, tmp_path: Path
) -> None:
    main, extra = await fake_upstream_factory(), await fake_upstream_factory()
    main.add_project("lib", ["1.0"])
    extra.add_project("lib", ["0.9", "1.0"])
    env = {
        "PROXPI_INDEX_URL": main.url,
        "PROXPI_EXTRA_INDEX_URLS": extra.url,
        "PROXPI_EXTRA_INDEX_TTLS": "1",
        "CACHEPI_STALE_WHILE_REVALIDATE": "0",  # a stale page waits: counted at once
    }
    settings = load_settings({"cache_dir": str(tmp_path / "c"), "port": 0}, env=env)
    proxy = await start_proxy(settings)
    try:
        page = await get_json(page_url(proxy, "lib"))
        additions = ["lib-0.9-py3-none-any.whl", "lib-0.9.tar.gz"]
        assert filenames(page) == [*names(main.dists("lib")), *additions]
        await asyncio.sleep(1.2)  # the extra index's TTL, not the main one's (30 minutes)
        await get_json(page_url(proxy, "lib"))
        assert (main.count("/simple/lib/"), extra.count("/simple/lib/")) == (1, 2)
    finally:
        await proxy.stop()


# == credentials ============================================================================

USER = "cachepi-user-q7"
PASSWORD = "pw-Zx81-secret"


def secrets() -> list[str]:
    """Every spelling of the credentials that could leak."""
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    return [PASSWORD, USER, basic, f"{USER}:{PASSWORD}"]


@pytest.mark.slow  # ~9 s
async def test_credentials_never_leak(
    fake_upstream_factory: FakeUpstreamFactory,
    proxy_from_toml: ProxyFromToml,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    private = await fake_upstream_factory(require_auth=(USER, PASSWORD))
    public = await fake_upstream_factory()
    private.add_project("acme-lib", ["1.0"])
    private.add_project("lib", ["1.0"])
    private.add_project("private-only", ["1.0"])
    public.add_project("lib", ["2.0"])
    # The password comes from the environment, as `${VAR}`.
    monkeypatch.setenv("PRIVATE_INDEX_PASSWORD", PASSWORD)
    url = f"http://{USER}:${{PRIVATE_INDEX_PASSWORD}}@127.0.0.1:{private.port}/simple/"
    proxy = await proxy_from_toml(
        index("internal", url, ttl=0)
        + index("public", public.url, ttl=0)
        + route(["acme-*"], "internal"),
        env={"PRIVATE_INDEX_PASSWORD": PASSWORD},
    )
    seen: list[Reply] = []

    async def get(url: str, **kwargs: Any) -> Reply:
        reply = await fetch(url, **kwargs)
        seen.append(reply)
        return reply

    json_accept = {"Accept": "application/vnd.pypi.simple.v1+json"}
    acme = await get(page_url(proxy, "acme-lib"), headers=json_accept)
    assert filenames(acme) == names(private.dists("acme-lib"))  # auth really was used
    await get(page_url(proxy, "acme-lib"), headers={"Accept": "text/html"})
    lib = await get(page_url(proxy, "lib"), headers=json_accept)
    assert filenames(lib) == names(private.dists("lib")) + names(public.dists("lib"))
    await get(page_url(proxy, "lib"), headers={"Accept": "text/html"})
    wheel = wheel_of(private, "acme-lib", "1.0")
    downloaded = await get(file_url(proxy, "acme-lib", wheel.filename))
    assert downloaded.sha256 == wheel.sha256
    await get(file_url(proxy, "acme-lib", wheel.filename + ".metadata"))
    await get(proxy.index_url, headers=json_accept)
    await get(proxy.index_url, headers={"Accept": "text/html"})
    redirect = await get(proxy.index_url + "Acme_Lib", allow_redirects=False)
    assert redirect.status == 301
    await get(proxy.url + "/health")
    await get(proxy.url + "/")
    await get(page_url(proxy, "no-such-project"), headers=json_accept)

    # The private index fails: errors, stale pages, health and home page.
    private.fail("/simple/*", 500)
    await get(page_url(proxy, "acme-lib"), headers=json_accept)
    await get(page_url(proxy, "private-only"), headers=json_accept)
    await private.stop()
    stale = await get(page_url(proxy, "acme-lib"), headers=json_accept)
    assert stale.status == 200 and stale.stale
    down = await get(page_url(proxy, "private-only"), headers=json_accept)
    assert down.status in (502, 504)
    await get(file_url(proxy, "lib", "lib-1.0-py3-none-any.whl"))
    await get(proxy.index_url, headers=json_accept)
    health = await get(proxy.url + "/health")
    assert json.loads(health.body)["status"] == "degraded"
    await get(proxy.url + "/")

    assert len(seen) == 20
    for reply in seen:
        text = reply.body.decode(errors="replace") + "\n" + repr(list(reply.headers.items()))
        for secret in secrets():
            assert secret not in text, (secret, reply.status, text[:500])
    logged = caplog.text + "\n".join(
        f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records
    )
    assert caplog.records  # the logs were captured at all
    for secret in secrets():
        assert secret not in logged, secret


async def test_wrong_credentials_are_not_echoed(
    fake_upstream_factory: FakeUpstreamFactory,
    proxy_from_toml: ProxyFromToml,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "pw-not-the-right-one-53"
    private = await fake_upstream_factory(require_auth=(USER, PASSWORD))
    public = await fake_upstream_factory()
    private.add_project("private-only", ["1.0"])
    public.add_project("lib", ["1.0"])
    url = f"http://{USER}:{wrong}@127.0.0.1:{private.port}/simple/"
    proxy = await proxy_from_toml(index("internal", url) + index("public", public.url))
    replies = [
        await get_json(page_url(proxy, "private-only")),
        await get_json(page_url(proxy, "lib")),
        await fetch(proxy.url + "/health"),
        await fetch(proxy.url + "/"),
    ]
    assert replies[0].status in (502, 504) and replies[1].status == 200
    assert private.requests and all(r.status == 401 for r in private.requests)
    assert replies[1].headers.get("X-Cachepi-Unavailable") == "internal"
    for reply in replies:
        text = reply.body.decode(errors="replace") + repr(list(reply.headers.items()))
        assert wrong not in text and USER not in text, text[:500]
    assert wrong not in caplog.text and USER not in caplog.text
