"""PEP 658 for indexes that lack it: a wheel's own METADATA, read and advertised.

Resolvers fetch `{wheel}.metadata` instead of the whole wheel when the index advertises it.
The proxy offers that for any index, byte-identical to the `*.dist-info/METADATA` inside
the wheel, read from the cached wheel or from a few ranges of the upstream's.

A wheel is whatever the upstream served, so it is read as hostile input: only its central
directory and the one member are read (not `zipfile`, which parses every entry into objects
first and inflates as much as the stream holds), and everything is bounded: the entries
scanned, the directory's bytes, and the bytes actually inflated (never more than the member
claims, nor than a METADATA can sensibly be).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

import msgspec

from cachepi.simple.model import File, Project

# A METADATA file is a few KiB; refuse absurd ones rather than hold them in memory. This
# bounds what is inflated, whatever the archive's headers claim.
MAX_METADATA_BYTES = 16 * 1024**2
# The biggest real wheels hold tens of thousands of files; scanning a directory entry costs
# about a microsecond, so this bounds a hostile one's cost at a fraction of a second.
MAX_ENTRIES = 100_000
# Bytes of central directory read into memory (100,000 entries with names of ~280 bytes).
MAX_DIRECTORY_BYTES = 32 * 1024**2
_CHUNK = 64 * 1024  # compressed bytes read at a time
# Bytes read first from an archive's end: the end record of one without a comment (nearly
# every wheel), and often its whole central directory. A reader over HTTP ranges fetches
# this much first.
END_READ = 16 * 1024

_EOCD = struct.Struct("<4s4H2LH")  # end of central directory
_EOCD_SIGNATURE = b"PK\x05\x06"
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_ZIP64_EOCD_SIGNATURE = b"PK\x06\x06"
_ENTRY = struct.Struct("<4s4B4HL2L5H2L")  # central directory entry
_ENTRY_SIGNATURE = b"PK\x01\x02"
_ENTRY_NAMES = struct.Struct("<3H")  # its name, extra and comment lengths, at offset 28
_LOCAL = struct.Struct("<4s2B4HL2L2H")  # local file header
_LOCAL_SIGNATURE = b"PK\x03\x04"
_METADATA_SUFFIX = b".dist-info/METADATA"
_STORED, _DEFLATED = 0, 8
_ENCRYPTED = 0x1 | 0x40  # traditional and strong encryption
_UTF8 = 0x800
# What a wheel that holds no readable METADATA (broken, hostile) is paired with instead of
# its METADATA's sha256: advertised as none, and not read again while the pair lasts.
UNREADABLE = ""


class NotReadable(Exception):
    """The archive is not a wheel we can read METADATA from (malformed, hostile, too big)."""


class Deferred(Exception):
    """The METADATA claims more bytes than the reader was let inflate (`most`): read it
    elsewhere (on a thread)."""


class Archive(Protocol):
    """What is read of an archive: a file, or the spans of one fetched so far."""

    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def read(self, size: int = -1, /) -> bytes: ...


@runtime_checkable
class Remembering(Archive, Protocol):
    """An archive read again as more of it is fetched (rangedzip.Fetched): it keeps the
    METADATA members its central directory lists once they are found (its bytes do not
    change), so that the directory is scanned once."""

    members: list[Member] | None


class Member(NamedTuple):
    """A `*.dist-info/METADATA` entry of an archive's central directory."""

    name: str
    raw_name: bytes
    flags: int
    method: int
    crc: int
    compressed: int
    size: int
    offset: int  # of its local header, from the archive's start


def read_wheel_metadata(
    wheel: Path | Archive, filename: str, most: int = MAX_METADATA_BYTES
) -> bytes | None:
    """The bytes of the wheel's `{name}-{version}.dist-info/METADATA`, or None if the file is
    not a readable wheel with exactly one such member, or one past the bounds above. Raises
    Deferred for a METADATA that claims more than `most` bytes (within the bound)."""
    try:
        if isinstance(wheel, Path):
            with wheel.open("rb") as file:
                return _read_metadata(file, filename, most)
        return _read_metadata(wheel, filename, most)
    except (OSError, NotReadable, zlib.error, struct.error, ValueError, OverflowError):
        return None


