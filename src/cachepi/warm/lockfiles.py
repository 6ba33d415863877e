"""Which distribution files a lock file names. Pure.

Known by their filename, else by their content: uv.lock, pylock.toml (PEP 751, also
pylock.NAME.toml), poetry.lock (lock versions 1 and 2), pdm.lock, Pipfile.lock, and
requirements files. A requirements file with `--hash` options names files by hash (as
`uv pip compile --generate-hashes` and pip-tools write them); one without names projects,
which only a resolver (pip) can turn into files.

Only files from an index are named: git, path and direct-URL packages are listed as
skipped. Every error is a LockError, one line naming the file and, where it can be told,
the line.
"""

from __future__ import annotations

import enum
import json
import re
import string
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from packaging.requirements import InvalidRequirement, Requirement

from cachepi.simple.names import belongs_to, is_safe_filename, normalize


class Format(enum.StrEnum):
    UV = "uv.lock"
    PYLOCK = "pylock.toml"
    POETRY = "poetry.lock"
    PDM = "pdm.lock"
    PIPFILE = "Pipfile.lock"
    HASHED = "requirements with hashes"
    REQUIREMENTS = "requirements"  # without hashes: projects, not files


@dataclass(frozen=True)
class LockedFile:
    """A file the lock names: by filename, with the hashes it gives (algorithm -> hex)."""

    project: str  # normalized
    filename: str
    hashes: Mapping[str, str]
    size: int | None = None


@dataclass(frozen=True)
class LockedHashes:
    """A requirement pinned by hashes (requirements files, Pipfile.lock): every file of
    `project` that has one of `hashes` (each (algorithm, hex))."""

    project: str  # normalized
    requirement: str  # as written, for messages: "lib==1.1"
    hashes: frozenset[tuple[str, str]]


@dataclass(frozen=True)
class Lock:
    format: Format
    files: tuple[LockedFile, ...] = ()
    pinned: tuple[LockedHashes, ...] = ()
    skipped: tuple[str, ...] = ()  # packages not from an index: "name (git)"


class LockError(ValueError):
    """The file is not what it claims, or no lock cachepi knows; the message is one line."""

    def __init__(self, source: str, line: int | None, message: str) -> None:
        where = f"{source}, line {line}" if line else source
        super().__init__(f"{where}: {message}")


