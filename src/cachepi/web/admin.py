"""`/health`, and cache invalidation (`DELETE /cache/list|{project}`, the dashboard's forms)."""

from __future__ import annotations

from aiohttp import web

from cachepi.simple.names import is_valid_project_name, normalize
from cachepi.store.protocols import LIST_KEY, StoreUnavailable
from cachepi.web.auth import authenticated, require_admin
from cachepi.web.keys import INDEX_CACHE, PASSWORDS, RENDERED, SETTINGS, STORES
from cachepi.web.origin import cross_site


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
    try:
        request.app[INDEX_CACHE].invalidate(key)
    except StoreUnavailable as error:
        raise web.HTTPServiceUnavailable(text=f"cannot invalidate now: {error}\n") from None
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
    the list. Only from a page of this proxy: another site's page could make a visitor's
    browser post it, with the visitor's credentials."""
    headers = request.headers
    if cross_site(headers.get("Origin"), headers.get("Referer"), request.scheme, request.host):
        raise web.HTTPForbidden(text="refused: this form is posted from the dashboard only\n")
    form = await request.post()
    project = str(form.get("project", "")).strip()
    token = form.get("token")
    return _invalidate(request, project or None, token if isinstance(token, str) else None)


async def health(request: web.Request) -> web.Response:
    """200 while cachepi serves, also when an index fails ("degraded": cached pages and
    files still go out, so a load balancer should keep sending traffic). Under basic auth,
    a request without credentials gets the status only: index URLs, node names and errors
    are for users."""
    upstreams = request.app[INDEX_CACHE].upstreams
    stores = request.app[STORES]
    parts = {
        "storage": (stores.blobs.kind, stores.blobs.health),
        "metadata": (stores.metadata.kind, stores.metadata.health),
    }
    passwords = request.app.get(PASSWORDS)
    degraded = (
        not all(up.health.healthy for up in upstreams)
        or not all(health.healthy for _, health in parts.values())
        or (passwords is not None and not passwords.readable())
    )
    status = "degraded" if degraded else "ok"
    if not authenticated(request):
        return web.json_response({"status": status})
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
    return web.json_response(
        {
            "status": status,
            "node": request.app[SETTINGS].node_id,
            "indexes": indexes,
            **{
                name: {"kind": kind, "healthy": health.healthy, "last_error": health.last_error}
                for name, (kind, health) in parts.items()
            },
        }
    )
