import hashlib
import json
import re
from typing import Any
from urllib.parse import quote

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from selectolax.lexbor import LexborHTMLParser

from cachepi.simple.model import File, Project, ProjectList
from cachepi.simple.names import versions_from_filenames
from cachepi.simple.parse import (
    parse_project_html,
    parse_project_json,
    parse_project_list_html,
    parse_project_list_json,
)
from cachepi.simple.render import (
    render_project_html,
    render_project_json,
    render_project_list_html,
    render_project_list_json,
    serial_text,
)

PROXY_PAGE = "http://proxy.example/index/sampleproject/"
UPSTREAM = "https://files.example/packages/ab/cd"


def digest(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


def a_file(filename: str = "foo-1.0.tar.gz", **fields: Any) -> File:
    return File(filename=filename, url=f"{UPSTREAM}/{filename}", **fields)


def rendered_json(project: Project) -> dict[str, Any]:
    return json.loads(render_project_json(project))


def anchors(project: Project) -> list[dict[str, str | None]]:
    tree = LexborHTMLParser(render_project_html(project))
    return [{**a.attributes, "text": a.text()} for a in tree.css("a")]


FULL_FILE = a_file(
    "sampleproject-4.0.0-py3-none-any.whl",
    hashes={"sha256": digest("wheel")},
    requires_python=">=3.8",
    core_metadata={"sha256": digest("metadata")},
    size=4662,
    upload_time="2024-04-21T18:21:52.125849Z",
    provenance="https://index.example/integrity/sampleproject/4.0.0/x/provenance",
)


# --- JSON ---------------------------------------------------------------------------------------


def test_json_page_with_sizes_is_api_version_1_4_with_every_key() -> None:
    project = Project(
        name="SampleProject",
        files=[FULL_FILE, a_file("sampleproject-1.0.tar.gz", size=10, yanked="bad build")],
        last_serial=42,
        status="deprecated",
        status_reason="use newproject",
    )
    assert rendered_json(project) == {
        "meta": {"api-version": "1.4", "_last-serial": 42},
        "name": "sampleproject",
        "files": [
            {
                "filename": "sampleproject-4.0.0-py3-none-any.whl",
                "url": "sampleproject-4.0.0-py3-none-any.whl",
                "hashes": {"sha256": digest("wheel")},
                "requires-python": ">=3.8",
                "core-metadata": {"sha256": digest("metadata")},
                "size": 4662,
                "upload-time": "2024-04-21T18:21:52.125849Z",
                "provenance": "https://index.example/integrity/sampleproject/4.0.0/x/provenance",
            },
            {
                "filename": "sampleproject-1.0.tar.gz",
                "url": "sampleproject-1.0.tar.gz",
                "hashes": {},
                "yanked": "bad build",
                "size": 10,
                "provenance": None,
            },
        ],
        "versions": ["1.0", "4.0.0"],
        "project-status": {"status": "deprecated", "reason": "use newproject"},
    }


def test_json_page_missing_a_size_is_api_version_1_0_without_empty_keys() -> None:
    project = Project(name="foo", files=[a_file(size=3), a_file("foo-2.0.tar.gz")])
    page = rendered_json(project)
    assert page["meta"] == {"api-version": "1.0"}
    assert page["files"] == [
        {"filename": "foo-1.0.tar.gz", "url": "foo-1.0.tar.gz", "hashes": {}, "size": 3},
        {"filename": "foo-2.0.tar.gz", "url": "foo-2.0.tar.gz", "hashes": {}},
    ]


def test_json_never_says_dist_info_metadata() -> None:
    project = Project(name="foo", files=[a_file(core_metadata=True, size=1)])
    body = render_project_json(project)
    assert b"dist-info-metadata" not in body
    assert json.loads(body)["files"][0]["core-metadata"] is True


def test_json_upload_time_in_plus_zero_form_becomes_z() -> None:
    project = Project(name="foo", files=[a_file(size=1, upload_time="2024-01-02T03:04:05+00:00")])
    assert rendered_json(project)["files"][0]["upload-time"] == "2024-01-02T03:04:05Z"


def test_json_file_urls_are_relative_and_quoted() -> None:
    project = Project(name="foo", files=[a_file("foo-1!1.0+local.tar.gz", size=1)])
    assert rendered_json(project)["files"][0]["url"] == "foo-1%211.0%2Blocal.tar.gz"


def test_json_versions_are_the_upstreams_own_list_when_it_gave_one() -> None:
    # numpy's case: PyPI files numpy-1.10.0.post2.tar.gz under release 1.10.0, and lists
    # releases without files; a version read from a filename would be a phantom.
    project = Project(
        name="numpy",
        files=[a_file("numpy-1.10.0.post2.tar.gz", size=1), a_file("numpy-1.9.tar.gz", size=1)],
        versions=["1.10.0", "1.9", "0.1"],
    )
    assert rendered_json(project)["versions"] == ["1.10.0", "1.9", "0.1"]
    assert rendered_json(msgspec.structs.replace(project, versions=[]))["versions"] == []


def test_json_versions_come_from_the_filenames_when_the_upstream_gave_none() -> None:
    project = Project(
        name="foo",
        files=[a_file("foo-1.10.tar.gz", size=1), a_file("foo-1.9-py3-none-any.whl", size=1)],
    )
    assert rendered_json(project)["versions"] == ["1.9", "1.10"]


def test_json_upstream_status_without_reason() -> None:
    page = rendered_json(Project(name="foo", status="archived"))
    assert page["project-status"] == {"status": "archived"}


def test_json_project_without_status_has_no_status_key() -> None:
    assert "project-status" not in rendered_json(Project(name="foo"))


TRACKED = ["https://pypi.example/simple/foo/", "https://test.example/simple/foo/"]
ALTERNATES = ["https://alt.example/simple/foo/"]


def test_json_pep_708_tracks_in_meta_and_alternate_locations_at_the_top() -> None:
    page = rendered_json(Project(name="foo", tracks=TRACKED, alternate_locations=ALTERNATES))
    assert page["meta"] == {"api-version": "1.4", "tracks": TRACKED}
    assert page["alternate-locations"] == ALTERNATES


def test_json_without_pep_708_urls_has_neither_key() -> None:
    page = rendered_json(Project(name="foo"))
    assert "tracks" not in page["meta"] and "alternate-locations" not in page


def test_json_empty_project_is_valid_1_4() -> None:
    assert rendered_json(Project(name="Foo.Bar")) == {
        "meta": {"api-version": "1.4"},
        "name": "foo-bar",
        "files": [],
        "versions": [],
    }


# --- HTML ---------------------------------------------------------------------------------------


def test_html_page_shape() -> None:
    body = render_project_html(Project(name="Sample_Project", files=[FULL_FILE])).decode()
    assert body.startswith("<!DOCTYPE html>\n")
    assert '<meta name="pypi:repository-version" content="1.4">' in body
    assert "<title>Links for sample-project</title>" in body
    assert "<h1>Links for sample-project</h1>" in body
    assert body.count("<br />") == 1


def test_html_link_carries_every_attribute() -> None:
    metadata = f"sha256={digest('metadata')}"
    assert anchors(Project(name="sampleproject", files=[FULL_FILE])) == [
        {
            "href": f"sampleproject-4.0.0-py3-none-any.whl#sha256={digest('wheel')}",
            "data-requires-python": ">=3.8",
            "data-core-metadata": metadata,
            "data-dist-info-metadata": metadata,
            "data-provenance": "https://index.example/integrity/sampleproject/4.0.0/x/provenance",
            "text": "sampleproject-4.0.0-py3-none-any.whl",
        }
    ]


def test_html_requires_python_is_escaped_in_the_markup() -> None:
    body = render_project_html(Project(name="foo", files=[a_file(requires_python='>=3.8,<4"')]))
    assert b'data-requires-python="&gt;=3.8,&lt;4&quot;"' in body


def test_html_metadata_without_known_hash_is_true_in_both_attributes() -> None:
    link = anchors(Project(name="foo", files=[a_file(core_metadata={"sha1": "ab" * 20})]))[0]
    assert link["data-core-metadata"] == link["data-dist-info-metadata"] == "true"


def test_html_yanked_without_reason_is_an_empty_attribute() -> None:
    body = render_project_html(Project(name="foo", files=[a_file(yanked=True)]))
    assert b'data-yanked=""' in body


def test_html_prefers_sha256_and_never_links_sha1() -> None:
    sha512 = hashlib.sha512(b"x").hexdigest()
    files = [
        a_file("foo-1.0.tar.gz", hashes={"md5": "0" * 32, "sha256": digest("a")}),
        a_file("foo-2.0.tar.gz", hashes={"sha1": "0" * 40, "sha512": sha512}),
        a_file("foo-3.0.tar.gz", hashes={"sha1": "0" * 40}),
    ]
    assert [link["href"] for link in anchors(Project(name="foo", files=files))] == [
        f"foo-1.0.tar.gz#sha256={digest('a')}",
        f"foo-2.0.tar.gz#sha512={sha512}",
        "foo-3.0.tar.gz",
    ]


def test_html_project_status_meta_tags() -> None:
    body = render_project_html(Project(name="foo", status="archived", status_reason='a "b"'))
    assert b'<meta name="pypi:project-status" content="archived">' in body
    assert b'<meta name="pypi:project-status-reason" content="a &quot;b&quot;">' in body


def test_html_pep_708_metas_one_per_url() -> None:
    project = Project(name="foo", tracks=TRACKED, alternate_locations=ALTERNATES)
    tree = LexborHTMLParser(render_project_html(project))
    for name, urls in (("pypi:tracks", TRACKED), ("pypi:alternate-locations", ALTERNATES)):
        assert [m.attributes["content"] for m in tree.css(f'meta[name="{name}"]')] == urls
    assert b'name="pypi:' not in render_project_html(Project(name="foo")).replace(
        b'name="pypi:repository-version"', b""
    )


def test_html_without_status_has_no_status_meta() -> None:
    assert b"pypi:project-status" not in render_project_html(Project(name="foo"))


def test_html_hostile_model_values_cannot_break_out_of_the_markup() -> None:
    evil = '"><script>alert(1)</script>'
    file = File(
        filename=f"x{evil}/../y",
        url="https://x/",
        hashes={"sha256": evil},
        requires_python=evil,
        core_metadata={"sha256": evil},
        yanked=evil,
        provenance=evil,
    )
    project = Project(
        name=evil,
        files=[file],
        status=evil,
        status_reason=evil,
        tracks=[evil],
        alternate_locations=[evil],
    )
    body = render_project_html(project)
    assert b"<script>" not in body
    link = anchors(Project(name="foo", files=[file]))[0]
    assert "/" not in link["href"].partition("#")[0]  # stays inside the project's folder
    assert link["text"] == file.filename


# --- both formats -------------------------------------------------------------------------------


def test_rendering_is_deterministic_whatever_the_hash_order() -> None:
    one = {"sha256": digest("a"), "md5": "0" * 32}
    other = {"md5": "0" * 32, "sha256": digest("a")}
    first = Project(name="foo", files=[a_file(hashes=one, core_metadata=one, size=1)])
    second = Project(name="foo", files=[a_file(hashes=other, core_metadata=other, size=1)])
    assert render_project_json(first) == render_project_json(second)
    assert render_project_html(first) == render_project_html(second)


def test_json_upstream_yanked_reason_survives_to_html() -> None:
    upstream = json.dumps(
        {
            "meta": {"api-version": "1.1"},
            "name": "foo",
            "files": [
                {
                    "filename": "foo-1.0.tar.gz",
                    "url": "https://files.example/foo-1.0.tar.gz",
                    "hashes": {},
                    "yanked": "broken <again>",
                }
            ],
        }
    ).encode()
    html = render_project_html(parse_project_json(upstream, "https://index.example/simple/foo/"))
    assert parse_project_html(html, PROXY_PAGE, "foo").files[0].yanked == "broken <again>"


def test_html_upstream_metadata_hash_survives_to_json() -> None:
    upstream = (
        f'<a href="https://files.example/foo-1.0-py3-none-any.whl#sha256={digest("w")}" '
        f'data-dist-info-metadata="sha256={digest("m")}">foo-1.0-py3-none-any.whl</a>'
    ).encode()
    page = render_project_json(
        parse_project_html(upstream, "https://index.example/simple/foo/", "foo")
    )
    assert json.loads(page)["files"][0]["core-metadata"] == {"sha256": digest("m")}


# --- round trips --------------------------------------------------------------------------------

hex_digest = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
# HTML cannot carry control characters (NUL becomes U+FFFD, CR becomes LF).
html_text = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1)
optional_text = st.none() | html_text
project_names = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?\Z").filter(
    lambda n: "--" not in n
)
versions = st.from_regex(r"\A[0-9]{1,3}(\.[0-9]{1,3}){0,2}(\+[a-z0-9]{1,5})?\Z")
suffixes = st.sampled_from(
    [".tar.gz", ".zip", "-py3-none-any.whl", "-cp311-cp311-linux_x86_64.whl"]
)


