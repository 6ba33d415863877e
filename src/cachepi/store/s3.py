"""Blobs in an S3-compatible object store (AWS S3, MinIO, Ceph RGW, SeaweedFS...), shared
by every node of a cluster; temp and part files stay on the node's own disk.

Objects are keyed by sha256 and written once, after the bytes verified, with a conditional
create: two nodes storing the same file cannot overwrite each other (and would write the
same bytes anyway). Reads are streamed, with ranges; `presign` gives a URL a client can be
redirected to instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import obstore
from obstore.exceptions import AlreadyExistsError, NotFoundError
from obstore.store import S3Store

from cachepi.store.blobs import BlobStore
from cachepi.store.metadata import StoreHealth, StoreUnavailable

log = logging.getLogger(__name__)

# obstore raises its own classes or the builtin ones, depending on the call.
_NOT_FOUND = (NotFoundError, FileNotFoundError)
_EXISTS = (AlreadyExistsError, FileExistsError)
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_PRESIGN_SECONDS = 300
_RETRY_AFTER = 2.0  # seconds of failing fast after the store did not answer


@dataclass(frozen=True)
class RemoteBlob:
    """A verified blob in the object store: sent by streaming it, or by redirect."""

    store: S3Blobs
    sha256: str
    size: int

    async def chunks(self, start: int, stop: int) -> AsyncIterator[bytes]:
        """The bytes [start, stop)."""
        async for chunk in self.store.read(self.sha256, start, stop):
            yield chunk


def s3_store(url: str, endpoint: str | None, env: dict[str, str]) -> tuple[S3Store, str]:
    """The obstore client for `s3://bucket/prefix` and the prefix, credentials from the
    standard AWS variables."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    config: dict[str, Any] = {
        "region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    }
    if key := env.get("AWS_ACCESS_KEY_ID"):
        config["access_key_id"] = key
        config["secret_access_key"] = env.get("AWS_SECRET_ACCESS_KEY", "")
        if token := env.get("AWS_SESSION_TOKEN"):
            config["session_token"] = token
    client: dict[str, Any] = {"timeout": "30s", "connect_timeout": "3s"}
    if endpoint:
        config["endpoint"] = endpoint
        config["virtual_hosted_style_request"] = False
        client["allow_http"] = endpoint.startswith("http://")
    # Few, quick retries: a store that does not answer must not hold a request for minutes
    # (the file then comes from upstream instead).
    retry = {
        "max_retries": 2,
        "retry_timeout": datetime.timedelta(seconds=3),
        "backoff": {
            "init_backoff": datetime.timedelta(milliseconds=50),
            "max_backoff": datetime.timedelta(milliseconds=500),
            "base": 2,
        },
    }
    store = S3Store(bucket, config=config, client_options=client, retry_config=retry)  # type: ignore[arg-type]
    return store, prefix.strip("/")


