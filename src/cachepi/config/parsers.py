"""Value parsers: a setting's text (from a flag, the environment or the TOML file) to a value.

Each raises ValueError with a short reason; the caller adds where the text came from.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from cachepi.policy import Rule, name_glob, parse_rule

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


def _split(url: str) -> SplitResult:
    """urlsplit, with a reason of our own: urlsplit's may quote the URL, password and all."""
    try:
        return urlsplit(url)
    except ValueError:
        raise ValueError("not a URL (unbalanced brackets or odd characters in its host)") from None


def parse_url(text: str) -> str:
    url = text.strip()
    parts = _split(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL")
    try:
        parts.port  # noqa: B018 - reading it checks it (0 to 65535, digits)
    except ValueError:
        raise ValueError("the URL's port must be a number from 0 to 65535") from None
    return url if url.endswith("/") else url + "/"


def parse_port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be between 0 and 65535")
    return value


# Between the items of a list: commas, or lines (lists in the TOML file arrive one per line).
LIST_SEPARATORS = r"[,\n]"


def parse_list(item: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """Comma- or line-separated values."""

    def parse(text: str) -> list[Any]:
        return [item(part) for part in re.split(LIST_SEPARATORS, text) if part.strip()]

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
    parts = _split(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError("expected s3://BUCKET/PREFIX (or local)")
    return url.rstrip("/")


def parse_redis_url(text: str) -> str:
    url = text.strip()
    if _split(url).scheme not in {"redis", "rediss", "unix"}:
        raise ValueError("expected redis://HOST:PORT/DB, rediss:// or unix://")
    return url


def parse_choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of: {', '.join(choices)}")
        return value

    return parse


def parse_path(text: str) -> Path:
    return Path(text).expanduser()


def parse_directory(text: str) -> Path | None:
    """A directory; empty text leaves the setting to its default."""
    return Path(text).expanduser() if text else None


def parse_name(text: str) -> str | None:
    """A name; blank text leaves the setting to its default."""
    return text.strip() or None
