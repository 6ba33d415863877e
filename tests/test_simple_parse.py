import contextlib
import hashlib
import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from selectolax.lexbor import LexborHTMLParser

from cachepi.simple.htmlscan import scan, unescape
from cachepi.simple.model import File, Project, ProjectList
from cachepi.simple.parse import (
    ParseError,
    parse_project_html,
    parse_project_json,
    parse_project_list_html,
    parse_project_list_json,
    with_serial_header,
)

PAGE_URL = "https://index.example/simple/sampleproject/"
FILES_HOST = "https://files.example/packages"


def digest(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


WHEEL = "sampleproject-4.0.0-py3-none-any.whl"
SDIST = "sampleproject-4.0.0.tar.gz"
OLD_WHEEL = "sampleproject-1.2.0-py2.py3-none-any.whl"

# A PEP 691 page in the shape PyPI serves it (keys as PyPI orders them, both metadata keys).
PYPI_JSON = {
    "meta": {"_last-serial": "22470170", "api-version": "1.4"},
    "name": "sampleproject",
    "project-status": {"status": "active"},
    "files": [
        {
            "core-metadata": False,
            "data-dist-info-metadata": False,
            "filename": OLD_WHEEL,
            "hashes": {"sha256": digest(OLD_WHEEL)},
            "provenance": None,
            "requires-python": None,
            "size": 3795,
            "upload-time": "2015-06-14T14:38:05.869374Z",
            "url": f"{FILES_HOST}/30/52/{OLD_WHEEL}",
            "yanked": "broken on Python 2",
        },
        {
            "core-metadata": {"sha256": digest("metadata")},
            "data-dist-info-metadata": {"sha256": digest("metadata")},
            "filename": WHEEL,
            "hashes": {"sha256": digest(WHEEL).upper()},
            "provenance": "https://index.example/integrity/sampleproject/4.0.0/x/provenance",
            "requires-python": ">=3.8",
            "size": 4662,
            "upload-time": "2024-04-21T18:21:52.125849Z",
            "url": f"{FILES_HOST}/ec/a8/{WHEEL}",
            "yanked": False,
        },
        {
            "core-metadata": False,
            "data-dist-info-metadata": False,
            "filename": SDIST,
            "hashes": {"sha256": digest(SDIST)},
            "provenance": None,
            "requires-python": ">=3.8",
            "size": 5294,
            "upload-time": "2024-04-21T18:21:53.520000Z",
            "url": f"{FILES_HOST}/67/2a/{SDIST}",
            "yanked": False,
        },
    ],
    "versions": ["1.2.0", "4.0.0"],
}

# A PEP 503 page in the shape PyPI serves it.
PYPI_HTML = f"""<!DOCTYPE html>
<html>
  <head>
    <meta name="pypi:repository-version" content="1.4">
    <meta name="pypi:project-status" content="archived">
    <meta name="pypi:project-status-reason" content="moved to &quot;newproject&quot;">
    <title>Links for sampleproject</title>
  </head>
  <body>
    <h1>Links for sampleproject</h1>
    <a href="{FILES_HOST}/30/52/{OLD_WHEEL}#sha256={digest(OLD_WHEEL)}" data-yanked="broken on Python 2">{OLD_WHEEL}</a><br />
    <a href="{FILES_HOST}/ec/a8/{WHEEL}#sha256={digest(WHEEL)}" data-requires-python="&gt;=3.8" data-dist-info-metadata="sha256={digest("metadata")}" data-core-metadata="sha256={digest("metadata")}" data-provenance="https://index.example/integrity/sampleproject/4.0.0/x/provenance">{WHEEL}</a><br />
    <a href="{FILES_HOST}/67/2a/{SDIST}#sha256={digest(SDIST)}" data-requires-python="&gt;=3.8" data-yanked="">{SDIST}</a><br />
    </body>
</html>
<!--SERIAL 22470170-->""".encode()  # noqa: E501


def json_page(*files: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps(
        {"meta": {"api-version": "1.1"}, "name": "foo", "files": list(files), **extra}
    ).encode()


def json_file(filename: str = "foo-1.0.tar.gz", **fields: Any) -> dict[str, Any]:
    return {
        "filename": filename,
        "url": f"https://files.example/{filename}",
        "hashes": {},
        **fields,
    }


def html_page(*anchors: str, head: str = "") -> bytes:
    return (
        f"<!DOCTYPE html><html><head>{head}</head><body>{''.join(anchors)}</body></html>".encode()
    )


# --- JSON ---------------------------------------------------------------------------------------


def test_pypi_json_page_parses_into_the_model() -> None:
    project = parse_project_json(json.dumps(PYPI_JSON).encode(), PAGE_URL)
    assert project == Project(
        name="sampleproject",
        files=[
            File(
                filename=OLD_WHEEL,
                url=f"{FILES_HOST}/30/52/{OLD_WHEEL}",
                hashes={"sha256": digest(OLD_WHEEL)},
                yanked="broken on Python 2",
                size=3795,
                upload_time="2015-06-14T14:38:05.869374Z",
            ),
            File(
                filename=WHEEL,
                url=f"{FILES_HOST}/ec/a8/{WHEEL}",
                hashes={"sha256": digest(WHEEL)},
                requires_python=">=3.8",
                core_metadata={"sha256": digest("metadata")},
                size=4662,
                upload_time="2024-04-21T18:21:52.125849Z",
                provenance="https://index.example/integrity/sampleproject/4.0.0/x/provenance",
            ),
            File(
                filename=SDIST,
                url=f"{FILES_HOST}/67/2a/{SDIST}",
                hashes={"sha256": digest(SDIST)},
                requires_python=">=3.8",
                size=5294,
                upload_time="2024-04-21T18:21:53.520000Z",
            ),
        ],
        versions=["1.2.0", "4.0.0"],
        last_serial="22470170",
        status="active",
    )


def test_json_relative_file_urls_resolve_against_the_page() -> None:
    body = json_page(
        json_file("foo-1.0.tar.gz", url="../../packages/foo-1.0.tar.gz"),
        json_file("foo-1.1.tar.gz", url="/root/foo-1.1.tar.gz"),
        json_file("foo-1.2.tar.gz", url="//mirror.example/foo-1.2.tar.gz"),
    )
    project = parse_project_json(body, "http://devpi.example/root/pypi/+simple/foo/")
    assert [file.url for file in project.files] == [
        "http://devpi.example/root/pypi/packages/foo-1.0.tar.gz",
        "http://devpi.example/root/foo-1.1.tar.gz",
        "http://mirror.example/foo-1.2.tar.gz",
    ]


def test_json_file_url_keeps_query_and_loses_fragment() -> None:
    body = json_page(json_file(url="https://files.example/foo-1.0.tar.gz?token=1#sha256=00"))
    assert parse_project_json(body, PAGE_URL).files[0].url == (
        "https://files.example/foo-1.0.tar.gz?token=1"
    )


def test_json_legacy_metadata_keys_are_fallbacks_for_core_metadata() -> None:
    metadata = {"sha256": digest("m")}
    body = json_page(
        json_file("foo-1.0.tar.gz", **{"dist-info-metadata": metadata}),
        json_file("foo-1.1.tar.gz", **{"data-dist-info-metadata": True}),
        json_file("foo-1.2.tar.gz", **{"core-metadata": False, "dist-info-metadata": True}),
    )
    files = parse_project_json(body, PAGE_URL).files
    assert [file.core_metadata for file in files] == [metadata, True, False]


def test_json_hashes_are_lowercased_and_malformed_ones_dropped() -> None:
    good = digest("x")
    body = json_page(
        json_file(
            hashes={
                "SHA256": good.upper(),
                "md5": "not-hex-at-all-not-hex-at-all-xx",
                "sha512": "abcd",  # wrong length
                "whirlpool": good,  # no such algorithm here
            }
        )
    )
    assert parse_project_json(body, PAGE_URL).files[0].hashes == {"sha256": good}


def test_json_empty_yanked_reason_means_not_yanked_as_for_pip() -> None:
    body = json_page(json_file(yanked=""), json_file("foo-2.0.tar.gz", yanked=True))
    assert [file.yanked for file in parse_project_json(body, PAGE_URL).files] == [False, True]


def test_json_project_status_with_reason() -> None:
    body = json_page(**{"project-status": {"status": "quarantined", "reason": "malware"}})
    project = parse_project_json(body, PAGE_URL)
    assert (project.status, project.status_reason) == ("quarantined", "malware")


def test_json_page_without_status_or_serial_or_versions_leaves_them_unset() -> None:
    project = parse_project_json(json_page(), PAGE_URL)
    assert (project.status, project.last_serial, project.versions) == (None, None, None)


@pytest.mark.parametrize(
    "filename",
    [
        "../../../etc/passwd",
        "..",
        ".",
        "a/b-1.0.tar.gz",
        "a\\b-1.0.tar.gz",
        "foo-1.0.tar.gz\x00.png",
        "foo\n-1.0.tar.gz",
        "caf\u00e9-1.0.tar.gz",
        "",
        "x" * 256,
    ],
)
def test_json_entries_with_hostile_filenames_are_skipped(filename: str) -> None:
    body = json_page(json_file(filename), json_file("foo-1.0.tar.gz"))
    assert [file.filename for file in parse_project_json(body, PAGE_URL).files] == [
        "foo-1.0.tar.gz"
    ]


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "file:///etc/passwd",
        "ftp://files.example/foo-2.0.tar.gz",
        "data:text/plain,hi",
        "http://[::1/foo-2.0.tar.gz",
        "",
    ],
)
def test_json_entries_whose_url_is_not_http_are_skipped(url: str) -> None:
    body = json_page(json_file("foo-2.0.tar.gz", url=url), json_file("foo-1.0.tar.gz"))
    assert [file.filename for file in parse_project_json(body, PAGE_URL).files] == [
        "foo-1.0.tar.gz"
    ]