page_urls = st.from_regex(r"\Ahttps://[a-z]{1,8}\.example/simple/[a-z0-9-]{1,10}/\Z")


def files_of(name: str) -> st.SearchStrategy[File]:
    """Files a page of project `name` may list: its wheels and sdists."""
    return st.builds(
        File,
        filename=st.builds(
            lambda version, suffix: f"{name.replace('-', '_')}-{version}{suffix}",
            versions,
            suffixes,
        ),
        url=st.just("unused"),
        hashes=st.dictionaries(st.just("sha256"), hex_digest),
        requires_python=optional_text,
        core_metadata=st.booleans() | st.dictionaries(st.just("sha256"), hex_digest, min_size=1),
        yanked=st.booleans() | html_text,
        size=st.none() | st.integers(min_value=0, max_value=2**53),
        upload_time=st.none() | st.just("2024-01-02T03:04:05.123456Z"),
        provenance=st.none() | st.just("https://index.example/integrity/x/1.0/f/provenance"),
    )


projects = project_names.flatmap(
    lambda name: st.builds(
        Project,
        name=st.just(name),
        files=st.lists(files_of(name), max_size=5, unique_by=lambda file: file.filename),
        last_serial=st.none() | st.integers(min_value=0, max_value=2**62),
        status=st.none() | st.sampled_from(["active", "archived", "quarantined", "deprecated"]),
        versions=st.none() | st.lists(versions, unique=True, max_size=4),
        tracks=st.lists(page_urls, unique=True, max_size=3),
        alternate_locations=st.lists(page_urls, unique=True, max_size=3),
    )
)


