"""In-process doubles for the caches' seams, like httpx's MockTransport: an `Index` holding
its pages and files in memory, a settable clock, and the embedded stores in a directory.

    index = FakeIndex("pypi", ttl=600)
    index.add(build_wheel("lib", "1.0"), uploaded=clock.now - 86400)
    pages = UpstreamPages([index], stores.metadata, stores.locks, 60, clock=clock)
    cache = IndexCache(pages)
    index.count("lib/")            # requests per path, relative to index.url ("" is the root)
    index.fail(); index.hold()     # raise UpstreamError / hang until index.release()
    index.ranges = False           # a server without Range support
    index.sent                     # file bytes it handed out, whole files and ranges
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from cachepi.store import Stores
from cachepi.store.directory import DirectoryBlobs
from cachepi.store.flock import FileLocks
from cachepi.store.sqlite import SqliteMetadata
from cachepi.upstream import Health, NoRanges, PageResponse, Span, UpstreamError, UpstreamNotFound
from tests.fakeupstream.dists import Dist, normalize

T = TypeVar("T")
JSON_TYPE = "application/vnd.pypi.simple.v1+json"


@dataclass
class FakeClock:
    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def local_stores(root: Path) -> Stores:
    """The embedded default, as store/__init__.py opens it."""
    blobs = DirectoryBlobs(root)
    metadata = SqliteMetadata(root / "cachepi.sqlite3")
    return Stores(metadata, blobs, FileLocks(blobs.temp_dir, root / "store.lock"))


async def settle(rounds: int = 50) -> None:
    """Let every ready task run until it blocks (no time passes)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class FakeIndex:
    """An upstream index in memory, speaking PEP 691 JSON with ETags."""

    def __init__(
        self, name: str = "pypi", ttl: int = 600, min_release_age: int | None = None,
        chunk: int = 64 * 1024,
    ) -> None:  # fmt: skip
        self.name, self.ttl, self.min_release_age = name, ttl, min_release_age
        self.url = f"https://{name}.test/simple/"
        self.health = Health()
        self.projects: dict[str, dict[str, Any]] = {}  # normalized name -> PEP 691 page
        self.files: dict[str, bytes] = {}  # file URL -> the bytes served for it
        self.requests: Counter[str] = Counter()  # path relative to `url` -> requests
        self.answers: list[tuple[str, int]] = []  # (path, status) of every answered request
        self.failure: UpstreamError | None = None
        self.ranges = True
        self.sent = 0
        self._gate = asyncio.Event()
        self._gate.set()
        self._chunk = chunk

    def add(
        self, dist: Dist, *, uploaded: float | None = None, metadata: bool = True,
        served: bytes | None = None,
    ) -> str:  # fmt: skip
        """List `dist` on its project's page (`metadata`: with PEP 658 core-metadata) and
        serve its bytes, or `served` instead; returns its URL."""
        url = f"{self.url}{dist.project}/{dist.filename}"
        entry: dict[str, Any] = {
            "filename": dist.filename, "url": url, "hashes": {"sha256": dist.sha256},
            "size": dist.size, "core-metadata": False,
        }  # fmt: skip
        if metadata and dist.metadata_sha256:
            entry["core-metadata"] = {"sha256": dist.metadata_sha256}
        if uploaded is not None:
            entry["upload-time"] = datetime.fromtimestamp(uploaded, UTC).isoformat()
        page = self.projects.setdefault(dist.project, {"name": dist.project, "files": []})
        page["files"] = [f for f in page["files"] if f["filename"] != dist.filename] + [entry]
        page["versions"] = sorted({*page.get("versions", []), dist.version})
        self.files[url] = dist.read_bytes() if served is None else served
        return url

    def quarantine(self, project: str) -> None:
        self.projects[normalize(project)]["project-status"] = {"status": "quarantined"}

    def count(self, path: str) -> int:
        return self.requests[path]

    def fail(self, error: UpstreamError | None = None) -> None:
        self.failure = error or UpstreamError(f"{self.url}: upstream answered 503", 503)

    def recover(self) -> None:
        self.failure = None

    def hold(self) -> None:
        """Requests from now on hang until `release()`."""
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    async def _transit(self) -> None:
        """A held answer waits here; a failure set meanwhile still hits it (a timeout)."""
        await self._gate.wait()
        if self.failure is not None:
            self.health.failed(str(self.failure))
            raise self.failure

    def _answer(self, path: str, status: int) -> None:
        self.answers.append((path, status))
        self.health.succeeded()

    async def fetch_page(
        self, path: str, etag: str | None = None, last_modified: str | None = None
    ) -> PageResponse:
        self.requests[path] += 1
        # The answer is what the index has when the request arrives, even if held after.
        if path == "":
            page: dict[str, Any] | None = {"projects": [{"name": n} for n in self.projects]}
        else:
            page = self.projects.get(path.rstrip("/"))
        body = json.dumps({"meta": {"api-version": "1.1"}} | page).encode() if page else b""
        tag = f'"{hashlib.sha256(body).hexdigest()[:16]}"'
        await self._transit()
        if page is None:
            self._answer(path, 404)
            raise UpstreamNotFound(self.url + path)
        status = 304 if etag == tag else 200
        self._answer(path, status)
        return PageResponse(
            status, body if status == 200 else None, JSON_TYPE, tag, None, self.url + path
        )

    async def _requested(self, url: str) -> tuple[str, bytes]:
        """A file request's path and the file's bytes, counted; UpstreamNotFound (answered
        404) if there is no such file."""
        path = url.removeprefix(self.url)
        self.requests[path] += 1
        data = self.files.get(url)
        await self._transit()
        if data is None:
            self._answer(path, 404)
            raise UpstreamNotFound(url)
        return path, data

    @contextlib.asynccontextmanager
    async def open_file(self, url: str) -> AsyncIterator[tuple[int | None, AsyncIterator[bytes]]]:
        path, data = await self._requested(url)
        self._answer(path, 200)
        yield len(data), self._chunks(data)

    async def _chunks(self, data: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(data), self._chunk):
            self.sent += len(data[start : start + self._chunk])
            yield data[start : start + self._chunk]
            await asyncio.sleep(0)  # like a socket: other readers run meanwhile

    @contextlib.asynccontextmanager
    async def open_range(self, url: str, start: int, stop: int | None) -> AsyncIterator[Span]:
        path, data = await self._requested(url)
        if not self.ranges:
            self._answer(path, 200)
            raise NoRanges("the upstream answered 200 to a range request")
        self._answer(path, 206)
        first = max(0, len(data) + start) if start < 0 else start
        end = len(data) if stop is None else min(stop, len(data))
        yield Span(first, end, len(data), self._chunks(data[first:end]))

    async def head_file(self, url: str) -> int | None:
        path = url.removeprefix(self.url)
        self.requests[path] += 1
        data = self.files.get(url)
        await self._transit()
        self._answer(path, 404 if data is None else 200)
        if data is None:
            raise UpstreamNotFound(url)
        return len(data)

    async def retrying(
        self, attempt: Callable[[], Awaitable[T]], safe: Callable[[], bool] = lambda: True
    ) -> T:
        return await attempt()  # one attempt: every request the test makes is counted once