def test_json_duplicate_filename_keeps_the_first_entry() -> None:
    first, second = digest("first"), digest("second")
    body = json_page(json_file(hashes={"sha256": first}), json_file(hashes={"sha256": second}))
    assert [file.hashes for file in parse_project_json(body, PAGE_URL).files] == [{"sha256": first}]


def test_json_pep_708_tracks_in_meta_and_alternate_locations_at_the_top() -> None:
    body = json.dumps(
        {
            "meta": {"api-version": "1.2", "tracks": ["https://pypi.example/simple/foo/"]},
            "name": "foo",
            "files": [],
            "alternate-locations": ["https://alt.example/simple/foo/", "../../mirror/foo/"],
        }
    ).encode()
    project = parse_project_json(body, PAGE_URL)
    assert project.tracks == ["https://pypi.example/simple/foo/"]
    # A relative URL means what it means on the page: resolved against it.
    assert project.alternate_locations == [
        "https://alt.example/simple/foo/",
        "https://index.example/mirror/foo/",
    ]


def test_pep_708_urls_are_a_set_of_http_urls() -> None:
    urls = ["https://a.example/x/", "javascript:alert(1)", "https://a.example/x/#f", "", "x:"]
    body = json_page(
        **{"alternate-locations": urls, "meta": {"api-version": "1.2", "tracks": urls}}
    )
    project = parse_project_json(body, PAGE_URL)
    assert project.tracks == project.alternate_locations == ["https://a.example/x/"]


