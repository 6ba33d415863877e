"""Rendered pages (rendered.py, pagefiles.py, web/pages.py) under attack and under fleets:
a page shown at several addresses (PEP 740 provenance points at the proxy, so each address
the proxy is reached at is a version of its own), hostile Host headers, descriptors of
pages sent with sendfile on HEAD, 304 and clients that hang up, and pages whose files
cannot be written asked for by many clients at once.

Two proxies on one cache directory stand for two worker processes, as in
test_rendered_pages.py."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import aiohttp
import pytest

import cachepi.rendered
import cachepi.web.app
from cachepi.pagefiles import ADDRESSES, CODINGS, PageFiles, Variant
from cachepi.rendered import SMALL
from cachepi.web.keys import INDEX_CACHE, RENDERED
from tests.conftest import ProxyFactory
from tests.fakeupstream import FakeUpstream
from tests.fakeupstream.big import project_json
from tests.fetching import JSON_TYPE, Reply, decoded, fetch
from tests.proxy import RunningProxy


def provenance_page(upstream: FakeUpstream, name: str, files: int) -> bytes:
    """A PEP 691 page of `files` wheels, each with a PEP 740 provenance URL."""
    page = json.loads(project_json(name, files, upstream.files_origin + "/f/"))
    page["meta"]["api-version"] = "1.3"
    for entry in page["files"]:
        entry["provenance"] = f"{upstream.origin}/integrity/{entry['filename']}/provenance"
    return json.dumps(page).encode()


async def get(url: str, host: str | None = None, coding: str = "identity", **headers: str) -> Reply:
    headers = {"Accept": JSON_TYPE, "Accept-Encoding": coding} | headers
    if host is not None:
        headers["Host"] = host
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        return await fetch(url, session=session, headers=headers)


def count_writes(proxies: Iterable[RunningProxy]) -> list[Variant]:
    """The variants the proxies write from now on, in order: rendered into their files, or
    rendered in memory and written after (not another coding compressed from a file)."""
    written: list[Variant] = []
    for proxy in proxies:
        files = proxy.app[RENDERED].files
        write: Callable[..., None] = files.write
        write_encoded: Callable[[Variant, str, bytes], None] = files.write_encoded

        def counting(
            variant: Variant,
            pieces: Iterable[bytes],
            codings: Iterable[str] = CODINGS,
            write: Callable[..., None] = write,
        ) -> None:
            written.append(variant)
            write(variant, pieces, codings)

        def counting_encoded(
            variant: Variant,
            coding: str,
            data: bytes,
            write: Callable[[Variant, str, bytes], None] = write_encoded,
        ) -> None:
            written.append(variant)
            write(variant, coding, data)

        files.write = counting  # type: ignore[method-assign]
        files.write_encoded = counting_encoded  # type: ignore[method-assign]
    return written


def versions_on_disk(proxy: RunningProxy) -> set[str]:
    root = proxy.app[RENDERED].files.root
    return {p.name.partition(".")[0] for p in root.glob("*/*") if p.parent.name != "tmp"}


def provenance_hosts(reply: Reply) -> set[str]:
    """The hosts the provenance URLs on a JSON page point at."""
    files = json.loads(decoded(reply))["files"]
    return {f["provenance"].split("/")[2] for f in files}


# -- a page shown at several addresses --------------------------------------------------------


@pytest.mark.parametrize("files", [3, 2000])
async def test_a_page_shown_at_two_addresses_is_rendered_once_for_each_in_every_worker(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory, files: int
) -> None:
    """A fleet reaching the proxy by two names (a service name and an address): before,
    each render of one address's version removed the other's files, so that alternating
    requests rendered the whole page every time (20 renders of a page of 2,000 files for
    20 requests). Small pages (sent from memory) or big (from their files), each
    address's page points at that address only."""
    fake_upstream.serve_raw("/simple/big/", provenance_page(fake_upstream, "big", files))
    first = await proxy_factory(fake_upstream)
    second = await proxy_factory(fake_upstream, reconcile=False)
    written = count_writes((first, second))
    hosts = [f"cachepi:{first.port}", f"10.0.0.5:{first.port}"]
    bodies: dict[str, set[bytes]] = {host: set() for host in hosts}
    for _ in range(5):
        for proxy in (first, second):
            for host in hosts:
                reply = await get(proxy.index_url + "big/", host)
                assert reply.status == 200 and (len(reply.body) > SMALL) is (files > 3)
                assert provenance_hosts(reply) == {host}
                bodies[host].add(reply.body)
    assert all(len(sent) == 1 for sent in bodies.values())
    for proxy in (first, second):  # a small page's file is written after its answer
        await proxy.app[RENDERED].settle()
    assert len(written) == 2  # once per address, by one worker for both


