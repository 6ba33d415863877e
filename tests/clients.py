"""Real installers (pip, uv, poetry, pdm) run as subprocesses against a proxy, isolated from
the machine.

They run with asyncio subprocesses so the proxy, which lives in the test's event loop, keeps
serving while they work. Each gets a private home (config, caches, keyring off) and sends
anything not meant for 127.0.0.1 to an "egress" HTTP proxy: a closed port by default, or an
`EgressTrap` that records the attempt, so a test can prove nothing left the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from uv import find_uv_bin

# Port 9 (discard) on loopback: nothing listens, so off-machine traffic fails at once.
DEAD_END = "http://127.0.0.1:9"
# Installers' settings, and cachepi's own (a developer's CACHEPI_*/PROXPI_* must not change
# what a test's server does).
_CLIENT_SETTINGS = ("PIP_", "UV_", "POETRY_", "PDM_", "CACHEPI_", "PROXPI_")
_PROXY_SETTINGS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


@dataclass(frozen=True)
class Result:
    returncode: int
    output: str

    def check(self) -> Result:
        assert self.returncode == 0, self.output
        return self


def isolated_env(home: Path, egress: str = DEAD_END) -> dict[str, str]:
    """The environment minus any installer configuration of this machine (extra indexes,
    find-links, constraints, proxies): a test must only ever reach the proxy it names.
    Everything a client keeps lives under `home`; traffic off loopback goes to `egress`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_CLIENT_SETTINGS) and k.lower() not in _PROXY_SETTINGS
    }
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_CACHE_HOME=str(home / "cache"),
        XDG_DATA_HOME=str(home / "data"),
        XDG_STATE_HOME=str(home / "state"),
        PIP_CONFIG_FILE=os.devnull,
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        UV_NO_CONFIG="1",
        UV_PYTHON_DOWNLOADS="never",
        UV_NO_PROGRESS="1",
        POETRY_CONFIG_DIR=str(home / "poetry-config"),
        POETRY_CACHE_DIR=str(home / "poetry-cache"),
        POETRY_DATA_DIR=str(home / "poetry-data"),
        # Locking needs an interpreter, not a new virtualenv: use the one running the tests.
        POETRY_VIRTUALENVS_CREATE="false",
        PDM_HOME=str(home / "pdm"),
        PDM_CONFIG_FILE=str(home / "pdm-config.toml"),
        PDM_CACHE_DIR=str(home / "pdm-cache"),
        PDM_PYTHON=sys.executable,
        PDM_CHECK_UPDATE="false",  # else pdm asks PyPI for a newer pdm
        PDM_NON_INTERACTIVE="1",
        # poetry and pdm ask the keyring for index credentials; a real backend may prompt.
        PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring",
        HTTP_PROXY=egress,
        HTTPS_PROXY=egress,
        ALL_PROXY=egress,
        NO_PROXY="127.0.0.1,localhost",
    )
    return env


class EgressTrap:
    """An HTTP proxy on 127.0.0.1 that forwards nothing: it answers 403 and remembers each
    request line (`CONNECT index.example:443 HTTP/1.1`), so a test can assert there were none."""

    def __init__(self) -> None:
        self.attempts: list[str] = []
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "EgressTrap was never started"
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._refuse, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            line = await reader.readline()
            self.attempts.append(line.decode(errors="replace").strip())
            writer.write(
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
        writer.close()


async def run(
    *command: str | Path, env: dict[str, str], cwd: Path | None = None, seconds: float = 240
) -> Result:
    process = await asyncio.create_subprocess_exec(
        *map(str, command),
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), seconds)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return Result(process.returncode or 0, output.decode(errors="replace"))


async def pip_install(
    index_url: str,
    target: Path,
    *requirements: str,
    home: Path,
    options: Sequence[str] = (),
    egress: str = DEAD_END,
) -> Result:
    """`pip install --target` with no pip cache: every run asks the index."""
    return await run(
        sys.executable, "-m", "pip", "install", "--no-cache-dir", "--index-url", index_url,
        "--target", target, *options, *requirements,
        env=isolated_env(home, egress),
    )  # fmt: skip


async def uv_install(
    index_url: str,
    target: Path,
    *requirements: str,
    home: Path,
    cache: bool = False,
    options: Sequence[str] = (),
    egress: str = DEAD_END,
) -> Result:
    """`uv pip install --target`, by default with no uv cache (else one under `home`)."""
    cache_args = ["--cache-dir", str(home / "uv-cache")] if cache else ["--no-cache"]
    return await run(
        find_uv_bin(), "pip", "install", "--python", sys.executable, "--index-url", index_url,
        "--target", target, *cache_args, *options, *requirements,
        env=isolated_env(home, egress),
    )  # fmt: skip


# -- lockers: a throwaway project whose only index is the proxy ---------------------------

_POETRY_SOURCE = """
[tool.poetry]
package-mode = false

[[tool.poetry.source]]
name = "cachepi"
url = "{index_url}"
priority = "primary"  # a primary source replaces PyPI: nothing else is asked
"""
_PDM_SOURCE = """
[tool.pdm]
distribution = false

[[tool.pdm.source]]
name = "pypi"  # the default source's name: this replaces PyPI instead of adding to it
url = "{index_url}"
"""


@dataclass(frozen=True)
class Locker:
    """How one tool locks a project: its index configuration and its command."""

    source: str  # pyproject.toml text, formatted with index_url
    command: tuple[str, ...]
    lock_file: str


POETRY = Locker(_POETRY_SOURCE, ("-m", "poetry", "lock", "--no-interaction"), "poetry.lock")
PDM = Locker(_PDM_SOURCE, ("-m", "pdm", "lock"), "pdm.lock")


def write_project(locker: Locker, project: Path, index_url: str, *requirements: str) -> None:
    """A throwaway `project/pyproject.toml` requiring `requirements`, from `index_url` only."""
    project.mkdir(parents=True, exist_ok=True)
    dependencies = ", ".join(f'"{r}"' for r in requirements)
    (project / "pyproject.toml").write_text(
        "[project]\n"
        'name = "throwaway"\n'
        'version = "0"\n'
        f'requires-python = ">={sys.version_info.major}.{sys.version_info.minor}"\n'
        f"dependencies = [{dependencies}]\n" + locker.source.format(index_url=index_url)
    )


async def lock(locker: Locker, project: Path, *, home: Path, egress: str = DEAD_END) -> Result:
    """Lock the project in `project` (see `write_project`) with `locker`."""
    return await run(sys.executable, *locker.command, env=isolated_env(home, egress), cwd=project)


def locked_packages(lock_file: Path) -> dict[str, tuple[str, dict[str, str]]]:
    """A poetry.lock or pdm.lock (same shape where it matters) as
    {name: (version, {filename: "sha256:<hex>"})}."""
    packages = tomllib.loads(lock_file.read_text())["package"]
    return {p["name"]: (p["version"], {f["file"]: f["hash"] for f in p["files"]}) for p in packages}
