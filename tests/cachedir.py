"""Looking into a cache directory from outside, as an operator would: blobs, leftovers,
records, and `cachepi verify`."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.clients import isolated_env


def blobs_on_disk(cache_dir: Path) -> dict[str, int]:
    """Every file under blobs/, by name, with its size."""
    root = cache_dir / "blobs"
    return {p.name: p.stat().st_size for p in root.rglob("*") if p.is_file()}


def misnamed_blobs(cache_dir: Path) -> list[str]:
    """Blobs whose bytes do not hash to their name, or that sit in the wrong directory."""
    bad = []
    for path in (cache_dir / "blobs").rglob("*"):
        if not path.is_file():
            continue
        with path.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if digest != path.name or path.parent.name != path.name[:2]:
            bad.append(str(path.relative_to(cache_dir)))
    return bad


def leftovers(cache_dir: Path) -> list[str]:
    """What unfinished work left behind: anything in tmp/, and stray part or temp files
    anywhere in the cache."""
    found = [p.name for p in (cache_dir / "tmp").iterdir()] if (cache_dir / "tmp").exists() else []
    for pattern in ("*.part", "dl-*", "*.tmp"):
        found += [str(p.relative_to(cache_dir)) for p in (cache_dir / "blobs").rglob(pattern)]
    return found


def recorded_blobs(cache_dir: Path) -> dict[str, int]:
    """The blobs the metadata store believes it has, with their sizes."""
    with sqlite3.connect(f"file:{cache_dir / 'cachepi.sqlite3'}?mode=ro", uri=True) as db:
        return dict(db.execute("SELECT sha256, size FROM blobs"))


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def run_verify(cache_dir: Path, home: Path) -> subprocess.CompletedProcess[str]:
    """`python -m cachepi verify --cache-dir D`, as an operator runs it (not on a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "cachepi", "verify", "--cache-dir", str(cache_dir)],
        env=isolated_env(home),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
