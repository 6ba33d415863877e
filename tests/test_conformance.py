"""Simple-API conformance: request -> expected response, as real installers ask.

One table of cases (`CASES`), each run against three upstream styles (`STYLES`): an
HTML-only index, a JSON-only index (PEP 691 + 700), and a JSON index that sends every optional
field (sizes, upload-time, yanked reasons, requires-python, core-metadata, PEP 740
provenance, PEP 792 project status, `_last-serial`). Expectations that depend on what the
upstream said are computed from the style, so each case states one behaviour for all three.
Plain tests at the end cover what a table row cannot (state changing over time).

Requests are sent raw: paths exactly as written (`encoded=True`), no automatic `Accept` or
`Accept-Encoding` header, no decompression, so every header a case checks is what the proxy
actually sent.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import html
import inspect
import io
import json
import re
import zipfile
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple
from urllib.parse import quote

import aiohttp
import pytest
import zstandard
from multidict import CIMultiDictProxy
from selectolax.lexbor import LexborHTMLParser
from yarl import URL

from tests.conftest import ProxyFactory
from tests.fakeupstream import FakeUpstream, build_sdist
from tests.fakeupstream.fixtures import FakeUpstreamFactory
from tests.proxy import RunningProxy

JSON = "application/vnd.pypi.simple.v1+json"
HTML_V1 = "application/vnd.pypi.simple.v1+html"
TEXT_HTML = "text/html; charset=utf-8"
VARY = "Accept, Accept-Encoding"
# The Accept headers the installers really send, as their sources spell them: pip's (pdm's,
# through unearth, is the same), uv's and poetry's.
PIP_ACCEPT = f"{JSON}, {HTML_V1}; q=0.1, text/html; q=0.01"
UV_ACCEPT = f"{JSON}, {HTML_V1};q=0.2, text/html;q=0.01"
POETRY_ACCEPT = f"{JSON}, */*;q=0.1"

YANK_REASON = 'broken "wheel" <use 1.1>'  # needs escaping in HTML
ARCHIVE_REASON = "superseded by demo & friends"
QUARANTINE_REASON = "malware found"
SERIAL = "31415926"  # a string, as PyPI sends it
TRACKS = ["https://pypi.example/simple/extended/", "https://test.example/simple/extended/"]
ALTERNATE_LOCATIONS = ["https://alt.example/simple/extended/?a=1&b=2"]  # & needs escaping
FILE_CACHE_CONTROL = "max-age=365000000, immutable"
STRONG_ETAG = re.compile(r'"[\x21\x23-\x7e]+"')


# -- the three upstream styles ---------------------------------------------------------------


@dataclass(frozen=True)
class Style:
    id: str
    options: Mapping[str, Any]  # FakeUpstream options
    sizes: bool  # the upstream lists sizes and upload times (PEP 700)
    status: bool  # it states PEP 792 project statuses
    provenance: bool  # it lists PEP 740 provenance URLs
    # Its last serial, as the proxy's JSON says it: as spelled in the upstream's JSON, a
    # number when it came in the X-PyPI-Last-Serial header.
    serial: str | int | None = None


STYLES = (
    Style(
        "html-only",
        {
            "format": "html",
            "links": "relative",
            "provenance": True,
            "last_serial": SERIAL,
            "serial_in": ("header",),  # as PyPI's HTML, where the header is what clients read
        },
        sizes=False,
        status=True,
        provenance=True,
        serial=int(SERIAL),
    ),
    Style("json-only", {"format": "json"}, sizes=True, status=False, provenance=False),
    Style(
        "json-full",
        {"format": "json", "provenance": True, "last_serial": SERIAL},
        sizes=True,
        status=True,
        provenance=True,
        serial=SERIAL,
    ),
)
ALL = frozenset(style.id for style in STYLES)
WITH_STATUS = frozenset(style.id for style in STYLES if style.status)
WITH_PROVENANCE = frozenset(style.id for style in STYLES if style.provenance)


def build_tree(upstream: FakeUpstream, style: Style) -> None:
    """The projects every case runs against."""
    upstream.add_project(
        "demo",
        ["1.0", "1.1", "2.0"],
        requires_python={"1.1": ">=3.8", "2.0": ">=3.9,<4"},
        yanked={"1.0": YANK_REASON},
    )
    upstream.add_project("nometa", ["1.0"], core_metadata=False)  # an index without PEP 658
    upstream.add_project("old-thing", ["0.9"])
    upstream.add_project("bad-thing", ["6.6.6"])
    # An sdist named as a post release that its index files under release 1.0, as PyPI does
    # numpy-1.10.0.post2.tar.gz.
    upstream.add_project("renamed", ["1.0"], sdist=False)
    upstream.add_dist(build_sdist("renamed", "1.0.post2"), release="1.0")
    # PEP 708: a page that tracks PyPI's, and says where else the project lives.
    upstream.add_project("extended", ["1.0"])
    upstream.set_tracks("extended", TRACKS)
    upstream.set_alternate_locations("extended", ALTERNATE_LOCATIONS)
    if style.status:
        upstream.set_status("old-thing", "archived", ARCHIVE_REASON)
        # An upstream that keeps listing a quarantined project's files (a mirror, a merged
        # index): the proxy must not pass them on.
        upstream.set_status("bad-thing", "quarantined", QUARANTINE_REASON, hide_files=False)


# -- the world a case runs in, and what it sees ------------------------------------------------


@dataclass
class World:
    style: Style
    upstream: FakeUpstream
    proxy: RunningProxy
    session: aiohttp.ClientSession
    learned: dict[str, str] = field(default_factory=dict)  # set by `given` steps

    def names(self) -> dict[str, str]:
        """What `{placeholders}` in paths and header values stand for."""
        wheel = self.upstream.dist("demo-2.0-py3-none-any.whl")
        return {
            "wheel": wheel.filename,
            "sdist": "demo-2.0.tar.gz",
            "sha256": wheel.sha256,
            "size": str(wheel.size),
            "nometa": "nometa-1.0-py3-none-any.whl",
            "bad": "bad_thing-6.6.6-py3-none-any.whl",
            **self.learned,
        }

    def fill(self, text: str) -> str:
        return text.format_map(self.names())

    def dist_bytes(self, filename: str) -> bytes:
        return self.upstream.dist(filename).read_bytes()


class Request(NamedTuple):
    method: str
    path: str  # raw: sent exactly as written, after `{placeholders}` are filled
    headers: Mapping[str, str]

    def filled(self, world: World) -> Request:
        return Request(
            self.method,
            world.fill(self.path),
            {name: world.fill(value) for name, value in self.headers.items()},
        )


def req(path: str, method: str = "GET", **headers: str) -> Request:
    """A request; header keywords use `_` for `-` (`If_None_Match=...`)."""
    return Request(method, path, {name.replace("_", "-"): value for name, value in headers.items()})


@dataclass
class Reply:
    request: Request
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes  # exactly as sent: not decompressed
    world: World = field(repr=False)

    def json(self) -> Any:
        assert self.headers.get("Content-Encoding") is None
        return json.loads(self.body)

    def html(self) -> LexborHTMLParser:
        assert self.headers.get("Content-Encoding") is None
        return LexborHTMLParser(self.body)


async def send(world: World, request: Request) -> Reply:
    url = URL(world.proxy.url + request.path, encoded=True)
    async with world.session.request(
        request.method, url, headers=dict(request.headers), allow_redirects=False
    ) as response:
        body = await response.read()
        return Reply(request, response.status, response.headers, body, world)


Check = Callable[[Reply], Awaitable[None] | None]
Step = Callable[[World], Awaitable[None]]


class Case(NamedTuple):
    id: str
    request: Request
    status: int | Collection[int]
    checks: tuple[Check, ...] = ()
    given: tuple[Step, ...] = ()  # done first; the upstream's request log is cleared after
    styles: frozenset[str] = ALL
    options: Mapping[str, Any] = {}  # cachepi Settings fields


# -- given steps -------------------------------------------------------------------------------


def learn_etag(path: str, **headers: str) -> Step:
    """GET `path` and remember its ETag as `{etag}`."""

    async def step(world: World) -> None:
        reply = await send(world, req(path, **headers).filled(world))
        assert reply.status == 200, reply.body
        world.learned["etag"] = reply.headers["ETag"]

    return step


def download(path: str) -> Step:
    """GET `path` through the proxy, whole: afterwards it is cached."""

    async def step(world: World) -> None:
        reply = await send(world, req(path).filled(world))
        assert reply.status == 200, reply.body

    return step


async def download_wheel_without_metadata(world: World) -> None:
    """Download the `nometa` wheel through the proxy, then wait for its METADATA's hash."""
    await download("/index/nometa/{nometa}")(world)
    await metadata_hash_offered(world)


