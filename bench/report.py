"""Results as markdown: the machine, one table of medians and ratios, the targets."""

from __future__ import annotations

import os
import platform
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

COLUMNS = ("cachepi", "nginx", "proxpi", "baseline", "before")


@dataclass
class Metric:
    """One row: a measurement, its runs per column (cachepi, nginx, proxpi, baseline)."""

    label: str
    unit: str
    higher_better: bool
    baseline_name: str = ""  # what the baseline column is in this row, if it has one
    runs: dict[str, list[float]] = field(default_factory=dict)

    def add(self, column: str, value: float) -> None:
        self.runs.setdefault(column, []).append(value)

    def median(self, column: str) -> float | None:
        values = self.runs.get(column)
        return statistics.median(values) if values else None

    def ratio(self, column: str, ours_column: str = "cachepi") -> float | None:
        """cachepi's (`ours_column`'s) median over `column`'s."""
        ours, theirs = self.median(ours_column), self.median(column)
        if ours is None or not theirs:
            return None
        return ours / theirs


class Results:
    def __init__(self) -> None:
        self.metrics: dict[str, Metric] = {}
        self.notes: list[str] = []

    def metric(
        self, key: str, label: str, unit: str, *, higher_better: bool, baseline: str = ""
    ) -> Metric:
        if key not in self.metrics:
            self.metrics[key] = Metric(label, unit, higher_better, baseline)
        return self.metrics[key]

    def get(self, key: str) -> Metric | None:
        return self.metrics.get(key)


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table(results: Results) -> str:
    """With a "before" column (another cachepi, `bench.run --pages-only --against`) when
    some row has one."""
    before = any("before" in m.runs for m in results.metrics.values())
    lines = [
        "| measurement | unit | cachepi | nginx | proxpi | baseline | cachepi ÷ nginx "
        "| cachepi ÷ proxpi | cachepi ÷ baseline |"
        + (" before | before ÷ nginx | before ÷ baseline |" if before else ""),
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        + (" ---: | ---: | ---: |" if before else ""),
    ]
    for metric in results.metrics.values():
        arrow = "↑" if metric.higher_better else "↓"
        baseline = fmt(metric.median("baseline"))
        if metric.baseline_name and metric.median("baseline") is not None:
            baseline += f" ({metric.baseline_name})"
        cells = [
            metric.label,
            f"{metric.unit} {arrow}",
            fmt(metric.median("cachepi")),
            fmt(metric.median("nginx")),
            fmt(metric.median("proxpi")),
            baseline,
            fmt_ratio(metric.ratio("nginx")),
            fmt_ratio(metric.ratio("proxpi")),
            fmt_ratio(metric.ratio("baseline")),
        ]
        if before:
            cells += [
                fmt(metric.median("before")),
                fmt_ratio(metric.ratio("nginx", "before")),
                fmt_ratio(metric.ratio("baseline", "before")),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def runs_section(results: Results) -> str:
    """Every run's value, so the spread behind each median can be judged."""
    lines = []
    for metric in results.metrics.values():
        parts = []
        for column in COLUMNS:
            values = metric.runs.get(column)
            if values:
                name = (metric.baseline_name or column) if column == "baseline" else column
                parts.append(f"{name}: " + ", ".join(fmt(v) for v in values))
        lines.append(f"- {metric.label} ({metric.unit}): " + "; ".join(parts))
    return "\n".join(lines)


Verdict = tuple[bool | None, str]  # (met; None if not measured), and the numbers behind it


@dataclass(frozen=True)
class Target:
    text: str
    check: Callable[[Results], Verdict]


def targets_section(results: Results, targets: Sequence[Target]) -> str:
    lines = []
    for target in targets:
        met, numbers = target.check(results)
        mark = "not measured" if met is None else ("**met**" if met else "**MISSED**")
        lines.append(f"- {mark}: {target.text} ({numbers})")
    return "\n".join(lines)


# -- the machine ---------------------------------------------------------------------------


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _memory() -> str:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return "?"


def _os_name() -> str:
    text = Path("/etc/os-release").read_text() if Path("/etc/os-release").exists() else ""
    match = re.search(r'^PRETTY_NAME="?([^"\n]*)', text, re.MULTILINE)
    return match.group(1) if match else platform.platform()


def machine_description(versions: dict[str, str]) -> str:
    rows = {
        "CPU": _cpu_model(),
        "cores": str(os.cpu_count()),
        "RAM": _memory(),
        "OS": _os_name(),
        "kernel": platform.release(),
        "Python": platform.python_version(),
        **versions,
    }
    return "\n".join(f"- {name}: {value}" for name, value in rows.items())


def document(
    *,
    title_line: str,
    versions: dict[str, str],
    results: Results,
    targets: Sequence[Target],
    notes: Sequence[str],
    profile: Sequence[str],
) -> str:
    parts = [
        "# cachepi benchmark",
        "",
        title_line,
        "",
        "## Machine",
        "",
        machine_description(versions),
        "",
        "## Results",
        "",
        "Medians; ratios are cachepi's median over the other column's; ↑ higher is better, "
        "↓ lower is better. Server CPU is that of all the server's processes, from /proc. "
        "The load generator and the fake upstream share the same 2 cores.",
        "",
        table(results),
        "",
        "## Targets",
        "",
        targets_section(results, targets),
        "",
        "## Notes",
        "",
        *(f"- {note}" for note in notes),
        "",
        "## Every run",
        "",
        runs_section(results),
        "",
    ]
    if profile:
        parts += ["## Profile of cachepi (py-spy)", "", *profile, ""]
    return "\n".join(parts)
