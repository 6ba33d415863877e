"""The file cache in-process: FakeIndex files, a FakeClock, the embedded stores.

Misses stream and store, hits cost nothing upstream, one upstream read per file however
many ask, wrong bytes are never stored nor completed, eviction follows last use, and the
METADATA of cached wheels is extracted and forgotten with them.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Iterable
from typing import Any

import pytest

from cachepi.filecache import Download, FileCache, FileSpec
from cachepi.store import Stores
from cachepi.store.protocols import StoredBlob, StoreUnavailable
from cachepi.store.sqlite import SqliteMetadata
from cachepi.types import DownloadFailed
from cachepi.upstream import UpstreamError, UpstreamNotFound
from cachepi.wheelmeta import UNREADABLE
from tests.fakeupstream.dists import Dist, build_sdist, build_wheel
from tests.inprocess import FakeClock, FakeIndex, settle
from tests.inprocess_fixtures import FileCacheFactory, clock, make_file_cache, read, stores


@pytest.fixture
def index() -> FakeIndex:
    return FakeIndex("pypi", chunk=4096)


def spec_for(index: FakeIndex, dist: Dist, *, metadata: bool = True, **changes: Any) -> FileSpec:
    """The spec the index's listing gives for `dist` (served as it is unless said)."""
    url = f"{index.url}{dist.project}/{dist.filename}"
    if url not in index.files:
        index.add(dist, metadata=metadata)
    fields: dict[str, Any] = {
        "url": url, "hashes": {"sha256": dist.sha256}, "size": dist.size, "upstream": index,
        "project": dist.project, "filename": dist.filename,
    }  # fmt: skip
    if dist.is_wheel and not metadata:
        fields["wheel_without_metadata"] = dist.filename
    return FileSpec(**(fields | changes))


def sdist(size: int, seed: str = "x") -> Dist:
    """A file of `size` seeded random bytes."""
    return Dist.from_bytes(f"blob-{seed}-1.0.tar.gz", random.Random(seed).randbytes(size))


async def stored(stores: Stores) -> dict[str, int]:
    """sha256 -> size of the recorded blobs, after checking that the blob store holds
    exactly those, each whole."""
    recorded = stores.metadata.blobs()
    assert dict([entry async for entry in stores.blobs.listing()]) == recorded
    for sha256 in recorded:
        blob = await stores.blobs.open(sha256)
        assert blob is not None and hashlib.sha256(await read(blob)).hexdigest() == sha256
    return recorded


def leftovers(stores: Stores) -> list[str]:
    return sorted(path.name for path in stores.blobs.temp_dir.iterdir())


# -- misses and hits -----------------------------------------------------------------------------


async def test_a_miss_streams_and_stores_and_the_next_get_is_a_hit(
    index: FakeIndex, stores: Stores, make_file_cache: FileCacheFactory
) -> None:
    cache = await make_file_cache()
    dist = build_sdist("lib", "1.0")
    spec = spec_for(index, dist)
    miss = await cache.get(spec)
    assert isinstance(miss, Download)
    assert await read(miss) == dist.read_bytes()
    assert await stored(stores) == {dist.sha256: dist.size}  # stored before the last byte
    assert stores.metadata.blobs_of("lib")[0][:3] == (dist.sha256, dist.filename, dist.size)
    hit = await cache.get(spec)
    assert not isinstance(hit, Download) and hit.sha256 == dist.sha256
    assert await read(hit) == dist.read_bytes()
    assert index.count("lib/" + dist.filename) == 1
    assert leftovers(stores) == []


async def test_concurrent_gets_of_one_file_cause_one_upstream_read(
    index: FakeIndex, stores: Stores, make_file_cache: FileCacheFactory
) -> None:
    cache = await make_file_cache()
    dist = sdist(300_000)
    spec = spec_for(index, dist)
    index.hold()
    gets = [asyncio.create_task(cache.get(spec)) for _ in range(10)]
    await settle()
    assert not any(task.done() for task in gets)  # all wait for the one response
    index.release()
    downloads = await asyncio.gather(*gets)
    assert len({id(download) for download in downloads}) == 1
    bodies = await asyncio.gather(*(read(download) for download in downloads))
    assert all(body == dist.read_bytes() for body in bodies)
    assert index.count(f"blob-x/{dist.filename}") == 1
    assert await stored(stores) == {dist.sha256: dist.size}


