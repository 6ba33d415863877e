"""Upload times for indexes that give none (upload_times.py): the upstream's Last-Modified
when the proxy first touches a file (a range, a whole download, a HEAD), shown as the
file's PEP 700 `upload-time` from then on, by every process; `UPLOAD_TIMES=index` shows
none. (uv's --exclude-newer with them: test_e2e_no_pep658.py.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import pytest_asyncio

from cachepi.upload_times import upload_time
from tests.conftest import ProxyFactory
from tests.fakeupstream import Dist, FakeUpstream, build_sdist, build_wheel
from tests.fetching import fetch, get_json
from tests.proxy import RunningProxy

NOW = datetime(2026, 1, 1, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Sat, 06 May 2023 07:08:09 GMT", "2023-05-06T07:08:09Z"),
        ("Saturday, 06-May-23 07:08:09 GMT", "2023-05-06T07:08:09Z"),  # RFC 850, obsolete
        ("Sat May  6 07:08:09 2023", "2023-05-06T07:08:09Z"),  # asctime, obsolete
        ("Sat, 06 May 2023 09:08:09 +0200", "2023-05-06T07:08:09Z"),
        ("Mon, 01 Jan 2100 00:00:00 GMT", "2026-01-01T00:00:00Z"),  # ahead of the clock
        ("yesterday", None),
        ("", None),
    ],
)
def test_a_last_modified_header_as_an_upload_time(header: str, expected: str | None) -> None:
    assert upload_time(header, NOW) == expected


DATED = {
    "lib-1.0-py3-none-any.whl": datetime(2023, 3, 4, 5, 6, 7, tzinfo=UTC),
    "lib-1.0.tar.gz": datetime(2023, 3, 4, 5, 6, 8, tzinfo=UTC),
    "lib-2.0-py3-none-any.whl": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
}


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    """An index whose pages give no upload times (or PEP 658); its files' Last-Modified is
    when they were uploaded."""
    async with FakeUpstream(pep700=False) as up:
        for dist in (
            build_wheel("lib", "1.0"),
            build_sdist("lib", "1.0"),
            build_wheel("lib", "2.0"),
        ):
            up.add_dist(dist, upload_time=DATED[dist.filename], core_metadata=False)
        yield up


async def shown(proxy: RunningProxy) -> dict[str, str | None]:
    page = await get_json(f"{proxy.index_url}lib/")
    return {f["filename"]: f.get("upload-time") for f in json.loads(page.body)["files"]}


def iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def url(proxy: RunningProxy, dist: Dist | str) -> str:
    filename = dist if isinstance(dist, str) else dist.filename
    return f"{proxy.index_url}lib/{filename}"


async def test_a_files_first_touch_dates_it_on_every_page_after(
    upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(upstream)
    wheel, sdist, newer = DATED
    assert await shown(proxy) == dict.fromkeys(DATED)
    assert (await fetch(url(proxy, newer) + ".metadata")).status == 200  # ranges of the wheel
    assert (await fetch(url(proxy, sdist))).status == 200  # the whole file
    assert (await fetch(url(proxy, wheel), method="HEAD")).status == 200
    assert await shown(proxy) == {name: iso(when) for name, when in DATED.items()}
    html = await fetch(f"{proxy.index_url}lib/")  # PEP 700 upload times are JSON's only
    assert html.status == 200 and b"2023" not in html.body


async def test_another_process_shows_them_within_a_second(
    upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    first, second = await proxy_factory(upstream), await proxy_factory(upstream)
    sdist = "lib-1.0.tar.gz"
    assert (await shown(second))[sdist] is None
    assert (await fetch(url(first, sdist))).status == 200
    await asyncio.sleep(1.1)
    assert (await shown(second))[sdist] == iso(DATED[sdist])


async def test_none_are_recorded_with_upload_times_from_the_index_only(
    upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(upstream, upload_times="index")
    assert (await fetch(url(proxy, "lib-1.0.tar.gz"))).status == 200
    assert await shown(proxy) == dict.fromkeys(DATED)
