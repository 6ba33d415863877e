"""Rendered pages on this machine's disk: one immutable file per page variant (format and
coding), named by what it holds, written once and whole, sent with sendfile like a stored
file.

A variant's name comes from the page's key and content version and the renderer's salt
(its version, and the settings that shape pages): new content or new code gets a new name,
so a file found under a name holds the bytes that name stands for. Every file is written to
a temp file and renamed into place complete: a crash never leaves a part of one under its
name. A variant's codings come as clients ask for them (a big page's from its identity
file); each is compressed as a stream, so the same bytes come out however the page was cut
(`encoded` of a small one in memory too). Writing a version removes the key's files of other
versions (a process still sending one keeps it open: POSIX frees it after), but those of a
few other addresses: a page that lists provenance is a version per address the proxy is
reached at (catalog.page), and clients using two names for the proxy must not have each
render remove the other's files.

Everything here derives from the page records, so the cache's sole server clears it at
start (what a crash or a power cut left is never trusted). The files count toward the
cache's size: they may take `share` of it, the least recently used going beyond (as soon
as a write finds them beyond, as far as this process counted since `maintain`); the rest
is the blobs' (accounting.py takes `usage` off their room).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ClassVar, Protocol

import zstandard

from cachepi.config import Settings
from cachepi.store.flock import FileLock, remove_abandoned_files

log = logging.getLogger(__name__)

CODINGS = ("identity", "gzip", "zstd")
_SUFFIXES = {"identity": "", "gzip": ".gz", "zstd": ".zst"}
# A file's last use is its mtime, moved on when it is sent if it is older than this.
_TOUCH_AFTER = 60.0
# Evicting goes down to this part of the room, so that it is not done at every write.
_EVICT_TO = 0.9
# Bytes compressed at a time, whatever the size of the pieces rendered.
_PIECE = 1024 * 1024
_CLEARED = "pages.cleared-"
# The part of CACHE_SIZE rendered pages may take; the blobs have the rest, and what the
# pages leave of it.
SHARE = 0.25
# A temp file no renderer touched for this long was left by one that died.
_ABANDONED = 3600.0
# The addresses whose versions of a page stay side by side, the most recently used: as many
# names as a fleet reaches one proxy by, but not one per Host header a client makes up.
ADDRESSES = 8
_TAG = 24  # hex digits of a version's tag
# zstd compressors kept for the next page (the event loop's and a render thread's).
_IDLE_COMPRESSORS = 2


@dataclass(frozen=True)
class Variant:
    """One page in one format, all codings: where its files go and what they are called."""

    bucket: str  # a directory (strings, not Paths: this is on every request's way)
    prefix: str  # of every file of the page's key: "{key digest}-"
    version: str  # of every file of this version: "{key digest}-{address digest-}{tag}"
    tag: str  # the version's, with the format's, and the ETag's
    kind: str  # the format's files: "json", "html"
    address: str | None = None  # the proxy's, for a page shown per address

    def path(self, coding: str) -> str:
        return f"{self.bucket}/{self.version}.{self.kind}{_SUFFIXES[coding]}"

    def exists(self, coding: str | None = None) -> bool:
        """Whether its file in `coding` was written; None: in every coding."""
        if coding is not None:
            return os.path.exists(self.path(coding))
        return all(os.path.exists(self.path(coding)) for coding in CODINGS)

    def etag(self, coding: str) -> str:
        return f'"{self.tag}.{self.kind}{_SUFFIXES[coding]}"'


@dataclass(frozen=True)
class Opened:
    """A variant's file in one coding, open for sending; the caller closes it."""

    file: BinaryIO
    size: int


def pages_dir(settings: Settings) -> Path:
    """Where this machine's rendered pages go (on each node of a cluster, its own)."""
    return settings.cache_dir / "pages"


def open_page_files(settings: Settings) -> PageFiles:
    return PageFiles(pages_dir(settings), int(settings.cache_size * SHARE))