def test_json_pep_708_keys_of_the_wrong_shape_make_the_page_unreadable() -> None:
    with pytest.raises(ParseError):
        parse_project_json(json_page(**{"alternate-locations": "https://a.example/x/"}), PAGE_URL)


def test_json_provenance_must_be_an_http_url() -> None:
    body = json_page(json_file(provenance="javascript:alert(1)"))
    assert parse_project_json(body, PAGE_URL).files[0].provenance is None


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html></html>",
        b"[]",
        b'{"files": []}',  # no name
        b'{"name": "foo", "files": "nope"}',
        b'{"name": "foo", "files": [{"filename": "a.whl"}]}',  # no url
        b'{"name": "foo", "files": [{"filename": "a.whl", "url": "x", "size": 1.5}]}',
        b'{"name": "../etc", "files": []}',
        b'{"name": "foo", "files": [], "meta": {"api-version": "2.0"}}',
        b'{"name": "f\xff\xfeo", "files": []}',
        b'{"name": "\\ud800", "files": []}',
    ],
)
def test_malformed_json_raises_parse_error(body: bytes) -> None:
    with pytest.raises(ParseError):
        parse_project_json(body, PAGE_URL)


# --- HTML ---------------------------------------------------------------------------------------


def test_pypi_html_page_parses_into_the_model() -> None:
    project = parse_project_html(PYPI_HTML, PAGE_URL, "sampleproject")
    assert project == Project(
        name="sampleproject",
        files=[
            File(
                filename=OLD_WHEEL,
                url=f"{FILES_HOST}/30/52/{OLD_WHEEL}",
                hashes={"sha256": digest(OLD_WHEEL)},
                yanked="broken on Python 2",
            ),
            File(
                filename=WHEEL,
                url=f"{FILES_HOST}/ec/a8/{WHEEL}",
                hashes={"sha256": digest(WHEEL)},
                requires_python=">=3.8",
                core_metadata={"sha256": digest("metadata")},
                provenance="https://index.example/integrity/sampleproject/4.0.0/x/provenance",
            ),
            File(
                filename=SDIST,
                url=f"{FILES_HOST}/67/2a/{SDIST}",
                hashes={"sha256": digest(SDIST)},
                requires_python=">=3.8",
                yanked=True,
            ),
        ],
        last_serial=22470170,
        status="archived",
        status_reason='moved to "newproject"',
    )


