"""The operator commands: `cachepi warm`, `stats`, `purge`, `gc` (and serve's config errors),
run as real subprocesses against real proxies and real cache directories."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.clients import isolated_env, pip_install
from tests.conftest import ProxyFactory
from tests.fakeupstream import Dist, FakeUpstream
from tests.fetching import fetch, get_json
from tests.proxy import RunningProxy
from tests.served import ServedProxy
from tests.warming import add_native, pylock

COMMANDS = ("serve", "warm", "stats", "purge", "verify", "gc")
LOCK_SUMMARY_RE = re.compile(
    r"(\S+): (\d+) files? \(.*\): (\d+) cached, (\d+) already there, (\d+) failed in [\d.]+ s"
)
TOKEN = "warm-admin-token-0123456789"
TWO_PLATFORMS = ("--platform", "manylinux_2_17_x86_64", "--platform", "macosx_11_0_arm64")
SUMMARY_RE = re.compile(r"warmed (\d+) files \((\d+) bytes\) for (\d+) target(?:\(s\)|s)?")


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def error_line(self) -> str:
        """The one line a usage or configuration error writes on stderr."""
        lines = self.stderr.strip().splitlines()
        assert len(lines) == 1, self.stderr
        assert lines[0].startswith("cachepi: error: "), self.stderr
        return lines[0]


async def cachepi(
    *args: str | Path, home: Path, env: dict[str, str] | None = None, seconds: float = 120
) -> Ran:
    """`python -m cachepi ARGS` with stdout and stderr apart."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cachepi", *map(str, args),
        env=isolated_env(home) | (env or {}), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), seconds)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Ran(process.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace"))


def wheel_of(upstream: FakeUpstream, project: str, version: str) -> Dist:
    (wheel,) = (
        d for d in upstream.dists(project) if d.is_wheel and d.version == version
    )  # fmt: skip
    return wheel


def blob_path(cache_dir: Path, sha256: str) -> Path:
    return cache_dir / "blobs" / sha256[:2] / sha256


def app_tree(upstream: FakeUpstream) -> list[Dist]:
    """What `pip download app` fetches from the default tree: the newest wheels."""
    return [
        wheel_of(upstream, "app", "1.0"),
        wheel_of(upstream, "lib", "1.1"),
        wheel_of(upstream, "util-pkg", "0.5"),
    ]


def wheels_under(directory: Path) -> list[Path]:
    return list(directory.rglob("*.whl"))


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, "no output"
    return lines[-1].strip()


async def stats_json(cache_dir: Path, home: Path, cache_size: int | None = None) -> dict[str, Any]:
    """`stats --json`; `cache_size`: the limit the server had (a setting, like CACHEPI_CACHE_SIZE
    for `serve`: the cache directory does not hold it)."""
    env = {} if cache_size is None else {"CACHEPI_CACHE_SIZE": str(cache_size)}
    ran = await cachepi("stats", "--cache-dir", cache_dir, "--json", home=home, env=env)
    assert ran.returncode == 0, ran.output
    result = json.loads(ran.stdout)
    assert isinstance(result, dict)
    return result


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


@pytest.fixture
def requirements(tmp_path: Path) -> Path:
    path = tmp_path / "requirements.txt"
    path.write_text("app\n")
    return path


# -- the command group -------------------------------------------------------------------


async def test_help_lists_every_command(home: Path) -> None:
    ran = await cachepi("--help", home=home)
    assert ran.returncode == 0, ran.output
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\b", ran.stdout, re.MULTILINE), (command, ran.stdout)


# -- warm --------------------------------------------------------------------------------


@pytest.mark.slow  # real pip runs
async def test_warm_fills_the_cache_for_a_later_install_without_upstream(
    fake_upstream: FakeUpstream, proxy: RunningProxy, requirements: Path, home: Path, tmp_path: Path
) -> None:
    temp = tmp_path / "temp"
    temp.mkdir()
    ran = await cachepi(
        "warm", "-r", requirements, "--index-url", proxy.index_url,
        home=home, env={"TMPDIR": str(temp)},
    )  # fmt: skip
    assert ran.returncode == 0, ran.output
    match = SUMMARY_RE.fullmatch(last_line(ran.stdout))
    assert match, ran.output
    wheels = app_tree(fake_upstream)
    assert [int(g) for g in match.groups()] == [3, sum(w.size for w in wheels), 1]
    for wheel in wheels:
        assert fake_upstream.count(fake_upstream.file_path(wheel.filename)) == 1, wheel
        assert blob_path(proxy.settings.cache_dir, wheel.sha256).is_file(), wheel
    assert not wheels_under(temp), "the download dir was left behind"
    assert not wheels_under(home), "pip kept a cache"

    await fake_upstream.stop()
    target = tmp_path / "target"
    installed = await pip_install(proxy.index_url, target, "app", home=home)
    installed.check()
    for name in ("app-1.0", "lib-1.1", "util_pkg-0.5"):
        assert (target / f"{name}.dist-info").is_dir(), (name, sorted(target.iterdir()))


@pytest.mark.slow  # real pip runs
@pytest.mark.parametrize(
    "targets",
    [
        ["--python-version", "3.11", "--python-version", "3.12"],
        ["--python-version", "3.11", *TWO_PLATFORMS],
    ],
    ids=["two-pythons", "two-platforms"],
)
async def test_warm_once_per_target(
    targets: list[str],
    fake_upstream: FakeUpstream,
    proxy: RunningProxy,
    requirements: Path,
    home: Path,
) -> None:
    ran = await cachepi(
        "warm", "-r", requirements, "--index-url", proxy.index_url, *targets, home=home
    )
    assert ran.returncode == 0, ran.output
    match = SUMMARY_RE.fullmatch(last_line(ran.stdout))
    assert match, ran.output
    assert int(match[3]) == 2
    assert int(match[1]) >= 3
    # Both targets asked the proxy, which downloaded each file once.
    assert sum(s.path.endswith(".whl") for s in proxy.seen) >= 6
    for wheel in app_tree(fake_upstream):
        assert fake_upstream.count(fake_upstream.file_path(wheel.filename)) == 1, wheel


async def test_warm_without_a_proxy_is_a_usage_error(
    requirements: Path, home: Path, unused_tcp_port: int
) -> None:
    url = f"http://user:s3cr3t-pw@127.0.0.1:{unused_tcp_port}/index/"  # htpasswd's user
    ran = await cachepi("warm", "-r", requirements, "--index-url", url, home=home)
    assert ran.returncode == 2, ran.output
    line = ran.error_line()
    assert line.startswith("cachepi: error: no proxy answers"), line
    assert f"http://127.0.0.1:{unused_tcp_port}/index/" in line and "s3cr3t" not in line, line


async def test_warm_with_an_unreadable_requirements_file_is_a_usage_error(
    proxy: RunningProxy, home: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "nothing-here.txt"
    ran = await cachepi("warm", "-r", missing, "--index-url", proxy.index_url, home=home)
    assert ran.returncode == 2, ran.output
    ran.error_line()


@pytest.mark.slow  # a real pip run
async def test_warm_of_an_unknown_project_fails_with_pips_error(
    proxy: RunningProxy, home: Path, tmp_path: Path
) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("no-such-project-here\n")
    ran = await cachepi("warm", "-r", requirements, "--index-url", proxy.index_url, home=home)
    assert ran.returncode == 1, ran.output
    assert "no-such-project-here" in ran.output  # pip's error is shown


# -- warm: locks --------------------------------------------------------------------------


def app_lock(upstream: FakeUpstream) -> list[Dist]:
    """What a lock of `app` names, for every platform: the tree's files and native's."""
    tree = [d for d in upstream.dists("app") + upstream.dists("util-pkg")]
    return tree + [d for d in upstream.dists("lib") if d.version == "1.1"] + add_native(upstream)


def summary(ran: Ran) -> tuple[str, ...]:
    match = LOCK_SUMMARY_RE.fullmatch(last_line(ran.stdout.split("  failed:")[0]))
    assert match, ran.output
    return match.groups()


async def test_warm_of_a_lock_through_a_running_proxy(
    fake_upstream: FakeUpstream, proxy: RunningProxy, home: Path, tmp_path: Path
) -> None:
    dists = app_lock(fake_upstream)
    lock = tmp_path / "pylock.toml"
    lock.write_text(pylock(dists))
    ran = await cachepi("warm", lock, "--index-url", proxy.index_url, home=home)
    assert ran.returncode == 0, ran.output
    assert summary(ran) == ("pylock.toml", "10", "10", "0", "0")
    for dist in dists:
        assert blob_path(proxy.settings.cache_dir, dist.sha256).is_file(), dist.filename
    # The proxy did the work, as a job: the files never came to this command.
    assert [s.status for s in proxy.seen if s.path == "/warm"] == [202]
    assert not [s for s in proxy.seen if s.path.startswith("/index/")]

    narrowed = await cachepi(
        "warm", lock, "--index-url", proxy.index_url, "--platform", "win_amd64",
        "--python-version", "3.12", "--only-wheels", home=home,
    )  # fmt: skip
    assert narrowed.returncode == 0, narrowed.output
    assert summary(narrowed) == ("pylock.toml", "4", "0", "4", "0")  # 3 pure, 1 for Windows


async def test_warm_of_a_lock_on_a_cache_directory_without_a_server(
    fake_upstream: FakeUpstream, home: Path, tmp_path: Path, proxy_factory: ProxyFactory
) -> None:
    dists = app_lock(fake_upstream)
    lock = tmp_path / "uv-made" / "pylock.toml"
    lock.parent.mkdir()
    lock.write_text(pylock(dists))
    cache = tmp_path / "cache"
    env = {"CACHEPI_INDEX_URL": fake_upstream.url}  # the upstream, as the server's settings
    ran = await cachepi("warm", lock, "--cache-dir", cache, home=home, env=env)
    assert ran.returncode == 0, ran.output
    assert summary(ran) == ("pylock.toml", "10", "10", "0", "0")
    for dist in dists:
        assert blob_path(cache, dist.sha256).is_file(), dist.filename
    # A server on that cache later shows the job on its dashboard.
    proxy = await proxy_factory(fake_upstream, cache_dir=cache)
    page = await fetch(proxy.url + "/")
    assert "pylock.toml" in re.search(r'<div id="warm">(.*?)</div>', page.body.decode(), re.S)[1]


async def test_warm_reports_what_it_could_not_have_and_exits_1(
    fake_upstream: FakeUpstream, proxy: RunningProxy, home: Path, tmp_path: Path
) -> None:
    ghost = Dist.from_bytes("app-9.9-py3-none-any.whl", b"never listed")
    lock = tmp_path / "pylock.toml"
    lock.write_text(pylock([*fake_upstream.dists("app"), ghost]))
    ran = await cachepi("warm", lock, "--index-url", proxy.index_url, home=home)
    assert ran.returncode == 1, ran.output
    assert summary(ran) == ("pylock.toml", "3", "2", "0", "1")
    assert f"  failed: {ghost.filename}: the index lists no such file of app" in ran.stdout


async def test_warm_of_a_malformed_lock_is_a_usage_error_naming_its_line(
    proxy: RunningProxy, home: Path, tmp_path: Path
) -> None:
    lock = tmp_path / "uv.lock"
    lock.write_text('version = 1\n\n[[package]]\nname = "app"\nversion = 1.0.0\n')
    ran = await cachepi("warm", lock, "--index-url", proxy.index_url, home=home)
    assert ran.returncode == 2, ran.output
    assert ran.error_line().startswith("cachepi: error: uv.lock, line 5: not valid TOML: ")
    assert not proxy.seen  # nothing was asked of the proxy


async def test_warm_needs_the_proxys_admin_token_when_it_has_one(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory, home: Path, tmp_path: Path
) -> None:
    proxy = await proxy_factory(fake_upstream, admin_token=TOKEN)
    lock = tmp_path / "pylock.toml"
    lock.write_text(pylock(fake_upstream.dists("util-pkg")))
    ran = await cachepi("warm", lock, "--index-url", proxy.index_url, home=home)
    assert ran.returncode == 2, ran.output
    assert "wants the admin token: set CACHEPI_ADMIN_TOKEN" in ran.error_line()
    env = {"CACHEPI_ADMIN_TOKEN": TOKEN}
    ran = await cachepi("warm", lock, "--index-url", proxy.index_url, home=home, env=env)
    assert ran.returncode == 0, ran.output


@pytest.mark.parametrize(
    ("options", "error"),
    [
        (["--index-url", "http://127.0.0.1:9/index/", "--cache-dir", "x"], "give one or the other"),
        (["--python-version", "three"], "'three' is not a Python version"),
        ([], "name a lock or requirements file"),
    ],
    ids=["proxy-and-cache", "bad-python", "nothing"],
)
async def test_warm_usage_errors(
    options: list[str], error: str, home: Path, tmp_path: Path
) -> None:
    lock = tmp_path / "pylock.toml"
    lock.write_text(pylock([]))
    files = [lock] if options else []
    ran = await cachepi("warm", *files, *options, home=home)
    assert ran.returncode == 2, ran.output
    assert error in ran.error_line()


@pytest.mark.slow  # a real pip run
async def test_warm_of_plain_requirements_on_a_cache_directory_resolves_with_pip(
    fake_upstream: FakeUpstream, requirements: Path, home: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    env = {"CACHEPI_INDEX_URL": fake_upstream.url}
    ran = await cachepi("warm", "-r", requirements, "--cache-dir", cache, home=home, env=env)
    assert ran.returncode == 0, ran.output
    assert SUMMARY_RE.fullmatch(last_line(ran.stdout)), ran.output
    for wheel in app_tree(fake_upstream):
        assert blob_path(cache, wheel.sha256).is_file(), wheel


# -- stats -------------------------------------------------------------------------------


async def test_stats_counts_known_traffic(
    fake_upstream: FakeUpstream, proxy: RunningProxy, home: Path
) -> None:
    wheel = wheel_of(fake_upstream, "app", "1.0")
    file_url = f"{proxy.index_url}app/{wheel.filename}"
    assert (await get_json(proxy.index_url + "app/")).status == 200  # page miss
    assert (await get_json(proxy.index_url + "app/")).status == 200  # page hit
    for _ in range(3):  # one file miss, two hits
        assert (await fetch(file_url)).sha256 == wheel.sha256
    await proxy.stop()  # counters are flushed at shutdown

    stats = await stats_json(proxy.settings.cache_dir, home, proxy.settings.cache_size)
    assert stats["files"] == 1
    assert stats["bytes"] == wheel.size
    assert stats["limit"] == proxy.settings.cache_size
    assert stats["files_served"] == {"hit": 2, "miss": 1}
    assert stats["bytes_served"] == {"cache": 2 * wheel.size, "upstream": wheel.size}
    assert stats["pages"]["miss"] == 1
    assert stats["pages"]["hit"] >= 1
    assert stats["pages"]["stale"] == 0
    assert isinstance(stats["hit_ratio"], float) and 0 < stats["hit_ratio"] < 1
    assert {"project": "app", "files": 1, "bytes": wheel.size} in stats["top_projects"]

    text = await cachepi("stats", "--cache-dir", proxy.settings.cache_dir, home=home)
    assert text.returncode == 0, text.output
    assert "app" in text.stdout


async def test_stats_reads_the_cache_while_a_server_runs(
    fake_upstream: FakeUpstream, proxy: RunningProxy, home: Path
) -> None:
    wheel = wheel_of(fake_upstream, "lib", "1.1")
    assert (await fetch(f"{proxy.index_url}lib/{wheel.filename}")).status == 200
    stats = await stats_json(proxy.settings.cache_dir, home)
    assert (stats["files"], stats["bytes"]) == (1, wheel.size)
    assert stats["top_projects"][0]["project"] == "lib"
    # The server goes on serving beside the reader.
    assert (await fetch(f"{proxy.index_url}lib/{wheel.filename}")).sha256 == wheel.sha256


@pytest.mark.slow  # a real server, counts waited for: ~6 s
async def test_stats_sees_a_running_servers_counts_within_seconds(
    fake_upstream: FakeUpstream, served: ServedProxy, home: Path
) -> None:
    wheel = wheel_of(fake_upstream, "util-pkg", "0.5")
    for _ in range(2):  # a miss, then a hit
        reply = await fetch(f"{served.index_url}util-pkg/{wheel.filename}")
        assert reply.sha256 == wheel.sha256
    async with asyncio.timeout(20):  # flushed "every few seconds"
        while (stats := await stats_json(served.cache_dir, home))["files_served"] != {
            "hit": 1,
            "miss": 1,
        }:
            assert stats["files_served"]["hit"] <= 1 and stats["files_served"]["miss"] <= 1
            await asyncio.sleep(0.5)
    assert stats["bytes_served"] == {"cache": wheel.size, "upstream": wheel.size}
    assert served.process is not None and served.process.returncode is None  # still serving


async def test_stats_of_a_missing_cache_is_an_error(home: Path, tmp_path: Path) -> None:
    ran = await cachepi("stats", "--cache-dir", tmp_path / "no-cache", "--json", home=home)
    assert ran.returncode == 2, ran.output
    ran.error_line()
    assert not (tmp_path / "no-cache").exists()


# -- purge -------------------------------------------------------------------------------


async def cache_app_and_lib(upstream: FakeUpstream, proxy: RunningProxy) -> tuple[Dist, Dist]:
    """Pages and one wheel each of app and lib in the proxy's cache."""
    app, lib = wheel_of(upstream, "app", "1.0"), wheel_of(upstream, "lib", "1.1")
    for project, wheel in (("app", app), ("lib", lib)):
        assert (await get_json(f"{proxy.index_url}{project}/")).status == 200
        assert (await fetch(f"{proxy.index_url}{project}/{wheel.filename}")).status == 200
    return app, lib


@dataclass(frozen=True)
class UpstreamCounts:
    app_page: int
    app_file: int
    lib_page: int
    lib_file: int


async def refetch_all(upstream: FakeUpstream, base: str, app: Dist, lib: Dist) -> UpstreamCounts:
    """Ask the proxy for both pages and files again; how many of those reached upstream."""
    before = [
        upstream.count("/simple/app/"),
        upstream.count(upstream.file_path(app.filename)),
        upstream.count("/simple/lib/"),
        upstream.count(upstream.file_path(lib.filename)),
    ]
    for project, wheel in (("app", app), ("lib", lib)):
        assert (await get_json(f"{base}{project}/")).status == 200
        assert (await fetch(f"{base}{project}/{wheel.filename}")).sha256 == wheel.sha256
    after = [
        upstream.count("/simple/app/"),
        upstream.count(upstream.file_path(app.filename)),
        upstream.count("/simple/lib/"),
        upstream.count(upstream.file_path(lib.filename)),
    ]
    return UpstreamCounts(*(a - b for a, b in zip(after, before, strict=True)))


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["app"], UpstreamCounts(1, 1, 0, 0)),
        (["App"], UpstreamCounts(1, 1, 0, 0)),  # names are normalized
        (["app", "--files-only"], UpstreamCounts(0, 1, 0, 0)),
        (["app", "--pages-only"], UpstreamCounts(1, 0, 0, 0)),
        (["app", "lib"], UpstreamCounts(1, 1, 1, 1)),
        (["--all"], UpstreamCounts(1, 1, 1, 1)),
    ],
    ids=["project", "unnormalized", "files-only", "pages-only", "two", "all"],
)
async def test_purge_removes_what_it_is_told_and_only_that(
    flags: list[str],
    expected: UpstreamCounts,
    fake_upstream: FakeUpstream,
    proxy_factory: ProxyFactory,
    home: Path,
) -> None:
    proxy = await proxy_factory(fake_upstream)
    app, lib = await cache_app_and_lib(fake_upstream, proxy)
    await proxy.stop()
    cache_dir = proxy.settings.cache_dir

    ran = await cachepi("purge", *flags, "--cache-dir", cache_dir, home=home)
    assert ran.returncode == 0, ran.output
    assert ran.stdout.strip(), "purge prints what it removed"
    assert blob_path(cache_dir, app.sha256).exists() == (expected.app_file == 0)
    assert blob_path(cache_dir, lib.sha256).exists() == (expected.lib_file == 0)

    # A new server on the same cache fetches exactly what was purged.
    again = await proxy_factory(fake_upstream)
    assert await refetch_all(fake_upstream, again.index_url, app, lib) == expected
    if expected.app_page:  # removed, not merely expired: nothing to revalidate with
        last = fake_upstream.requests_to("/simple/app/")[-1]
        assert "If-None-Match" not in last.headers and "If-Modified-Since" not in last.headers


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--files-only"],
        ["bad_name_"],
        ["app", "no/such"],
        ["app", "--files-only", "--pages-only"],
    ],
    ids=["nothing", "no-project", "invalid", "one-invalid", "both-only-flags"],
)
async def test_purge_usage_errors_remove_nothing(
    args: list[str], fake_upstream: FakeUpstream, proxy: RunningProxy, home: Path
) -> None:
    app, lib = await cache_app_and_lib(fake_upstream, proxy)
    ran = await cachepi("purge", *args, "--cache-dir", proxy.settings.cache_dir, home=home)
    assert ran.returncode == 2, ran.output
    ran.error_line()
    assert blob_path(proxy.settings.cache_dir, app.sha256).is_file()
    assert await refetch_all(fake_upstream, proxy.index_url, app, lib) == UpstreamCounts(0, 0, 0, 0)


