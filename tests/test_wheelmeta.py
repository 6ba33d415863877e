"""Extracting a wheel's METADATA for indexes without PEP 658."""

from __future__ import annotations

import dataclasses
import io
import time
import zipfile
import zlib
from pathlib import Path

import pytest

from cachepi.simple.model import File, Project
from cachepi.wheelmeta import (
    END_READ,
    MAX_ENTRIES,
    MAX_METADATA_BYTES,
    lacks_metadata,
    read_wheel_metadata,
    with_wheel_metadata,
)
from tests.fakeupstream import build_wheel, core_metadata
from tests.hostile_wheels import (
    Member,
    bomb_wheel,
    many_entries_wheel,
    peak_rss,
    peak_rss_reset,
    zero_bomb,
    zip_archive,
)

WHEEL = "demo-1.0-py3-none-any.whl"


def zip_with(path: Path, members: dict[str, bytes]) -> Path:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    path.write_bytes(buffer.getvalue())
    return path


def test_metadata_bytes_are_the_wheels_own(tmp_path: Path) -> None:
    wheel = build_wheel("demo", "1.0", requires=["lib>=1"])
    path = tmp_path / "w.whl"
    path.write_bytes(wheel.read_bytes())
    assert read_wheel_metadata(path, wheel.filename) == wheel.metadata


def test_the_dist_info_named_after_the_wheel_wins(tmp_path: Path) -> None:
    path = zip_with(
        tmp_path / "w.whl",
        {"other-2.0.dist-info/METADATA": b"other", "demo-1.0.dist-info/METADATA": b"mine"},
    )
    assert read_wheel_metadata(path, WHEEL) == b"mine"


def test_no_or_ambiguous_or_nested_metadata_gives_none(tmp_path: Path) -> None:
    ambiguous = {"a-1.dist-info/METADATA": b"a", "b-1.dist-info/METADATA": b"b"}
    assert read_wheel_metadata(zip_with(tmp_path / "a.whl", ambiguous), WHEEL) is None
    nested = {"x/demo-1.0.dist-info/METADATA": b"n"}
    assert read_wheel_metadata(zip_with(tmp_path / "n.whl", nested), WHEEL) is None
    (tmp_path / "bad.whl").write_bytes(b"not a zip")
    assert read_wheel_metadata(tmp_path / "bad.whl", WHEEL) is None


def test_only_wheels_without_metadata_are_enriched() -> None:
    files = [
        File(WHEEL, "https://x/" + WHEEL, {"sha256": "a" * 64}),
        File("demo-1.0.tar.gz", "https://x/demo-1.0.tar.gz", {"sha256": "b" * 64}),
        File(
            "demo-0.9-py3-none-any.whl", "https://x/0.9", {"sha256": "c" * 64}, core_metadata=True
        ),
    ]
    project = Project("demo", files)
    assert lacks_metadata(project)
    extracted = {"a" * 64: "d" * 64, "b" * 64: "e" * 64, "c" * 64: "f" * 64}
    enriched = with_wheel_metadata(project, extracted)
    assert [f.core_metadata for f in enriched.files] == [{"sha256": "d" * 64}, False, True]
    assert not lacks_metadata(enriched)


# -- hostile and odd archives --------------------------------------------------------------------


@pytest.mark.parametrize("method", [0, 8])
@pytest.mark.parametrize("zip64", [False, True])
@pytest.mark.parametrize("prefix", [b"", b"#!/bin/sh\nexit 0\n" * 40])
def test_odd_but_valid_archives_read_as_zipfile_reads_them(
    method: int, zip64: bool, prefix: bytes
) -> None:
    metadata = core_metadata("demo", "1.0", ["lib>=1"], None)
    members = [
        Member.of("demo/__init__.py", b"x = 1\n", method),
        Member.of("demo-1.0.dist-info/METADATA", metadata, method),
        Member.of("demo-1.0.dist-info/WHEEL", b"Wheel-Version: 1.0\n", method),
    ]
    data = zip_archive(members, prefix=prefix, zip64=zip64, comment=b"a comment")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.read("demo-1.0.dist-info/METADATA") == metadata
    assert read_wheel_metadata(io.BytesIO(data), WHEEL) == metadata


