"""The password file: `user:hash` lines of bcrypt or argon2 hashes, read again when it
changes, and unreadable means nobody gets in.

With it comes a decoy: a hash of the kind and cost most of the file's entries have, which no
password matches. An unknown user is checked against it, so that a wrong name takes as long
to refuse as a wrong password and the time of a refusal does not say who exists.
"""

from __future__ import annotations

import base64
import logging
import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import bcrypt
from argon2 import PasswordHasher, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError

log = logging.getLogger(__name__)

RELOAD_SECONDS = 5.0
_BCRYPT = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}\Z")
_BCRYPT_DIGITS = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_BCRYPT_DIGEST = 31  # characters after the 22 of the salt


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


def cost(stored: str) -> str | None:
    """What sets the time a check against `stored` takes (`$2b$12` is bcrypt at cost 12,
    `$argon2id$v=19$m=65536,t=3,p=4` argon2 with those parameters); None when it is not a
    hash cachepi accepts."""
    if match := _BCRYPT.match(stored):
        return f"bcrypt {match[1]}" if 4 <= int(match[1]) <= 31 else None
    if stored.startswith("$argon2"):
        try:
            extract_parameters(stored)
        except InvalidHashError:
            return None
        return stored.rsplit("$", 2)[0]
    return None


def decoy(stored: str) -> str:
    """A hash of the kind and cost of `stored` (one `cost` accepts) with a random salt and
    digest: checking a password against it takes as long, and never succeeds."""
    if match := _BCRYPT.match(stored):
        salt = bcrypt.gensalt(int(match[1])).decode()  # random, and a salt bcrypt accepts
        return salt + "".join(secrets.choice(_BCRYPT_DIGITS) for _ in range(_BCRYPT_DIGEST))
    head, salt, digest = stored.rsplit("$", 2)
    return f"{head}${_random_like(salt)}${_random_like(digest)}"


def _random_like(unpadded_base64: str) -> str:
    size = len(unpadded_base64) * 3 // 4
    return base64.b64encode(secrets.token_bytes(size)).decode().rstrip("=")


@dataclass(frozen=True)
class Users:
    hashes: Mapping[str, str]
    decoy: str | None  # None when the file has no entry to model it on: nobody gets in


def parse(text: str) -> tuple[Users, list[str]]:
    """The users of a password file, and the lines it ignores (named by user, or number)."""
    hashes: dict[str, str] = {}
    by_cost: dict[str, list[str]] = {}
    ignored = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, colon, stored = line.partition(":")
        kind = cost(stored) if colon else None
        if kind is None:
            ignored.append(user if colon else f"line {number}")
            continue
        hashes[user] = stored
        by_cost.setdefault(kind, []).append(stored)
    common = max(by_cost.values(), key=len, default=None)
    return Users(hashes, None if common is None else decoy(common[0])), ignored


class Htpasswd:
    """The file's users as of the last look, at most every RELOAD_SECONDS; None while it
    cannot be read (missing, not readable, not UTF-8), said once in the log."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._users: Users | None = None
        self._version: tuple[int, ...] | None = None
        self._checked = -math.inf
        self._failing = False

    def users(self, now: float) -> Users | None:
        if now - self._checked >= RELOAD_SECONDS:
            self._checked = now
            self._reload()
        return self._users

    def _reload(self) -> None:
        try:
            status = self._path.stat()
            # ctime too: a chmod that makes the file unreadable changes nothing else.
            version = (status.st_ino, status.st_mtime_ns, status.st_ctime_ns, status.st_size)
            if version == self._version:
                return
            text = self._path.read_text(encoding="utf-8")
        except (OSError, ValueError) as error:
            self._users = self._version = None
            if not self._failing:
                self._failing = True
                log.warning(
                    "cannot read the password file %s (%s): refusing every request until it"
                    " can be read",
                    self._path,
                    error,
                )
            return
        self._users, ignored = parse(text)
        self._version = version
        if self._failing:
            self._failing = False
            log.info("the password file %s can be read again", self._path)
        if ignored:
            log.warning(
                "%s: ignored %s (neither bcrypt nor argon2)", self._path, ", ".join(ignored)
            )
