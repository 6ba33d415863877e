"""combine.py: how the pages of several indexes make one, pure (indexes are plain names here).

What a merged page says of the project as a whole is checked here: `versions` per upstream
(the list where one was given, filenames only for upstreams without one), and no last serial
(it numbers one index's changes). The end-to-end tests of the same rules through a proxy are
in test_multi_index.py.
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


def test_a_quarantined_first_page_offers_nothing_whatever_the_others_say() -> None:
    first = page("demo-1.0.tar.gz", versions=["1.0"], status="quarantined")
    merged, sources = combine("demo", [("a", first), ("b", page("demo-2.0.tar.gz"))])
    assert (merged.files, merged.versions, sources) == ([], [], ())
