"""The cluster's locks, in Redis, and how a node follows a download another node runs.

A lock is held by SET NX with an expiry, renewed while held; its value is a fencing token
(node, a cluster-wide counter and a nonce), so a holder that lost the lock (it stalled past
the expiry and another node took over) can tell before it stores anything. A node that dies
stops renewing: the lock expires and another takes over. Everything of one holding is named
by its token: its part file, its published pieces, its outcome, its reservation of room in
the cache (a hash of reservations, each counted while its token still holds its lock).

Following across nodes: followers say they want the holder's progress; the holder then
publishes its download in pieces to the object store (and their count in Redis, under its
token); followers relay the pieces, then the rest from the stored file. If the holder dies,
a follower takes over from the upstream past what it relayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import redis

from cachepi.store.breaker import Breaker
from cachepi.store.flock import ended_source, remove_abandoned_files
from cachepi.store.protocols import (
    Followed,
    Lock,
    Origin,
    Outcome,
    Progress,
    StoredLookup,
    StoreUnavailable,
)
from cachepi.store.redis_metadata import PREFIX
from cachepi.store.s3 import S3Blobs
from cachepi.types import DownloadFailed

log = logging.getLogger(__name__)

# Extend or release a lock only while it is still ours (the fencing token matches).
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
redis.call('HDEL', KEYS[4], ARGV[3])
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2], 'EX', 60)
  redis.call('SET', KEYS[3], ARGV[2], 'EX', 60)
  return redis.call('DEL', KEYS[1])
end
return 0
"""
_POLL_SECONDS = 0.05
# How long `exclusive` tries for the cluster-wide store lock.
_EXCLUSIVE_WAIT = 2.0
# A followed download is published in pieces of this size.
PIECE_BYTES = 8 * 1024 * 1024
# Followers move on to the stored file when it is there; the pieces go a little after.
_PIECES_KEPT = 10.0
# A holding's part file: the lock's digest, the token's counter and nonce; working alone
# (Redis down), the process and the lock object instead.
_PART_RE = re.compile(r"([0-9a-f]{32})-([0-9]+)-([0-9a-f]{8})\.part")
_ALONE_RE = re.compile(r"([0-9a-f]{32})-alone-([0-9]+)-([0-9]+)\.part")
# A part file whose holding is gone is removed this long after its last write; other temp
# files this long after theirs.
_UNHELD_GRACE = 60.0
_TEMP_UNTOUCHED = 3600.0