def decode(source: str, data: bytes) -> str:
    """A lock's bytes as text (UTF-8, a byte-order mark dropped)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise LockError(source, line, "not UTF-8 text") from None


def read_lock(source: str, text: str) -> Lock:
    """The files `text` names. `source` is the file's name: a known one (uv.lock, ...)
    says what the content must be; any other leaves it to the content."""
    named = format_of_name(source)
    if named is None:  # told by the content: JSON, TOML, or else requirements
        if text.lstrip().startswith("{"):
            named = Format.PIPFILE
        elif not any(map(_TOML_LINE.match, text.splitlines())):
            named = Format.REQUIREMENTS
    if named is Format.PIPFILE:
        return _pipfile(source, text, _json(source, text))
    if named is Format.REQUIREMENTS:
        return _requirements(source, text)
    doc = _toml(source, text)
    shaped = next((fmt for fmt, shape in _SHAPES.items() if shape(doc)), None)
    if named not in (None, shaped):
        found = f"it reads as a {shaped.value}" if shaped else "no lock cachepi knows"
        raise LockError(source, None, f"not a {named}: {found}")
    if shaped is None:
        raise LockError(
            source,
            None,
            "not a lock cachepi knows (uv.lock, pylock.toml, poetry.lock, pdm.lock,"
            " Pipfile.lock) nor a requirements file",
        )
    return _READERS[shaped](_Packages(source, text), doc)


def format_of_name(source: str) -> Format | None:
    name = source.rpartition("/")[2].lower()
    if name == "pipfile.lock":
        return Format.PIPFILE
    if re.fullmatch(r"pylock(\.[^.]+)?\.toml", name):
        return Format.PYLOCK
    for fmt in (Format.UV, Format.POETRY, Format.PDM):
        if name == fmt.value:
            return fmt
    if name.endswith((".txt", ".in")):
        return Format.REQUIREMENTS
    return None


# A line only TOML has: a table header, or `key = value` (a requirement's `==` is no `=`).
_TOML_LINE = re.compile(
    r"\s*(\[\[?[A-Za-z0-9_.\"' -]+\]\]?\s*$|[A-Za-z0-9_\"'][A-Za-z0-9_\"'.-]*\s*=\s*[^=\s])"
)


# -- TOML locks -----------------------------------------------------------------------------


_TOML_WHERE = re.compile(r"\s*\(at line (\d+), column \d+\)$|\s*\(at end of document\)$")


def _toml(source: str, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        match = _TOML_WHERE.search(message)
        line = int(match[1]) if match and match[1] else len(text.splitlines()) or None
        raise LockError(source, line, f"not valid TOML: {_TOML_WHERE.sub('', message)}") from None


class _Bad(Exception):
    """A value is not what the format says; the caller adds where."""


class _Packages:
    """Where in the file each package of a TOML lock is: the line of its `[[package]]`
    header (None when the lock writes its packages some other way)."""

    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self._headers: dict[str, list[int]] = {}
        for number, line in enumerate(text.splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith("[[") and stripped.endswith("]]"):
                self._headers.setdefault(stripped[2:-2].strip(), []).append(number)

    def each(
        self, doc: Mapping[str, Any], key: str, read: Callable[[str, dict[str, Any]], None]
    ) -> None:
        """`read(name, table)` of each package under `key`; a _Bad it raises becomes a
        LockError naming the package and its line."""
        packages = doc.get(key, [])
        if not isinstance(packages, list):
            raise LockError(self.source, None, f"`{key}` is not an array of tables")
        lines = self._headers.get(key, [])
        for position, package in enumerate(packages):
            line = lines[position] if len(lines) == len(packages) else None
            name = package.get("name") if isinstance(package, dict) else None
            label = f"package {name!r}" if isinstance(name, str) else f"package {position + 1}"
            try:
                if not isinstance(package, dict):
                    raise _Bad("is not a table")
                if not isinstance(name, str) or not name:
                    raise _Bad("has no name")
                read(name, package)
            except _Bad as bad:
                raise LockError(self.source, line, f"{label} {bad}") from None


def _table(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Bad(f"has a {what} that is not a table")
    return value


def _array(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise _Bad(f"has {what} that is not an array")
    return value


def _size(entry: Mapping[str, Any]) -> int | None:
    size = entry.get("size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _Bad(f"has a size that is no number of bytes: {size!r}")
    return size


def _filename(project: str, entry: Mapping[str, Any], *keys: str) -> str:
    """The file's name: the first of `keys` present, the last segment of a URL or path."""
    for key in keys:
        value = entry.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise _Bad(f"has a {key} that is not a string")
        name = unquote(urlsplit(value).path.rpartition("/")[2]) if key in ("url", "path") else value
        if not is_safe_filename(name) or not belongs_to(name, normalize(project)):
            raise _Bad(f"names {name!r}, which is no distribution file of {project}")
        return name
    raise _Bad(f"has a file without {' or '.join(keys)}")


_HEX = frozenset(string.hexdigits)


def _hash(algorithm: str, digest: Any) -> tuple[str, str]:
    if not isinstance(digest, str) or not digest or not set(digest) <= _HEX:
        raise _Bad(f"has a {algorithm} hash that is not hexadecimal: {digest!r}")
    if not re.fullmatch(r"[a-z0-9_]+", algorithm.lower()):
        raise _Bad(f"has a hash of an unknown kind: {algorithm!r}")
    return algorithm.lower(), digest.lower()


def _hash_text(value: Any) -> tuple[str, str]:
    """ "sha256:<hex>"."""
    if not isinstance(value, str) or ":" not in value:
        raise _Bad(f"has a hash that is not ALGORITHM:HEX: {value!r}")
    algorithm, _, digest = value.partition(":")
    return _hash(algorithm, digest)


