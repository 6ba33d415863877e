"""The container image, without a container engine: Dockerfile, .dockerignore, compose.yaml.

The static tests read what the image declares (user, volume, port, environment, entrypoint,
healthcheck). The run test then does what the image does, in this virtualenv instead of the
image: the ENTRYPOINT + CMD run literally (`cachepi serve`, found on PATH) with the image's
ENV applied, only the cache directory moved under tmp_path and the port made free, and the
upstream set the proxpi way (PROXPI_INDEX_URL) to a fake upstream on 127.0.0.1. The
HEALTHCHECK command runs as written (its port substituted) and must pass while the server
serves and fail once SIGTERM, what `docker stop` sends to PID 1, has stopped it.

(tests/served.py starts `python -m cachepi serve` with settings as flags; here the point is
that the image's own command line and environment work, so it is not reused.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import aiohttp
import pytest

from tests.clients import isolated_env
from tests.fakeupstream import FakeUpstream
from tests.fetching import fetch

ROOT = Path(__file__).resolve().parent.parent
IMAGE_CACHE_DIR = "/var/cache/cachepi"


@dataclass
class Dockerfile:
    base: str = ""
    env: dict[str, str] = field(default_factory=dict)
    user: str = ""
    volumes: list[str] = field(default_factory=list)
    exposed: list[str] = field(default_factory=list)
    entrypoint: list[str] | str = field(default_factory=list)
    cmd: list[str] | str = field(default_factory=list)
    healthcheck: list[str] | str = field(default_factory=list)
    healthcheck_options: dict[str, str] = field(default_factory=dict)
    runs: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        result.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return result


def exec_or_shell(args: str) -> list[str] | str:
    """The JSON (exec) form as a list; the shell form stays a string."""
    return json.loads(args) if args.startswith("[") else args


def parse_dockerfile(text: str) -> Dockerfile:
    image = Dockerfile()
    for keyword, args in instructions(text):
        if keyword == "FROM":
            image.base = args.split()[0]
        elif keyword == "ENV":
            words = shlex.split(args)
            if "=" in words[0]:
                image.env |= dict(word.split("=", 1) for word in words)
            else:  # the old `ENV NAME value` form
                image.env[words[0]] = args.split(None, 1)[1]
        elif keyword == "USER":
            image.user = args
        elif keyword == "VOLUME":
            image.volumes += json.loads(args) if args.startswith("[") else args.split()
        elif keyword == "EXPOSE":
            image.exposed += [port.removesuffix("/tcp") for port in args.split()]
        elif keyword == "ENTRYPOINT":
            image.entrypoint = exec_or_shell(args)
        elif keyword == "CMD":
            image.cmd = exec_or_shell(args)
        elif keyword == "HEALTHCHECK":
            options, _, command = args.partition("CMD")
            for option in options.split():
                name, _, value = option.removeprefix("--").partition("=")
                image.healthcheck_options[name] = value
            image.healthcheck = exec_or_shell(command.strip())
        elif keyword == "RUN":
            image.runs.append(args)
        elif keyword in {"COPY", "ADD"}:
            words = [w for w in args.split() if not w.startswith("--")]
            image.copied += words[:-1]
    return image


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


def seconds(duration: str) -> float:
    """A Dockerfile duration such as 5s, 1m30s or 500ms."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


# --- what the image declares --------------------------------------------------------------


def test_image_is_a_slim_python_that_installs_the_project_with_only_the_cluster_extra(
    dockerfile: Dockerfile,
) -> None:
    assert re.fullmatch(r"python:3\.1[1-9]-slim", dockerfile.base), dockerfile.base
    installs = [run for run in dockerfile.runs if "pip install" in run]
    assert installs, "the project is not pip-installed"
    for run in installs:
        # The cluster clients (a few MB) let one image serve alone or in compose.cluster.yaml;
        # no test or dev extras, no editable install.
        extras = re.findall(r"\[([^\]]*)\]", run)
        assert extras in ([], ["cluster"]), f"extras other than cluster: {run}"
        assert " -e " not in run, f"an editable install: {run}"
    # What it copies exists, and .dockerignore does not drop it from the build context.
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for source in dockerfile.copied:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
        assert not any(fnmatch(source, pattern) for pattern in ignored), source
    for heavy in (".venv", ".git", "bench/.work"):
        assert heavy in ignored, f".dockerignore should exclude {heavy}"


