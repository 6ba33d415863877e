"""The fake upstream itself: real files, both page formats, HTTP semantics, faults, real pip."""

from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aiohttp
import pytest
import pytest_asyncio

from tests.fakeupstream import (
    HTML_V1_TYPE,
    JSON_TYPE,
    Dist,
    FakeUpstream,
    build_sdist,
    build_wheel,
)
from tests.fakeupstream.fixtures import FakeUpstreamFactory

PIP_ACCEPT = f"{JSON_TYPE}, {HTML_V1_TYPE}; q=0.1, text/html; q=0.01"
UV_ACCEPT = f"{JSON_TYPE}, {HTML_V1_TYPE}; q=0.2, text/html; q=0.01"
POETRY_ACCEPT = f"{JSON_TYPE}, */*; q=0.1"
LINK_RE = re.compile(r'<a href="([^"]*)"([^>]*)>([^<]*)</a>')
WHEEL = "app-1.0-py3-none-any.whl"


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def fetch(
    session: aiohttp.ClientSession, url: str, **kwargs: Any
) -> tuple[aiohttp.ClientResponse, bytes]:
    async with session.get(url, allow_redirects=False, **kwargs) as response:
        return response, await response.read()


async def get_json(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    response, body = await fetch(session, url, headers={"Accept": JSON_TYPE})
    assert response.status == 200
    assert response.content_type == JSON_TYPE
    return json.loads(body)


def html_links(body: bytes) -> dict[str, tuple[str, str]]:
    """Link text -> (href, other attributes), by regex: independent of the proxy's parser."""
    page = body.decode(errors="replace")
    return {text: (href, attrs) for href, attrs, text in LINK_RE.findall(page)}


async def read_until_broken(
    response: aiohttp.ClientResponse,
) -> tuple[bytes, aiohttp.ClientPayloadError | None]:
    """The body bytes that arrived, and the error that ended the transfer early, if any."""
    received = b""
    try:
        async for chunk in response.content.iter_any():
            received += chunk
    except aiohttp.ClientPayloadError as error:
        return received, error
    return received, None


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def record_rows(archive: zipfile.ZipFile) -> list[list[str]]:
    record = next(name for name in archive.namelist() if name.endswith(".dist-info/RECORD"))
    return list(csv.reader(io.StringIO(archive.read(record).decode())))


def assert_record_verifies(archive: zipfile.ZipFile) -> None:
    rows = record_rows(archive)
    assert {row[0] for row in rows} == set(archive.namelist())
    for path, digest, size in rows:
        if path.endswith("/RECORD"):
            assert digest == size == ""
            continue
        data = archive.read(path)
        expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        assert digest == f"sha256={expected}", path
        assert int(size) == len(data), path


# -- distributions -------------------------------------------------------------------------


def test_wheel_is_a_valid_zip_whose_record_verifies() -> None:
    dist = build_wheel("Util_Pkg", "0.5", requires=["lib>=1.0"], requires_python=">=3.8")
    assert dist.filename == "util_pkg-0.5-py3-none-any.whl"
    assert (dist.project, dist.version, dist.size) == ("util-pkg", "0.5", len(dist.read_bytes()))
    assert dist.sha256 == hashlib.sha256(dist.read_bytes()).hexdigest()
    archive = zipfile.ZipFile(io.BytesIO(dist.read_bytes()))
    assert archive.testzip() is None
    assert_record_verifies(archive)
    assert archive.namelist()[-1] == "util_pkg-0.5.dist-info/RECORD"
    metadata = archive.read("util_pkg-0.5.dist-info/METADATA")
    assert metadata == dist.metadata
    assert metadata.decode().splitlines()[:3] == [
        "Metadata-Version: 2.1",
        "Name: Util_Pkg",
        "Version: 0.5",
    ]
    assert "Requires-Python: >=3.8" in metadata.decode()
    assert "Requires-Dist: lib>=1.0" in metadata.decode()
    wheel_file = archive.read("util_pkg-0.5.dist-info/WHEEL").decode()
    assert "Root-Is-Purelib: true" in wheel_file
    assert "Tag: py3-none-any" in wheel_file
    assert archive.read("util_pkg/__init__.py") == b'__version__ = "0.5"\n'


def test_sdist_is_a_tarball_with_pkg_info() -> None:
    dist = build_sdist("Util_Pkg", "0.5", requires_python=">=3.9")
    assert dist.filename == "util_pkg-0.5.tar.gz"
    assert (dist.project, dist.version, dist.metadata) == ("util-pkg", "0.5", None)
    with tarfile.open(fileobj=io.BytesIO(dist.read_bytes())) as tar:
        pkg_info = tar.extractfile("util_pkg-0.5/PKG-INFO")
        assert pkg_info is not None
        assert "Requires-Python: >=3.9" in pkg_info.read().decode()


def test_builds_are_byte_identical_across_processes() -> None:
    # A fresh interpreter has no build cache: equal hashes mean deterministic bytes.
    code = (
        "from tests.fakeupstream import build_wheel, build_sdist;"
        "print(build_wheel('app', '1.0', big_mb=0.1).sha256, build_sdist('app', '1.0').sha256)"
    )
    out = _run_python(code, cwd=Path(__file__).parents[1])
    expected = f"{build_wheel('app', '1.0', big_mb=0.1).sha256} {build_sdist('app', '1.0').sha256}"
    assert out.strip() == expected


def test_big_wheel_is_fast_on_disk_incompressible_and_valid() -> None:
    started = time.perf_counter()
    dist = build_wheel("bigpkg", "2.0", big_mb=20)
    assert time.perf_counter() - started < 2
    assert dist.data is None
    assert dist.path is not None
    assert dist.path.stat().st_size == dist.size > 20 * 1024 * 1024
    assert build_wheel("bigpkg", "2.0", big_mb=20) is dist  # built once per process
    sample = bytes(dist.view[1_000_000:2_000_000])
    assert len(zlib.compress(sample)) > 0.99 * len(sample)
    with zipfile.ZipFile(dist.path) as archive:
        assert_record_verifies(archive)
    assert hashlib.sha256(dist.read_bytes()).hexdigest() == dist.sha256


def test_dist_from_bytes_takes_name_and_version_from_the_filename() -> None:
    wheel = Dist.from_bytes("Foo_Bar-2.0-py3-none-any.whl", b"not really a zip")
    sdist = Dist.from_bytes("foo.bar-2.0rc1.tar.gz", b"nor a tarball")
    assert (wheel.project, wheel.version, wheel.size) == ("foo-bar", "2.0", 16)
    assert (sdist.project, sdist.version) == ("foo-bar", "2.0rc1")


# -- pages ---------------------------------------------------------------------------------


async def test_json_page_lists_every_file_with_pep_691_and_700_fields(
    fake_upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    page = await get_json(session, fake_upstream.url + "lib/")
    assert page["meta"] == {"api-version": "1.1"}
    assert page["name"] == "lib"
    assert page["versions"] == ["1.0", "1.1"]
    by_name = {file["filename"]: file for file in page["files"]}
    assert set(by_name) == {d.filename for d in fake_upstream.dists("lib")}
    wheel = by_name["lib-1.1-py3-none-any.whl"]
    dist = fake_upstream.dist("lib-1.1-py3-none-any.whl")
    assert wheel["url"] == f"{fake_upstream.origin}/files/lib-1.1-py3-none-any.whl"
    assert wheel["hashes"] == {"sha256": dist.sha256}
    assert wheel["size"] == dist.size
    assert wheel["core-metadata"] == {"sha256": dist.metadata_sha256}
    assert wheel["yanked"] is False
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", wheel["upload-time"])
    assert by_name["lib-1.1.tar.gz"]["core-metadata"] is False
    assert "dist-info-metadata" not in wheel  # pip 22.3-23.1 crash on that key


async def test_html_page_has_fragments_and_escaped_data_attributes(
    fake_upstream_factory: FakeUpstreamFactory, session: aiohttp.ClientSession
) -> None:
    upstream = await fake_upstream_factory(format="html")
    upstream.add_project(
        "pkg", ["1.0", "2.0"], requires_python=">=3.8,<4", yanked={"1.0": 'bad "build"'}
    )
    response, body = await fetch(session, upstream.url + "pkg/")
    assert response.content_type == "text/html"
    assert '<meta name="pypi:repository-version" content="1.1">' in body.decode()
    links = html_links(body)
    assert set(links) == {d.filename for d in upstream.dists("pkg")}
    href, attrs = links["pkg-2.0-py3-none-any.whl"]
    dist = upstream.dist("pkg-2.0-py3-none-any.whl")
    assert href == f"{upstream.origin}/files/{dist.filename}#sha256={dist.sha256}"
    assert 'data-requires-python="&gt;=3.8,&lt;4"' in attrs
    assert f'data-core-metadata="sha256={dist.metadata_sha256}"' in attrs
    assert f'data-dist-info-metadata="sha256={dist.metadata_sha256}"' in attrs
    assert "data-yanked" not in attrs
    assert 'data-yanked="bad &quot;build&quot;"' in links["pkg-1.0.tar.gz"][1]
    assert "data-core-metadata" not in links["pkg-2.0.tar.gz"][1]


async def test_minimal_json_pages_leave_out_pep_700_fields(
    fake_upstream_factory: FakeUpstreamFactory, session: aiohttp.ClientSession
) -> None:
    upstream = await fake_upstream_factory(format="json", pep700=False)
    upstream.add_project("pkg", ["1.0"])
    page = await get_json(session, upstream.url + "pkg/")
    assert page["meta"] == {"api-version": "1.0"}
    assert "versions" not in page
    for file in page["files"]:
        assert not {"size", "upload-time", "provenance"} & set(file)
        assert file["hashes"] == {"sha256": upstream.dist(file["filename"]).sha256}
    assert (await get_json(session, upstream.url))["meta"] == {"api-version": "1.0"}


async def test_provenance_urls_are_listed_in_both_formats(
    fake_upstream_factory: FakeUpstreamFactory, session: aiohttp.ClientSession
) -> None:
    upstream = await fake_upstream_factory(provenance=True)
    upstream.add_project("pkg", ["1.0"])
    expected = f"{upstream.origin}/integrity/pkg-1.0.tar.gz/provenance"
    assert upstream.provenance_url("pkg-1.0.tar.gz") == expected
    page = await get_json(session, upstream.url + "pkg/")
    assert page["meta"]["api-version"] == "1.4"
    assert {f["filename"]: f["provenance"] for f in page["files"]} == {
        d.filename: upstream.provenance_url(d.filename) for d in upstream.dists("pkg")
    }
    _, body = await fetch(session, upstream.url + "pkg/", headers={"Accept": "text/html"})
    assert '<meta name="pypi:repository-version" content="1.4">' in body.decode()
    assert f'data-provenance="{expected}"' in html_links(body)["pkg-1.0.tar.gz"][1]
    with pytest.raises(ValueError, match="provenance"):
        FakeUpstream(provenance=True, pep700=False)
    response, body = await fetch(session, expected)
    assert response.status == 200
    assert body == upstream.provenance_object("pkg-1.0.tar.gz")
    provenance = json.loads(body)
    statement = json.loads(
        base64.b64decode(
            provenance["attestation_bundles"][0]["attestations"][0]["envelope"]["statement"]
        )
    )
    assert statement["subject"] == [
        {"name": "pkg-1.0.tar.gz", "digest": {"sha256": upstream.dist("pkg-1.0.tar.gz").sha256}}
    ]
    missing = f"{upstream.origin}/integrity/nope-1.0.tar.gz/provenance"
    assert (await fetch(session, missing))[0].status == 404


async def test_pep_708_urls_in_both_formats(
    fake_upstream_factory: FakeUpstreamFactory, session: aiohttp.ClientSession
) -> None:
    upstream = await fake_upstream_factory()
    upstream.add_project("pkg", ["1.0"])
    tracks, alternates = (
        ["https://a.example/simple/pkg/", "https://b.example/simple/pkg/"],
        ["https://c.example/simple/pkg/?x=1&y=2"],
    )
    upstream.set_tracks("pkg", tracks)
    upstream.set_alternate_locations("pkg", alternates)
    page = await get_json(session, upstream.url + "pkg/")
    assert (page["meta"]["tracks"], page["alternate-locations"]) == (tracks, alternates)
    _, body = await fetch(session, upstream.url + "pkg/", headers={"Accept": "text/html"})
    metas = re.findall(r'<meta name="(pypi:[a-z-]+)" content="([^"]*)">', body.decode())
    assert metas[1:] == [
        ("pypi:tracks", tracks[0]),
        ("pypi:tracks", tracks[1]),
        ("pypi:alternate-locations", "https://c.example/simple/pkg/?x=1&amp;y=2"),
    ]
    upstream.set_tracks("pkg", [])
    upstream.set_alternate_locations("pkg", [])
    page = await get_json(session, upstream.url + "pkg/")
    assert "tracks" not in page["meta"] and "alternate-locations" not in page


@pytest.mark.parametrize("serial", ["7654321", 7654321])
async def test_last_serial_is_sent_as_given_in_both_formats(
    fake_upstream_factory: FakeUpstreamFactory,
    session: aiohttp.ClientSession,
    serial: str | int,
) -> None:
    upstream = await fake_upstream_factory(last_serial=serial)
    upstream.add_project("pkg", ["1.0"])
    for url in (upstream.url, upstream.url + "pkg/"):
        assert (await get_json(session, url))["meta"]["_last-serial"] == serial
        response, body = await fetch(session, url, headers={"Accept": "text/html"})
        assert body.decode().rstrip().endswith("<!--SERIAL 7654321-->")
        assert response.headers["X-PyPI-Last-Serial"] == "7654321"
    upstream.serial_in = ("header",)
    response, body = await fetch(session, upstream.url + "pkg/", headers={"Accept": "text/html"})
    assert (response.headers["X-PyPI-Last-Serial"], b"SERIAL" in body) == ("7654321", False)
    assert "_last-serial" not in (await get_json(session, upstream.url + "pkg/"))["meta"]
    upstream.last_serial = None
    response, body = await fetch(session, upstream.url + "pkg/", headers={"Accept": JSON_TYPE})
    assert "X-PyPI-Last-Serial" not in response.headers
    assert "_last-serial" not in json.loads(body)["meta"]


async def test_project_status_in_both_formats_and_quarantine_hides_the_files(
    fake_upstream_factory: FakeUpstreamFactory, session: aiohttp.ClientSession
) -> None:
    upstream = await fake_upstream_factory()
    wheel = upstream.add_project("pkg", ["1.0"])[0]
    url = upstream.url + "pkg/"
    assert "project-status" not in await get_json(session, url)
    upstream.set_status("pkg", "archived", 'moved to "pkg2"')
    page = await get_json(session, url)
    assert page["meta"]["api-version"] == "1.4"
    assert page["project-status"] == {"status": "archived", "reason": 'moved to "pkg2"'}
    assert len(page["files"]) == 2
    _, body = await fetch(session, url, headers={"Accept": "text/html"})
    assert '<meta name="pypi:project-status" content="archived">' in body.decode()
    assert (
        '<meta name="pypi:project-status-reason" content="moved to &quot;pkg2&quot;">'
        in body.decode()
    )
    upstream.set_status("pkg", "quarantined")
    page = await get_json(session, url)
    assert (page["project-status"], page["files"], page["versions"]) == (
        {"status": "quarantined"},
        [],
        [],
    )
    _, body = await fetch(session, url, headers={"Accept": "text/html"})
    assert html_links(body) == {}
    assert "pypi:project-status-reason" not in body.decode()
    for path in (wheel.filename, wheel.filename + ".metadata"):
        assert (await fetch(session, upstream.file_url(path)))[0].status == 404
    assert upstream.dists("pkg") != []  # still known, only hidden
    # An index that (wrongly) keeps offering a quarantined project's files:
    upstream.set_status("pkg", "quarantined", "malware", hide_files=False)
    assert len((await get_json(session, url))["files"]) == 2
    assert (await fetch(session, upstream.file_url(wheel.filename)))[0].status == 200
    upstream.set_status("pkg", None)
    assert "project-status" not in await get_json(session, url)


async def test_a_project_without_core_metadata_offers_no_metadata_files(
    fake_upstream_factory: FakeUpstreamFactory, session: aiohttp.ClientSession
) -> None:
    upstream = await fake_upstream_factory()
    wheel = upstream.add_project("pkg", ["1.0"], core_metadata=False)[0]
    assert wheel.is_wheel and wheel.metadata is not None  # the wheel still has its METADATA
    page = await get_json(session, upstream.url + "pkg/")
    assert [f["core-metadata"] for f in page["files"]] == [False, False]
    _, body = await fetch(session, upstream.url + "pkg/", headers={"Accept": "text/html"})
    assert "metadata" not in html_links(body)[wheel.filename][1]
    response, _ = await fetch(session, upstream.file_url(wheel.filename) + ".metadata")
    assert response.status == 404
    response, data = await fetch(session, upstream.file_url(wheel.filename))
    assert (response.status, data) == (200, wheel.read_bytes())


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "text/html"),
        ("*/*", "text/html"),
        ("text/html", "text/html"),
        (PIP_ACCEPT, JSON_TYPE),
        (UV_ACCEPT, JSON_TYPE),
        (POETRY_ACCEPT, JSON_TYPE),
        (HTML_V1_TYPE, HTML_V1_TYPE),
        ("application/vnd.pypi.simple.latest+json", JSON_TYPE),
        (f"{JSON_TYPE}; q=0.5, text/html", "text/html"),
        (f"text/*; q=0.2, {JSON_TYPE}; q=0.1", "text/html"),
        ("image/png", None),
    ],
)
async def test_negotiation_honours_accept_and_q_values(
    fake_upstream: FakeUpstream,
    session: aiohttp.ClientSession,
    accept: str | None,
    expected: str | None,
) -> None:
    headers = {} if accept is None else {"Accept": accept}
    response, _ = await fetch(session, fake_upstream.url + "app/", headers=headers)
    if expected is None:
        assert response.status == 406
    else:
        assert response.status == 200
        assert response.content_type == expected
        assert response.headers["Vary"] == "Accept"