def _uv(packages: _Packages, doc: dict[str, Any]) -> Lock:
    files: list[LockedFile] = []
    skipped: list[str] = []

    def read(name: str, package: dict[str, Any]) -> None:
        source = _table(package.get("source", {}), "source")
        if "registry" not in source:
            kind = next(iter(source), "no source")
            if kind not in ("virtual", "editable"):  # the project's own packages
                skipped.append(f"{name} ({kind})")
            return
        for entry in _sdist_and_wheels(package):
            hashes = dict([_hash_text(entry["hash"])]) if "hash" in entry else {}
            filename = _filename(name, entry, "filename", "url", "path")
            files.append(LockedFile(normalize(name), filename, hashes, _size(entry)))

    packages.each(doc, "package", read)
    return Lock(Format.UV, tuple(files), skipped=tuple(skipped))


def _sdist_and_wheels(package: dict[str, Any]) -> list[dict[str, Any]]:
    """uv.lock's and pylock.toml's files: `sdist` (a table) and `wheels` (an array)."""
    entries = [_table(package["sdist"], "sdist")] if "sdist" in package else []
    return entries + [_table(w, "wheel") for w in _array(package.get("wheels", []), "wheels")]


def _pylock(packages: _Packages, doc: dict[str, Any]) -> Lock:
    files: list[LockedFile] = []
    skipped: list[str] = []

    def read(name: str, package: dict[str, Any]) -> None:
        other = next((k for k in ("vcs", "directory", "archive") if k in package), None)
        if other is not None:
            skipped.append(f"{name} ({other})")
            return
        entries = _sdist_and_wheels(package)
        if not entries:
            raise _Bad("has no sdist, wheels, vcs, directory or archive")
        for entry in entries:
            given = _table(entry.get("hashes", {}), "hashes")
            hashes = dict(_hash(algorithm, digest) for algorithm, digest in given.items())
            filename = _filename(name, entry, "name", "url", "path")
            files.append(LockedFile(normalize(name), filename, hashes, _size(entry)))

    packages.each(doc, "packages", read)
    return Lock(Format.PYLOCK, tuple(files), skipped=tuple(skipped))


def _file_entries(name: str, entries: list[Any], *keys: str) -> list[LockedFile]:
    """poetry's and pdm's `files`: [{file (or url), hash}]."""
    locked = []
    for entry in entries:
        entry = _table(entry, "file")
        hashes = dict([_hash_text(entry["hash"])]) if "hash" in entry else {}
        locked.append(LockedFile(normalize(name), _filename(name, entry, *keys), hashes))
    return locked


def _poetry(packages: _Packages, doc: dict[str, Any]) -> Lock:
    # Lock version 1 kept every package's files in one table under [metadata].
    legacy = _metadata(doc).get("files", {})
    files: list[LockedFile] = []
    skipped: list[str] = []

    def read(name: str, package: dict[str, Any]) -> None:
        kind = _table(package.get("source", {}), "source").get("type", "legacy")
        if kind != "legacy":
            skipped.append(f"{name} ({kind})")
            return
        entries = package["files"] if "files" in package else legacy.get(name, [])
        files.extend(_file_entries(name, _array(entries, "files"), "file"))

    packages.each(doc, "package", read)
    return Lock(Format.POETRY, tuple(files), skipped=tuple(skipped))


def _pdm(packages: _Packages, doc: dict[str, Any]) -> Lock:
    files: list[LockedFile] = []
    skipped: list[str] = []

    def read(name: str, package: dict[str, Any]) -> None:
        other = next((k for k in ("git", "hg", "svn", "bzr", "path", "url") if k in package), None)
        if other is not None:
            skipped.append(f"{name} ({other})")
            return
        files.extend(_file_entries(name, _array(package.get("files", []), "files"), "file", "url"))

    packages.each(doc, "package", read)
    return Lock(Format.PDM, tuple(files), skipped=tuple(skipped))


_READERS = {Format.UV: _uv, Format.PYLOCK: _pylock, Format.POETRY: _poetry, Format.PDM: _pdm}


def _metadata(doc: dict[str, Any]) -> dict[str, Any]:
    metadata = doc.get("metadata")
    return metadata if isinstance(metadata, dict) else {}


# What each TOML lock has at its top, in the order they are told apart.
_SHAPES: dict[Format, Callable[[dict[str, Any]], bool]] = {
    Format.PYLOCK: lambda doc: "lock-version" in doc,
    Format.PDM: lambda doc: "lock_version" in _metadata(doc),
    Format.POETRY: lambda doc: bool({"content-hash", "lock-version"} & set(_metadata(doc))),
    Format.UV: lambda doc: isinstance(doc.get("version"), int) and "package" in doc,
}


