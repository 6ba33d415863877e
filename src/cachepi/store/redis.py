"""Metadata in Redis, shared by every node of a cluster, and cluster-wide locks.

The same operations as the SQLite store (metadata.py), on Redis structures under one key
prefix. Multi-key updates that must stay consistent (adding and removing a blob with its
totals and indexes) are Lua scripts, so they are atomic.

Calls are synchronous, like SQLite's: on loopback or a LAN they are short round trips. When Redis
does not answer, calls fail fast for a while (a circuit breaker) instead of stalling the
event loop on every request; callers treat that as "nothing stored" and carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import redis

from cachepi.store.metadata import LIST_KEY, PageRecord, StoreHealth, StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

PREFIX = "cachepi:"
_RETRY_AFTER = 2.0  # seconds of failing fast after Redis did not answer
_encode_page = msgspec.msgpack.Encoder().encode
_decode_page = msgspec.msgpack.Decoder(PageRecord).decode

_ADD_BLOB = """
local p, sha, size, now, project, filename = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4],
    ARGV[5], ARGV[6]
local key = p .. 'blob:' .. sha
if redis.call('EXISTS', key) == 0 then
  redis.call('HINCRBY', p .. 'totals', 'files', 1)
  redis.call('HINCRBY', p .. 'totals', 'bytes', size)
  if project ~= '' then
    redis.call('HINCRBY', p .. 'projbytes', project, size)
    redis.call('HINCRBY', p .. 'projfiles', project, 1)
    redis.call('SADD', p .. 'projblobs:' .. project, sha)
  end
  redis.call('HSET', key, 'size', size, 'project', project, 'filename', filename,
             'added_at', now)
  redis.call('ZADD', p .. 'recent', now, sha)
end
redis.call('ZADD', p .. 'lru', now, sha)
"""

_REMOVE_BLOB = """
local p, sha = ARGV[1], ARGV[2]
local key = p .. 'blob:' .. sha
local fields = redis.call('HMGET', key, 'size', 'project')
if fields[1] then
  local size = tonumber(fields[1])
  redis.call('HINCRBY', p .. 'totals', 'files', -1)
  redis.call('HINCRBY', p .. 'totals', 'bytes', -size)
  local project = fields[2]
  if project and project ~= '' then
    redis.call('SREM', p .. 'projblobs:' .. project, sha)
    redis.call('HINCRBY', p .. 'projbytes', project, -size)
    if redis.call('HINCRBY', p .. 'projfiles', project, -1) <= 0 then
      redis.call('HDEL', p .. 'projbytes', project)
      redis.call('HDEL', p .. 'projfiles', project)
    end
  end
  redis.call('DEL', key)
end
redis.call('ZREM', p .. 'lru', sha)
redis.call('ZREM', p .. 'recent', sha)
for _, url in ipairs(redis.call('SMEMBERS', p .. 'blobrefs:' .. sha)) do
  redis.call('HDEL', p .. 'refs', url)
end
redis.call('DEL', p .. 'blobrefs:' .. sha)
local meta = redis.call('HGET', p .. 'wheelmeta', sha)
if meta then
  redis.call('HDEL', p .. 'wheelmeta', sha)
  redis.call('HDEL', p .. 'metaof', meta)
end
local wheel = redis.call('HGET', p .. 'metaof', sha)
if wheel then
  redis.call('HDEL', p .. 'metaof', sha)
  redis.call('HDEL', p .. 'wheelmeta', wheel)
