"""THE list of settings: each one's name, parser, default and help, written once.

From this table come the reading in `load_settings`, the typed `Settings` defaults, the flags
of `cachepi serve` (cli.py) and the README's settings table (`python -m cachepi.config.readme`).
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from cachepi.config.parsers import (
    parse_allow,
    parse_bool,
    parse_choice,
    parse_directory,
    parse_globs,
    parse_hosts,
    parse_list,
    parse_name,
    parse_path,
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
from cachepi.policy import parse_duration

DEFAULT_CACHE_SIZE = 5 * 1024**3  # proxpi's 5 GB
DEFAULT_PAGE_MEMORY = 64 * 1024**2
# proxpi's TTL for each extra index; not a setting's default, as EXTRA_INDEX_TTLS is a list.
EXTRA_INDEX_TTL = 3 * 60


def default_index_url() -> str:
    """The index pip uses when none is configured, so no registry host is written here."""
    from pip._internal.models.index import PyPI

    return PyPI.simple_url.rstrip("/") + "/"


def default_node_id() -> str:
    """Unique among the nodes of a cluster, and among restarts of one."""
    return f"{socket.gethostname()}-{os.getpid()}"


def default_cache_dir() -> Path:
    """Where the XDG base directory spec puts caches."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return (Path(base) / "cachepi").expanduser()


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting: `--kebab-name` of `cachepi serve`, CACHEPI_NAME, PROXPI_NAME, and
    `kebab-name = ...` in the TOML file."""

    name: str  # INDEX_TTL
    parse: Callable[[str], Any]  # returning None leaves the setting to its default
    # Shown by --help and the README; `code` in backticks is code in the README only.
    help: str
    default: Any = None  # the value when no source gives one; None: unset
    # For defaults that depend on the machine or the environment: computed at load time.
    compute: Callable[[Mapping[str, str]], Any] | None = None
    shown_default: str = ""  # the default in words, where the value would not say it
    meaning: str = ""  # the README's text, where it says more than `help`
    flag_type: type[int] | type[float] | None = None  # so click rejects a bad flag value first
    choices: tuple[str, ...] = ()
    multiple: bool = False  # a repeatable flag; the environment takes a comma-separated list
    # What an error shows of a bad value: all of it, its URLs without user:password (a URL
    # may carry a password), or none of it (a secret).
    in_errors: Literal["as-is", "redacted", "hidden"] = "as-is"

    @property
    def flag(self) -> str:
        return "--" + self.name.lower().replace("_", "-")

    @property
    def is_flag(self) -> bool:
        """A yes/no setting is a bare flag: `--offline`."""
        return self.parse is parse_bool

    @property
    def default_text(self) -> str:
        """The default as --help and the README show it."""
        if self.shown_default:
            return self.shown_default
        if self.default is None or self.default == ():
            return "none"
        if self.default is False:
            return "off"
        if isinstance(self.default, float):
            return f"{self.default:g}"
        return str(self.default)

    def default_in(self, env: Mapping[str, str]) -> Any:
        return self.default if self.compute is None else self.compute(env)


def _choice(name: str, choices: tuple[str, ...], help: str, meaning: str = "") -> Setting:
    """A setting that takes one of `choices`; the first is the default."""
    return Setting(
        name, parse_choice(*choices), help, default=choices[0], choices=choices, meaning=meaning
    )


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "INDEX_URL", parse_url, "Upstream index.",
        compute=lambda env: default_index_url(), shown_default="pip's default index (PyPI)",
        in_errors="redacted",
    ),
    Setting(
        "INDEX_TTL", parse_ttl, "Seconds an upstream page stays fresh; 0: revalidate every time.",
        default=30 * 60, flag_type=int,
    ),
    Setting(
        "EXTRA_INDEX_URLS", parse_list(parse_url),
        "More indexes, merged after the first (comma-separated, or the flag repeated).",
        default=(), multiple=True, in_errors="redacted",
    ),
    Setting(
        "EXTRA_INDEX_TTLS", parse_list(parse_ttl),
        "Their TTLs, one per extra index (comma-separated, or the flag repeated).",
        shown_default=f"{EXTRA_INDEX_TTL} each", flag_type=int, multiple=True,
    ),
    Setting(
        "CACHE_SIZE", parse_size,
        "File cache limit in bytes (`5G`, `500M` also accepted); 0 stores no files.",
        default=DEFAULT_CACHE_SIZE, shown_default=f"{DEFAULT_CACHE_SIZE} (5 GiB)",
    ),
    Setting(
        "PAGE_MEMORY", parse_size,
        "Memory each worker process keeps index pages in, estimated (`64M` also accepted);"
        " the least recently used beyond it are read again from the store.",
        default=DEFAULT_PAGE_MEMORY, shown_default=f"{DEFAULT_PAGE_MEMORY} (64 MiB)",
        meaning="Memory each worker process keeps index pages in, estimated (`64M` also"
        " accepted): small records of many pages (their versions, validators and freshness),"
        " and the files of fewer; the least recently used beyond it are read again from the"
        " store. Rendered pages are files in the cache directory, not in memory.",
    ),
    Setting(
        "DOWNLOADS_PER_INDEX", parse_positive,
        "Uncached files downloading from one index at once, per process; more wait.",
        default=48, flag_type=int,
        meaning="Uncached files downloading from one index at once, per process; more wait"
        " up to `DOWNLOAD_WAIT`, then get 503 with `Retry-After`.",
    ),
    Setting(
        "DOWNLOADS_PER_CLIENT", parse_ttl,
        "Uncached files one client address may have downloading at once, per process"
        " (0: no limit); more wait.",
        default=24, flag_type=int,
        meaning="Downloads one client address started that still run (also after it hung up),"
        " per process; more wait up to `DOWNLOAD_WAIT`, then get 503. Behind a reverse proxy"
        " all clients have the proxy's address: raise it, or 0 for no limit.",
    ),
    Setting(
        "DOWNLOAD_WAIT", parse_seconds,
        "Seconds a miss waits for a download slot before 503 with `Retry-After`.",
        default=30.0, flag_type=float,
    ),
    Setting(
        "CACHE_DIR", parse_directory, "Directory for the database and the files.",
        compute=lambda env: default_cache_dir(),
        shown_default="`$XDG_CACHE_HOME/cachepi`, else `~/.cache/cachepi`",
    ),
    Setting(
        "BINARY_FILE_MIME_TYPE", parse_bool, "Send every file as `application/octet-stream`.",
        default=False,
    ),
    Setting(
        "DISABLE_INDEX_SSL_VERIFICATION", parse_bool, "Do not verify upstream TLS certificates.",
        default=False,
    ),
    Setting(
        "CONNECT_TIMEOUT", parse_seconds, "Seconds to connect to an upstream.",
        default=3.1, flag_type=float,
    ),
    Setting(
        "READ_TIMEOUT", parse_seconds, "Seconds to wait for each read from an upstream.",
        default=20.0, flag_type=float,
    ),
    Setting(
        "DOWNLOAD_TIMEOUT", parse_seconds,
        "Accepted for proxpi compatibility; unused (cachepi streams, never redirects).",
        default=0.9, flag_type=float,
    ),
    Setting(
        "NEGATIVE_TTL", parse_ttl, "Seconds an upstream 404 is remembered (at most the index TTL).",
        default=60, flag_type=int,
    ),
    Setting(
        "STALE_WHILE_REVALIDATE", parse_ttl,
        "Seconds past its TTL an upstream page is still answered at once, marked stale, while"
        " one revalidation runs in the background; a page asked for near its expiry is then"
        " refreshed ahead of it. 0: every stale page waits for the upstream.",
        default=86400, flag_type=int,
        meaning="Seconds past its TTL an upstream page is still answered at once (marked"
        " `X-Cachepi-Stale: 1`, `Cache-Control: no-cache`) while one revalidation runs in the"
        " background; with it, a page asked for in the last fifth of its TTL (at least 10 s"
        " before, at most half of it) is refreshed in the background so that a page in use"
        " never goes stale. Never for 404s, invalidated pages or an index whose TTL is 0."
        " 0: every stale page waits for the upstream.",
    ),
    Setting(
        "PAGE_MAX_AGE", parse_ttl, "`Cache-Control: max-age` given to clients for index pages.",
        default=600, flag_type=int,
    ),
    Setting(
        "WORKERS", parse_workers, "Processes serving the port, sharing one cache.",
        compute=lambda env: len(os.sched_getaffinity(0)),
        shown_default="the number of usable cores", flag_type=int,
    ),
    Setting("HOST", str.strip, "Address to listen on.", default="127.0.0.1"),
    Setting("PORT", parse_port, "Port to listen on.", default=5000, flag_type=int),
    Setting(
        "OFFLINE", parse_bool,
        "Never contact an upstream: serve what is cached (stale pages too), 503 otherwise.",
        default=False,
    ),
    Setting(
        "FILE_HOSTS", parse_hosts,
        "Hosts that file URLs on upstream pages (and their redirects) may point to,"
        " comma-separated; these may be private addresses.",
        shown_default="any",
    ),
    Setting(
        "UPSTREAM_CONNECTIONS", parse_positive,
        "At most this many connections to upstreams at once for file downloads, and as many"
        " for pages (so pages never wait behind downloads); a download waits at most"
        " `READ_TIMEOUT` for one.",
        default=64, flag_type=int,
    ),
    _choice(
        "UPSTREAM_PRIVATE_ADDRESSES", ("deny", "allow"),
        "Whether file URLs and redirects may reach loopback, private, link-local and other"
        " non-public addresses beyond the index's own origin and `FILE_HOSTS`: `deny` or"
        " `allow`.",
        meaning="Whether file URLs on upstream pages, and redirects, may reach loopback,"
        " private (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7), link-local, multicast"
        " and other non-public addresses: `deny` refuses them (checked on the address"
        " connected to, so a name resolving there is refused too) except on the index's own"
        " origin and the hosts of `FILE_HOSTS`; `allow` lets an upstream page send cachepi"
        " anywhere on your network.",
    ),
    Setting(
        "PAGE_TIMEOUT", parse_seconds,
        "Seconds an upstream page fetch may take in all, retries included; then the stale"
        " copy is served, else 504.",
        default=10.0, flag_type=float,
    ),
    Setting(
        "MAX_PAGE_BYTES", parse_size,
        "Largest upstream page, decoded (`256M` also accepted; a compressed page may have a"
        " quarter of it on the wire); a bigger one fails, and the stale copy is served.",
        default=256 * 1024**2, shown_default=f"{256 * 1024**2} (256 MiB)",
    ),
    Setting(
        "CLIENT_TIMEOUT", parse_seconds,
        "Seconds a client may take to accept what it is sent before it is dropped.",
        default=60.0, flag_type=float,
    ),
    Setting(
        "HEAD_TIMEOUT", parse_seconds,
        "Seconds a client has to send a complete request head, from connecting (over TLS,"
        " from the end of the handshake, which has as long) or from the first byte of its"
        " next request on a kept-alive connection.",
        default=10.0, flag_type=float,
    ),
    Setting(
        "KEEPALIVE_TIMEOUT", parse_seconds,
        "Seconds a kept-alive client connection may stay idle between requests.",
        default=15.0, flag_type=float,
    ),
    Setting(
        "CLIENT_CONNECTIONS", parse_positive,
        "At most this many client connections per worker; this may only lower the cap"
        " derived from the descriptor limit.",
        shown_default="from the descriptor limit", flag_type=int,
        meaning="At most this many client connections per worker. The default is derived"
        " from the descriptor limit (`RLIMIT_NOFILE`, whose soft limit cachepi raises to the"
        " hard one): half of what is left after twice `UPSTREAM_CONNECTIONS` and 192 more,"
        " e.g. 352 for 1024 descriptors; this setting may only lower it. At the cap, the connection"
        " that has waited longest for a request head is closed; one in the middle of a"
        " request never is.",
    ),
    Setting(
        "ADMIN_TOKEN", parse_token,
        "When set, invalidation needs the token (16+ characters) in `X-Cachepi-Admin-Token:"
        " <token>`, or `Authorization: Bearer <token>` when `HTPASSWD` is not set.",
        in_errors="hidden",
    ),
    Setting(
        "HTPASSWD", parse_readable_file,
        "A file of `user:hash` lines (bcrypt or argon2): every endpoint but `/health` then"
        " needs basic auth, and every response is `Cache-Control: private`.",
        meaning="A file of `user:hash` lines (bcrypt or argon2), reread when it changes:"
        " every endpoint then needs basic auth (`/health` without it says only ok or"
        " degraded), every response is `Cache-Control: private`, failed attempts are"
        " limited (429), and while the file cannot be read everyone gets 503; see"
        " [docs/security.md](docs/security.md).",
    ),
    Setting(
        "CONFIG", parse_path,
        "A TOML file of settings (kebab-case), indexes, routes and policy; flags and the"
        " environment win over it.",
        meaning="A TOML file with any of these settings (kebab-case) plus indexes, routes and"
        " policy, see below; flags and the environment win over it.",
    ),
    _choice(
        "COMBINE", ("merge", "first"), "How a project's indexes are combined: `merge` or `first`.",
    ),
    Setting(
        "MIN_RELEASE_AGE", parse_duration,
        "Release cooldown: hide files uploaded less than this long ago (`7d`, `12h`, `30m`,"
        " seconds).",
        default=0, shown_default="0 (off)",
    ),
    Setting(
        "COOLDOWN_EXEMPT", parse_globs,
        "Project name globs the cooldown does not apply to, comma-separated.",
        default=(),
    ),
    _choice(
        "UNKNOWN_UPLOAD_TIME", ("show", "hide"),
        "With a cooldown, files whose index gives no upload time: `show` or `hide`.",
    ),
    _choice(
        "UPLOAD_TIMES", ("last-modified", "index"),
        "Upload times of files whose index gives none: the upstream's Last-Modified when a"
        " file is first fetched (`last-modified`, best effort) or none (`index`).",
        meaning="Upload times of files whose index gives none (PEP 700, for uv's"
        " `--exclude-newer`): the upstream's Last-Modified when cachepi first fetches the"
        " file (`last-modified`, best effort: see [docs/simple-api.md](docs/simple-api.md))"
        " or none (`index`). The cooldown uses the index's own times only.",
    ),
    Setting(
        "DENY", parse_rules,
        "Policy rules, `;`-separated: projects, `project<specifier>` or files to refuse.",
        default=(), meaning="Policy rules, `;`-separated (see below).",
    ),
    Setting(
        "ALLOW", parse_allow,
        "When set, only projects (and versions) these rules name are served; `;`-separated.",
    ),
    Setting(
        "STORAGE", parse_storage,
        "`s3://BUCKET/PREFIX`: a cluster's blobs in an S3-compatible store (needs `REDIS_URL`).",
        shown_default="`local`", in_errors="redacted",
    ),
    Setting(
        "S3_ENDPOINT", parse_url, "The store's URL, e.g. `http://minio:9000`.",
        compute=lambda env: env.get("AWS_ENDPOINT_URL"),
        shown_default="`AWS_ENDPOINT_URL`, else AWS",
        meaning="The store's URL, e.g. `http://minio:9000`; credentials from"
        " `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, region from `AWS_REGION`.",
        in_errors="redacted",
    ),
    _choice(
        "S3_SERVE", ("stream", "redirect"),
        "Cached files go through the node (`stream`) or by a 307 to a presigned URL"
        " (`redirect`).",
    ),
    Setting(
        "REDIS_URL", parse_redis_url,
        "`redis://HOST:PORT/DB`: a cluster's metadata and locks (needs `STORAGE`).",
        in_errors="redacted",
    ),
    Setting(
        "NODE_ID", parse_name, "This node's name in `/health` and in its locks.",
        compute=lambda env: default_node_id(), shown_default="host-pid",
    ),
    Setting(
        "CERTFILE", parse_readable_file,
        "Serve HTTPS with this certificate (chain), PEM; needs `KEYFILE`.",
    ),
    Setting(
        "KEYFILE", parse_readable_file, "The certificate's private key, PEM; needs `CERTFILE`."
    ),
    _choice(
        "ACCESS_LOG", ("text", "json", "off"),
        "One line per request on stderr: `text`, `json` (one object per line) or `off`.",
        meaning="One line per request on stderr: `text`, `json` (one object per line) or `off`;"
        " both give time, client, pid, request, status, body bytes, seconds and the cache"
        " result (`hit`, `miss`, `stale`, `-`).",
    ),
)  # fmt: skip

SETTING: Mapping[str, Setting] = {setting.name: setting for setting in SETTINGS}
