"""Access control over HTTP: basic auth against the password file (passwords.py decides), the
admin token for invalidation, and what auth changes in every response.

Under basic auth every response says `Cache-Control: private` (a shared cache in front must
not hand one client's answer to another), and `/health` answers without credentials but
then says only ok or degraded.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

from cachepi.web.htpasswd import RELOAD_SECONDS, Htpasswd
from cachepi.web.keys import PASSWORDS, SETTINGS, USER
from cachepi.web.passwords import PasswordChecks, Verdict, address_key

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Basic auth takes the Authorization header, so the admin token has a header of its own.
ADMIN_TOKEN_HEADER = "X-Cachepi-Admin-Token"
_OPEN_PATHS = frozenset({"/health"})
_CHALLENGE = {"WWW-Authenticate": 'Basic realm="cachepi"'}


def protect(app: web.Application, htpasswd: Path) -> None:
    """Basic auth for every path but /health, and private caching of every response."""
    checks = app[PASSWORDS] = PasswordChecks(Htpasswd(htpasswd))
    app.middlewares.append(basic_auth(checks))
    app.on_response_prepare.append(_private_caching)

    async def close(app: web.Application) -> None:
        checks.close()

    app.on_cleanup.append(close)


def require_admin(request: web.Request, form_token: str | None = None) -> None:
    """Refuse the request unless it carries the admin token (when one is configured):
    `X-Cachepi-Admin-Token`, `Authorization: Bearer` (free only without basic auth), or
    the dashboard form's field."""
    expected = request.app[SETTINGS].admin_token
    if expected is None:
        return
    header = request.headers.get("Authorization", "")
    bearer = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else None
    given = request.headers.get(ADMIN_TOKEN_HEADER) or bearer or form_token
    if given is not None and hmac.compare_digest(given.encode(), expected.encode()):
        return
    if PASSWORDS in request.app:
        # The user is in; a 401 would tell the client its (right) password is wrong.
        raise web.HTTPForbidden(text=f"this needs the admin token: {ADMIN_TOKEN_HEADER}\n")
    raise web.HTTPUnauthorized(
        text=f"this needs the admin token: Authorization: Bearer or {ADMIN_TOKEN_HEADER}\n",
        headers={"WWW-Authenticate": 'Bearer realm="cachepi admin"'},
    )


def authenticated(request: web.Request) -> bool:
    """Auth is off, or the request's credentials are right."""
    return PASSWORDS not in request.app or USER in request


def basic_auth(checks: PasswordChecks) -> Middleware:
    """Middleware: right basic-auth credentials on every path, and on /health when given."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        credentials = _basic_credentials(request.headers.get("Authorization", ""))
        if credentials is None:
            if request.path in _OPEN_PATHS:
                return await handler(request)
            raise web.HTTPUnauthorized(text="credentials needed\n", headers=_CHALLENGE)
        outcome = await checks.check(*credentials, address_key(request.remote))
        match outcome.verdict:
            case Verdict.PASS:
                request[USER] = credentials[0]
                return await handler(request)
            case Verdict.UNAVAILABLE:
                # Not 401: the credentials may well be right, and nothing the client
                # sends can help until the file is back (it is looked at every 5 s).
                raise web.HTTPServiceUnavailable(
                    text="the password file cannot be read: nobody is let in\n",
                    headers={"Retry-After": str(int(RELOAD_SECONDS))},
                )
            case Verdict.LIMITED:
                seconds = outcome.retry_after
                raise web.HTTPTooManyRequests(
                    text=f"too many failed attempts: try again in {seconds} s\n",
                    headers={"Retry-After": str(seconds)},
                )
            case Verdict.WRONG:
                raise web.HTTPUnauthorized(text="credentials needed\n", headers=_CHALLENGE)

    return check


def private(cache_control: str | None) -> str:
    """`cache_control` for one client only: without `public` (or `s-maxage`), with
    `private`; max-age and the rest kept."""
    directives = [d.strip() for d in (cache_control or "").split(",") if d.strip()]
    names = {"public", "s-maxage", "private"}
    kept = [d for d in directives if d.partition("=")[0].strip().lower() not in names]
    return ", ".join([*kept, "private"])


async def _private_caching(request: web.Request, response: web.StreamResponse) -> None:
    # Before any response's headers go out: errors, 304s and streamed files alike.
    response.headers["Cache-Control"] = private(response.headers.get("Cache-Control"))


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None
