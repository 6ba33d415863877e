"""The cluster's metadata store, in Redis, shared by every node.

The same operations as the SQLite store, on Redis structures under one key prefix.
Multi-key updates that must stay consistent (adding and removing a blob with its totals and
indexes) are Lua scripts, so they are atomic.

Calls are synchronous, like SQLite's: on loopback or a LAN they are as quick. When Redis
does not answer, calls fail fast for a while (store/breaker.py) instead of stalling the
event loop on every request; callers treat that as "nothing stored" and carry on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import msgspec
import redis

from cachepi.store.breaker import Breaker
from cachepi.store.protocols import LIST_KEY, PageRecord, StoreHealth

T = TypeVar("T")

PREFIX = "cachepi:"
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


# 404 records are also in the sorted set `missing` (member "{key} {index_url}", score their
# fetch time), so that the stale ones are found without reading every page.
_DELETE_MISSING = """
local p, limit = ARGV[1], tonumber(ARGV[3])
local members = redis.call('ZRANGEBYSCORE', p .. 'missing', '-inf', '(' .. ARGV[2],
    'LIMIT', 0, limit)
for _, member in ipairs(members) do
  local space = string.find(member, ' ', 1, true)
  local key = string.sub(member, 1, space - 1)
  redis.call('HDEL', p .. 'pages:' .. key, string.sub(member, space + 1))
  if key ~= '' and redis.call('EXISTS', p .. 'pages:' .. key) == 0 then
    redis.call('ZREM', p .. 'pagenames', key)
  end
  redis.call('ZREM', p .. 'missing', member)