end
"""

# Extend or release a lock only while it is still ours (the fencing token matches).
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2], 'EX', 60)
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_timeout=1.0, socket_connect_timeout=0.5, health_check_interval=10
    )


class Breaker:
    """Runs Redis calls, records Redis's health, and after a failure fails fast for a
    while, so a Redis outage costs one timeout per couple of seconds, not one per call."""

    def __init__(self) -> None:
        self.health = StoreHealth()
        self._retry_at = 0.0

    def call(self, action: Callable[[], T]) -> T:
        if not self.health.healthy and time.monotonic() < self._retry_at:
            raise StoreUnavailable(f"redis: {self.health.last_error}")
        try:
            result = action()
        except redis.RedisError as error:
            self.health.failed(error)
            self._retry_at = time.monotonic() + _RETRY_AFTER
            raise StoreUnavailable(f"redis: {self.health.last_error}") from error
        self.health.ok()
        return result


class RedisMetadataStore:
    kind = "redis"

    def __init__(self, client: redis.Redis, breaker: Breaker, prefix: str = PREFIX) -> None:
        self._r = client
        self._breaker = breaker
        self._p = prefix
        self._add = client.register_script(_ADD_BLOB)
        self._remove = client.register_script(_REMOVE_BLOB)

    @property
    def health(self) -> StoreHealth:
        return self._breaker.health

    def _call(self, action: Callable[[], T]) -> T:
        return self._breaker.call(action)

    def close(self) -> None:
        self._r.close()

    # -- index pages -------------------------------------------------------------------

    def get_page(self, index_url: str, key: str) -> PageRecord | None:
        raw = self._call(lambda: self._r.hget(f"{self._p}pages:{key}", index_url))
        return _decode_page(raw) if raw is not None else None  # type: ignore[arg-type]

    def put_page(self, index_url: str, key: str, record: PageRecord) -> None:
        def put() -> None:
            with self._r.pipeline() as pipe:
                pipe.hset(f"{self._p}pages:{key}", index_url, _encode_page(record))
                if key != LIST_KEY:
                    pipe.zadd(f"{self._p}pagenames", {key: 0})
                pipe.execute()

        self._call(put)

    def pages_of(self, key: str) -> list[tuple[str, PageRecord]]:
        rows: dict[bytes, bytes] = self._call(
            lambda: self._r.hgetall(f"{self._p}pages:{key}")  # type: ignore[arg-type,return-value]
        )
        return [(url.decode(), _decode_page(raw)) for url, raw in rows.items()]

    def page_keys(self, prefix: str, limit: int) -> list[str]:
        names = self._call(
            lambda: self._r.zrangebylex(
                f"{self._p}pagenames", f"[{prefix}", f"[{prefix}\xff", start=0, num=limit
            )
        )
        return [name.decode() for name in names]  # type: ignore[union-attr]

    def delete_pages(self, key: str | None) -> int:
        def delete() -> int:
            if key is not None:
                count = int(self._r.hlen(f"{self._p}pages:{key}"))  # type: ignore[arg-type]
                self._r.delete(f"{self._p}pages:{key}")
                self._r.zrem(f"{self._p}pagenames", key)
                return count
            count = 0
            for name in self._r.scan_iter(f"{self._p}pages:*", count=1000):
                count += int(self._r.hlen(name))  # type: ignore[arg-type]
                self._r.delete(name)
            self._r.delete(f"{self._p}pagenames")
            return count

        return self._call(delete)

    def expire_pages(self, key: str) -> None:
        for url, record in self.pages_of(key):
            self.put_page(url, key, msgspec.structs.replace(record, fetched_at=0.0))

    # -- blobs ---------------------------------------------------------------------------

    def add_blob(
        self, sha256: str, size: int, now: float, project: str | None = None,
        filename: str | None = None,
    ) -> None:  # fmt: skip
        args = [self._p, sha256, size, now, project or "", filename or ""]
        self._call(lambda: self._add(args=args))

    def remove_blob(self, sha256: str) -> None:
        self._call(lambda: self._remove(args=[self._p, sha256]))

    def touch_blobs(self, accesses: Iterable[tuple[str, float]]) -> None:
        def touch() -> None:
            with self._r.pipeline(transaction=False) as pipe:
                for sha256, at in accesses:
                    pipe.zadd(f"{self._p}lru", {sha256: at}, xx=True, gt=True)
                pipe.execute()

        self._call(touch)

    def _sizes(self, shas: list[str]) -> list[int]:
        def sizes() -> list[int]:
            with self._r.pipeline(transaction=False) as pipe:
                for sha256 in shas:
                    pipe.hget(f"{self._p}blob:{sha256}", "size")
                return [int(size or 0) for size in pipe.execute()]

        return self._call(sizes)

    def blobs(self) -> dict[str, int]:
        shas = [s.decode() for s in self._call(lambda: self._r.zrange(f"{self._p}lru", 0, -1))]  # type: ignore[union-attr]
        return dict(zip(shas, self._sizes(shas), strict=True))

    def blob_stats(self) -> tuple[int, int]:
        files, size = self._call(lambda: self._r.hmget(f"{self._p}totals", "files", "bytes"))  # type: ignore[misc]
        return int(files or 0), int(size or 0)

    def _fields(self, shas: list[str], *names: str) -> list[list[Any]]:
        def fields() -> list[list[Any]]:
            with self._r.pipeline(transaction=False) as pipe:
                for sha256 in shas:
                    pipe.hmget(f"{self._p}blob:{sha256}", *names)
                return pipe.execute()

        return self._call(fields)

    def recent_blobs(self, limit: int) -> list[tuple[float, str, str, int]]:
        recent = self._call(
            lambda: self._r.zrevrange(f"{self._p}recent", 0, limit - 1, withscores=True)
        )
        shas = [sha.decode() for sha, _ in recent]  # type: ignore[union-attr]
        rows = self._fields(shas, "project", "filename", "size")
        return [
            (at, _text(project), _text(filename), int(size or 0))
            for (_, at), (project, filename, size) in zip(recent, rows, strict=True)  # type: ignore[arg-type]
        ]

    def biggest_projects(self, limit: int) -> list[tuple[str, int, int]]:
        sizes = self._call(lambda: self._r.hgetall(f"{self._p}projbytes"))
        files = self._call(lambda: self._r.hgetall(f"{self._p}projfiles"))
        ranked = sorted(sizes.items(), key=lambda item: -int(item[1]))[:limit]  # type: ignore[union-attr]
        return [(name.decode(), int(files.get(name, 0)), int(size)) for name, size in ranked]  # type: ignore[union-attr]

    def blobs_of(self, project: str) -> list[tuple[str, str, int, float]]:
        shas = sorted(
            s.decode()
            for s in self._call(lambda: self._r.smembers(f"{self._p}projblobs:{project}"))  # type: ignore[union-attr]
        )
        rows = self._fields(shas, "filename", "size")
        used = self._call(lambda: self._r.zmscore(f"{self._p}lru", shas)) if shas else []
        listed = [
            (sha, _text(filename), int(size or 0), float(at or 0))
            for sha, (filename, size), at in zip(shas, rows, used, strict=True)  # type: ignore[arg-type]
        ]
        return sorted(listed, key=lambda row: row[1])

    def least_recently_used(self, limit: int = 256) -> list[tuple[str, int]]:
        shas = [
            s.decode()
            for s in self._call(lambda: self._r.zrange(f"{self._p}lru", 0, limit - 1))  # type: ignore[union-attr]
        ]
        return list(zip(shas, self._sizes(shas), strict=True))

    # -- METADATA extracted from cached wheels --------------------------------------------

    def extracted_metadata(self) -> dict[str, str]:
        rows = self._call(lambda: self._r.hgetall(f"{self._p}wheelmeta"))
        return {k.decode(): v.decode() for k, v in rows.items()}  # type: ignore[union-attr]

    def put_extracted_metadata(self, wheel_sha256: str, metadata_sha256: str) -> None:
        def put() -> None:
            with self._r.pipeline() as pipe:
                pipe.hset(f"{self._p}wheelmeta", wheel_sha256, metadata_sha256)
                pipe.hset(f"{self._p}metaof", metadata_sha256, wheel_sha256)
                pipe.execute()

        self._call(put)

    # -- generations and counters ------------------------------------------------------------

    def bump(self, name: str) -> None:
        self._call(lambda: self._r.hincrby(f"{self._p}generations", name, 1))

    def generation(self, name: str) -> int:
        return int(self._call(lambda: self._r.hget(f"{self._p}generations", name)) or 0)  # type: ignore[arg-type]

    def add_counts(self, deltas: Iterable[tuple[str, int]]) -> None:
        def add() -> None:
            with self._r.pipeline(transaction=False) as pipe:
                for name, value in deltas:
                    pipe.hincrby(f"{self._p}counters", name, value)
                pipe.execute()

        self._call(add)

    def counts(self) -> dict[str, int]:
        rows = self._call(lambda: self._r.hgetall(f"{self._p}counters"))
        return {k.decode(): int(v) for k, v in rows.items()}  # type: ignore[union-attr]

    # -- refs ----------------------------------------------------------------------------

    def get_ref(self, url: str) -> str | None:
        raw = self._call(lambda: self._r.hget(f"{self._p}refs", url))
        return raw.decode() if raw is not None else None  # type: ignore[union-attr]

    def put_ref(self, url: str, sha256: str) -> None:
        def put() -> None:
            with self._r.pipeline() as pipe:
                pipe.hset(f"{self._p}refs", url, sha256)
                pipe.sadd(f"{self._p}blobrefs:{sha256}", url)
                pipe.execute()

        self._call(put)


def _text(raw: bytes | None) -> str:
    return raw.decode() if raw is not None else ""


class RedisLock:
    """A cluster-wide lock with the interface of locks.LockFile.

    Held by SET NX with an expiry, renewed while held; the value is a fencing token (node
    and a cluster-wide counter), so a holder that lost the lock (it stalled past the
    expiry and another node took over) can tell before it stores anything. A node that
    dies stops renewing: the lock expires and another takes over.
    """

    def __init__(self, locks: RedisLocks, key: str, path: Path) -> None:
        self._locks = locks
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        self._key = f"{locks.prefix}lock:{digest}"
        self._outcome_key = f"{locks.prefix}outcome:{digest}"
        self._wanted_key = f"{locks.prefix}wanted:{digest}"
        self.path = path  # local, for the part file of a download under this lock
        self.acquired = False
        self._token = ""
        self._lost = False
        self._renewer: asyncio.Task[None] | None = None

    @property
    def token(self) -> str:
        return self._token

    def holder(self) -> str | None:
        """The fencing token of whoever holds the lock now (None: nobody)."""
        try:
            raw = self._locks.breaker.call(lambda: self._locks.client.get(self._key))
        except StoreUnavailable:
            return None
        return raw.decode() if raw is not None else None  # type: ignore[union-attr]

    # Following a download on another node: followers say they want its progress; the
    # holder publishes pieces and their count, under its token.

    def want_pieces(self) -> None:
        with contextlib.suppress(StoreUnavailable):
            self._locks.breaker.call(lambda: self._locks.client.set(self._wanted_key, 1, ex=30))

    def unwant_pieces(self) -> None:
        """This node stops following (it took over): only other followers may want them."""
        with contextlib.suppress(StoreUnavailable):
            self._locks.breaker.call(lambda: self._locks.client.delete(self._wanted_key))

    def pieces_wanted(self) -> bool:
        try:
            return bool(
                self._locks.breaker.call(lambda: self._locks.client.exists(self._wanted_key))
            )
        except StoreUnavailable:
            return False

    def publish_pieces(self, count: int) -> None:
        key = f"{self._locks.prefix}pieces:{self._token}"
        self._locks.breaker.call(lambda: self._locks.client.set(key, count, ex=3600))

    def pieces(self, token: str) -> int:
        key = f"{self._locks.prefix}pieces:{token}"
        try:
            return int(self._locks.breaker.call(lambda: self._locks.client.get(key)) or 0)  # type: ignore[arg-type]
        except StoreUnavailable:
            return 0

    @property
    def shared(self) -> bool:
        """Whether Redis granted the lock (without Redis, each node works alone)."""
        return bool(self._token)

    @property
    def storable(self) -> bool:
        """Whether work done under this lock may be stored: the lock is ours, and Redis
        knows it (still checked with Redis: fencing)."""
        if not self.acquired or self._lost or not self._token:
            return False
        try:
            extended = self._locks.breaker.call(
                lambda: self._locks.extend(keys=[self._key], args=[self._token, self._locks.ttl_ms])
            )
        except StoreUnavailable:
            return False
        return bool(extended)

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it. Without Redis, every node works alone: the
        lock is "taken" but nothing done under it is stored."""
        breaker = self._locks.breaker
        try:
            fence = breaker.call(lambda: self._locks.client.incr(f"{self._locks.prefix}fence"))
            # The counter restarts with an empty Redis: the nonce keeps tokens unique.
            token = f"{self._locks.node}:{fence}:{secrets.token_hex(4)}"
            taken = breaker.call(
                lambda: self._locks.client.set(self._key, token, nx=True, px=self._locks.ttl_ms)
            )
        except StoreUnavailable:
            self.acquired, self._token = True, ""
            return True
        if not taken:
            return False
        self.acquired, self._token = True, token
        self._renewer = asyncio.get_running_loop().create_task(self._renew())
        return True

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self._locks.ttl_ms / 3000)
            try:
                extended = self._locks.breaker.call(
                    lambda: self._locks.extend(
                        keys=[self._key], args=[self._token, self._locks.ttl_ms]
                    )
                )
            except StoreUnavailable:
                continue  # Redis may come back before the expiry
            if not extended:
                log.warning("lost the cluster lock %s to another node", self._key)
                self._lost = True
                return

    def held_elsewhere(self) -> bool:
        holder = self.holder()
        return holder is not None and holder != self._token

    async def wait_released(self) -> str:
        while self.held_elsewhere():  # noqa: ASYNC110 - a lock elsewhere has no event
            await asyncio.sleep(_POLL_SECONDS)
        return self.outcome()

    def outcome(self) -> str:
        try:
            raw = self._locks.breaker.call(lambda: self._locks.client.get(self._outcome_key))
        except StoreUnavailable:
            return ""
        return raw.decode() if raw is not None else ""  # type: ignore[union-attr]

    def release(self, outcome: str = "") -> None:
        if self.acquired and self._token:
            with contextlib.suppress(StoreUnavailable):
                self._locks.breaker.call(
                    lambda: self._locks.release_script(
                        keys=[self._key, self._outcome_key], args=[self._token, outcome]
                    )
                )
        self.acquired = False
        self.close()

    def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None


_POLL_SECONDS = 0.05


class RedisLocks:
    """Cluster-wide locks, named from any key (a URL, a page), like locks.Locks."""

    def __init__(
        self, client: redis.Redis, breaker: Breaker, node: str, temp_dir: Path,
        ttl: float = 10.0, prefix: str = PREFIX,
    ) -> None:  # fmt: skip
        self.client = client
        self.breaker = breaker
        self.node = node
        self.prefix = prefix
        self.ttl_ms = int(ttl * 1000)
        self.directory = temp_dir
        self.extend = client.register_script(_EXTEND)
        self.release_script = client.register_script(_RELEASE)

    def lock(self, key: str) -> RedisLock:
        name = hashlib.sha256(key.encode()).hexdigest()[:32]
        return RedisLock(self, key, self.directory / f"{name}.lock")

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[bool]:
        """The eviction lock: yields True when this node may evict now (one node at a
        time; the others skip, they will evict at their next store)."""
        lock = self.lock("evict")
        try:
            held = lock.try_acquire() and lock.shared
        except StoreUnavailable:
            held = False
        try:
            yield held
        finally:
            if held:
                lock.release()
