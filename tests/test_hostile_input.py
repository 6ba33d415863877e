"""Hostile input, from clients and from upstreams.

Properties (hypothesis) of the parsers that see untrusted text first: names and filenames,
Accept and Accept-Encoding, Range. They complement the example tests in test_simple_*.py
with invariants that must hold for ANY input. Then the same over HTTP: hostile paths never
reach the upstream, hostile headers never break an answer, and hostile upstream pages
cannot smuggle a file in.
"""

from __future__ import annotations

import json
import posixpath
import re
from pathlib import PurePosixPath
from urllib.parse import quote, unquote

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cachepi.simple.names import is_safe_filename, is_valid_project_name, normalize
from cachepi.simple.negotiate import Format, choose_encoding, choose_format
from cachepi.web.conditional import RangeNotSatisfiable, parse_range, plan_response
from tests.fakeupstream import Dist, FakeUpstream
from tests.fetching import JSON, fetch, get_json
from tests.proxy import RunningProxy

# Characters that have fooled path and name checks somewhere: separators, encodings,
# controls, and Unicode that case-folds or looks like ASCII.
TRICKY = [
    *"aZ09._-~+!/\\%\x00\r\n\t :;?#@",
    "\u212a",  # KELVIN SIGN: lowercases to "k"
    "\u0130",  # I WITH DOT: lowercases to "i" + a combining dot
    "\u0131",  # dotless i
    "\u00e9",
    "\uff41",  # fullwidth "a"
    "\uff0e",  # fullwidth full stop
    "\u2024",  # one dot leader
    "\u2215",  # division slash
    "\u00a0",
]
tricky_text = st.text(alphabet=st.sampled_from(TRICKY) | st.characters(), max_size=80)
long_text = st.integers(190, 300).flatmap(
    lambda n: st.text(alphabet=st.sampled_from(TRICKY[:8]), min_size=n, max_size=n)
)
NORMALIZED_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")


# -- names and filenames ------------------------------------------------------------------


@given(tricky_text | long_text)
@example("\u212aelvin")
@example("a" * 201)
def test_a_valid_name_normalizes_to_one_plain_path_segment(name: str) -> None:
    if not is_valid_project_name(name):
        return
    assert name.isascii() and 1 <= len(name) <= 200
    canonical = normalize(name)
    assert NORMALIZED_NAME.fullmatch(canonical), canonical
    assert is_valid_project_name(canonical) and normalize(canonical) == canonical
    assert unquote(name) == name  # nothing left for a later percent-decoding to change


@given(tricky_text | long_text)
@example("a" * 256)
@example("..")
def test_a_safe_filename_stays_inside_any_directory_it_is_joined_to(filename: str) -> None:
    if not is_safe_filename(filename):
        return
    assert filename.isascii() and 1 <= len(filename) <= 255
    assert filename.isprintable() and " " not in filename
    assert not filename.startswith(".")
    assert posixpath.normpath(filename) == filename == PurePosixPath(filename).name
    assert "\\" not in filename and unquote(filename) == filename
    base = PurePosixPath("/cache/files")
    assert posixpath.normpath(base / filename).startswith(str(base) + "/")


# -- Accept and Accept-Encoding -----------------------------------------------------------

MEDIA = [
    Format.JSON.value,
    "application/vnd.pypi.simple.latest+json",
    Format.HTML_V1.value,
    "application/vnd.pypi.simple.latest+html",
    "text/html",
    "text/*",
    "application/*",
    "*/*",
    "application/json",
    "image/png",
]
Q_VALUES = ["1", "1.0", "0.9", "0.5", "0.2", "0.1", "0.01", "0.001", "0"]
_FORMAT_OF = {
    Format.JSON.value: Format.JSON,
    "application/vnd.pypi.simple.latest+json": Format.JSON,
    Format.HTML_V1.value: Format.HTML_V1,
    "application/vnd.pypi.simple.latest+html": Format.HTML_V1,
    "text/html": Format.HTML,
}
accept_entries = st.lists(
    st.tuples(
        st.sampled_from(MEDIA).map(lambda m: m.upper() if len(m) % 3 == 0 else m),
        st.none() | st.sampled_from(Q_VALUES),
    ),
    min_size=1,
    max_size=6,
)