async def test_a_file_without_a_hash_is_found_again_by_its_url(
    index: FakeIndex, stores: Stores, make_file_cache: FileCacheFactory
) -> None:
    cache = await make_file_cache()
    dist = build_sdist("lib", "1.0")
    spec = spec_for(index, dist, hashes={})
    assert await read(await cache.get(spec)) == dist.read_bytes()
    assert stores.metadata.get_ref(spec.url) == dist.sha256
    hit = await cache.get(spec)
    assert not isinstance(hit, Download) and await read(hit) == dist.read_bytes()
    assert index.count(f"lib/{dist.filename}") == 1


async def test_a_file_the_upstream_lost_is_its_404_and_nothing_is_stored(
    index: FakeIndex, stores: Stores, make_file_cache: FileCacheFactory
) -> None:
    cache = await make_file_cache()
    dist = build_sdist("lib", "1.0")
    spec = spec_for(index, dist)
    del index.files[spec.url]
    with pytest.raises(UpstreamNotFound):
        await cache.get(spec)
    index.fail(UpstreamError("pypi timed out", status=504))
    with pytest.raises(UpstreamError) as raised:
        await cache.get(spec)
    assert raised.value.status == 504
    assert await stored(stores) == {} and leftovers(stores) == []


# -- wrong bytes ---------------------------------------------------------------------------------


async def partial_read(download: Download) -> tuple[int, BaseException | None]:
    """How many bytes a reader got, and how its read ended."""
    received = 0
    try:
        async for chunk in download.chunks():
            received += len(chunk)
    except DownloadFailed as failure:
        return received, failure
    return received, None


@pytest.mark.parametrize("readers", [1, 3])
async def test_wrong_bytes_are_never_stored_and_readers_fail_before_their_last_byte(
    readers: int, index: FakeIndex, stores: Stores, make_file_cache: FileCacheFactory
) -> None:
    cache = await make_file_cache()
    dist = sdist(100_000)
    corrupt = bytearray(dist.read_bytes())
    corrupt[-1] ^= 1  # one bit, in the very last byte
    index.add(dist, served=bytes(corrupt))
    download = await cache.get(spec_for(index, dist))
    assert isinstance(download, Download)
    results = await asyncio.gather(*(partial_read(download) for _ in range(readers)))
    for received, failure in results:
        assert isinstance(failure, DownloadFailed) and "sha256 mismatch" in str(failure)
        assert received < dist.size
    assert await stored(stores) == {} and leftovers(stores) == []
    # Nothing is remembered of the failure: the next request downloads again, and succeeds.
    index.add(dist)
    assert await read(await cache.get(spec_for(index, dist))) == dist.read_bytes()
    assert index.count(f"blob-x/{dist.filename}") == 2


async def test_a_size_mismatch_alone_refuses_the_bytes(
    index: FakeIndex, stores: Stores, make_file_cache: FileCacheFactory
) -> None:
    cache = await make_file_cache()
    dist = sdist(100_000)
    index.add(dist, served=dist.read_bytes()[:-100])  # cut short; the index gave no hash
    # The upstream's length disagrees with the index's: refused before any byte goes out.
    with pytest.raises(DownloadFailed, match=f"{dist.size - 100} bytes.*{dist.size}"):
        await cache.get(spec_for(index, dist, hashes={}))
    assert await stored(stores) == {} and leftovers(stores) == []
    assert stores.metadata.get_ref(f"{index.url}blob-x/{dist.filename}") is None


# -- eviction ----------------------------------------------------------------------------------


async def test_eviction_removes_the_least_recently_used_first(
    index: FakeIndex, stores: Stores, make_file_cache: FileCacheFactory, clock: FakeClock
) -> None:
    a, b, c = (sdist(40_000, seed) for seed in "abc")
    cache = await make_file_cache(max_bytes=100_000)  # room for two
    for dist in (a, b):
        assert await read(await cache.get(spec_for(index, dist))) == dist.read_bytes()
        clock.advance(60)
    hit = await cache.get(spec_for(index, a))  # a is used again, after b
    assert not isinstance(hit, Download)
    hit.close()
    cache.accounting.flush_touches()
    clock.advance(60)
    assert await read(await cache.get(spec_for(index, c))) == c.read_bytes()
    assert await stored(stores) == {a.sha256: a.size, c.sha256: c.size}
    assert stores.metadata.blob_stats() == (2, a.size + c.size)