async def read_metadata_of_wheel(world: World) -> None:
    """Ask the proxy for the `nometa` wheel's METADATA (read from ranges of the upstream's
    wheel), then wait for its hash."""
    await download("/index/nometa/{nometa}.metadata")(world)
    await metadata_hash_offered(world)


async def metadata_hash_offered(world: World) -> None:
    """Give the proxy a moment (at most 5 s) until the `nometa` page offers the hash of the
    wheel's METADATA: it is stored and paired just after a client got it. Never offered:
    the case fails here."""
    page = req("/index/nometa/", Accept=JSON)
    for _ in range(100):
        listed = files_by_name(await send(world, page))["nometa-1.0-py3-none-any.whl"]
        if isinstance(listed.get("core-metadata"), dict):
            return
        await asyncio.sleep(0.05)
    pytest.fail("after 5 s the page still offers no hash of the wheel's METADATA")


# -- checks: headers ---------------------------------------------------------------------------


def header(name: str, expected: str) -> Check:
    def check(reply: Reply) -> None:
        assert reply.headers.get(name) == reply.world.fill(expected), name

    return check


def content_type(expected: str) -> Check:
    return header("Content-Type", expected)


def has_content_type(reply: Reply) -> None:
    assert reply.headers.get("Content-Type"), "every answer names its Content-Type"


vary = header("Vary", VARY)


def strong_etag_and_date(reply: Reply) -> None:
    assert STRONG_ETAG.fullmatch(reply.headers.get("ETag", "")), reply.headers.get("ETag")
    assert parsedate_to_datetime(reply.headers["Date"]).tzinfo is not None


def upstream_untouched(reply: Reply) -> None:
    assert reply.world.upstream.requests == [], [r.path for r in reply.world.upstream.requests]


def empty_body(reply: Reply) -> None:
    assert reply.body == b""


def one_line_reason(reply: Reply) -> None:
    text = reply.body.decode()
    assert text.strip() and "\n" not in text.strip(), text


def names_supported_types(reply: Reply) -> None:
    text = reply.body.decode()
    assert len(text) < 300, text
    for media_type in (JSON, HTML_V1, "text/html"):
        assert media_type in text, text


def location(expected: str) -> Check:
    return header("Location", expected)


# -- checks: JSON pages ------------------------------------------------------------------------


def files_by_name(reply: Reply) -> dict[str, dict[str, Any]]:
    return {file["filename"]: file for file in reply.json()["files"]}


def api_version_follows_sizes(reply: Reply) -> None:
    page, upstream = reply.json(), reply.world.upstream
    if reply.world.style.sizes:
        assert page["meta"]["api-version"] == "1.4"
        assert "versions" in page
        for file in page["files"]:
            size = file["size"]
            assert type(size) is int and size == upstream.dist(file["filename"]).size
    else:  # an HTML upstream states no sizes
        assert page["meta"]["api-version"] == "1.0"
        assert all("size" not in file for file in page["files"])


def versions_list_every_version(reply: Reply) -> None:
    assert sorted(reply.json()["versions"]) == ["1.0", "1.1", "2.0"]


def versions_as_the_index_files_them(reply: Reply) -> None:
    versions = reply.json()["versions"]
    if reply.world.style.sizes:  # a JSON upstream lists its versions: no second guessing
        assert versions == ["1.0"]
    else:  # an HTML upstream lists none: they are read from the filenames
        assert versions == ["1.0", "1.0.post2"]


def upload_times_end_in_z(reply: Reply) -> None:
    for file in reply.json()["files"]:
        if reply.world.style.sizes:
            assert re.fullmatch(r"2024-01-01T\d\d:\d\d:\d\d(\.\d+)?Z", file["upload-time"])
        else:
            assert "upload-time" not in file


def yanked_reason_kept(reply: Reply) -> None:
    for name, file in files_by_name(reply).items():
        if name.startswith("demo-1.0"):
            assert file["yanked"] == YANK_REASON, name
        else:
            assert file.get("yanked", False) is False, name


def requires_python_kept(reply: Reply) -> None:
    expected = {"1.0": None, "1.1": ">=3.8", "2.0": ">=3.9,<4"}
    for name, file in files_by_name(reply).items():
        assert file.get("requires-python") == expected[name.split("-")[1].removesuffix(".tar.gz")]


def core_metadata_key_only(reply: Reply) -> None:
    assert b"dist-info-metadata" not in reply.body  # pip 22.3-23.1 crash on it
    for name, file in files_by_name(reply).items():
        dist = reply.world.upstream.dist(name)
        if dist.is_wheel:
            assert file["core-metadata"] == {"sha256": dist.metadata_sha256}, name
        else:
            assert file.get("core-metadata", False) is False, name


