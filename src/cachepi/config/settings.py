"""The typed settings the rest of cachepi reads, and `load_settings`, which builds them from
the schema's settings and the TOML file's tables."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cachepi.config.schema import EXTRA_INDEX_TTL, SETTING, SETTINGS
from cachepi.config.sources import ConfigError, Sources, read_file
from cachepi.config.tables import IndexSettings, indexes_from_tables, routes_from_tables
from cachepi.policy import Policy
from cachepi.routing import Route


def _default(name: str) -> Any:
    """A Settings field's default: the schema's, computed from this process's environment
    where it depends on it."""
    setting = SETTING[name]
    compute = setting.compute
    if compute is None:
        return dataclasses.field(default=setting.default)
    return dataclasses.field(default_factory=lambda: compute(os.environ))


def _policy(value: Callable[[str], Any]) -> Policy:
    """The policy from the values of its settings."""
    return Policy(
        deny=value("DENY"),
        allow=value("ALLOW"),
        min_release_age=value("MIN_RELEASE_AGE"),
        cooldown_exempt=value("COOLDOWN_EXEMPT"),
        show_unknown_upload_time=value("UNKNOWN_UPLOAD_TIME") == "show",
    )


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every setting, typed. A field named like a setting (cache_size: CACHE_SIZE) takes its
    default, parser and meaning from the schema; the others are built from several settings
    or from the TOML file's tables."""

    # `_default` returns a dataclasses.field(), which RUF009 cannot tell: no value is shared.
    upstreams: tuple[IndexSettings, ...]
    cache_dir: Path = _default("CACHE_DIR")  # noqa: RUF009
    cache_size: int = _default("CACHE_SIZE")
    page_memory: int = _default("PAGE_MEMORY")
    downloads_per_index: int = _default("DOWNLOADS_PER_INDEX")
    downloads_per_client: int = _default("DOWNLOADS_PER_CLIENT")
    download_wait: float = _default("DOWNLOAD_WAIT")
    host: str = _default("HOST")
    port: int = _default("PORT")
    connect_timeout: float = _default("CONNECT_TIMEOUT")
    read_timeout: float = _default("READ_TIMEOUT")
    verify_ssl: bool = not SETTING["DISABLE_INDEX_SSL_VERIFICATION"].default
    binary_file_mime_type: bool = _default("BINARY_FILE_MIME_TYPE")
    download_timeout: float = _default("DOWNLOAD_TIMEOUT")
    negative_ttl: int = _default("NEGATIVE_TTL")
    stale_while_revalidate: int = _default("STALE_WHILE_REVALIDATE")
    page_max_age: int = _default("PAGE_MAX_AGE")
    workers: int = _default("WORKERS")
    offline: bool = _default("OFFLINE")
    file_hosts: frozenset[str] | None = _default("FILE_HOSTS")
    upstream_connections: int = _default("UPSTREAM_CONNECTIONS")
    upstream_private_addresses: str = _default("UPSTREAM_PRIVATE_ADDRESSES")
    page_timeout: float = _default("PAGE_TIMEOUT")
    max_page_bytes: int = _default("MAX_PAGE_BYTES")
    admin_token: str | None = _default("ADMIN_TOKEN")
    htpasswd: Path | None = _default("HTPASSWD")  # noqa: RUF009
    client_timeout: float = _default("CLIENT_TIMEOUT")
    head_timeout: float = _default("HEAD_TIMEOUT")
    keepalive_timeout: float = _default("KEEPALIVE_TIMEOUT")
    client_connections: int | None = _default("CLIENT_CONNECTIONS")
    combine: str = _default("COMBINE")
    upload_times: str = _default("UPLOAD_TIMES")
    # Projects pinned to some indexes; the first route that names a project applies.
    routes: tuple[Route, ...] = ()
    policy: Policy = dataclasses.field(
        default_factory=lambda: _policy(lambda name: SETTING[name].default)
    )
    certfile: Path | None = _default("CERTFILE")  # noqa: RUF009
    keyfile: Path | None = _default("KEYFILE")  # noqa: RUF009
    access_log: str = _default("ACCESS_LOG")
    storage: str | None = _default("STORAGE")
    s3_endpoint: str | None = _default("S3_ENDPOINT")
    s3_serve: str = _default("S3_SERVE")
    redis_url: str | None = _default("REDIS_URL")
    node_id: str = _default("NODE_ID")


# Fields that are one setting each, and the settings read apart from the others.
_FIELDS = tuple(
    field.name for field in dataclasses.fields(Settings) if field.name.upper() in SETTING
)
_INDEX_SETTINGS = ("INDEX_URL", "EXTRA_INDEX_URLS", "EXTRA_INDEX_TTLS", "INDEX_TTL")