def test_html_relative_links_resolve_against_the_page() -> None:
    body = html_page('<a href="../../packages/foo-1.0.tar.gz">foo-1.0.tar.gz</a>')
    project = parse_project_html(body, "http://devpi.example/root/+simple/foo/", "foo")
    assert project.files[0].url == "http://devpi.example/root/packages/foo-1.0.tar.gz"


def test_html_base_href_wins_over_the_page_url() -> None:
    body = html_page(
        '<a href="foo-1.0.tar.gz">foo-1.0.tar.gz</a>',
        head='<base href="https://mirror.example/files/">',
    )
    project = parse_project_html(body, PAGE_URL, "foo")
    assert project.files[0].url == "https://mirror.example/files/foo-1.0.tar.gz"


def test_html_relative_base_href_resolves_against_the_page() -> None:
    body = html_page('<a href="foo-1.0.tar.gz">x</a>', head='<base href="/files/">')
    project = parse_project_html(body, PAGE_URL, "foo")
    assert project.files[0].url == "https://index.example/files/foo-1.0.tar.gz"


def test_html_filename_is_the_percent_decoded_last_segment_not_the_link_text() -> None:
    body = html_page('<a href="/p/foo-1.0%2Blocal.tar.gz?x=1#md5=00">click here</a>')
    file = parse_project_html(body, PAGE_URL, "foo").files[0]
    assert file.filename == "foo-1.0+local.tar.gz"
    assert file.url == "https://index.example/p/foo-1.0%2Blocal.tar.gz?x=1"


@pytest.mark.parametrize(
    "href",
    [
        "/p/%2e%2e",
        "/p/..",
        "/p/%2E%2E",
        "/p/..%2Fetc%2Fpasswd",
        "/p/foo%2Fbar-1.0.tar.gz",
        "/p/foo%5Cbar-1.0.tar.gz",
        "/p/foo-1.0.tar.gz%00.png",
        "/p/caf%C3%A9-1.0.tar.gz",
        "/p/bad%ff-1.0.tar.gz",
        "/p/",
        "/p/.foo-1.0.tar.gz",
        "javascript:alert('foo-1.0.tar.gz')",
        "file:///tmp/foo-1.0.tar.gz",
        "http://[::1/foo-1.0.tar.gz",
        "",
    ],
)
def test_html_links_with_hostile_paths_are_skipped(href: str) -> None:
    body = html_page(f'<a href="{href}">x</a>', '<a href="/p/foo-2.0.tar.gz">ok</a>')
    assert [file.filename for file in parse_project_html(body, PAGE_URL, "foo").files] == [
        "foo-2.0.tar.gz"
    ]


def test_html_anchor_without_href_is_ignored() -> None:
    body = html_page('<a name="top">foo-1.0.tar.gz</a>')
    assert parse_project_html(body, PAGE_URL, "foo").files == []


def test_html_fragment_hash_is_lowercased_and_non_hash_fragments_ignored() -> None:
    good = digest("x")
    body = html_page(
        f'<a href="/p/foo-1.0.tar.gz#SHA256={good.upper()}">a</a>',
        '<a href="/p/foo-1.1.tar.gz#egg=cafe">b</a>',
        '<a href="/p/foo-1.2.tar.gz#sha256=zz">c</a>',
    )
    files = parse_project_html(body, PAGE_URL, "foo").files
    assert [file.hashes for file in files] == [{"sha256": good}, {}, {}]


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ('data-core-metadata="true"', True),
        ('data-core-metadata="TRUE"', True),
        (f'data-core-metadata="sha256={digest("m")}"', {"sha256": digest("m")}),
        (f'data-dist-info-metadata="sha256={digest("m")}"', {"sha256": digest("m")}),
        ('data-dist-info-metadata="true"', True),
        ('data-core-metadata="true" data-dist-info-metadata="sha256=00"', True),
        ('data-core-metadata="sha256=nothex"', False),
        ('data-core-metadata="false"', False),
        ("data-core-metadata", False),
        ("", False),
    ],
)
def test_html_core_metadata_attribute(attributes: str, expected: object) -> None:
    body = html_page(f'<a href="/p/foo-1.0.tar.gz" {attributes}>a</a>')
    assert parse_project_html(body, PAGE_URL, "foo").files[0].core_metadata == expected


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ("data-yanked", True),
        ('data-yanked=""', True),
        ('data-yanked="security &amp; stuff"', "security & stuff"),
        ("", False),
    ],
)
def test_html_yanked_attribute(attributes: str, expected: object) -> None:
    body = html_page(f'<a href="/p/foo-1.0.tar.gz" {attributes}>a</a>')
    assert parse_project_html(body, PAGE_URL, "foo").files[0].yanked == expected