def accept_header(entries: list[tuple[str, str | None]]) -> str:
    return ", ".join(media if q is None else f"{media};q={q}" for media, q in entries)


def effective_q(fmt: Format, entries: list[tuple[str, str | None]]) -> float:
    """RFC 9110: the most specific matching entry sets a type's q (the highest among
    equally specific ones); no match means not acceptable."""
    main = fmt.value.partition("/")[0]
    best: tuple[int, float] = (-1, 0.0)
    for media, q in entries:
        media = media.lower()
        if _FORMAT_OF.get(media) is fmt:
            rank = 2
        elif media == f"{main}/*":
            rank = 1
        elif media == "*/*":
            rank = 0
        else:
            continue
        best = max(best, (rank, 1.0 if q is None else float(q)))
    return best[1]


@given(accept_entries, st.randoms(use_true_random=False))
def test_the_chosen_format_has_the_highest_q_whatever_the_order(
    entries: list[tuple[str, str | None]], random: object
) -> None:
    chosen = choose_format(accept_header(entries), None)
    qualities = {fmt: effective_q(fmt, entries) for fmt in Format}
    if chosen is None:
        assert max(qualities.values()) == 0
    else:
        assert qualities[chosen] == max(qualities.values()) > 0
    shuffled = list(entries)
    random.shuffle(shuffled)  # type: ignore[attr-defined]
    assert choose_format(accept_header(shuffled), None) is chosen


CODINGS = ["gzip", "x-gzip", "zstd", "br", "deflate", "identity", "*"]
encoding_entries = st.lists(
    st.tuples(st.sampled_from(CODINGS), st.none() | st.sampled_from(Q_VALUES)),
    max_size=6,
    unique_by=lambda entry: entry[0],
)


@given(encoding_entries, st.randoms(use_true_random=False))
def test_the_chosen_coding_is_acceptable_whatever_the_order(
    entries: list[tuple[str, str | None]], random: object
) -> None:
    stated = {coding: 1.0 if q is None else float(q) for coding, q in entries}
    wildcard = stated.get("*", 0.0)

    def q_of(coding: str) -> float:
        return stated.get(coding, stated.get(f"x-{coding}", wildcard))

    chosen = choose_encoding(accept_header(entries))
    assert chosen in {"identity", "gzip", "zstd"}
    if chosen == "identity":
        assert q_of("gzip") == q_of("zstd") == 0
    else:
        assert q_of(chosen) == max(q_of("gzip"), q_of("zstd")) > 0
    shuffled = list(entries)
    random.shuffle(shuffled)  # type: ignore[attr-defined]
    assert choose_encoding(accept_header(shuffled)) == chosen


# -- Range --------------------------------------------------------------------------------

positions = st.integers(0, 3000).map(str) | st.integers(0, 2**70).map(str) | st.just("")
spaces = st.sampled_from(["", " ", "  "])
single_range = st.builds(
    lambda unit, s, first, last: f"{unit}{s}={s}{first}{s}-{s}{last}",
    st.sampled_from(["bytes", "BYTES", "Bytes", "items", "byte"]),
    spaces,
    positions,
    positions,
)
several_ranges = st.lists(
    st.builds(lambda a, b: f"{a}-{b}", positions, positions), min_size=2, max_size=3
).map(lambda parts: "bytes=" + ",".join(parts))
range_headers = single_range | several_ranges | st.text(max_size=30)
sizes = st.integers(0, 3000) | st.integers(0, 2**40)
HUGE = "9" * 5000  # fits easily in an 8 KiB header line
_ASCII_RANGE = re.compile(r"\s*bytes\s*=\s*([0-9]*)\s*-\s*([0-9]*)\s*", re.IGNORECASE)


def position(digits: str) -> int:
    """int(digits), but past any file for more digits than int() takes from a string."""
    return int(digits) if len(digits) <= 18 else 10**18


