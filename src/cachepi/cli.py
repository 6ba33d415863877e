"""Command line: `cachepi serve|warm|stats|purge|verify|gc` (and `python -m cachepi`).

Exit codes, for scripts: 0 done; 1 done, but something was wrong (corrupt files removed, a
file to warm could not be had); 2 the command could not run (bad option, no cache, no
proxy, a malformed lock), with one line on stderr.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import ssl
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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
from cachepi.store.protocols import StoreUnavailable
from cachepi.warm.client import Unusable, warm_remotely
from cachepi.warm.local import local_proxy, warm_locally
from cachepi.warm.lockfiles import Format, Lock, LockError, decode, read_lock
from cachepi.warm.narrowing import Narrowing, NarrowingError
from cachepi.warm.pip import reachable, targets, warm_target
from cachepi.warm.report import Report
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
@click.argument("paths", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-r", "--requirement", "requirements", multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A requirements file, as pip takes it (the same as naming it).",
)  # fmt: skip
@click.option("--index-url", help=f"The running proxy's index.  [default: {DEFAULT_PROXY}]")
@cache_options
@click.option("--python-version", multiple=True, help="Only for this Python (repeatable): 3.12")
@click.option(
    "--platform", multiple=True, help="Only for this platform (repeatable): manylinux_2_17_x86_64"
)
@click.option(
    "--implementation", multiple=True, help="Only for this implementation (repeatable): cp, pp"
)
@click.option("--only-wheels", is_flag=True, help="No sdists.")
@click.option("--cert", help="CA bundle to trust the proxy's HTTPS certificate with.")
@click.option(
    "--admin-token", envvar="CACHEPI_ADMIN_TOKEN", show_envvar=True,
    help="The proxy's admin token, when it has one (for locks).",
)  # fmt: skip
def warm(
    paths: tuple[Path, ...],
    requirements: tuple[Path, ...],
    index_url: str | None,
    python_version: tuple[str, ...],
    platform: tuple[str, ...],
    implementation: tuple[str, ...],
    only_wheels: bool,
    cert: str | None,
    admin_token: str | None,
    **flags: Any,
) -> None:
    """Fill the cache with the files PATHS name: uv.lock, pylock.toml, poetry.lock,
    pdm.lock, Pipfile.lock, requirements files.

    A lock's files are fetched as it lists them, every platform's unless --platform,
    --python-version, --implementation or --only-wheels narrow it; requirements without
    hashes are resolved by pip, downloading through the proxy for each Python x platform x
    implementation given (none: this interpreter). By default a running proxy does it
    (--index-url); with --cache-dir (or --config) this command does it on that cache, with
    the upstreams of the server's settings (environment, --config).

    Exit code 1 if some file could not be had, 2 if nothing could be done.
    """
    named = [*paths, *requirements]
    if not named:
        fail("name a lock or requirements file to warm")
    try:
        narrowing = Narrowing(platform, python_version, implementation, only_wheels)
    except NarrowingError as error:
        fail(str(error))
    locks = [_read_lock(path) for path in named]  # every file checked before any work
    on_cache = any(value not in (None, ()) for value in flags.values())
    if on_cache and index_url is not None:
        fail("--index-url names a running proxy, --cache-dir a cache: give one or the other")
    console = Console(stderr=True)
    if on_cache:
        ok = asyncio.run(_warm_cache(settings_from(flags), locks, narrowing, console))
    else:
        proxy = _Proxy(index_url or DEFAULT_PROXY, cert, admin_token)
        ok = asyncio.run(_warm_proxy(proxy, locks, narrowing, console))
    sys.exit(0 if ok else 1)


@dataclass(frozen=True)
class _Named:
    """A file to warm, read and recognised."""

    path: Path
    data: bytes
    lock: Lock

    @property
    def resolved(self) -> bool:
        """Whether it names files (a lock), not projects (plain requirements)."""
        return self.lock.format is not Format.REQUIREMENTS


@dataclass(frozen=True)
class _Proxy:
    index_url: str
    cafile: str | None
    token: str | None


def _read_lock(path: Path) -> _Named:
    try:
        data = path.read_bytes()
        return _Named(path, data, read_lock(path.name, decode(path.name, data)))
    except OSError as error:
        fail(f"cannot read {path}: {error.strerror}")
    except LockError as error:
        fail(str(error))


async def _warm_proxy(
    proxy: _Proxy, named: list[_Named], narrowing: Narrowing, console: Console
) -> bool:
    if not all(n.resolved for n in named) and not await reachable(proxy.index_url, proxy.cafile):
        fail(f"no proxy answers at {redact(proxy.index_url)}")
    ok = True
    for one in named:
        if not one.resolved:
            ok &= await _pip_downloads(one.path, proxy.index_url, proxy.cafile, narrowing, console)
            continue
        job = functools.partial(
            warm_remotely, proxy.index_url, one.path.name, one.data, narrowing, proxy.token,
            proxy.cafile,
        )  # fmt: skip
        try:
            ok &= (await _show_job(one.path.name, console, job)).ok
        except Unusable as error:
            fail(str(error))
    return ok


async def _warm_cache(
    settings: Settings, named: list[_Named], narrowing: Narrowing, console: Console
) -> bool:
    ok = True
    try:
        async with local_proxy(settings, listen=not all(n.resolved for n in named)) as proxy:
            for one in named:
                if not one.resolved:
                    assert proxy.index_url is not None
                    ok &= await _pip_downloads(one.path, proxy.index_url, None, narrowing, console)
                    continue
                job = functools.partial(
                    warm_locally, proxy.jobs, one.lock, narrowing, one.path.name
                )
                ok &= (await _show_job(one.path.name, console, job)).ok
    except (OSError, StoreUnavailable) as error:
        fail(f"cannot warm {settings.cache_dir}: {error}")
    return ok


async def _show_job(
    source: str,
    console: Console,
    run: Callable[[Callable[[Report], None]], Awaitable[Report]],
) -> Report:
    """Run a lock's job with a progress display, then print what it did."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[files]}"),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(source, total=None, files="")

        def show(report: Report) -> None:
            reading = report.pages_read < report.projects
            bar.update(
                task,
                description=f"{source}: pages {report.pages_read}/{report.projects}"
                if reading
                else source,
                completed=report.done_bytes,
                total=report.bytes or None,
                files=f"{report.done_files}/{report.files} files",
            )

        report = await run(show)
    _summarize(report)
    return report