def as_served_by_proxy(file: File) -> File:
    return msgspec.structs.replace(file, url=PROXY_PAGE + quote(file.filename, safe=""))


@given(projects)
def test_json_round_trip_keeps_everything_but_the_url(project: Project) -> None:
    parsed = parse_project_json(render_project_json(project), PROXY_PAGE)
    assert parsed.files == [as_served_by_proxy(file) for file in project.files]
    assert (parsed.name, parsed.last_serial, parsed.status) == (
        project.name,
        project.last_serial,
        project.status,
    )
    assert (parsed.tracks, parsed.alternate_locations) == (
        project.tracks,
        project.alternate_locations,
    )
    filenames = [file.filename for file in project.files]
    assert parsed.versions == (
        versions_from_filenames(filenames) if project.versions is None else project.versions
    )


@given(projects)
def test_html_round_trip_keeps_what_html_can_say(project: Project) -> None:
    parsed = parse_project_html(render_project_html(project), PROXY_PAGE, project.name)
    expected = [
        File(
            filename=file.filename,
            url=as_served_by_proxy(file).url,
            hashes=file.hashes,
            requires_python=file.requires_python,
            core_metadata=file.core_metadata,
            yanked=file.yanked,
            provenance=file.provenance,
        )
        for file in project.files
    ]
    assert parsed.files == expected
    assert (parsed.status, parsed.last_serial) == (project.status, project.last_serial)
    assert (parsed.tracks, parsed.alternate_locations) == (
        project.tracks,
        project.alternate_locations,
    )