def starts_past_the_end(header: str, size: int) -> bool:
    """Is `header` one valid byte range whose first byte is at or past the end of the file
    (the only case RFC 9110 answers with 416)? A suffix range starts at size - N."""
    match = _ASCII_RANGE.fullmatch(header)
    if match is None or match[1] == match[2] == "":
        return False
    if match[1] == "":
        return size - min(position(match[2]), size) >= size
    if match[2] and position(match[2]) < position(match[1]):
        return False  # invalid: ignored, so no 416
    return position(match[1]) >= size


@given(range_headers, sizes)
@example("bytes=-5", 0)
@example("bytes=0-", 0)
@example(f"bytes={HUGE}-", 10)
@example(f"bytes=0-{HUGE}", 10)
@example(f"bytes=-{HUGE}", 10)
def test_parse_range_gives_a_span_inside_the_file_or_says_unsatisfiable(
    header: str, size: int
) -> None:
    try:
        span = parse_range(header, size)
    except RangeNotSatisfiable:
        assert starts_past_the_end(header, size)
        return
    if span is not None:
        start, stop = span
        assert 0 <= start < stop <= size, span


if_ranges = st.none() | st.sampled_from(['"etag"', '"other"', "Wed, 21 Oct 2015 07:28:00 GMT"])
if_none_matches = st.none() | st.sampled_from(['"etag"', '"other"', "*", 'W/"etag"', ""])


@given(st.none() | range_headers, if_ranges, if_none_matches, st.none() | sizes)
@example(f"bytes={HUGE}-", None, None, 10)
@example("bytes=-5", None, None, 0)
def test_plan_response_never_raises_and_stays_inside_the_file(
    range_header: str | None, if_range: str | None, if_none_match: str | None, size: int | None
) -> None:
    headers = {
        name: value
        for name, value in (
            ("Range", range_header),
            ("If-Range", if_range),
            ("If-None-Match", if_none_match),
        )
        if value is not None
    }
    plan = plan_response(headers, size, '"etag"')
    assert plan.status in {200, 206, 304, 416}
    if plan.status == 304:
        assert if_none_match in {'"etag"', "*", 'W/"etag"'}
    elif plan.status == 416:
        assert size is not None and range_header is not None
        assert if_range in (None, '"etag"')
        assert starts_past_the_end(range_header, size)
        assert plan.headers == {"Content-Range": f"bytes */{size}"}
    elif plan.status == 206:
        assert size is not None and plan.stop is not None
        assert 0 <= plan.start < plan.stop <= size
        assert plan.headers["Content-Range"] == f"bytes {plan.start}-{plan.stop - 1}/{size}"
    elif size is not None:
        assert (plan.start, plan.stop) == (0, size)


# -- over HTTP: hostile paths never reach the upstream ------------------------------------

HOSTILE_PATHS = [
    # project names
    "/index/%2e%2e/",
    "/index/%2E%2e/lib-1.0.tar.gz",
    "/index/..%2F..%2Fetc/",
    "/index/lib%2F..%2F..%2Fetc/",
    "/index/lib%00/",
    "/index/lib%0d%0aX-Injected:%20yes/",
    "/index/lib%0a/",
    "/index/lib%20/",
    "/index/lib%5C../",
    "/index/%252e%252e/",
    "/index/" + "a" * 201 + "/",
    "/index/caf%C3%A9/",
    "/index/%E2%84%AAelvin/",  # KELVIN SIGN + "elvin"
    "/index/l%C4%B1b/",  # dotless i
    "/index/%EF%BD%8C%EF%BD%89%EF%BD%82/",  # fullwidth "lib"
    "/simple/%2e%2e/",
    "/simple/lib%00/lib-1.0.tar.gz",
    # filenames
    "/index/lib/%2e%2e",
    "/index/lib/..%2F..%2Fetc%2Fpasswd",
    "/index/lib/lib-1.0.tar.gz%00",
    "/index/lib/lib-1.0.tar.gz%00.png",
    "/index/lib/lib-1.0%0d%0aX-Injected:%20yes.tar.gz",
    "/index/lib/lib-1.0.tar.gz%0a",
    "/index/lib/%2Flib-1.0.tar.gz",
    "/index/lib/lib-1.0.tar.gz%2F..",
    "/index/lib/lib-1.0.tar.gz%5C..%5C..",
    "/index/lib/%252e%252e",
    "/index/lib/.lib-1.0.tar.gz",
    "/index/lib/" + "l" * 256,
    "/index/lib/lib-" + "1" * 300 + ".tar.gz",
    "/index/lib/caf%C3%A9-1.0.tar.gz",
    "/index/lib/lib-1.0%E2%88%95x.tar.gz",  # DIVISION SLASH
    "/index/lib/lib-1.0.tar.gz.metadata%00",
]


