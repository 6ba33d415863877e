"""PEP 658 for indexes that lack it: a cached wheel's own METADATA, extracted and advertised.

Resolvers fetch `{wheel}.metadata` instead of the whole wheel when the index advertises it.
Once a wheel is in our cache we can offer that for any index, byte-identical to the
`*.dist-info/METADATA` inside the wheel.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import msgspec

from cachepi.simple.model import File, Project

# A METADATA file is a few KiB; refuse absurd ones rather than hold them in memory.
_MAX_METADATA_BYTES = 16 * 1024**2


def read_wheel_metadata(wheel: Path | BinaryIO, filename: str) -> bytes | None:
    """The bytes of the wheel's `{name}-{version}.dist-info/METADATA`, or None if the file is
    not a readable wheel with exactly one such member."""
    expected_prefix = "-".join(filename.split("-", 2)[:2]).lower() + ".dist-info/"
    try:
        with zipfile.ZipFile(wheel) as archive:
            members = [
                info
                for info in archive.infolist()
                if info.filename.count("/") == 1 and info.filename.endswith(".dist-info/METADATA")
            ]
            # Prefer the dist-info named after the wheel; accept a lone one spelled otherwise.
            named = [m for m in members if m.filename.lower().startswith(expected_prefix)]
            chosen = named or members
            if len(chosen) != 1 or chosen[0].file_size > _MAX_METADATA_BYTES:
                return None
            return archive.read(chosen[0])
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError):
        return None


def _wheel_without_metadata(file: File) -> bool:
    return not file.core_metadata and file.filename.endswith(".whl")


def lacks_metadata(project: Project) -> bool:
    """True if some wheel on the page has no PEP 658 metadata from its index."""
    return any(map(_wheel_without_metadata, project.files))


def with_extracted_metadata(project: Project, extracted: Mapping[str, str]) -> Project:
    """`project` with `core-metadata` advertised for every wheel whose index offers none but
    whose METADATA we extracted (`extracted`: wheel sha256 -> METADATA sha256)."""
    files = [
        msgspec.structs.replace(file, core_metadata={"sha256": extracted[sha256]})
        if _wheel_without_metadata(file) and (sha256 := file.hashes.get("sha256", "")) in extracted
        else file
        for file in project.files
    ]
    return msgspec.structs.replace(project, files=files)