async def test_single_format_servers_ignore_accept_and_projects_can_override(
    fake_upstream_factory: FakeUpstreamFactory, session: aiohttp.ClientSession
) -> None:
    json_only = await fake_upstream_factory(format="json")
    json_only.add_project("a", ["1.0"])
    json_only.add_project("b", ["1.0"], format="html")
    response, _ = await fetch(session, json_only.url + "a/", headers={"Accept": "text/html"})
    assert response.content_type == JSON_TYPE
    response, _ = await fetch(session, json_only.url + "b/", headers={"Accept": PIP_ACCEPT})
    assert response.content_type == "text/html"


async def test_root_page_lists_projects_in_both_formats(
    fake_upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    page = await get_json(session, fake_upstream.url)
    assert page["projects"] == [{"name": "app"}, {"name": "lib"}, {"name": "util-pkg"}]
    response, body = await fetch(session, fake_upstream.url)
    assert response.content_type == "text/html"
    assert html_links(body)["util-pkg"][0] == f"{fake_upstream.url}util-pkg/"


@pytest.mark.parametrize(
    ("path", "status", "location"),
    [
        ("/simple/Util_Pkg/", 301, "/simple/util-pkg/"),
        ("/simple/UTIL.PKG", 301, "/simple/util-pkg/"),
        ("/simple/app", 301, "/simple/app/"),
        ("/simple", 301, "/simple/"),
        ("/simple/nope/", 404, None),
        ("/simple/-bad-/", 404, None),
        ("/files/nope-1.0.tar.gz", 404, None),
        ("/files/app-1.0.tar.gz.metadata", 404, None),  # sdists have no .metadata
        ("/elsewhere", 404, None),
    ],
)
async def test_names_redirect_to_normalized_and_unknowns_are_404(
    fake_upstream: FakeUpstream,
    session: aiohttp.ClientSession,
    path: str,
    status: int,
    location: str | None,
) -> None:
    response, _ = await fetch(session, fake_upstream.origin + path)
    assert response.status == status
    assert response.headers.get("Location") == location


async def test_empty_and_removed_projects(
    fake_upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    fake_upstream.add_project("empty", [])
    assert (await get_json(session, fake_upstream.url + "empty/"))["files"] == []
    fake_upstream.remove_project("app")
    response, _ = await fetch(session, fake_upstream.url + "app/")
    assert response.status == 404
    fake_upstream.remove_dist("lib-1.0.tar.gz")
    page = await get_json(session, fake_upstream.url + "lib/")
    assert "lib-1.0.tar.gz" not in {file["filename"] for file in page["files"]}


async def test_relative_links_resolve_to_the_files(
    fake_upstream_factory: FakeUpstreamFactory, session: aiohttp.ClientSession
) -> None:
    upstream = await fake_upstream_factory(links="relative")
    dist = upstream.add_project("app", ["1.0"], sdist=False)[0]
    page_url = upstream.url + "app/"
    _, body = await fetch(session, page_url)
    href = html_links(body)[dist.filename][0]
    assert not href.startswith("http")
    response, data = await fetch(session, urljoin(page_url, href))
    assert response.status == 200
    assert hashlib.sha256(data).hexdigest() == dist.sha256 == href.split("#sha256=")[1]


async def test_files_on_a_separate_origin_need_no_credentials(
    fake_upstream_factory: FakeUpstreamFactory, session: aiohttp.ClientSession
) -> None:
    upstream = await fake_upstream_factory(require_auth=("u", "p@ss"), separate_files_host=True)
    upstream.add_project("app", ["1.0"], sdist=False)
    assert upstream.files_origin != upstream.origin
    response, body = await fetch(session, upstream.url_with_auth + "app/")
    assert response.status == 200
    url = html_links(body)[WHEEL][0]
    assert url.startswith(upstream.files_origin + "/files/")
    response, _ = await fetch(session, url)
    assert response.status == 200
    assert upstream.requests[-1].headers.get("Authorization") is None


# -- files and HTTP semantics --------------------------------------------------------------


async def test_metadata_file_is_the_wheels_metadata(
    fake_upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    _, wheel = await fetch(session, fake_upstream.file_url(WHEEL))
    response, metadata = await fetch(session, fake_upstream.file_url(WHEEL) + ".metadata")
    assert response.status == 200
    with zipfile.ZipFile(io.BytesIO(wheel)) as archive:
        assert archive.read("app-1.0.dist-info/METADATA") == metadata
    assert hashlib.sha256(metadata).hexdigest() == fake_upstream.dist(WHEEL).metadata_sha256
    assert "Requires-Dist: Util_Pkg" in metadata.decode()


async def test_files_download_with_length_head_and_ranges(
    fake_upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    dist, url = fake_upstream.dist(WHEEL), fake_upstream.file_url(WHEEL)
    whole = dist.read_bytes()
    response, body = await fetch(session, url)
    assert (response.status, body) == (200, whole)
    assert response.headers["Content-Length"] == str(dist.size)
    assert "immutable" in response.headers["Cache-Control"]
    async with session.head(url) as head:
        assert head.headers["Content-Length"] == str(dist.size)
        assert head.headers["Accept-Ranges"] == "bytes"
    for header, expected in [("bytes=10-19", whole[10:20]), ("bytes=-7", whole[-7:])]:
        response, body = await fetch(session, url, headers={"Range": header})
        assert (response.status, body) == (206, expected)
    response, body = await fetch(session, url, headers={"Range": "bytes=900-"})
    assert response.headers["Content-Range"] == f"bytes 900-{dist.size - 1}/{dist.size}"
    assert body == whole[900:]
    response, _ = await fetch(session, url, headers={"Range": f"bytes={dist.size}-"})
    assert response.status == 416
    response, body = await fetch(session, url, headers={"Range": "bytes=0-1,5-6"})
    assert (response.status, body) == (200, whole)  # multi-range: the whole file instead


async def test_a_server_without_ranges_sends_the_whole_file_and_no_accept_ranges(
    fake_upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    fake_upstream.ranges = False
    dist, url = fake_upstream.dist(WHEEL), fake_upstream.file_url(WHEEL)
    response, body = await fetch(session, url, headers={"Range": "bytes=-7"})
    assert (response.status, body) == (200, dist.read_bytes())
    assert "Accept-Ranges" not in response.headers
    assert "Content-Range" not in response.headers
    fake_upstream.ranges = True
    response, body = await fetch(session, url, headers={"Range": "bytes=-7"})
    assert (response.status, body) == (206, dist.read_bytes()[-7:])


async def test_a_files_last_modified_is_its_upload_time(
    fake_upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    uploaded = datetime(2023, 5, 6, 7, 8, 9, tzinfo=UTC)
    dist = fake_upstream.add_dist(build_wheel("dated", "1.0"), upload_time=uploaded)
    response, _ = await fetch(session, fake_upstream.file_url(dist.filename))
    assert response.headers["Last-Modified"] == "Sat, 06 May 2023 07:08:09 GMT"
    page = await get_json(session, fake_upstream.url + "dated/")
    assert page["files"][0]["upload-time"] == "2023-05-06T07:08:09.000000Z"


def test_a_wheel_with_many_modules_has_a_big_central_directory() -> None:
    dist = build_wheel("manyfiles", "1.0", modules=2000)
    with zipfile.ZipFile(io.BytesIO(dist.read_bytes())) as archive:
        assert len(archive.namelist()) == 2004
        assert_record_verifies(archive)
        assert archive.read("manyfiles-1.0.dist-info/METADATA") == dist.metadata
    end = dist.read_bytes()[-22:]
    directory_size = int.from_bytes(end[12:16], "little")
    assert directory_size > 100_000  # far more than a client's first read of the tail


async def test_pages_answer_304_to_etag_and_date_until_they_change(
    fake_upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    url = fake_upstream.url + "lib/"
    first, _ = await fetch(session, url, headers={"Accept": PIP_ACCEPT})
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    assert re.fullmatch(r'"[0-9a-f]+"', etag)
    by_etag, body = await fetch(session, url, headers={"Accept": PIP_ACCEPT, "If-None-Match": etag})
    assert (by_etag.status, body, by_etag.headers["ETag"]) == (304, b"", etag)
    by_date, _ = await fetch(session, url, headers={"If-Modified-Since": modified})
    assert by_date.status == 304
    other_format, _ = await fetch(session, url, headers={"If-None-Match": etag})  # HTML now
    assert other_format.status == 200
    fake_upstream.add_project("lib", ["1.2"])
    changed, _ = await fetch(session, url, headers={"Accept": PIP_ACCEPT, "If-None-Match": etag})
    assert changed.status == 200
    assert changed.headers["ETag"] != etag
    changed, _ = await fetch(session, url, headers={"If-Modified-Since": modified})
    assert changed.status == 200
    assert [r.headers.get("If-None-Match") for r in fake_upstream.requests_to("/simple/lib/")][
        :2
    ] == [None, etag]


async def test_basic_auth_is_required_when_configured(
    fake_upstream_factory: FakeUpstreamFactory, session: aiohttp.ClientSession
) -> None:
    upstream = await fake_upstream_factory(require_auth=("user", "s3cret"))
    upstream.add_project("app", ["1.0"])
    response, _ = await fetch(session, upstream.url + "app/")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    wrong = {"Authorization": basic_auth("user", "nope")}
    response, _ = await fetch(session, upstream.url + "app/", headers=wrong)
    assert response.status == 401
    response, _ = await fetch(session, upstream.url_with_auth + "app/")
    assert response.status == 200
    assert upstream.requests[-1].headers["Authorization"] == basic_auth("user", "s3cret")


async def test_requests_are_recorded_and_counted(
    fake_upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    await fetch(session, fake_upstream.url + "app/", headers={"Accept": UV_ACCEPT})
    await fetch(session, fake_upstream.url + "app/")
    await fetch(session, fake_upstream.file_url(WHEEL))
    await fetch(session, fake_upstream.file_url(WHEEL) + ".metadata")
    async with session.head(fake_upstream.file_url(WHEEL)):
        pass
    await fetch(session, fake_upstream.url + "nope/")
    assert fake_upstream.count("/simple/app/") == 2
    assert fake_upstream.count(fake_upstream.file_path(WHEEL)) == 1
    assert fake_upstream.count(fake_upstream.file_path(WHEEL), method="HEAD") == 1
    assert fake_upstream.count(fake_upstream.file_path(WHEEL), method=None) == 2
    assert fake_upstream.count_prefix("/files/") == 2
    first = fake_upstream.requests[0]
    assert (first.method, first.path, first.status) == ("GET", "/simple/app/", 200)
    assert first.headers["accept"] == UV_ACCEPT
    assert fake_upstream.requests[-1].status == 404
    fake_upstream.reset_counts()
    assert fake_upstream.count_prefix("/", method=None) == 0


async def test_peak_concurrency_counts_overlapping_requests_only(
    fake_upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    fake_upstream.delay("/simple/*", 0.2)
    await asyncio.gather(*(fetch(session, fake_upstream.url + "app/") for _ in range(3)))
    await fetch(session, fake_upstream.url + "lib/")  # after the others: no overlap
    assert fake_upstream.peak_concurrency("/simple/") == 3
    assert fake_upstream.peak_concurrency("/simple/lib/") == 1
    assert fake_upstream.peak_concurrency("/files/") == 0
    assert all(r.finished is not None and r.finished >= r.started for r in fake_upstream.requests)


async def test_serve_raw_answers_exactly_the_given_bytes_until_cleared(
    fake_upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    fake_upstream.serve_raw("/simple/app/", b"<not a page>", "text/html")
    response, body = await fetch(session, fake_upstream.url + "app/")
    assert (response.status, response.content_type, body) == (200, "text/html", b"<not a page>")
    fake_upstream.fail("/simple/app/", 503, times=1)  # faults still win
    assert (await fetch(session, fake_upstream.url + "app/"))[0].status == 503
    fake_upstream.clear("/simple/app/")
    assert (await get_json(session, fake_upstream.url + "app/"))["name"] == "app"
    assert fake_upstream.count("/simple/app/") == 3


# -- faults --------------------------------------------------------------------------------


async def test_throttle_paces_the_body(
    fake_upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    dist = fake_upstream.add_dist(Dist.from_bytes("blob-1.0.tar.gz", os.urandom(20_000)))
    path, url = fake_upstream.file_path(dist.filename), fake_upstream.file_url(dist.filename)
    fake_upstream.throttle(path, bytes_per_sec=40_000)
    started = time.perf_counter()
    _, body = await fetch(session, url)
    elapsed = time.perf_counter() - started
    assert body == dist.read_bytes()
    assert 0.4 < elapsed < 2  # 20 kB at 40 kB/s: about 0.5 s
    fake_upstream.clear(path)
    started = time.perf_counter()
    await fetch(session, url)
    assert time.perf_counter() - started < 0.25


async def test_delay_holds_the_headers(
    fake_upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    fake_upstream.delay("/simple/app/", 0.4, times=1)
    started = time.perf_counter()
    response, _ = await fetch(session, fake_upstream.url + "app/")
    assert response.status == 200
    assert time.perf_counter() - started >= 0.4
    started = time.perf_counter()
    await fetch(session, fake_upstream.url + "app/")
    assert time.perf_counter() - started < 0.25


async def test_fail_answers_the_status_the_given_number_of_times(
    fake_upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    fake_upstream.fail("/simple/app/", 502, times=2)
    statuses = [(await fetch(session, fake_upstream.url + "app/"))[0].status for _ in range(3)]
    assert statuses == [502, 502, 200]
    fake_upstream.fail("/files/*")  # a prefix, forever: every file is down
    for filename in (WHEEL, "lib-1.0.tar.gz"):
        assert (await fetch(session, fake_upstream.file_url(filename)))[0].status == 503
    fake_upstream.fail(fake_upstream.file_path(WHEEL), 404)  # the exact path beats the prefix
    assert (await fetch(session, fake_upstream.file_url(WHEEL)))[0].status == 404
    fake_upstream.clear()
    assert (await fetch(session, fake_upstream.file_url(WHEEL)))[0].status == 200


async def test_reset_breaks_the_transfer_after_some_bytes(
    fake_upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    fake_upstream.reset(fake_upstream.file_path(WHEEL), after_bytes=100, times=1)
    async with session.get(fake_upstream.file_url(WHEEL)) as response:
        assert response.headers["Content-Length"] == str(fake_upstream.dist(WHEEL).size)
        received, error = await read_until_broken(response)
    assert isinstance(error, aiohttp.ClientPayloadError)
    assert received == fake_upstream.dist(WHEEL).read_bytes()[:100]
    _, body = await fetch(session, fake_upstream.file_url(WHEEL))
    assert body == fake_upstream.dist(WHEEL).read_bytes()


async def test_wrong_length_promises_more_than_it_sends(
    fake_upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    fake_upstream.wrong_length(fake_upstream.file_path(WHEEL))
    async with session.get(fake_upstream.file_url(WHEEL)) as response:
        assert int(response.headers["Content-Length"]) > fake_upstream.dist(WHEEL).size
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


async def test_corrupt_keeps_the_length_but_breaks_the_hash(
    fake_upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    dist = fake_upstream.dist(WHEEL)
    fake_upstream.corrupt(fake_upstream.file_path(WHEEL), times=1)
    _, body = await fetch(session, fake_upstream.file_url(WHEEL))
    assert len(body) == dist.size
    assert hashlib.sha256(body).hexdigest() != dist.sha256
    _, body = await fetch(session, fake_upstream.file_url(WHEEL))
    assert hashlib.sha256(body).hexdigest() == dist.sha256


async def test_garbage_is_a_200_that_does_not_parse(
    fake_upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    fake_upstream.garbage("/simple/app/")
    response, body = await fetch(
        session, fake_upstream.url + "app/", headers={"Accept": PIP_ACCEPT}
    )
    assert (response.status, response.content_type) == (200, JSON_TYPE)
    with pytest.raises(ValueError, match="Expecting"):
        json.loads(body)
    response, body = await fetch(session, fake_upstream.url + "app/")
    assert response.status == 200
    assert html_links(body) == {}
    fake_upstream.garbage("/simple/app/", format="html")  # whatever the client accepts
    response, body = await fetch(session, fake_upstream.url + "app/", headers={"Accept": JSON_TYPE})
    assert (response.status, response.content_type) == (200, "text/html")
    assert html_links(body) == {}


async def test_hang_holds_the_request_until_cleared(
    fake_upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    fake_upstream.hang("/simple/app/")
    request = asyncio.create_task(fetch(session, fake_upstream.url + "app/"))
    await fake_upstream.wait_for_requests("/simple/app/")
    await asyncio.sleep(0.1)
    assert not request.done()
    assert fake_upstream.requests[-1].status is None
    fake_upstream.clear("/simple/app/")
    response, _ = await asyncio.wait_for(request, 2)
    assert response.status == 200


async def test_stop_cuts_hung_requests_and_start_reuses_the_port(
    fake_upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    url, port = fake_upstream.url + "app/", fake_upstream.port
    fake_upstream.hang("/simple/app/")
    hung = asyncio.create_task(fetch(session, url))
    await fake_upstream.wait_for_requests("/simple/app/")
    await fake_upstream.stop()
    assert not fake_upstream.running
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(hung, 2)
    with pytest.raises(aiohttp.ClientConnectionError):
        await fetch(session, url)
    fake_upstream.clear()
    await fake_upstream.start()
    assert fake_upstream.port == port
    response, _ = await fetch(session, url)
    assert response.status == 200
    assert fake_upstream.count("/simple/app/") == 2  # the log survives a restart


# -- real clients --------------------------------------------------------------------------


def _client_env() -> dict[str, str]:
    """The environment minus the machine's own index settings, which must not leak in."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_NO_INDEX"}
        and not key.startswith("UV_")
    }
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


async def _run(*argv: str) -> str:
    # A subprocess without blocking the loop: the fake upstream serves from this same loop.
    process = await asyncio.create_subprocess_exec(
        *argv,
        env=_client_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, output.decode()
    return output.decode()


def _run_python(code: str, cwd: Path) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


@pytest.mark.parametrize("format", ["json", "html"])
async def test_pip_downloads_app(
    fake_upstream_factory: FakeUpstreamFactory, tmp_path: Path, format: str
) -> None:
    upstream = await fake_upstream_factory(format=format)
    app = upstream.add_project("app", ["1.0"], deps=["lib>=1.0"])[0]
    await _run(
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--index-url",
        upstream.url,
        "--dest",
        str(tmp_path),
        "app",
    )
    saved = tmp_path / app.filename
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == app.sha256
    assert upstream.count(upstream.file_path(app.filename)) == 1


async def test_uv_installs_the_default_tree(fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    uv = shutil.which("uv", path=Path(sys.executable).parent) or shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed")
    target = tmp_path / "site"
    await _run(
        uv,
        "pip",
        "install",
        "--no-config",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--python",
        sys.executable,
        "--index-url",
        fake_upstream.url,
        "--target",
        str(target),
        "app",
    )
    for module, version in [("app", "1.0"), ("lib", "1.1"), ("util_pkg", "0.5")]:
        assert (target / module / "__init__.py").read_text() == f'__version__ = "{version}"\n'
