"""The cluster's metadata store, in Redis, shared by every node.

The same operations as the SQLite store, on Redis structures under one key prefix.
Multi-key updates that must stay consistent (adding and removing a blob with its totals and
indexes, a change with its log) are Lua scripts, so they are atomic. Totals are kept as
blobs come and go, overall and per project (a sorted set ranks projects by size), so no call
reads a whole structure but `blobs`, `extracted_metadata()` and `upload_times()`.

Calls are synchronous, like SQLite's: on loopback or a LAN they are as quick. When Redis
does not answer, calls fail fast for a while (store/breaker.py) instead of stalling the
event loop on every request; callers treat that as "nothing stored" and carry on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import msgspec
import redis

from cachepi.store.breaker import Breaker
from cachepi.store.protocols import (
    CHANGES_KEPT,
    EXTRACTED,
    HOURS_KEPT,
    JOBS_KEPT,
    LIST_KEY,
    PAGES,
    UPLOAD_TIMES,
    Changes,
    NewBlob,
    Overview,
    PageRecord,
    StoreHealth,
    StoreUnavailable,
    changes_since,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

PREFIX = "cachepi:"
_encode_page = msgspec.msgpack.Encoder().encode
_decode_page = msgspec.msgpack.Decoder(PageRecord).decode

# A change of a topic: its generation goes up by one, and the log `changes:{topic}` (score
# the generation) says what changed: member "{generation} {key}", or "{generation}" when
# everything did.
# ARGV[1] is the key prefix, ARGV[2] how many changes are kept per topic.
_ANNOUNCE_FUNCTION = """
local function announce(p, topic, key)
  local generation = redis.call('HINCRBY', p .. 'generations', topic, 1)
  local log = p .. 'changes:' .. topic
  redis.call('ZADD', log, generation, key and (generation .. ' ' .. key) or tostring(generation))
  redis.call('ZREMRANGEBYSCORE', log, '-inf', generation - tonumber(ARGV[2]))
end
"""

_ANNOUNCE = _ANNOUNCE_FUNCTION + "announce(ARGV[1], ARGV[3], ARGV[4])"

_PAIR = (
    _ANNOUNCE_FUNCTION
    + f"""
local p, wheel, meta = ARGV[1], ARGV[3], ARGV[4]
redis.call('HSET', p .. 'wheelmeta', wheel, meta)
redis.call('HSET', p .. 'metaof', meta, wheel)
announce(p, '{EXTRACTED}', wheel)
"""
)

# An upload time, recorded unless one is (the first one stays).
_UPLOAD_TIME = (
    _ANNOUNCE_FUNCTION
    + f"""
local p, url, time = ARGV[1], ARGV[3], ARGV[4]
if redis.call('HSETNX', p .. 'uploadtimes', url, time) == 1 then
  announce(p, '{UPLOAD_TIMES}', url)
end
"""
)

# A blob's record no longer counts in the totals (it is removed, or recorded anew).
_UNCOUNT_FUNCTION = """
local function uncount(p, sha)
  local key = p .. 'blob:' .. sha
  local fields = redis.call('HMGET', key, 'size', 'project')
  if not fields[1] then
    return
  end
  local size = tonumber(fields[1])
  redis.call('HINCRBY', p .. 'totals', 'files', -1)
  redis.call('HINCRBY', p .. 'totals', 'bytes', -size)
  local project = fields[2]
  if project and project ~= '' then
    redis.call('SREM', p .. 'projblobs:' .. project, sha)
    redis.call('ZINCRBY', p .. 'projsize', -size, project)
    if redis.call('HINCRBY', p .. 'projfiles', project, -1) <= 0 then
      redis.call('ZREM', p .. 'projsize', project)
      redis.call('HDEL', p .. 'projfiles', project)
    end
  end
  redis.call('DEL', key)
end
"""

_ADD_BLOB = (
    _UNCOUNT_FUNCTION
    + """
local p, sha, size, now, project, filename = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4],
    ARGV[5], ARGV[6]
uncount(p, sha)
redis.call('HINCRBY', p .. 'totals', 'files', 1)
redis.call('HINCRBY', p .. 'totals', 'bytes', size)
if project ~= '' then
  redis.call('ZINCRBY', p .. 'projsize', size, project)
  redis.call('HINCRBY', p .. 'projfiles', project, 1)
  redis.call('SADD', p .. 'projblobs:' .. project, sha)
end
redis.call('HSET', p .. 'blob:' .. sha, 'size', size, 'project', project, 'filename', filename,
           'added_at', now)
redis.call('ZADD', p .. 'recent', now, sha)
redis.call('ZADD', p .. 'lru', now, sha)
"""
)

_REMOVE_BLOB = (
    _ANNOUNCE_FUNCTION
    + _UNCOUNT_FUNCTION
    + f"""
