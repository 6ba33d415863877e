"""Which of a lock's files some targets need: by the tags in a wheel's filename. Pure.

A lock lists every platform it supports; `--platform`, `--python-version`, `--implementation`
and `--only-wheels` narrow that down. Each narrows one axis of a wheel's tags, and a wheel is
kept when one of its tags passes every axis given (so several values of each are the union
of their targets, as pip's per-target runs would be). A platform passes its older
compatible ones too (manylinux_2_28 takes manylinux_2_17 and manylinux2014 wheels; macOS
11 takes 10.9 ones); a Python version takes what pip would install on it (cp312, abi3 from
older versions, py3). Sdists fit every target, so only `--only-wheels` drops them; a file
packaging cannot read is kept: the index decides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from packaging.tags import Tag, compatible_tags, cpython_tags, mac_platforms
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

# Older names of manylinux glibc versions (PEP 600).
_MANYLINUX_ALIASES = {(2, 5): "manylinux1", (2, 12): "manylinux2010", (2, 17): "manylinux2014"}
_LINUX = re.compile(r"(manylinux|musllinux)_(\d+)_(\d+)_(\w+)")
_MACOS = re.compile(r"macosx_(\d+)_(\d+)_(\w+)")
_PYTHON_VERSION = re.compile(r"(\d)(?:\.?(\d{1,2}))?")


class NarrowingError(ValueError):
    """A value no target can have; the message is one line."""


@dataclass(frozen=True)
class Narrowing:
    platforms: tuple[str, ...] = ()
    python_versions: tuple[str, ...] = ()
    implementations: tuple[str, ...] = ()
    only_wheels: bool = False
    _platforms: frozenset[str] = field(init=False, repr=False, compare=False)
    _interpreters: _Interpreters | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        platforms = frozenset(p for given in self.platforms for p in compatible_platforms(given))
        object.__setattr__(self, "_platforms", platforms)
        interpreters = (
            _Interpreters.of(self.python_versions, self.implementations)
            if self.python_versions or self.implementations
            else None
        )
        object.__setattr__(self, "_interpreters", interpreters)

    def keeps(self, filename: str) -> bool:
        if not filename.endswith(".whl"):
            return not self.only_wheels
        try:
            tags = parse_wheel_filename(filename)[3]
        except InvalidWheelFilename:
            return True
        return any(self._fits(tag) for tag in tags)

    def _fits(self, tag: Tag) -> bool:
        if self._platforms and tag.platform != "any" and tag.platform not in self._platforms:
            return False
        return self._interpreters is None or self._interpreters.fit(tag)

    def __str__(self) -> str:
        parts = [
            *(f"platform {p}" for p in self.platforms),
            *(f"python {v}" for v in self.python_versions),
            *(f"implementation {i}" for i in self.implementations),
            *(["wheels only"] if self.only_wheels else []),
        ]
        return ", ".join(parts) or "every target"


@dataclass(frozen=True)
class _Interpreters:
    """(interpreter, abi) pairs a target takes, and interpreters it takes with any ABI (one
    cannot tell PyPy's ABI tags from its version)."""

    pairs: frozenset[tuple[str, str]]
    any_abi: frozenset[str]
    prefixes: tuple[str, ...]  # with no version given: interpreters starting so, any ABI

    @classmethod
    def of(
        cls, python_versions: tuple[str, ...], implementations: tuple[str, ...]
    ) -> _Interpreters:
        # On their own, versions mean CPython, as they do to pip running on CPython.
        impls = tuple(_implementation(i) for i in implementations) or ("cp",)
        if not python_versions:
            return cls(frozenset(), frozenset(), (*impls, "py"))
        pairs: set[tuple[str, str]] = set()
        any_abi: set[str] = set()
        for text in python_versions:
            version = _python_version(text)
            nodot = "".join(map(str, version))
            for impl in impls:
                if impl == "cp":
                    tags = cpython_tags(version, abis=[f"cp{nodot}"], platforms=["any"])
                    pairs.update((t.interpreter, t.abi) for t in tags)
                else:
                    any_abi.add(f"{impl}{nodot}")
                tags = compatible_tags(version, f"{impl}{nodot}", ["any"])
                pairs.update((t.interpreter, t.abi) for t in tags)
        return cls(frozenset(pairs), frozenset(any_abi), ())

    def fit(self, tag: Tag) -> bool:
        if self.prefixes:
            return tag.interpreter.startswith(self.prefixes)
        return (tag.interpreter, tag.abi) in self.pairs or tag.interpreter in self.any_abi


def _python_version(text: str) -> tuple[int, ...]:
    """ "3.12" or "312" (pip's spellings) -> (3, 12); "3" -> (3,)."""
    match = _PYTHON_VERSION.fullmatch(text.strip())
    if match is None:
        raise NarrowingError(f"{text!r} is not a Python version (3.12, or 312)")
    return tuple(int(part) for part in match.groups() if part is not None)


def _implementation(text: str) -> str:
    """pip's `--implementation`: cp, pp, ip, jy, or py (any)."""
    if not re.fullmatch(r"[a-z]{2}", text):
        raise NarrowingError(f"{text!r} is not an implementation (cp, pp, py...)")
    return text


def compatible_platforms(platform: str) -> list[str]:
    """`platform` and the older platforms whose wheels run on it."""
    platform = platform.strip().replace("-", "_").replace(".", "_")
    if not re.fullmatch(r"[a-z0-9_]+", platform):
        raise NarrowingError(f"{platform!r} is not a platform tag (manylinux_2_17_x86_64...)")
    for alias_version, alias in _MANYLINUX_ALIASES.items():
        if platform.startswith(alias + "_"):
            major, minor = alias_version
            platform = f"manylinux_{major}_{minor}_{platform.removeprefix(alias + '_')}"
    if match := _LINUX.fullmatch(platform):
        family, major, minor, arch = match[1], int(match[2]), int(match[3]), match[4]
        older = [f"{family}_{major}_{m}_{arch}" for m in range(minor, -1, -1)]
        if family == "manylinux":
            older += [
                f"{alias}_{arch}"
                for alias_version, alias in _MANYLINUX_ALIASES.items()
                if alias_version <= (major, minor)
            ]
        return older
    if match := _MACOS.fullmatch(platform):
        return list(mac_platforms((int(match[1]), int(match[2])), match[3]))
    return [platform]