@pytest_asyncio.fixture
async def served(
    fake_upstream: FakeUpstream, tmp_path: Path, unused_tcp_port: int
) -> AsyncIterator[ServedProxy]:
    server = ServedProxy(fake_upstream.url, tmp_path / "cache", unused_tcp_port)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_purge_while_a_server_runs_makes_it_refetch(
    fake_upstream: FakeUpstream, served: ServedProxy, home: Path
) -> None:
    app, lib = wheel_of(fake_upstream, "app", "1.0"), wheel_of(fake_upstream, "lib", "1.1")
    for project, wheel in (("app", app), ("lib", lib)):
        assert (await get_json(f"{served.index_url}{project}/")).status == 200
        assert (await fetch(f"{served.index_url}{project}/{wheel.filename}")).status == 200
    # Served from the cache now: nothing reaches upstream.
    unchanged = await refetch_all(fake_upstream, served.index_url, app, lib)
    assert unchanged == UpstreamCounts(0, 0, 0, 0)

    ran = await cachepi("purge", "app", "--cache-dir", served.cache_dir, home=home)
    assert ran.returncode == 0, ran.output
    assert not blob_path(served.cache_dir, app.sha256).exists()
    # The server learns of it from the cache directory, a little later at most.
    pages_before = fake_upstream.count("/simple/app/")
    async with asyncio.timeout(5):
        while fake_upstream.count("/simple/app/") == pages_before:
            assert (await get_json(f"{served.index_url}app/")).status == 200
            await asyncio.sleep(0.1)
    assert fake_upstream.count("/simple/app/") == pages_before + 1
    counts = await refetch_all(fake_upstream, served.index_url, app, lib)
    assert counts == UpstreamCounts(0, 1, 0, 0), served.log_text()
    assert blob_path(served.cache_dir, app.sha256).is_file()  # stored again