def _indexes_from_settings(sources: Sources) -> tuple[IndexSettings, ...]:
    """The proxpi way: INDEX_URL and EXTRA_INDEX_URLS with their TTLs."""
    index_url = sources.value(SETTING["INDEX_URL"])
    extra_urls: list[str] = sources.value(SETTING["EXTRA_INDEX_URLS"])
    extra_ttls: list[int] | None = sources.value(SETTING["EXTRA_INDEX_TTLS"])
    if extra_ttls is None:
        extra_ttls = [EXTRA_INDEX_TTL] * len(extra_urls)
    elif len(extra_ttls) != len(extra_urls):
        origin, _ = sources.find("EXTRA_INDEX_TTLS")
        raise ConfigError(
            f"{origin}: {len(extra_ttls)} TTLs given for {len(extra_urls)} extra index URLs"
        )
    return (
        IndexSettings(index_url, sources.value(SETTING["INDEX_TTL"])),
        *(IndexSettings(url, ttl) for url, ttl in zip(extra_urls, extra_ttls, strict=True)),
    )


def _unique_names(indexes: tuple[IndexSettings, ...]) -> tuple[IndexSettings, ...]:
    """Default names (host:port) made unique: two indexes on one host are index, index-2."""
    seen: dict[str, int] = {}
    named = []
    for index in indexes:
        count = seen[index.name] = seen.get(index.name, 0) + 1
        named.append(
            index if count == 1 else dataclasses.replace(index, name=f"{index.name}-{count}")
        )
    return tuple(named)


def load_settings(
    flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Build the settings from CLI flags (keys are setting names in lower case), the
    environment, and the TOML file named by `config` (flag or CACHEPI_CONFIG)."""
    flags = flags or {}
    env = os.environ if env is None else env
    config_path = Sources(flags, env, {}, "").value(SETTING["CONFIG"])
    file: dict[str, Any] = {}
    origin = ""
    if config_path is not None:
        origin = config_path.name
        file = {
            key.upper().replace("-", "_"): value for key, value in read_file(config_path).items()
        }
    sources = Sources(flags, env, file, origin)

    index_tables = file.pop("INDEX", None)
    route_tables = file.pop("ROUTE", None)
    if index_tables is not None:
        for name in _INDEX_SETTINGS:
            if where := sources.find(name)[0]:
                raise ConfigError(f"{where}: the indexes are given by [[index]] in {origin}")
        upstreams = indexes_from_tables(index_tables, env, origin)
    else:
        upstreams = _unique_names(_indexes_from_settings(sources))
    routes = routes_from_tables(route_tables, upstreams, origin) if route_tables else ()
    if all(up.explicit for up in upstreams):
        raise ConfigError(f"{origin}: every index is explicit: no index serves unrouted projects")

    # The file may not name CONFIG: it is read above, from flags and the environment only.
    values = {
        setting.name: sources.value(setting)
        for setting in SETTINGS
        if setting.name not in (*_INDEX_SETTINGS, "CONFIG")
    }
    settings = Settings(
        upstreams=upstreams,
        routes=routes,
        verify_ssl=not values["DISABLE_INDEX_SSL_VERIFICATION"],
        policy=_policy(values.__getitem__),
        **{field: values[field.upper()] for field in _FIELDS},
    )
    if settings.storage is not None and not all(
        importlib.util.find_spec(module) for module in ("obstore", "redis")
    ):
        origin, _ = sources.find("STORAGE")
        raise ConfigError(f"{origin}: a cluster needs the extra: pip install 'cachepi[cluster]'")
    if (settings.storage is None) != (settings.redis_url is None):
        given, missing = ("STORAGE", "REDIS_URL") if settings.storage else ("REDIS_URL", "STORAGE")
        origin, _ = sources.find(given)
        raise ConfigError(
            f"{origin}: a cluster needs both CACHEPI_STORAGE=s3://... and CACHEPI_REDIS_URL;"
            f" {missing} is not set"
        )
    if (settings.certfile is None) != (settings.keyfile is None):
        given = "CERTFILE" if settings.certfile is not None else "KEYFILE"
        missing = "KEYFILE" if given == "CERTFILE" else "CERTFILE"
        origin, _ = sources.find(given)
        raise ConfigError(f"{origin}: HTTPS needs {missing.lower()} too")
    if unknown := set(file) - sources.used:
        key = sorted(unknown)[0].lower().replace("_", "-")
        raise ConfigError(f"{origin}: unknown setting {key!r}")
    return settings
