"""The files of the index's page that a lock's entry names. Pure.

By filename, not URL: the lock may have been made against the upstream, against this proxy
or against another mirror, and each writes other URLs for the same file. Where the lock and
the page both give a hash of one kind they must agree; an entry pinned only by hashes
(requirements files, Pipfile.lock) names every file of the page that has one of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cachepi.simple.model import File
from cachepi.warm.lockfiles import LockedFile, LockedHashes


@dataclass(frozen=True)
class Unmatched:
    """Something the lock names that the page does not have: `file` is its filename, or
    the requirement and hash that matched nothing."""

    file: str
    reason: str


def named_file(by_filename: Mapping[str, File], wanted: LockedFile) -> File | Unmatched:
    file = by_filename.get(wanted.filename)
    if file is None:
        return Unmatched(wanted.filename, f"the index lists no such file of {wanted.project}")
    for algorithm, digest in wanted.hashes.items():
        listed = file.hashes.get(algorithm)
        if listed is not None and listed.lower() != digest:
            return Unmatched(
                wanted.filename,
                f"the index's file is not the lock's: {algorithm} {listed[:16]}…,"
                f" the lock says {digest[:16]}…",
            )
    return file


def pinned_files(files: Sequence[File], wanted: LockedHashes) -> tuple[list[File], list[Unmatched]]:
    """The page's files with one of `wanted`'s hashes, and the hashes no file has."""
    found, seen = [], set()
    for file in files:
        have = {(algorithm, digest.lower()) for algorithm, digest in file.hashes.items()}
        if matched := have & wanted.hashes:
            found.append(file)
            seen |= matched
    unmatched = [
        Unmatched(f"{wanted.requirement} {algorithm}:{digest[:16]}…", "no file on the index has it")
        for algorithm, digest in sorted(wanted.hashes - seen)
    ]
    return found, unmatched
