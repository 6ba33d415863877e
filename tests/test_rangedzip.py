"""Reading a wheel in byte ranges, pure (rangedzip.py) and over an in-process index
(ranged_metadata.py): which ranges, how many bytes, and the hostile-zip bounds."""

from __future__ import annotations

import asyncio
import io
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachepi import wheelmeta
from cachepi.filecache.ranged_metadata import MAX_RANGES, ON_LOOP, SMALL, read_metadata
from cachepi.rangedzip import FETCH_AT_LEAST, Fetched, Missing
from cachepi.upstream import NoRanges, UpstreamError
from cachepi.wheelmeta import END_READ, Archive, NotReadable, read_wheel_metadata
from tests.fakeupstream import Dist, build_wheel, core_metadata
from tests.hostile_wheels import Member, bomb_wheel, many_entries_wheel, zip_archive
from tests.inprocess import FakeIndex

FILE = random.Random(7).randbytes(5000)


@given(
    adds=st.lists(st.tuples(st.integers(0, 4999), st.integers(1, 800)), max_size=12),
    reads=st.lists(st.tuples(st.integers(0, 5100), st.integers(-1, 900)), max_size=12),
)
def test_reads_give_the_files_bytes_or_name_what_is_missing(
    adds: list[tuple[int, int]], reads: list[tuple[int, int]]
) -> None:
    fetched = Fetched(len(FILE))
    held = bytearray(len(FILE))  # 1 where a byte was fetched
    for start, length in adds:
        stop = min(start + length, len(FILE))
        fetched.add(start, FILE[start:stop])
        held[start:stop] = b"\x01" * (stop - start)
    for position, size in reads:
        fetched.seek(position)
        start = min(position, len(FILE))
        stop = len(FILE) if size < 0 else min(start + size, len(FILE))
        if all(held[start:stop]):
            assert fetched.read(size) == FILE[start:stop]
            continue
        with pytest.raises(Missing) as missing:
            fetched.read(size)
        assert (missing.value.start, missing.value.stop) == (start, stop)
        first, last = fetched.to_fetch(missing.value)
        assert start <= first < last <= len(FILE)
        assert not all(held[first:last])  # it fetches something new
        fetched.add(first, FILE[first:last])
        held[first:last] = b"\x01" * (last - first)
        fetched.seek(position)
        assert fetched.read(size) == FILE[start:stop]  # what was missing is not any more


def test_a_read_outside_what_was_fetched_fetches_at_least_a_little_and_then_more() -> None:
    fetched = Fetched(1_000_000)
    fetched.add(990_000, bytes(10_000))
    fetched.seek(100)
    with pytest.raises(Missing) as missing:
        fetched.read(30)  # a local header
    assert fetched.to_fetch(missing.value) == (100, 100 + FETCH_AT_LEAST)
    fetched.add(100, bytes(FETCH_AT_LEAST))
    fetched.seek(100 + FETCH_AT_LEAST)
    with pytest.raises(Missing) as missing:
        fetched.read(10)  # going on where the last range ended: twice as much
    assert fetched.to_fetch(missing.value) == (100 + FETCH_AT_LEAST, 100 + 3 * FETCH_AT_LEAST)
    fetched.seek(989_000)
    with pytest.raises(Missing) as missing:
        fetched.read(5000)  # up to what is fetched, not into it
    assert fetched.to_fetch(missing.value) == (989_000, 990_000)


def ranges_to_read(wheel: bytes, filename: str) -> tuple[bytes | None, list[tuple[int, int]]]:
    """What reading `wheel` over ranges gives, and the ranges fetched, without any I/O."""
    fetched = Fetched(len(wheel))
    start = max(0, len(wheel) - END_READ)
    fetched.add(start, wheel[start:])
    ranges = [(start, len(wheel))]
    while True:
        try:
            return read_wheel_metadata(fetched, filename), ranges
        except Missing as missing:
            first, last = fetched.to_fetch(missing)
            fetched.add(first, wheel[first:last])
            ranges.append((first, last))


