"""Small HTTP helpers for tests that talk to a proxy: one request, its whole answer."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
import zstandard
from multidict import CIMultiDictProxy
from yarl import URL

JSON_TYPE = "application/vnd.pypi.simple.v1+json"
JSON = {"Accept": JSON_TYPE}


@dataclass(frozen=True)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()

    @property
    def one_line(self) -> bool:
        """The body is exactly one line of text, as gateway errors must be."""
        return self.body.count(b"\n") == 1 and self.body.endswith(b"\n") and len(self.body) > 1

    @property
    def stale(self) -> bool:
        return self.headers.get("X-Cachepi-Stale") == "1"


async def fetch(
    url: str,
    *,
    method: str = "GET",
    session: aiohttp.ClientSession | None = None,
    raw_path: bool = False,
    headers: Mapping[str, str] | None = None,
    data: object = None,
    allow_redirects: bool = True,
    seconds: float = 60,
) -> Reply:
    """One request and its whole body, within `seconds`. `raw_path`: send the URL exactly
    as written (no client-side normalizing or re-quoting of `%2e%2e` and friends)."""
    target = URL(url, encoded=True) if raw_path else url
    owned = session is None
    active = aiohttp.ClientSession() if session is None else session
    try:
        async with (
            asyncio.timeout(seconds),
            active.request(
                method, target, headers=headers, data=data, allow_redirects=allow_redirects
            ) as response,
        ):
            return Reply(response.status, response.headers, await response.read())
    finally:
        if owned:
            await active.close()


async def get_json(url: str, **kwargs: object) -> Reply:
    return await fetch(url, headers=JSON, **kwargs)  # type: ignore[arg-type]


async def wait_healthy(base: str, within: float = 30) -> None:
    """Poll `base`/health until it answers 200."""
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(base + "/health") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"{base} never became healthy")


def decoded(reply: Reply) -> bytes:
    """The body as the page it is, whatever its Content-Encoding (identity, gzip, zstd)."""
    coding = reply.headers.get("Content-Encoding", "identity")
    if coding == "gzip":
        return gzip.decompress(reply.body)
    if coding == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(reply.body)
    return reply.body