class RedisLock:
    def __init__(self, locks: RedisLocks, key: str, path: Path) -> None:
        self._locks = locks
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        self._key = f"{locks.prefix}lock:{digest}"
        self._outcome_key = f"{locks.prefix}outcome:{digest}"
        self._wanted_key = f"{locks.prefix}wanted:{digest}"
        self._digest = digest
        self._path = path
        self.acquired = False
        self._token = ""
        self._lost = False
        self._renewer: asyncio.Task[None] | None = None
        self._part: Path | None = None

    @property
    def part(self) -> Path:
        if self._part is None:
            if not self._token:  # working alone (Redis is down): others may work on it too
                name = f"{self._digest}-alone-{os.getpid()}-{id(self)}.part"
            else:
                _, fence, nonce = self._token.rsplit(":", 2)
                name = f"{self._digest}-{fence}-{nonce}.part"
            self._part = self._path.with_name(name)
        return self._part

    def reserve(self, size: int) -> None:
        if self._token:
            field = f"{self._digest}|{self._token}"
            key = f"{self._locks.prefix}reserved"
            self._locks.breaker.call(lambda: self._locks.client.hset(key, field, size))

    def _get(self, key: str) -> str | None:
        """A string value from Redis; None when absent or Redis is down."""
        try:
            raw = self._locks.breaker.call(lambda: self._locks.client.get(key))
        except StoreUnavailable:
            return None
        return raw.decode() if isinstance(raw, bytes) else None

    def _holder(self) -> str | None:
        """The fencing token of whoever holds the lock now (None: nobody)."""
        return self._get(self._key)

    @property
    def shared(self) -> bool:
        """Whether Redis granted the lock (without Redis, each node works alone)."""
        return bool(self._token)

    @property
    def storable(self) -> bool:
        """The lock is ours, and Redis still says so (fencing)."""
        if not self.acquired or self._lost or not self._token:
            return False
        try:
            return bool(self._locks.breaker.call(self._extend))
        except StoreUnavailable:
            return False

    def _extend(self) -> object:
        return self._locks.extend_script(keys=[self._key], args=[self._token, self._locks.ttl_ms])

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it. Without Redis, every node works alone: the
        lock is "taken" but nothing done under it is stored."""
        breaker, client = self._locks.breaker, self._locks.client
        try:
            fence = breaker.call(lambda: client.incr(f"{self._locks.prefix}fence"))
            # The counter restarts with an empty Redis: the nonce keeps tokens unique.
            token = f"{self._locks.node}:{fence}:{secrets.token_hex(4)}"
            taken = breaker.call(
                lambda: client.set(self._key, token, nx=True, px=self._locks.ttl_ms)
            )
        except StoreUnavailable:
            self.acquired, self._token, self._part = True, "", None
            return True
        if not taken:
            return False
        self.acquired, self._token, self._part = True, token, None
        self._renewer = asyncio.get_running_loop().create_task(self._renew())
        return True

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self._locks.ttl_ms / 3000)
            try:
                extended = self._locks.breaker.call(self._extend)
            except StoreUnavailable:
                continue  # Redis may come back before the expiry
            if not extended:
                log.warning("lost the cluster lock %s to another node", self._key)
                self._lost = True
                return

    def _held_elsewhere(self) -> bool:
        holder = self._holder()
        return holder is not None and holder != self._token

    async def wait_released(self) -> Outcome | None:
        while self._held_elsewhere():  # noqa: ASYNC110 - a lock elsewhere has no event
            await asyncio.sleep(_POLL_SECONDS)
        return self._outcome()

    def _outcome(self, holder: str | None = None) -> Outcome | None:
        """The latest holder's outcome, or that of the holding of token `holder`."""
        key = self._outcome_key if holder is None else f"{self._outcome_key}:{holder}"
        return Outcome.decode(self._get(key) or "")

    def release(self, outcome: Outcome | None = None) -> None:
        if self.acquired and self._token:
            said = outcome.encode() if outcome else ""
            keys = [
                self._key, self._outcome_key, f"{self._outcome_key}:{self._token}",
                f"{self._locks.prefix}reserved",
            ]  # fmt: skip
            args = [self._token, said, f"{self._digest}|{self._token}"]
            with contextlib.suppress(StoreUnavailable):
                self._locks.breaker.call(lambda: self._locks.release_script(keys=keys, args=args))
        self.acquired = False
        self.close()

    def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None

    # -- following a download on another node --------------------------------------------

    def _want_pieces(self) -> None:
        with contextlib.suppress(StoreUnavailable):
            self._locks.breaker.call(lambda: self._locks.client.set(self._wanted_key, 1, ex=30))

    def _unwant_pieces(self) -> None:
        """This node stops following (it took over): only other followers may want them."""
        with contextlib.suppress(StoreUnavailable):
            self._locks.breaker.call(lambda: self._locks.client.delete(self._wanted_key))

    def _pieces_wanted(self) -> bool:
        try:
            return bool(
                self._locks.breaker.call(lambda: self._locks.client.exists(self._wanted_key))
            )
        except StoreUnavailable:
            return False

    def _pieces(self, token: str) -> int:
        return int(self._get(f"{self._locks.prefix}pieces:{token}") or 0)

    def _publish_count(self, token: str, count: int) -> None:
        key = f"{self._locks.prefix}pieces:{token}"
        self._locks.breaker.call(lambda: self._locks.client.set(key, count, ex=3600))

    async def publish(self, progress: Progress) -> None:
        """Put the bytes so far in the object store in pieces while another node follows,
        so its clients get them before the end. The stored file replaces them; they are
        deleted a while after."""
        token = self._token
        if not token:  # working alone (Redis is down): nobody can follow
            return
        pieces = self._locks.pieces
        published = 0
        try:
            while not progress.done:
                if self._pieces_wanted():
                    while (published + 1) * PIECE_BYTES <= progress.written:
                        data = await asyncio.to_thread(_read_piece, self.part, published)
                        await pieces.put_piece(token, published, data)
                        published += 1
                        self._publish_count(token, published)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_POLL_SECONDS):
                        await progress.wait_changed()
        except (OSError, StoreUnavailable) as failure:  # followers wait for the stored file
            log.warning("cannot publish the progress of a download: %s", failure)
        if published:
            await asyncio.sleep(_PIECES_KEPT)
            await pieces.delete_pieces(token, published)

    async def follow(
        self, size: int | None, stored: StoredLookup, origin: Origin
    ) -> Followed | None:
        while True:
            holder = self._holder()
            if holder is None:  # released, or expired with its node
                ended = await ended_source(self._outcome(), stored)
                if ended is not None:
                    return ended
                if self.try_acquire():  # nobody holds it now: it is ours to do
                    self._unwant_pieces()
                    return None
                continue
            self._want_pieces()
            if self._pieces(holder) > 0:
                return self._following(holder, size, stored, origin)
            await asyncio.sleep(_POLL_SECONDS)

    def _following(
        self, holder: str, size: int | None, stored: StoredLookup, origin: Origin
    ) -> Followed:
        """The holder's published pieces, then the rest from the stored file. Fails if the
        holder fails or another node replaces it; takes over if it dies."""
        pieces = self._locks.pieces
        source: Followed

        async def chunks() -> AsyncIterator[bytes]:
            offset = piece = 0
            while True:
                while piece < self._pieces(holder):
                    data = await pieces.read_piece(holder, piece)
                    piece += 1
                    offset += len(data)
                    yield data
                current = self._holder()
                if current is None:
                    outcome = self._outcome(holder)
                    if outcome is not None and outcome.ok:
                        blob = await stored()
                        if blob is not None:
                            source.vouched = blob.sha256, blob.size
                            if outcome.verified not in (None, source.vouched):
                                blob.close()
                                raise DownloadFailed("the stored file is not the one followed")
                            try:
                                async for data in blob.chunks(offset, blob.size):
                                    yield data
                            finally:
                                blob.close()
                            return
                    if outcome is not None or not self.try_acquire():
                        said = outcome.encode() if outcome else "died"
                        raise DownloadFailed(f"the node downloading it stopped ({said})")
                    self._unwant_pieces()
                    # Its node died: take over, from upstream, past what was relayed already
                    # (the whole is verified at the end, as always), and clear its pieces.
                    log.info("taking over a download from a dead node at byte %d", offset)
                    await pieces.delete_pieces(holder, piece)
                    async with origin(offset) as (_, rest):
                        async for data in rest:
                            yield data
                    return
                if current != holder:
                    raise DownloadFailed("the node downloading it was replaced")
                self._want_pieces()
                await asyncio.sleep(_POLL_SECONDS)

        @contextlib.asynccontextmanager
        async def opened() -> AsyncIterator[tuple[int | None, AsyncIterator[bytes]]]:
            yield size, chunks()

        source = Followed(opened())
        return source


