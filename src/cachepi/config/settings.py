"""The typed settings the rest of cachepi reads, and `load_settings`, which builds them."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cachepi.config.parsers import (
    parse_allow,
    parse_bool,
    parse_choice,
    parse_globs,
    parse_hosts,
    parse_list,
    parse_port,
    parse_positive,
    parse_readable_file,
    parse_redis_url,
    parse_rules,
    parse_seconds,
    parse_size,
    parse_storage,
    parse_token,
    parse_ttl,
    parse_url,
    parse_workers,
)
from cachepi.config.schema import (
    DEFAULT_CACHE_SIZE,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_EXTRA_INDEX_TTL,
    DEFAULT_INDEX_TTL,
    DEFAULT_READ_TIMEOUT,
    default_cache_dir,
    default_index_url,
    default_node_id,
)
from cachepi.config.sources import ConfigError, Sources, read_file
from cachepi.config.tables import IndexSettings, indexes_from_tables, routes_from_tables
from cachepi.policy import Policy, parse_duration
from cachepi.routing import Route


@dataclasses.dataclass(frozen=True)
class Settings:
    upstreams: tuple[IndexSettings, ...]
    cache_dir: Path
    cache_size: int
    host: str = "127.0.0.1"
    port: int = 5000
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    verify_ssl: bool = True
    binary_file_mime_type: bool = False
    # Accepted for proxpi compatibility: proxpi redirected slow downloads to the upstream after
    # this many seconds; cachepi always streams, so the value is validated and otherwise unused.
    download_timeout: float = 0.9
    # How long an upstream 404 is remembered (capped by the index TTL).
    negative_ttl: int = 60
    # Cache-Control max-age we give clients for index pages.
    page_max_age: int = 600
    # Processes serving the port (see workers.py).
    workers: int = 1
    # Never contact an upstream: serve what is cached (stale pages included), 503 otherwise.
    offline: bool = False
    # Hosts that file URLs may point to (None: any); a page cannot send us anywhere else.
    file_hosts: frozenset[str] | None = None
    # At most this many connections to upstreams at once.
    upstream_connections: int = 64
    # When set, invalidating needs `Authorization: Bearer <admin_token>`.
    admin_token: str | None = None
    # When set, every endpoint but /health needs basic auth against this htpasswd file.
    htpasswd: Path | None = None
    # A client that accepts no bytes for this long is disconnected.
    client_timeout: float = 60.0
    # How the indexes that serve a project are combined: "merge" (proxpi) or "first".
    combine: str = "merge"
    # Projects pinned to some indexes; the first route that names a project applies.
    routes: tuple[Route, ...] = ()
    policy: Policy = dataclasses.field(default_factory=Policy)
    # Serve HTTPS with this certificate (chain) and key.
    certfile: Path | None = None
    keyfile: Path | None = None
    access_log: str = "text"  # or "json", "off"
    # A cluster: blobs in this S3 bucket (s3://bucket/prefix) and metadata in this Redis,
    # shared by every node (both or neither).
    storage: str | None = None
    s3_endpoint: str | None = None
    s3_serve: str = "stream"  # or "redirect" (to a presigned URL)
    redis_url: str | None = None
    node_id: str = dataclasses.field(default_factory=lambda: default_node_id())


def _upstreams_from_settings(sources: Sources) -> tuple[IndexSettings, ...]:
    """The proxpi way: INDEX_URL and EXTRA_INDEX_URLS with their TTLs."""
    read = sources.read
    index_url = read("INDEX_URL", parse_url, None) or default_index_url()
    extra_urls: list[str] = read("EXTRA_INDEX_URLS", parse_list(parse_url), [])
    extra_ttls: list[int] | None = read("EXTRA_INDEX_TTLS", parse_list(parse_ttl), None)
    if extra_ttls is None:
        extra_ttls = [DEFAULT_EXTRA_INDEX_TTL] * len(extra_urls)
    elif len(extra_ttls) != len(extra_urls):
        origin, _ = sources.find("EXTRA_INDEX_TTLS")
        raise ConfigError(
            f"{origin}: {len(extra_ttls)} TTLs given for {len(extra_urls)} extra index URLs"
        )
    return (
        IndexSettings(index_url, read("INDEX_TTL", parse_ttl, DEFAULT_INDEX_TTL)),
        *(IndexSettings(url, ttl) for url, ttl in zip(extra_urls, extra_ttls, strict=True)),
    )


def _unique_names(upstreams: tuple[IndexSettings, ...]) -> tuple[IndexSettings, ...]:
    """Default names (host:port) made unique: two indexes on one host are index, index-2."""
    seen: dict[str, int] = {}
    named = []
    for upstream in upstreams:
        count = seen[upstream.name] = seen.get(upstream.name, 0) + 1
        named.append(
            upstream
            if count == 1
            else dataclasses.replace(upstream, name=f"{upstream.name}-{count}")
        )
    return tuple(named)


def load_settings(
    flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Build the settings from CLI flags (keys are setting names in lower case), the
    environment, and the TOML file named by `config` (flag or CACHEPI_CONFIG)."""
    flags = flags or {}
    env = os.environ if env is None else env
    config_origin, config_path = Sources(flags, env, {}, "").find("CONFIG")
    file: dict[str, Any] = {}
    origin = ""
    if config_origin:
        path = Path(str(config_path)).expanduser()
        origin = path.name
        file = {key.upper().replace("-", "_"): value for key, value in read_file(path).items()}
    sources = Sources(flags, env, file, origin)
    read = sources.read

    index_tables = file.pop("INDEX", None)
    route_tables = file.pop("ROUTE", None)
    if index_tables is not None:
        for name in ("INDEX_URL", "EXTRA_INDEX_URLS", "EXTRA_INDEX_TTLS", "INDEX_TTL"):
            if where := sources.find(name)[0]:
                raise ConfigError(f"{where}: the indexes are given by [[index]] in {origin}")
        upstreams = indexes_from_tables(index_tables, env, origin)
    else:
        upstreams = _unique_names(_upstreams_from_settings(sources))
    routes = routes_from_tables(route_tables, upstreams, origin) if route_tables else ()
    if all(up.explicit for up in upstreams):
        raise ConfigError(f"{origin}: every index is explicit: no index serves unrouted projects")

    settings = Settings(
        upstreams=upstreams,
        cache_dir=Path(read("CACHE_DIR", str, None) or default_cache_dir()).expanduser(),
        cache_size=read("CACHE_SIZE", parse_size, DEFAULT_CACHE_SIZE),
        host=read("HOST", str.strip, "127.0.0.1"),
        port=read("PORT", parse_port, 5000),
        connect_timeout=read("CONNECT_TIMEOUT", parse_seconds, DEFAULT_CONNECT_TIMEOUT),
        read_timeout=read("READ_TIMEOUT", parse_seconds, DEFAULT_READ_TIMEOUT),
        verify_ssl=not read("DISABLE_INDEX_SSL_VERIFICATION", parse_bool, False),
        binary_file_mime_type=read("BINARY_FILE_MIME_TYPE", parse_bool, False),
        download_timeout=read("DOWNLOAD_TIMEOUT", parse_seconds, 0.9),
        negative_ttl=read("NEGATIVE_TTL", parse_ttl, 60),
        page_max_age=read("PAGE_MAX_AGE", parse_ttl, 600),
        workers=read("WORKERS", parse_workers, len(os.sched_getaffinity(0))),
        offline=read("OFFLINE", parse_bool, False),
        file_hosts=read("FILE_HOSTS", parse_hosts, None),
        upstream_connections=read("UPSTREAM_CONNECTIONS", parse_positive, 64),
        admin_token=read("ADMIN_TOKEN", parse_token, None),
        htpasswd=read("HTPASSWD", parse_readable_file, None),
        client_timeout=read("CLIENT_TIMEOUT", parse_seconds, 60.0),
        combine=read("COMBINE", parse_choice("merge", "first"), "merge"),
        routes=routes,
        policy=Policy(
            deny=read("DENY", parse_rules, ()),
            allow=read("ALLOW", parse_allow, None),
            min_release_age=read("MIN_RELEASE_AGE", parse_duration, 0),
            cooldown_exempt=read("COOLDOWN_EXEMPT", parse_globs, ()),
            show_unknown_upload_time=read(
                "UNKNOWN_UPLOAD_TIME", parse_choice("show", "hide"), "show"
            )
            == "show",
        ),
        certfile=read("CERTFILE", parse_readable_file, None),
        keyfile=read("KEYFILE", parse_readable_file, None),
        access_log=read("ACCESS_LOG", parse_choice("text", "json", "off"), "text"),
        storage=read("STORAGE", parse_storage, None),
        s3_endpoint=read("S3_ENDPOINT", parse_url, None) or env.get("AWS_ENDPOINT_URL"),
        s3_serve=read("S3_SERVE", parse_choice("stream", "redirect"), "stream"),
        redis_url=read("REDIS_URL", parse_redis_url, None),
        node_id=read("NODE_ID", str.strip, None) or default_node_id(),
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