def test_html_requires_python_is_unescaped() -> None:
    body = html_page('<a href="/p/foo-1.0.tar.gz" data-requires-python="&gt;=3.8,&lt;4">a</a>')
    assert parse_project_html(body, PAGE_URL, "foo").files[0].requires_python == ">=3.8,<4"


def test_html_pep_708_metas_each_give_one_url() -> None:
    head = (
        '<meta name="pypi:tracks" content="https://pypi.example/simple/foo/">'
        '<meta name="pypi:tracks" content="https://test.example/simple/foo/">'
        '<meta name="pypi:tracks">'  # no content: nothing
        '<meta name="pypi:alternate-locations" content="/other/foo/">'
        '<meta name="pypi:alternate-locations" content="https://a.example/?x=1&amp;y=2">'
    )
    project = parse_project_html(html_page(head=head), PAGE_URL, "foo")
    assert project.tracks == [
        "https://pypi.example/simple/foo/",
        "https://test.example/simple/foo/",
    ]
    assert project.alternate_locations == [
        "https://index.example/other/foo/",
        "https://a.example/?x=1&y=2",
    ]


def test_html_page_without_pep_708_metas_claims_nothing() -> None:
    project = parse_project_html(html_page(), PAGE_URL, "foo")
    assert (project.tracks, project.alternate_locations) == ([], [])


def test_html_page_of_a_newer_major_version_is_refused() -> None:
    body = html_page(head='<meta name="pypi:repository-version" content="2.0">')
    with pytest.raises(ParseError):
        parse_project_html(body, PAGE_URL, "foo")


def test_html_page_without_links_is_an_empty_project() -> None:
    assert parse_project_html(b"", PAGE_URL, "foo") == Project(name="foo")


# --- root pages ---------------------------------------------------------------------------------


def test_json_project_list_parses_names_and_serial() -> None:
    body = json.dumps(
        {
            "meta": {"_last-serial": 987, "api-version": "1.1"},
            "projects": [{"name": "Django"}, {"name": "zope.interface"}, {"name": "../evil"}],
        }
    ).encode()
    assert parse_project_list_json(body) == ProjectList.of(
        ["Django", "zope.interface"], last_serial=987
    )


@pytest.mark.parametrize(
    ("page", "header", "expected"),
    [
        (Project(name="six"), "26356948", 26356948),  # PyPI's HTML says it only there
        (Project(name="six"), " 7 ", 7),
        (ProjectList(), "12", 12),
        (Project(name="six", last_serial="5"), "6", "5"),  # the page's own word wins
        (Project(name="six"), None, None),
        (Project(name="six"), "", None),
        (Project(name="six"), "12a", None),
        (Project(name="six"), "-1", None),
        (Project(name="six"), "1" * 20, None),
        (Project(name="six"), "\uff11", None),  # a digit, but not an ASCII one
    ],
)
def test_serial_header_stands_in_for_a_page_without_one(
    page: Project | ProjectList, header: str | None, expected: object
) -> None:
    assert with_serial_header(page, header).last_serial == expected


def test_html_project_list_uses_link_texts() -> None:
    body = b"""<!DOCTYPE html>
<html>
  <head>
    <meta name="pypi:repository-version" content="1.4">
    <title>Simple index</title>
  </head>
  <body>
    <a href="/simple/django/">Django</a>
    <a href="/simple/zope-interface/">zope.interface</a>
    <a href="/simple/x/">caf\xc3\xa9</a>
    <a href="/simple/y/">  spaced  </a>
  </body>
</html>
<!--SERIAL 987-->"""
    assert parse_project_list_html(body) == ProjectList.of(
        ["Django", "zope.interface", "spaced"], last_serial=987
    )