@pytest.mark.parametrize("path", HOSTILE_PATHS)
async def test_hostile_path_is_refused_without_asking_upstream(
    path: str, proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    reply = await fetch(proxy.url + path, raw_path=True, allow_redirects=False, headers=JSON)
    assert reply.status in (400, 404), (reply.status, reply.body)
    assert "X-Injected" not in reply.headers
    assert fake_upstream.requests == []


@pytest.mark.parametrize("project", ["%2e%2e", "lib%00", "lib%0d%0aX:%20y", "a" * 201])
async def test_hostile_invalidation_is_refused(
    project: str, proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    reply = await fetch(f"{proxy.url}/cache/{project}", method="DELETE", raw_path=True)
    assert reply.status in (400, 404)
    form = await fetch(
        f"{proxy.url}/cache/invalidate", method="POST", data={"project": unquote(project)}
    )
    assert form.status == 400
    assert fake_upstream.requests == []


# -- over HTTP: hostile headers never break an answer -------------------------------------


async def test_a_huge_range_number_is_ignored_or_unsatisfiable_not_an_error(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    wheel = fake_upstream.dists("lib")[0]
    url = f"{proxy.index_url}lib/{wheel.filename}"
    assert (await fetch(url)).sha256 == wheel.sha256  # cached now
    for header in (f"bytes={HUGE}-", f"bytes=0-{HUGE}", f"bytes=-{HUGE}"):
        reply = await fetch(url, headers={"Range": header})
        assert reply.status in (200, 206, 416), (header[:20], reply.status, reply.body[:200])
        if reply.status == 200:
            assert reply.sha256 == wheel.sha256


async def test_a_range_of_an_empty_file_is_never_a_206(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    empty = fake_upstream.add_dist(Dist.from_bytes("lib-0.1.tar.gz", b""))
    url = f"{proxy.index_url}lib/{empty.filename}"
    assert (await fetch(url)).status == 200
    for header in ("bytes=-5", "bytes=0-", "bytes=0-0"):
        reply = await fetch(url, headers={"Range": header})
        assert reply.status in (200, 416), (header, reply.status, dict(reply.headers))
        if reply.status == 200:
            assert reply.body == b""


async def test_an_absurd_accept_header_still_gets_a_page(proxy: RunningProxy) -> None:
    # About 6 KiB: under the 8 KiB a header line may have, over anything a client sends.
    accept = ", ".join(f"x/y{i};q=0.{i % 10};a=b" for i in range(280))
    reply = await fetch(proxy.index_url + "lib/", headers={"Accept": accept + ", */*;q=0.1"})
    assert reply.status == 200


# -- hostile upstream pages ---------------------------------------------------------------


def hostile_entries(upstream: FakeUpstream, good: Dist) -> list[tuple[str, str]]:
    """(filename, url) pairs no file may be served from, each with a plausible twin."""
    real_url = upstream.file_url(good.filename)
    return [
        ("../../x.whl", real_url),
        ("a/b.whl", real_url),
        ("x.whl%00", real_url),
        ("hostile-1.0-py3-none-any.whl\x00", real_url),
        ("..", real_url),
        ("hostile-2.0-py3-none-any.whl", "file:///etc/passwd"),
        ("hostile-3.0-py3-none-any.whl", f"ftp://127.0.0.1:{upstream.port}/files/x.whl"),
        ("hostile-4.0-py3-none-any.whl", "javascript:alert(1)"),
        ("hostile-5.0-py3-none-any.whl", "data:application/zip;base64,UEsFBgAAAAAAAAAAAAAAAAAA"),
    ]


def json_page(entries: list[tuple[str, str]], good: Dist, upstream: FakeUpstream) -> bytes:
    files = [
        {"filename": filename, "url": url, "hashes": {"sha256": good.sha256}}
        for filename, url in entries
    ]
    files.append(
        {
            "filename": good.filename,
            "url": upstream.file_url(good.filename),
            "hashes": {"sha256": good.sha256},
        }
    )
    return json.dumps({"meta": {"api-version": "1.0"}, "name": "hostile", "files": files}).encode()


def html_page(entries: list[tuple[str, str]], good: Dist, upstream: FakeUpstream) -> bytes:
    links = [
        f'<a href="{url}#sha256={good.sha256}">{filename}</a>' for filename, url in entries
    ] + [
        f'<a href="{upstream.file_url(good.filename)}#sha256={good.sha256}">{good.filename}</a>',
        # Percent-encoded separators in the last segment: decoded, they are a traversal.
        f'<a href="..%2F..%2Fx.whl#sha256={good.sha256}">x.whl</a>',
        f'<a href="a%2Fb.whl#sha256={good.sha256}">a/b.whl</a>',
        f'<a href="x.whl%00#sha256={good.sha256}">x.whl</a>',
    ]
    return ("<!DOCTYPE html><html><body>" + "<br>".join(links) + "</body></html>").encode()


@pytest.mark.parametrize("page_format", ["json", "html"])
async def test_hostile_upstream_entries_are_neither_listed_nor_fetched(
    page_format: str, fake_upstream: FakeUpstream, proxy: RunningProxy
) -> None:
    (good,) = fake_upstream.add_project("hostile", ["9.0"], sdist=False)
    entries = hostile_entries(fake_upstream, good)
    if page_format == "json":
        fake_upstream.serve_raw("/simple/hostile/", json_page(entries, good, fake_upstream))
    else:
        body = html_page(entries, good, fake_upstream)
        fake_upstream.serve_raw("/simple/hostile/", body, "text/html")

    page = await get_json(proxy.index_url + "hostile/")
    assert page.status == 200, page.body
    assert [f["filename"] for f in json.loads(page.body)["files"]] == [good.filename]
    html = await fetch(proxy.index_url + "hostile/", headers={"Accept": "text/html"})
    assert html.body.count(b"<a ") == 1

    for filename, _ in entries:
        reply = await fetch(
            f"{proxy.index_url}hostile/{quote(filename, safe='')}",
            raw_path=True,
            allow_redirects=False,
        )
        assert reply.status in (400, 404), (filename, reply.status)
    assert fake_upstream.count_prefix("/files/") == 0
    served = await fetch(f"{proxy.index_url}hostile/{good.filename}")
    assert served.sha256 == good.sha256


async def test_links_that_are_not_distributions_of_the_project_are_not_listed(
    fake_upstream: FakeUpstream, proxy: RunningProxy
) -> None:
    """An upstream entry is listed only if its filename parses as a wheel or sdist of that
    project (README, "When things go wrong": hostile input).
    Relative links are resolved as URLs (PyPI's own pages use "../../packages/..."), so
    what is judged is the filename they end in."""
    (good,) = fake_upstream.add_project("hostile", ["9.0"], sdist=False)
    links = [
        f'<a href="{fake_upstream.file_url(good.filename)}#sha256={good.sha256}">ok</a>',
        f'<a href="../../../../etc/passwd#sha256={good.sha256}">passwd</a>',
        f'<a href="../../x.whl#sha256={good.sha256}">x.whl</a>',
        f'<a href="/files/lib-1.0.tar.gz#sha256={good.sha256}">another project</a>',
    ]
    fake_upstream.serve_raw("/simple/hostile/", "<br>".join(links).encode(), "text/html")
    page = await get_json(proxy.index_url + "hostile/")
    assert [f["filename"] for f in json.loads(page.body)["files"]] == [good.filename]