# -- gc ----------------------------------------------------------------------------------


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


async def test_gc_makes_records_and_disk_agree(
    fake_upstream: FakeUpstream, proxy: RunningProxy, home: Path
) -> None:
    app, lib = await cache_app_and_lib(fake_upstream, proxy)
    await proxy.stop()
    cache_dir = proxy.settings.cache_dir

    orphan_bytes = os.urandom(3000)
    orphan = blob_path(cache_dir, hashlib.sha256(orphan_bytes).hexdigest())
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(orphan_bytes)  # a file no record knows
    blob_path(cache_dir, lib.sha256).unlink()  # a record whose file is gone
    old_temp, new_temp = cache_dir / "tmp" / "dl-abandoned", cache_dir / "tmp" / "dl-recent"
    old_temp.write_bytes(b"x" * 100)
    new_temp.write_bytes(b"y" * 100)  # may be a download in progress
    age(old_temp, 2 * 3600)
    age(new_temp, 60)

    ran = await cachepi("gc", "--cache-dir", cache_dir, home=home)
    assert ran.returncode == 0, ran.output
    assert ran.stdout.strip(), "gc prints a summary"
    assert not old_temp.exists()
    assert new_temp.exists()
    assert blob_path(cache_dir, app.sha256).is_file()
    # The orphan is removed, or (its bytes match its name) recorded: either way the records
    # now say what the disk holds, and the lost file is no longer counted.
    stats = await stats_json(cache_dir, home)
    if orphan.exists():
        assert (stats["files"], stats["bytes"]) == (2, app.size + len(orphan_bytes))
    else:
        assert (stats["files"], stats["bytes"]) == (1, app.size)

    again = await cachepi("gc", "--cache-dir", cache_dir, home=home)  # nothing left to do
    assert again.returncode == 0, again.output
    assert blob_path(cache_dir, app.sha256).is_file()
    assert await stats_json(cache_dir, home) == stats