def proxied_provenance_url(reply: Reply, filename: str) -> str | None:
    """Where the page must say `filename`'s provenance is: next to the file at the proxy,
    a fully qualified URL (PEP 740), under the prefix the page was asked for."""
    if not reply.world.style.provenance:
        return None
    page = reply.world.proxy.url + reply.request.path.split("?")[0]
    return f"{page}{quote(filename, safe='')}.provenance"


def provenance_at_the_proxy(reply: Reply) -> None:
    for name, file in files_by_name(reply).items():
        assert file.get("provenance") == proxied_provenance_url(reply, name)


def provenance_object_of(filename: str) -> Check:
    def check(reply: Reply) -> None:
        name = reply.world.fill(filename)
        assert reply.body == reply.world.upstream.provenance_object(name)
        assert json.loads(reply.body)["version"] == 1

    return check


def archived_status(reply: Reply) -> None:
    page = reply.json()
    if reply.world.style.status:
        assert page["project-status"] == {"status": "archived", "reason": ARCHIVE_REASON}
    else:
        assert "project-status" not in page
    assert len(page["files"]) == 2  # archived projects keep their files


def quarantined_without_files(reply: Reply) -> None:
    page = reply.json()
    assert page["project-status"] == {"status": "quarantined", "reason": QUARANTINE_REASON}
    assert page["files"] == []


def last_serial_as_spelled(reply: Reply) -> None:
    meta = reply.json()["meta"]
    if reply.world.style.serial is None:
        assert "_last-serial" not in meta
    else:
        assert meta["_last-serial"] == reply.world.style.serial  # a string stays a string


def last_serial_header(reply: Reply) -> None:
    serial = reply.world.style.serial
    assert reply.headers.get("X-PyPI-Last-Serial") == (None if serial is None else str(serial))


def html_serial_comment(reply: Reply) -> None:
    serial = reply.world.style.serial
    comments = re.findall(rb"<!--SERIAL (\d+)-->", reply.body)
    assert comments == ([] if serial is None else [str(serial).encode()])


def json_pep_708_passed_through(reply: Reply) -> None:
    page = reply.json()
    assert page["meta"]["tracks"] == TRACKS
    assert page["alternate-locations"] == ALTERNATE_LOCATIONS


def html_pep_708_passed_through(reply: Reply) -> None:
    assert meta_contents(reply, "pypi:tracks") == TRACKS
    assert meta_contents(reply, "pypi:alternate-locations") == ALTERNATE_LOCATIONS
    assert "&amp;b=2" in reply.body.decode()


def no_pep_708_claims(reply: Reply) -> None:
    if reply.headers["Content-Type"] == JSON:
        page = reply.json()
        assert "tracks" not in page["meta"] and "alternate-locations" not in page
    else:
        assert meta_contents(reply, "pypi:tracks") == []
        assert meta_contents(reply, "pypi:alternate-locations") == []


def json_names_project(name: str) -> Check:
    def check(reply: Reply) -> None:
        assert reply.json()["name"] == name

    return check


def lists_projects(reply: Reply) -> None:
    names = {project["name"] for project in reply.json()["projects"]}
    assert {"demo", "nometa", "old-thing", "bad-thing"} <= names


def metadata_of_wheel(page_file: Callable[[Reply, str], str | dict[str, str] | None]) -> Check:
    """The page offers, for the `nometa` wheel, the sha256 of the wheel's own METADATA."""

    def check(reply: Reply) -> None:
        digest = hashlib.sha256(wheel_metadata(reply.world, "nometa-1.0-py3-none-any.whl"))
        offered = page_file(reply, "nometa-1.0-py3-none-any.whl")
        assert offered in ({"sha256": digest.hexdigest()}, f"sha256={digest.hexdigest()}")

    return check


def metadata_offered_without_hash(reply: Reply) -> None:
    """PEP 714's `true` (JSON): METADATA is there, its hash not known yet."""
    file = files_by_name(reply)["nometa-1.0-py3-none-any.whl"]
    assert file.get("core-metadata") is True
    assert "dist-info-metadata" not in file


def html_metadata_offered_without_hash(reply: Reply) -> None:
    attributes = links(reply)["nometa-1.0-py3-none-any.whl"]
    assert attributes.get("data-core-metadata") == "true"
    assert attributes.get("data-dist-info-metadata") == "true"


def nometa_wheel_read_in_ranges_only(reply: Reply) -> None:
    """The upstream was asked for ranges of the wheel (its end, maybe more), never all."""
    asked = reply.world.upstream.requests_to(reply.world.fill("/files/{nometa}"))
    assert asked and all(r.status == 206 for r in asked), [(r.method, r.status) for r in asked]


