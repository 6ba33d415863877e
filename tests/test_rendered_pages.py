"""Rendered pages as files (rendered.py, pagefiles.py): every variant one document, ETags
from the files' names and the same in every process, a page never sent from an old file
after it changed, nothing half written ever sent, the files counted in the cache's size
and removed with their page.

Two proxies on one cache directory stand for two worker processes (the second does not
reconcile: it is not the cache's sole server)."""

from __future__ import annotations

import asyncio
import errno
import gzip
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import aiohttp
import pytest
import zstandard

from cachepi import pagefiles
from cachepi.pagefiles import PageFiles, Variant, encoded
from cachepi.policy import Policy, parse_rule
from cachepi.rendered import SMALL, WRITE_AFTER, RenderedPages
from cachepi.web.keys import FILE_CACHE, RENDERED
from tests.conftest import ProxyFactory
from tests.fakeupstream import FakeUpstream
from tests.fakeupstream.big import project_json
from tests.fakeupstream.fixtures import FakeUpstreamFactory
from tests.fetching import JSON_TYPE, Reply, decoded, fetch
from tests.proxy import RunningProxy
from tests.test_metrics import scrape

CODINGS = ("identity", "gzip", "zstd")
FORMATS = (JSON_TYPE, "application/vnd.pypi.simple.v1+html", "text/html")


async def get(url: str, accept: str, coding: str = "identity", **headers: str) -> Reply:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        return await fetch(
            url, session=session, headers={"Accept": accept, "Accept-Encoding": coding} | headers
        )


def decoded_as(body: bytes, coding: str) -> bytes:
    if coding == "gzip":
        return gzip.decompress(body)
    if coding == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    return body


async def rendered_files(proxy: RunningProxy) -> list[Path]:
    """The rendered files, once those being written are (a small page's are written after
    it was answered)."""
    await proxy.app[RENDERED].settle()
    root = proxy.app[RENDERED].files.root
    return sorted(p for p in root.glob("*/*") if p.parent.name != "tmp")


async def two_workers(
    upstream: FakeUpstream, proxy_factory: ProxyFactory, ttl: int = 1800, **options: object
) -> tuple[RunningProxy, RunningProxy]:
    first = await proxy_factory((upstream.url, ttl), **options)
    second = await proxy_factory((upstream.url, ttl), reconcile=False, **options)
    return first, second


