"""Real installers (pip, uv) run as subprocesses against a proxy, isolated from the machine.

They run with asyncio subprocesses so the proxy, which lives in the test's event loop, keeps
serving while they work.
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from uv import find_uv_bin


@dataclass(frozen=True)
class Result:
    returncode: int
    output: str

    def check(self) -> Result:
        assert self.returncode == 0, self.output
        return self


def isolated_env(home: Path) -> dict[str, str]:
    """The environment minus any pip/uv configuration of this machine (extra indexes,
    find-links, constraints): a test must only ever reach the proxy it names."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_CACHE_HOME=str(home / "cache"),
        PIP_CONFIG_FILE=os.devnull,
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        UV_NO_CONFIG="1",
        UV_PYTHON_DOWNLOADS="never",
        UV_NO_PROGRESS="1",
    )
    return env


async def run(*command: str | Path, env: dict[str, str], seconds: float = 240) -> Result:
    process = await asyncio.create_subprocess_exec(
        *map(str, command),
        env=env,
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


async def pip_install(index_url: str, target: Path, *requirements: str, home: Path) -> Result:
    """`pip install --target` with no pip cache: every run asks the index."""
    return await run(
        sys.executable, "-m", "pip", "install", "--no-cache-dir", "--index-url", index_url,
        "--target", target, *requirements,
        env=isolated_env(home),
    )  # fmt: skip


async def uv_install(
    index_url: str, target: Path, *requirements: str, home: Path, cache: bool = False
) -> Result:
    """`uv pip install --target`, by default with no uv cache."""
    cache_args = ["--cache-dir", str(home / "uv-cache")] if cache else ["--no-cache"]
    return await run(
        find_uv_bin(), "pip", "install", "--python", sys.executable, "--index-url", index_url,
        "--target", target, *cache_args, *requirements,
        env=isolated_env(home),
    )  # fmt: skip
