"""`cachepi warm` end to end with locks the real tools make: uv (uv.lock, and pylock.toml by
`uv export`), poetry, pdm and `uv pip compile --generate-hashes`. Each lock lists every
platform's files; warming fetches all of them into an empty cache; then the upstream goes
down and the same tool installs from the lock through the proxy.

The locks of uv, poetry and pdm hold the URLs of the proxy they were made through, and those
tools install from them: they are made through a proxy whose cache is then thrown away, and
the proxy that warms and serves listens where it did. The compiled requirements hold no URL:
they are made against the upstream itself, another index than the proxy.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from uv import find_uv_bin

from tests.clients import PDM, POETRY, Locker, Result, isolated_env, lock, run, write_project
from tests.conftest import ProxyFactory
from tests.fakeupstream import Dist, FakeUpstream
from tests.proxy import RunningProxy
from tests.test_cli import LOCK_SUMMARY_RE, cachepi, last_line
from tests.warming import add_native, blob_path

pytestmark = pytest.mark.slow  # real lockers and installers

UV = find_uv_bin()
# What the tools install here from the locked tree (native's one wheel for this machine).
INSTALLED = {"app-1.0", "lib-1.1", "util_pkg-0.5", "native-1.0"}


@dataclass
class Setup:
    upstream: FakeUpstream
    locking: RunningProxy  # the proxy the lock is made through
    home: Path
    tmp: Path
    start: ProxyFactory

    def locked_files(self) -> list[Dist]:
        """Every file of the versions a lock of app and native holds: each platform's."""
        versions = {"app": "1.0", "lib": "1.1", "util-pkg": "0.5", "native": "1.0"}
        return [
            dist
            for project, version in versions.items()
            for dist in self.upstream.dists(project)
            if dist.version == version
        ]

    async def serving_proxy(self) -> RunningProxy:
        """A proxy with an empty cache where the locking one listened, which stops."""
        port = self.locking.port
        await self.locking.stop()
        return await self.start(self.upstream, cache_dir=self.tmp / "cache", port=port)

    def env(self) -> dict[str, str]:
        return isolated_env(self.home)


@pytest_asyncio.fixture
async def setup(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory, tmp_path: Path
) -> AsyncIterator[Setup]:
    add_native(fake_upstream)
    locking = await proxy_factory(fake_upstream, cache_dir=tmp_path / "locking-cache")
    (tmp_path / "home").mkdir()
    yield Setup(fake_upstream, locking, tmp_path / "home", tmp_path, proxy_factory)


async def warm_then_install(
    setup: Setup,
    lock_file: Path,
    install: Callable[[RunningProxy], Awaitable[Result]],
    *warm_options: str,
    on_cache: bool = False,
) -> Path:
    """Warm `lock_file` into an empty cache (through the proxy, or `on_cache` directly),
    check every locked file is there, stop the upstream, install; the cache's path."""
    proxy = await setup.serving_proxy()
    where = (
        ["--cache-dir", proxy.settings.cache_dir] if on_cache else ["--index-url", proxy.index_url]
    )
    env = {"CACHEPI_INDEX_URL": setup.upstream.url}  # the upstream, for --cache-dir
    ran = await cachepi("warm", lock_file, *where, *warm_options, home=setup.home, env=env)
    assert ran.returncode == 0, ran.output
    files = setup.locked_files()
    match = LOCK_SUMMARY_RE.fullmatch(last_line(ran.stdout))
    assert match, ran.output
    assert match.groups()[1:] == (str(len(files)), str(len(files)), "0", "0"), ran.output
    for dist in files:  # every platform's: the lock lists them all
        assert blob_path(proxy.settings.cache_dir, dist.sha256).is_file(), dist.filename

    await setup.upstream.stop()
    installed = await install(proxy)
    assert installed.returncode == 0, installed.output
    return proxy.settings.cache_dir


def dist_infos(directory: Path) -> set[str]:
    """What is installed under `directory`, but the installers a new virtualenv is seeded
    with (poetry's has pip)."""
    found = {p.name.removesuffix(".dist-info") for p in directory.rglob("*.dist-info")}
    return {name for name in found if name.partition("-")[0] not in ("pip", "setuptools", "wheel")}