@pytest.mark.parametrize("comment_length", [0, END_READ - 30, END_READ, 40_000, 0xFFFF])
def test_the_end_record_is_found_behind_a_comment_of_any_length(comment_length: int) -> None:
    """The end of an archive is read in two steps (the last END_READ bytes, then as much as
    a comment can take): a comment either side of the first step's bytes is read past."""
    metadata = core_metadata("demo", "1.0", [], None)
    members = [Member.of("demo-1.0.dist-info/METADATA", metadata, 8)]
    data = zip_archive(members, comment=b"PK\x05" * (comment_length // 3))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.read("demo-1.0.dist-info/METADATA") == metadata
    assert read_wheel_metadata(io.BytesIO(data), WHEEL) == metadata


def test_a_zip_bomb_is_refused_having_inflated_no_more_than_it_claims(tmp_path: Path) -> None:
    """METADATA claiming 1 KiB that inflates to 1 GiB of zeros (zipfile inflated it all, and
    more than 2 GiB of memory went with it); and one claiming just under the bound."""
    for claimed in (1024, MAX_METADATA_BYTES):
        bomb = bomb_wheel("demo", "1.0", inflated=1 << 30, claimed=claimed)
        path = tmp_path / bomb.filename
        path.write_bytes(bomb.read_bytes())
        del bomb
        if not peak_rss_reset():
            pytest.skip("this kernel does not let a process reset its peak RSS")
        before = peak_rss()
        started = time.perf_counter()
        assert read_wheel_metadata(path, WHEEL) is None
        assert time.perf_counter() - started < 2
        assert peak_rss() - before < 50 * 1024**2


def test_a_member_claiming_more_than_the_bound_is_not_read() -> None:
    huge = Member("demo-1.0.dist-info/METADATA", zero_bomb(1 << 20), 3 << 30, 0)
    data = zip_archive([huge], zip64=True)
    assert read_wheel_metadata(io.BytesIO(data), WHEEL) is None


def test_a_member_holding_other_bytes_than_it_claims_is_refused() -> None:
    real = Member.of("demo-1.0.dist-info/METADATA", b"Name: demo\nVersion: 1.0\n")
    lies = [
        dataclasses.replace(real, crc=real.crc ^ 1),  # other bytes
        dataclasses.replace(real, size=real.size + 1),  # fewer bytes
        dataclasses.replace(real, size=real.size - 1),  # more bytes
        dataclasses.replace(real, payload=real.payload[:-3]),  # cut short
        dataclasses.replace(real, method=14),  # a compression wheels do not use (LZMA)
    ]
    expected = zlib.decompress(real.payload, -zlib.MAX_WBITS)
    assert read_wheel_metadata(io.BytesIO(zip_archive([real])), WHEEL) == expected
    for lie in lies:
        assert read_wheel_metadata(io.BytesIO(zip_archive([lie])), WHEEL) is None, lie


@pytest.mark.parametrize("claimed_entries", [None, 5])
def test_an_archive_of_too_many_entries_is_refused_quickly(claimed_entries: int | None) -> None:
    """200,000 entries: zipfile took over a second to parse them, before reading anything.
    Refused from the count in the end record, or, if that lies, after scanning the bound."""
    crowd = many_entries_wheel("demo", "1.0", 200_000, claimed_entries=claimed_entries)
    started = time.perf_counter()
    assert read_wheel_metadata(io.BytesIO(crowd.read_bytes()), crowd.filename) is None
    assert time.perf_counter() - started < 1


def test_a_big_honest_archive_is_read_in_bounded_time() -> None:
    crowd = many_entries_wheel("demo", "1.0", MAX_ENTRIES - 10)
    started = time.perf_counter()
    assert read_wheel_metadata(io.BytesIO(crowd.read_bytes()), crowd.filename) == crowd.metadata
    assert time.perf_counter() - started < 1
