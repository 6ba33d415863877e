import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachepi.simple.names import (
    dist_filename_project,
    is_safe_filename,
    is_valid_project_name,
    normalize,
    versions_from_filenames,
)

# The PEP 508 grammar, spelled as the PEP spells it, to check the module's faster spelling.
PEP_508_NAME = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)
project_names = st.from_regex(r"\A[A-Za-z0-9]([A-Za-z0-9._-]{0,40}[A-Za-z0-9])?\Z")


@pytest.mark.parametrize(
    "name", ["requests", "Django", "zope.interface", "a", "A1", "foo_bar-baz.qux", "x" * 200]
)
def test_pep_508_names_are_valid(name: str) -> None:
    assert is_valid_project_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "-foo",
        "foo-",
        "_foo",
        "foo.",
        ".",
        "..",
        "%2e%2e",
        "foo%2Fbar",
        "foo/bar",
        "foo\\bar",
        "foo\x00",
        "foo\n",
        "foo bar",
        "\u212aelvin",  # KELVIN SIGN lowercases to an ASCII "k"
        "caf\u00e9",
        "x" * 201,
    ],
)
def test_hostile_or_malformed_names_are_rejected(name: str) -> None:
    assert not is_valid_project_name(name)


def test_normalize_collapses_separator_runs_and_lowercases() -> None:
    assert normalize("Foo.Bar__baz--Qux_-_.x") == "foo-bar-baz-qux-x"


@given(st.text())
def test_normalize_matches_the_pep_503_definition(name: str) -> None:
    assert normalize(name) == re.sub(r"[-_.]+", "-", name).lower()


@given(st.text())
def test_normalize_is_idempotent(name: str) -> None:
    assert normalize(normalize(name)) == normalize(name)


@given(project_names)
def test_valid_names_stay_valid_after_normalizing(name: str) -> None:
    assert is_valid_project_name(name)
    assert is_valid_project_name(normalize(name))


@given(st.text(max_size=60))
def test_name_check_agrees_with_pep_508_on_ascii(name: str) -> None:
    expected = name.isascii() and PEP_508_NAME.match(name) is not None and "\n" not in name
    assert is_valid_project_name(name) == expected


@pytest.mark.parametrize(
    "filename",
    [
        "numpy-1.26.4-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "foo-1.0+local.7-py3-none-any.whl",
        "foo-1!2.0.tar.gz",
        "Django-5.0.zip",
        "a" * 255,
    ],
)
def test_distribution_filenames_are_safe(filename: str) -> None:
    assert is_safe_filename(filename)


@pytest.mark.parametrize(
    "filename",
    [
        "",
        ".",
        "..",
        ".hidden.whl",
        "a/b.whl",
        "..%2F..%2Fetc",
        "a\\b.whl",
        "a\x00.whl",
        "a\nb.whl",
        "a\rb.whl",
        "a\tb.whl",
        "a b.whl",
        "caf\u00e9-1.0.tar.gz",
        "a" * 256,
        "foo-1.0.tar.gz?x=1",
        "foo-1.0.tar.gz#sha256=00",
    ],
)
def test_path_tricks_are_not_safe_filenames(filename: str) -> None:
    assert not is_safe_filename(filename)


@pytest.mark.parametrize(
    ("filename", "project"),
    [
        ("zope.interface-6.0-cp311-cp311-win_amd64.whl", "zope-interface"),
        ("Django-5.0.tar.gz", "django"),
        ("foo_bar-1.0.zip", "foo-bar"),
        ("foo-1.0-1-py3-none-any.whl", "foo"),
        ("foo-bar-1.0.tar.gz", "foo-bar"),
    ],
)
def test_wheels_and_sdists_name_their_project(filename: str, project: str) -> None:
    assert dist_filename_project(filename) == project


@pytest.mark.parametrize(
    "filename",
    [
        "foo-1.0.tar.bz2",
        "foo-1.0-py2.7.egg",
        "foo-1.0.win32.exe",
        "foo.tar.gz",
        "foo-not~a~version.tar.gz",
        "foo-1.0.whl",
        "foo bar-1.0.tar.gz",
        "-1.0.tar.gz",
    ],
)
def test_legacy_or_malformed_distributions_name_no_project(filename: str) -> None:
    assert dist_filename_project(filename) is None


def test_versions_come_from_filenames_sorted_as_versions() -> None:
    filenames = [
        "foo-1.10.tar.gz",
        "foo-1.9-py3-none-any.whl",
        "foo-1.9.tar.gz",
        "foo-2.0rc1.zip",
        "foo-1.0.tar.bz2",  # not a format packaging reads: no version from it
        "foo-garbage.tar.gz",
    ]
    assert versions_from_filenames(filenames) == ["1.9", "1.10", "2.0rc1"]


def test_known_versions_keep_their_spelling_and_gain_missing_ones() -> None:
    # 1.0.0 == 1.0 as a version, so the filename's "1.0" adds nothing; 3.0 is new.
    known = ["2.0", "1.0.0", "0.9-legacy-weird"]
    filenames = ["foo-1.0.tar.gz", "foo-3.0-py3-none-any.whl"]
    assert versions_from_filenames(filenames, known) == ["0.9-legacy-weird", "1.0.0", "2.0", "3.0"]


def test_versions_from_filenames_are_normalized_versions() -> None:
    assert versions_from_filenames(["foo-1.0.POST1.tar.gz"]) == ["1.0.post1"]
