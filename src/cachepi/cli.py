"""Command line: `cachepi serve` (and `python -m cachepi`)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from cachepi import workers
from cachepi.config import ConfigError, Settings, load_settings
from cachepi.upstream import redact
from cachepi.verify import total_bytes, verify_cache


def fail(message: str) -> None:
    """One line on stderr and exit code 2: what scripts and people both read easily."""
    click.echo(f"cachepi: error: {message}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """cachepi: a caching proxy for Python package indexes.

    Every option can also be set in the environment as CACHEPI_<NAME> or, as for proxpi,
    PROXPI_<NAME> (e.g. CACHEPI_INDEX_URL); a flag wins over CACHEPI_, which wins over
    PROXPI_.
    """


@main.command()
@click.option("--host", help="Address to listen on.  [default: 127.0.0.1]")
@click.option("--port", type=int, help="Port to listen on.  [default: 5000]")
@click.option(
    "--cache-dir", help="Directory for the database and files.  [default: ~/.cache/cachepi]"
)
@click.option("--cache-size", help="File cache limit in bytes (or 5G, 500M); 0 stores nothing.")
@click.option("--index-url", help="Upstream index.  [default: pip's default index]")
@click.option(
    "--index-ttl", type=int, help="Seconds an upstream page stays fresh.  [default: 1800]"
)
@click.option(
    "--extra-index-urls", multiple=True, help="Another upstream index (repeatable), merged in."
)
@click.option(
    "--extra-index-ttls", multiple=True, type=int, help="TTL for each extra index, in order."
)
@click.option("--connect-timeout", type=float, help="Upstream connect timeout, seconds.")
@click.option("--read-timeout", type=float, help="Upstream read timeout, seconds.")
@click.option("--page-max-age", type=int, help="Cache-Control max-age of index pages.")
@click.option(
    "--workers", type=int, help="Worker processes sharing the port and cache.  [default: cores]"
)
@click.option(
    "--offline", is_flag=True, default=None, help="Never contact upstreams; serve the cache."
)
@click.option("--file-hosts", help="Only download files from these hosts (comma-separated).")
@click.option("--upstream-connections", type=int, help="Cap on upstream connections.")
@click.option(
    "--config", help="TOML file: settings, [[index]] tables, [[route]]s and policy rules."
)
@click.option("--combine", type=click.Choice(["merge", "first"]), help="How indexes combine.")
@click.option("--min-release-age", help="Hide files uploaded more recently (7d, 12h, 30m).")
@click.option("--log-level", default="INFO", show_default=True)
def serve(log_level: str, **flags: Any) -> None:
    """Run the proxy."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = load_settings(flags)
    except ConfigError as error:
        fail(str(error))
    run(settings)


@main.command()
@click.option("--cache-dir", help="The cache to check.  [default: as for serve]")
def verify(**flags: Any) -> None:
    """Re-hash every stored file; remove those that do not match.

    Exit code 0: every file verified; 1: some were corrupt and have been removed.
    """
    try:
        settings = load_settings(flags)
    except ConfigError as error:
        fail(str(error))
    if not (settings.cache_dir / "cachepi.sqlite3").is_file():
        fail(f"no cache at {settings.cache_dir}")
    with Progress(
        TextColumn("verifying"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("verify", total=total_bytes(settings.cache_dir))
        report = verify_cache(
            settings.cache_dir, settings.cache_size, lambda n: bar.advance(task, n)
        )
    for sha256 in report.removed:
        click.echo(f"removed {sha256}: its bytes do not match its sha256")
    click.echo(
        f"{report.checked} files ({report.bytes} bytes) checked, {len(report.removed)} removed"
    )
    sys.exit(1 if report.removed else 0)


def run(settings: Settings) -> None:
    try:
        settings.cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        fail(f"cache directory {settings.cache_dir}: {error.strerror}")
    logging.getLogger(__name__).info(
        "cachepi on http://%s:%d/index/ -> %s (%d worker%s)",
        settings.host,
        settings.port,
        ", ".join(redact(up.url) for up in settings.upstreams),
        settings.workers,
        "" if settings.workers == 1 else "s",
    )
    try:
        workers.serve(settings)
    except OSError as error:  # e.g. the port is taken
        fail(f"cannot serve on {settings.host}:{settings.port}: {error.strerror or error}")


if __name__ == "__main__":
    main()
