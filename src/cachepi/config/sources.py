"""Where a setting's value comes from, strongest first: a flag of `cachepi serve`,
CACHEPI_<NAME>, PROXPI_<NAME>, the TOML file, the schema's default; and the origin an error
names, so a bad value is reported as the operator wrote it (`--port`, `PROXPI_INDEX_TTL`,
`cachepi.toml: page-max-age`).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cachepi.config.parsers import LIST_SEPARATORS
from cachepi.config.schema import Setting
from cachepi.redact import redact


class ConfigError(ValueError):
    """A setting has a value we cannot use; the message names the setting."""


class Sources:
    """The flags, the environment and the TOML file, asked for one setting at a time."""

    def __init__(
        self, flags: Mapping[str, Any], env: Mapping[str, str], file: Mapping[str, Any], origin: str
    ) -> None:
        self.flags = flags  # setting name in lower case (index_ttl) -> flag value
        self.env = env
        self.file = file  # setting name (INDEX_TTL) -> TOML value
        self.file_origin = origin
        # What was asked for: any other key in the file is unknown.
        self.used: set[str] = set()

    def find(self, name: str) -> tuple[str, Any]:
        """Where a setting's raw value comes from, and the value; ("", None) when unset."""
        self.used.add(name)
        flag = self.flags.get(name.lower())
        if flag is not None and flag != ():
            return f"--{name.lower().replace('_', '-')}", flag
        for prefix in ("CACHEPI_", "PROXPI_"):
            if (raw := self.env.get(prefix + name)) is not None:
                return prefix + name, raw
        if name in self.file:
            return f"{self.file_origin}: {name.lower().replace('_', '-')}", self.file[name]
        return "", None

    def value(self, setting: Setting) -> Any:
        """The setting's value from the strongest source that gives it, else its default."""
        origin, raw = self.find(setting.name)
        value = None if origin == "" else _parse(origin, raw, setting)
        return setting.default_in(self.env) if value is None else value


def _parse(origin: str, raw: Any, setting: Setting) -> Any:
    if isinstance(raw, tuple | list):  # repeatable flags, TOML arrays
        raw = "\n".join(str(item) for item in raw)
    elif isinstance(raw, bool):
        raw = "1" if raw else "0"
    raw = str(raw)  # flags and TOML values arrive typed; parse them like the environment
    try:
        return setting.parse(raw)
    except ValueError as error:
        reason = str(error) if not str(error).startswith("invalid literal") else "not a number"
        raise ConfigError(f"{_shown(origin, raw, setting)}: {reason}") from None


def _shown(origin: str, raw: str, setting: Setting) -> str:
    """Where a bad value comes from, and as much of it as may be shown."""
    if setting.in_errors == "hidden":
        return origin
    if setting.in_errors == "redacted":
        # A list's URLs one by one (the separators kept, to show the value as written).
        items = re.split(f"({LIST_SEPARATORS})", raw) if setting.multiple else [raw]
        raw = "".join(redact(item) for item in items)
    return f"{origin}={raw!r}"


def read_file(path: Path) -> dict[str, Any]:
    """The TOML file's top-level table."""
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"--config {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"--config {path}: not valid TOML ({error})") from None
