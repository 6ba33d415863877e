"""The home page, `/health`, and cache invalidation (`DELETE /cache/list|{project}`)."""

from __future__ import annotations

from html import escape

from aiohttp import web

from cachepi.simple.names import is_valid_project_name, normalize
from cachepi.store.metadata import LIST_KEY
from cachepi.web.auth import require_admin
from cachepi.web.keys import FILE_CACHE, INDEX_CACHE, SETTINGS
from cachepi.web.pages import RENDERED


def _invalidate(
    request: web.Request, project: str | None, form_token: str | None = None
) -> web.Response:
    """Drop a project's pages (or, with None, the project list) everywhere; the next
    request refetches it, once however many clients ask."""
    require_admin(request, form_token)
    if project is None:
        key, message = LIST_KEY, "invalidated the project list"
    elif is_valid_project_name(project):
        key = normalize(project)
        message = f"invalidated {key}"
    else:
        raise web.HTTPBadRequest(text="invalid project name\n")
    request.app[INDEX_CACHE].invalidate(key)
    request.app[RENDERED].forget(key)
    if request.method == "POST":  # a browser form: back to the home page
        raise web.HTTPSeeOther("/")
    return web.json_response({"status": "ok", "message": message})


async def invalidate_list(request: web.Request) -> web.Response:
    return _invalidate(request, None)


async def invalidate_project(request: web.Request) -> web.Response:
    return _invalidate(request, request.match_info["project"])


async def invalidate_form(request: web.Request) -> web.Response:
    """The home page's forms (no JavaScript needed): POST project=NAME, or nothing for
    the list."""
    form = await request.post()
    project = str(form.get("project", "")).strip()
    token = form.get("token")
    return _invalidate(request, project or None, token if isinstance(token, str) else None)


async def health(request: web.Request) -> web.Response:
    """200 while cachepi serves, also when an index fails ("degraded": cached pages and
    files still go out, so a load balancer should keep sending traffic)."""
    upstreams = request.app[INDEX_CACHE].upstreams
    indexes = [
        {
            "name": up.name,
            "url": up.url,
            "ttl": up.ttl,
            "healthy": up.health.healthy,
            "last_success": up.health.last_success,
            "last_failure": up.health.last_failure,
            "last_error": up.health.last_error,
        }
        for up in upstreams
    ]
    degraded = not all(up.health.healthy for up in upstreams)
    return web.json_response({"status": "degraded" if degraded else "ok", "indexes": indexes})


async def home(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    count, total = request.app[FILE_CACHE].usage()
    upstream_rows = "".join(
        f"<tr><td>{escape(up.name)}</td><td>{escape(up.url)}</td><td>{up.ttl} s</td>"
        f"<td>{'ok' if up.health.healthy else 'failing: ' + escape(up.health.last_error or '')}"
        "</td></tr>"
        for up in request.app[INDEX_CACHE].upstreams
    )
    limit = _human(settings.cache_size) if settings.cache_size else "0 (files not stored)"
    token_field = (
        ' <label>Admin token <input name="token" type="password" required></label>'
        if settings.admin_token
        else ""
    )
    body = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cachepi</title>
<style>body{{font-family:system-ui,sans-serif;max-width:50rem;margin:2rem auto;padding:0 1rem}}
table{{border-collapse:collapse}}td,th{{padding:.2rem .8rem;text-align:left}}</style></head>
<body><h1>cachepi</h1>
<p>Install through this proxy with
<code>pip install --index-url {escape(str(request.url.origin()))}/index/ PACKAGE</code></p>
<h2>Upstream indexes</h2>
<table><tr><th>Name</th><th>URL</th><th>TTL</th><th>Health</th></tr>{upstream_rows}</table>
<h2>File cache</h2>
<p>{count} files, {_human(total)} of {limit}.</p>
<h2>Invalidate the index cache</h2>
<form method="post" action="/cache/invalidate"><label>Project
<input name="project" required pattern="[A-Za-z0-9._\\-]+"></label>{token_field}
<button>Invalidate project</button></form>
<form method="post" action="/cache/invalidate">{token_field}
<button>Invalidate project list</button></form>
<p><a href="/index/">Browse the index</a> · <a href="/health">Health</a></p>
</body></html>
"""
    return web.Response(text=body, content_type="text/html")


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}" if unit != "B" else f"{size} B"
        value /= 1024
    return f"{value:.1f} TiB"
