"""combine.py: how the pages of several indexes make one, pure (indexes are plain names here).

What a merged page says of the project as a whole is checked here: `versions` per upstream
(the list where one was given, filenames only for upstreams without one), PEP 708's `tracks`
and `alternate-locations` (only what every upstream claims), and no last serial (it numbers
one index's changes). The end-to-end tests of the same rules through a proxy are in
test_multi_index.py.
"""

from __future__ import annotations

from typing import Any

from cachepi.combine import combine
from cachepi.simple.model import File, Project


def a_file(filename: str, **fields: Any) -> File:
    return File(filename=filename, url=f"https://files.example/{filename}", **fields)


def page(*filenames: str, **fields: Any) -> Project:
    return Project(name="demo", files=[a_file(filename) for filename in filenames], **fields)


def test_one_page_is_passed_through_as_it_is() -> None:
    only = page("demo-1.0.tar.gz", versions=["1.0", "0.9"], last_serial="7")
    merged, sources = combine("demo", [("pypi", only)])
    assert merged is only
    assert sources == ("pypi",)


def test_merged_versions_are_the_union_of_the_lists_upstreams_gave() -> None:
    # Neither list is second-guessed from filenames: demo-2.0.post1 belongs to release 2.0.
    pypi = page("demo-1.0.tar.gz", versions=["1.0", "0.9"])
    mirror = page("demo-2.0.post1.tar.gz", versions=["2.0"])
    merged, sources = combine("demo", [("pypi", pypi), ("mirror", mirror)])
    assert merged.versions == ["0.9", "1.0", "2.0"]
    assert sources == ("pypi", "mirror")


def test_merged_versions_of_an_upstream_without_a_list_come_from_its_own_files() -> None:
    pypi = page("demo-1.0.post2.tar.gz", versions=["1.0"])
    # The HTML index lists the same sdist (shown from pypi, under pypi's release 1.0) and a
    # wheel only it has: only the wheel's version is read from a filename.
    html = page("demo-1.0.post2.tar.gz", "demo-3.0-py3-none-any.whl")
    merged, sources = combine("demo", [("pypi", pypi), ("html", html)])
    assert merged.versions == ["1.0", "3.0"]
    assert sources == ("pypi", "html")


def test_merged_versions_keep_each_spelling_once_per_version() -> None:
    pypi = page(versions=["1.0.0", "1.0.0"])
    html = page("demo-1.0-py3-none-any.whl", "demo-1.1.tar.gz")
    merged, _ = combine("demo", [("pypi", pypi), ("html", html)])
    assert merged.versions == ["1.0.0", "1.1"]  # 1.0 is 1.0.0, as PyPI spells it


def test_merged_versions_stay_unset_when_no_upstream_gave_a_list() -> None:
    merged, _ = combine("demo", [("a", page("demo-1.0.tar.gz")), ("b", page("demo-2.0.tar.gz"))])
    assert merged.versions is None  # the renderer reads every shown file's name


def test_a_merged_page_has_no_last_serial_even_when_the_upstreams_agree() -> None:
    a, b = page("demo-1.0.tar.gz", last_serial=7), page("demo-2.0.tar.gz", last_serial=7)
    assert combine("demo", [("a", a), ("b", b)])[0].last_serial is None
    assert combine("demo", [("a", a)])[0].last_serial == 7


PYPI = "https://pypi.example/simple/demo/"
TEST = "https://test.example/simple/demo/"
ALT = "https://alt.example/simple/demo/"


def test_one_page_passes_its_pep_708_claims_through() -> None:
    only = page(tracks=[PYPI], alternate_locations=[ALT])
    merged, _ = combine("demo", [("mirror", only)])
    assert (merged.tracks, merged.alternate_locations) == ([PYPI], [ALT])


def test_a_merged_page_claims_what_every_upstream_claims_in_the_first_ones_order() -> None:
    a = page("demo-1.0.tar.gz", tracks=[TEST, PYPI], alternate_locations=[ALT, PYPI])
    b = page("demo-2.0.tar.gz", tracks=[PYPI, TEST, ALT], alternate_locations=[ALT])
    merged, _ = combine("demo", [("a", a), ("b", b)])
    assert (merged.tracks, merged.alternate_locations) == ([TEST, PYPI], [ALT])


def test_an_upstream_claiming_nothing_leaves_the_merged_page_claiming_nothing() -> None:
    # A piwheels-like index tracking PyPI, merged with an index that owns its namespace: the
    # merge does not extend PyPI's project, whatever one part of it says.
    extension = page(
        "demo-1.0-cp311-cp311-linux_armv7l.whl", tracks=[PYPI], alternate_locations=[ALT]
    )
    own = page("demo-1.0.tar.gz")
    for pages in ([("ext", extension), ("own", own)], [("own", own), ("ext", extension)]):
        merged, _ = combine("demo", pages)
        assert (merged.tracks, merged.alternate_locations) == ([], [])


def test_urls_are_compared_as_written() -> None:
    a, b = page(tracks=[PYPI]), page(tracks=[PYPI.rstrip("/")])
    assert combine("demo", [("a", a), ("b", b)])[0].tracks == []


def test_a_quarantined_first_page_offers_nothing_whatever_the_others_say() -> None:
    first = page("demo-1.0.tar.gz", versions=["1.0"], status="quarantined")
    merged, sources = combine("demo", [("a", first), ("b", page("demo-2.0.tar.gz"))])
    assert (merged.files, merged.versions, sources) == ([], [], ())