class PageFiles:
    def __init__(self, root: Path, max_bytes: int) -> None:
        """`root`: the directory of the files (created); `max_bytes`: what they may take."""
        self.root = root
        self.temp = root / "tmp"
        self.max_bytes = max_bytes
        self.temp.mkdir(parents=True, exist_ok=True)
        self.usage = 0  # bytes of the files, as last counted and since changed by this process

    @staticmethod
    def clear(root: Path) -> None:
        """Take every rendered file out of use at once, as the cache's sole server at
        start: the directory is moved aside, and removed later (`maintain`)."""
        if root.exists():
            root.rename(root.with_name(f"{_CLEARED}{secrets.token_hex(4)}"))

    def variant(
        self, salt: str, key: str, version: str, kind: str, address: str | None = None
    ) -> Variant:
        """`kind`: the format's files ("json", "html"). `address`: the page's URL at the
        proxy, for a page shown per address (its versions of other addresses stay)."""
        keyed = hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
        tag = hashlib.blake2b(f"{salt}\0{key}\0{version}".encode(), digest_size=12).hexdigest()
        at = ""
        if address is not None:
            at = hashlib.blake2b(address.encode(), digest_size=4).hexdigest() + "-"
        bucket = f"{self.root}/{keyed[:2]}"
        return Variant(bucket, f"{keyed}-", f"{keyed}-{at}{tag}", tag, kind, address)

    def lock(self, variant: Variant) -> FileLock:
        """The lock of rendering `variant`, across the processes of this machine."""
        return FileLock(self.temp / f"{variant.version}.{variant.kind}.lock")

    def open(self, variant: Variant, coding: str) -> Opened | None:
        """The variant's file in `coding`, open, if it is there; a use, for eviction."""
        try:
            file = open(variant.path(coding), "rb", buffering=0)  # noqa: SIM115 - the caller's
        except OSError:  # not there, or not readable (then rendering finds why)
            return None
        stat = os.fstat(file.fileno())
        if time.time() - stat.st_mtime > _TOUCH_AFTER:
            with contextlib.suppress(OSError):  # a read-only cache still serves
                os.utime(file.fileno())
        return Opened(file, stat.st_size)

    def write(
        self, variant: Variant, pieces: Iterable[bytes], codings: Iterable[str] = CODINGS
    ) -> None:
        """Write the variant in `codings` from its rendered `pieces`, in one pass (a big
        page is never held whole), and remove the key's files of other versions.
        Blocking: run it on a thread."""
        self._write(variant, pieces, codings)

    def write_from(self, variant: Variant, identity: BinaryIO, codings: Iterable[str]) -> None:
        """Write the variant in `codings` from its identity file, open (no rendering).
        Blocking: run it on a thread."""
        self._write(variant, _read_back(identity), codings)

    def _write(self, variant: Variant, pieces: Iterable[bytes], codings: Iterable[str]) -> None:
        codings = tuple(codings)
        temps = {coding: self.temp / f"{secrets.token_hex(8)}.tmp" for coding in codings}
        encoders = {coding: _encoder(coding) for coding in codings}
        try:
            with contextlib.ExitStack() as stack:
                files = {c: stack.enter_context(path.open("wb")) for c, path in temps.items()}
                for piece in _pieces(pieces):
                    for coding, file in files.items():
                        file.write(encoders[coding].compress(piece))
                for coding, file in files.items():
                    file.write(encoders[coding].flush())
            self._place(variant, temps)
        finally:
            for temp in temps.values():
                temp.unlink(missing_ok=True)

    def write_encoded(self, variant: Variant, coding: str, data: bytes) -> None:
        """Write the variant's file in `coding`: `data`, encoded already (`encoded`).
        Blocking: run it on a thread."""
        temp = self.temp / f"{secrets.token_hex(8)}.tmp"
        try:
            with temp.open("wb") as file:
                file.write(data)
            self._place(variant, {coding: temp})
        finally:
            temp.unlink(missing_ok=True)

    def _place(self, variant: Variant, temps: Mapping[str, Path]) -> None:
        """Rename the written `temps` (by coding) into place, and remove the key's files of
        other versions."""
        os.makedirs(variant.bucket, exist_ok=True)
        written = 0
        for coding, temp in temps.items():
            written += temp.stat().st_size
            os.replace(temp, variant.path(coding))
        self.usage += written - self._remove(variant.bucket, variant.prefix, but=variant)
        if self.usage > self.max_bytes:  # now, not at the next `maintain`: many pages
            self._evict(but=variant.version)  # rendered at once must not take the blobs' room

    def remove(self, key: str | None) -> None:
        """Remove every file of `key` (its pages went: invalidated, purged), or of every
        key (None)."""
        if key is None:
            for _, _, path in self._listing():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            self.usage = 0
            return
        variant = self.variant("", key, "", "")
        with contextlib.suppress(FileNotFoundError):
            self.usage -= self._remove(variant.bucket, variant.prefix)

    def _remove(self, bucket: str, prefix: str, but: Variant | None = None) -> int:
        """Remove the files in `bucket` named `prefix...` but those of `but`'s version and,
        if it is shown per address, those of the other addresses used most recently
        (ADDRESSES in all); returns their bytes."""
        victims: list[os.DirEntry[str]] = []
        others: dict[str, list[os.DirEntry[str]]] = {}  # another address's files
        here = None if but is None or but.address is None else _address(but.version, prefix)
        for entry in os.scandir(bucket):
            if not entry.name.startswith(prefix):
                continue
            version = entry.name.partition(".")[0]
            if but is not None and version == but.version:
                continue
            address = _address(version, prefix)
            if here is None or not address or address == here:
                victims.append(entry)  # another version at this address (or at none)
            else:
                others.setdefault(address, []).append(entry)
        by_use = sorted(others.values(), key=_last_use, reverse=True)
        for files in by_use[ADDRESSES - 1 :]:
            victims += files
        removed = 0
        for entry in victims:
            with contextlib.suppress(FileNotFoundError):
                size = entry.stat().st_size
                os.unlink(entry.path)
                removed += size
        return removed

    def maintain(self) -> int:
        """Count the files anew, remove the least recently used beyond the room, and what
        renderers that died (temp and lock files nobody holds) and clearing left; returns
        how many files went. Blocking: run it on a thread."""
        removed = self._evict()
        for leftover in self.root.parent.glob(f"{_CLEARED}*"):
            shutil.rmtree(leftover, ignore_errors=True)
        return removed + remove_abandoned_files(self.temp, _ABANDONED)

    def _evict(self, but: str | None = None) -> int:
        """Count the files anew and remove the least recently used beyond the room, but
        those of version `but` (just written: to be sent); returns how many went."""
        files = sorted(self._listing())  # oldest first
        total = sum(size for _, size, _ in files)
        removed = 0
        if total > self.max_bytes:
            for _, size, path in files:
                if os.path.basename(path).partition(".")[0] == but:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    removed += 1
                total -= size
                if total <= self.max_bytes * _EVICT_TO:
                    break
        self.usage = total
        return removed

    def _listing(self) -> Iterator[tuple[float, int, str]]:
        """(last use, size, path) of every file."""
        for bucket in os.scandir(self.root):
            if bucket.name == self.temp.name or not bucket.is_dir():
                continue
            for entry in os.scandir(bucket.path):
                with contextlib.suppress(FileNotFoundError):
                    stat = entry.stat()
                    yield stat.st_mtime, stat.st_size, entry.path