def _read_metadata(file: Archive, filename: str, most: int) -> bytes:
    expected_prefix = "-".join(filename.split("-", 2)[:2]).lower() + ".dist-info/"
    members = file.members if isinstance(file, Remembering) else None
    if members is None:
        members = _metadata_members(file)
        if isinstance(file, Remembering):
            file.members = members
    # Prefer the dist-info named after the wheel; accept a lone one spelled otherwise.
    named = [m for m in members if m.name.lower().startswith(expected_prefix)]
    chosen = named or members
    if len(chosen) != 1:
        raise NotReadable(f"{len(chosen)} METADATA members")
    if most < chosen[0].size <= MAX_METADATA_BYTES:
        raise Deferred(f"{chosen[0].name} claims {chosen[0].size} bytes")
    return _inflate(file, chosen[0])


def _metadata_members(file: Archive) -> list[Member]:
    """Every `{dir}.dist-info/METADATA` entry at the archive's top level, scanning the
    central directory's entries (at most MAX_ENTRIES) without making objects of the rest."""
    file_size = file.seek(0, 2)
    # The last end record signature of the bytes that may hold the record and its comment,
    # looked for in the last END_READ bytes first: if it is there, it is the last of all.
    for tail_length in (END_READ, _EOCD.size + 0xFFFF):
        tail_start = max(0, file_size - tail_length)
        file.seek(tail_start)
        tail = file.read()
        at = tail.rfind(_EOCD_SIGNATURE)
        if at >= 0 or tail_start == 0:
            break
    if at < 0 or len(tail) - at < _EOCD.size:
        raise NotReadable("no end of central directory")
    eocd_offset = tail_start + at
    _, _, _, _, entries, directory_size, directory_offset, _ = _EOCD.unpack_from(tail, at)
    directory_end = eocd_offset  # where the directory ends
    # A zip64 end record, when its locator precedes the end record (zipfile's reading: the
    # record right before its locator, whatever offset the locator claims).
    locator_offset = eocd_offset - _ZIP64_LOCATOR.size
    if locator_offset >= _ZIP64_EOCD.size:
        file.seek(locator_offset - _ZIP64_EOCD.size)
        record = file.read(_ZIP64_EOCD.size + _ZIP64_LOCATOR.size)
        if record[_ZIP64_EOCD.size :][:4] == _ZIP64_LOCATOR_SIGNATURE:
            if record[:4] != _ZIP64_EOCD_SIGNATURE:
                raise NotReadable("no zip64 end of central directory")
            _, _, _, _, _, _, _, entries, directory_size, directory_offset = (
                _ZIP64_EOCD.unpack_from(record)
            )
            directory_end = locator_offset - _ZIP64_EOCD.size
    if entries > MAX_ENTRIES or directory_size > MAX_DIRECTORY_BYTES:
        raise NotReadable(f"{entries} entries in {directory_size} bytes of directory")
    # Bytes before the archive proper (a self-extracting stub): offsets are relative to it.
    prefix = directory_end - directory_size - directory_offset
    if prefix < 0:
        raise NotReadable("the central directory does not fit")
    file.seek(directory_end - directory_size)
    directory = file.read(directory_size)
    if len(directory) != directory_size:
        raise NotReadable("a truncated central directory")
    found: list[Member] = []
    position = scanned = 0
    find = directory.find
    while position < directory_size:
        scanned += 1
        if scanned > MAX_ENTRIES:
            raise NotReadable(f"more than {MAX_ENTRIES} entries")
        if not directory.startswith(_ENTRY_SIGNATURE, position):
            raise NotReadable("a bad central directory entry")
        name_length, extra_length, comment_length = _ENTRY_NAMES.unpack_from(
            directory, position + 28
        )
        name_start = position + _ENTRY.size
        name_end = name_start + name_length
        if find(_METADATA_SUFFIX, name_start, name_end) >= 0:
            member = _member(directory, position, name_end, extra_length, prefix)
            if member.name.count("/") == 1 and member.name.endswith(".dist-info/METADATA"):
                found.append(member)
        position = name_end + extra_length + comment_length
    if position != directory_size:
        raise NotReadable("a truncated central directory entry")
    return found


def _member(
    directory: bytes, position: int, name_end: int, extra_length: int, prefix: int
) -> Member:
    """The central directory entry at `position`, read whole."""
    (
        _, _, _, _, _, flags, method, _, _, crc, compressed, size, _, _, _, _, _, _, offset,
    ) = _ENTRY.unpack_from(directory, position)  # fmt: skip
    raw_name = directory[position + _ENTRY.size : name_end]
    name = raw_name.decode("utf-8" if flags & _UTF8 else "cp437")
    name = name.split("\x00", 1)[0]  # as zipfile reads it: up to a NUL
    if 0xFFFFFFFF in (compressed, size, offset):  # the real values are in a zip64 extra
        extra = directory[name_end : name_end + extra_length]
        size, compressed, offset = _zip64_values(extra, size, compressed, offset)
    return Member(name, raw_name, flags, method, crc, compressed, size, prefix + offset)


