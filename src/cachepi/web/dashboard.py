"""The dashboard at `/`: indexes and their health, cache use, traffic (with a chart of the
last day, hour by hour), warm jobs, recent misses, the biggest projects, a project search,
and invalidation forms.

Rendered on the server from the metadata store (so every worker shows the same numbers,
a few seconds old at most: overview.py); plain HTML forms and inline SVG, no JavaScript.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from html import escape

import msgspec
from aiohttp import web

from cachepi.metrics import hit_ratio, hour_of
from cachepi.simple.names import is_valid_project_name, normalize
from cachepi.store.protocols import Overview, StoreUnavailable
from cachepi.warm import report
from cachepi.web.keys import INDEX_CACHE, METADATA, METRICS, OVERVIEWS, SETTINGS

_STYLE = """body{font-family:system-ui,sans-serif;max-width:64rem;margin:2rem auto;padding:0 1rem;
color:#222}table{border-collapse:collapse;margin:.5rem 0}td,th{padding:.25rem .8rem;
text-align:left;border-bottom:1px solid #ddd}td.n{text-align:right;font-variant-numeric:
tabular-nums}.bad{color:#b00}.ok{color:#070}meter{width:16rem}form{margin:.5rem 0}
section{margin-bottom:1.5rem}.cache{fill:#2a7}.upstream{fill:#e80}.ratio{stroke:#25c;
fill:none;stroke-width:2}.point{fill:#25c}.axis{font-size:11px;fill:#555}.key{display:inline-block;width:.8em;
height:.8em;margin:0 .3em 0 1em}"""
CHART_HOURS = 24
_W, _H = 640, 160  # the chart's size, and its plot's margins: left, right, top, bottom
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 40, 8, 20


def human(size: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def _table(headings: tuple[str, ...], rows: list[str], empty: str) -> str:
    if not rows:
        return f"<p>{empty}</p>"
    head = "".join(f"<th>{h}</th>" for h in headings)
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _indexes(request: web.Request) -> str:
    rows = []
    for up in request.app[INDEX_CACHE].upstreams:
        health = (
            '<span class="ok">ok</span>'
            if up.health.healthy
            else f'<span class="bad">failing: {escape(up.health.last_error or "")}</span>'
        )
        rows.append(
            f"<tr><td>{escape(up.name)}</td><td>{escape(up.url)}</td>"
            f'<td class="n">{up.ttl} s</td><td>{health}</td></tr>'
        )
    return _table(("Name", "URL", "TTL", "Health"), rows, "No index.")


def _cache(request: web.Request, overview: Overview) -> str:
    settings = request.app[SETTINGS]
    files, size = overview.files, overview.bytes
    totals = request.app[METRICS].totals(overview.counts)
    ratio = hit_ratio(totals)
    limit = settings.cache_size
    meter = f'<meter min="0" max="{limit}" value="{min(size, limit)}"></meter> ' if limit else ""
    return (
        f"<p>{meter}{files} files, {human(size)} of "
        f"{human(limit) if limit else '0 (files are not stored)'}</p>"
        f"<p>Hit ratio: {'no traffic yet' if ratio is None else f'{ratio:.1%}'} "
        f"(pages: {totals['page_hit']} hits, {totals['page_miss']} misses, "
        f"{totals['page_stale']} stale; files: {totals['file_hit']} hits, "
        f"{totals['file_miss']} misses)</p>"
        f"<p>Served {human(totals['bytes_cache'])} from the cache and "
        f"{human(totals['bytes_upstream'])} from upstream.</p>"
    )


def traffic_chart(hourly: Mapping[int, Mapping[str, int]], now: float) -> str:
    """The last CHART_HOURS hours up to `now`: bytes served from the cache and from upstream
    (stacked bars, to the left scale) and the hit ratio (a line, to the right one), as SVG;
    each hour says its figures when pointed at."""
    last = hour_of(now)
    hours = [(hour, hourly.get(hour, {})) for hour in range(last - CHART_HOURS + 1, last + 1)]
    if not any(counts for _, counts in hours):
        return f"<p>No traffic in the last {CHART_HOURS} hours.</p>"
    width, height = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    most = max(c.get("bytes_cache", 0) + c.get("bytes_upstream", 0) for _, c in hours) or 1
    step = width / CHART_HOURS
    columns: list[str] = []
    lines: list[list[tuple[float, float]]] = [[]]  # the ratio's, broken where it is unknown
    for i, (hour, counts) in enumerate(hours):
        x = _LEFT + i * step
        cached, relayed = counts.get("bytes_cache", 0), counts.get("bytes_upstream", 0)
        ratio = hit_ratio(counts)
        low = height * cached / most
        high = height * relayed / most
        clock = time.strftime("%H:00", time.gmtime(hour * 3600))
        said = f"{'no hits or misses' if ratio is None else f'hit ratio {ratio:.1%}'}"
        columns.append(
            f"<g><title>{clock} UTC: {human(cached)} from the cache, {human(relayed)} from"
            f" upstream, {said}</title>"
            f'<rect x="{x:.1f}" y="{_TOP}" width="{step:.1f}" height="{height}" fill="none"'
            ' pointer-events="all"/>'
            f'<rect class="cache" x="{x + 1:.1f}" y="{_TOP + height - low:.1f}"'
            f' width="{step - 2:.1f}" height="{low:.1f}"/>'
            f'<rect class="upstream" x="{x + 1:.1f}" y="{_TOP + height - low - high:.1f}"'
            f' width="{step - 2:.1f}" height="{high:.1f}"/></g>'
        )
        if ratio is not None:
            lines[-1].append((x + step / 2, _TOP + height * (1 - ratio)))
        elif lines[-1]:
            lines.append([])
        if i % 6 == 0:
            columns.append(f'<text class="axis" x="{x:.1f}" y="{_H - 6}">{clock}</text>')
    right = _W - _RIGHT + 4
    drawn = "".join(
        f'<polyline class="ratio" points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in line)}"/>'
        if len(line) > 1
        else f'<circle class="point" cx="{line[0][0]:.1f}" cy="{line[0][1]:.1f}" r="2.5"/>'
        for line in lines
        if line
    )
    return (
        f'<svg role="img" viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}">'
        f"<title>Bytes served from the cache and from upstream, and the hit ratio, per hour"
        f" over the last {CHART_HOURS} hours</title>"
        f'<text class="axis" x="0" y="{_TOP + 10}">{human(most)}</text>'
        f'<text class="axis" x="0" y="{_TOP + height}">0</text>'
        f'<text class="axis" x="{right}" y="{_TOP + 10}">100%</text>'
        f'<text class="axis" x="{right}" y="{_TOP + height}">0%</text>'
        f'<line x1="{_LEFT}" y1="{_TOP + height}" x2="{_W - _RIGHT}" y2="{_TOP + height}"'
        ' stroke="#999"/>'
        f"{''.join(columns)}{drawn}</svg>"
        '<p><span class="key" style="background:#2a7"></span>from the cache'
        '<span class="key" style="background:#e80"></span>from upstream'
        '<span class="key" style="background:#25c;height:.2em"></span>hit ratio (pages and'
        " files), per hour, UTC</p>"
    )


def warm_jobs(reports: Sequence[bytes], now: float) -> str:
    rows = []
    for data in reports:
        try:
            job = report.decode(data).seen(now)
        except msgspec.DecodeError:
            continue  # an unreadable report: nothing to show
        status = job.status if job.status != "done" or job.ok else "done, with failures"
        css = "ok" if job.ok else "bad" if job.status != "running" else ""
        rows.append(
            f"<tr><td>{_when(job.created)}</td>"
            f'<td><a href="/warm/{escape(job.id)}">{escape(job.source)}</a></td>'
            f"<td>{escape(job.narrowing)}</td>"
            f'<td class="{css}" title="{escape(job.error or "")}">{escape(status)}</td>'
            f'<td class="n">{job.done_files}/{job.files}</td><td class="n">{job.cached}</td>'
            f'<td class="n">{job.already}</td><td class="n">{job.failed}</td>'
            f'<td class="n">{human(job.done_bytes)}</td></tr>'
        )
    return _table(
        ("Started", "Lock", "Targets", "Status", "Files", "Cached", "Already there", "Failed",
         "Bytes"),
        rows,
        "No warm job yet: <code>cachepi warm LOCKFILE</code>, or POST one to"
        " <code>/warm</code>.",
    )  # fmt: skip


def _recent(overview: Overview) -> str:
    rows = [
        f"<tr><td>{_when(at)}</td><td>{escape(project or '')}</td>"
        f'<td>{escape(filename or "")}</td><td class="n">{human(size)}</td></tr>'
        for at, project, filename, size in overview.recent
    ]
    return _table(("Stored", "Project", "File", "Size"), rows, "Nothing downloaded yet.")


def _biggest(overview: Overview) -> str:
    rows = [
        f'<tr><td><a href="/?q={escape(project)}">{escape(project)}</a></td>'
        f'<td class="n">{files}</td><td class="n">{human(size)}</td></tr>'
        for project, files, size in overview.biggest
    ]
    return _table(("Project", "Files", "Size"), rows, "No files cached yet.")


def _invalidate_forms(request: web.Request, project: str = "") -> str:
    token = (
        ' <label>Admin token <input name="token" type="password" required></label>'
        if request.app[SETTINGS].admin_token
        else ""
    )
    return (
        '<form id="invalidate-project" method="post" action="/cache/invalidate">'
        f'<label>Project <input name="project" required value="{escape(project)}" '
        f'pattern="[A-Za-z0-9._\\-]+"></label>{token} <button>Invalidate project</button></form>'
        '<form id="invalidate-list" method="post" action="/cache/invalidate">'
        f"{token} <button>Invalidate project list</button></form>"
    )


def _result(request: web.Request, query: str) -> str:
    """What is cached of the project `query`, and cached names starting with it."""
    if not is_valid_project_name(query):
        return f"<p>{escape(query)!s} is not a valid project name.</p>"
    name = normalize(query)
    store = request.app[METADATA]
    page_rows = [
        f"<tr><td>{escape(page.index)}</td><td>{_when(page.fetched_at)}</td>"
        f"<td>{'fresh' if page.fresh else 'stale'}</td>"
        f"<td>{'not on this index' if page.files is None else f'{page.files} files'}</td></tr>"
        for page in request.app[INDEX_CACHE].cached_pages(name)
    ]
    file_rows = [
        f'<tr><td>{escape(filename or sha256)}</td><td class="n">{human(size)}</td>'
        f"<td>{_when(used)}</td></tr>"
        for sha256, filename, size, used in store.blobs_of(name)
    ]
    similar = [key for key in store.page_keys(name, 20) if key != name]
    links = ", ".join(f'<a href="/?q={escape(key)}">{escape(key)}</a>' for key in similar)
    return (
        f'<h3>{escape(name)} <a href="/index/{escape(name)}/">(page)</a></h3>'
        + _table(("Index", "Fetched", "State", "Listed"), page_rows, "No page of it is cached.")
        + _table(("File", "Size", "Last used"), file_rows, "No file of it is cached.")
        + (f"<p>Also cached: {links}</p>" if links else "")
        + _invalidate_forms(request, name)
    )


async def home(request: web.Request) -> web.Response:
    try:
        overview = await request.app[OVERVIEWS].get()
    except StoreUnavailable as error:
        raise web.HTTPServiceUnavailable(text=f"{error}\n") from None
    query = request.query.get("q", "").strip()
    result = ""
    if query:
        # Store reads and a decode of each stored page: as long as the project is big.
        try:
            found = await asyncio.to_thread(_result, request, query)
        except StoreUnavailable as error:
            raise web.HTTPServiceUnavailable(text=f"{error}\n") from None
        result = f'<section id="result"><h2>Search result</h2>{found}</section>'

    body = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cachepi</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{_STYLE}</style></head>
<body><h1>cachepi</h1>
<p>Install through this proxy with
<code>pip install --index-url {escape(str(request.url.origin()))}/index/ PACKAGE</code></p>
<form id="search" method="get" action="/"><label>Project
<input name="q" value="{escape(query)}" required></label> <button>Search</button></form>
{result}
<section><h2>Upstream indexes</h2><div id="indexes">{_indexes(request)}</div></section>
<section><h2>Cache</h2><div id="cache">{_cache(request, overview)}</div></section>
<section><h2>Traffic, hour by hour</h2><div id="traffic">{
        traffic_chart(overview.hourly, time.time())
    }</div></section>
<section><h2>Warm jobs</h2><div id="warm">{warm_jobs(overview.jobs, time.time())}</div></section>
<section><h2>Recent misses</h2><div id="recent">{_recent(overview)}</div></section>
<section><h2>Biggest projects</h2><div id="biggest">{_biggest(overview)}</div></section>
<section><h2>Invalidate the index cache</h2>{
        _invalidate_forms(request)
        if not query
        else "<p>See the search result above, or clear the search.</p>"
    }</section>
<p><a href="/index/">Browse the index</a> · <a href="/health">Health</a> ·
<a href="/metrics">Metrics</a></p>
</body></html>
"""
    return web.Response(text=body, content_type="text/html")
