"""Settings: CLI flags > CACHEPI_* > PROXPI_* > defaults.

Everything is validated here, once, so the rest of the code receives plain typed values and
never reads the environment. A bad value raises `ConfigError` naming the setting; the CLI
turns that into one line on stderr and exit code 2.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cachepi.policy import Policy, Rule, name_glob, parse_duration, parse_rule
from cachepi.routing import Route

DEFAULT_INDEX_TTL = 30 * 60  # proxpi's default for the main index
DEFAULT_EXTRA_INDEX_TTL = 3 * 60  # proxpi's default for extra indexes
DEFAULT_CACHE_SIZE = 5 * 1024**3  # proxpi's 5 GB
DEFAULT_CONNECT_TIMEOUT = 3.1
DEFAULT_READ_TIMEOUT = 20.0


class ConfigError(ValueError):
    """A setting has a value we cannot use; the message names the setting."""


@dataclasses.dataclass(frozen=True)
class Upstream:
    """One upstream index and how long its pages stay fresh (0 = always revalidate)."""

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


@dataclasses.dataclass(frozen=True)
class Settings:
    upstreams: tuple[Upstream, ...]
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


def default_index_url() -> str:
    """The index pip uses when none is configured, so no registry host is written here."""
    from pip._internal.models.index import PyPI

    return PyPI.simple_url.rstrip("/") + "/"


def default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cachepi"


# Setting name (as in CACHEPI_<NAME> / PROXPI_<NAME>) -> how its text becomes a value.
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes, optionally with a binary unit: `5368709120`, `5G`, `500MiB`, `1.5GB`."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError("expected a size in bytes such as 5368709120 or 5G")
    return int(float(match[1]) * _SIZE_UNITS[match[2].lower()])


def parse_ttl(text: str) -> int:
    value = int(text.strip())
    if value < 0:
        raise ValueError("must not be negative")
    return value


def parse_seconds(text: str) -> float:
    value = float(text.strip())
    if not value > 0:
        raise ValueError("must be a positive number of seconds")
    return value


def parse_hosts(text: str) -> frozenset[str]:
    hosts = frozenset(part.strip().lower() for part in text.split(",") if part.strip())
    if not hosts:
        raise ValueError("expected host names, comma-separated")
    return hosts


def parse_token(text: str) -> str:
    token = text.strip()
    if len(token) < 16:
        raise ValueError("use at least 16 characters")
    return token


def parse_readable_file(text: str) -> Path:
    path = Path(text.strip()).expanduser()
    if not path.is_file():
        raise ValueError("no such file")
    return path


def parse_positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def parse_workers(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 256:
        raise ValueError("must be between 1 and 256")
    return value


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"", "0", "false", "no", "off"}:
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def parse_url(text: str) -> str:
    url = text.strip()
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL")
    return url if url.endswith("/") else url + "/"


def parse_port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be between 0 and 65535")
    return value


def parse_list(item: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """Comma- or line-separated values (lists in the TOML file arrive one per line)."""

    def parse(text: str) -> list[Any]:
        return [item(part) for part in re.split(r"[,\n]", text) if part.strip()]

    return parse


def parse_rules(text: str) -> tuple[Rule, ...]:
    """Policy rules separated by `;` or lines (commas belong to version specifiers)."""
    return tuple(parse_rule(part) for part in re.split(r"[;\n]", text) if part.strip())


def parse_allow(text: str) -> tuple[Rule, ...]:
    rules = parse_rules(text)
    if any(rule.filename for rule in rules):
        raise ValueError("the allow list takes projects and `project<specifier>`, not files")
    return rules


def parse_globs(text: str) -> tuple[re.Pattern[str], ...]:
    return tuple(name_glob(part) for part in re.split(r"[,;\n]", text) if part.strip())


def parse_storage(text: str) -> str | None:
    url = text.strip()
    if url in ("", "local"):
        return None
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError("expected s3://BUCKET/PREFIX (or local)")
    return url.rstrip("/")


def parse_redis_url(text: str) -> str:
    url = text.strip()
    if urlsplit(url).scheme not in {"redis", "rediss", "unix"}:
        raise ValueError("expected redis://HOST:PORT/DB, rediss:// or unix://")
    return url


def parse_choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of: {', '.join(choices)}")
        return value

    return parse


class _Sources:
    """Where settings come from, strongest first: flags, CACHEPI_*, PROXPI_*, the file."""

    def __init__(
        self, flags: Mapping[str, Any], env: Mapping[str, str], file: Mapping[str, Any], origin: str
    ) -> None:
        self.flags = flags
        self.env = env
        self.file = file  # setting name (INDEX_TTL) -> TOML value
        self.file_origin = origin
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

    def read(self, name: str, parse: Callable[[str], Any], default: Any) -> Any:
        origin, raw = self.find(name)
        if origin == "":
            return default
        if isinstance(raw, tuple | list):  # repeatable flags, TOML arrays
            raw = "\n".join(str(item) for item in raw)
        elif isinstance(raw, bool):
            raw = "1" if raw else "0"
        raw = str(raw)  # flags and TOML values arrive typed; parse them like the environment
        try:
            return parse(raw)
        except ValueError as error:
            reason = str(error) if not str(error).startswith("invalid literal") else "not a number"
            raise ConfigError(f"{origin}={raw!r}: {reason}") from None


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"--config {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"--config {path}: not valid TOML ({error})") from None


_INDEX_KEYS = {"name", "url", "ttl", "min-release-age", "explicit"}
_ENV_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(text: str, env: Mapping[str, str], origin: str) -> str:
    """`${VAR}` from the environment: secrets stay out of the file."""

    def value(match: re.Match[str]) -> str:
        if match[1] not in env:
            raise ConfigError(f"{origin}: environment variable {match[1]} is not set")
        return env[match[1]]

    return _ENV_VAR_RE.sub(value, text)


def _index_from_table(table: Any, position: int, env: Mapping[str, str], origin: str) -> Upstream:
    where = f"{origin}: index #{position + 1}"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table ([[index]])")
    if unknown := set(table) - _INDEX_KEYS:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    if "url" not in table:
        raise ConfigError(f"{where}: needs a url")

    def value(key: str, parse: Callable[[str], Any], default: Any) -> Any:
        if key not in table:
            return default
        raw = table[key]
        try:
            return parse(("1" if raw else "0") if isinstance(raw, bool) else str(raw))
        except ValueError as error:
            # Never echo the URL: it may carry credentials.
            shown = "…" if key == "url" else repr(raw)
            raise ConfigError(f"{where}: {key}={shown}: {error}") from None

    return Upstream(
        url=value("url", lambda text: parse_url(_expand(text, env, where)), None),
        ttl=value(
            "ttl", parse_ttl, DEFAULT_INDEX_TTL if position == 0 else DEFAULT_EXTRA_INDEX_TTL
        ),
        name=value("name", str.strip, ""),
        min_release_age=value("min-release-age", parse_duration, None),
        explicit=value("explicit", parse_bool, False),
    )


def _routes_from_tables(
    tables: Any, upstreams: tuple[Upstream, ...], origin: str
) -> tuple[Route, ...]:
    positions = {up.name: position for position, up in enumerate(upstreams)}
    routes = []
    for number, table in enumerate(tables if isinstance(tables, list) else [tables], 1):
        where = f"{origin}: route #{number}"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table ([[route]])")
        if unknown := set(table) - {"projects", "index"}:
            raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
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
        if unknown := [name for name in indexes if name not in positions]:
            raise ConfigError(f"{where}: no index is named {unknown[0]!r}")
        routes.append(Route(patterns, tuple(positions[name] for name in indexes)))
    return tuple(routes)


def _upstreams_from_settings(sources: _Sources) -> tuple[Upstream, ...]:
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
        Upstream(index_url, read("INDEX_TTL", parse_ttl, DEFAULT_INDEX_TTL)),
        *(Upstream(url, ttl) for url, ttl in zip(extra_urls, extra_ttls, strict=True)),
    )


def _unique_names(upstreams: tuple[Upstream, ...]) -> tuple[Upstream, ...]:
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
    config_origin, config_path = _Sources(flags, env, {}, "").find("CONFIG")
    file: dict[str, Any] = {}
    origin = ""
    if config_origin:
        path = Path(str(config_path)).expanduser()
        origin = path.name
        file = {key.upper().replace("-", "_"): value for key, value in _read_file(path).items()}
    sources = _Sources(flags, env, file, origin)
    read = sources.read

    index_tables = file.pop("INDEX", None)
    route_tables = file.pop("ROUTE", None)
    if index_tables is not None:
        for name in ("INDEX_URL", "EXTRA_INDEX_URLS", "EXTRA_INDEX_TTLS", "INDEX_TTL"):
            if where := sources.find(name)[0]:
                raise ConfigError(f"{where}: the indexes are given by [[index]] in {origin}")
        if not isinstance(index_tables, list) or not index_tables:
            raise ConfigError(f"{origin}: index: expected one or more [[index]] tables")
        upstreams = tuple(
            _index_from_table(table, position, env, origin)
            for position, table in enumerate(index_tables)
        )
        names = [up.name for up in upstreams]
        if len(set(names)) != len(names):
            raise ConfigError(f"{origin}: two indexes are named {max(names, key=names.count)!r}")
    else:
        upstreams = _unique_names(_upstreams_from_settings(sources))
    routes = _routes_from_tables(route_tables, upstreams, origin) if route_tables else ()
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
