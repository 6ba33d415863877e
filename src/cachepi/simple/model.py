"""One model of a Simple-API project page, whatever format the upstream spoke.

Parsers build these from upstream HTML or JSON; renderers turn them into HTML or JSON for
clients. The same structs are stored (msgpack) in the metadata store, so field names are part
of the on-disk format: add fields with defaults, never rename.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import msgspec

# PyPI sends a page's last serial in this header too (and only there, for HTML pages).
LAST_SERIAL_HEADER = "X-PyPI-Last-Serial"


class File(msgspec.Struct, frozen=True, omit_defaults=True):
    """One distribution file listed on a project page."""

    filename: str
    # Absolute URL of the file at the upstream (resolved against the page URL when parsed).
    url: str
    # hash name -> hex digest, as the upstream gave them (PEP 503 fragment or PEP 691 `hashes`).
    hashes: dict[str, str] = {}
    requires_python: str | None = None
    # PEP 658/714: False = no .metadata file; True = present, hash unknown; dict = its hashes.
    core_metadata: bool | dict[str, str] = False
    # PEP 592: False = not yanked; True = yanked without reason; str = the reason.
    yanked: bool | str = False
    # PEP 700 fields; None when the upstream did not say.
    size: int | None = None
    upload_time: str | None = None
    # PEP 740: absolute URL of the provenance object, passed through unchanged.
    provenance: str | None = None


class Project(msgspec.Struct, frozen=True, omit_defaults=True):
    """A project page: its files and what the upstream said about the project itself."""

    name: str
    files: list[File] = []
    # PEP 700 `versions` as the upstream gave them (None when it gave none: the renderer then
    # reads them from the filenames).
    versions: list[str] | None = None
    # `meta._last-serial` as given (PyPI sends a string of digits), else the HTML page's
    # `<!--SERIAL n-->` or the LAST_SERIAL_HEADER; None on a page several upstreams made.
    last_serial: int | str | None = None
    # PEP 792 project status ("active", "archived", "quarantined", "deprecated") and reason.
    status: str | None = None
    status_reason: str | None = None
    # PEP 708 (provisional), absolute URLs of project pages: those the index says this page
    # tracks (`meta.tracks`), and those the project's owner says it also lives at
    # (`alternate-locations`).
    tracks: list[str] = []
    alternate_locations: list[str] = []


class ProjectList(msgspec.Struct, frozen=True, omit_defaults=True):
    """The root page: every project name the upstream lists, as it spelled them, one per
    line of `lines` (a name holds no newline). One string, not a list: PyPI's 800,000 names
    take 11 MB so, and four times that as as many string objects."""

    lines: str = ""
    last_serial: int | str | None = None

    @classmethod
    def of(cls, names: Iterable[str], last_serial: int | str | None = None) -> ProjectList:
        return cls("\n".join(names), last_serial)

    def chunks(self, size: int = 256 * 1024) -> Iterator[str]:
        """The lines in pieces of about `size` characters, each whole lines: to go through
        a big list without a string object per name for all of it at once."""
        text, start = self.lines, 0
        while start < len(text):
            cut = text.find("\n", start + size)
            stop = len(text) if cut < 0 else cut
            yield text[start:stop]
            start = stop + 1

    def names(self) -> list[str]:
        return self.lines.split("\n") if self.lines else []
