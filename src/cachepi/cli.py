"""Command line: `cachepi serve|warm|stats|purge|verify|gc` (and `python -m cachepi`).

Exit codes, for scripts: 0 done; 1 done, but something was wrong (corrupt files removed, a
warm target failed); 2 the command could not run (bad option, no cache, no proxy), with one
line on stderr.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from cachepi import maintenance, workers
from cachepi.config import SETTING, SETTINGS, ConfigError, Setting, Settings, load_settings
from cachepi.redact import redact
from cachepi.simple.names import is_valid_project_name, normalize
from cachepi.warm import reachable, targets, warm_target
from cachepi.web.dashboard import human

DEFAULT_PROXY = "http://127.0.0.1:5000/index/"


def fail(message: str) -> NoReturn:
    """One line on stderr and exit code 2: what scripts and people both read easily."""
    click.echo(f"cachepi: error: {message}", err=True)
    sys.exit(2)


def settings_from(flags: dict[str, Any]) -> Settings:
    try:
        return load_settings(flags)
    except ConfigError as error:
        fail(str(error))


# A word with an @ in a usage error may be a URL in the wrong place, password and all.
_AT_WORD = re.compile(r"""[^\s'"()]*@[^\s'"()]*""")


class _OneLineErrors(click.Group):
    """Usage errors as one `cachepi: error:` line with exit code 2, like every other."""

    def main(self, *args: Any, **kwargs: Any) -> NoReturn:
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.ClickException as error:
            fail(_AT_WORD.sub(lambda word: redact(word[0]), error.format_message()))
        except click.Abort:
            fail("aborted")
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cachepi")
def main() -> None:
    """cachepi: a caching proxy for Python package indexes.

    Every option of `serve` can also be set in the environment as CACHEPI_<NAME> or, as for
    proxpi, PROXPI_<NAME> (e.g. CACHEPI_INDEX_URL), or in the --config TOML file; a flag
    wins over CACHEPI_, which wins over PROXPI_, which wins over the file.

    Exit codes: 0 done; 1 done but something was wrong; 2 could not run.
    """


def setting_options(*settings: Setting) -> Callable[[Any], Any]:
    """A command's flags for these settings, in this order, as the schema describes them.

    An unset flag stays None (a repeatable one, empty), so the environment and the TOML file
    can give the setting instead.
    """

    def add(command: Any) -> Any:
        for setting in reversed(settings):  # click lists options in decorator order
            text = setting.help
            if not setting.is_flag and setting.default_text != "none":
                text += f"  [default: {setting.default_text}]"
            # The backticks that mark code are for the README.
            options: dict[str, Any] = {"help": text.replace("`", ""), "multiple": setting.multiple}
            if setting.is_flag:
                options.update(is_flag=True, default=None)
            elif setting.choices:
                options["type"] = click.Choice(setting.choices)
            elif setting.flag_type is not None:
                options["type"] = setting.flag_type
            command = click.option(setting.flag, setting.name.lower(), **options)(command)
        return command

    return add


# Where a command finds the cache.
cache_options = setting_options(SETTING["CACHE_DIR"], SETTING["CACHE_SIZE"], SETTING["CONFIG"])


