"""What a client may see and fetch of a project: its page as rendered (with METADATA
advertised for every wheel whose index offers none, and PEP 740 provenance at the proxy),
and the file a request names. Pure."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import msgspec

from cachepi.filecache import FileSpec
from cachepi.index import Listing
from cachepi.simple.model import Project
from cachepi.simple.render import file_href
from cachepi.upstream_pages import digest
from cachepi.wheelmeta import extracted_for, with_wheel_metadata

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
    extracted: Mapping[str, str],
    upload_times: Mapping[str, str],
    page_url: str | None,
) -> tuple[str, Callable[[], Project]]:
    """The project page's content version, and how to make the project it shows.
    `extracted`: wheel sha256 -> METADATA sha256 from the file cache, for pages that lack
    metadata. `upload_times`: file URL -> upload time recorded from upstreams
    (upload_times.py), for pages that lack some. `page_url`: the page's absolute URL at the
    proxy, for pages that list provenance (PEP 740 wants a fully qualified URL, so those
    pages differ by the address the proxy was reached at); None leaves the provenance and
    the version's part for it out (`addressed` adds it).

    The version changes with this page's own wheels' METADATA and files' times only: an
    extraction or a download elsewhere leaves its rendered files alone."""
    traits = listing.traits
    project = listing.project
    version = listing.version
    pairs: Mapping[str, str] | None = None
    times: Mapping[str, str] = {}
    if traits.lacks_metadata:
        pairs = extracted_for(project, extracted)
        if pairs:
            version += f"~{_digest_of(pairs)}"
    if traits.lacks_upload_times:
        times = {
            file.url: time
            for file in project.files
            if file.upload_time is None and (time := upload_times.get(file.url)) is not None
        }
        if times:
            version += f"^{_digest_of(times)}"
    url = page_url if traits.offers_provenance else None
    if url is not None:
        version = addressed(version, url)
    if pairs is None and not times and url is None:
        return version, lambda: project

    def shown() -> Project:
        made = project
        if pairs is not None:
            made = with_wheel_metadata(made, pairs)
        if times:
            made = with_upload_times(made, times)
        return made if url is None else with_proxied_provenance(made, url)

    return version, shown


def addressed(version: str, page_url: str) -> str:
    """The version of a page that lists provenance, as shown at `page_url`."""
    return f"{version}@{digest(page_url.encode())}"


def _digest_of(pairs: Mapping[str, str]) -> str:
    joined = "\n".join(f"{key} {value}" for key, value in sorted(pairs.items()))
    return hashlib.blake2b(joined.encode(), digest_size=8).hexdigest()


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
