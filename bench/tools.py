"""What the benchmark needs installed, installed when missing, and the versions it ran."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.clients import isolated_env
from tests.system import ensure_debian_package
from uv import find_uv_bin

from bench.procs import log

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work"
PROXPI_VENV = WORK / "proxpi-venv"


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def ensure_apt_tools() -> None:
    """wrk and nginx, installed with apt-get when missing, as the tests install what they
    need (tests/system.py: as root, one apt-get at a time on the machine)."""
    log("wrk and nginx-light: installed with apt-get if missing")
    try:
        ensure_debian_package("wrk", "wrk")
        ensure_debian_package(nginx_binary(), "nginx-light")
    except (pytest.skip.Exception, pytest.fail.Exception) as why:
        sys.exit(f"bench: {why}")


def ensure_proxpi() -> Path:
    """proxpi and gunicorn in a virtualenv of their own; returns its bin directory."""
    bin_dir = PROXPI_VENV / "bin"
    probe = [bin_dir / "python", "-c", "import proxpi, gunicorn"]
    if (bin_dir / "gunicorn").exists() and subprocess.run(
        probe, capture_output=True
    ).returncode == 0:
        return bin_dir
    log("creating bench/.work/proxpi-venv (pip install proxpi gunicorn)")
    subprocess.run([sys.executable, "-m", "venv", "--clear", PROXPI_VENV], check=True, timeout=300)
    pip = [bin_dir / "python", "-m", "pip", "install", "-q", "proxpi", "gunicorn"]
    subprocess.run(pip, check=True, timeout=900)
    return bin_dir


def _ensure_in_venv(package: str) -> None:
    """`package` in the project's virtualenv (the one running this), for a tool we drive."""
    try:
        importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        log(f"installing {package} into {sys.prefix}")
        pip = [sys.executable, "-m", "pip", "install", "-q", package]
        subprocess.run(pip, check=True, timeout=900)


def uv_binary() -> str:
    """The test extra's uv (tests/clients.py drives the same one)."""
    return find_uv_bin()


def py_spy_binary() -> Path:
    """py-spy on PATH, else installed into the project's virtualenv."""
    if found := shutil.which("py-spy"):
        return Path(found)
    _ensure_in_venv("py-spy")
    return Path(sys.executable).parent / "py-spy"


def server_env() -> dict[str, str]:
    """The environment the tests give installers and servers (tests/clients.py: none of
    this machine's installer, proxy, cachepi or proxpi settings, HOME under bench/.work,
    traffic off loopback refused); the harness gives the servers' settings."""
    home = WORK / "home"
    home.mkdir(parents=True, exist_ok=True)
    return isolated_env(home)


def first_line(argv: list[str | Path]) -> str:
    try:
        done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def versions(proxpi_bin: Path, uv: str) -> dict[str, str]:
    commit = first_line(["git", "-C", ROOT, "describe", "--always", "--dirty"])
    probe = (
        "import importlib.metadata as m;"
        "print(*(m.version(p) for p in ('proxpi', 'gunicorn', 'flask')))"
    )
    proxpi, gunicorn, flask = (
        first_line([proxpi_bin / "python", "-c", probe]).split() + 3 * ["?"]
    )[:3]
    return {
        "cachepi": f"{importlib.metadata.version('cachepi')} (git {commit})",
        "aiohttp": importlib.metadata.version("aiohttp"),
        "proxpi": f"{proxpi} (gunicorn {gunicorn}, flask {flask})",
        "nginx": first_line([nginx_binary(), "-v"]).removeprefix("nginx version: "),
        "wrk": first_line(["wrk", "-v"]).split(" [")[0].removeprefix("wrk "),
        "uv": first_line([uv, "--version"]).removeprefix("uv "),
        "pip": first_line([sys.executable, "-m", "pip", "--version"]).split(" from")[0],
    }


def write_results(output: Path, text: str) -> None:
    """Write a benchmark's report to `output`, its directory made if need be, and say where."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    log(f"written to {output}")