end
return #members
"""


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_timeout=1.0, socket_connect_timeout=0.5, health_check_interval=10
    )


class RedisMetadata:
    kind = "redis"

    def __init__(self, client: redis.Redis, breaker: Breaker, prefix: str = PREFIX) -> None:
        # redis-py annotates its sync client's results as `Awaitable | Any` (shared with the
        # async client): untyped here; every value is converted where it is read.
        self._r: Any = client
        self._breaker = breaker
        self._p = prefix
        self._add = client.register_script(_ADD_BLOB)
        self._remove = client.register_script(_REMOVE_BLOB)
        self._delete_missing = client.register_script(_DELETE_MISSING)

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
        return _decode_page(raw) if raw is not None else None

    def put_page(self, index_url: str, key: str, record: PageRecord) -> None:
        def put() -> None:
            with self._r.pipeline() as pipe:
                pipe.hset(f"{self._p}pages:{key}", index_url, _encode_page(record))
                if key != LIST_KEY:
                    pipe.zadd(f"{self._p}pagenames", {key: 0})
                if record.body is None:
                    pipe.zadd(f"{self._p}missing", {f"{key} {index_url}": record.fetched_at})
                else:
                    pipe.zrem(f"{self._p}missing", f"{key} {index_url}")
                pipe.execute()

        self._call(put)

    def pages_of(self, key: str) -> list[tuple[str, PageRecord]]:
        rows: dict[bytes, bytes] = self._call(lambda: self._r.hgetall(f"{self._p}pages:{key}"))
        return [(url.decode(), _decode_page(raw)) for url, raw in rows.items()]

    def page_keys(self, prefix: str, limit: int) -> list[str]:
        names = self._call(
            lambda: self._r.zrangebylex(
                f"{self._p}pagenames", f"[{prefix}", f"[{prefix}\xff", start=0, num=limit
            )
        )
        return [name.decode() for name in names]

    def delete_pages(self, key: str | None) -> int:
        def delete() -> int:
            if key is not None:
                urls = [url.decode() for url in self._r.hkeys(f"{self._p}pages:{key}")]
                with self._r.pipeline() as pipe:
                    pipe.delete(f"{self._p}pages:{key}")
                    pipe.zrem(f"{self._p}pagenames", key)
                    if urls:
                        pipe.zrem(f"{self._p}missing", *(f"{key} {url}" for url in urls))
                    pipe.execute()
                return len(urls)
            count = 0
            for name in self._r.scan_iter(f"{self._p}pages:*", count=1000):
                count += int(self._r.hlen(name))
                self._r.delete(name)
            self._r.delete(f"{self._p}pagenames", f"{self._p}missing")
            return count

        return self._call(delete)

    def delete_missing_pages(self, before: float, limit: int) -> int:
        args: list[str | int] = [self._p, repr(float(before)), limit]
        return int(self._call(lambda: self._delete_missing(args=args)))

    def expire_pages(self, key: str) -> None:
        for url, record in self.pages_of(key):
            self.put_page(url, key, msgspec.structs.replace(record, fetched_at=0.0))

    # -- blobs ---------------------------------------------------------------------------

    def add_blob(
        self, sha256: str, size: int, now: float, project: str | None = None,
        filename: str | None = None,
    ) -> None:  # fmt: skip
        args: list[str | int | float] = [self._p, sha256, size, now, project or "", filename or ""]
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
        shas = [s.decode() for s in self._call(lambda: self._r.zrange(f"{self._p}lru", 0, -1))]
        return dict(zip(shas, self._sizes(shas), strict=True))

    def blob_stats(self) -> tuple[int, int]:
        files, size = self._call(lambda: self._r.hmget(f"{self._p}totals", "files", "bytes"))
        return int(files or 0), int(size or 0)

    def _fields(self, shas: list[str], *names: str) -> list[list[Any]]:
        def fields() -> list[list[Any]]:
            with self._r.pipeline(transaction=False) as pipe:
                for sha256 in shas:
                    pipe.hmget(f"{self._p}blob:{sha256}", *names)
                return list(pipe.execute())

        return self._call(fields)

    def recent_blobs(self, limit: int) -> list[tuple[float, str, str, int]]:
        recent = self._call(
            lambda: self._r.zrevrange(f"{self._p}recent", 0, limit - 1, withscores=True)
        )
        shas = [sha.decode() for sha, _ in recent]
        rows = self._fields(shas, "project", "filename", "size")
        return [
            (at, _text(project), _text(filename), int(size or 0))
            for (_, at), (project, filename, size) in zip(recent, rows, strict=True)
        ]

    def biggest_projects(self, limit: int) -> list[tuple[str, int, int]]:
        sizes = self._call(lambda: self._r.hgetall(f"{self._p}projbytes"))
        files = self._call(lambda: self._r.hgetall(f"{self._p}projfiles"))
        ranked = sorted(sizes.items(), key=lambda item: -int(item[1]))[:limit]
        return [(name.decode(), int(files.get(name, 0)), int(size)) for name, size in ranked]

    def blobs_of(self, project: str) -> list[tuple[str, str, int, float]]:
        shas = sorted(
            s.decode()
            for s in self._call(lambda: self._r.smembers(f"{self._p}projblobs:{project}"))
        )
        rows = self._fields(shas, "filename", "size")
        used = self._call(lambda: self._r.zmscore(f"{self._p}lru", shas)) if shas else []
        listed = [
            (sha, _text(filename), int(size or 0), float(at or 0))
            for sha, (filename, size), at in zip(shas, rows, used, strict=True)
        ]
        return sorted(listed, key=lambda row: row[1])

    def least_recently_used(self, limit: int = 256) -> list[tuple[str, int]]:
        shas = [
            s.decode() for s in self._call(lambda: self._r.zrange(f"{self._p}lru", 0, limit - 1))
        ]
        return list(zip(shas, self._sizes(shas), strict=True))

    # -- METADATA extracted from cached wheels --------------------------------------------

    def extracted_metadata(self) -> dict[str, str]:
        rows = self._call(lambda: self._r.hgetall(f"{self._p}wheelmeta"))
        return {k.decode(): v.decode() for k, v in rows.items()}

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
        return int(self._call(lambda: self._r.hget(f"{self._p}generations", name)) or 0)

    def add_counts(self, deltas: Iterable[tuple[str, int]]) -> None:
        def add() -> None:
            with self._r.pipeline(transaction=False) as pipe:
                for name, value in deltas:
                    pipe.hincrby(f"{self._p}counters", name, value)
                pipe.execute()

        self._call(add)

    def counts(self) -> dict[str, int]:
        rows = self._call(lambda: self._r.hgetall(f"{self._p}counters"))
        return {k.decode(): int(v) for k, v in rows.items()}

    # -- refs ----------------------------------------------------------------------------

    def get_ref(self, url: str) -> str | None:
        raw = self._call(lambda: self._r.hget(f"{self._p}refs", url))
        return raw.decode() if raw is not None else None

    def put_ref(self, url: str, sha256: str) -> None:
        def put() -> None:
            with self._r.pipeline() as pipe:
                pipe.hset(f"{self._p}refs", url, sha256)
                pipe.sadd(f"{self._p}blobrefs:{sha256}", url)
                pipe.execute()

        self._call(put)


def _text(raw: bytes | None) -> str:
    return raw.decode() if raw is not None else ""
