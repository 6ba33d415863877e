"""What a client may see and fetch of a project: its page as rendered (with the METADATA
extracted from cached wheels advertised), and the file a request names. Pure."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping

from cachepi.filecache import FileSpec
from cachepi.index import Listing
from cachepi.simple.model import Project
from cachepi.wheelmeta import extracted_for, with_extracted_metadata

METADATA_SUFFIX = ".metadata"


class NotServed(Exception):
    """The request names nothing servable; the message is one line. `forbidden`: refused
    (by the policy or the index), not merely absent."""

    def __init__(self, message: str, forbidden: bool = False) -> None:
        super().__init__(message)
        self.forbidden = forbidden


def page(listing: Listing, extracted: Mapping[str, str]) -> tuple[str, Callable[[], Project]]:
    """The project page's content version, and how to make the project it shows: with the
    METADATA extracted from cached wheels advertised (`extracted`: wheel sha256 ->
    METADATA sha256, from the file cache) where the index offers none. The version changes
    with the pairs of this page's own wheels only."""
    own = extracted_for(listing.project, extracted) if listing.lacks_metadata else {}
    if not own:
        return listing.version, lambda: listing.project
    pairs = "/".join(f"{wheel}:{metadata}" for wheel, metadata in sorted(own.items()))
    version = f"{listing.version}~{hashlib.blake2b(pairs.encode(), digest_size=8).hexdigest()}"
    return version, lambda: with_extracted_metadata(listing.project, own)


def file_spec(
    listing: Listing | None, name: str, filename: str, extracted: Mapping[str, str]
) -> FileSpec:
    """What to fetch for `filename` (or for the wheel whose `.metadata` it is), and how
    to check it. Raises NotServed."""
    base = filename.removesuffix(METADATA_SUFFIX)
    if listing is not None and listing.quarantined:
        raise NotServed(f"{name} is quarantined by its index: no files are served", True)
    if listing is not None and (refusal := listing.refused.get(base)) is not None:
        raise NotServed(refusal, True)
    found = listing.find(base) if listing is not None else None
    if found is None:
        raise NotServed(f"{name} has no file {base!r}")
    file, upstream = found
    extract = base.endswith(".whl") and not file.core_metadata
    if base == filename:
        return FileSpec(
            file.url, file.hashes, file.size, upstream, base if extract else None, name, base
        )
    if extract:  # the index has none, but we may have extracted it from the cached wheel
        metadata_sha256 = extracted.get(file.hashes.get("sha256", ""))
        if metadata_sha256 is None:
            raise NotServed(f"no metadata file is known for {base!r}")
        hashes = {"sha256": metadata_sha256}
    elif not file.core_metadata:
        raise NotServed(f"the index offers no metadata file for {base!r}")
    else:
        hashes = file.core_metadata if isinstance(file.core_metadata, dict) else {}
    return FileSpec(file.url + METADATA_SUFFIX, hashes, None, upstream, None, name, filename)
