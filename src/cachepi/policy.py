"""Supply-chain policy: which projects, versions and files clients may see.

Pure: rules are parsed from configuration text and applied to a project's files at a given
time. Three kinds of rule, in allow and deny lists:

- a project (or a glob of projects): `evil`, `acme-*`
- a project and a version specifier (`packaging`, pre-releases included): `urllib3>=3`
- a file name: `requests-2.32.0-py3-none-any.whl`

A version rule fails closed: it judges every version an installer could read in a file's
name (`packaging`'s reading, and for sdists and legacy archives such as `.tar.bz2`, what
follows the project's name, as pip and uv read them), and a file whose version cannot be
read at all is refused by a deny rule naming its project, and not allowed by allow rules
that name versions.

and a release cooldown: files uploaded less than `min_release_age` seconds ago are held back,
so a compromised release has time to be noticed and removed before anybody installs it.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from cachepi.simple.model import File

# Archives installers take as sdists (pip's list, and uv's): the version is what follows the
# project's name, up to the suffix.
_SDIST_SUFFIXES = (
    ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tbz2", ".tar.xz", ".txz", ".tar.lz", ".tlz",
    ".tar.lzma", ".tar.zst", ".tar", ".zip",
)  # fmt: skip
_DIST_SUFFIXES = (".whl", *_SDIST_SUFFIXES, ".egg", ".exe", ".msi", ".rpm", ".dmg")
_RULE_RE = re.compile(r"^\s*([A-Za-z0-9._*?\-]+)\s*(.*?)\s*$")


def name_glob(pattern: str) -> re.Pattern[str]:
    """A project-name glob (`acme-*`), normalized like names are, as a compiled regex."""
    normalized = re.sub(r"[-_.]+", "-", pattern.strip()).lower()
    if not normalized or not re.fullmatch(r"[a-z0-9*?\-]+", normalized):
        raise ValueError(f"{pattern!r} is not a project name or glob")
    return re.compile(fnmatch.translate(normalized))


@dataclass(frozen=True)
class Rule:
    """One allow or deny entry, as written (`text`) and as understood."""

    text: str
    project: re.Pattern[str] | None = None  # None for a filename rule
    specifier: SpecifierSet | None = None
    filename: str | None = None

    def names(self, name: str) -> bool:
        return self.project is not None and self.project.fullmatch(name) is not None

    @property
    def whole_project(self) -> bool:
        return self.project is not None and self.specifier is None


def parse_rule(text: str) -> Rule:
    """`evil`, `acme-*`, `urllib3>=3,<4`, or a distribution file name."""
    stripped = text.strip()
    if stripped.lower().endswith(_DIST_SUFFIXES):
        if "/" in stripped or "\\" in stripped or stripped.startswith("."):
            raise ValueError(f"{text!r} is not a file name")
        return Rule(stripped, filename=stripped)
    match = _RULE_RE.match(stripped)
    if not match:
        raise ValueError(f"{text!r} is not a project, `project<specifier>` or file name")
    project = name_glob(match[1])
    if not match[2]:
        return Rule(stripped, project)
    try:
        specifier = SpecifierSet(match[2], prereleases=True)
    except InvalidSpecifier:
        raise ValueError(f"{text!r}: {match[2]!r} is not a version specifier") from None
    return Rule(stripped, project, specifier)


def file_versions(filename: str, project: str | None = None) -> frozenset[Version]:
    """Every version an installer may read in the name of `filename`, a file of `project`
    (normalized; None: unknown): for a wheel, its version; for anything else, `packaging`'s
    reading of an sdist name and the legacy one (the archive suffix removed, what follows
    the project's name, or without one the last `-`). Empty when none can be read."""
    if filename.endswith(".whl"):
        try:
            return frozenset((parse_wheel_filename(filename)[1],))
        except (InvalidWheelFilename, InvalidVersion):
            return frozenset()
    readings: set[Version] = set()
    with contextlib.suppress(InvalidSdistFilename, InvalidVersion):
        readings.add(parse_sdist_filename(filename)[1])
    lowered = filename.lower()
    suffix = next((s for s in _DIST_SUFFIXES if lowered.endswith(s)), None)
    if suffix is None:
        return frozenset(readings)
    stem = filename[: -len(suffix)]
    if project is None:
        texts = [stem.rpartition("-")[2]] if "-" in stem else []
    else:  # where the project's name ends, as pip finds it: any spelling of it, then `-`
        texts = [
            stem[i + 1 :]
            for i, c in enumerate(stem)
            if c == "-" and _normalize(stem[:i]) == project
        ]
    for text in texts:
        if suffix == ".egg":  # name-version-pyX.Y[-platform].egg
            text = text.split("-", 1)[0]
        with contextlib.suppress(InvalidVersion):
            readings.add(Version(text))
    return frozenset(readings)


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class Screened:
    """A project's files after the policy: the positions kept, why the others were refused
    (by filename), and until when this holds (a cooldown ends; `math.inf`: no end)."""

    kept: list[int]
    refused: dict[str, str]
    valid_until: float


@dataclass(frozen=True)
class Policy:
    deny: tuple[Rule, ...] = ()
    # None: everything not denied is allowed. Otherwise only what some rule names.
    allow: tuple[Rule, ...] | None = None
    min_release_age: int = 0  # seconds; 0: no cooldown
    cooldown_exempt: tuple[re.Pattern[str], ...] = ()
    # Files whose index gives no upload time: shown (True) or held back by a cooldown.
    show_unknown_upload_time: bool = True
    _file_rules: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = {rule.filename for rule in self.deny if rule.filename}
        object.__setattr__(self, "_file_rules", frozenset(names))

    @property
    def active(self) -> bool:
        """Whether the policy can refuse anything at all (a cooldown may be per index)."""
        return bool(self.deny) or self.allow is not None

    def project_refusal(self, name: str) -> str | None:
        """Why the (normalized) project `name` is refused as a whole, or None."""
        for rule in self.deny:
            if rule.whole_project and rule.names(name):
                return f"{name} is denied by the policy rule {rule.text!r}"
        if self.allow is not None and not any(rule.names(name) for rule in self.allow):
            return f"{name} is not on the allow list"
        return None

    def screen(
        self, name: str, files: Sequence[File], cooldowns: Sequence[int], now: float
    ) -> Screened:
        """Which of a project's `files` clients may have; `cooldowns[i]` is the release
        cooldown (seconds) that applies to `files[i]` (its index's, or the global one)."""
        deny = [rule for rule in self.deny if rule.specifier and rule.names(name)]
        allow = None if self.allow is None else [rule for rule in self.allow if rule.names(name)]
        if allow is not None and any(rule.specifier is None for rule in allow):
            allow = None  # one rule allows every version
        exempt = any(pattern.fullmatch(name) for pattern in self.cooldown_exempt)
        kept: list[int] = []
        refused: dict[str, str] = {}
        valid_until = math.inf
        for position, file in enumerate(files):
            reason, until = self._refusal(
                name, file, deny, allow, 0 if exempt else cooldowns[position], now
            )
            if reason is None:
                kept.append(position)
            else:
                refused[file.filename] = reason
            valid_until = min(valid_until, until)
        return Screened(kept, refused, valid_until)

    def _refusal(
        self,
        name: str,
        file: File,
        deny: list[Rule],
        allow: list[Rule] | None,
        cooldown: int,
        now: float,
    ) -> tuple[str | None, float]:
        """Why `file` is refused (None: it is not), and until when that answer holds."""
        if file.filename in self._file_rules:
            return f"{file.filename} is denied by the policy", math.inf
        if deny or allow is not None:
            # Every reading an installer could make: a rule judges them all (fail closed).
            versions = file_versions(file.filename, name)
            for rule in deny:
                if rule.specifier is None:  # not in `deny`: whole-project rules act earlier
                    continue
                if not versions:
                    return (
                        f"{file.filename}: its version cannot be read, and the policy rule "
                        f"{rule.text!r} names {name}",
                        math.inf,
                    )
                if any(version in rule.specifier for version in versions):
                    return f"{file.filename} is denied by the policy rule {rule.text!r}", math.inf
            if allow is not None and not (
                versions
                and all(
                    any(rule.specifier is not None and v in rule.specifier for rule in allow)
                    for v in versions
                )
            ):
                return f"{file.filename}: this version is not on the allow list", math.inf
        if not cooldown:
            return None, math.inf
        uploaded = _parse_time(file.upload_time)
        if uploaded is None:
            if self.show_unknown_upload_time:
                return None, math.inf
            return (
                f"{file.filename}: its index gives no upload time, so the release cooldown "
                "cannot clear it",
                math.inf,
            )
        ready = uploaded + cooldown
        if now < ready:
            return (
                f"{file.filename} was uploaded at {file.upload_time}, within the release "
                f"cooldown of {describe_duration(cooldown)}",
                ready,
            )
        return None, math.inf


def visible_versions(
    versions: list[str] | None, kept: Sequence[File], refused: Iterable[str]
) -> list[str] | None:
    """PEP 700 `versions` without those whose every file was refused: a version listed with
    no file left would tell a resolver it exists."""
    if versions is None:
        return None
    hidden = {v for filename in refused for v in file_versions(filename)}
    hidden -= {v for file in kept for v in file_versions(file.filename)}
    if not hidden:
        return versions
    return [v for v in versions if _version_or_none(v) not in hidden]


def _version_or_none(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


_UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1, "": 1}
_DURATION_RE = re.compile(r"^\s*(\d+)\s*([wdhms]?)\s*$", re.IGNORECASE)


def parse_duration(text: str) -> int:
    """Seconds from `7d`, `12h`, `30m`, `45s`, `2w` or a bare number of seconds."""
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError("expected a duration such as 7d, 12h, 30m or seconds")
    return int(match[1]) * _UNITS[match[2].lower()]


def describe_duration(seconds: int) -> str:
    for unit in ("w", "d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"
