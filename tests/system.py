"""Programs the suite needs from the machine (Debian packages), installed on demand.

CI starts from a fresh machine, as root: a test that needs, say, `redis-server` installs it
with apt-get the first time; where that is impossible (not root, no apt-get) it is skipped,
saying why, and never passed without the program.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

# One apt-get at a time on this machine: xdist workers (and dpkg's own lock) collide otherwise.
APT_LOCK = Path("/tmp/cachepi-tests-apt-get.lock")


@contextlib.contextmanager
def machine_lock(path: Path = APT_LOCK) -> Iterator[None]:
    """One process at a time (xdist workers included) past this point."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def apt_get(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["apt-get", *args],
        env=os.environ | {"DEBIAN_FRONTEND": "noninteractive"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def _find(binary: str | Path) -> Path | None:
    if Path(binary).is_absolute():
        return Path(binary) if Path(binary).exists() else None
    found = shutil.which(str(binary))
    return Path(found) if found else None


def ensure_debian_package(binary: str | Path, package: str) -> Path:
    """The path of `binary` (a name looked up on PATH, or an absolute path), installing
    Debian's `package` with apt-get first when it is missing and we may (root, apt-get
    present); otherwise the calling test is skipped with the reason. An install that
    fails fails the test, with apt-get's output."""
    found = _find(binary)
    if found is not None:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(
            f"{binary} is missing and cannot be installed here "
            f"(apt-get install {package} needs root and apt-get)"
        )
    with machine_lock():
        found = _find(binary)  # another worker may have installed it meanwhile
        if found is None:
            result = apt_get("install", "-y", "--no-install-recommends", package)
            if result.returncode != 0:  # stale or missing package lists: refresh, retry once
                apt_get("update")
                result = apt_get("install", "-y", "--no-install-recommends", package)
            found = _find(binary)
            if found is None:
                pytest.fail(
                    f"apt-get install {package} failed ({result.returncode}) to provide "
                    f"{binary}:\n" + result.stdout[-2000:] + result.stderr[-2000:]
                )
    return found
