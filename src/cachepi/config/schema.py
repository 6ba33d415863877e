"""The settings' defaults."""

from __future__ import annotations

import os
import socket
from pathlib import Path

DEFAULT_INDEX_TTL = 30 * 60  # proxpi's default for the main index
DEFAULT_EXTRA_INDEX_TTL = 3 * 60  # proxpi's default for extra indexes
DEFAULT_CACHE_SIZE = 5 * 1024**3  # proxpi's 5 GB
DEFAULT_CONNECT_TIMEOUT = 3.1
DEFAULT_READ_TIMEOUT = 20.0


def default_index_url() -> str:
    """The index pip uses when none is configured, so no registry host is written here."""
    from pip._internal.models.index import PyPI

    return PyPI.simple_url.rstrip("/") + "/"


def default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cachepi"