def _address(version: str, prefix: str) -> str:
    """The address digest in a version's name ("" for a page not shown per address)."""
    return version[len(prefix) : -_TAG]


def _last_use(files: list[os.DirEntry[str]]) -> float:
    latest = 0.0
    for entry in files:
        with contextlib.suppress(FileNotFoundError):
            latest = max(latest, entry.stat().st_mtime)
    return latest


class _Encoder(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...

    def flush(self) -> bytes: ...


class _Identity:
    def compress(self, data: bytes, /) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


class _Zstd:
    """A zstd stream on a compressor of the pool's, given back at its end. A compressor's
    context takes a megabyte or two: made anew for every page, that memory comes from mmap
    (malloc.py) and is touched afresh each time, ~200 page faults (bench/results/notes.md)."""

    _idle: ClassVar[list[zstandard.ZstdCompressor]] = []
    _lock = threading.Lock()

    def __init__(self) -> None:
        with self._lock:
            idle = self._idle.pop() if self._idle else None
        self._compressor = idle or zstandard.ZstdCompressor(level=3)
        self._stream = self._compressor.compressobj()

    def compress(self, data: bytes, /) -> bytes:
        return self._stream.compress(data)

    def flush(self) -> bytes:
        tail = self._stream.flush()
        with self._lock:  # a stream that failed midway is not given back: it goes
            if len(self._idle) < _IDLE_COMPRESSORS:
                self._idle.append(self._compressor)
        return tail


def _encoder(coding: str) -> _Encoder:
    """A stream encoder for `coding`: its output is the same however the input is cut."""
    if coding == "gzip":
        return zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: with a gzip header
    if coding == "zstd":
        return _Zstd()
    return _Identity()


def encoded(pieces: Iterable[bytes], coding: str) -> bytes:
    """The rendered `pieces` in `coding`, in memory, byte for byte as the variant's file in
    that coding holds them. Blocking for a big page: run it on a thread."""
    encoder = _encoder(coding)
    return b"".join([*map(encoder.compress, _pieces(pieces)), encoder.flush()])


def _read_back(file: BinaryIO) -> Iterator[bytes]:
    """A file's bytes from where it stands, _PIECE at a time."""
    while piece := file.read(_PIECE):
        yield piece


def _pieces(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """`pieces` cut to at most _PIECE bytes (a project page comes as one)."""
    for piece in pieces:
        if len(piece) <= _PIECE:
            yield piece
            continue
        view = memoryview(piece)
        for start in range(0, len(piece), _PIECE):
            yield bytes(view[start : start + _PIECE])