@given(projects)
def test_rendered_html_is_valid_utf8_with_one_link_per_file(project: Project) -> None:
    body = render_project_html(project).decode("utf-8")
    assert len(re.findall("<a ", body)) == len(project.files)


# --- root pages ---------------------------------------------------------------------------------


def html_list(plist: ProjectList) -> bytes:
    return b"".join(render_project_list_html(plist))


def json_list(plist: ProjectList) -> bytes:
    return b"".join(render_project_list_json(plist))


def test_json_project_list_shape() -> None:
    plist = ProjectList.of(["Django", "zope.interface"], last_serial=7)
    assert json.loads(json_list(plist)) == {
        "meta": {"api-version": "1.4", "_last-serial": 7},
        "projects": [{"name": "Django"}, {"name": "zope.interface"}],
    }


def test_html_project_list_links_normalized_names_relative_to_the_index() -> None:
    body = html_list(ProjectList.of(["Django", "Zope.Interface"])).decode()
    assert '<a href="django/">Django</a><br />' in body
    assert '<a href="zope-interface/">Zope.Interface</a><br />' in body


def test_html_project_list_escapes_names() -> None:
    names = ["a<b", 'c"d', "ok"]
    body = html_list(ProjectList.of(names))
    tree = LexborHTMLParser(body)
    assert [a.attributes["href"] for a in tree.css("a")] == ["a%3Cb/", "c%22d/", "ok/"]
    assert [a.text() for a in tree.css("a")] == names
    assert b"a<b" not in body