@pytest.mark.parametrize("body", [b"", b"{}", b'{"projects": [{"nom": "x"}]}', b"\xff"])
def test_malformed_json_project_list_raises_parse_error(body: bytes) -> None:
    with pytest.raises(ParseError):
        parse_project_list_json(body)


# --- properties ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(), children),
    max_leaves=10,
)
file_keys = st.sampled_from(
    ["filename", "url", "hashes", "requires-python", "core-metadata", "yanked", "size"]
)


@given(st.binary())
def test_arbitrary_bytes_parse_to_a_project_or_raise_parse_error(body: bytes) -> None:
    for parse in (
        lambda: parse_project_json(body, PAGE_URL),
        lambda: parse_project_html(body, PAGE_URL, "foo"),
    ):
        with contextlib.suppress(ParseError):
            assert isinstance(parse(), Project)


@given(st.binary())
def test_arbitrary_bytes_parse_to_a_project_list_or_raise_parse_error(body: bytes) -> None:
    for parse in (parse_project_list_json, parse_project_list_html):
        with contextlib.suppress(ParseError):
            assert isinstance(parse(body), ProjectList)


@given(st.lists(st.dictionaries(file_keys, json_values), max_size=4))
def test_json_pages_with_arbitrary_file_entries_never_crash(entries: list[Any]) -> None:
    body = json.dumps({"name": "foo", "files": entries}).encode()
    try:
        project = parse_project_json(body, PAGE_URL)
    except ParseError:
        return
    assert all(file.url.startswith(("http://", "https://")) for file in project.files)


@given(st.text(), st.text())
def test_html_links_with_arbitrary_href_never_crash_nor_escape_one_segment(
    href: str, base: str
) -> None:
    body = html_page(f"<a href='{href}'>x</a>", head=f"<base href='{base}'>")
    for file in parse_project_html(body, PAGE_URL, "foo").files:
        assert "/" not in file.filename
        assert file.filename not in ("", ".", "..")
        assert file.url.startswith(("http://", "https://"))


# --- hostile shapes: bounded time, ParseError and nothing else -------------------------------


def test_deeply_nested_html_parses_in_linear_time() -> None:
    # 100,000 nested elements took an HTML5 tree builder (lexbor) minutes of CPU.
    body = b"<div>" * 100_000 + b'<a href="/p/foo-1.0.tar.gz">x</a>' + b"</div>" * 100_000
    began = time.process_time()
    project = parse_project_html(body, PAGE_URL, "foo")
    assert [file.filename for file in project.files] == ["foo-1.0.tar.gz"]
    names = parse_project_list_html(body.replace(b">x<", b">foo<")).names()
    assert names == ["foo"]
    assert time.process_time() - began < 5