def _summarize(report: Report) -> None:
    took = (report.finished or report.updated) - report.created
    click.echo(
        f"{report.source}: {report.files} file{'' if report.files == 1 else 's'}"
        f" ({human(report.bytes)}): {report.cached} cached,"
        f" {report.already} already there, {report.failed} failed in {took:.1f} s"
    )
    for failure in report.failures:
        click.echo(f"  failed: {failure.file}: {failure.reason}")
    if report.failed > len(report.failures):
        click.echo(f"  and {report.failed - len(report.failures)} more failed")
    if report.skipped:
        click.echo(f"  not from an index, skipped: {', '.join(report.skipped)}")
    if report.error is not None:
        click.echo(f"  the job failed: {report.error}")


async def _pip_downloads(
    path: Path, index_url: str, cafile: str | None, narrowing: Narrowing, console: Console
) -> bool:
    """pip downloads `path`'s requirements through the proxy, once per target."""
    planned = targets(
        narrowing.python_versions,
        narrowing.platforms,
        narrowing.implementations,
        narrowing.only_wheels,
    )
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
            # On a thread: the proxy may be this process's (--cache-dir).
            result = await asyncio.to_thread(
                warm_target,
                path,
                index_url,
                target,
                cafile,
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
    return not any(r.error is not None for r in results)


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