def uv_project(setup: Setup) -> Path:
    project = setup.tmp / "uv-project"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        '[project]\nname = "throwaway"\nversion = "0"\nrequires-python = ">=3.11"\n'
        'dependencies = ["app", "native"]\n'
    )
    return project


async def test_uv_lock(setup: Setup) -> None:
    project = uv_project(setup)
    index = setup.locking.index_url
    locked = await run(UV, "lock", "--default-index", index, env=setup.env(), cwd=project)
    assert (project / "uv.lock").is_file(), locked.output

    async def sync(proxy: RunningProxy) -> Result:
        return await run(
            UV, "sync", "--frozen", "--no-cache", "--python", sys.executable,
            env=setup.env(), cwd=project,
        )  # fmt: skip

    await warm_then_install(setup, project / "uv.lock", sync)
    assert dist_infos(project / ".venv") == INSTALLED


async def test_uv_export_to_pylock_warmed_on_the_cache_directory(setup: Setup) -> None:
    project = uv_project(setup)
    index = setup.locking.index_url
    locked = await run(UV, "lock", "--default-index", index, env=setup.env(), cwd=project)
    exported = await run(
        UV, "export", "--frozen", "--format", "pylock.toml", "-o", "pylock.toml",
        env=setup.env(), cwd=project,
    )  # fmt: skip
    assert (project / "pylock.toml").is_file(), locked.output + exported.output
    target = setup.tmp / "target"

    async def install(proxy: RunningProxy) -> Result:
        return await run(
            UV, "pip", "install", "--no-cache", "--python", sys.executable, "--target", target,
            "-r", project / "pylock.toml", env=setup.env(),
        )  # fmt: skip

    # No server does it: this command, on the cache the serving proxy uses meanwhile.
    await warm_then_install(setup, project / "pylock.toml", install, on_cache=True)
    assert dist_infos(target) == INSTALLED


@pytest.mark.parametrize("locker", [POETRY, PDM], ids=["poetry", "pdm"])
async def test_poetry_and_pdm_locks(setup: Setup, locker: Locker) -> None:
    project = setup.tmp / "project"
    write_project(locker, project, setup.locking.index_url, "app", "native")
    locked = await lock(locker, project, home=setup.home)
    assert (project / locker.lock_file).is_file(), locked.output
    venv = project / ".venv"

    async def install(proxy: RunningProxy) -> Result:
        if locker is POETRY:
            env = setup.env() | {
                "POETRY_VIRTUALENVS_CREATE": "true",
                "POETRY_VIRTUALENVS_IN_PROJECT": "true",
            }
            command = ("-m", "poetry", "install", "--no-root", "--no-interaction")
            return await run(sys.executable, *command, env=env, cwd=project)
        # pdm installs into the interpreter it is given: a new one, never the tests'.
        (await run(sys.executable, "-m", "venv", "--without-pip", venv, env=setup.env())).check()
        env = setup.env() | {"PDM_PYTHON": str(venv / "bin" / "python")}
        return await run(sys.executable, "-m", "pdm", "sync", "--no-self", env=env, cwd=project)

    await warm_then_install(setup, project / locker.lock_file, install)
    assert dist_infos(venv) == INSTALLED


async def test_uv_pip_compile_with_hashes_made_against_another_index(setup: Setup) -> None:
    source = setup.tmp / "requirements.in"
    source.write_text("app\nnative\n")
    compiled = await run(
        UV, "pip", "compile", "--generate-hashes", "--index-url", setup.upstream.url,
        source, "-o", setup.tmp / "requirements.txt", env=setup.env(),
    )  # fmt: skip
    assert "--hash=sha256:" in (setup.tmp / "requirements.txt").read_text(), compiled.output
    target = setup.tmp / "target"

    async def install(proxy: RunningProxy) -> Result:
        return await run(
            sys.executable, "-m", "pip", "install", "--no-cache-dir", "--require-hashes",
            "--index-url", proxy.index_url, "--target", target,
            "-r", setup.tmp / "requirements.txt", env=setup.env(),
        )  # fmt: skip

    await warm_then_install(setup, setup.tmp / "requirements.txt", install)
    assert dist_infos(target) == INSTALLED