@main.command()
@setting_options(*SETTINGS)
@click.option("--log-level", default="INFO", show_default=True)
def serve(log_level: str, **flags: Any) -> None:
    """Run the proxy."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run(settings_from(flags))


def run(settings: Settings) -> None:
    try:
        settings.cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        fail(f"cache directory {settings.cache_dir}: {error.strerror}")
    try:
        workers.tls_context(settings)
    except (OSError, ssl.SSLError) as error:
        fail(f"--certfile/--keyfile: {error}")
    scheme = "https" if settings.certfile else "http"
    try:
        # Before the first log line, so that a refusal is one line.
        workers.check_port(settings.host, settings.port)
        logging.getLogger(__name__).info(
            "cachepi on %s://%s:%d/index/ -> %s (%d worker%s)",
            scheme,
            settings.host,
            settings.port,
            ", ".join(redact(up.url) for up in settings.upstreams),
            settings.workers,
            "" if settings.workers == 1 else "s",
        )
        workers.serve(settings)
    except OSError as error:  # another server listens on the port; the host is unknown
        fail(f"cannot serve on {settings.host}:{settings.port}: {error.strerror or error}")


@main.command()
@click.option(
    "-r", "--requirement", "requirements", required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A requirements file, as pip takes it.",
)  # fmt: skip
@click.option(
    "--index-url", default=DEFAULT_PROXY, show_default=True, help="The running proxy's index."
)
@click.option("--python-version", multiple=True, help="Also for this Python (repeatable): 3.12")
@click.option(
    "--platform", multiple=True, help="Also for this platform (repeatable): manylinux_2_17_x86_64"
)
@click.option("--cert", help="CA bundle to trust the proxy's HTTPS certificate with.")
def warm(
    requirements: Path,
    index_url: str,
    python_version: tuple[str, ...],
    platform: tuple[str, ...],
    cert: str | None,
) -> None:
    """Fill the proxy's cache with every file REQUIREMENTS need.

    pip resolves and downloads through the proxy (once per Python version x platform given;
    none given: for this interpreter); the downloads are thrown away, the proxy keeps them.
    Exit code 1 if pip failed for some target.
    """
    if not asyncio.run(reachable(index_url, cert)):
        fail(f"no proxy answers at {redact(index_url)}")
    console = Console(stderr=True)
    planned = targets(python_version, platform)
    results = []
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[dim]{task.fields[line]}"),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("warming", total=len(planned), line="")
        for target in planned:
            bar.update(task, description=f"warming for {target}")
            result = warm_target(
                requirements,
                index_url,
                target,
                cert,
                lambda line: bar.update(task, line=line.strip()[:60]),
            )
            results.append(result)
            bar.advance(task)
    for result in results:
        if result.error is not None:
            console.print(f"[red]pip failed for {result.target}:[/]\n{result.error}")
    files = sum(r.files for r in results)
    size = sum(r.bytes for r in results)
    click.echo(f"warmed {files} files ({size} bytes) for {len(results)} target(s)")
    sys.exit(1 if any(r.error is not None for r in results) else 0)


@main.command()
@cache_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
def stats(as_json: bool, **flags: Any) -> None:
    """Cache usage, hit ratio and the biggest projects."""
    settings = settings_from(flags)
    try:
        report = asyncio.run(maintenance.stats(settings))
    except maintenance.NoCache as error:
        fail(str(error))
    if as_json:
        click.echo(json.dumps(report))
        return
    console = Console()
    ratio = report["hit_ratio"]
    pages, served, sent = report["pages"], report["files_served"], report["bytes_served"]
    console.print(
        f"{report['files']} files, {human(report['bytes'])} of {human(report['limit'])}\n"
        f"hit ratio: {'no traffic yet' if ratio is None else f'{ratio:.1%}'}\n"
        f"pages: {pages['hit']} hits, {pages['miss']} misses, {pages['stale']} stale\n"
        f"files: {served['hit']} hits, {served['miss']} misses\n"
        f"served {human(sent['cache'])} from the cache, {human(sent['upstream'])} from upstream"
    )
    table = Table("project", "files", "size", title="biggest projects")
    for row in report["top_projects"]:
        table.add_row(row["project"], str(row["files"]), human(row["bytes"]))
    console.print(table)


@main.command()
@cache_options
@click.argument("projects", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Purge every project.")
@click.option("--pages-only", is_flag=True, help="Keep the files; remove only index pages.")
@click.option("--files-only", is_flag=True, help="Keep the index pages; remove only files.")
def purge(
    projects: tuple[str, ...],
    everything: bool,
    pages_only: bool,
    files_only: bool,
    **flags: Any,
) -> None:
    """Remove PROJECTS' cached index pages and files (or everything's, with --all).

    Safe while a server runs on the cache: it fetches again what it needs.
    """
    if bool(projects) == everything:
        fail("name projects to purge, or give --all")
    if pages_only and files_only:
        fail("--pages-only and --files-only exclude each other")
    if bad := [p for p in projects if not is_valid_project_name(p)]:
        fail(f"{bad[0]!r} is not a valid project name")
    settings = settings_from(flags)
    names = None if everything else sorted({normalize(p) for p in projects})
    try:
        done = asyncio.run(maintenance.purge(settings, names, not files_only, not pages_only))
    except maintenance.NoCache as error:
        fail(str(error))
    click.echo(f"removed {done.pages} pages and {done.files} files ({human(done.bytes)})")


@main.command()
@cache_options
def verify(**flags: Any) -> None:
    """Re-hash every stored file; remove those that do not match.

    Exit code 0: every file verified; 1: some were corrupt and have been removed.
    """
    settings = settings_from(flags)
    try:
        total = asyncio.run(maintenance.stored_bytes(settings))
    except maintenance.NoCache as error:
        fail(str(error))
    with Progress(
        TextColumn("verifying"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("verify", total=total)
        report = asyncio.run(maintenance.verify(settings, lambda n: bar.advance(task, n)))
    for sha256 in report.removed:
        click.echo(f"removed {sha256}: its bytes do not match its sha256")
    click.echo(
        f"{report.checked} files ({report.bytes} bytes) checked, {len(report.removed)} removed"
    )
    sys.exit(1 if report.removed else 0)


@main.command()
@cache_options
def gc(**flags: Any) -> None:
    """Tidy the cache: remove leftovers of unfinished downloads and renderings, make the
    records match the files on disk, evict down to the cache size (rendered pages down to
    their share of it), and forget upstream 404s older than the negative TTL. Safe while a
    server runs."""
    settings = settings_from(flags)
    try:
        done = asyncio.run(maintenance.gc(settings))
    except maintenance.NoCache as error:
        fail(str(error))
    click.echo(
        f"removed {done.temp_files} leftover temp files and rendered pages beyond their room;"
        f" recorded {done.recorded} unrecorded "
        f"files; dropped {done.forgotten} records of missing files; evicted {done.evicted} files; "
        f"forgot {done.missing_pages} stale upstream 404s"
    )


if __name__ == "__main__":
    main()