def test_image_runs_as_an_unprivileged_user_on_a_volume(dockerfile: Dockerfile) -> None:
    assert dockerfile.user, "no USER: the server would run as root"
    name = dockerfile.user.split(":")[0]
    assert name not in {"root", "0"}, dockerfile.user
    assert any(re.search(rf"\buseradd\b.*\b{name}\b", run) for run in dockerfile.runs)
    # The cache lives on the declared volume, and the user may write there. The default is
    # set as PROXPI_CACHE_DIR, the weakest variable, so a proxpi deployment's own wins.
    assert dockerfile.env.get("PROXPI_CACHE_DIR") == IMAGE_CACHE_DIR
    assert "CACHEPI_CACHE_DIR" not in dockerfile.env
    assert dockerfile.volumes == [IMAGE_CACHE_DIR]
    for directory in (IMAGE_CACHE_DIR, "/var/cache/proxpi"):  # proxpi's documented mount too
        chown = rf"chown\b.*\b{name}\b.*{directory}"
        assert any(re.search(chown, run) for run in dockerfile.runs), directory


def test_image_listens_on_all_interfaces_on_port_5000(dockerfile: Dockerfile) -> None:
    assert dockerfile.env.get("PROXPI_HOST") == "0.0.0.0"
    assert dockerfile.exposed == ["5000"]
    # The default port is 5000: the image must not move it away from what it exposes.
    assert dockerfile.env.get("CACHEPI_PORT", "5000") == "5000"


def test_entrypoint_is_the_cachepi_command_in_exec_form(dockerfile: Dockerfile) -> None:
    """Exec form, so cachepi is PID 1 and gets `docker stop`'s SIGTERM itself, and
    `docker run IMAGE serve --workers 4` (or `warm`, `verify`) replaces only the CMD."""
    assert dockerfile.entrypoint == ["cachepi"]
    assert dockerfile.cmd == ["serve"]


def test_healthcheck_asks_health_with_the_standard_library(dockerfile: Dockerfile) -> None:
    command = dockerfile.healthcheck
    assert isinstance(command, list), "use the exec form: slim images have no curl anyway"
    assert command[:2] == ["python", "-c"], command
    assert "urllib.request" in command[2]
    assert "http://127.0.0.1:5000/health" in command[2]
    options = dockerfile.healthcheck_options
    assert set(options) <= {"interval", "timeout", "start-period", "start-interval", "retries"}
    assert 0 < seconds(options.get("timeout", "30s")) <= 30


def test_compose_builds_the_image_with_port_volume_and_restart() -> None:
    text = (ROOT / "compose.yaml").read_text()
    live = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert re.search(r"^services:\n  cachepi:\n", live, re.MULTILINE), live
    assert re.search(r"^\s+build: \.$", live, re.MULTILINE)
    assert re.search(r"""^\s+- ["']?5000:5000["']?$""", live, re.MULTILINE)
    assert re.search(r"^\s+restart: unless-stopped$", live, re.MULTILINE)
    mount = re.search(rf"^\s+- ([\w.-]+):{IMAGE_CACHE_DIR}$", live, re.MULTILINE)
    assert mount, "the cache volume is not mounted where the image keeps its cache"
    # A named volume, declared at the top level.
    assert re.search(rf"^volumes:\n(  .*\n)*  {re.escape(mount[1])}:", live + "\n", re.MULTILINE)
    # The examples the README promises (settings, a TOML config file), commented out.
    assert "PROXPI_INDEX_URL" in text and "CACHEPI_CONFIG" in text


# --- what the image does --------------------------------------------------------------------


def image_env(dockerfile: Dockerfile, home: Path, cache_dir: Path) -> dict[str, str]:
    """This machine's environment cleaned as for every test, no cachepi/proxpi settings of
    its own, then the image's ENV, with the image's cache directory moved to `cache_dir`."""
    env = {k: v for k, v in isolated_env(home).items() if not k.startswith(("CACHEPI_", "PROXPI_"))}
    for name, value in dockerfile.env.items():
        assert "$" not in value, f"ENV {name}: variable references are not supported here"
        env[name] = str(cache_dir) if value == IMAGE_CACHE_DIR else value
    # What the image's PATH gives `cachepi` and `python`: here, this virtualenv.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def on_path(command: list[str], env: dict[str, str]) -> list[str]:
    found = shutil.which(command[0], path=env["PATH"])
    assert found, f"{command[0]!r} is not on PATH: is the project installed (pip install -e .)?"
    return [found, *command[1:]]


