"""A hostile or broken upstream cannot make cachepi leak, lie, or fall over.

Each attack is replayed against a real server on 127.0.0.1 (tests/fakeupstream/hostile.py)
with cachepi in front, in this process: what the client sees, what the internal service the
upstream aimed at received, what is in the cache directory, and the server's memory.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from cachepi.reach import (
    HOP,
    AddressesRefused,
    AddressRefused,
    CheckingResolver,
    Hop,
    is_public,
)
from cachepi.redact import redact
from cachepi.upstream import Connections, UpstreamError
from cachepi.web.pages import gateway_error
from tests.conftest import ProxyFactory
from tests.fakeupstream import FakeUpstream
from tests.fakeupstream.hostile import (
    MIB,
    SECRET,
    HostileUpstream,
    InternalService,
    closed_port,
    filtered_port,
    gzip_bomb,
    zstd_bomb,
)
from tests.fetching import JSON, Reply, fetch, get_json

TARBALL = b"a real sdist, honest"


@pytest_asyncio.fixture
async def evil() -> AsyncIterator[HostileUpstream]:
    async with HostileUpstream() as server:
        yield server


@pytest_asyncio.fixture
async def internal() -> AsyncIterator[InternalService]:
    async with InternalService() as server:
        yield server


def sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def cached_bytes(cache_dir: Path) -> bytes:
    """Everything under the cache directory, concatenated (small in these tests)."""
    return b"".join(path.read_bytes() for path in cache_dir.rglob("*") if path.is_file())


def unreachable(url: str) -> bytes:
    return f"{url}: upstream could not be reached\n".encode()


# == SSRF ====================================================================================


def internal_urls(internal: InternalService) -> list[str]:
    port = internal.port
    return [
        f"http://127.0.0.1:{port}/secret",
        f"http://localhost:{port}/secret",  # a name that resolves to loopback
        f"http://127.1:{port}/secret",  # short and other legacy IPv4 forms
        f"http://0x7f.0.0.1:{port}/secret",
        f"http://[::ffff:127.0.0.1]:{port}/secret",  # IPv4-mapped IPv6
        f"http://[::1]:{port}/secret",
        f"http://0.0.0.0:{port}/secret",
    ]


async def test_file_urls_at_internal_addresses_are_never_fetched(
    evil: HostileUpstream, internal: InternalService, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    urls = internal_urls(internal)
    files = [(f"evil-1.{i}.tar.gz", url, None) for i, url in enumerate(urls)]
    evil.project("evil", files)
    proxy = await proxy_factory((evil.url, 1800))
    page = await get_json(proxy.index_url + "evil/")
    assert len(json.loads(page.body)["files"]) == len(urls)  # listed, as the index says
    for filename, url, _ in files:
        reply = await fetch(f"{proxy.index_url}evil/{filename}")
        assert (reply.status, reply.body) == (502, unreachable(url)), url
    assert internal.requests == []
    assert SECRET not in cached_bytes(tmp_path / "cache")


async def test_redirects_to_internal_addresses_are_never_followed(
    evil: HostileUpstream, internal: InternalService, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    evil.project("evil", [("evil-1.0.tar.gz", evil.at("/files/evil-1.0.tar.gz"), None)])
    evil.redirect("/files/evil-1.0.tar.gz", internal.at("/secret"))
    evil.redirect("/simple/evilpage/", internal.at("/simple/evilpage/"), status=301)
    proxy = await proxy_factory((evil.url, 1800))

    reply = await fetch(f"{proxy.index_url}evil/evil-1.0.tar.gz")
    assert (reply.status, reply.body) == (502, unreachable(evil.at("/files/evil-1.0.tar.gz")))
    page = await get_json(proxy.index_url + "evilpage/")
    assert (page.status, page.body) == (502, unreachable(evil.url + "evilpage/"))
    assert evil.count("/files/evil-1.0.tar.gz") == 1  # the first hop, on the index's origin
    assert internal.requests == []
    assert SECRET not in cached_bytes(tmp_path / "cache")


async def test_redirects_within_the_index_origin_are_followed(
    evil: HostileUpstream, proxy_factory: ProxyFactory
) -> None:
    evil.project("good", [("good-1.0.tar.gz", evil.at("/old/good-1.0.tar.gz"), sha256(TARBALL))])
    evil.redirect("/old/good-1.0.tar.gz", "/files/good-1.0.tar.gz")  # relative, same origin
    evil.serve("/files/good-1.0.tar.gz", TARBALL, "application/octet-stream")
    evil.redirect("/simple/moved/", evil.url + "good/", status=308)
    proxy = await proxy_factory((evil.url, 1800))
    reply = await fetch(f"{proxy.index_url}good/good-1.0.tar.gz")
    assert (reply.status, reply.body) == (200, TARBALL)
    moved = await get_json(proxy.index_url + "moved/")  # a page that moved within the index
    assert moved.status == 200


async def test_file_hosts_may_be_internal_and_bind_every_redirect(
    evil: HostileUpstream, internal: InternalService, proxy_factory: ProxyFactory
) -> None:
    # FILE_HOSTS names where files come from; a host named there may be a private address.
    evil.project(
        "evil",
        [
            ("evil-1.0.tar.gz", internal.at("/evil-1.0.tar.gz"), sha256(SECRET)),
            ("evil-2.0.tar.gz", evil.at("/files/evil-2.0.tar.gz"), None),
        ],
    )
    evil.redirect("/files/evil-2.0.tar.gz", f"http://localhost:{internal.port}/secret")
    proxy = await proxy_factory((evil.url, 1800), file_hosts=frozenset({"127.0.0.1"}))
    allowed = await fetch(f"{proxy.index_url}evil/evil-1.0.tar.gz")
    assert (allowed.status, allowed.body) == (200, SECRET)
    assert internal.count("/evil-1.0.tar.gz") == 1
    refused = await fetch(f"{proxy.index_url}evil/evil-2.0.tar.gz")
    assert refused.status == 502 and refused.one_line
    assert b"'localhost' are not allowed here (by a redirect" in refused.body
    assert internal.count("/secret") == 0


async def test_private_addresses_are_reached_when_the_operator_allows_them(
    evil: HostileUpstream, internal: InternalService, proxy_factory: ProxyFactory
) -> None:
    evil.project("evil", [("evil-1.0.tar.gz", f"http://localhost:{internal.port}/x", None)])
    proxy = await proxy_factory((evil.url, 1800), upstream_private_addresses="allow")
    reply = await fetch(f"{proxy.index_url}evil/evil-1.0.tar.gz")
    assert (reply.status, reply.body) == (200, SECRET)


async def test_netrc_passwords_are_never_sent(
    evil: HostileUpstream,
    internal: InternalService,
    proxy_factory: ProxyFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text(
        "machine 127.0.0.1 login root password hunter2\ndefault login root password hunter2\n"
    )
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".netrc").write_text(netrc.read_text())
    (tmp_path / ".netrc").chmod(0o600)
    evil.project("evil", [("evil-1.0.tar.gz", internal.at("/x"), None)])
    proxy = await proxy_factory((evil.url, 1800), upstream_private_addresses="allow")
    assert (await get_json(proxy.index_url + "evil/")).status == 200
    assert (await fetch(f"{proxy.index_url}evil/evil-1.0.tar.gz")).status == 200
    seen = evil.requests + internal.requests
    assert len(seen) == 2
    assert all("Authorization" not in request.headers for request in seen)


async def test_what_hosts_named_by_a_page_answer_is_not_told(
    evil: HostileUpstream, internal: InternalService, proxy_factory: ProxyFactory
) -> None:
    # A 404 or a 401 would tell "a web server is there" from "nothing is": not for a host a
    # page named. The index's own answers are told (they help the operator, and nobody
    # chose where they come from).
    files = [
        ("probe-1.0.tar.gz", f"http://localhost:{internal.port}/x", None),
        ("probe-2.0.tar.gz", f"http://localhost:{closed_port()}/x", None),
        ("probe-3.0.tar.gz", evil.at("/files/missing.tar.gz"), None),
    ]
    evil.project("probe", files)

    async def not_found(request: web.Request) -> web.Response:
        return web.Response(status=404)

    internal.route("/x", not_found)
    proxy = await proxy_factory((evil.url, 1800), upstream_private_addresses="allow")
    replies = [await fetch(f"{proxy.index_url}probe/{name}") for name, _, _ in files]
    assert [reply.status for reply in replies] == [502, 502, 502]
    assert replies[0].body == unreachable(files[0][1])
    assert replies[1].body == unreachable(files[1][1])
    assert b"upstream has no" in replies[2].body
    assert internal.count("/x") == 1


@pytest.mark.slow  # connect timeouts and refusals, each retried: ~3.5 s
async def test_a_refused_port_and_a_filtered_port_read_the_same(
    evil: HostileUpstream, proxy_factory: ProxyFactory
) -> None:
    with filtered_port() as dropping:
        refusing = closed_port()
        urls = {
            "refused": f"http://127.0.0.1:{refusing}/x.tar.gz",
            "filtered": f"http://127.0.0.1:{dropping}/x.tar.gz",
        }
        evil.project(
            "scan", [(f"scan-{i}.0.tar.gz", url, None) for i, url in enumerate(urls.values())]
        )
        proxy = await proxy_factory(
            (evil.url, 1800), upstream_private_addresses="allow", connect_timeout=0.3
        )
        replies: dict[str, Reply] = {}
        for i, (kind, url) in enumerate(urls.items()):
            replies[kind] = await fetch(f"{proxy.index_url}scan/scan-{i}.0.tar.gz")
            assert (replies[kind].status, replies[kind].body) == (502, unreachable(url)), kind


async def test_the_connection_made_is_checked_whatever_the_url_said(
    internal: InternalService,
) -> None:
    """The last check sees the peer of the connection itself (new or pooled), so nothing
    that gets past the URL and name checks (a rebinding name, a literal aiohttp does not
    resolve) reaches an address it may not."""
    connections = Connections()
    try:
        token = HOP.set(Hop(public_only=True))
        try:
            with pytest.raises(AddressRefused):
                await connections.files.get(internal.at("/secret"))
            with pytest.raises(aiohttp.ClientConnectorError) as refused:
                await connections.pages.get(f"http://localhost:{internal.port}/secret")
            assert isinstance(refused.value.os_error, AddressesRefused)
        finally:
            HOP.reset(token)
        async with connections.files.get(internal.at("/fine")) as response:  # not guarded
            assert await response.read() == SECRET
    finally:
        await connections.close()
    assert [seen.path for seen in internal.requests] == ["/fine"]


async def test_the_resolver_drops_what_the_request_may_not_reach() -> None:
    resolver = CheckingResolver()
    try:
        assert await resolver.resolve("localhost", 80)  # no request: nothing dropped
        token = HOP.set(Hop(public_only=True))
        try:
            with pytest.raises(AddressesRefused):
                await resolver.resolve("localhost", 80)
        finally:
            HOP.reset(token)
    finally:
        await resolver.close()


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("100.64.0.1", False),  # CGNAT
        ("169.254.169.254", False),  # cloud metadata
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fe80::1%eth0", False),
        ("fc00::1", False),
        ("fd12:3456::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("::ffff:8.8.8.8", True),
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
        ("not an address", False),
    ],
)
def test_which_addresses_are_public(address: str, public: bool) -> None:
    assert is_public(address) is public


# == page bombs ==============================================================================


def vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def reset_peak() -> None:
    """Make VmHWM the current resident size (Linux: clear_refs 5)."""
    Path("/proc/self/clear_refs").write_text("5")


@pytest.mark.parametrize("coding", ["gzip", "zstd"])
async def test_a_page_bomb_gets_the_stale_copy_and_memory_stays_flat(
    coding: str, evil: HostileUpstream, proxy_factory: ProxyFactory
) -> None:
    good = evil.project("bomb", [("bomb-1.0.tar.gz", evil.at("/files/bomb-1.0.tar.gz"), None)])
    proxy = await proxy_factory((evil.url, 0))  # every request revalidates
    first = await get_json(proxy.index_url + "bomb/")
    assert first.status == 200
    bomb = gzip_bomb(2 * MIB) if coding == "gzip" else zstd_bomb(4096 * MIB)
    evil.serve("/simple/bomb/", bomb, headers={"Content-Encoding": coding})
    evil.serve("/simple/fresh/", bomb, headers={"Content-Encoding": coding})
    await asyncio.sleep(0.1)
    before = vm_kib("VmRSS")
    reset_peak()
    stale = await get_json(proxy.index_url + "bomb/")
    uncached = await get_json(proxy.index_url + "fresh/")
    growth_mib = (vm_kib("VmHWM") - before) / 1024
    print(f"{coding} bomb ({len(bomb) / MIB:.2f} MiB): peak growth {growth_mib:.0f} MiB")
    assert (stale.status, stale.stale, stale.body) == (200, True, first.body)
    assert (uncached.status, uncached.body) == (502, unreachable(evil.url + "fresh/"))
    assert growth_mib < 100
    assert good  # the page the stale copy came from


async def test_pages_over_the_size_cap_fail_without_being_read_whole(
    evil: HostileUpstream, proxy_factory: ProxyFactory
) -> None:
    filler = {"padding": "x" * (2 * MIB)}
    evil.project("big", [], **filler)  # 2 MiB on the wire and decoded
    evil.project("zipped", [], **filler)
    evil.serve(  # 2 MiB decoded, little on the wire: the decoded cap holds
        "/simple/zipped/",
        gzip.compress(json.dumps({"name": "zipped", "files": [], **filler}).encode()),
        headers={"Content-Encoding": "gzip"},
    )
    evil.serve("/simple/brotli/", b"\x0b", headers={"Content-Encoding": "br"})
    evil.project("small", [])
    proxy = await proxy_factory((evil.url, 1800), max_page_bytes=MIB)
    for name in ("big", "zipped", "brotli"):
        reply = await get_json(f"{proxy.index_url}{name}/")
        assert (reply.status, reply.body) == (502, unreachable(f"{evil.url}{name}/")), name
    assert (await get_json(proxy.index_url + "small/")).status == 200


async def test_gzip_pages_in_several_members_are_read_whole(
    evil: HostileUpstream, proxy_factory: ProxyFactory
) -> None:
    body = json.dumps({"name": "multi", "files": []}).encode()
    evil.serve(
        "/simple/multi/",
        gzip.compress(body[:10]) + gzip.compress(body[10:]) + b"\0\0",
        headers={"Content-Encoding": "gzip"},
    )
    evil.serve("/simple/cut/", gzip.compress(body)[:-9], headers={"Content-Encoding": "gzip"})
    proxy = await proxy_factory((evil.url, 1800))
    assert (await get_json(proxy.index_url + "multi/")).status == 200
    assert (await get_json(proxy.index_url + "cut/")).status == 502


# == deadlines ===============================================================================


async def test_a_trickling_page_gets_the_stale_copy_within_the_deadline(
    evil: HostileUpstream, proxy_factory: ProxyFactory
) -> None:
    body = evil.project("slow", [])
    proxy = await proxy_factory((evil.url, 0), page_timeout=1.0)
    first = await get_json(proxy.index_url + "slow/")
    assert first.status == 200
    evil.trickle("/simple/slow/", body, every=0.2)  # ~13 s for the whole page
    evil.trickle("/simple/never/", body, every=0.2)
    began = time.monotonic()
    stale = await get_json(proxy.index_url + "slow/")
    stale_seconds = time.monotonic() - began
    began = time.monotonic()
    uncached = await get_json(proxy.index_url + "never/")
    uncached_seconds = time.monotonic() - began
    assert (stale.status, stale.stale, stale.body) == (200, True, first.body)
    assert (uncached.status, uncached.body) == (
        504,
        f"{evil.url}never/: upstream timed out\n".encode(),
    )
    # Without the deadline, each would take the ~13 s the page trickles for.
    assert stale_seconds < 4 and uncached_seconds < 4, (stale_seconds, uncached_seconds)


async def test_an_index_behind_a_dropping_firewall_is_unreachable_within_the_deadline(
    evil: HostileUpstream, proxy_factory: ProxyFactory
) -> None:
    with filtered_port() as dropping:
        index = f"http://127.0.0.1:{dropping}/simple/"
        proxy = await proxy_factory((index, 1800), page_timeout=1.0, connect_timeout=5)
        began = time.monotonic()
        reply = await get_json(proxy.index_url + "lib/")
        assert (reply.status, reply.body) == (502, unreachable(index + "lib/"))
        assert time.monotonic() - began < 4  # 1 s, with room for a busy machine


async def test_page_misses_never_wait_behind_busy_file_downloads(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    """Four downloads trickle at 100 bytes a second, their clients long gone, holding every
    file connection: a page nobody asked for yet still comes at once."""
    dists = [
        fake_upstream.add_project(f"stuck{i}", ["1.0"], sdist=False, big_mb=1)[0] for i in range(4)
    ]
    fake_upstream.throttle("/files/*", 100)
    proxy = await proxy_factory(fake_upstream, upstream_connections=4)
    for dist in dists:
        assert (await get_json(f"{proxy.index_url}{dist.project}/")).status == 200

    async def abandoned(url: str) -> None:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            await response.content.readexactly(10)  # started, then the client leaves

    await asyncio.gather(*(abandoned(f"{proxy.index_url}{d.project}/{d.filename}") for d in dists))
    assert fake_upstream.count_prefix("/files/") == 4
    began = time.monotonic()
    page = await get_json(proxy.index_url + "util-pkg/")
    seconds = time.monotonic() - began
    assert page.status == 200
    assert seconds < 3, seconds  # it took as long as the downloads (hours) before
    assert fake_upstream.peak_concurrency("/files/") == 4


async def test_a_download_waits_for_a_free_connection_no_longer_than_a_read_timeout(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    stuck, waiting = (
        fake_upstream.add_project(name, ["1.0"], sdist=False, big_mb=1)[0]
        for name in ("stuck", "waiting")
    )
    fake_upstream.throttle(fake_upstream.file_path(stuck.filename), 100)
    proxy = await proxy_factory(fake_upstream, upstream_connections=1, read_timeout=0.5)
    for dist in (stuck, waiting):
        assert (await get_json(f"{proxy.index_url}{dist.project}/")).status == 200
    async with aiohttp.ClientSession() as session:
        url = f"{proxy.index_url}stuck/{stuck.filename}"
        async with session.get(url) as response:  # holds the only file connection
            await response.content.readexactly(10)
            began = time.monotonic()
            reply = await fetch(f"{proxy.index_url}waiting/{waiting.filename}", seconds=10)
            seconds = time.monotonic() - began
    url = fake_upstream.file_url(waiting.filename)
    assert (reply.status, reply.body) == (502, unreachable(url))
    assert seconds < 6, seconds  # three attempts of 0.5 s, and the pauses between them
    assert fake_upstream.count(fake_upstream.file_path(waiting.filename)) == 0


# == parsers =================================================================================


async def test_pages_that_break_parsers_get_the_stale_copy_not_a_500(
    evil: HostileUpstream, proxy_factory: ProxyFactory
) -> None:
    nested_json = b'{"name": "deep", "files": [], "x": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    deep_html = b"<div>" * 100_000 + b'<a href="/files/deep-1.0.tar.gz">x</a>' + b"</div>" * 100_000
    first = evil.project("deep", [])
    proxy = await proxy_factory((evil.url, 0))
    assert (await get_json(proxy.index_url + "deep/")).status == 200
    evil.serve("/simple/deep/", nested_json)
    evil.serve("/simple/nested/", nested_json)
    stale = await get_json(proxy.index_url + "deep/")
    assert (stale.status, stale.stale) == (200, True)
    assert json.loads(stale.body)["name"] == json.loads(first)["name"]
    uncached = await get_json(proxy.index_url + "nested/")
    assert uncached.status == 502 and uncached.one_line
    evil.serve("/simple/deep/", deep_html, "text/html")
    began = time.monotonic()
    fresh = await fetch(proxy.index_url + "deep/", headers=JSON)
    assert fresh.status == 200
    assert [f["filename"] for f in json.loads(fresh.body)["files"]] == ["deep-1.0.tar.gz"]
    assert time.monotonic() - began < 10  # lexbor took ~100 s of CPU


# == credentials in an IPv6 index URL =========================================================


def test_redact_keeps_ipv6_brackets_and_ports() -> None:
    assert redact("http://u:p@[::1]:8080/simple/") == "http://[::1]:8080/simple/"
    assert redact("https://u:p@[fe80::1%25eth0]/x") == "https://[fe80::1%25eth0]/x"
    assert redact("http://u@host/") == "http://host/"
    assert redact("http://a@b@host:1/") == "http://host:1/"
    assert redact("http://host:99999/x") == "http://host:99999/x"
    assert redact("http://u:p@host:nope/x") == "http://host:nope/x"
    assert redact("https://host/pkg@1.0/f.whl") == "https://host/pkg@1.0/f.whl"  # a path's @


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:secret@host:99999/simple/", "http://host:99999/simple/"),
        ("http://user:secret@[::1/simple/", "http://[::1/simple/"),
        ("http://user:se/cret@host/simple/", "http://host/simple/"),  # an unescaped /
        ("http://user:se\uff03cret@host/", "http://host/"),  # urlsplit refuses it
        ("user:secret@host/simple/", "host/simple/"),  # no scheme
        ("http:/user:secret@host/", "host/"),
    ],
)
def test_redact_cuts_the_password_from_urls_that_do_not_parse(url: str, shown: str) -> None:
    assert redact(url) == shown


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
async def test_an_ipv6_index_with_credentials_works(proxy_factory: ProxyFactory) -> None:
    async with HostileUpstream(host="::1", auth=("u", "p@ss")) as index:
        index.project(
            "six", [("six-1.0.tar.gz", index.at("/files/six-1.0.tar.gz"), sha256(TARBALL))]
        )
        index.serve("/files/six-1.0.tar.gz", TARBALL, "application/octet-stream")
        proxy = await proxy_factory((index.url_with_auth().replace("p@ss", "p%40ss"), 1800))
        page = await get_json(proxy.index_url + "six/")
        assert page.status == 200
        assert b"p@ss" not in page.body and b"p%40ss" not in page.body
        reply = await fetch(f"{proxy.index_url}six/six-1.0.tar.gz")
        assert (reply.status, reply.body) == (200, TARBALL)
        assert all(request.headers.get("Authorization") for request in index.requests)


def test_a_gateway_error_is_one_printable_line_whatever_its_reason() -> None:
    error = gateway_error(UpstreamError("unreadable page (KeyError: 'a\nb\r\x00c')", status=504))
    assert (error.status, error.text) == (504, "unreadable page (KeyError: 'a b \ufffdc')\n")
    assert gateway_error(UpstreamError("x" * 5000, status=500)).status == 502
