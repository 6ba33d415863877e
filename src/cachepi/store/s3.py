"""Blobs in an S3-compatible object store (AWS S3, MinIO, Ceph RGW, SeaweedFS...), shared
by every node of a cluster; temp and part files stay on the node's own disk.

Objects are keyed by sha256 and written once, after the bytes verified, with a conditional
create: two nodes storing the same file cannot overwrite each other (and would write the
same bytes anyway). Reads are streamed, with ranges; `presign` gives a URL a client can be
redirected to instead.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import obstore
from obstore.exceptions import AlreadyExistsError, NotFoundError
from obstore.store import S3Store

if TYPE_CHECKING:  # types of the stubs only
    from obstore.store import ClientConfig, RetryConfig, S3Config

from cachepi.store.breaker import Breaker
from cachepi.store.directory import SHA256_RE, DirectoryBlobs
from cachepi.store.protocols import StoreHealth, StoreUnavailable

log = logging.getLogger(__name__)

# obstore raises its own classes or the builtin ones, depending on the call.
_NOT_FOUND = (NotFoundError, FileNotFoundError)
_EXISTS = (AlreadyExistsError, FileExistsError)
_PRESIGN_SECONDS = 300


@dataclass(frozen=True)
class S3Blob:
    """A verified blob in the object store: streamed through this node, or (when the
    store is set to) sent by a redirect to a presigned URL."""

    store: S3Blobs
    sha256: str
    size: int
    file: None = None  # not on this machine: no sendfile

    async def chunks(self, start: int, stop: int) -> AsyncIterator[bytes]:
        async for chunk in self.store.read(self.sha256, start, stop):
            yield chunk

    @contextlib.asynccontextmanager
    async def seekable(self) -> AsyncIterator[BinaryIO]:
        """A local copy in a temp file, removed after."""
        fd, temp = self.store.new_temp()
        try:
            with os.fdopen(fd, "w+b") as copy:
                async for chunk in self.chunks(0, self.size):
                    copy.write(chunk)
                copy.seek(0)
                yield copy
        finally:
            self.store.discard(temp)

    async def redirect_url(self) -> str | None:
        return await self.store.presign(self.sha256) if self.store.redirect else None

    def close(self) -> None:
        """Nothing is held open."""


def s3_store(url: str, endpoint: str | None, env: dict[str, str]) -> tuple[S3Store, str]:
    """The obstore client for `s3://bucket/prefix` and the prefix, credentials from the
    standard AWS variables."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    config: S3Config = {
        "region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    }
    if key := env.get("AWS_ACCESS_KEY_ID"):
        config["access_key_id"] = key
        config["secret_access_key"] = env.get("AWS_SECRET_ACCESS_KEY", "")
        if token := env.get("AWS_SESSION_TOKEN"):
            config["session_token"] = token
    client: ClientConfig = {"timeout": "30s", "connect_timeout": "3s"}
    if endpoint:
        config["endpoint"] = endpoint
        config["virtual_hosted_style_request"] = False
        client["allow_http"] = endpoint.startswith("http://")
    # Few, quick retries: a store that does not answer must not hold a request for minutes
    # (the file then comes from upstream instead).
    retry: RetryConfig = {
        "max_retries": 2,
        "retry_timeout": datetime.timedelta(seconds=3),
        "backoff": {
            "init_backoff": datetime.timedelta(milliseconds=50),
            "max_backoff": datetime.timedelta(milliseconds=500),
            "base": 2,
        },
    }
    store = S3Store(bucket, config=config, client_options=client, retry_config=retry)
    return store, prefix.strip("/")