async def test_a_file_larger_than_the_cache_streams_but_is_not_stored(
    index: FakeIndex, stores: Stores, make_file_cache: FileCacheFactory
) -> None:
    small, big = sdist(10_000, "s"), sdist(50_000, "b")
    cache = await make_file_cache(max_bytes=40_000)
    assert await read(await cache.get(spec_for(index, small))) == small.read_bytes()
    assert await read(await cache.get(spec_for(index, big))) == big.read_bytes()
    assert await stored(stores) == {small.sha256: small.size}  # nothing evicted for it either
    again = await cache.get(spec_for(index, big))  # not stored: downloaded again
    assert isinstance(again, Download) and await read(again) == big.read_bytes()
    assert index.count(f"blob-b/{big.filename}") == 2 and leftovers(stores) == []


async def test_a_cache_of_zero_bytes_stores_nothing(
    index: FakeIndex, stores: Stores, make_file_cache: FileCacheFactory
) -> None:
    cache = await make_file_cache(max_bytes=0)
    dist = build_sdist("lib", "1.0")
    for _ in range(2):
        assert await read(await cache.get(spec_for(index, dist))) == dist.read_bytes()
    assert await stored(stores) == {} and index.count(f"lib/{dist.filename}") == 2
    assert leftovers(stores) == []


# -- METADATA extracted from cached wheels -------------------------------------------------------


@pytest.mark.parametrize("removed", ["wheel", "metadata"])
async def test_a_cached_wheel_gets_its_metadata_extracted_and_removal_forgets_it(
    removed: str, index: FakeIndex, stores: Stores, make_file_cache: FileCacheFactory
) -> None:
    cache = await make_file_cache()
    wheel = build_wheel("lib", "1.0", requires=["dep>=2"])
    assert wheel.metadata is not None and wheel.metadata_sha256 is not None
    assert await read(await cache.get(spec_for(index, wheel, metadata=False))) == wheel.read_bytes()
    await cache.extractions.drain()  # extraction is background work
    generation, pairs = cache.extractions.known()
    assert pairs == {wheel.sha256: wheel.metadata_sha256}
    metadata = await stores.blobs.open(wheel.metadata_sha256)
    assert metadata is not None and await read(metadata) == wheel.metadata  # byte-identical
    gone = wheel.sha256 if removed == "wheel" else wheel.metadata_sha256
    await cache.accounting.remove(gone)
    later, pairs = cache.extractions.known()
    assert pairs == {} and later > generation
    assert stores.metadata.extracted_metadata() == {}
    assert gone not in await stored(stores)


async def test_gc_forgetting_a_vanished_metadata_blob_stops_its_advertisement(
    index: FakeIndex, stores: Stores, make_file_cache: FileCacheFactory, clock: FakeClock
) -> None:
    server = await make_file_cache()
    wheel = build_wheel("lib", "1.0")
    assert wheel.metadata_sha256 is not None
    assert (
        await read(await server.get(spec_for(index, wheel, metadata=False))) == wheel.read_bytes()
    )
    await server.extractions.drain()
    clock.advance(1)
    assert server.extractions.known()[1] == {wheel.sha256: wheel.metadata_sha256}
    await stores.blobs.remove(wheel.metadata_sha256)  # the file vanished from the disk
    gc = FileCache(stores, 1 << 30, clock=clock)  # as `cachepi gc` opens the cache
    await gc.open(reconcile=False)
    assert await gc.accounting.match_records() == (0, 1, 0)  # its record is dropped
    assert stores.metadata.extracted_metadata() == {}  # and the stored pair with it
    clock.advance(1)  # the server looks at the store's generation at most once a second
    assert server.extractions.known()[1] == {}


