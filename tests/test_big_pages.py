"""PyPI-scale pages through `cachepi serve --workers 2`: an 800,000-name project list and
150 projects of 3,000 files stay within the memory they are allowed (summed RSS of the
supervisor and the workers, read from /proc while the requests run and after), every
variant whole and the same from both workers; a renderer killed mid-write leaves nothing
that is ever sent. The figures are printed (run with -s to see them)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path

import aiohttp
import pytest

from tests.fakeupstream import FakeUpstream
from tests.fakeupstream.big import project_json, project_list_html
from tests.fakeupstream.fixtures import FakeUpstreamFactory
from tests.fetching import Reply, decoded, fetch
from tests.served import RssWatch, ServedProxy
from tests.test_workers import answered

pytestmark = pytest.mark.slow  # real servers, pages of tens of megabytes

MIB = 1024 * 1024
NAMES = 800_000
JSON_TYPE = "application/vnd.pypi.simple.v1+json"
VARIANTS = [
    {"Accept": accept, "Accept-Encoding": coding}
    for accept in ("text/html", JSON_TYPE)
    for coding in ("identity", "gzip", "zstd")
]


async def get(url: str, headers: dict[str, str]) -> Reply:
    """On a new connection (the kernel spreads those over the workers), raw bytes."""
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        return await fetch(url, session=session, headers=headers)


@pytest.fixture
async def big_list(fake_upstream_factory: FakeUpstreamFactory) -> FakeUpstream:
    upstream = await fake_upstream_factory()
    upstream.serve_raw("/simple/", project_list_html(NAMES), "text/html")
    return upstream


async def test_the_800000_name_list_in_every_variant_from_two_workers_within_350_mb(
    big_list: FakeUpstream, tmp_path: Path, unused_tcp_port: int
) -> None:
    served = ServedProxy(big_list.url, tmp_path / "cache", unused_tcp_port, workers=2)
    await served.start()
    try:
        idle = served.rss_kib()
        watch = RssWatch(served)
        since = len(served.log)

        async def every_variant_from_both_workers() -> dict[str, list[Reply]]:
            replies: dict[str, list[Reply]] = {}
            while len(answered(served, "/index/", since)) < 2 or len(replies) < 6:
                for headers in VARIANTS:
                    reply = await get(served.index_url, headers)
                    assert reply.status == 200
                    replies.setdefault(str(headers), []).append(reply)
            return replies

        replies = await watch.during(every_variant_from_both_workers())
        await asyncio.sleep(1)
        after = served.rss_kib()
        peak = watch.peak_kib / 1024
        print(
            f"800,000 names, 2 workers: idle {idle / 1024:.0f} MiB, peak {peak:.0f} MiB during,"
            f" {after / 1024:.0f} MiB after"
        )
        assert watch.peak_kib < 350 * 1024 and after < 350 * 1024
        html, listed = set(), set()
        for variant in replies.values():
            assert len({r.headers["ETag"] for r in variant}) == 1  # from either worker
            docs = {decoded(r) for r in variant}
            assert len(docs) == 1
            (doc,) = docs
            if variant[0].headers["Content-Type"] == JSON_TYPE:
                listed.add(len(json.loads(doc)["projects"]))
            else:
                html.add(doc.count(b"<a href="))
        assert listed == html == {NAMES}
        for headers in VARIANTS:
            etag = replies[str(headers)][0].headers["ETag"]
            again = await get(served.index_url, {**headers, "If-None-Match": etag})
            assert (again.status, again.headers["ETag"]) == (304, etag)
    finally:
        await served.stop()


async def test_150_projects_of_3000_files_in_three_clients_ways_within_400_mb(
    fake_upstream_factory: FakeUpstreamFactory, tmp_path: Path, unused_tcp_port: int
) -> None:
    upstream = await fake_upstream_factory()
    names = [f"big{i:03d}" for i in range(150)]
    for name in names:
        body = project_json(name, 3000, upstream.files_origin + "/f/")
        upstream.serve_raw(f"/simple/{name}/", body, JSON_TYPE)
    pip = {"Accept": f"{JSON_TYPE}, text/html; q=0.01", "Accept-Encoding": "gzip, deflate"}
    uv = {"Accept": f"{JSON_TYPE}, text/html;q=0.01", "Accept-Encoding": "gzip, br, zstd"}
    browser = {"Accept": "text/html,*/*;q=0.8", "Accept-Encoding": "gzip, deflate, br, zstd"}
    served = ServedProxy(upstream.url, tmp_path / "cache", unused_tcp_port, workers=2)
    await served.start()
    try:
        queue = [(name, headers) for name in names for headers in (pip, uv, browser)]

        async def client() -> None:
            while queue:
                name, headers = queue.pop()
                assert (await get(f"{served.index_url}{name}/", headers)).status == 200

        watch = RssWatch(served, every=0.2)
        await watch.during(asyncio.gather(*(client() for _ in range(16))))
        await asyncio.sleep(1)
        after = served.rss_kib()
        print(
            f"150 x 3,000 files, 2 workers: peak {watch.peak_kib / 1024:.0f} MiB during,"
            f" {after / 1024:.0f} MiB after"
        )
        assert watch.peak_kib < 400 * 1024 and after < 400 * 1024
    finally:
        await served.stop()


def whole(reply: Reply) -> None:
    assert reply.status == 200
    assert reply.body.count(b"<a href=") == NAMES
    assert reply.body.endswith(b"</html>\n")


def renderer(served: ServedProxy) -> tuple[int, Path] | None:
    """The worker writing a rendered page now, and its temp file."""
    for pid in served.pids():
        with contextlib.suppress(OSError):  # a process, or a descriptor, gone meanwhile
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = Path(os.readlink(f"/proc/{pid}/fd/{fd}"))
                if target.suffix == ".tmp" and target.parent.parent.name == "pages":
                    return pid, target
    return None


async def test_a_renderer_killed_mid_write_leaves_nothing_that_is_sent(
    big_list: FakeUpstream, tmp_path: Path, unused_tcp_port: int
) -> None:
    """A worker SIGKILLed while it writes the list's files: its client's transfer fails,
    a new worker takes its place, and every client after gets the whole list (the temp
    file left behind is never sent). The whole server killed mid-write and started again,
    the same."""
    served = ServedProxy(big_list.url, tmp_path / "cache", unused_tcp_port, workers=2)
    await served.start()
    html = {"Accept": "text/html", "Accept-Encoding": "identity"}
    try:
        for kill_all in (False, True):
            if kill_all:  # started again, the sole server takes out the rendered pages
                await served.stop()
                await served.start()
            request = asyncio.create_task(get(served.index_url, html))
            async with asyncio.timeout(60):
                while (found := renderer(served)) is None:
                    assert not request.done(), "rendered before it could be caught"
                    await asyncio.sleep(0.002)
            pid, temp = found
            if kill_all:
                await served.kill()
            else:
                os.kill(pid, signal.SIGKILL)
            # Cut short; or whole: aiohttp may ask again, and get it from the other worker.
            with contextlib.suppress(aiohttp.ClientError):
                whole(await request)
            if kill_all:
                await served.start()
            else:
                await asyncio.sleep(1.5)  # the supervisor starts another worker
            since = len(served.log)
            while len(answered(served, "/index/", since)) < 2:  # both workers send it
                whole(await get(served.index_url, html))
            assert temp.exists() is not kill_all  # left behind; gone with the pages
    finally:
        await served.stop()