@pytest.mark.parametrize(
    ("wheel", "most_ranges", "most_bytes"),
    [
        (build_wheel("small", "1.0"), 1, END_READ),
        (build_wheel("padded", "1.0", big_mb=30), 1, END_READ),
        (build_wheel("crowded", "1.0", big_mb=1, modules=3000), 3, 400_000),
    ],
    ids=["small", "padded", "crowded"],
)
def test_a_wheel_takes_few_ranges(wheel: Dist, most_ranges: int, most_bytes: int) -> None:
    metadata, ranges = ranges_to_read(wheel.read_bytes(), wheel.filename)
    assert metadata == wheel.metadata
    assert len(ranges) <= most_ranges, ranges
    assert sum(last - first for first, last in ranges) <= most_bytes


def test_a_metadata_far_from_the_end_and_bigger_than_a_range_is_read_in_growing_ranges() -> None:
    """A METADATA of 2 MiB (a long description, stored) in front of 1 MiB of other files."""
    metadata = core_metadata("demo", "1.0", [], None) + b"\n" + random.Random(1).randbytes(2 << 20)
    data = zip_archive(
        [
            Member.of("demo-1.0.dist-info/METADATA", metadata, 0),
            Member.of("demo/blob.bin", random.Random(2).randbytes(1 << 20), 0),
        ]
    )
    read, ranges = ranges_to_read(data, "demo-1.0-py3-none-any.whl")
    assert read == metadata
    assert len(ranges) <= 10, ranges
    assert sum(last - first for first, last in ranges) < len(metadata) + 2 * END_READ + (1 << 20)


@pytest.mark.parametrize(
    "hostile",
    [
        bomb_wheel("demo", "1.0"),
        many_entries_wheel("demo", "1.0", 200_000, claimed_entries=5),
        Dist.from_bytes("demo-1.0-py3-none-any.whl", b"not a zip file at all, not even close"),
    ],
    ids=["bomb", "crowd", "garbage"],
)
def test_hostile_wheels_are_refused_within_bounds(hostile: Dist) -> None:
    metadata, ranges = ranges_to_read(hostile.read_bytes(), hostile.filename)
    assert metadata is None
    assert sum(last - first for first, last in ranges) <= 33 * 1024**2  # the directory bound


# -- over an index ---------------------------------------------------------------------------


async def parse(archive: Archive, filename: str) -> bytes | None:
    return read_wheel_metadata(archive, filename)


async def test_ranges_are_asked_of_the_index_and_checked() -> None:
    index = FakeIndex()
    wheel = build_wheel("lib", "1.0", big_mb=1, modules=3000)
    url = index.add(wheel, metadata=False)
    assert (
        await read_metadata(index, url, wheel.filename, wheel.size, parse, asyncio.Lock())
        == wheel.metadata
    )
    assert index.count(f"lib/{wheel.filename}") <= 3
    assert index.sent < 400_000
    with pytest.raises(UpstreamError, match="the index says"):
        await read_metadata(index, url, wheel.filename, wheel.size + 1, parse, asyncio.Lock())
    index.ranges = False
    with pytest.raises(NoRanges):
        await read_metadata(index, url, wheel.filename, wheel.size, parse, asyncio.Lock())


async def test_a_wheel_needing_too_many_ranges_is_not_readable() -> None:
    index = FakeIndex()
    wheel = build_wheel("lib", "1.0")
    url = index.add(wheel, metadata=False)

    calls = 0

    async def never_enough(archive: Archive, filename: str) -> bytes | None:
        nonlocal calls
        archive.seek(calls * 4 * FETCH_AT_LEAST)  # each time a byte far from the others
        calls += 1
        archive.read(1)
        return None

    index.files[url] = bytes(4 * 1024**2)
    with pytest.raises(NotReadable, match="ranges"):
        await read_metadata(index, url, wheel.filename, None, never_enough, asyncio.Lock())
    assert index.count(f"lib/{wheel.filename}") == MAX_RANGES