# -- Pipfile.lock ----------------------------------------------------------------------------


def _json(source: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise LockError(source, error.lineno, f"not valid JSON: {error.msg}") from None


def _pipfile(source: str, text: str, doc: Any) -> Lock:
    if not isinstance(doc, dict) or "_meta" not in doc:
        raise LockError(source, None, "not a Pipfile.lock: no `_meta`")
    pinned, skipped = [], []
    for section, entries in doc.items():
        if section == "_meta" or not isinstance(entries, dict):
            continue
        for name, entry in entries.items():
            try:
                if not isinstance(entry, dict):
                    raise _Bad("is not an object")
                other = next((k for k in ("git", "editable", "path", "file") if k in entry), None)
                if other is not None:
                    skipped.append(f"{name} ({other})")
                    continue
                hashes = frozenset(_hash_text(h) for h in _array(entry.get("hashes"), "hashes"))
                if not hashes:
                    raise _Bad("has no hashes")
                version = entry.get("version", "")
                requirement = f"{name}{version if isinstance(version, str) else ''}"
                pinned.append(LockedHashes(normalize(name), requirement, hashes))
            except _Bad as bad:
                line = _line_of(text, json.dumps(name) + ":")
                raise LockError(source, line, f"{section} package {name!r} {bad}") from None
    return Lock(Format.PIPFILE, pinned=tuple(pinned), skipped=tuple(skipped))


def _line_of(text: str, needle: str) -> int | None:
    """The first line `needle` is on (JSON keeps no positions once parsed)."""
    at = text.find(needle)
    return text.count("\n", 0, at) + 1 if at >= 0 else None


# -- requirements files ----------------------------------------------------------------------

_HASH_OPTION = re.compile(r"(?:^|\s)--hash(?:=|\s+)(\S+)")
_COMMENT = re.compile(r"(^|\s+)#.*$")
_INCLUDES = ("-r", "--requirement", "-c", "--constraint")
_EDITABLE = ("-e", "--editable")


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, line) with comments cut and backslash continuations joined."""
    start, parts = 0, list[str]()
    for number, line in enumerate(text.splitlines(), 1):
        line = _COMMENT.sub("", line)
        if not parts:
            start = number
        if line.endswith("\\"):
            parts.append(line[:-1])
            continue
        parts.append(line)
        joined = " ".join(parts).strip()
        parts = []
        if joined:
            yield start, joined
    if parts and (joined := " ".join(parts).strip()):
        yield start, joined


def _requirements(source: str, text: str) -> Lock:
    lines = list(_logical_lines(text))
    if not any(_HASH_OPTION.search(line) for _, line in lines):
        return Lock(Format.REQUIREMENTS)
    pinned, skipped = [], []
    for number, line in lines:
        if line.startswith("-"):
            option = re.split(r"[\s=]", line, maxsplit=1)[0]
            # `-rother.txt` is an include too.
            if option in _INCLUDES or option[:2] in ("-r", "-c"):
                raise LockError(
                    source, number, f"{option} is not followed here: warm that file as well"
                )
            if option in _EDITABLE:
                skipped.append(f"{line.split(maxsplit=1)[-1]} (editable)")
            continue  # index and install options: the proxy is the index
        written = re.split(r"\s+(?=--)", line, maxsplit=1)[0]
        try:
            requirement = Requirement(written)
        except InvalidRequirement as error:
            first = str(error).splitlines()[0]  # packaging's own is several
            raise LockError(source, number, f"not a requirement: {first}") from None
        if requirement.url:
            skipped.append(f"{requirement.name} (direct URL)")
            continue
        try:
            hashes = frozenset(_hash_text(h) for h in _HASH_OPTION.findall(line))
        except _Bad as bad:
            raise LockError(source, number, f"{requirement.name} {bad}") from None
        if not hashes:
            raise LockError(
                source, number, f"{written} has no --hash, and the other requirements have"
            )
        pinned.append(LockedHashes(normalize(requirement.name), written, hashes))
    return Lock(Format.HASHED, pinned=tuple(pinned), skipped=tuple(skipped))