async def test_other_processes_take_in_pairs_that_come_and_go_one_wheel_at_a_time(
    index: FakeIndex,
    stores: Stores,
    make_file_cache: FileCacheFactory,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What another process extracted or evicted reaches this one within a second, pair
    by pair: the pairs of every cached wheel are not read again for each one."""
    server, other = await make_file_cache(), await make_file_cache()
    asked: list[list[str] | None] = []
    real = SqliteMetadata.extracted_metadata

    def spied(self: SqliteMetadata, wheels: Iterable[str] | None = None) -> dict[str, str]:
        wheels = None if wheels is None else sorted(wheels)
        asked.append(wheels)
        return real(self, wheels)

    monkeypatch.setattr(SqliteMetadata, "extracted_metadata", spied)
    wheels = [build_wheel("lib", version) for version in ("1.0", "2.0")]
    for wheel in wheels:
        assert await read(await server.get(spec_for(index, wheel, metadata=False)))
    await server.extractions.drain()
    clock.advance(1)
    assert other.extractions.known()[1] == {w.sha256: w.metadata_sha256 for w in wheels}
    await server.accounting.remove(wheels[0].sha256)
    assert server.extractions.known()[1] == {wheels[1].sha256: wheels[1].metadata_sha256}
    clock.advance(1)
    assert other.extractions.known()[1] == {wheels[1].sha256: wheels[1].metadata_sha256}
    assert asked and None not in asked


async def test_a_wheel_whose_index_has_metadata_is_not_extracted(
    index: FakeIndex, stores: Stores, make_file_cache: FileCacheFactory
) -> None:
    cache = await make_file_cache()
    wheel = build_wheel("lib", "1.0")
    assert await read(await cache.get(spec_for(index, wheel))) == wheel.read_bytes()
    assert cache.extractions.known()[1] == {}
    assert await stored(stores) == {wheel.sha256: wheel.size}


# -- a store that does not answer ----------------------------------------------------------------


class Unanswering:
    """A store whose lookups raise StoreUnavailable; everything else goes through."""

    def __init__(self, inner: object, *failing: str) -> None:
        self._inner, self._failing = inner, failing

    def __getattr__(self, name: str) -> Any:
        if name in self._failing:
            raise StoreUnavailable(f"{name}: the store does not answer")
        return getattr(self._inner, name)


async def test_a_store_that_does_not_answer_has_nothing_and_the_file_still_streams(
    index: FakeIndex, stores: Stores, make_file_cache: FileCacheFactory
) -> None:
    dist = build_sdist("lib", "1.0")
    cache = await make_file_cache()
    assert await read(await cache.get(spec_for(index, dist))) == dist.read_bytes()
    broken = Stores(
        Unanswering(stores.metadata, "get_ref"),  # type: ignore[arg-type]
        Unanswering(stores.blobs, "open", "contains"),  # type: ignore[arg-type]
        stores.locks,
    )
    unanswered = FileCache(broken, 1 << 30)
    assert await unanswered.cached(spec_for(index, dist)) is None
    assert await unanswered.cached(spec_for(index, dist, hashes={})) is None
    download = await unanswered.get(spec_for(index, dist))
    assert isinstance(download, Download) and await read(download) == dist.read_bytes()
    await unanswered.close()
    assert index.count(f"lib/{dist.filename}") == 2


async def test_a_wheel_without_readable_metadata_is_opened_for_extraction_once(
    index: FakeIndex, stores: Stores, make_file_cache: FileCacheFactory
) -> None:
    """Hits on a cached wheel whose METADATA cannot be read do not open it again and again
    (from S3 that would be a whole download per hit)."""
    opened: list[str] = []
    real_open = stores.blobs.open

    async def counting_open(sha256: str) -> StoredBlob | None:
        opened.append(sha256)
        return await real_open(sha256)

    stores.blobs.open = counting_open  # type: ignore[method-assign]  # a counting spy
    cache = await make_file_cache()
    broken = Dist.from_bytes("lib-1.0-py3-none-any.whl", b"not a zip file at all")
    spec = spec_for(index, broken, metadata=False)
    assert await read(await cache.get(spec)) == broken.read_bytes()
    hits = 5
    for _ in range(hits):
        assert await read(await cache.get(spec)) == broken.read_bytes()
        await settle()
    assert cache.extractions.known()[1] == {broken.sha256: UNREADABLE}  # advertised as none
    # One lookup per get, one before the download (another process may have stored it),
    # and one extraction attempt.
    assert opened.count(broken.sha256) == (1 + hits) + 1 + 1


__all__ = ["clock", "make_file_cache", "stores"]  # fixtures, for pytest
