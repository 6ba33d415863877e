"""What a warm job did and is doing: the one record that `cachepi warm`'s progress display,
`GET /warm/{id}` and the dashboard show. Pure; kept in the metadata store as JSON, so any
worker (or node) can answer for a job another one runs.
"""

from __future__ import annotations

import builtins
from typing import Literal

import msgspec

# Failures (and skipped packages) listed; beyond, only counted: a report stays small.
LISTED = 50
_REASON_CHARS = 300
# A running job's report is saved every second; one not saved for this long was left by a
# process that stopped (a killed worker), and is shown as "lost".
LOST_AFTER = 30.0

Status = Literal["running", "done", "failed", "lost"]


class Failure(msgspec.Struct, frozen=True):
    file: str
    reason: str


class Report(msgspec.Struct, kw_only=True):
    id: str
    source: str  # the lock's name
    format: str
    narrowing: str  # the targets it was narrowed to ("every target")
    node: str  # the process that runs it
    created: float
    updated: float  # when it was last saved
    status: Status = "running"
    finished: float | None = None
    projects: int = 0  # pages to read
    pages_read: int = 0
    files: int = 0  # files to have, counted once the pages are read
    bytes: int = 0  # their sizes, as far as the index or the lock gives them
    done_bytes: int = 0
    cached: int = 0  # downloaded and stored now
    already: int = 0  # stored before
    failed: int = 0
    failures: list[Failure] = []  # the first LISTED of them
    skipped: list[str] = []  # packages not from an index: "name (git)"
    error: str | None = None  # why the job as a whole failed

    @property
    def done_files(self) -> int:
        return self.cached + self.already + self.failed

    @property
    def ok(self) -> bool:
        """Ended, with every file in the cache."""
        return self.status == "done" and not self.failed

    def fail(self, file: str, reason: str) -> None:
        self.failed += 1
        if len(self.failures) < LISTED:
            self.failures.append(Failure(file, reason[:_REASON_CHARS]))

    def skip(self, packages: tuple[str, ...]) -> None:
        self.skipped = list(packages[:LISTED])

    def end(self, now: float, error: str | None = None) -> None:
        self.status = "done" if error is None else "failed"
        self.error = error
        self.finished = self.updated = now

    def seen(self, now: float) -> Report:
        """The report as of `now`: a running one its process stopped saving is lost."""
        if self.status == "running" and now - self.updated > LOST_AFTER:
            error = f"{self.node} stopped running it (no word for {now - self.updated:.0f} s)"
            return msgspec.structs.replace(self, status="lost", error=error)
        return self

    def encode(self) -> builtins.bytes:  # `bytes` is a field here
        return _encode(self)


_encode = msgspec.json.Encoder().encode
_decoder = msgspec.json.Decoder(Report)


def decode(data: bytes) -> Report:
    """Raises msgspec.DecodeError (a ValueError) for what is no report."""
    return _decoder.decode(data)
