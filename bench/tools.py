"""What the benchmark needs installed, installed when missing, and the versions it ran."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

from procs import log

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work"
PROXPI_VENV = WORK / "proxpi-venv"
APT_TOOLS = {"wrk": "wrk", "nginx": "nginx-light"}  # binary -> Debian package


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def ensure_apt_tools() -> None:
    missing = [
        package
        for binary, package in APT_TOOLS.items()
        if shutil.which(binary) is None and not Path("/usr/sbin", binary).exists()
    ]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"bench: needs the Debian packages {' '.join(missing)}; install them as root")
    log(f"installing {' '.join(missing)} (apt-get)")
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], env=env, check=True, timeout=900)


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
    _ensure_in_venv("uv")
    from uv import find_uv_bin

    return find_uv_bin()


def py_spy_binary() -> Path:
    _ensure_in_venv("py-spy")
    return Path(sys.executable).parent / "py-spy"


def server_env() -> dict[str, str]:
    """This environment without settings meant for proxies or installers of this machine."""
    prefixes = ("CACHEPI_", "PROXPI_", "PIP_", "UV_")
    proxies = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(prefixes) and k.lower() not in proxies
    }


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
