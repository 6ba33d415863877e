"""Which files a warm job fetches: the targets that narrow a lock (warm/narrowing.py), the
page's files that a lock's entries name (warm/matching.py), and the report a job keeps
(warm/report.py)."""

from __future__ import annotations

import pytest

from cachepi.simple.model import File
from cachepi.warm.lockfiles import LockedFile, LockedHashes
from cachepi.warm.matching import Unmatched, named_file, pinned_files
from cachepi.warm.narrowing import Narrowing, NarrowingError, compatible_platforms
from cachepi.warm.report import LISTED, LOST_AFTER, Report, decode

WHEELS = {
    "manylinux": "np-2.0-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
    "manylinux_2_28": "np-2.0-cp312-cp312-manylinux_2_28_x86_64.whl",
    "musl": "np-2.0-cp312-cp312-musllinux_1_2_x86_64.whl",
    "mac": "np-2.0-cp312-cp312-macosx_10_9_x86_64.whl",
    "mac_arm": "np-2.0-cp312-cp312-macosx_11_0_arm64.whl",
    "win": "np-2.0-cp312-cp312-win_amd64.whl",
    "cp311": "np-2.0-cp311-cp311-manylinux_2_17_x86_64.whl",
    "abi3": "np-2.0-cp39-abi3-manylinux_2_17_x86_64.whl",
    "pypy": "np-2.0-pp310-pypy310_pp73-manylinux_2_17_x86_64.whl",
    "pure": "np-2.0-py3-none-any.whl",
    "py2": "np-2.0-py2-none-any.whl",
    "sdist": "np-2.0.tar.gz",
}


def kept(narrowing: Narrowing) -> set[str]:
    return {kind for kind, filename in WHEELS.items() if narrowing.keeps(filename)}


def test_nothing_given_keeps_every_file() -> None:
    assert kept(Narrowing()) == set(WHEELS)


def test_a_platform_keeps_its_own_older_compatible_ones_and_pure_wheels() -> None:
    everywhere = {"pure", "py2", "sdist"}
    assert kept(Narrowing(platforms=("manylinux_2_17_x86_64",))) == {
        "manylinux", "cp311", "abi3", "pypy", *everywhere,
    }  # fmt: skip
    assert kept(Narrowing(platforms=("manylinux_2_28_x86_64",))) == {
        "manylinux", "manylinux_2_28", "cp311", "abi3", "pypy", *everywhere,
    }  # fmt: skip
    assert kept(Narrowing(platforms=("manylinux2014_x86_64",))) == kept(
        Narrowing(platforms=("manylinux_2_17_x86_64",))
    )
    assert kept(Narrowing(platforms=("macosx_14_0_arm64",))) == {"mac_arm", *everywhere}
    assert kept(Narrowing(platforms=("macosx_11_0_x86_64",))) == {"mac", *everywhere}
    assert kept(Narrowing(platforms=("win_amd64", "musllinux_1_2_x86_64"))) == {
        "win", "musl", *everywhere,
    }  # fmt: skip


def test_compatible_platforms_reach_back_to_the_aliases() -> None:
    older = compatible_platforms("manylinux_2_17_aarch64")
    assert older[0] == "manylinux_2_17_aarch64" and "manylinux_2_5_aarch64" in older
    assert {"manylinux1_aarch64", "manylinux2010_aarch64", "manylinux2014_aarch64"} <= set(older)
    assert "manylinux_2_18_aarch64" not in older
    assert compatible_platforms("linux-x86_64") == ["linux_x86_64"]  # pip's spelling too


def test_a_python_version_keeps_what_pip_would_install_on_it() -> None:
    assert kept(Narrowing(python_versions=("3.12",))) == set(WHEELS) - {"cp311", "pypy", "py2"}
    assert kept(Narrowing(python_versions=("311",))) == {"cp311", "abi3", "pure", "sdist"}
    assert kept(Narrowing(python_versions=("3.11", "3.12"))) == set(WHEELS) - {"pypy", "py2"}


def test_an_implementation_narrows_the_interpreter() -> None:
    assert kept(Narrowing(implementations=("pp",))) == {"pypy", "pure", "py2", "sdist"}
    assert kept(Narrowing(python_versions=("3.10",), implementations=("pp",))) == {
        "pypy", "pure", "sdist",
    }  # fmt: skip


def test_every_axis_at_once_and_only_wheels() -> None:
    narrowing = Narrowing(("manylinux_2_28_x86_64",), ("3.12",), ("cp",), only_wheels=True)
    assert kept(narrowing) == {"manylinux", "manylinux_2_28", "abi3", "pure"}
    assert str(narrowing) == (
        "platform manylinux_2_28_x86_64, python 3.12, implementation cp, wheels only"
    )
    assert str(Narrowing()) == "every target"