local p, sha = ARGV[1], ARGV[3]
uncount(p, sha)
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
  announce(p, '{EXTRACTED}', sha)
end
local wheel = redis.call('HGET', p .. 'metaof', sha)
if wheel then
  redis.call('HDEL', p .. 'metaof', sha)
  redis.call('HDEL', p .. 'wheelmeta', wheel)
  announce(p, '{EXTRACTED}', wheel)
end
"""
)

# Projects' sizes were a hash before they were ranked in a sorted set: moved once.
_RANK_PROJECTS = """
local p = ARGV[1]
local sizes = redis.call('HGETALL', p .. 'projbytes')
for i = 1, #sizes, 2 do
  redis.call('ZADD', p .. 'projsize', sizes[i + 1], sizes[i])
end
redis.call('DEL', p .. 'projbytes')
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

# A job's report in the hash `jobs`, its start in the sorted set `jobstarts`; all but the
# latest ARGV[5] started are forgotten.
_PUT_JOB = """
local p, id, started, report, kept = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
redis.call('HSET', p .. 'jobs', id, report)
redis.call('ZADD', p .. 'jobstarts', started, id)
local old = redis.call('ZREVRANGE', p .. 'jobstarts', kept, -1)
if #old > 0 then
  redis.call('HDEL', p .. 'jobs', unpack(old))
  redis.call('ZREM', p .. 'jobstarts', unpack(old))
end
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
        self._announce_script = client.register_script(_ANNOUNCE)
        self._pair = client.register_script(_PAIR)
        self._put_job = client.register_script(_PUT_JOB)
        self._upload_time = client.register_script(_UPLOAD_TIME)
        rank = client.register_script(_RANK_PROJECTS)
        try:
            self._call(lambda: rank(args=[self._p]))
        except StoreUnavailable as failure:  # a node starts while Redis is down, as before
            log.warning("cannot rank the projects of an older cache by size: %s", failure)

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

        deleted = self._call(delete)
        self._announce(PAGES, key)
        return deleted

    def delete_missing_pages(self, before: float, limit: int) -> int:
        args: list[str | int] = [self._p, repr(float(before)), limit]
        return int(self._call(lambda: self._delete_missing(args=args)))

    def expire_pages(self, key: str) -> None:
        for url, record in self.pages_of(key):
            self.put_page(url, key, msgspec.structs.replace(record, fetched_at=0.0))
        self._announce(PAGES, key)

    def _announce(self, topic: str, key: str | None) -> None:
        args: list[str | int] = [self._p, CHANGES_KEPT, topic, *([] if key is None else [key])]
        self._call(lambda: self._announce_script(args=args))

    # -- blobs ---------------------------------------------------------------------------

    def add_blob(
        self, sha256: str, size: int, now: float, project: str | None = None,
        filename: str | None = None,
    ) -> None:  # fmt: skip
        self.add_blobs([NewBlob(sha256, size, now, project, filename)])

    def add_blobs(self, blobs: Iterable[NewBlob]) -> None:
        def add() -> None:
            with self._r.pipeline(transaction=False) as pipe:
                for b in blobs:
                    args: list[str | int | float] = [
                        self._p, b.sha256, b.size, b.at, b.project or "", b.filename or "",
                    ]  # fmt: skip
                    self._add(args=args, client=pipe)
                pipe.execute()

        self._call(add)

    def remove_blob(self, sha256: str) -> None:
        self._call(lambda: self._remove(args=[self._p, CHANGES_KEPT, sha256]))

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

    def overview(self, recent: int, biggest: int, jobs: int = 0) -> Overview:
        def read() -> Overview:
            with self._r.pipeline() as pipe:  # one snapshot (MULTI)
                pipe.hmget(f"{self._p}totals", "files", "bytes")
                pipe.hgetall(f"{self._p}counters")
                # At least one each: a stop of -1 would be the whole set.
                pipe.zrevrange(f"{self._p}recent", 0, max(recent, 1) - 1, withscores=True)
                pipe.zrevrange(f"{self._p}projsize", 0, max(biggest, 1) - 1, withscores=True)
                pipe.zrange(f"{self._p}hours", 0, -1)
                pipe.zrevrange(f"{self._p}jobstarts", 0, max(jobs, 1) - 1)
                (files, size), counters, latest, ranked, hours, job_ids = pipe.execute()
            latest, ranked, job_ids = latest[:recent], ranked[:biggest], job_ids[:jobs]
            shas = [sha.decode() for sha, _ in latest]
            names = [name for name, _ in ranked]
            with self._r.pipeline() as pipe:
                for sha256 in shas:
                    pipe.hmget(f"{self._p}blob:{sha256}", "project", "filename", "size")
                if names:
                    pipe.hmget(f"{self._p}projfiles", *names)
                for hour in hours:
                    pipe.hgetall(f"{self._p}hourly:{hour.decode()}")
                if job_ids:
                    pipe.hmget(f"{self._p}jobs", *job_ids)
                fields = pipe.execute()
            project_files = fields[len(shas)] if names else []
            after = len(shas) + bool(names)
            hourly = {
                int(hour): {k.decode(): int(v) for k, v in counts.items()}
                for hour, counts in zip(hours, fields[after : after + len(hours)], strict=True)
                if counts  # expired with its hour, before the set forgot the hour
            }
            reports = [r for r in (fields[-1] if job_ids else []) if r is not None]
            return Overview(
                int(files or 0),
                int(size or 0),
                {k.decode(): int(v) for k, v in counters.items()},
                [
                    (at, _text(project), _text(filename), int(blob_size or 0))
                    for (_, at), (project, filename, blob_size) in zip(
                        latest, fields[: len(shas)], strict=True
                    )
                ],
                [
                    (name.decode(), int(count or 0), int(total))
                    for (name, total), count in zip(ranked, project_files, strict=True)
                ],
                hourly,
                reports,
            )

        return self._call(read)

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

    def extracted_metadata(self, wheels: Iterable[str] | None = None) -> dict[str, str]:
        if wheels is None:
            rows = self._call(lambda: self._r.hgetall(f"{self._p}wheelmeta"))
            return {k.decode(): v.decode() for k, v in rows.items()}
        asked = list(wheels)
        if not asked:
            return {}
        found = self._call(lambda: self._r.hmget(f"{self._p}wheelmeta", asked))
        return {k: v.decode() for k, v in zip(asked, found, strict=True) if v is not None}

    def put_extracted_metadata(self, wheel_sha256: str, metadata_sha256: str) -> None:
        args: list[str | int] = [self._p, CHANGES_KEPT, wheel_sha256, metadata_sha256]
        self._call(lambda: self._pair(args=args))

    # -- upload times of files whose index gives none -----------------------------------

    def upload_times(self, urls: Iterable[str] | None = None) -> dict[str, str]:
        if urls is None:
            rows = self._call(lambda: self._r.hgetall(f"{self._p}uploadtimes"))
            return {k.decode(): v.decode() for k, v in rows.items()}
        asked = list(urls)
        if not asked:
            return {}
        found = self._call(lambda: self._r.hmget(f"{self._p}uploadtimes", asked))
        return {k: v.decode() for k, v in zip(asked, found, strict=True) if v is not None}

    def put_upload_time(self, url: str, time: str) -> None:
        args: list[str | int] = [self._p, CHANGES_KEPT, url, time]
        self._call(lambda: self._upload_time(args=args))

    # -- changes and counters ------------------------------------------------------------

    def generation(self, topic: str) -> int:
        return int(self._call(lambda: self._r.hget(f"{self._p}generations", topic)) or 0)

    def changes(self, topic: str, since: int) -> Changes:
        def read() -> tuple[Any, list[bytes]]:
            with self._r.pipeline() as pipe:  # one snapshot (MULTI)
                pipe.hget(f"{self._p}generations", topic)
                pipe.zrangebyscore(f"{self._p}changes:{topic}", f"({since}", "+inf")
                generation, members = pipe.execute()
            return generation, members

        generation, members = self._call(read)
        logged: list[tuple[int, str | None]] = []
        for member in members:
            number, space, key = member.decode().partition(" ")
            logged.append((int(number), key if space else None))
        return changes_since(since, int(generation or 0), logged)

    def add_counts(self, deltas: Iterable[tuple[str, int]], hour: int) -> None:
        hourly = f"{self._p}hourly:{hour}"

        def add() -> None:
            with self._r.pipeline(transaction=False) as pipe:
                for name, value in deltas:
                    pipe.hincrby(f"{self._p}counters", name, value)
                    pipe.hincrby(hourly, name, value)
                # The set names the hours kept; each hour's hash also expires on its own.
                pipe.expire(hourly, HOURS_KEPT * 3600)
                pipe.zadd(f"{self._p}hours", {str(hour): hour})
                pipe.zremrangebyscore(f"{self._p}hours", "-inf", hour - HOURS_KEPT)
                pipe.execute()

        self._call(add)

    # -- warm jobs' reports ----------------------------------------------------------------

    def put_job(self, job_id: str, started: float, report: bytes) -> None:
        args: list[str | float | bytes | int] = [self._p, job_id, started, report, JOBS_KEPT]
        self._call(lambda: self._put_job(args=args))

    def get_job(self, job_id: str) -> bytes | None:
        raw = self._call(lambda: self._r.hget(f"{self._p}jobs", job_id))
        return bytes(raw) if raw is not None else None

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
