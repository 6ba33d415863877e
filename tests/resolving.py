"""Resolving against an index without PEP 658 metadata, weighed and timed: the tree issue 16's
targets are measured on (tests/test_e2e_no_pep658.py asserts the bounds, bench/no_pep658.py
reports the figures), and `uv pip compile` run against any index URL.

Big wheels with many files (as scipy's, jaxlib's, pyarrow's) and a small tree, one of them
needing a backtrack (its newest version needs a release that does not exist), so a resolver
reads the METADATA of more wheels than it pins. The index serves HTML without METADATA,
sizes or upload times, as devpi, Nexus and older Artifactory do.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from uv import find_uv_bin

from tests.clients import isolated_env, run
from tests.fakeupstream import FakeUpstream

# project -> (versions, MiB of padding, modules) at scale 1
BIG = {
    "bigwheel-a": (["1.0", "2.0"], 30.0, 3000),
    "bigwheel-b": (["1.0", "1.1"], 20.0, 500),
    "bigwheel-c": (["1.0", "2.0"], 10.0, 1000),
}
REQUIREMENTS = ["app"]
# What the tree resolves to: the newest of each, but bigwheel-c 2.0 (it needs small-z>=2).
PINS = {
    "app": "1.0",
    "bigwheel-a": "2.0",
    "bigwheel-b": "1.1",
    "bigwheel-c": "1.0",
    "small-x": "1.1",
    "small-y": "0.2",
}


def populate(upstream: FakeUpstream, scale: float = 1.0) -> None:
    """List the tree on `upstream` without PEP 658 metadata; `scale` shrinks the big wheels
    (a test's quick copy of the benchmark's tree)."""
    upstream.add_project(
        "app",
        ["1.0"],
        deps=["bigwheel-a", "bigwheel-b", "bigwheel-c", "small-x"],
        core_metadata=False,
    )
    for name, (versions, mib, modules) in BIG.items():
        deps = {"2.0": ["small-z>=2"]} if name == "bigwheel-c" else ["small-y"]
        upstream.add_project(
            name,
            versions,
            deps=deps,
            big_mb=mib * scale,
            modules=int(modules * scale),
            sdist=False,
            core_metadata=False,
        )
    upstream.add_project("small-x", ["1.0", "1.1"], deps=["small-y"], core_metadata=False)
    upstream.add_project("small-y", ["0.1", "0.2"], core_metadata=False)
    upstream.add_project("small-z", ["1.0"], core_metadata=False)


@dataclass(frozen=True)
class Resolution:
    pins: dict[str, str]
    seconds: float
    output: str


async def uv_compile(
    index_url: str, home: Path, *options: str, requirements: Sequence[str] = REQUIREMENTS
) -> Resolution:
    """`uv pip compile` of `requirements` from `index_url` alone, with a cold uv cache of
    its own under `home` (made fresh for each call)."""
    path = _requirements_file(home, requirements)
    started = time.perf_counter()
    result = await run(
        find_uv_bin(), "pip", "compile", "--index-url", index_url, "--cache-dir",
        home / "uv-cache", "--no-header", "--no-annotate", *options, path,
        env=isolated_env(home),
    )  # fmt: skip
    seconds = time.perf_counter() - started
    pins = dict(re.findall(r"^([A-Za-z0-9._-]+)==(\S+)$", result.output, re.MULTILINE))
    return Resolution({name.lower(): v for name, v in pins.items()}, seconds, result.output)


def _requirements_file(home: Path, requirements: Sequence[str]) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "requirements.in"
    path.write_text("\n".join(requirements) + "\n")
    return path