async def test_every_variant_is_one_document_with_an_etag_of_its_own_in_every_worker(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    fake_upstream.add_project("demo", ["1.0", "2.0"])
    proxies = await two_workers(fake_upstream, proxy_factory)
    for path in ("", "demo/"):
        for accept in FORMATS:
            replies = [
                await get(proxy.index_url + path, accept, coding)
                for proxy in proxies
                for coding in CODINGS
            ]
            assert {r.status for r in replies} == {200}
            assert len({decoded(r) for r in replies}) == 1  # one document
            # Each coding its own strong ETag, the same from both processes.
            etags = [r.headers["ETag"] for r in replies]
            assert etags[:3] == etags[3:] and len(set(etags)) == 3
            for reply in replies:
                again = await get(
                    proxies[1].index_url + path,
                    accept,
                    reply.headers.get("Content-Encoding", "identity"),
                    **{"If-None-Match": reply.headers["ETag"]},
                )
                assert (again.status, again.headers["ETag"]) == (304, reply.headers["ETag"])
    # Rendered once, by the first: the second found the files.
    files = await rendered_files(proxies[0])
    assert len(files) == 2 * 2 * 3  # two pages, JSON and HTML, three codings
    assert all(os.stat(f).st_size > 0 for f in files)


async def test_a_warm_page_needs_no_page_read(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    """A process reads a page once, to learn its version (the policy's screening, whether
    metadata is missing); from then on only the heads are looked at, the rendered file
    found by them (also one another process rendered), and nothing is read."""
    fake_upstream.add_project("demo", ["1.0"])
    first, second = await two_workers(fake_upstream, proxy_factory)
    assert (await get(first.index_url + "demo/", JSON_TYPE)).status == 200
    assert (await get(second.index_url + "demo/", JSON_TYPE)).status == 200
    loads = (await scrape(second.url)).value("cachepi_page_loads_total")
    assert loads == 2  # its head, and its files once
    for coding in CODINGS:
        for accept in FORMATS:
            assert (await get(first.index_url + "demo/", accept, coding)).status == 200
            assert (await get(second.index_url + "demo/", accept, coding)).status == 200
    assert (await scrape(second.url)).value("cachepi_page_loads_total") == loads


async def test_a_changed_page_is_never_sent_from_an_old_file_after_revalidation(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    fake_upstream.add_project("demo", ["1.0"])
    proxies = await two_workers(fake_upstream, proxy_factory, ttl=1, stale_while_revalidate=0)
    old = [await get(p.index_url + "demo/", JSON_TYPE, "gzip") for p in proxies]
    assert old[0].headers["ETag"] == old[1].headers["ETag"]
    old_files = await rendered_files(proxies[0])
    fake_upstream.add_project("demo", ["2.0"])
    await asyncio.sleep(1.1)  # past the TTL: the next request revalidates, in either one
    for proxy in (*proxies, *proxies):
        new = await get(proxy.index_url + "demo/", JSON_TYPE, "gzip")
        assert b"demo-2.0" in decoded(new)
        assert new.headers["ETag"] != old[0].headers["ETag"]
    # The old version's files went when the new one was written.
    assert not set(old_files) & set(await rendered_files(proxies[0]))


async def test_invalidating_a_page_removes_its_files_and_the_next_request_renders_it_anew(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    fake_upstream.add_project("demo", ["1.0"])
    fake_upstream.add_project("other", ["1.0"])
    proxy = await proxy_factory(fake_upstream)
    for name in ("demo/", "other/"):
        assert (await get(proxy.index_url + name, JSON_TYPE)).status == 200
    kept = await rendered_files(proxy)
    fake_upstream.add_project("demo", ["2.0"])
    async with aiohttp.ClientSession() as session, session.delete(proxy.url + "/cache/demo"):
        pass
    left = await rendered_files(proxy)
    assert len(left) == len(kept) // 2  # other's files stay
    reply = await get(proxy.index_url + "demo/", JSON_TYPE)
    assert b"demo-2.0" in reply.body


async def test_what_a_killed_renderer_left_is_never_sent_and_goes(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    """A renderer killed mid-write leaves a temp file and its lock file: never under a
    name a page is looked for by, removed once nobody holds them (the temp file an hour
    after its last write at the latest)."""
    fake_upstream.add_project("demo", ["1.0"])
    proxy = await proxy_factory(fake_upstream)
    rendered = proxy.app[RENDERED]
    variant = rendered.files.variant("x", "demo", "v", "json")
    temp = rendered.files.temp
    (temp / "0123456789abcdef.tmp").write_bytes(b"half a page")
    (temp / f"{variant.version}.json.lock").write_bytes(b"")
    whole = await get(proxy.index_url + "demo/", JSON_TYPE)
    assert whole.status == 200 and whole.body.endswith(b"}")
    await rendered.settle()  # its files written (after the answer, for a small page)
    os.utime(temp / "0123456789abcdef.tmp", (time.time() - 7200, time.time() - 7200))
    await rendered.maintain()
    assert list(temp.iterdir()) == []
    again = await get(proxy.index_url + "demo/", JSON_TYPE)
    assert (again.body, again.headers["ETag"]) == (whole.body, whole.headers["ETag"])


def test_clearing_takes_every_file_out_of_use_at_once(tmp_path: Path) -> None:
    """What the cache's sole server does at start: a file a power cut left renamed before
    its bytes reached the disk is never trusted."""
    files = PageFiles(tmp_path / "pages", max_bytes=10**6)
    variant = files.variant("salt", "demo", "v1", "json")
    files.write(variant, [b'{"name": "demo"}'])
    PageFiles.clear(files.root)
    assert not variant.exists()
    files = PageFiles(tmp_path / "pages", max_bytes=10**6)  # as the server opens them next
    files.maintain()  # removes the cleared directory, in the background
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pages"]
    assert files.open(variant, "identity") is None


async def test_rendered_files_count_toward_the_cache_size(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    (wheel,) = fake_upstream.add_project("demo", ["1.0"], sdist=False)
    proxy = await proxy_factory(fake_upstream)
    assert (await get(proxy.index_url + "demo/", JSON_TYPE)).status == 200
    files = proxy.app[RENDERED].files
    on_disk = sum(p.stat().st_size for p in await rendered_files(proxy))
    assert files.usage == on_disk > 0
    await proxy.app[RENDERED].maintain()  # counted anew from the disk: the same
    assert files.usage == on_disk
    # The blobs get what the pages leave of the cache: one byte short, the wheel is
    # served but not kept; with room for both, it is kept.
    accounting = proxy.app[FILE_CACHE].accounting
    blobs = proxy.settings.cache_dir / "blobs"
    for room, kept in ((wheel.size + on_disk - 1, False), (wheel.size + on_disk, True)):
        accounting.max_bytes = room
        reply = await fetch(f"{proxy.index_url}demo/{wheel.filename}")
        assert reply.status == 200 and reply.sha256 == wheel.sha256
        assert bool(list(blobs.rglob(wheel.sha256))) is kept


def test_least_recently_used_files_go_beyond_their_room(tmp_path: Path) -> None:
    files = PageFiles(tmp_path / "pages", max_bytes=10**6)
    variants = [files.variant("salt", f"p{i}", "v1", "json") for i in range(4)]
    for i, variant in enumerate(variants):
        files.write(variant, [os.urandom(400)])  # ~1,200 bytes in three codings
        for coding in CODINGS:  # written in turn: the first is the least recently used
            os.utime(variant.path(coding), (1000 + i, 1000 + i))
    files.max_bytes = 3000  # (a write beyond it would have evicted already)
    opened = files.open(variants[0], "identity")  # a use: now the most recently used
    assert opened is not None
    opened.file.close()
    assert files.maintain() > 0
    assert files.usage <= 3000 * 0.9
    assert variants[0].exists("identity") and not variants[1].exists("identity")


async def test_a_file_rendered_under_other_settings_is_never_sent(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    """The settings that shape pages are part of the files' names: a server started with a
    new policy on the same cache does not send the project list its predecessor rendered."""
    fake_upstream.add_project("demo", ["1.0"])
    fake_upstream.add_project("evil", ["1.0"])
    first = await proxy_factory(fake_upstream)
    assert b"evil" in (await get(first.index_url, JSON_TYPE)).body
    denying = Policy(deny=(parse_rule("evil"),))
    second = await proxy_factory(fake_upstream, reconcile=False, policy=denying)
    listed = await get(second.index_url, JSON_TYPE)
    assert b"demo" in listed.body and b"evil" not in listed.body


async def test_a_page_changes_with_the_metadata_extracted_from_its_own_wheels_only(
    fake_upstream_factory: FakeUpstreamFactory, proxy_factory: ProxyFactory
) -> None:
    """Without PEP 658 from the index, a page advertises the METADATA extracted from its
    cached wheels: its version moves with those, not with every extraction anywhere (the
    other pages' files stay as rendered)."""
    upstream = await fake_upstream_factory(format="json")
    (wheel,) = upstream.add_project("first", ["1.0"], core_metadata=False, sdist=False)
    upstream.add_project("second", ["1.0"], core_metadata=False, sdist=False)
    proxy = await proxy_factory(upstream)
    before = {n: await get(proxy.index_url + f"{n}/", JSON_TYPE) for n in ("first", "second")}
    files = {p: p.stat().st_ino for p in await rendered_files(proxy)}
    assert (await fetch(f"{proxy.index_url}first/{wheel.filename}")).status == 200
    for _ in range(100):  # extraction runs in the background after the download
        first = await get(proxy.index_url + "first/", JSON_TYPE)
        # `true` before (advertised, read when asked), the hash once extracted.
        if isinstance(json.loads(first.body)["files"][0].get("core-metadata"), dict):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the page never offered the extracted metadata")
    assert first.headers["ETag"] != before["first"].headers["ETag"]
    second = await get(proxy.index_url + "second/", JSON_TYPE)
    assert (second.headers["ETag"], second.body) == (
        before["second"].headers["ETag"],
        before["second"].body,
    )
    kept = {p: p.stat().st_ino for p in await rendered_files(proxy) if p in files}
    assert len(kept) == len(files) // 2  # second's, untouched; first's replaced
    assert all(files[p] == inode for p, inode in kept.items())


async def test_a_client_hanging_up_on_a_page_sent_from_its_file_is_no_error(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    body = project_json("bigpage", 2000, fake_upstream.files_origin + "/f/")
    fake_upstream.serve_raw("/simple/bigpage/", body, JSON_TYPE)
    proxy = await proxy_factory(fake_upstream)
    whole = await get(proxy.index_url + "bigpage/", JSON_TYPE)
    assert len(whole.body) > SMALL  # sent from its file
    request = f"GET /index/bigpage/ HTTP/1.1\r\nHost: x\r\nAccept: {JSON_TYPE}\r\n\r\n".encode()
    for read in (0, 100, 0, 1000):  # gone before the headers went out, or during the body
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(request)
        if read:
            await reader.read(read)
        writer.transport.abort()
    assert (await get(proxy.index_url + "bigpage/", JSON_TYPE)).body == whole.body
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_small_page_is_answered_before_its_file_is_written_and_the_file_holds_its_bytes(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page of a few files is rendered in memory and answered at once, in the coding
    asked for; its file is written after (on a thread) with exactly the bytes sent, and the
    other codings only when a client asks for them. A file half written (its temp file,
    not yet renamed) is never sent: another process renders the page itself meanwhile."""
    fake_upstream.add_project("demo", ["1.0", "2.0"])
    first, second = await two_workers(fake_upstream, proxy_factory)
    placing, go_on = threading.Event(), threading.Event()
    place = PageFiles._place

    def held_place(self: PageFiles, variant: Variant, temps: Mapping[str, Path]) -> None:
        placing.set()
        assert go_on.wait(10)
        place(self, variant, temps)

    monkeypatch.setattr(PageFiles, "_place", held_place)
    sent = await asyncio.wait_for(get(first.index_url + "demo/", JSON_TYPE, "gzip"), 10)
    assert sent.status == 200 and b"demo-2.0" in decoded(sent)
    await asyncio.to_thread(placing.wait, 10)  # its temp file written, not renamed
    assert await asyncio.to_thread(lambda: list(first.app[RENDERED].files.temp.glob("*.tmp")))
    other = await asyncio.wait_for(get(second.index_url + "demo/", JSON_TYPE, "gzip"), 10)
    assert (other.body, other.headers["ETag"]) == (sent.body, sent.headers["ETag"])
    go_on.set()
    await second.app[RENDERED].settle()
    (path,) = await rendered_files(first)
    assert path.name.endswith(".json.gz") and path.read_bytes() == sent.body
    for coding in ("identity", "zstd"):
        reply = await get(second.index_url + "demo/", JSON_TYPE, coding)
        assert decoded(reply) == decoded(sent)
    await second.app[RENDERED].settle()
    assert len(await rendered_files(first)) == 3


async def test_a_small_page_whose_file_cannot_be_written_is_still_answered(
    fake_upstream: FakeUpstream,
    proxy_factory: ProxyFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake_upstream.add_project("demo", ["1.0"])
    proxy = await proxy_factory(fake_upstream)

    def full(self: PageFiles, variant: Variant, coding: str, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PageFiles, "write_encoded", full)
    for coding in CODINGS:
        reply = await get(proxy.index_url + "demo/", JSON_TYPE, coding)
        assert reply.status == 200 and b"demo-1.0" in decoded(reply)
    assert await rendered_files(proxy) == []
    assert "sent from memory" in caplog.text


async def test_a_big_page_is_answered_once_its_coding_is_written_and_others_come_when_asked(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A big page is rendered on a thread into its identity file and the coding asked for
    only (a client asking zstd never waits for gzip, the slowest); another coding is
    compressed from the identity file when asked, to the same document."""
    body = project_json("bigpage", 2000, fake_upstream.files_origin + "/f/")
    fake_upstream.serve_raw("/simple/bigpage/", body, JSON_TYPE)
    proxy = await proxy_factory(fake_upstream)
    gzipped = []
    encoder = pagefiles._encoder

    def counted(coding: str) -> object:
        gzipped.append(coding == "gzip")
        return encoder(coding)

    monkeypatch.setattr(pagefiles, "_encoder", counted)
    zstd = await get(proxy.index_url + "bigpage/", JSON_TYPE, "zstd")
    assert len(zstd.body) > 0 and not any(gzipped)
    names = sorted(p.name.partition(".")[2] for p in await rendered_files(proxy))
    assert names == ["json", "json.zst"]
    identity = await get(proxy.index_url + "bigpage/", JSON_TYPE)
    assert len(identity.body) > SMALL and decoded(zstd) == identity.body
    gzip_reply = await get(proxy.index_url + "bigpage/", JSON_TYPE, "gzip")
    assert decoded(gzip_reply) == identity.body
    assert len(await rendered_files(proxy)) == 3


def test_a_coding_is_the_same_bytes_however_the_page_was_cut_and_by_any_compressor(
    tmp_path: Path,
) -> None:
    """What a small page's client got from memory (`encode`) is byte for byte its file, also
    written in pieces, or from the identity file; a pooled zstd compressor gives what a new
    one does."""
    files = PageFiles(tmp_path / "pages", max_bytes=10**9)
    page = b"".join(b'{"name": "p%d", "url": "http://x/%d"},' % (i, i) for i in range(50_000))
    variant = files.variant("salt", "demo", "v1", "json")
    cut = [page[i : i + 77_777] for i in range(0, len(page), 77_777)]
    files.write(variant, cut, ("identity", "zstd"))
    with open(variant.path("identity"), "rb") as identity:
        files.write_from(variant, identity, ("gzip",))
    fresh = zstandard.ZstdCompressor(level=3).compressobj()
    for coding, expected in (("zstd", fresh.compress(page) + fresh.flush()), ("gzip", None)):
        for _ in range(3):  # pooled compressors, used again
            assert Path(variant.path(coding)).read_bytes() == encoded((page,), coding)
        if expected is not None:
            assert encoded((page,), coding) == expected
    assert decoded_as(Path(variant.path("gzip")).read_bytes(), "gzip") == page


async def test_pages_that_cannot_be_written_are_sent_from_memory_in_every_variant(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk or an unwritable cache directory must not fail page requests: the page
    is rendered for the request, with the ETag its file would have had."""
    fake_upstream.add_project("demo", ["1.0", "2.0"])
    written = await proxy_factory(fake_upstream)
    expected = {
        (path, accept, coding): await get(written.index_url + path, accept, coding)
        for path in ("", "demo/")
        for accept in FORMATS
        for coding in CODINGS
    }
    unwritable = await proxy_factory(fake_upstream)
    root = unwritable.app[RENDERED].files.root
    for path in sorted(root.rglob("*"), reverse=True):  # none written yet, but its tmp/
        path.rmdir() if path.is_dir() else path.unlink()
    root.rmdir()
    root.write_bytes(b"")  # a file where the directory was: every write there fails
    with caplog.at_level(logging.WARNING):
        for (path, accept, coding), reply in expected.items():
            got = await get(unwritable.index_url + path, accept, coding)
            assert (got.status, got.headers["ETag"]) == (200, reply.headers["ETag"])
            assert decoded(got) == decoded(reply)
    assert "sent from memory" in caplog.text
    assert root.is_file()


async def test_small_pages_files_are_written_a_moment_later_in_one_go(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written right after its answer, a small page's file would contend with the requests
    that follow it: the files of the pages rendered within WRITE_AFTER go in one go, after.
    A page invalidated meanwhile has nothing written."""
    for name in ("one", "two", "three", "gone"):
        fake_upstream.add_project(name, ["1.0"])
    proxy = await proxy_factory(fake_upstream)
    rendered = proxy.app[RENDERED]
    batches: list[list[str]] = []
    write_all = RenderedPages._write_all

    def counted(self: RenderedPages, unwritten: Iterable[tuple[Variant, str, bytes]]) -> None:
        unwritten = list(unwritten)
        batches.append([variant.path(coding) for variant, coding, _ in unwritten])
        write_all(self, unwritten)

    monkeypatch.setattr(RenderedPages, "_write_all", counted)
    started = time.monotonic()
    for name in ("one", "two", "three", "gone"):
        assert (await get(proxy.index_url + f"{name}/", JSON_TYPE, "zstd")).status == 200
    async with aiohttp.ClientSession() as session, session.delete(proxy.url + "/cache/gone"):
        pass
    quick = time.monotonic() - started < WRITE_AFTER  # (a slow machine may have written some)
    if quick:
        assert batches == []
        assert not await asyncio.to_thread(lambda: list(rendered.files.root.glob("*/*.zst")))
    await rendered.settle()
    if quick:
        assert len(batches) == 1
    written = await rendered_files(proxy)
    assert len(written) == 3 and all(path.name.endswith(".json.zst") for path in written)
    assert sorted(map(str, written)) == sorted(path for batch in batches for path in batch)
