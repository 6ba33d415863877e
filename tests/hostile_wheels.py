"""Hostile and odd wheels, written byte by byte: zip bombs, archives with more entries than
they claim, zip64 records, prepended stubs. `zipfile` cannot write most of these (it
compresses what it is given, and tells the truth in its headers), so these are raw zips.

    bomb = bomb_wheel("evil", "1.0")                   # METADATA: claims 1 KiB, inflates to 1 GiB
    crowd = many_entries_wheel("evil", "1.0", 200_000)  # 200,000 entries and a METADATA
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.fakeupstream.dists import Dist, core_metadata, dist_name

_DEFLATED, _STORED = 8, 0


@dataclass(frozen=True)
class Member:
    name: str
    payload: bytes  # as stored in the archive (compressed with `method`)
    size: int  # the uncompressed size the headers claim
    crc: int
    method: int = _DEFLATED

    @classmethod
    def of(cls, name: str, data: bytes, method: int = _DEFLATED) -> Member:
        """A truthful member holding `data`."""
        if method == _DEFLATED:
            packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
            payload = packer.compress(data) + packer.flush()
        else:
            payload = data
        return cls(name, payload, len(data), zlib.crc32(data), method)


def zip_archive(
    members: Sequence[Member],
    *,
    prefix: bytes = b"",
    comment: bytes = b"",
    zip64: bool = False,
    claimed_entries: int | None = None,
) -> bytes:
    """A zip of `members`. `prefix`: bytes before it (a self-extracting stub); `zip64`:
    sizes and offsets in zip64 extra fields and a zip64 end record; `claimed_entries`: the
    entry count the end record gives (the truth by default)."""
    local: list[bytes] = []
    central: list[bytes] = []
    offset = 0
    for member in members:
        name = member.name.encode()
        extra = b""
        csize, size, at = len(member.payload), member.size, offset
        if zip64:
            extra = struct.pack("<2H3Q", 1, 24, size, csize, at)
            csize = size = at = 0xFFFFFFFF
        header = struct.pack(
            "<4s2B4HL2L2H", b"PK\x03\x04", 45, 0, 0x800, member.method, 0, 0x21,
            member.crc, csize, size, len(name), len(extra),
        )  # fmt: skip
        local.append(header + name + extra + member.payload)
        entry = struct.pack(
            "<4s4B4HL2L5H2L", b"PK\x01\x02", 45, 3, 45, 0, 0x800, member.method, 0, 0x21,
            member.crc, csize, size, len(name), len(extra), 0, 0, 0, 0o100644 << 16, at,
        )  # fmt: skip
        central.append(entry + name + extra)
        offset += len(local[-1])
    directory = b"".join(central)
    entries = len(members) if claimed_entries is None else claimed_entries
    end = b""
    if zip64:
        record_at = offset + len(directory)
        end += struct.pack(
            "<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, len(directory), offset
        )
        end += struct.pack("<4sLQL", b"PK\x06\x07", 0, record_at, 1)
        end += struct.pack(
            "<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, len(comment)
        )
    else:
        short = min(entries, 0xFFFF)
        end += struct.pack(
            "<4s4H2LH", b"PK\x05\x06", 0, 0, short, short, len(directory), offset, len(comment)
        )
    return prefix + b"".join(local) + directory + end + comment


def _bits_to_bytes(bits: list[int]) -> bytes:
    """Deflate packs bits from each byte's least significant bit up."""
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def _code(value: int, width: int) -> list[int]:
    """A Huffman code: most significant bit first."""
    return [(value >> (width - 1 - i)) & 1 for i in range(width)]


def zero_bomb(inflated: int) -> bytes:
    """A raw deflate stream of at least `inflated` zeros, about 1/160 of that in size, made
    in no time: one fixed-Huffman block, a literal zero, then matches of 258 bytes at
    distance 1. Eight matches take 104 bits, 13 whole bytes: repeating those bytes adds
    matches."""
    bits = [1, 1, 0, *_code(0x30, 8)]  # the last block, fixed codes; the literal 0
    bits += (_code(0b11000101, 8) + [0] * 5) * 16  # 16 x (length 258, distance 1)
    bits += [0] * 7  # end of block
    stream = _bits_to_bytes(bits)
    unit = stream[2:15]  # bits 16..119: eight matches, whatever came before
    units = max(0, -(-(inflated - 1 - 16 * 258) // (8 * 258)))
    return stream[:2] + unit * units + stream[2:]


def _wheel_members(name: str, version: str, metadata: bytes | None) -> list[Member]:
    info = f"{dist_name(name)}-{version}.dist-info"
    members = [Member.of(f"{dist_name(name)}/__init__.py", b"")]
    if metadata is not None:
        members.append(Member.of(f"{info}/METADATA", metadata))
    return [*members, Member.of(f"{info}/WHEEL", b"Wheel-Version: 1.0\n")]


def _filename(name: str, version: str) -> str:
    return f"{dist_name(name)}-{version}-py3-none-any.whl"


def bomb_wheel(
    name: str, version: str, inflated: int = 1 << 30, claimed: int = 1024, method: int = 8
) -> Dist:
    """A wheel whose METADATA claims `claimed` bytes but inflates to `inflated` zeros."""
    info = f"{dist_name(name)}-{version}.dist-info"
    bomb = Member(f"{info}/METADATA", zero_bomb(inflated), claimed, zlib.crc32(bytes(claimed)))
    members = _wheel_members(name, version, None)
    members.insert(1, bomb)
    return Dist.from_bytes(_filename(name, version), zip_archive(members))


def many_entries_wheel(
    name: str, version: str, entries: int, claimed_entries: int | None = None
) -> Dist:
    """A wheel of `entries` empty files and, last, a real METADATA; `claimed_entries`: the
    count its end record gives."""
    metadata = core_metadata(name, version, (), None)
    empty = Member.of("x", b"", _STORED)
    members = [
        Member(f"{dist_name(name)}/m{i}.py", b"", 0, empty.crc, _STORED) for i in range(entries)
    ]
    members += _wheel_members(name, version, metadata)
    data = zip_archive(members, claimed_entries=claimed_entries)
    return Dist.from_bytes(_filename(name, version), data, metadata=metadata)


def peak_rss_reset() -> bool:
    """Reset this process's peak RSS (VmHWM), if the kernel lets us."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss() -> int:
    """This process's peak resident set size so far, in bytes (VmHWM)."""
    status = Path("/proc/self/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None
    return int(match[1]) * 1024
