"""What a client may see and fetch of a project: its page as rendered (with METADATA
advertised for every wheel whose index offers none, and PEP 740 provenance at the proxy),
and the file a request names. Pure."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import msgspec

from cachepi.filecache import FileSpec
from cachepi.index import Listing
from cachepi.simple.model import Project
from cachepi.simple.render import file_href
from cachepi.upstream_pages import digest
from cachepi.wheelmeta import with_wheel_metadata

METADATA_SUFFIX = ".metadata"
# PEP 740's name for a file's provenance object, next to the file: how the proxy serves it.
PROVENANCE_SUFFIX = ".provenance"


class NotServed(Exception):
    """The request names nothing servable; the message is one line. `forbidden`: refused
    (by the policy or the index), not merely absent."""

    def __init__(self, message: str, forbidden: bool = False) -> None:
        super().__init__(message)
        self.forbidden = forbidden


@dataclass(frozen=True)
class MetadataOfWheel:
    """A request for the METADATA of `wheel`, whose index offers none: read from the wheel
    (filecache/wheel_metadata.py)."""

    wheel: FileSpec


def page(
    listing: Listing,
    extracted: Callable[[], tuple[int, Mapping[str, str]]],
    upload_times: Callable[[], tuple[int, Mapping[str, str]]],
    page_url: Callable[[], str],
) -> tuple[str, Callable[[], Project]]:
    """The project page's content version, and how to make the project it shows.
    `extracted()`: (generation, wheel sha256 -> METADATA sha256) from the file cache, asked
    only for pages that lack metadata. `upload_times()`: (generation, file URL -> upload
    time) recorded from upstreams (upload_times.py), asked only for pages that lack some.
    `page_url()`: the page's absolute URL at the proxy, asked only for pages that list
    provenance (PEP 740 wants a fully qualified URL, so those pages differ by the address
    the proxy was reached at)."""
    version = listing.version
    pairs: Mapping[str, str] | None = None
    times: Mapping[str, str] | None = None
    url: str | None = None
    if listing.lacks_metadata:
        generation, pairs = extracted()
        version += f"~{generation}"
    if listing.lacks_upload_times:
        generation, times = upload_times()
        version += f"^{generation}"
    if listing.offers_provenance:
        url = page_url()
        version += f"@{digest(url.encode())}"
    if pairs is None and times is None and url is None:
        return version, lambda: listing.project

    def shown() -> Project:
        project = listing.project
        if pairs is not None:
            project = with_wheel_metadata(project, pairs)
        if times:
            project = with_upload_times(project, times)
        return project if url is None else with_proxied_provenance(project, url)

    return version, shown


def with_upload_times(project: Project, times: Mapping[str, str]) -> Project:
    """`project` with the upload time recorded for each file whose index gave none
    (`times`: file URL -> upload time)."""
    files = [
        msgspec.structs.replace(file, upload_time=time)
        if file.upload_time is None and (time := times.get(file.url)) is not None
        else file
        for file in project.files
    ]
    return msgspec.structs.replace(project, files=files)


def with_proxied_provenance(project: Project, page_url: str) -> Project:
    """`project` with each PEP 740 provenance URL pointing at the proxy, next to its file
    (page_url + filename + PROVENANCE_SUFFIX), where `file_spec` finds it: a client that
    reaches only the proxy can fetch it too."""
    files = [
        file
        if file.provenance is None
        else msgspec.structs.replace(
            file, provenance=page_url + file_href(file.filename) + PROVENANCE_SUFFIX
        )
        for file in project.files
    ]
    return msgspec.structs.replace(project, files=files)


def file_spec(listing: Listing | None, name: str, filename: str) -> FileSpec | MetadataOfWheel:
    """What to fetch for `filename` (or for the file whose `.metadata` or `.provenance` it
    is), and how to check it. Raises NotServed."""
    provenance = filename.endswith(PROVENANCE_SUFFIX)
    base = filename.removesuffix(PROVENANCE_SUFFIX if provenance else METADATA_SUFFIX)
    if listing is not None and listing.quarantined:
        raise NotServed(f"{name} is quarantined by its index: no files are served", True)
    if listing is not None and (refusal := listing.refused.get(base)) is not None:
        raise NotServed(refusal, True)
    found = listing.find(base) if listing is not None else None
    if found is None:
        raise NotServed(f"{name} has no file {base!r}")
    file, upstream = found
    if provenance:
        if file.provenance is None:
            raise NotServed(f"the index offers no provenance for {base!r}")
        # Neither hash nor size is known: kept by its URL, like a file without a hash.
        return FileSpec(file.provenance, {}, None, upstream, None, name, filename)
    extract = base.endswith(".whl") and not file.core_metadata
    spec = FileSpec(
        file.url, file.hashes, file.size, upstream, base if extract else None, name, base
    )
    if base == filename:
        return spec
    if extract and spec.sha256 is not None:  # the index has none: read from the wheel
        return MetadataOfWheel(spec)
    if not file.core_metadata:  # nor is any advertised (wheel_metadata.py)
        raise NotServed(f"the index offers no metadata file for {base!r}")
    hashes = file.core_metadata if isinstance(file.core_metadata, dict) else {}
    return FileSpec(file.url + METADATA_SUFFIX, hashes, None, upstream, None, name, filename)
