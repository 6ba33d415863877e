import contextlib
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachepi.simple.model import File, Project, ProjectList
from cachepi.simple.parse import (
    ParseError,
    parse_project_html,
    parse_project_json,
    parse_project_list_html,
    parse_project_list_json,
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
    assert parse_project_list_json(body) == ProjectList(
        names=["Django", "zope.interface"], last_serial=987
    )


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
    assert parse_project_list_html(body) == ProjectList(
        names=["Django", "zope.interface", "spaced"], last_serial=987
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
