"""The targets cachepi is held to on a 2-core machine, each checked against the medians."""

from __future__ import annotations

from bench.report import Results, Target, Verdict


def _median(results: Results, key: str, column: str = "cachepi") -> float | None:
    metric = results.get(key)
    return None if metric is None else metric.median(column)


def _ratio(results: Results, key: str, column: str) -> float | None:
    metric = results.get(key)
    return None if metric is None else metric.ratio(column)


def _both(*checks: Verdict) -> Verdict:
    verdicts = [met for met, _ in checks]
    met = None if None in verdicts else all(verdicts)
    return met, "; ".join(text for _, text in checks)


def _at_least(value: float | None, bound: float, text: str) -> Verdict:
    return (None, f"{text}: -") if value is None else (value >= bound, f"{text} {value:,.2f}")


def _at_most(value: float | None, bound: float, text: str) -> Verdict:
    return (None, f"{text}: -") if value is None else (value <= bound, f"{text} {value:,.2f}")


def files_vs_nginx(r: Results) -> Verdict:
    return _both(
        *(_at_least(_ratio(r, f"file-c{c}-mbps", "nginx"), 0.9, f"{c} conn:") for c in (1, 32))
    )


def files_cpu(r: Results) -> Verdict:
    return _both(*(_at_most(_median(r, f"file-c{c}-cpu"), 0.5, f"{c} conn:") for c in (1, 32)))


def pages_per_core(r: Results) -> Verdict:
    return _both(
        _at_least(_median(r, "small-c32-rps-cpu"), 25_000, "small page, req/CPU-s:"),
        _at_least(_median(r, "big-c32-rps-cpu"), 25_000, "big page, req/CPU-s:"),
    )


def pages_p99(r: Results) -> Verdict:
    return _both(
        _at_most(_median(r, "small-c32-p99"), 3.0, "small page, ms:"),
        _at_most(_median(r, "big-c32-p99"), 3.0, "big page, ms:"),
    )


def big_page_vs_proxpi(r: Results) -> Verdict:
    return _both(
        *(_at_least(_ratio(r, f"big-c{c}-rps", "proxpi"), 50, f"{c} conn:") for c in (1, 32))
    )


def big_page_vs_nginx(r: Results) -> Verdict:
    return _at_least(_ratio(r, "big-c32-rps", "nginx"), 0.8, "32 conn:")


def small_page_vs_bare(r: Results) -> Verdict:
    return _at_least(_ratio(r, "small-c32-rps", "baseline"), 0.8, "32 conn:")


def miss_rate(r: Results) -> Verdict:
    return _at_least(_median(r, "miss-mbps"), 500, "MB/s:")


def miss_ttfb(r: Results) -> Verdict:
    ours, theirs = _median(r, "miss-ttfb"), _median(r, "miss-ttfb", "baseline")
    if ours is None or theirs is None:
        return None, "-"
    gap = ours - theirs
    return gap <= 20, f"cachepi {ours:.1f} ms, upstream {theirs:.1f} ms: {gap:+.1f} ms"


def herd_single_get(r: Results) -> Verdict:
    metric = r.get("herd-gets")
    runs = metric.runs.get("cachepi") if metric else None
    if not runs:
        return None, "-"
    return all(n == 1 for n in runs), "GETs in each run: " + ", ".join(f"{n:.0f}" for n in runs)


def uv_install(r: Results) -> Verdict:
    return _at_most(_ratio(r, "install-uv", "baseline"), 1.2, "ratio:")


TARGETS = [
    Target("cached files ≥ 0.9x nginx MB/s", files_vs_nginx),
    Target("cached files ≤ 0.5 CPU-s/GB", files_cpu),
    Target(
        "cached pages ≥ 25k req/s per core at 32 connections (requests per CPU-second of "
        "the server's processes)",
        pages_per_core,
    ),
    Target("cached pages p99 < 3 ms at 32 connections", pages_p99),
    Target("≥ 50x proxpi's req/s on the big page", big_page_vs_proxpi),
    Target("cached big page ≥ 0.8x nginx's req/s (the same gzip bytes)", big_page_vs_nginx),
    Target("cached small page ≥ 0.8x bare aiohttp's req/s", small_page_vs_bare),
    Target("misses ≥ 0.5 GB/s on loopback", miss_rate),
    Target("miss TTFB within 20 ms of the upstream's", miss_ttfb),
    Target("32 simultaneous first requests: exactly 1 upstream GET", herd_single_get),
    Target("warm `uv pip install` within 1.2x of the local directory", uv_install),
]