def _zip64_values(extra: bytes, size: int, compressed: int, offset: int) -> tuple[int, int, int]:
    """(size, compressed size, offset) with those saturated taken from the zip64 field."""
    position = 0
    while position + 4 <= len(extra):
        kind, length = struct.unpack_from("<2H", extra, position)
        if kind == 1:
            count = min(length, 24) // 8
            values = list(struct.unpack_from(f"<{count}Q", extra, position + 4))
            saturated = [v == 0xFFFFFFFF for v in (size, compressed, offset)]
            if sum(saturated) > len(values):
                raise NotReadable("a short zip64 extra field")
            values.reverse()
            size = values.pop() if saturated[0] else size
            compressed = values.pop() if saturated[1] else compressed
            offset = values.pop() if saturated[2] else offset
            return size, compressed, offset
        position += 4 + length
    raise NotReadable("no zip64 extra field")


def _inflate(file: Archive, member: Member) -> bytes:
    """The member's bytes; never inflates more than it claims, nor past the bound."""
    if member.size > MAX_METADATA_BYTES or member.compressed > MAX_METADATA_BYTES + _CHUNK:
        raise NotReadable(f"{member.name} claims {member.size} bytes")
    if member.flags & _ENCRYPTED:
        raise NotReadable(f"{member.name} is encrypted")
    if member.method not in (_STORED, _DEFLATED):
        raise NotReadable(f"{member.name} is compressed with method {member.method}")
    file.seek(member.offset)
    header = file.read(_LOCAL.size)
    if len(header) != _LOCAL.size or header[:4] != _LOCAL_SIGNATURE:
        raise NotReadable(f"no local header for {member.name}")
    name_length, extra_length = struct.unpack_from("<2H", header, 26)
    if file.read(name_length) != member.raw_name:
        raise NotReadable(f"the local header names another member than {member.name}")
    file.seek(member.offset + _LOCAL.size + name_length + extra_length)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS) if member.method == _DEFLATED else None
    # One byte more than claimed is enough to know the claim was false.
    limit = member.size + 1
    out = bytearray()
    left = member.compressed
    while left > 0 and len(out) < limit:
        data = file.read(min(_CHUNK, left))
        if not data:
            raise NotReadable(f"{member.name} is truncated")
        left -= len(data)
        if inflater is None:
            out += data[: limit - len(out)]
            continue
        out += inflater.decompress(data, limit - len(out))
        while inflater.unconsumed_tail and len(out) < limit:
            out += inflater.decompress(inflater.unconsumed_tail, limit - len(out))
    if len(out) != member.size or zlib.crc32(out) != member.crc:
        raise NotReadable(f"{member.name} does not hold the {member.size} bytes it claims")
    return bytes(out)


def _wheel_without_metadata(file: File) -> bool:
    return not file.core_metadata and file.filename.endswith(".whl")


def lacks_metadata(project: Project) -> bool:
    """True if some wheel on the page has no PEP 658 metadata from its index."""
    return any(map(_wheel_without_metadata, project.files))


def extracted_for(project: Project, extracted: Mapping[str, str]) -> dict[str, str]:
    """The pairs of `extracted` (wheel sha256 -> METADATA sha256) of the wheels on the page
    whose index offers no metadata."""
    return {
        sha256: extracted[sha256]
        for file in project.files
        if _wheel_without_metadata(file) and (sha256 := file.hashes.get("sha256", "")) in extracted
    }


def with_wheel_metadata(project: Project, extracted: Mapping[str, str]) -> Project:
    """`project` with `core-metadata` advertised for every wheel whose index offers none
    (and gives its sha256, which names the wheel the METADATA is read from): with the
    METADATA's hash once it was read (`extracted`: wheel sha256 -> METADATA sha256), `true`
    before (the proxy reads it when asked: filecache/wheel_metadata.py); none for a wheel
    found to hold no readable METADATA (paired with UNREADABLE)."""
    files = [
        msgspec.structs.replace(
            file, core_metadata={"sha256": extracted[sha256]} if sha256 in extracted else True
        )
        if _wheel_without_metadata(file)
        and (sha256 := file.hashes.get("sha256"))
        and extracted.get(sha256) != UNREADABLE
        else file
        for file in project.files
    ]
    return msgspec.structs.replace(project, files=files)
