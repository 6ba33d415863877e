"""py-spy on a running server while a load runs: a flame graph, and the top frames as text."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

# Frames (nearly) every sample shares: start-up, the worker supervisor, the event loop.
_PLUMBING = (
    "cli.py", "workers.py", "__main__", "click/", "runpy", "multiprocessing/",
    "asyncio/base_events.py", "asyncio/events.py", "aiohttp/web.py",
)  # fmt: skip


def record(
    py_spy: Path, pid: int, seconds: int, load: Callable[[int], object], out: Path
) -> list[str]:
    """Record `pid` and its subprocesses for `seconds` under `load(seconds + 3)`, twice: as
    an SVG flame graph (`out`) and as raw stacks beside it; returns the top frames."""
    raw = out.with_suffix(".txt")
    for fmt, path in (("flamegraph", out), ("raw", raw)):
        # The load outlasts the recording: py-spy takes a moment to attach.
        loader = threading.Thread(target=load, args=(seconds + 3,))
        loader.start()
        time.sleep(1)
        argv = [py_spy, "record", "--pid", pid, "--duration", seconds, "--rate", 250]
        argv += ["--format", fmt, "--output", path, "--nonblocking", "--subprocesses"]
        try:
            done = subprocess.run(
                [str(a) for a in argv], capture_output=True, text=True, timeout=seconds + 60
            )
        finally:
            loader.join()
        if done.returncode != 0:
            raise RuntimeError(f"py-spy failed: {done.stderr}")
    return top_frames(raw)


def top_frames(raw: Path, count: int = 10) -> list[str]:
    """Functions by samples on top of the stack (self), and by samples anywhere in it
    (inclusive, leaving out the start-up and event-loop frames nearly every sample shares)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        n = int(samples)
        total += n
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if frames:
            own[frames[-1]] += n
        # Inclusive time by function, whichever of its lines the samples were at.
        for function in {re.sub(r":\d+\)$", ")", f) for f in frames}:
            if not any(part in function for part in _PLUMBING):
                inclusive[function] += n
    if not total:
        return ["- (no samples)"]
    lines = [f"- self, of {total} samples:"]
    lines += [f"  - {100 * n / total:5.1f}% `{f}`" for f, n in own.most_common(count)]
    lines.append("- inclusive:")
    lines += [f"  - {100 * n / total:5.1f}% `{f}`" for f, n in inclusive.most_common(count)]
    return lines