@pytest.mark.parametrize(
    "body",
    [
        b'{"name": "foo", "files": [], "x": ' + b"[" * 1000 + b"]" * 1000 + b"}",
        b'{"name": "foo", "files": [], "x": ' + b'{"a":' * 1000 + b"1" + b"}" * 1000 + b"}",
        b'{"name": "foo", "files": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
)
def test_deeply_nested_json_is_a_parse_error(body: bytes) -> None:
    with pytest.raises(ParseError):
        parse_project_json(body, PAGE_URL)
    with pytest.raises(ParseError):
        parse_project_list_json(body.replace(b'"files"', b'"projects"'))


@pytest.mark.parametrize(
    ("text", "in_attribute", "in_text"),
    [
        ("?a=1&not=2&amp;b", "?a=1&not=2&b", "?a=1\xac=2&b"),
        ("&notit;&notin;", "&notit;\u2209", "\xacit;\u2209"),
        ("&copy=3&copy;x&copyx", "&copy=3\xa9x&copyx", "\xa9=3\xa9x\xa9x"),
        ("&#0;&#x80;&#1;&#xD800;&#x110000;&#65&#x41x&", "\ufffd\u20ac\x01\ufffd\ufffdAAx&", None),
        ("&#99999999999999999999;&#x;&#;&", "\ufffd&#x;&#;&", None),
        ("&AMP;&AMP&lt&LT;&ltx", "&&<<&ltx", "&&<<<x"),
        ("&amp;lt;", "&lt;", "&lt;"),
    ],
)
def test_character_references_decode_as_in_html5(
    text: str, in_attribute: str, in_text: str | None
) -> None:
    assert unescape(text, attribute=True) == in_attribute
    assert unescape(text) == (in_attribute if in_text is None else in_text)


# --- the anchor scanner reads what an HTML5 parser reads -------------------------------------
# Documents made of the pieces index pages (and hostile ones) are made of; every anchor,
# attribute, text, <base> and <meta> must come out as lexbor's tree has them. Markup that
# misnests an anchor (which a tree builder repairs by copying it) is not generated: the
# scanner documents that difference.

_TEXT = st.lists(
    st.sampled_from(
        [
            "x",
            "Foo",
            " ",
            "\n",
            "\r",
            "\r\n",
            "\t",
            "&amp;",
            "&amp",
            "&gt",
            "&lt;",
            "&notit;",
            "&not=",
            "&#65;",
            "&#x41",
            "&#x80;",
            "&#0;",
            "&#1;",
            "&#xD800;",
            "&#99999999999;",
            "&",
            "&#",
            "&#x;",
            "<",
            "< b",
            "<3",
            ">",
            "=",
            '"',
            "'",
            "\x00",
            "\u00e9",
            "&ampx;",
            "&copy",
            "-",
            "/",
            "]]>",
            "--",
            "a",
        ]
    ),
    max_size=6,
).map("".join)
_INLINE_TEXT = _TEXT.map(lambda text: text.replace("<", "&lt;"))
_VALUE = st.lists(
    st.sampled_from(
        [
            "v",
            "1",
            " ",
            "&amp;",
            "&gt;",
            "&gt",
            "&not=",
            "&copy=3",
            "&copyx",
            "&copy;",
            "&#38;",
            "&",
            "/",
            "=",
            ">",
            "<",
            "\x00",
            "\r\n",
            "'",
            '"',
            "\u00e9",
            "?a=1&b=2",
            "https://f.example/foo-1.0.tar.gz",
        ]
    ),
    max_size=4,
).map("".join)
_NAMES = st.sampled_from(
    [
        "href", "HREF", "Href", "data-yanked", "data-requires-python", "title", "x",
        "data-core-metadata", "h'ref", "<y", "=z", "d\x00x", "name", "content",
    ]
)  # fmt: skip


@st.composite
def _attribute(draw: st.DrawFn) -> str:
    name, value = draw(_NAMES), draw(_VALUE)
    style = draw(st.sampled_from(["double", "single", "unquoted", "none", "empty", "missing"]))
    if style == "double":
        return f'{name}="{value.replace(chr(34), "")}"'
    if style == "single":
        return f"{name}='{value.replace(chr(39), '')}'"
    if style == "unquoted":
        return f"{name}=" + ("".join(c for c in value if c not in " \t\n\r\f>\"'") or "u")
    return {"none": name, "empty": f'{name}=""', "missing": f"{name}= "}[style]


@st.composite
def _start_tag(draw: st.DrawFn, tag: str) -> str:
    attributes = draw(st.lists(_attribute(), max_size=4))
    spaces = st.sampled_from([" ", "\n", "\t", " / ", "  ", "\r\n"])
    between = draw(st.lists(spaces, min_size=len(attributes), max_size=len(attributes)))
    end = draw(st.sampled_from([">", " >", "/>"]))
    return f"<{tag}" + "".join(s + a for s, a in zip(between, attributes, strict=True)) + end


_INLINE = st.one_of(
    _INLINE_TEXT,
    st.sampled_from(["<br>", "<br/>", "<img src=x>"]),
    _INLINE_TEXT.map(lambda text: f"<span>{text}</span>"),
    _INLINE_TEXT.map(lambda text: f"<b>{text}</b>"),
    _INLINE_TEXT.map(lambda text: f"<!--{text}-->"),
)


@st.composite
def _anchor(draw: st.DrawFn) -> str:
    start = draw(_start_tag(draw(st.sampled_from(["a", "A"]))))
    content = "".join(draw(st.lists(_INLINE, max_size=3)))
    return start + content + draw(st.sampled_from(["</a>", "</A>", "</a >", "</a\n>"]))


_PLAIN_ANCHOR = st.builds(
    lambda href, text, after: f'<a href="{href}">{text}</a>{after}',
    st.sampled_from(["/simple/foo/", "https://f.example/foo-1.0.tar.gz#sha256=00", "x"]),
    _INLINE_TEXT,
    st.sampled_from(["", "<br />", "<br>", "\n"]),
)
_RAW_CONTENT = st.lists(
    _anchor()
    | _TEXT
    | st.sampled_from(["<!--", "-->", "<script>", "</script", "</scripts>", "<a href='i'>i</a>"]),
    max_size=3,
).map("".join)
_BLOCK = st.one_of(
    _anchor(),
    _PLAIN_ANCHOR,
    _TEXT,
    _anchor().map(lambda anchor: f"<div>{anchor}</div>"),
    st.builds(lambda anchor, text: f"<p>{anchor}{text}</p>", _anchor(), _TEXT),
    _TEXT.map(lambda text: f"<!--{text}-->"),
    st.sampled_from(
        [
            "<!-->", "<!--->", "<!-- x --!>", "<!DOCTYPE html>", "<?php x ?>", "</ x>", "</>",
            "<! x>", "<![CDATA[<a href='cd'>x</a>]]>", "<base href=\"/b/\">", "<base>",
            '<meta name="pypi:project-status" content="a&amp;b">',
            '<meta name="pypi:project-status">',
            '<meta name="pypi:tracks" content="https://t.example/simple/foo/">',
            "<meta name='pypi:tracks' content=https://u.example/?a=1&amp;b=2>",
        ]
    ),
    st.builds(
        lambda tag, content: f"<{tag}>{content}</{tag}>",
        st.sampled_from(
            ["script", "SCRIPT", "style", "textarea", "title", "xmp", "iframe", "noembed"]
        ),
        _RAW_CONTENT,
    ),
    _anchor().map(lambda anchor: f"<template>{anchor}</template>"),
    st.builds(
        lambda anchor, text: f"<svg>{anchor}<![CDATA[{text}<a href='c'>c</a>]]></svg>",
        _anchor(),
        _TEXT,
    ),
    _start_tag("base"),
    _start_tag("meta"),
)  # fmt: skip
_ENDINGS = ["", "<a href='open'>tail", '<a href="cut', "<!-- open", "<script>x", "<", "</", "<a"]
_DOCUMENTS = st.builds(
    lambda blocks, end: "".join(blocks) + end,
    st.lists(_BLOCK, max_size=8),
    st.sampled_from(_ENDINGS),
)
_METAS = ("pypi:project-status", "pypi:tracks", "name", "x")


def _as_lexbor_reads_it(document: str) -> tuple[object, ...]:
    tree = LexborHTMLParser(document.encode())
    base = tree.css_first("base[href]")
    metas = {}
    for name in _METAS:
        nodes = tree.css(f'meta[name="{name}"]')
        if nodes:
            metas[name] = [node.attributes.get("content") for node in nodes]
    return (
        [dict(anchor.attributes) for anchor in tree.css("a[href]")],
        [anchor.text() for anchor in tree.css("a")],
        base.attributes.get("href") if base is not None else None,
        metas,
    )


def _as_scanned(document: str) -> tuple[object, ...]:
    page = scan(document)
    metas = {name: value for name, value in page.metas.items() if name in _METAS}
    return (
        [anchor for anchor in page.anchors if "href" in anchor],
        scan(document, texts=True).texts,
        page.base_href,
        metas,
    )


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_DOCUMENTS)
@example("<svg><a/>x</a></svg>")
@example("<a></a><svg><a><span>x</span></a><![CDATA[><a href='cd'>]]></svg><script>x")
@example("<svg><a>\x00</a><![CDATA[a\x00b]]></svg>")
@example('<a href="x">q</a><a href=1>&quot&amp&gt</a><a href="&ampx;&amp1&amp;1">v</a>')
@example("<script><!--<script></script><a href='dbl'>z</a></script>--></script><a href=a>a</a>")
@example('</a href=">"><a href="e">e</a><script>a</script <a href="x">x</a>')
def test_the_scanner_reads_anchors_as_an_html5_parser_does(document: str) -> None:
    assert _as_scanned(document) == _as_lexbor_reads_it(document)


def test_a_project_list_of_many_links_comes_whole_through_the_batches() -> None:
    """Past 10,000 links the scanner hands names over in batches: none is lost or doubled
    at a batch's edge, whichever way its anchor was read."""
    names = [f"p{i}" for i in range(25_001)]
    links = [
        f"<a href=/simple/{name}/>{name}</a>" if i % 997 == 0 else f'<a href="/{name}/">{name}</a>'
        for i, name in enumerate(names)
    ]
    body = ("<html><body>\n" + "\n".join(links) + "<a href='/last/'>last").encode()
    assert parse_project_list_html(body).names() == [*names, "last"]
