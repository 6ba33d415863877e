"""Real, deterministic distribution files: wheels pip and uv can install, listable sdists.

Every build is byte-identical for the same arguments (fixed timestamps, seeded padding), so a
file's sha256 is stable across servers, restarts and test runs. Small files live in memory;
"big" wheels are written once per process to a temporary directory and served from an mmap.
"""

from __future__ import annotations

import atexit
import base64
import csv
import gzip
import hashlib
import io
import mmap
import random
import re
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import IO

# Zip's earliest representable date: a fixed timestamp keeps rebuilt archives byte-identical.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_MIB = 1024 * 1024
_WHEEL_FILE = (
    b"Wheel-Version: 1.0\n"
    b"Generator: cachepi-fakeupstream\n"
    b"Root-Is-Purelib: true\n"
    b"Tag: py3-none-any\n"
)


def normalize(name: str) -> str:
    """PEP 503 normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def dist_name(name: str) -> str:
    """The name as it appears in filenames and as the importable module (PEP 427/625)."""
    return normalize(name).replace("-", "_")


@dataclass(frozen=True, eq=False)
class Dist:
    """One distribution file, ready to be listed and served."""

    filename: str
    project: str  # normalized
    version: str
    sha256: str
    size: int
    data: bytes | None = None  # small files: the bytes themselves
    path: Path | None = None  # big files: where they live on disk
    metadata: bytes | None = None  # wheels: the exact METADATA bytes (PEP 658 `.metadata`)
    requires_python: str | None = None

    @property
    def is_wheel(self) -> bool:
        return self.filename.endswith(".whl")

    @property
    def metadata_sha256(self) -> str | None:
        return None if self.metadata is None else hashlib.sha256(self.metadata).hexdigest()

    @cached_property
    def view(self) -> memoryview:
        """The content without copying it: the bytes, or a read-only mmap of the file."""
        if self.data is not None:
            return memoryview(self.data)
        assert self.path is not None
        with self.path.open("rb") as f:
            return memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))

    def read_bytes(self) -> bytes:
        return bytes(self.view)

    @classmethod
    def from_bytes(
        cls,
        filename: str,
        data: bytes,
        *,
        metadata: bytes | None = None,
        requires_python: str | None = None,
    ) -> Dist:
        """Any file under any name, e.g. a same-named wheel with other content (a conflict)."""
        if filename.endswith(".whl"):
            name, version = filename.split("-")[:2]
        else:
            name, _, version = re.sub(r"\.(tar\.gz|zip)$", "", filename).rpartition("-")
        return cls(
            filename=filename,
            project=normalize(name),
            version=version,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            data=data,
            metadata=metadata,
            requires_python=requires_python,
        )


def build_wheel(
    name: str,
    version: str,
    *,
    requires: Sequence[str] = (),
    requires_python: str | None = None,
    big_mb: float | None = None,
    modules: int = 0,
) -> Dist:
    """A py3-none-any wheel with METADATA, WHEEL, RECORD and an importable module.

    `big_mb` pads it with that many MiB of seeded random (incompressible) data, on disk.
    `modules` adds that many small modules: a central directory (and RECORD) as big as
    those of wheels with thousands of files (scipy's, jaxlib's).
    """
    pad = int((big_mb or 0) * _MIB)
    return _wheel(name, version, tuple(requires), requires_python, pad, modules)


def build_sdist(
    name: str,
    version: str,
    *,
    requires: Sequence[str] = (),
    requires_python: str | None = None,
) -> Dist:
    """A `.tar.gz` with PKG-INFO and the module; listable and downloadable, not buildable."""
    return _sdist(name, version, tuple(requires), requires_python)


def core_metadata(
    name: str, version: str, requires: Sequence[str], requires_python: str | None
) -> bytes:
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {name}",
        f"Version: {version}",
        f"Summary: Fake project {name} served by the cachepi test upstream",
    ]
    if requires_python:
        lines.append(f"Requires-Python: {requires_python}")
    lines += [f"Requires-Dist: {req}" for req in requires]
    return ("\n".join(lines) + "\n").encode()


def _module_source(version: str) -> bytes:
    return f'__version__ = "{version}"\n'.encode()


@cache
def _wheel(
    name: str,
    version: str,
    requires: tuple[str, ...],
    requires_python: str | None,
    pad: int,
    modules: int,
) -> Dist:
    filename = f"{dist_name(name)}-{version}-py3-none-any.whl"
    metadata = core_metadata(name, version, requires, requires_python)
    if pad:
        # Keyed by everything that shapes the content: sizes and metadata (name, version, deps).
        key = hashlib.sha256(metadata).hexdigest()[:16]
        path = _big_dir() / f"{pad}-{modules}-{key}" / filename
        path.parent.mkdir(exist_ok=True)
        with path.open("wb") as out:
            _write_wheel(out, name, version, metadata, pad, modules)
        data, digest, size = None, _sha256_file(path), path.stat().st_size
    else:
        buf = io.BytesIO()
        _write_wheel(buf, name, version, metadata, 0, modules)
        data, path = buf.getvalue(), None
        digest, size = hashlib.sha256(data).hexdigest(), len(data)
    return Dist(
        filename=filename,
        project=normalize(name),
        version=version,
        sha256=digest,
        size=size,
        data=data,
        path=path,
        metadata=metadata,
        requires_python=requires_python,
    )


def _write_wheel(
    out: IO[bytes], name: str, version: str, metadata: bytes, pad: int, modules: int
) -> None:
    module = dist_name(name)
    info = f"{module}-{version}.dist-info"
    record: list[tuple[str, str, str]] = []
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:

        def add(arcname: str, data: bytes) -> None:
            zf.writestr(_zip_info(arcname, zipfile.ZIP_DEFLATED), data)
            record.append((arcname, _record_hash(hashlib.sha256(data).digest()), str(len(data))))

        add(f"{module}/__init__.py", _module_source(version))
        for number in range(modules):
            add(f"{module}/_generated/module_{number:05d}.py", f"N = {number}\n".encode())
        if pad:
            record.append(_write_padding(zf, f"{module}/_padding.bin", pad, f"{info}:{pad}"))
        add(f"{info}/METADATA", metadata)
        add(f"{info}/WHEEL", _WHEEL_FILE)
        # The dist-info directory goes last, RECORD last of all (PEP 427 recommends it).
        record.append((f"{info}/RECORD", "", ""))
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(record)
        zf.writestr(_zip_info(f"{info}/RECORD", zipfile.ZIP_DEFLATED), text.getvalue())


def _write_padding(zf: zipfile.ZipFile, arcname: str, size: int, seed: str) -> tuple[str, str, str]:
    """Stream `size` seeded random bytes into the zip (stored: random data won't deflate)."""
    rng = random.Random(seed)
    digest = hashlib.sha256()
    info = _zip_info(arcname, zipfile.ZIP_STORED)
    info.file_size = size  # lets zipfile pick zip64 itself, should the padding need it
    with zf.open(info, "w") as entry:
        for start in range(0, size, 8 * _MIB):
            block = rng.randbytes(min(8 * _MIB, size - start))
            digest.update(block)
            entry.write(block)
    return arcname, _record_hash(digest.digest()), str(size)


@cache
def _sdist(name: str, version: str, requires: tuple[str, ...], requires_python: str | None) -> Dist:
    root = f"{dist_name(name)}-{version}"
    members = {
        f"{root}/PKG-INFO": core_metadata(name, version, requires, requires_python),
        f"{root}/{dist_name(name)}/__init__.py": _module_source(version),
    }
    buf = io.BytesIO()
    # mtime=0 and an empty inner filename keep the gzip header, and so the hash, stable.
    with (
        gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for arcname, data in members.items():
            member = tarfile.TarInfo(arcname)
            member.size, member.mode = len(data), 0o644
            tar.addfile(member, io.BytesIO(data))
    return Dist.from_bytes(f"{root}.tar.gz", buf.getvalue(), requires_python=requires_python)


def _zip_info(arcname: str, compression: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(arcname, date_time=_ZIP_EPOCH)
    info.compress_type = compression
    info.external_attr = 0o100644 << 16  # a regular file, rw-r--r--
    return info


def _record_hash(digest: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@cache
def _big_dir() -> Path:
    """One directory per process for big wheels, removed when the process exits."""
    path = Path(tempfile.mkdtemp(prefix="cachepi-fakeupstream-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