class Output:
    """Everything a process writes (stdout and stderr), collected as it comes."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        self.lines: list[str] = []
        self.task = asyncio.create_task(self._collect(process.stdout))

    async def _collect(self, stream: asyncio.StreamReader) -> None:
        async for line in stream:
            self.lines.append(line.decode(errors="replace"))

    def __str__(self) -> str:
        return "".join(self.lines)[-4000:]


async def wait_serving(process: asyncio.subprocess.Process, base: str, output: Output) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.returncode is None:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            if (await fetch(base + "/health", seconds=2)).status == 200:
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the image's command did not serve:\n{output}")


async def run_healthcheck(command: list[str], env: dict[str, str], within: float) -> int:
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        return await asyncio.wait_for(process.wait(), within)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"the healthcheck took longer than its {within} s") from None


@pytest.mark.slow  # runs the image's command as a real server, then SIGTERMs it
@pytest.mark.parametrize(
    "arguments",
    [pytest.param([], id="default-cmd"), pytest.param(["serve", "--workers", "2"], id="args")],
)
async def test_image_command_serves_passes_healthcheck_and_stops_on_sigterm(
    dockerfile: Dockerfile,
    fake_upstream: FakeUpstream,
    tmp_path: Path,
    unused_tcp_port: int,
    arguments: list[str],
) -> None:
    """`docker run IMAGE [ARGS]` with `-e PROXPI_INDEX_URL=...`, then `docker stop`."""
    assert isinstance(dockerfile.entrypoint, list) and isinstance(dockerfile.cmd, list)
    assert isinstance(dockerfile.healthcheck, list)
    port, cache_dir = unused_tcp_port, tmp_path / "var-cache-cachepi"
    env = image_env(dockerfile, tmp_path, cache_dir)
    env |= {"PROXPI_INDEX_URL": fake_upstream.url, "CACHEPI_PORT": str(port)}
    command = on_path(dockerfile.entrypoint + (arguments or dockerfile.cmd), env)
    healthcheck = [part.replace(":5000/", f":{port}/") for part in dockerfile.healthcheck]
    assert healthcheck != dockerfile.healthcheck, "the healthcheck names no :5000/ to move"
    healthcheck = on_path(healthcheck, env)
    health_timeout = seconds(dockerfile.healthcheck_options.get("timeout", "30s"))
    base = f"http://127.0.0.1:{port}"

    server = await asyncio.create_subprocess_exec(
        *command, env=env, cwd=tmp_path, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    output = Output(server)
    try:
        await wait_serving(server, base, output)
        assert await run_healthcheck(healthcheck, env, health_timeout) == 0, str(output)

        page = await fetch(f"{base}/index/lib/")
        assert page.status == 200, page.body
        wheel = next(d for d in fake_upstream.dists("lib") if d.filename.endswith(".whl"))
        assert wheel.filename in page.body.decode()
        file = await fetch(f"{base}/index/lib/{wheel.filename}")
        assert file.status == 200 and file.sha256 == wheel.sha256
        # The image's cache directory (here moved to tmp_path) holds the cache.
        assert (cache_dir / "cachepi.sqlite3").is_file()
        assert list((cache_dir / "blobs").rglob(wheel.sha256))

        server.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(server.wait(), 10)
        except TimeoutError:
            raise AssertionError(f"no exit within 10 s of SIGTERM:\n{output}") from None
        assert server.returncode == 0, str(output)
        assert await wait_group_gone(server.pid), "workers outlived their parent"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        await server.wait()
        await output.task

    # Docker takes exit code 1 as unhealthy (2 is reserved).
    assert await run_healthcheck(healthcheck, env, health_timeout) == 1


async def wait_group_gone(pgid: int, within: float = 5) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        await asyncio.sleep(0.05)
    return False