def test_a_file_packaging_cannot_read_is_kept() -> None:
    assert Narrowing(platforms=("win_amd64",)).keeps("weird-name.whl")
    assert Narrowing(platforms=("win_amd64",)).keeps("legacy-1.0.tar.bz2")


@pytest.mark.parametrize(
    ("axis", "value"),
    [("platforms", "many linux"), ("python_versions", "three"), ("implementations", "CPython")],
)
def test_a_value_no_target_has_is_refused(axis: str, value: str) -> None:
    with pytest.raises(NarrowingError, match=repr(value)):
        Narrowing(**{axis: (value,)})  # type: ignore[arg-type]  # each axis is a tuple


# -- matching a lock's entries on the index's page ----------------------------------------

SHA = {name: name[0] * 64 for name in ("a", "b", "c", "d")}


def page_file(filename: str, sha256: str | None) -> File:
    hashes = {} if sha256 is None else {"sha256": sha256}
    return File(filename, f"https://files.example/{filename}", hashes)


def test_a_file_is_found_by_name_whatever_its_url() -> None:
    files = {"lib-1.0.tar.gz": page_file("lib-1.0.tar.gz", SHA["a"])}
    wanted = LockedFile("lib", "lib-1.0.tar.gz", {"sha256": SHA["a"]})
    assert named_file(files, wanted) is files["lib-1.0.tar.gz"]
    # A lock without a hash, or a page without one: the name is enough.
    assert named_file(files, LockedFile("lib", "lib-1.0.tar.gz", {})) == files["lib-1.0.tar.gz"]
    unhashed = {"lib-1.0.tar.gz": page_file("lib-1.0.tar.gz", None)}
    assert named_file(unhashed, wanted) == unhashed["lib-1.0.tar.gz"]


def test_a_file_the_page_lacks_or_has_other_bytes_of_is_unmatched() -> None:
    files = {"lib-1.0.tar.gz": page_file("lib-1.0.tar.gz", SHA["a"])}
    assert named_file(files, LockedFile("lib", "lib-2.0.tar.gz", {})) == Unmatched(
        "lib-2.0.tar.gz", "the index lists no such file of lib"
    )
    other = named_file(files, LockedFile("lib", "lib-1.0.tar.gz", {"sha256": SHA["b"]}))
    assert other == Unmatched(
        "lib-1.0.tar.gz",
        f"the index's file is not the lock's: sha256 {SHA['a'][:16]}…,"
        f" the lock says {SHA['b'][:16]}…",
    )


def test_pinned_hashes_name_every_file_that_has_one() -> None:
    files = [
        page_file("lib-1.0.tar.gz", SHA["a"]),
        page_file("lib-1.0-py3-none-any.whl", SHA["b"]),
        page_file("lib-2.0.tar.gz", SHA["c"]),
    ]
    wanted = LockedHashes(
        "lib", "lib==1.0", frozenset({("sha256", SHA["a"]), ("sha256", SHA["b"])})
    )
    assert pinned_files(files, wanted) == (files[:2], [])
    wanted = LockedHashes(
        "lib", "lib==1.0", frozenset({("sha256", SHA["a"]), ("sha256", SHA["d"])})
    )
    assert pinned_files(files, wanted) == (
        files[:1],
        [Unmatched(f"lib==1.0 sha256:{SHA['d'][:16]}…", "no file on the index has it")],
    )


# -- the report ------------------------------------------------------------------------------


def report(**fields: object) -> Report:
    defaults: dict[str, object] = {
        "id": "job", "source": "uv.lock", "format": "uv.lock", "narrowing": "every target",
        "node": "host-1", "created": 100.0, "updated": 100.0,
    }  # fmt: skip
    return Report(**(defaults | fields))  # type: ignore[arg-type]


def test_a_report_counts_and_lists_failures_up_to_a_bound() -> None:
    job = report(files=LISTED + 10)
    for i in range(LISTED + 5):
        job.fail(f"f{i}.whl", "x" * 1000)
    job.cached, job.already = 3, 2
    assert (job.failed, len(job.failures), job.done_files) == (LISTED + 5, LISTED, LISTED + 10)
    assert len(job.failures[0].reason) == 300
    job.end(200.0)
    assert (job.status, job.finished, job.ok) == ("done", 200.0, False)
    assert decode(job.encode()) == job


def test_a_report_is_ok_when_done_with_nothing_failed() -> None:
    job = report(files=1, cached=1)
    assert not job.ok  # still running
    job.end(101.0)
    assert job.ok
    job.end(102.0, "the server stopped before the job was done")
    assert (job.status, job.ok) == ("failed", False)


def test_a_running_report_nobody_saved_for_a_while_is_lost() -> None:
    job = report(updated=100.0)
    assert job.seen(100.0 + LOST_AFTER) is job
    lost = job.seen(100.0 + LOST_AFTER + 5)
    assert lost.status == "lost" and lost.error == "host-1 stopped running it (no word for 35 s)"
    job.end(150.0)
    assert job.seen(10_000.0).status == "done"
