"""Project names and distribution filenames: validate, normalize, and read versions from them.

Everything that later becomes part of a URL or a lookup key passes through here first, so the
checks are strict: ASCII only, one path segment, no tricks that survive percent-decoding.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

# PEP 508 name grammar, case-insensitive by listing both cases: IGNORECASE would match the same
# strings (under re.ASCII, so not "\u212a", KELVIN SIGN, which lowercases to "k") but makes
# the 700,000-name root list markedly slower to check. \Z (not $) refuses a trailing newline.
PROJECT_NAME_RE = re.compile(r"^([A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9._-]*[A-Za-z0-9])\Z", re.ASCII)
MAX_PROJECT_NAME_LENGTH = 200

# A distribution filename: one segment, no leading dot (hides "." and ".." and dotfiles),
# "!" for epochs and "+" for local versions.
_SAFE_FILENAME_RE = re.compile(r"[A-Za-z0-9_+!~-][A-Za-z0-9._+!~-]{0,254}\Z", re.ASCII)

_SDIST_SUFFIXES = (".tar.gz", ".zip")


def is_valid_project_name(name: str) -> bool:
    """True if `name` is a PEP 508 project name (any spelling) of sane length."""
    return (
        name.isascii()
        and len(name) <= MAX_PROJECT_NAME_LENGTH
        and PROJECT_NAME_RE.match(name) is not None
    )


def normalize(name: str) -> str:
    """PEP 503 normalized form of a project name: runs of "-_." become one "-", lowercased.

    Plain str methods instead of re.sub("[-_.]+", "-", name): faster, and the root page
    normalizes 700,000 names.
    """
    text = name.lower().replace("_", "-").replace(".", "-")
    while "--" in text:
        text = text.replace("--", "-")
    return text


def is_safe_filename(name: str) -> bool:
    """True if `name` can be used as one path segment naming a distribution file."""
    return name.isascii() and _SAFE_FILENAME_RE.match(name) is not None


def dist_filename_project(filename: str) -> str | None:
    """Normalized project name of a wheel or sdist filename; None if it is neither."""
    try:
        if filename.endswith(".whl"):
            name = parse_wheel_filename(filename)[0]
        else:
            name = parse_sdist_filename(filename)[0]
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        # Legacy sdists, eggs and installers land here too: packaging cannot vouch for them.
        return None
    return name if is_valid_project_name(name) else None


# Files packaging cannot parse that PyPI still lists: eggs, installers, old sdist formats.
_LEGACY_SUFFIXES = (
    ".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tbz", ".tar", ".zip", ".egg", ".exe", ".msi",
    ".rpm", ".dmg",
)  # fmt: skip


def belongs_to(filename: str, project: str) -> bool:
    """True if `filename` is a distribution of `project` (a normalized name): a wheel or
    sdist naming it, or a legacy file whose name starts with it and a version."""
    parsed = dist_filename_project(filename)
    if parsed is not None:
        return parsed == project
    if filename.endswith(".whl"):
        return False  # a wheel packaging cannot parse is no wheel
    lowered = filename.lower()
    for suffix in _LEGACY_SUFFIXES:
        if lowered.endswith(suffix):
            return normalize(filename[: -len(suffix)]).startswith(project + "-")
    return False


def versions_from_filenames(filenames: Iterable[str], known: Iterable[str] = ()) -> list[str]:
    """Sorted union of the `known` version strings and the versions in wheel/sdist filenames.

    A known string is kept as given; a filename's version is added (in its normalized form)
    only when no known string is the same version. Unparsable known strings come first.
    """
    known_list = list(dict.fromkeys(known))
    seen = {_parse_version(text) for text in known_list} - {None}
    found: dict[Version, None] = {}
    # Distinct strings first: a big page repeats each version across dozens of wheels.
    for text in dict.fromkeys(filter(None, map(_version_text, filenames))):
        version = _parse_version(text)
        if version is not None and version not in seen:
            found[version] = None
    parsed = [(v, text) for text in known_list if (v := _parse_version(text)) is not None]
    parsed += [(version, str(version)) for version in found]
    legacy = sorted(text for text in known_list if _parse_version(text) is None)
    return legacy + [text for _, text in sorted(parsed, key=lambda item: item[0])]


def _version_text(filename: str) -> str | None:
    """The version part of a wheel or sdist filename, unvalidated; cheap on purpose."""
    if filename.endswith(".whl"):
        parts = filename.split("-")
        return parts[1] if len(parts) in (5, 6) else None
    for suffix in _SDIST_SUFFIXES:
        if filename.endswith(suffix):
            return filename[: -len(suffix)].rpartition("-")[2] or None
    return None


@functools.lru_cache(maxsize=8192)
def _parse_version(text: str) -> Version | None:
    # Cached: Version() costs microseconds and the same strings recur on every render.
    try:
        return Version(text)
    except InvalidVersion:
        return None