def wheel_metadata(world: World, filename: str) -> bytes:
    """The wheel's `*.dist-info/METADATA`, read from the wheel itself."""
    with zipfile.ZipFile(io.BytesIO(world.dist_bytes(filename))) as archive:
        (name,) = (n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return archive.read(name)


# -- checks: HTML pages ------------------------------------------------------------------------


def links(reply: Reply) -> dict[str, dict[str, str | None]]:
    """Link text -> the anchor's attributes."""
    return {a.text().strip(): a.attributes for a in reply.html().css("a")}


def meta_content(reply: Reply, name: str) -> str | None:
    node = reply.html().css_first(f'meta[name="{name}"]')
    return None if node is None else node.attributes.get("content")


def meta_contents(reply: Reply, name: str) -> list[str | None]:
    return [node.attributes.get("content") for node in reply.html().css(f'meta[name="{name}"]')]


def repository_version_1_4(reply: Reply) -> None:
    assert meta_content(reply, "pypi:repository-version") == "1.4"


def html_yanked_reason(reply: Reply) -> None:
    assert f'data-yanked="{escape_attr(YANK_REASON)}"' in reply.body.decode()
    for name, attrs in links(reply).items():
        assert attrs.get("data-yanked") == (YANK_REASON if name.startswith("demo-1.0") else None)


def html_requires_python_escaped(reply: Reply) -> None:
    assert 'data-requires-python="&gt;=3.9,&lt;4"' in reply.body.decode()
    assert links(reply)["demo-1.1.tar.gz"]["data-requires-python"] == ">=3.8"
    assert "data-requires-python" not in links(reply)["demo-1.0.tar.gz"]


def html_both_metadata_attributes(reply: Reply) -> None:
    for name, attrs in links(reply).items():
        dist = reply.world.upstream.dist(name)
        if dist.is_wheel:
            expected = f"sha256={dist.metadata_sha256}"
            assert attrs["data-core-metadata"] == attrs["data-dist-info-metadata"] == expected
        else:
            assert "data-core-metadata" not in attrs and "data-dist-info-metadata" not in attrs


def html_provenance(reply: Reply) -> None:
    for name, attrs in links(reply).items():
        assert attrs.get("data-provenance") == proxied_provenance_url(reply, name)


def html_archived_status(reply: Reply) -> None:
    expected = ("archived", ARCHIVE_REASON) if reply.world.style.status else (None, None)
    assert (
        meta_content(reply, "pypi:project-status"),
        meta_content(reply, "pypi:project-status-reason"),
    ) == expected
    assert len(links(reply)) == 2


def html_quarantined_without_links(reply: Reply) -> None:
    assert meta_content(reply, "pypi:project-status") == "quarantined"
    assert meta_content(reply, "pypi:project-status-reason") == QUARANTINE_REASON
    assert links(reply) == {}


def html_links_to_every_file(reply: Reply) -> None:
    assert set(links(reply)) == {d.filename for d in reply.world.upstream.dists("demo")}


def escape_attr(text: str) -> str:
    return html.escape(text, quote=True)


# -- checks: encodings -------------------------------------------------------------------------


def encoded_as(coding: str, decompress: Callable[[bytes], bytes]) -> Check:
    """Content-Encoding `coding`; decoded, the body is exactly the identity body, whose
    ETag differs (another representation, another strong ETag)."""

    async def check(reply: Reply) -> None:
        assert reply.headers.get("Content-Encoding") == coding
        plain_headers = {k: v for k, v in reply.request.headers.items() if k != "Accept-Encoding"}
        plain = await send(reply.world, reply.request._replace(headers=plain_headers))
        assert plain.headers.get("Content-Encoding") is None
        assert decompress(reply.body) == plain.body
        assert reply.headers["ETag"] != plain.headers["ETag"]
        assert STRONG_ETAG.fullmatch(reply.headers["ETag"])

    return check


def unzstd(data: bytes) -> bytes:
    # A decompressobj also reads frames that do not state their content size.
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def not_encoded(reply: Reply) -> None:
    assert reply.headers.get("Content-Encoding") in (None, "identity")


# -- checks: files -----------------------------------------------------------------------------


def whole_file(filename: str) -> Check:
    """The whole file, bytes whose sha256 is the one the index lists."""

    def check(reply: Reply) -> None:
        name = reply.world.fill(filename)
        assert "Content-Range" not in reply.headers
        assert hashlib.sha256(reply.body).hexdigest() == reply.world.upstream.dist(name).sha256
        assert reply.body == reply.world.dist_bytes(name)

    return check


def part(first: int | None, last: int | None) -> Check:
    """A 206 body for `bytes=first-last` of the demo wheel (None: open end / suffix)."""

    def check(reply: Reply) -> None:
        data = reply.world.dist_bytes(reply.world.fill("{wheel}"))
        size = len(data)
        if first is None:  # suffix: the last `last` bytes, or all of a shorter file
            start, stop = max(0, size - (last or 0)), size
        else:
            start, stop = first, size if last is None else min(size, last + 1)
        assert reply.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{size}"
        assert reply.body == data[start:stop]
        assert reply.headers["Content-Length"] == str(stop - start)

    return check


def whole_or_multipart(spans: list[tuple[int, int]]) -> Check:
    """Several ranges: the whole file (200), or a correct multipart/byteranges 206."""

    def check(reply: Reply) -> None:
        data = reply.world.dist_bytes(reply.world.fill("{wheel}"))
        if reply.status == 200:
            assert reply.body == data
            return
        kind, _, boundary = reply.headers["Content-Type"].partition("; boundary=")
        assert kind == "multipart/byteranges" and boundary
        chunks = reply.body.split(b"--" + boundary.strip('"').encode())[1:-1]
        assert len(chunks) == len(spans)
        for chunk, (start, last) in zip(chunks, spans, strict=True):
            head, _, body = chunk.partition(b"\r\n\r\n")
            assert f"Content-Range: bytes {start}-{last}/{len(data)}".lower() in (
                head.decode().lower()
            )
            assert body.removesuffix(b"\r\n") == data[start : last + 1]

    return check


def head_of_wheel(reply: Reply) -> None:
    assert reply.headers["Content-Length"] == reply.world.fill("{size}")
    assert reply.headers["Accept-Ranges"] == "bytes"
    assert reply.body == b""


def metadata_bytes_of_nometa_wheel(reply: Reply) -> None:
    assert reply.body == wheel_metadata(reply.world, "nometa-1.0-py3-none-any.whl")


def metadata_bytes_of_demo_wheel(reply: Reply) -> None:
    assert reply.body == reply.world.upstream.dist("demo-2.0-py3-none-any.whl").metadata


def no_file_download(reply: Reply) -> None:
    assert reply.world.upstream.count_prefix("/files/") == 0


def no_provenance_download(reply: Reply) -> None:
    assert reply.world.upstream.count_prefix("/integrity/") == 0


# -- the table ---------------------------------------------------------------------------------

PAGE = "/index/demo/"
WHEEL = "/index/demo/{wheel}"
OK_JSON = (content_type(JSON), vary)
OK_HTML = (content_type(TEXT_HTML), vary)

CASES: list[Case] = [
    # -- 1. what a page says (PEP 691, 700, 592, 658/714, 740, 792) --------------------------
    Case(
        "json-api-version-is-1.4-only-when-every-file-has-a-size",
        req(PAGE, Accept=JSON),
        200,
        (*OK_JSON, api_version_follows_sizes),
    ),
    Case(
        "json-versions-list-every-version",
        req(PAGE, Accept=JSON),
        200,
        (versions_list_every_version,),
    ),
    Case(
        "json-versions-are-the-upstreams-list-when-it-gives-one",
        req("/index/renamed/", Accept=JSON),
        200,
        (versions_as_the_index_files_them,),
    ),
    Case("json-upload-time-ends-in-z", req(PAGE, Accept=JSON), 200, (upload_times_end_in_z,)),
    Case("json-yanked-keeps-its-reason", req(PAGE, Accept=JSON), 200, (yanked_reason_kept,)),
    Case(
        "html-data-yanked-keeps-its-reason",
        req(PAGE, Accept="text/html"),
        200,
        (*OK_HTML, html_yanked_reason),
    ),
    Case("json-requires-python-kept", req(PAGE, Accept=JSON), 200, (requires_python_kept,)),
    Case(
        "html-requires-python-escaped",
        req(PAGE, Accept="text/html"),
        200,
        (html_requires_python_escaped,),
    ),
    Case(
        "json-uses-core-metadata-never-dist-info-metadata",
        req(PAGE, Accept=JSON),
        200,
        (core_metadata_key_only,),
    ),
    Case(
        "html-has-both-metadata-attributes-with-equal-values",
        req(PAGE, Accept="text/html"),
        200,
        (html_both_metadata_attributes, html_links_to_every_file),
    ),
    Case(
        "html-says-repository-version-1.4",
        req(PAGE, Accept="text/html"),
        200,
        (repository_version_1_4,),
    ),
    Case("json-provenance-at-the-proxy", req(PAGE, Accept=JSON), 200, (provenance_at_the_proxy,)),
    Case(
        "json-provenance-at-the-proxy-under-the-alias-asked",
        req("/simple/demo/", Accept=JSON),
        200,
        (provenance_at_the_proxy,),
    ),
    Case(
        "html-data-provenance-at-the-proxy",
        req(PAGE, Accept="text/html"),
        200,
        (html_provenance,),
    ),
    Case(
        "provenance-object-fetched-through-the-proxy",
        req(WHEEL + ".provenance"),
        200,
        (provenance_object_of("{wheel}"),),
        styles=WITH_PROVENANCE,
    ),
    Case(
        "provenance-object-served-from-the-cache-once-fetched",
        req("/simple/demo/{sdist}.provenance"),
        200,
        (provenance_object_of("{sdist}"), upstream_untouched),
        given=(download("/index/demo/{sdist}.provenance"),),
        styles=WITH_PROVENANCE,
    ),
    Case(
        "provenance-the-index-does-not-offer-is-404",
        req(WHEEL + ".provenance"),
        404,
        (has_content_type, one_line_reason),
        styles=ALL - WITH_PROVENANCE,
    ),
    Case(
        "provenance-of-a-quarantined-file-is-403",
        req("/index/bad-thing/{bad}.provenance"),
        403,
        (one_line_reason, no_provenance_download),
        styles=WITH_STATUS & WITH_PROVENANCE,
    ),
    Case(
        "json-pep-708-tracks-and-alternate-locations-passed-through",
        req("/index/extended/", Accept=JSON),
        200,
        (json_pep_708_passed_through,),
    ),
    Case(
        "html-pep-708-meta-tags-passed-through",
        req("/index/extended/", Accept="text/html"),
        200,
        (html_pep_708_passed_through,),
    ),
    Case(
        "json-page-without-pep-708-claims-has-no-keys",
        req(PAGE, Accept=JSON),
        200,
        (no_pep_708_claims,),
    ),
    Case(
        "html-page-without-pep-708-claims-has-no-meta-tags",
        req(PAGE, Accept="text/html"),
        200,
        (no_pep_708_claims,),
    ),
    Case(
        "json-project-status-with-reason",
        req("/index/old-thing/", Accept=JSON),
        200,
        (archived_status,),
    ),
    Case(
        "html-project-status-meta-tags",
        req("/index/old-thing/", Accept="text/html"),
        200,
        (html_archived_status,),
    ),
    Case(
        "json-quarantined-project-lists-no-files",
        req("/index/bad-thing/", Accept=JSON),
        200,
        (quarantined_without_files,),
        styles=WITH_STATUS,
    ),
    Case(
        "html-quarantined-project-lists-no-links",
        req("/index/bad-thing/"),
        200,
        (html_quarantined_without_links,),
        styles=WITH_STATUS,
    ),
    Case(
        "quarantined-project-file-is-403-with-a-one-line-reason",
        req("/index/bad-thing/{bad}"),
        403,
        (one_line_reason, has_content_type, no_file_download),
        styles=WITH_STATUS,
    ),
    Case(
        "json-last-serial-passed-through-as-spelled",
        req(PAGE, Accept=JSON),
        200,
        (last_serial_as_spelled,),
    ),
    Case(
        "html-last-serial-in-the-header-and-where-pypi-writes-it",
        req(PAGE, Accept="text/html"),
        200,
        (last_serial_header, html_serial_comment),
    ),
    Case(
        "json-last-serial-in-the-header-too",
        req(PAGE, Accept=JSON),
        200,
        (last_serial_header,),
    ),
    Case(
        "project-list-last-serial-in-the-header-and-the-page",
        req("/index/", Accept=JSON),
        200,
        (last_serial_header, last_serial_as_spelled),
    ),
    Case(
        "last-serial-header-repeated-on-a-304",
        req(PAGE, Accept=JSON, If_None_Match="{etag}"),
        304,
        (last_serial_header,),
        given=(learn_etag(PAGE, Accept=JSON),),
    ),
    Case(
        "json-project-list-names-every-project",
        req("/index/", Accept=JSON),
        200,
        (*OK_JSON, lists_projects),
    ),
    # -- 2. negotiation --------------------------------------------------------------------
    Case("pip-accept-gets-json", req(PAGE, Accept=PIP_ACCEPT), 200, OK_JSON),
    Case("uv-accept-gets-json", req(PAGE, Accept=UV_ACCEPT), 200, OK_JSON),
    Case(
        "poetry-accept-gets-exactly-v1-json",
        req(PAGE, Accept=POETRY_ACCEPT),
        200,
        (*OK_JSON, json_names_project("demo")),
    ),
    Case(
        "q-values-in-any-order-json-still-wins",
        req(PAGE, Accept=f"text/html;q=0.01, {HTML_V1};q=0.1, {JSON}"),
        200,
        OK_JSON,
    ),
    Case(
        "higher-q-for-html-gets-html",
        req(PAGE, Accept=f"{JSON};q=0.5, text/html"),
        200,
        (*OK_HTML, html_links_to_every_file),
    ),
    Case(
        "latest-json-is-answered-as-v1-json",
        req(PAGE, Accept="application/vnd.pypi.simple.latest+json"),
        200,
        OK_JSON,
    ),
    Case(
        "latest-html-is-answered-as-v1-html",
        req(PAGE, Accept="application/vnd.pypi.simple.latest+html"),
        200,
        (content_type(HTML_V1), vary),
    ),
    Case(
        "v1-html-accept-gets-v1-html",
        req(PAGE, Accept=HTML_V1),
        200,
        (content_type(HTML_V1), vary, html_links_to_every_file),
    ),
    Case(
        "format-param-with-escaped-plus-overrides-accept",
        req(PAGE + "?format=application/vnd.pypi.simple.v1%2Bjson", Accept="text/html"),
        200,
        OK_JSON,
    ),
    Case(
        "format-param-with-raw-plus-overrides-accept",
        req(PAGE + "?format=application/vnd.pypi.simple.v1+json", Accept="text/html"),
        200,
        OK_JSON,
    ),
    Case("no-accept-gets-text-html-utf8", req(PAGE), 200, OK_HTML),
    Case("wildcard-accept-gets-text-html-utf8", req(PAGE, Accept="*/*"), 200, OK_HTML),
    Case(
        "json-refused-but-wildcard-accepted-gets-html",
        req(PAGE, Accept=f"{JSON};q=0, */*;q=0.5"),
        200,
        OK_HTML,
    ),
    Case(
        "every-type-refused-is-406-naming-the-supported-types",
        req(PAGE, Accept=f"text/html;q=0, {HTML_V1};q=0, {JSON};q=0, */*;q=0"),
        406,
        (names_supported_types, has_content_type),
    ),
    # -- 3. HTTP caching of pages ----------------------------------------------------------
    Case(
        "page-has-strong-etag-date-and-default-max-age",
        req(PAGE, Accept=PIP_ACCEPT),
        200,
        (strong_etag_and_date, header("Cache-Control", "max-age=600, public")),
    ),
    Case(
        "page-max-age-is-configurable",
        req(PAGE, Accept=PIP_ACCEPT),
        200,
        (header("Cache-Control", "max-age=60, public"),),
        options={"page_max_age": 60},
    ),
    Case(
        "matching-if-none-match-is-304-repeating-etag-vary-and-cache-control",
        req(PAGE, Accept=PIP_ACCEPT, If_None_Match="{etag}"),
        304,
        (
            header("ETag", "{etag}"),
            vary,
            header("Cache-Control", "max-age=600, public"),
            empty_body,
            upstream_untouched,
        ),
        given=(learn_etag(PAGE, Accept=PIP_ACCEPT),),
    ),
    Case(
        "etag-differs-per-format",
        req(PAGE, Accept="text/html", If_None_Match="{etag}"),
        200,
        (*OK_HTML, strong_etag_and_date),
        given=(learn_etag(PAGE, Accept=JSON),),
    ),
    Case(
        "client-max-age-0-revalidation-is-304-without-asking-upstream",
        req(PAGE, Accept=JSON, If_None_Match="{etag}", Cache_Control="max-age=0"),
        304,
        (header("ETag", "{etag}"), vary, upstream_untouched),
        given=(learn_etag(PAGE, Accept=JSON),),
    ),
    Case(
        "client-no-cache-revalidation-is-304-without-asking-upstream",
        req(PAGE, Accept=JSON, If_None_Match="{etag}", Cache_Control="no-cache", Pragma="no-cache"),
        304,
        (header("ETag", "{etag}"), vary, upstream_untouched),
        given=(learn_etag(PAGE, Accept=JSON),),
    ),
    # -- 4. compression --------------------------------------------------------------------
    Case(
        "page-is-gzipped-when-accepted",
        req(PAGE, Accept=JSON, Accept_Encoding="gzip"),
        200,
        (*OK_JSON, encoded_as("gzip", gzip.decompress)),
    ),
    Case(
        "page-is-zstd-when-preferred",
        req(PAGE, Accept=JSON, Accept_Encoding="gzip;q=0.5, zstd"),
        200,
        (*OK_JSON, encoded_as("zstd", unzstd)),
    ),
    Case(
        "page-is-zstd-when-only-zstd-accepted",
        req(PAGE, Accept="text/html", Accept_Encoding="zstd"),
        200,
        (*OK_HTML, encoded_as("zstd", unzstd)),
    ),
    Case(
        "page-is-identity-when-gzip-refused",
        req(PAGE, Accept=JSON, Accept_Encoding="gzip;q=0, identity"),
        200,
        (*OK_JSON, not_encoded, api_version_follows_sizes),
    ),
    Case(
        "etag-differs-per-content-encoding",
        req(PAGE, Accept=JSON, Accept_Encoding="gzip", If_None_Match="{etag}"),
        200,
        (header("Content-Encoding", "gzip"),),
        given=(learn_etag(PAGE, Accept=JSON),),
    ),
    Case(
        "uncached-file-is-never-content-encoded",
        req(WHEEL, Accept_Encoding="gzip"),
        200,
        (not_encoded, whole_file("{wheel}")),
    ),
    Case(
        "cached-file-is-never-content-encoded",
        req(WHEEL, Accept_Encoding="gzip, zstd"),
        200,
        (not_encoded, whole_file("{wheel}")),
        given=(download(WHEEL),),
    ),
    Case(
        "cached-sdist-is-never-content-encoded",
        req("/index/demo/{sdist}", Accept_Encoding="gzip"),
        200,
        (not_encoded, whole_file("{sdist}")),
        given=(download("/index/demo/{sdist}"),),
    ),
    Case(
        "metadata-file-is-never-content-encoded",
        req(WHEEL + ".metadata", Accept_Encoding="gzip"),
        200,
        (not_encoded, metadata_bytes_of_demo_wheel),
    ),
    # -- 3b. HTTP caching of files ---------------------------------------------------------
    Case(
        "cached-file-has-sha256-etag-and-immutable-cache-control",
        req(WHEEL),
        200,
        (
            header("ETag", '"{sha256}"'),
            header("Cache-Control", FILE_CACHE_CONTROL),
            whole_file("{wheel}"),
        ),
        given=(download(WHEEL),),
    ),
    Case(
        "uncached-file-has-sha256-etag-and-immutable-cache-control",
        req(WHEEL),
        200,
        (
            header("ETag", '"{sha256}"'),
            header("Cache-Control", FILE_CACHE_CONTROL),
            whole_file("{wheel}"),
        ),
    ),
    Case(
        "file-if-none-match-with-sha256-etag-is-304",
        req(WHEEL, If_None_Match='"{sha256}"'),
        304,
        (header("ETag", '"{sha256}"'), empty_body),
        given=(download(WHEEL),),
    ),
    # -- 5. HEAD and ranges on files -------------------------------------------------------
    Case(
        "head-of-uncached-file-has-length-and-accept-ranges",
        req(WHEEL, "HEAD"),
        200,
        (head_of_wheel,),
    ),
    Case(
        "head-of-cached-file-has-length-and-accept-ranges",
        req(WHEEL, "HEAD"),
        200,
        (head_of_wheel, upstream_untouched),
        given=(download(WHEEL),),
    ),
    Case(
        "closed-range-of-uncached-file-is-206",
        req(WHEEL, Range="bytes=100-199"),
        206,
        (part(100, 199),),
    ),
    Case(
        "open-range-of-cached-file-is-206",
        req(WHEEL, Range="bytes=100-"),
        206,
        (part(100, None), upstream_untouched),
        given=(download(WHEEL),),
    ),
    Case(
        "suffix-range-longer-than-file-is-206-of-everything",
        req(WHEEL, Range="bytes=-10000000"),
        206,
        (part(None, 10000000),),
    ),
    Case(
        "range-past-the-end-of-uncached-file-is-416",
        req(WHEEL, Range="bytes=99999999-"),
        416,
        (header("Content-Range", "bytes */{size}"),),
    ),
    Case(
        "if-range-with-current-etag-is-206",
        req(WHEEL, Range="bytes=0-9", If_Range="{etag}"),
        206,
        (part(0, 9),),
        given=(download(WHEEL), learn_etag(WHEEL)),
    ),
    Case(
        "if-range-with-another-etag-is-the-whole-file",
        req(WHEEL, Range="bytes=0-9", If_Range='"0000-not-this-one"'),
        200,
        (whole_file("{wheel}"),),
        given=(download(WHEEL),),
    ),
    Case(
        "if-range-with-sha256-etag-on-uncached-file-is-206",
        req(WHEEL, Range="bytes=0-9", If_Range='"{sha256}"'),
        206,
        (part(0, 9),),
    ),
    Case(
        "multi-range-is-the-whole-file-or-correct-multipart",
        req(WHEEL, Range="bytes=0-1,5-6"),
        (200, 206),
        (whole_or_multipart([(0, 1), (5, 6)]),),
        given=(download(WHEEL),),
    ),
    # -- 6. PEP 658 metadata for an index that has none ------------------------------------
    Case(
        "json-offers-core-metadata-true-before-it-was-read",
        req("/index/nometa/", Accept=JSON),
        200,
        (metadata_offered_without_hash,),
    ),
    Case(
        "html-offers-core-metadata-true-before-it-was-read",
        req("/index/nometa/", Accept="text/html"),
        200,
        (html_metadata_offered_without_hash,),
    ),
    Case(
        "metadata-file-is-read-from-ranges-of-a-wheel-never-downloaded",
        req("/index/nometa/{nometa}.metadata"),
        200,
        (metadata_bytes_of_nometa_wheel, nometa_wheel_read_in_ranges_only),
    ),
    Case(
        "json-offers-core-metadata-hash-once-it-was-read",
        req("/index/nometa/", Accept=JSON),
        200,
        (metadata_of_wheel(lambda r, n: files_by_name(r)[n].get("core-metadata")),),
        given=(read_metadata_of_wheel,),
    ),
    Case(
        "json-offers-core-metadata-once-the-wheel-was-downloaded",
        req("/index/nometa/", Accept=JSON),
        200,
        (metadata_of_wheel(lambda r, n: files_by_name(r)[n].get("core-metadata")),),
        given=(download_wheel_without_metadata,),
    ),
    Case(
        "html-offers-core-metadata-once-the-wheel-was-downloaded",
        req("/index/nometa/", Accept="text/html"),
        200,
        (
            metadata_of_wheel(lambda r, n: links(r)[n].get("data-core-metadata")),
            metadata_of_wheel(lambda r, n: links(r)[n].get("data-dist-info-metadata")),
        ),
        given=(download_wheel_without_metadata,),
    ),
    Case(
        "metadata-file-is-the-wheels-own-metadata-once-downloaded",
        req("/index/nometa/{nometa}.metadata"),
        200,
        (metadata_bytes_of_nometa_wheel,),
        given=(download_wheel_without_metadata,),
    ),
    # -- 7. names and redirects ------------------------------------------------------------
    Case(
        "non-normalized-name-redirects-keeping-alias-and-query",
        req("/simple/Demo/?format=json", Accept=JSON),
        301,
        (location("/simple/demo/?format=json"), upstream_untouched),
    ),
    Case(
        "missing-trailing-slash-redirects-keeping-query",
        req("/index/demo?x=1"),
        301,
        (location("/index/demo/?x=1"), upstream_untouched),
    ),
    Case(
        "project-list-without-trailing-slash-redirects-keeping-query",
        req("/index?format=application/vnd.pypi.simple.v1%2Bjson"),
        301,
        (location("/index/?format=application/vnd.pypi.simple.v1%2Bjson"), upstream_untouched),
    ),
    Case(
        "simple-alias-without-trailing-slash-redirects-to-the-alias",
        req("/simple", Accept=JSON),
        301,
        (location("/simple/"), upstream_untouched),
    ),
    Case(
        "simple-alias-serves-the-index-page",
        req("/simple/demo/", Accept=JSON),
        200,
        (*OK_JSON, json_names_project("demo"), api_version_follows_sizes),
    ),
    Case(
        "unknown-project-is-404-not-an-empty-page",
        req("/index/nope/", Accept=JSON),
        404,
        (has_content_type,),
    ),
    Case(
        "dot-dot-name-is-400-without-upstream-request",
        req("/index/%2e%2e/"),
        400,
        (upstream_untouched,),
    ),
    Case(
        "non-ascii-name-is-400-without-upstream-request",
        req("/index/%E2%84%AAit/"),
        400,
        (upstream_untouched,),
    ),
    Case(
        "leading-dash-name-is-400-without-upstream-request",
        req("/index/-demo/"),
        400,
        (upstream_untouched,),
    ),
    Case(
        "300-character-name-is-400-without-upstream-request",
        req("/index/" + "a" * 300 + "/"),
        400,
        (upstream_untouched,),
    ),
]


def _params() -> list[Any]:
    return [
        pytest.param(case, style, id=f"{case.id}@{style.id}")
        for case in CASES
        for style in STYLES
        if style.id in case.styles
    ]


async def start_world(
    style: Style,
    fake_upstream_factory: FakeUpstreamFactory,
    proxy_factory: ProxyFactory,
    session: aiohttp.ClientSession,
    **options: Any,
) -> World:
    upstream = await fake_upstream_factory(**style.options)
    build_tree(upstream, style)
    proxy = await proxy_factory(upstream, **options)
    return World(style, upstream, proxy, session)


def raw_session() -> aiohttp.ClientSession:
    """A client that sends only the headers it is given and leaves bodies as they came."""
    return aiohttp.ClientSession(
        auto_decompress=False, skip_auto_headers=("Accept", "Accept-Encoding")
    )


def test_the_table_is_big_enough_and_ids_are_unique() -> None:
    assert len(CASES) >= 35
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize(("case", "style"), _params())
async def test_conformance(
    case: Case,
    style: Style,
    fake_upstream_factory: FakeUpstreamFactory,
    proxy_factory: ProxyFactory,
) -> None:
    async with raw_session() as session:
        world = await start_world(
            style, fake_upstream_factory, proxy_factory, session, **case.options
        )
        for step in case.given:
            await step(world)
        world.upstream.reset_counts()
        reply = await send(world, case.request.filled(world))
        expected = {case.status} if isinstance(case.status, int) else set(case.status)
        assert reply.status in expected, reply.body[:300]
        for check in case.checks:
            result = check(reply)
            if inspect.isawaitable(result):
                await result


# -- plain tests: behaviour over time ----------------------------------------------------------


class Fetched(NamedTuple):
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def get(session: aiohttp.ClientSession, url: str, **headers: str) -> Fetched:
    async with session.get(URL(url, encoded=True), headers=headers) as response:
        return Fetched(response.status, response.headers, await response.read())


async def test_page_etag_changes_exactly_when_the_bytes_change(
    fake_upstream_factory: FakeUpstreamFactory, proxy_factory: ProxyFactory
) -> None:
    upstream = await fake_upstream_factory(format="json")
    upstream.add_project("demo", ["1.0"])
    upstream.add_project("other", ["1.0"])
    proxy = await proxy_factory((upstream.url, 1), stale_while_revalidate=0)
    url = proxy.index_url + "demo/"
    async with raw_session() as session:
        first = await get(session, url, Accept=JSON)
        again = await get(session, url, Accept=JSON)
        assert (again.headers["ETag"], again.body) == (first.headers["ETag"], first.body)
        other = await get(session, proxy.index_url + "other/", Accept=JSON)
        assert other.headers["ETag"] != first.headers["ETag"]
        # Revalidated upstream (304) after the TTL: same bytes, so the same ETag.
        await asyncio.sleep(1.1)
        same = await get(session, url, Accept=JSON)
        assert (same.headers["ETag"], same.body) == (first.headers["ETag"], first.body)
        upstream.add_project("demo", ["2.0"])
        await asyncio.sleep(1.1)
        changed = await get(session, url, Accept=JSON, **{"If-None-Match": first.headers["ETag"]})
    assert changed.status == 200
    assert changed.body != first.body
    assert changed.headers["ETag"] != first.headers["ETag"]
    assert STRONG_ETAG.fullmatch(changed.headers["ETag"])


async def test_quarantine_hides_files_and_refuses_even_a_cached_file(
    fake_upstream_factory: FakeUpstreamFactory, proxy_factory: ProxyFactory
) -> None:
    upstream = await fake_upstream_factory(format="json")
    wheel = upstream.add_project("evil", ["1.0"])[0]
    proxy = await proxy_factory((upstream.url, 1), stale_while_revalidate=0)
    file_url = f"{proxy.index_url}evil/{wheel.filename}"
    async with raw_session() as session:
        assert (await get(session, file_url)).status == 200  # now cached
        upstream.set_status("evil", "quarantined", QUARANTINE_REASON)  # as the PEP says: no files
        await asyncio.sleep(1.1)  # the page goes stale and is fetched again
        page = await get(session, proxy.index_url + "evil/", Accept=JSON)
        assert page.status == 200
        assert page.json()["project-status"] == {
            "status": "quarantined",
            "reason": QUARANTINE_REASON,
        }
        assert page.json()["files"] == []
        html_page = await get(session, proxy.index_url + "evil/", Accept="text/html")
        assert "<a " not in html_page.body.decode()
        upstream.reset_counts()
        for url in (file_url, file_url + ".metadata"):
            refused = await get(session, url)
            reason = refused.body.decode().strip()
            assert refused.status == 403, (url, refused.status)
            assert reason and "\n" not in reason, reason
        assert upstream.count_prefix("/files/") == 0


async def test_json_api_version_is_1_0_when_a_merged_index_lacks_sizes(
    fake_upstream_factory: FakeUpstreamFactory, proxy_factory: ProxyFactory
) -> None:
    main = await fake_upstream_factory(format="json")
    minimal = await fake_upstream_factory(format="json", pep700=False)
    main.add_project("mixed", ["1.0"])
    minimal.add_project("mixed", ["1.0", "2.0"])  # 2.0 only here, without sizes
    proxy = await proxy_factory(main, (minimal.url, 180))
    async with raw_session() as session:
        page = (await get(session, proxy.index_url + "mixed/", Accept=JSON)).json()
    assert page["meta"]["api-version"] == "1.0"
    sized = {f["filename"]: f["size"] for f in page["files"] if "size" in f}
    assert all(type(size) is int for size in sized.values())
    assert "mixed-2.0.tar.gz" not in sized
    assert {f["filename"] for f in page["files"]} >= {"mixed-1.0.tar.gz", "mixed-2.0.tar.gz"}


async def test_metadata_learned_from_a_wheel_survives_a_restart(
    fake_upstream_factory: FakeUpstreamFactory, proxy_factory: ProxyFactory
) -> None:
    upstream = await fake_upstream_factory(format="html", links="relative")
    wheel = upstream.add_project("nometa", ["1.0"], core_metadata=False, sdist=False)[0]
    proxy = await proxy_factory(upstream)
    metadata_url = f"{proxy.index_url}nometa/{wheel.filename}.metadata"
    async with raw_session() as session:
        assert (await get(session, f"{proxy.index_url}nometa/{wheel.filename}")).status == 200
        for _ in range(100):  # learning it may take a moment after the download
            if (await get(session, metadata_url)).status == 200:
                break
            await asyncio.sleep(0.05)
        await proxy.stop()
        restarted = await proxy_factory(upstream)
        reply = await get(session, f"{restarted.index_url}nometa/{wheel.filename}.metadata")
    assert (reply.status, reply.body) == (200, wheel.metadata)
    assert upstream.count(upstream.file_path(wheel.filename + ".metadata")) == 0


async def test_provenance_reaches_a_client_that_reaches_only_the_proxy(
    fake_upstream_factory: FakeUpstreamFactory, proxy_factory: ProxyFactory
) -> None:
    upstream = await fake_upstream_factory(format="json", provenance=True)
    wheel = upstream.add_project("signed", ["1.0"], sdist=False)[0]
    proxy = await proxy_factory(upstream)
    async with raw_session() as session:
        page = await get(session, proxy.index_url + "signed/", Accept=JSON)
        (listed,) = page.json()["files"]
        # The page says where, at the proxy; the client goes there and nowhere else.
        assert listed["provenance"].startswith(proxy.index_url)
        first = await get(session, listed["provenance"])
        assert (first.status, first.body) == (200, upstream.provenance_object(wheel.filename))
        await upstream.stop()  # the upstream is out of reach from now on
        again = await get(session, listed["provenance"])
    assert (again.status, again.body) == (200, first.body)
    assert upstream.count(f"/integrity/{wheel.filename}/provenance") == 1


async def test_a_page_with_provenance_refuses_a_host_header_that_is_no_host(
    fake_upstream_factory: FakeUpstreamFactory, proxy_factory: ProxyFactory
) -> None:
    upstream = await fake_upstream_factory(format="json", provenance=True)
    upstream.add_project("signed", ["1.0"])
    proxy = await proxy_factory(upstream)
    url = proxy.index_url + "signed/"
    async with raw_session() as session:
        named = await get(session, url, Accept=JSON, Host="cachepi.example:8080")
        (provenance,) = {f["provenance"] for f in named.json()["files"] if "whl" in f["filename"]}
        assert provenance.startswith("http://cachepi.example:8080/index/signed/")
        for host in ("a/b", 'x"><y', "a b", ""):
            refused = await get(session, url, Accept=JSON, Host=host)
            assert refused.status == 400, host