async def test_gc_evicts_down_to_the_cache_size(
    fake_upstream: FakeUpstream, proxy: RunningProxy, home: Path
) -> None:
    app, lib = await cache_app_and_lib(fake_upstream, proxy)  # app used first: evicted first
    await proxy.stop()
    cache_dir = proxy.settings.cache_dir
    limit = str(max(app.size, lib.size) + 10)
    ran = await cachepi(
        "gc", "--cache-dir", cache_dir, home=home, env={"CACHEPI_CACHE_SIZE": limit}
    )
    assert ran.returncode == 0, ran.output
    assert not blob_path(cache_dir, app.sha256).exists()
    assert blob_path(cache_dir, lib.sha256).is_file()
    stats = await stats_json(cache_dir, home)
    assert (stats["files"], stats["bytes"]) == (1, lib.size)


# -- serve: configuration errors ---------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        ["--certfile", "{dir}/cert.pem"],
        ["--keyfile", "{dir}/key.pem"],
        ["--certfile", "{dir}/missing-cert.pem", "--keyfile", "{dir}/missing-key.pem"],
    ],
    ids=["certfile-only", "keyfile-only", "missing-files"],
)
async def test_serve_configuration_errors_are_one_line(
    options: Sequence[str], tmp_path: Path, home: Path, unused_tcp_port: int
) -> None:
    (tmp_path / "cert.pem").write_text("not used\n")
    (tmp_path / "key.pem").write_text("not used\n")
    args = [o.format(dir=tmp_path) for o in options]
    ran = await cachepi(
        "serve", "--port", str(unused_tcp_port), "--cache-dir", tmp_path / "cache", *args,
        home=home, seconds=30,
    )  # fmt: skip
    assert ran.returncode == 2, ran.output
    ran.error_line()


async def test_serve_certfile_without_keyfile_from_the_environment(
    tmp_path: Path, home: Path, unused_tcp_port: int
) -> None:
    (tmp_path / "cert.pem").write_text("not used\n")
    ran = await cachepi(
        "serve", "--port", str(unused_tcp_port), "--cache-dir", tmp_path / "cache",
        home=home, env={"CACHEPI_CERTFILE": str(tmp_path / "cert.pem")}, seconds=30,
    )  # fmt: skip
    assert ran.returncode == 2, ran.output
    assert "keyfile" in ran.error_line().lower()


async def test_serve_rejects_an_unknown_access_log_format(
    tmp_path: Path, home: Path, unused_tcp_port: int
) -> None:
    ran = await cachepi(
        "serve", "--port", str(unused_tcp_port), "--cache-dir", tmp_path / "cache",
        "--access-log", "xml", home=home, seconds=30,
    )  # fmt: skip
    assert ran.returncode == 2, ran.output
    assert "access-log" in ran.stderr.lower() or "access_log" in ran.stderr.lower()
