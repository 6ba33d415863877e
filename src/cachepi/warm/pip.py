"""`cachepi warm` of plain requirements (without hashes: projects, not files).

cachepi resolves nothing itself: pip does, downloading through the proxy once per target
(Python version x platform x implementation), into a temp directory that is thrown away.
What stays is what the proxy stored on the way.
"""

from __future__ import annotations

import itertools
import os
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp


@dataclass(frozen=True)
class Target:
    python_version: str | None = None
    platform: str | None = None
    implementation: str | None = None
    only_wheels: bool = False

    def __str__(self) -> str:
        parts = [
            f"python {self.python_version}" if self.python_version else "",
            self.platform,
            f"implementation {self.implementation}" if self.implementation else "",
        ]
        return ", ".join(p for p in parts if p) or "this interpreter"

    def pip_options(self) -> list[str]:
        options = []
        if self.python_version:
            options += ["--python-version", self.python_version]
        if self.platform:
            options += ["--platform", self.platform]
        if self.implementation:
            options += ["--implementation", self.implementation]
        if options or self.only_wheels:  # pip picks only wheels for another interpreter
            options += ["--only-binary=:all:"]
        return options


def _or_none(values: Sequence[str]) -> list[str | None]:
    """The values, or one None (this interpreter's) when there are none."""
    return [*values] or [None]


def targets(
    python_versions: Sequence[str],
    platforms: Sequence[str],
    implementations: Sequence[str],
    only_wheels: bool,
) -> list[Target]:
    return [
        Target(version, platform, implementation, only_wheels)
        for version, platform, implementation in itertools.product(
            _or_none(python_versions), _or_none(platforms), _or_none(implementations)
        )
    ]


@dataclass
class TargetResult:
    target: Target
    files: int
    bytes: int
    error: str | None  # pip's last lines when it failed


async def reachable(index_url: str, cafile: str | None) -> bool:
    """Whether something answers at `index_url` (any HTTP status counts)."""
    context = ssl.create_default_context(cafile=cafile) if cafile else None
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(index_url, ssl=context if context else True) as response,
        ):
            return response.status > 0
    except (aiohttp.ClientError, TimeoutError):
        return False


def warm_target(
    requirements: Path,
    index_url: str,
    target: Target,
    cafile: str | None,
    on_line: Callable[[str], None],
) -> TargetResult:
    """`pip download` of `requirements` for `target` through the proxy."""
    with tempfile.TemporaryDirectory(prefix="cachepi-warm-") as dest:
        command = [
            sys.executable, "-m", "pip", "download", "--isolated", "--no-cache-dir",
            "--disable-pip-version-check", "--progress-bar", "off",
            "--index-url", index_url, "--dest", dest, "-r", str(requirements),
            *target.pip_options(),
        ]  # fmt: skip
        if cafile:
            command += ["--cert", cafile]
        parts = urlsplit(index_url)
        if parts.scheme == "http" and parts.netloc:
            # The user named this proxy: trust it over plain http, as pip requires.
            command += ["--trusted-host", parts.netloc.rpartition("@")[2]]
        env = dict(os.environ)
        if cafile:  # requests prefers these to pip's --cert
            env.pop("REQUESTS_CA_BUNDLE", None)
            env.pop("CURL_CA_BUNDLE", None)
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        assert process.stdout is not None
        tail: list[str] = []
        for line in process.stdout:
            line = line.rstrip()
            tail = [*tail[-9:], line]
            on_line(line)
        process.wait()
        saved = [p for p in Path(dest).iterdir() if p.is_file()]
        error = None if process.returncode == 0 else "\n".join(tail)
        return TargetResult(target, len(saved), sum(p.stat().st_size for p in saved), error)