class S3Blobs:
    kind = "s3"

    def __init__(
        self,
        store: S3Store,
        prefix: str,
        local: BlobStore,
        exclusive: Callable[[], contextlib.AbstractAsyncContextManager[bool]],
    ) -> None:
        """`local`: the node's own directory, for temp and part files. `exclusive`: the
        cluster-wide lock under which one node at a time evicts."""
        self._store = store
        self._prefix = f"{prefix}/blobs/" if prefix else "blobs/"
        self._pieces = f"{prefix}/pieces/" if prefix else "pieces/"
        self._local = local
        self._exclusive = exclusive
        self.health = StoreHealth()
        self._retry_at = 0.0

    # -- local temp files, as for the local store --------------------------------------

    @property
    def temp_dir(self) -> Path:
        return self._local.temp_dir

    def new_temp(self) -> tuple[int, Path]:
        return self._local.new_temp()

    def discard(self, temp: Path) -> None:
        self._local.discard(temp)

    def clear_temp(self) -> int:
        return self._local.clear_temp()

    def local_path(self, sha256: str) -> Path | None:
        return None  # not a file here: METADATA is not extracted from S3 blobs

    def exclusive(self) -> contextlib.AbstractAsyncContextManager[bool]:
        return self._exclusive()

    # -- the object store ----------------------------------------------------------------

    def _key(self, sha256: str) -> str:
        if not _SHA256_RE.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self._prefix + sha256

    @contextlib.asynccontextmanager
    async def _call(self) -> AsyncIterator[None]:
        """Record the store's health; its failures become StoreUnavailable. After one, calls
        fail fast for a couple of seconds (a circuit breaker, as for Redis)."""
        if not self.health.healthy and time.monotonic() < self._retry_at:
            raise StoreUnavailable(f"object store: {self.health.last_error}")
        try:
            yield
        except (*_NOT_FOUND, *_EXISTS):
            self.health.ok()
            raise
        except Exception as error:  # obstore raises many kinds; all mean "no answer"
            self.health.failed(error)
            self._retry_at = time.monotonic() + _RETRY_AFTER
            raise StoreUnavailable(f"object store: {self.health.last_error}") from error
        self.health.ok()

    async def open(self, sha256: str) -> RemoteBlob | None:
        try:
            async with self._call():
                meta = await obstore.head_async(self._store, self._key(sha256))
        except _NOT_FOUND:
            return None
        return RemoteBlob(self, sha256, meta["size"])

    async def contains(self, sha256: str) -> bool:
        return await self.open(sha256) is not None

    async def sync(self, fd: int) -> None:
        """Nothing to do: the upload is the copy that lasts."""

    async def put(self, fd: int, temp: Path, sha256: str) -> None:
        """Upload verified bytes once; a blob already there (another node's) is kept."""
        try:
            async with self._call():
                await obstore.put_async(self._store, self._key(sha256), temp, mode="create")
        except _EXISTS:
            pass

    async def remove(self, sha256: str) -> None:
        with contextlib.suppress(*_NOT_FOUND):
            async with self._call():
                await obstore.delete_async(self._store, self._key(sha256))

    async def listing(self) -> AsyncIterator[tuple[str, int]]:
        async with self._call():
            async for batch in obstore.list(self._store, self._prefix):
                for meta in batch:
                    name = meta["path"].rsplit("/", 1)[-1]
                    if _SHA256_RE.match(name):
                        yield name, meta["size"]

    async def read(self, sha256: str, start: int, stop: int) -> AsyncIterator[bytes]:
        if stop <= start:
            return
        async with self._call():
            result = await obstore.get_async(
                self._store, self._key(sha256), options={"range": (start, stop)}
            )
            async for chunk in result.stream(min_chunk_size=1024 * 1024):
                yield bytes(chunk)

    def _piece_key(self, token: str, index: int) -> str:
        digest = hashlib.sha256(token.encode()).hexdigest()[:32]
        return f"{self._pieces}{digest}/{index}"

    async def put_piece(self, token: str, index: int, data: bytes) -> None:
        """Part of a download in progress, for other nodes to relay (see files.py)."""
        async with self._call():
            await obstore.put_async(self._store, self._piece_key(token, index), data)

    async def read_piece(self, token: str, index: int) -> bytes:
        async with self._call():
            result = await obstore.get_async(self._store, self._piece_key(token, index))
            return bytes(await result.bytes_async())

    async def delete_pieces(self, token: str, count: int, later: float = 0.0) -> None:
        """Delete a finished download's pieces, `later` seconds from now (followers may
        still read the last ones)."""
        await asyncio.sleep(later)
        for index in range(count):
            with contextlib.suppress(*_NOT_FOUND, StoreUnavailable):
                async with self._call():
                    await obstore.delete_async(self._store, self._piece_key(token, index))

    async def remove_stale_pieces(self, older_than: float) -> int:
        """Delete pieces of downloads whose node died (`cachepi gc`); returns how many."""
        cutoff = time.time() - older_than
        stale = []
        async with self._call():
            async for batch in obstore.list(self._store, self._pieces):
                stale += [m["path"] for m in batch if m["last_modified"].timestamp() < cutoff]
        for path in stale:
            with contextlib.suppress(*_NOT_FOUND):
                async with self._call():
                    await obstore.delete_async(self._store, path)
        return len(stale)

    async def presign(self, sha256: str) -> str:
        async with self._call():
            return await obstore.sign_async(
                self._store,
                "GET",
                self._key(sha256),
                datetime.timedelta(seconds=_PRESIGN_SECONDS),
            )


def aws_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
