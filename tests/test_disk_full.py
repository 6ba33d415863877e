"""A cache that cannot be written (full disk, file-size limit): clients still get their
files streamed whole, nothing half-written is kept, the log says why, serving goes on."""

from __future__ import annotations

import asyncio
import logging
import resource
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cachedir import blobs_on_disk, leftovers
from tests.conftest import ProxyFactory
from tests.fakeupstream import FakeUpstream
from tests.fetching import fetch, get_json
from tests.served import ServedProxy

pytestmark = pytest.mark.slow  # real servers on a full disk

STORE_FAILURE_WORDS = ("cannot store", "disk")


def says_why(lines: list[str]) -> bool:
    return any(word in line.lower() for line in lines for word in STORE_FAILURE_WORDS)


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, if this machine lets the test mount one."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


async def test_full_disk_still_streams_the_file_and_keeps_nothing(
    small_filesystem: Path,
    fake_upstream: FakeUpstream,
    proxy_factory: ProxyFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache_dir = small_filesystem / "cache"
    (big,) = fake_upstream.add_project("toobig", ["1.0"], big_mb=4, sdist=False)
    proxy = await proxy_factory(fake_upstream, cache_dir=cache_dir)
    with caplog.at_level(logging.INFO):
        reply = await fetch(f"{proxy.index_url}toobig/{big.filename}", seconds=15)
    assert (reply.status, reply.sha256) == (200, big.sha256)
    assert big.sha256 not in blobs_on_disk(cache_dir)
    assert leftovers(cache_dir) == []
    assert says_why([record.getMessage() for record in caplog.records]), caplog.text

    # Still serving, and caching what fits: once the space is back (the failed download's
    # unlinked part file is closed as its download ends; the kernel frees it just after).
    assert (await get_json(proxy.index_url + "app/")).status == 200
    for _ in range(100):
        if shutil.disk_usage(cache_dir).free > 1024**2:
            break
        await asyncio.sleep(0.05)
    small = fake_upstream.dists("lib")[0]
    assert (await fetch(f"{proxy.index_url}lib/{small.filename}")).sha256 == small.sha256
    assert small.sha256 in blobs_on_disk(cache_dir)


def file_size_limit(limit: int) -> Callable[[], None]:
    """For preexec_fn: writes past `limit` bytes fail with EFBIG instead of killing the
    process with SIGXFSZ. (Root ignores permission bits, so an unwritable directory cannot
    be had by chmod; a file-size limit holds for root too.)"""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


async def test_file_size_limit_still_streams_the_file_and_keeps_nothing(
    fake_upstream: FakeUpstream, tmp_path: Path, unused_tcp_port: int
) -> None:
    (big,) = fake_upstream.add_project("toobig", ["1.0"], big_mb=3, sdist=False)
    cache_dir = tmp_path / "cache"
    served = ServedProxy(
        fake_upstream.url,
        cache_dir,
        unused_tcp_port,
        preexec_fn=file_size_limit(1024**2),
    )
    await served.start()
    try:
        reply = await fetch(f"{served.index_url}toobig/{big.filename}")
        assert (reply.status, reply.sha256) == (200, big.sha256), served.log_text()
        assert big.sha256 not in blobs_on_disk(cache_dir)
        assert leftovers(cache_dir) == []
        assert says_why(served.log), served.log_text()

        # A page after that, and a file under the limit: served, and the file cached.
        assert (await get_json(served.index_url + "app/")).status == 200
        small = fake_upstream.dists("lib")[0]
        again = await fetch(f"{served.index_url}lib/{small.filename}")
        assert again.sha256 == small.sha256
        assert small.sha256 in blobs_on_disk(cache_dir)
        assert served.process is not None and served.process.returncode is None
    finally:
        await served.stop()