def _read_piece(part: Path, index: int) -> bytes:
    with part.open("rb") as file:
        file.seek(index * PIECE_BYTES)
        return file.read(PIECE_BYTES)


class RedisLocks:
    """Cluster-wide locks, named from any key (a URL, a page)."""

    def __init__(
        self, client: redis.Redis, breaker: Breaker, node: str, pieces: S3Blobs,
        ttl: float = 10.0, prefix: str = PREFIX,
    ) -> None:  # fmt: skip
        self.client = client
        self.breaker = breaker
        self.node = node
        self.pieces = pieces
        self.prefix = prefix
        self.ttl_ms = int(ttl * 1000)
        self.extend_script = client.register_script(_EXTEND)
        self.release_script = client.register_script(_RELEASE)

    def lock(self, key: str) -> RedisLock:
        name = hashlib.sha256(key.encode()).hexdigest()[:32]
        # The part file of a download under the lock is on this node's own disk.
        return RedisLock(self, key, self.pieces.temp_dir / f"{name}.lock")

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[bool]:
        lock = self.lock("evict")
        deadline = time.monotonic() + _EXCLUSIVE_WAIT
        # Another node's lock has no event to await: poll it.
        while not lock.try_acquire() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(_POLL_SECONDS)
        held = lock.acquired and lock.shared
        try:
            yield held
        finally:
            lock.release()

    def in_progress(self, but: Lock | None = None) -> int:
        """The reservations of every holding whose token still holds its lock; the others'
        (their node died, or lost the lock) are dropped on the way."""
        key = f"{self.prefix}reserved"
        reserved = {
            _text(field): int(_text(size))
            for field, size in self.breaker.call(lambda: self.client.hgetall(key)).items()
        }
        if not reserved:
            return 0
        fields = [field.split("|", 1) for field in reserved]
        locks = [f"{self.prefix}lock:{digest}" for digest, _ in fields]
        holders = self.breaker.call(lambda: self.client.mget(locks))
        mine = but._token if isinstance(but, RedisLock) else None
        total, stale = 0, []
        for (field, size), (_, token), holder in zip(
            reserved.items(), fields, holders, strict=True
        ):
            if holder is None or _text(holder) != token:
                stale.append(field)
            elif token != mine:
                total += size
        if stale:
            self.breaker.call(lambda: self.client.hdel(key, *stale))
        return total

    async def remove_abandoned(self, older_than: float) -> int:
        """This node's leftover part files, and pieces of downloads whose node died."""
        removed = remove_abandoned_files(self.pieces.temp_dir, older_than)
        return removed + await self.pieces.remove_stale_pieces(older_than)

    def sweep(self) -> int:
        """This node's part files whose holding is gone (its process died, its lock expired),
        and temp files untouched for an hour."""
        now = time.time()
        removed = 0
        for entry in os.scandir(self.pieces.temp_dir):
            try:
                age = now - entry.stat().st_mtime
            except FileNotFoundError:
                continue
            if match := _PART_RE.fullmatch(entry.name):
                holder = self._get_holder(match[1])  # "": Redis did not answer, ask later
                held = holder == "" or (
                    holder is not None and holder.endswith(f":{match[2]}:{match[3]}")
                )
                abandoned = not held and age > _UNHELD_GRACE
            elif match := _ALONE_RE.fullmatch(entry.name):
                abandoned = not _alive(int(match[2])) and age > _UNHELD_GRACE
            else:
                abandoned = age > _TEMP_UNTOUCHED
            if abandoned:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
        return removed

    def _get_holder(self, digest: str) -> str | None:
        """The token holding lock `digest`, None if nobody, "" if Redis does not answer."""
        key = f"{self.prefix}lock:{digest}"
        try:
            raw = self.breaker.call(lambda: self.client.get(key))
        except StoreUnavailable:
            return ""
        return raw.decode() if isinstance(raw, bytes) else None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
