"""Access control: an admin token for cache invalidation, and basic auth for reading.

Basic auth checks `user:password` against an htpasswd-style file of bcrypt or argon2
hashes. Those are slow on purpose (tens of milliseconds), so a check runs in a thread and a
successful one is remembered, keyed by a hash of the credentials and the stored hash.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path

import bcrypt
from aiohttp import web
from aiohttp.typedefs import Middleware
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from cachepi.web.keys import SETTINGS

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_OPEN_PATHS = frozenset({"/health"})
_REMEMBERED = 1024
_RELOAD_SECONDS = 5.0


def require_admin(request: web.Request, form_token: str | None = None) -> None:
    """401 unless the request carries the admin token (when one is configured)."""
    expected = request.app[SETTINGS].admin_token
    if expected is None:
        return
    header = request.headers.get("Authorization", "")
    given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else form_token
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise web.HTTPUnauthorized(
            text="this needs the admin token: Authorization: Bearer <token>\n",
            headers={"WWW-Authenticate": 'Bearer realm="cachepi admin"'},
        )


def verify_password(password: str, stored: str) -> bool:
    """Check a password against a bcrypt (`$2a$`, `$2b$`, `$2y$`) or argon2 hash."""
    if stored.startswith(("$2a$", "$2b$", "$2y$")):
        try:
            return bcrypt.checkpw(password.encode(), stored.encode())
        except ValueError:
            return False
    if stored.startswith("$argon2"):
        try:
            return PasswordHasher().verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False
    return False  # plain text, crypt, MD5...: not accepted


class Htpasswd:
    """Users and hashes from an htpasswd-style file, reloaded when it changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._users: dict[str, str] = {}
        self._mtime = -1.0
        self._checked = -_RELOAD_SECONDS
        self._remembered: OrderedDict[bytes, None] = OrderedDict()

    def _reload(self, now: float) -> None:
        if now - self._checked < _RELOAD_SECONDS:
            return
        self._checked = now
        mtime = self._path.stat().st_mtime
        if mtime != self._mtime:
            self._mtime = mtime
            self._users = dict(
                line.strip().split(":", 1)
                for line in self._path.read_text().splitlines()
                if ":" in line and not line.lstrip().startswith("#")
            )

    async def check(self, user: str, password: str, now: float) -> bool:
        self._reload(now)
        stored = self._users.get(user)
        if stored is None:
            return False
        key = hashlib.sha256(f"{user}\0{password}\0{stored}".encode()).digest()
        if key in self._remembered:
            self._remembered.move_to_end(key)
            return True
        if not await asyncio.to_thread(verify_password, password, stored):
            return False
        self._remembered[key] = None
        if len(self._remembered) > _REMEMBERED:
            self._remembered.popitem(last=False)
        return True


def basic_auth(htpasswd: Htpasswd) -> Middleware:
    """Middleware: every path but /health needs valid basic-auth credentials."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in _OPEN_PATHS:
            credentials = _basic_credentials(request.headers.get("Authorization", ""))
            loop_time = asyncio.get_running_loop().time()
            if credentials is None or not await htpasswd.check(*credentials, loop_time):
                raise web.HTTPUnauthorized(
                    text="credentials needed\n",
                    headers={"WWW-Authenticate": 'Basic realm="cachepi"'},
                )
        return await handler(request)

    return check


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