class S3Blobs:
    kind = "s3"
    lists_cheaply = False  # a shared bucket is listed by `cachepi gc`, not at every start

    def __init__(
        self, store: S3Store, prefix: str, local: DirectoryBlobs, redirect: bool = False
    ) -> None:
        """`local`: the node's own directory, for temp and part files. `redirect`: send
        clients to presigned URLs instead of streaming through this node."""
        self._store = store
        self._prefix = f"{prefix}/blobs/" if prefix else "blobs/"
        self._pieces = f"{prefix}/pieces/" if prefix else "pieces/"
        self._local = local
        self.redirect = redirect
        # obstore raises many kinds of errors; all but "not found"/"exists" mean no answer.
        self._breaker = Breaker("object store", (Exception,), (*_NOT_FOUND, *_EXISTS))

    @property
    def health(self) -> StoreHealth:
        return self._breaker.health

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

    # -- the object store ----------------------------------------------------------------

    def _key(self, sha256: str) -> str:
        if not SHA256_RE.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self._prefix + sha256

    def _call(self) -> contextlib.AbstractContextManager[None]:
        return self._breaker.guard()

    async def open(self, sha256: str) -> S3Blob | None:
        try:
            with self._call():
                meta = await obstore.head_async(self._store, self._key(sha256))
        except _NOT_FOUND:
            return None
        return S3Blob(self, sha256, meta["size"])

    async def contains(self, sha256: str) -> bool:
        return await self.open(sha256) is not None

    async def sync(self, fd: int) -> None:
        """Nothing to do: the upload is the copy that lasts."""

    async def put(self, fd: int, temp: Path, sha256: str) -> None:
        """Upload verified bytes once; a blob already there (another node's) is kept."""
        try:
            with self._call():
                await obstore.put_async(self._store, self._key(sha256), temp, mode="create")
        except _EXISTS:
            pass

    async def remove(self, sha256: str) -> None:
        with contextlib.suppress(*_NOT_FOUND), self._call():
            await obstore.delete_async(self._store, self._key(sha256))

    async def listing(self) -> AsyncIterator[tuple[str, int]]:
        with self._call():
            async for batch in obstore.list(self._store, self._prefix):
                for meta in batch:
                    name = meta["path"].rsplit("/", 1)[-1]
                    if SHA256_RE.match(name):
                        yield name, meta["size"]

    async def read(self, sha256: str, start: int, stop: int) -> AsyncIterator[bytes]:
        if stop <= start:
            return
        with self._call():
            result = await obstore.get_async(
                self._store, self._key(sha256), options={"range": (start, stop)}
            )
            async for chunk in result.stream(min_chunk_size=1024 * 1024):
                yield bytes(chunk)

    def _piece_key(self, token: str, index: int) -> str:
        digest = hashlib.sha256(token.encode()).hexdigest()[:32]
        return f"{self._pieces}{digest}/{index}"

    async def put_piece(self, token: str, index: int, data: bytes) -> None:
        """Part of a download in progress, for other nodes to relay (see redis_locks.py)."""
        with self._call():
            await obstore.put_async(self._store, self._piece_key(token, index), data)

    async def read_piece(self, token: str, index: int) -> bytes:
        with self._call():
            result = await obstore.get_async(self._store, self._piece_key(token, index))
            return bytes(await result.bytes_async())

    async def delete_pieces(self, token: str, count: int) -> None:
        for index in range(count):
            with contextlib.suppress(*_NOT_FOUND, StoreUnavailable), self._call():
                await obstore.delete_async(self._store, self._piece_key(token, index))

    async def remove_stale_pieces(self, older_than: float) -> int:
        """Delete pieces of downloads whose node died (`cachepi gc`); returns how many."""
        cutoff = time.time() - older_than
        stale = []
        with self._call():
            async for batch in obstore.list(self._store, self._pieces):
                stale += [m["path"] for m in batch if m["last_modified"].timestamp() < cutoff]
        for path in stale:
            with contextlib.suppress(*_NOT_FOUND), self._call():
                await obstore.delete_async(self._store, path)
        return len(stale)

    async def presign(self, sha256: str) -> str:
        with self._call():
            return await obstore.sign_async(
                self._store,
                "GET",
                self._key(sha256),
                datetime.timedelta(seconds=_PRESIGN_SECONDS),
            )


def aws_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
