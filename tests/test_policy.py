"""The policy's pure parts: rules as written, screening files at a given time."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from packaging.version import Version

from cachepi.policy import (
    Policy,
    describe_duration,
    file_versions,
    name_glob,
    parse_duration,
    parse_rule,
    visible_versions,
)
from cachepi.simple.model import File

NOW = datetime(2026, 6, 1, tzinfo=UTC).timestamp()
DAY = 86400


def wheel(name: str, version: str, uploaded_days_ago: float | None = None) -> File:
    upload = (
        None
        if uploaded_days_ago is None
        else datetime.fromtimestamp(NOW - uploaded_days_ago * DAY, UTC).isoformat()
    )
    filename = f"{name}-{version}-py3-none-any.whl"
    return File(filename, f"https://files.example/{filename}", upload_time=upload)


@pytest.mark.parametrize(
    ("text", "project", "specifier", "filename"),
    [
        ("evil", "evil", None, None),
        ("Typo_Squat.*", "typo-squat-anything", None, None),
        ("urllib3>=3", "urllib3", ">=3", None),
        ("requests == 2.32.0", "requests", "==2.32.0", None),
        ("lib>=1,<2", "lib", "<2,>=1", None),
        ("bad-1.0-py3-none-any.whl", None, None, "bad-1.0-py3-none-any.whl"),
        ("bad-1.0.tar.gz", None, None, "bad-1.0.tar.gz"),
    ],
)
def test_rules_are_read_as_written(
    text: str, project: str | None, specifier: str | None, filename: str | None
) -> None:
    rule = parse_rule(text)
    assert rule.filename == filename
    assert (str(rule.specifier) if rule.specifier else None) == specifier
    if project is not None:
        assert rule.names(project)
    else:
        assert rule.project is None


@pytest.mark.parametrize("text", ["", "lib>=>1", "../x.whl", "a b c", "lib @ https://x"])
def test_unusable_rules_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not"):
        parse_rule(text)


def test_globs_match_normalized_names_whole() -> None:
    glob = name_glob("Acme_*")
    assert glob.fullmatch("acme-lib")
    assert not glob.fullmatch("acmelib")
    assert not glob.fullmatch("not-acme-lib")


def test_project_refusals() -> None:
    policy = Policy(deny=(parse_rule("evil-*"), parse_rule("lib<1")))
    assert policy.project_refusal("evil-thing") is not None
    assert policy.project_refusal("evilish") is None
    assert policy.project_refusal("lib") is None  # a version rule refuses files, not the project
    allow_only = Policy(allow=(parse_rule("app"), parse_rule("lib>=1")))
    assert allow_only.project_refusal("app") is None
    assert allow_only.project_refusal("lib") is None
    assert "allow list" in (allow_only.project_refusal("other") or "")


def test_screen_applies_versions_files_and_cooldown_and_says_until_when() -> None:
    files = [
        wheel("lib", "1.0", 400),
        wheel("lib", "2.0rc1", 30),
        wheel("lib", "2.0", 2),  # inside a 7-day cooldown for 5 more days
        wheel("lib", "2.1", None),
    ]
    policy = Policy(deny=(parse_rule("lib==2.0rc1"),), min_release_age=7 * DAY)
    screened = policy.screen("lib", files, [7 * DAY] * 4, NOW)
    assert screened.kept == [0, 3]  # unknown upload time: shown by default
    assert "lib==2.0rc1" in screened.refused[files[1].filename]
    assert "cooldown of 1w" in screened.refused[files[2].filename]
    assert screened.valid_until == pytest.approx(NOW + 5 * DAY)

    hiding = Policy(min_release_age=7 * DAY, show_unknown_upload_time=False)
    assert hiding.screen("lib", files, [7 * DAY] * 4, NOW).kept == [0, 1]
    exempt = Policy(min_release_age=7 * DAY, cooldown_exempt=(name_glob("li*"),))
    assert exempt.screen("lib", files, [7 * DAY] * 4, NOW).kept == [0, 1, 2, 3]
    # A per-file cooldown of 0 (an index without one) lets its files through.
    per_index = policy.screen("lib", files, [7 * DAY, 7 * DAY, 0, 0], NOW)
    assert per_index.kept == [0, 2, 3]
    assert per_index.valid_until == math.inf


def test_allow_rules_with_specifiers_keep_only_those_versions() -> None:
    files = [wheel("lib", "0.9", 400), wheel("lib", "1.0", 400), wheel("lib", "1.1b1", 400)]
    policy = Policy(allow=(parse_rule("lib>=1"),))
    screened = policy.screen("lib", files, [0, 0, 0], NOW)
    assert screened.kept == [1, 2]
    assert "allow list" in screened.refused[files[0].filename]


def test_filename_rules_refuse_exactly_that_file() -> None:
    files = [wheel("lib", "1.0"), File("lib-1.0.tar.gz", "https://files.example/lib-1.0.tar.gz")]
    policy = Policy(deny=(parse_rule("lib-1.0.tar.gz"),))
    assert policy.screen("lib", files, [0, 0], NOW).kept == [0]


def test_versions_lose_only_those_left_without_files() -> None:
    kept = [wheel("lib", "1.0")]
    refused = ["lib-2.0-py3-none-any.whl", "lib-1.0.tar.gz"]
    assert visible_versions(["1.0", "2.0", "3.0"], kept, refused) == ["1.0", "3.0"]
    assert visible_versions(None, kept, refused) is None


def test_versions_as_the_index_lists_them_lose_only_those_left_without_files() -> None:
    # The index's own list, spelled its way, with a release whose sdist is named as a post
    # release (numpy-1.10.0.post2.tar.gz is a file of 1.10.0): nothing is added, and a
    # listed version goes only when files read as it were all refused.
    kept = [wheel("lib", "1.0")]
    refused = ["lib-1.0.post2.tar.gz", "lib-2.0-py3-none-any.whl", "lib-2.0.tar.gz"]
    listed = ["1.0.0", "2.0.0", "0.1"]
    assert visible_versions(listed, kept, refused) == ["1.0.0", "0.1"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("7d", 7 * DAY), ("12h", 43200), ("30m", 1800), ("45", 45), ("2W", 14 * DAY)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "7 days", "-1d", "1.5h", "d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


def test_describe_duration_and_file_versions() -> None:
    assert [describe_duration(s) for s in (7 * DAY, DAY, 5400, 61)] == ["1w", "1d", "90m", "61s"]
    assert file_versions("Lib_X-1.0.post1-py3-none-any.whl") == {Version("1.0.post1")}
    assert file_versions("lib-x-2.0.tar.gz") == {Version("2.0")}
    assert file_versions("lib-notaversion.tar.gz") == frozenset()


def sdist(filename: str) -> File:
    return File(filename, f"https://files.example/{filename}")


LEGACY = ["proj-2.0.tar.bz2", "proj-2.0.tgz", "proj-2.0.tar.xz", "proj-2.0.zip", "PROJ-2.0.tar"]


@pytest.mark.parametrize("filename", [*LEGACY, "Proj-2.0.TAR.GZ", "proj-2.0-py2.7.egg"])
def test_deny_rules_refuse_legacy_archives_of_that_version(filename: str) -> None:
    """`proj==2.0` refused proj-2.0.tar.gz but listed .tar.bz2, .tgz, .tar.xz and more, and
    pip then ran the setup.py inside."""
    files = [sdist(filename), sdist(filename.replace("2.0", "1.0"))]
    policy = Policy(deny=(parse_rule("proj==2.0"),))
    screened = policy.screen("proj", files, [0, 0], NOW)
    assert screened.kept == [1]
    assert "proj==2.0" in screened.refused[filename]


def test_a_version_installers_may_read_two_ways_is_judged_both_ways() -> None:
    """`proj-2.0-1.tar.gz`: packaging reads project `proj-2.0` version 1; pip and uv read
    project `proj` version 2.0-1 (2.0.post1). A rule matching either refuses it."""
    assert file_versions("proj-2.0-1.tar.gz", "proj") == {Version("1"), Version("2.0.post1")}
    for rule in ("proj==2.0.post1", "proj<1.5"):
        policy = Policy(deny=(parse_rule(rule),))
        assert policy.screen("proj", [sdist("proj-2.0-1.tar.gz")], [0], NOW).kept == []
    allowed = Policy(allow=(parse_rule("proj>=2"),))
    assert allowed.screen("proj", [sdist("proj-2.0-1.tar.gz")], [0], NOW).kept == []


@pytest.mark.parametrize(
    "filename",
    ["proj-latest.tar.bz2", "proj-2.0.win32.exe", "proj-2.0-1.noarch.rpm", "proj.tar.gz"],
)
def test_a_file_whose_version_cannot_be_read_fails_closed(filename: str) -> None:
    files = [sdist(filename), wheel("proj", "1.0")]
    deny = Policy(deny=(parse_rule("proj==2.0"),))
    screened = deny.screen("proj", files, [0, 0], NOW)
    assert screened.kept == [1]
    assert "cannot be read" in screened.refused[filename]
    allow = Policy(allow=(parse_rule("proj>=1"),))
    assert allow.screen("proj", files, [0, 0], NOW).kept == [1]
    # Rules about other projects, or about the whole project, do not look at versions.
    assert Policy(deny=(parse_rule("other==2.0"),)).screen("proj", files, [0, 0], NOW).kept == [
        0,
        1,
    ]
    assert Policy(allow=(parse_rule("proj"),)).screen("proj", files, [0, 0], NOW).kept == [0, 1]


@pytest.mark.parametrize("filename", LEGACY)
def test_allow_rules_read_legacy_archives_too(filename: str) -> None:
    policy = Policy(allow=(parse_rule("proj>=2"),))
    files = [sdist(filename), sdist(filename.replace("2.0", "1.0"))]
    assert policy.screen("proj", files, [0, 0], NOW).kept == [0]


def test_legacy_readings() -> None:
    assert file_versions("proj-2.0.tar.bz2", "proj") == {Version("2.0")}
    assert file_versions("my.proj-2.0rc1.tar.xz", "my-proj") == {Version("2.0rc1")}
    assert file_versions("proj-2.0.tar.bz2") == {Version("2.0")}  # no project: the last `-`
    assert file_versions("proj-2.0-py3.8.egg", "proj") == {Version("2.0")}
    assert file_versions("other-2.0.tar.bz2", "proj") == frozenset()
    assert file_versions("proj-x-2.0-py3-none-any.whl", "proj") == frozenset()  # not a wheel
    assert Version("1") in file_versions("proj-2.0-1.tar.gz")  # packaging's reading
    assert file_versions("proj-2.0.tgz") == {Version("2.0")}


@pytest.mark.parametrize(
    "text", ["bad-1.0.tar.xz", "bad-1.0.tar.bz2", "bad-1.0.tbz", "bad-1.0.tar", "bad-1.0.tar.zst"]
)
def test_legacy_file_names_are_file_rules(text: str) -> None:
    """They were read as a project named `bad-1-0-tar-xz`, denying nothing."""
    assert parse_rule(text).filename == text


def test_versions_hide_those_left_only_with_refused_legacy_files() -> None:
    kept = [wheel("proj", "1.0")]
    refused = ["proj-2.0.tar.bz2", "proj-2.0.tgz"]
    assert visible_versions(["1.0", "2.0"], kept, refused) == ["1.0"]