async def test_made_up_host_headers_keep_the_files_of_a_few_addresses_only(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    """Every Host header a client makes up is an address of its own: the files of the
    most recently used ADDRESSES stay, the others go (the disk is not filled with one
    page's copies), a new version at an address removes that address's older one, and
    invalidating the page removes them all."""
    fake_upstream.serve_raw("/simple/big/", provenance_page(fake_upstream, "big", 300))
    proxy = await proxy_factory(fake_upstream)
    written = count_writes([proxy])
    for i in range(3 * ADDRESSES):
        assert (await get(proxy.index_url + "big/", f"made-up-{i}.example")).status == 200
    assert len(written) == 3 * ADDRESSES
    on_disk = versions_on_disk(proxy)
    assert len(on_disk) == ADDRESSES
    assert written[-1].version in on_disk
    # The most recently used address is sent from its file, not rendered again.
    last = f"made-up-{3 * ADDRESSES - 1}.example"
    assert (await get(proxy.index_url + "big/", last, coding="gzip")).status == 200
    assert len(written) == 3 * ADDRESSES
    # A new version at one address replaces that address's files only.
    fake_upstream.serve_raw("/simple/big/", provenance_page(fake_upstream, "big", 301))
    async with aiohttp.ClientSession() as session, session.delete(proxy.url + "/cache/big"):
        pass
    assert versions_on_disk(proxy) == set()
    for host in ("made-up-0.example", "made-up-1.example", "made-up-0.example"):
        reply = await get(proxy.index_url + "big/", host)
        assert len(json.loads(decoded(reply))["files"]) == 301
    assert len(versions_on_disk(proxy)) == 2


async def test_a_page_that_lists_no_provenance_is_one_version_whatever_the_host(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    fake_upstream.serve_raw("/simple/big/", project_json("big", 2000, fake_upstream.origin + "/f/"))
    proxy = await proxy_factory(fake_upstream)
    written = count_writes([proxy])
    etags = {
        (await get(proxy.index_url + "big/", f"h{i}.example")).headers["ETag"] for i in range(5)
    }
    assert len(etags) == 1 and len(written) == 1


@pytest.mark.parametrize("host", ["a:99999", "[:::::]", "[::1]:70000", "x:1:2", "a/b", "a b"])
async def test_a_host_header_that_makes_no_url_is_a_400_never_a_500(
    fake_upstream: FakeUpstream,
    proxy_factory: ProxyFactory,
    caplog: pytest.LogCaptureFixture,
    host: str,
) -> None:
    """The page lists provenance, so its URL at the proxy is made from the Host header: a
    port past 65535 or a broken IPv6 literal matched the check but failed to make a URL,
    a 500 with a traceback logged for every such request."""
    fake_upstream.serve_raw("/simple/small/", provenance_page(fake_upstream, "small", 3))
    proxy = await proxy_factory(fake_upstream)
    request = f"GET /index/small/ HTTP/1.1\r\nHost: {host}\r\nAccept: {JSON_TYPE}\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(f"{request}Connection: close\r\n\r\n".encode())
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_page_without_provenance_never_looks_at_the_host_header(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    """Only a page that lists provenance is made of the address the proxy was reached at:
    any other page is one document, whatever Host a client sends (catalog.page)."""
    fake_upstream.add_project("plain", ["1.0"])
    proxy = await proxy_factory(fake_upstream)
    request = f"GET /index/plain/ HTTP/1.1\r\nHost: a:99999\r\nAccept: {JSON_TYPE}\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(f"{request}Connection: close\r\n\r\n".encode())
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


# -- descriptors ----------------------------------------------------------------------------


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_head_304_and_clients_hanging_up_leave_no_descriptor_open(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    """Pages sent with sendfile are open files: a HEAD, a 304 and a client gone before or
    during the body each close theirs, and no task is left behind."""
    fake_upstream.serve_raw(
        "/simple/big/", project_json("big", 20000, fake_upstream.origin + "/f/")
    )
    proxy = await proxy_factory(fake_upstream)
    whole = await get(proxy.index_url + "big/")
    assert len(whole.body) > 1024**2
    await asyncio.sleep(0.1)
    before, tasks = open_descriptors(), len(asyncio.all_tasks())
    headers = {"Accept": JSON_TYPE, "Accept-Encoding": "identity"}
    async with aiohttp.ClientSession() as session:
        for _ in range(20):
            async with session.head(proxy.index_url + "big/", headers=headers) as reply:
                assert reply.status == 200
            same = headers | {"If-None-Match": whole.headers["ETag"]}
            async with session.get(proxy.index_url + "big/", headers=same) as reply:
                assert reply.status == 304
    request = f"GET /index/big/ HTTP/1.1\r\nHost: x\r\nAccept: {JSON_TYPE}\r\n\r\n".encode()
    for read in (0, 1000) * 10:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(request)
        if read:
            await reader.read(read)
        writer.transport.abort()
    for _ in range(100):
        if open_descriptors() <= before and len(asyncio.all_tasks()) <= tasks:
            break
        await asyncio.sleep(0.05)
    assert (open_descriptors(), len(asyncio.all_tasks())) == (before, tasks)


# -- pages whose files cannot be written ---------------------------------------------------


def make_unwritable(proxy: RunningProxy) -> Path:
    """A file where the proxy's rendered pages go: every write there fails."""
    root: Path = proxy.app[RENDERED].files.root
    for path in sorted(root.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    root.rmdir()
    root.write_bytes(b"")
    return root


async def test_a_page_that_cannot_be_written_is_rendered_once_for_many_clients(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a full disk every request rendered the page in memory for itself: 30 clients of
    a big page, 30 renders of it held at once (the 800,000-name list, 40 MB each)."""
    fake_upstream.serve_raw(
        "/simple/big/", project_json("big", 20000, fake_upstream.origin + "/f/")
    )
    proxy = await proxy_factory(fake_upstream)
    expected = await get(proxy.index_url + "big/", coding="gzip")
    make_unwritable(proxy)
    renders = 0
    lock = threading.Lock()
    encoded = cachepi.rendered.encoded

    def counted(pieces: Iterable[bytes], coding: str) -> bytes:
        nonlocal renders
        with lock:
            renders += 1
        return encoded(pieces, coding)

    monkeypatch.setattr(cachepi.rendered, "encoded", counted)
    replies = await asyncio.gather(
        *(get(proxy.index_url + "big/", coding="gzip") for _ in range(30))
    )
    assert all(r.headers["ETag"] == expected.headers["ETag"] for r in replies)
    assert all(decoded(r) == decoded(expected) for r in replies)
    assert renders == 1


async def test_a_big_page_sent_from_memory_waits_for_slow_clients_in_pieces(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Written whole, a page whose file cannot be written waited in each slow client's
    connection buffer whole: 10 clients that stopped reading a 20 MB page held 206 MB of
    the worker's memory. Now a piece at a time, as each client takes them."""
    fake_upstream.serve_raw("/simple/big/", project_json("big", 20000, fake_upstream.origin))
    proxy = await proxy_factory(fake_upstream)
    make_unwritable(proxy)
    identity = {"Accept": JSON_TYPE, "Accept-Encoding": "identity"}
    head = await fetch(proxy.index_url + "big/", method="HEAD", headers=identity)
    assert (head.status, head.body) == (200, b"")
    size = int(head.headers["Content-Length"])
    assert size > 4 * 1024**2
    request = (
        f"GET /index/big/ HTTP/1.1\r\nHost: x\r\nAccept: {JSON_TYPE}\r\n"
        "Accept-Encoding: identity\r\n\r\n"
    ).encode()
    stalled = []
    for _ in range(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        writer.write(request)
        assert (await reader.read(100)).startswith(b"HTTP/1.1 200 ")
        stalled.append(writer)  # and reads no more
    await asyncio.sleep(0.5)
    buffered = [
        connection.transport.get_write_buffer_size()
        for connection in proxy.runner.server.connections  # type: ignore[union-attr]
        if connection.transport is not None
    ]
    assert len(buffered) == 5 and max(buffered) < 1024**2
    for writer in stalled:
        writer.transport.abort()
    whole = await get(proxy.index_url + "big/")
    assert len(whole.body) == size
    assert decoded(await get(proxy.index_url + "big/", coding="zstd")) == whole.body
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # hung up: no error


# -- the disk ---------------------------------------------------------------------------------


async def test_a_flood_of_pages_never_takes_the_room_of_the_files(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rendered pages may take a quarter of the cache. They were brought back within it
    only every 30 s: meanwhile, requests for many big pages (anyone can make them) put
    the pages beyond the whole cache, and no file was kept (nor, pages a little short of
    it, the least recently used files were evicted for them). Now a write beyond the
    room evicts the least recently used pages at once."""
    monkeypatch.setattr(cachepi.web.app, "_maintain_pages", _no_maintenance)
    wheels = [fake_upstream.add_project(f"w{i}", ["1.0"], sdist=False)[0] for i in range(2)]
    for i in range(10):
        page = project_json(f"p{i}", 100, fake_upstream.origin + "/f/")
        fake_upstream.serve_raw(f"/simple/p{i}/", page)
    proxy = await proxy_factory(fake_upstream, cache_size=1_000_000)
    files = proxy.app[RENDERED].files
    blobs = proxy.settings.cache_dir / "blobs"
    first = await fetch(f"{proxy.index_url}w0/{wheels[0].filename}")
    assert first.status == 200 and list(blobs.rglob(wheels[0].sha256))
    for i in range(10):
        for accept in (JSON_TYPE, "text/html"):
            reply = await get(proxy.index_url + f"p{i}/", **{"Accept": accept})
            assert reply.status == 200
            on_disk = sum(p.stat().st_size for p in files.root.glob("*/*") if p.is_file())
            assert files.usage == on_disk <= files.max_bytes == 250_000
    second = await fetch(f"{proxy.index_url}w1/{wheels[1].filename}")
    assert second.status == 200
    assert all(list(blobs.rglob(wheel.sha256)) for wheel in wheels)  # both kept


async def _no_maintenance(rendered: object) -> None:
    """The periodic look after the rendered pages, left out: what a write does alone."""


def test_a_page_bigger_than_the_room_is_kept_until_another_is_written(tmp_path: Path) -> None:
    """Evicting at a write never takes the variant just written (it is about to be sent:
    taking it would have every request render it again)."""
    files = PageFiles(tmp_path / "pages", max_bytes=1000)
    big, other = (files.variant("salt", key, "v1", "json") for key in ("big", "other"))
    files.write(big, [os.urandom(5000)])
    assert big.exists()
    files.write(other, [os.urandom(5000)])
    assert other.exists() and not big.exists()


# -- invalidation racing a render -------------------------------------------------------------


async def test_a_render_that_ends_after_an_invalidation_never_sends_the_old_page(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    """One worker renders a big page slowly; meanwhile the page changes upstream and an
    admin invalidates it in another worker, which removes its files; then the slow render
    writes the old version's files back. They are named by that version: neither worker
    sends them once it knows of the invalidation (the other at once, this one within a
    second), and the next render of the new version removes them (writing them removed
    the new version's: rendered again, once)."""
    fake_upstream.serve_raw("/simple/big/", project_json("big", 2000, fake_upstream.origin))
    slow, other = await proxy_factory(fake_upstream), await proxy_factory(fake_upstream)
    release = threading.Event()
    files = slow.app[RENDERED].files
    write = files.write

    def held(variant: Variant, pieces: Iterable[bytes], codings: Iterable[str] = CODINGS) -> None:
        release.wait(30)
        write(variant, pieces, codings)

    files.write = held  # type: ignore[method-assign]
    rendering = asyncio.create_task(get(slow.index_url + "big/"))
    while not list(files.temp.glob("*.lock")):  # noqa: ASYNC110 - a thread to wait for
        await asyncio.sleep(0.01)
    fake_upstream.serve_raw("/simple/big/", project_json("big", 2001, fake_upstream.origin))
    async with aiohttp.ClientSession() as session, session.delete(other.url + "/cache/big"):
        pass
    new = await get(other.index_url + "big/")
    assert len(json.loads(new.body)["files"]) == 2001
    release.set()
    old = await rendering
    assert len(json.loads(old.body)["files"]) == 2000  # asked before the invalidation
    # The old version's files are back, under their name (and the new one's went).
    (resurrected,) = versions_on_disk(slow)
    await asyncio.sleep(1.1)
    for proxy in (slow, other, slow):
        for coding in ("gzip", "identity"):
            reply = await get(proxy.index_url + "big/", coding=coding)
            assert decoded(reply) == new.body
        assert reply.headers["ETag"] == new.headers["ETag"]
    assert resurrected not in versions_on_disk(slow)
    fake_upstream.serve_raw("/simple/big/", project_json("big", 2002, fake_upstream.origin))
    async with aiohttp.ClientSession() as session, session.delete(slow.url + "/cache/big"):
        pass
    newest = await get(slow.index_url + "big/")
    assert len(json.loads(newest.body)["files"]) == 2002
    assert len(versions_on_disk(slow)) == 1  # what the render of 2001 left went with it


async def test_a_flood_of_names_nobody_has_renders_nothing_and_stays_in_memory_bounds(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    """Valid names the upstream does not have, each asked once: no page is rendered, and
    what memory keeps of them (their 404 heads) stays within its budget."""
    proxy = await proxy_factory(fake_upstream, page_memory=64 * 1024)
    async with aiohttp.ClientSession() as session:
        for i in range(300):
            async with session.get(f"{proxy.index_url}nobody-has-{i}/") as reply:
                assert reply.status == 404
    assert versions_on_disk(proxy) == set()
    heads = proxy.app[INDEX_CACHE].pages._heads
    assert 0 < heads.used <= heads.budget == 16 * 1024