async def test_readings_that_hold_much_take_turns() -> None:
    """Wheels whose central directories take megabytes (hostile, or huge), read at once:
    only one reading at a time holds more than SMALL bytes."""
    index = FakeIndex()
    crowds = [many_entries_wheel(f"crowd{i}", "1.0", 40_000) for i in range(4)]
    urls = [index.add(crowd, metadata=False) for crowd in crowds]
    held: dict[str, int] = {}  # by the readings under way
    peaks: dict[str, int] = {}
    most_big = 0

    async def watched(archive: Archive, filename: str) -> bytes | None:
        nonlocal most_big
        assert isinstance(archive, Fetched)
        held[filename] = peaks[filename] = archive.held
        most_big = max(most_big, sum(1 for size in held.values() if size > SMALL))
        await asyncio.sleep(0.01)  # the others run meanwhile
        return read_wheel_metadata(archive, filename)  # Missing: it goes on

    async def reading(url: str, crowd: Dist) -> bytes:
        try:
            return await read_metadata(index, url, crowd.filename, crowd.size, watched, big)
        finally:
            del held[crowd.filename]  # done: what it holds goes

    big = asyncio.Lock()
    read = await asyncio.gather(*map(reading, urls, crowds))
    assert read == [crowd.metadata for crowd in crowds]
    assert min(peaks.values()) > SMALL  # a directory of 40,000 entries: 1.6 MB
    assert most_big == 1


def test_a_directory_is_scanned_once_however_many_ranges_the_reading_takes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reader runs again after each range; what it found in the directory stays with
    the spans fetched (their bytes never change), so the member's range costs no scan."""
    scans = 0
    scan = wheelmeta._metadata_members

    def counted(file: Archive) -> list[wheelmeta.Member]:
        nonlocal scans
        found = scan(file)  # Missing, while the directory is not all fetched
        scans += 1
        return found

    monkeypatch.setattr(wheelmeta, "_metadata_members", counted)
    wheel = build_wheel("crowded", "1.0", big_mb=1, modules=3000)
    metadata, ranges = ranges_to_read(wheel.read_bytes(), wheel.filename)
    assert metadata == wheel.metadata
    assert (len(ranges), scans) == (3, 1)


@pytest.mark.parametrize(
    ("wheel", "on_threads"),
    [
        (build_wheel("small", "1.0"), 0),  # all of it in the end read: read there and then
        (build_wheel("crowded", "1.0", big_mb=1, modules=3000), 1),  # the directory only
        (build_wheel("described", "1.0", requires=["x" * 40_000]), 1),  # a METADATA > ON_LOOP
    ],
    ids=["small", "crowded", "big-metadata"],
)
async def test_only_readings_that_cost_go_to_the_thread(wheel: Dist, on_threads: int) -> None:
    """What a thread's round trip would cost more than is read on the event loop: a wheel
    whose end holds all of it, a member once the directory was scanned; a big directory,
    or a METADATA of more than ON_LOOP bytes, is read by `parse` (the extraction thread)."""
    index = FakeIndex()
    url = index.add(wheel, metadata=False)
    calls = 0

    async def counted(archive: Archive, filename: str) -> bytes | None:
        nonlocal calls
        calls += 1
        return read_wheel_metadata(archive, filename)

    metadata = await read_metadata(index, url, wheel.filename, wheel.size, counted, asyncio.Lock())
    assert metadata == wheel.metadata
    assert calls == on_threads
    assert (len(metadata) > ON_LOOP) is wheel.filename.startswith("described")


def test_fetched_reads_like_a_file() -> None:
    fetched = Fetched(len(FILE))
    fetched.add(0, FILE)
    stream = io.BytesIO(FILE)
    for offset, whence in [(10, 0), (5, 1), (-7, 2), (0, 2), (3, 0)]:
        assert fetched.seek(offset, whence) == stream.seek(offset, whence)
        assert fetched.read(4) == stream.read(4)