def test_html_project_list_links_cannot_leave_the_index() -> None:
    names = ["javascript:alert(1)", "/etc", "\\\\evil.example", "", "Django"]
    tree = LexborHTMLParser(html_list(ProjectList.of(names)))
    assert [a.attributes["href"] for a in tree.css("a")] == [
        "javascript%3Aalert%281%29/",
        "%2Fetc/",
        "%5C%5Cevil-example/",
        "django/",
    ]


@given(st.lists(st.from_regex(r"\A[A-Za-z0-9]([A-Za-z0-9._-]{0,30}[A-Za-z0-9])?\Z")))
def test_project_lists_round_trip_in_both_formats(names: list[str]) -> None:
    plist = ProjectList.of(names)
    assert parse_project_list_json(json_list(plist)) == plist
    assert parse_project_list_html(html_list(plist)) == plist


def test_a_long_project_list_goes_out_in_pieces_of_whole_names() -> None:
    names = [f"Project_{i}" for i in range(60_000)]  # a few pieces of 256 KiB
    plist = ProjectList.of(names, last_serial=3)
    pieces = list(render_project_list_html(plist))
    assert len(pieces) > 4 and all(piece.endswith(b"\n") for piece in pieces)
    assert parse_project_list_html(b"".join(pieces)).names() == names
    assert b"".join(pieces).count(b'<a href="project-59999/">Project_59999</a>') == 1
    pieces = list(render_project_list_json(plist))
    assert len(pieces) > 4
    assert json.loads(b"".join(pieces))["projects"] == [{"name": name} for name in names]


@pytest.mark.parametrize(
    ("serial", "text"),
    [(42, "42"), ("26356948", "26356948"), (None, None), ("12a", None), ("1\r\nX: y", None)],
)
def test_html_pages_carry_a_serial_made_of_digits_where_pypi_writes_it(
    serial: int | str | None, text: str | None
) -> None:
    assert serial_text(serial) == text
    for body in (
        render_project_html(Project(name="six", last_serial=serial)),
        b"".join(render_project_list_html(ProjectList.of(["six"], serial))),
    ):
        comments = re.findall(rb"<!--SERIAL ([^>]*)-->", body)
        assert comments == ([] if text is None else [text.encode()])
        assert body.endswith(b"</html>\n" if text is None else b"-->\n")


def test_last_serial_passes_through_as_the_upstream_spelled_it() -> None:
    for serial in ("26356948", 26356948):
        rendered = msgspec.json.decode(render_project_json(Project(name="six", last_serial=serial)))
        assert rendered["meta"]["_last-serial"] == serial
