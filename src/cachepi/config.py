"""Settings: CLI flags > CACHEPI_* > PROXPI_* > defaults.

Everything is validated here, once, so the rest of the code receives plain typed values and
never reads the environment. A bad value raises `ConfigError` naming the setting; the CLI
turns that into one line on stderr and exit code 2.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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


def default_index_url() -> str:
    """The index pip uses when none is configured, so no registry host is written here."""
    from pip._internal.models.index import PyPI

    return PyPI.simple_url.rstrip("/") + "/"


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
    def parse(text: str) -> list[Any]:
        return [item(part) for part in text.split(",") if part.strip()]

    return parse


def _source(name: str, flags: Mapping[str, Any], env: Mapping[str, str]) -> tuple[str, Any]:
    """Where a setting's raw value comes from, and the value; ("", None) when unset."""
    flag = flags.get(name.lower())
    if flag is not None and flag != ():
        return f"--{name.lower().replace('_', '-')}", flag
    for prefix in ("CACHEPI_", "PROXPI_"):
        if (raw := env.get(prefix + name)) is not None:
            return prefix + name, raw
    return "", None


def _read(
    name: str,
    parse: Callable[[str], Any],
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    default: Any,
) -> Any:
    origin, raw = _source(name, flags, env)
    if origin == "":
        return default
    if isinstance(raw, tuple):  # repeatable flags
        raw = ",".join(str(item) for item in raw)
    raw = str(raw)  # flags arrive typed already (click); parse them like the environment
    try:
        return parse(raw)
    except ValueError as error:
        reason = str(error) if not str(error).startswith("invalid literal") else "not a number"
        raise ConfigError(f"{origin}={raw!r}: {reason}") from None


def load_settings(
    flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Build the settings from CLI flags (keys are setting names in lower case) and env."""
    flags = flags or {}
    env = os.environ if env is None else env

    def read(name: str, parse: Callable[[str], Any], default: Any) -> Any:
        return _read(name, parse, flags, env, default)

    index_url = read("INDEX_URL", parse_url, None) or default_index_url()
    extra_urls: list[str] = read("EXTRA_INDEX_URLS", parse_list(parse_url), [])
    extra_ttls: list[int] | None = read("EXTRA_INDEX_TTLS", parse_list(parse_ttl), None)
    if extra_ttls is None:
        extra_ttls = [DEFAULT_EXTRA_INDEX_TTL] * len(extra_urls)
    elif len(extra_ttls) != len(extra_urls):
        origin, _ = _source("EXTRA_INDEX_TTLS", flags, env)
        raise ConfigError(
            f"{origin}: {len(extra_ttls)} TTLs given for {len(extra_urls)} extra index URLs"
        )
    upstreams = (
        Upstream(index_url, read("INDEX_TTL", parse_ttl, DEFAULT_INDEX_TTL)),
        *(Upstream(url, ttl) for url, ttl in zip(extra_urls, extra_ttls, strict=True)),
    )
    return Settings(
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
    )
