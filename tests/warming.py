"""Helpers for the warm tests: platform wheels, locks written from the fake upstream's files,
and following a warm job over HTTP."""

from __future__ import annotations

import asyncio
import io
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp

from tests.fakeupstream import Dist, FakeUpstream, build_wheel

# The tags of `native`'s wheels, one per platform a universal lock lists.
NATIVE_TAGS = (
    "cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64",
    "cp312-cp312-manylinux_2_28_x86_64",
    "cp312-cp312-macosx_11_0_arm64",
    "cp312-cp312-win_amd64",
)


def tagged_wheel(name: str, version: str, tag: str) -> Dist:
    """`build_wheel`'s wheel for another platform: its WHEEL file and its name say `tag`."""
    base = build_wheel(name, version)
    assert base.data is not None
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(base.data)) as source,
        zipfile.ZipFile(out, "w") as wheel,
    ):
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith(".dist-info/WHEEL"):
                data = data.replace(b"Tag: py3-none-any", f"Tag: {tag}".encode())
            wheel.writestr(info, data)
    filename = f"{name}-{version}-{tag}.whl"
    return Dist.from_bytes(filename, out.getvalue(), metadata=base.metadata)


def add_native(upstream: FakeUpstream, version: str = "1.0") -> list[Dist]:
    """A project with only platform wheels, one per NATIVE_TAGS."""
    return [upstream.add_dist(tagged_wheel("native", version, tag)) for tag in NATIVE_TAGS]


def pylock(dists: Iterable[Dist], files_at: str = "https://mirror.example/files/") -> str:
    """A pylock.toml (PEP 751) naming `dists`, at URLs of another index than the proxy's."""
    releases: dict[tuple[str, str], list[Dist]] = {}
    for dist in dists:
        releases.setdefault((dist.project, dist.version), []).append(dist)
    lines = ['lock-version = "1.0"', 'created-by = "tests"']
    for (project, version), files in releases.items():
        lines += ["", "[[packages]]", f'name = "{project}"', f'version = "{version}"']
        entries = {dist.filename: _pylock_file(dist, files_at) for dist in files}
        sdists = [entry for name, entry in entries.items() if not name.endswith(".whl")]
        wheels = [entry for name, entry in entries.items() if name.endswith(".whl")]
        lines += [f"sdist = {entry}" for entry in sdists]
        if wheels:
            lines.append(f"wheels = [{', '.join(wheels)}]")
    return "\n".join(lines) + "\n"


def _pylock_file(dist: Dist, files_at: str) -> str:
    return (
        f'{{ url = "{files_at}{dist.filename}", size = {dist.size},'
        f' hashes = {{ sha256 = "{dist.sha256}" }} }}'
    )


def blob_path(cache_dir: Path, sha256: str) -> Path:
    return cache_dir / "blobs" / sha256[:2] / sha256


async def finished_job(
    session: aiohttp.ClientSession, url: str, within: float = 20.0
) -> dict[str, Any]:
    """GET a warm job's report until it is no longer running."""
    async with asyncio.timeout(within):
        while True:
            async with session.get(url) as response:
                assert response.status == 200, await response.text()
                report: dict[str, Any] = await response.json()
            if report["status"] != "running":
                return report
            await asyncio.sleep(0.05)
