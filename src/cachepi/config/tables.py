"""The TOML file's [[index]] and [[route]] tables, and `${VAR}` in index URLs."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from cachepi.config.parsers import parse_bool, parse_ttl, parse_url
from cachepi.config.schema import EXTRA_INDEX_TTL, SETTING
from cachepi.config.sources import ConfigError
from cachepi.policy import name_glob, parse_duration
from cachepi.redact import redact
from cachepi.routing import Route


@dataclasses.dataclass(frozen=True)
class IndexSettings:
    """One upstream index as configured, and how long its pages stay fresh (0 = always
    revalidate). The HTTP client for it is `cachepi.upstream.Upstream`."""

    url: str
    ttl: int
    name: str = ""  # shown on /health, the home page and in headers; default: host[:port]
    # Release cooldown for this index's files, overriding the global one (None: global).
    min_release_age: int | None = None
    # An explicit index serves only the projects a route sends to it.
    explicit: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            parts = urlsplit(self.url)
            host = parts.hostname or ""
            object.__setattr__(self, "name", f"{host}:{parts.port}" if parts.port else host)


_ENV_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(text: str, env: Mapping[str, str], origin: str) -> str:
    """`${VAR}` from the environment: secrets stay out of the file."""

    def value(match: re.Match[str]) -> str:
        if match[1] not in env:
            raise ConfigError(f"{origin}: environment variable {match[1]} is not set")
        return env[match[1]]

    return _ENV_VAR_RE.sub(value, text)


def _index_from_table(
    table: Any, position: int, env: Mapping[str, str], origin: str
) -> IndexSettings:
    where = f"{origin}: index #{position + 1}"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table ([[index]])")
    parsers: dict[str, Callable[[str], Any]] = {
        "url": lambda text: parse_url(_expand(text, env, where)),
        "ttl": parse_ttl,
        "name": str.strip,
        "min-release-age": parse_duration,
        "explicit": parse_bool,
    }
    if unknown := set(table) - set(parsers):
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    if "url" not in table:
        raise ConfigError(f"{where}: needs a url")
    fields: dict[str, Any] = {}
    for key, raw in table.items():
        try:
            value = parsers[key](("1" if raw else "0") if isinstance(raw, bool) else str(raw))
        except ConfigError:  # an unset ${VAR}: it names its place already
            raise
        except ValueError as error:
            # The URL as written, `${VAR}`s unexpanded, without a user:password it may carry.
            shown = redact(str(raw)) if key == "url" else raw
            raise ConfigError(f"{where}: {key}={shown!r}: {error}") from None
        fields[key.replace("-", "_")] = value
    # Without a ttl, proxpi's: INDEX_TTL's default for the first index, less for the others.
    fields.setdefault("ttl", SETTING["INDEX_TTL"].default if position == 0 else EXTRA_INDEX_TTL)
    return IndexSettings(**fields)


def indexes_from_tables(
    tables: Any, env: Mapping[str, str], origin: str
) -> tuple[IndexSettings, ...]:
    """The upstreams of the file's [[index]] tables, in order."""
    if not isinstance(tables, list) or not tables:
        raise ConfigError(f"{origin}: index: expected one or more [[index]] tables")
    upstreams = tuple(
        _index_from_table(table, position, env, origin) for position, table in enumerate(tables)
    )
    names = [up.name for up in upstreams]
    if len(set(names)) != len(names):
        raise ConfigError(f"{origin}: two indexes are named {max(names, key=names.count)!r}")
    return upstreams


def routes_from_tables(
    tables: Any, upstreams: tuple[IndexSettings, ...], origin: str
) -> tuple[Route, ...]:
    positions = {up.name: position for position, up in enumerate(upstreams)}
    routes = []
    for number, table in enumerate(tables if isinstance(tables, list) else [tables], 1):
        where = f"{origin}: route #{number}"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table ([[route]])")
        if unknown_keys := set(table) - {"projects", "index"}:
            raise ConfigError(f"{where}: unknown key {sorted(unknown_keys)[0]!r}")
        if set(table) != {"projects", "index"}:
            raise ConfigError(f"{where}: needs `projects` and `index`")
        projects, indexes = (
            [v] if isinstance(v, str) else v for v in (table["projects"], table["index"])
        )
        if not projects or not indexes:
            raise ConfigError(f"{where}: `projects` and `index` must not be empty")
        try:
            patterns = tuple(name_glob(str(pattern)) for pattern in projects)
        except ValueError as error:
            raise ConfigError(f"{where}: {error}") from None
        if unknown_names := [name for name in indexes if name not in positions]:
            raise ConfigError(f"{where}: no index is named {unknown_names[0]!r}")
        routes.append(Route(patterns, tuple(positions[name] for name in indexes)))
    return tuple(routes)
