"""Password checks: remembered when right, limited when wrong, on threads of their own.

bcrypt and argon2 are slow on purpose, so:

- credentials checked right once are remembered (keyed by a digest of the user, the
  password and its stored hash) and pass from then on without a check: no guessing slows
  them down;
- other checks run on a small pool of their own ("password"), never the default executor
  that the rest of cachepi uses;
- failures count per client address (an IPv6 /64 as one) and per user name, known or not.
  While either is over its limit, that request's check still runs, so right credentials
  still pass (a whole CI fleet may share one NAT address with someone typing a wrong
  password), but on one separate thread ("password-suspect"), one check per address at a
  time, so guessers never hold the normal pool nor crowd out other addresses; a wrong
  password there is answered LIMITED (429) instead of WRONG (401). A check counts as a
  failure while it runs, so a burst of simultaneous guesses is limited too;
- an unknown user is checked against a decoy hash of the file's kind and cost;
- simultaneous checks of the same credentials run once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import hashlib
import ipaddress
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from cachepi.web.attempts import FailedAttempts
from cachepi.web.htpasswd import Htpasswd, verify_password

_REMEMBERED = 1024
_THREADS = 2  # checks are CPU-bound: more threads than this would take cores from serving
_KEYS = 10_000  # addresses, and user names, whose failures are remembered


class Verdict(enum.Enum):
    PASS = "pass"
    WRONG = "wrong"
    LIMITED = "limited"  # wrong, and over a limit: retry_after says for how long
    UNAVAILABLE = "unavailable"  # the password file cannot be read: nobody gets in


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    retry_after: int = 0


def address_key(remote: str | None) -> str:
    """Whose failures count together: an IPv4 address, or an IPv6 /64 (what one subscriber
    usually holds, so cycling through it does not escape the limit)."""
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return remote or ""
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


@dataclass
class _Turns:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: int = 0


class PasswordChecks:
    def __init__(
        self,
        htpasswd: Htpasswd,
        verify: Callable[[str, str], bool] = verify_password,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._htpasswd = htpasswd
        self._verify = verify
        self._clock = clock
        self._remembered: OrderedDict[bytes, None] = OrderedDict()
        self._running: dict[bytes, asyncio.Task[bool]] = {}
        # 20 failures at once, then one every 3 s (a NAT address is shared by many clients,
        # so it may fail more often than one user may); a user: 10, then one every 6 s.
        self._by_address = FailedAttempts(burst=20, every=3.0, capacity=_KEYS)
        self._by_user = FailedAttempts(burst=10, every=6.0, capacity=_KEYS)
        self._pool = concurrent.futures.ThreadPoolExecutor(_THREADS, "password")
        self._suspects = concurrent.futures.ThreadPoolExecutor(1, "password-suspect")
        self._turns: dict[str, _Turns] = {}

    def readable(self) -> bool:
        """The password file can be read (else everyone is refused)."""
        return self._htpasswd.users(self._clock()) is not None

    def close(self) -> None:
        for pool in (self._pool, self._suspects):
            pool.shutdown(wait=False, cancel_futures=True)

    async def check(self, user: str, password: str, address: str) -> Outcome:
        now = self._clock()
        users = self._htpasswd.users(now)
        if users is None:
            return Outcome(Verdict.UNAVAILABLE)
        stored = users.hashes.get(user)
        key = hashlib.sha256(repr((user, password, stored)).encode()).digest()
        if stored is not None and key in self._remembered:
            self._remembered.move_to_end(key)
            return Outcome(Verdict.PASS)
        # Names are keyed by digest: a name may be kilobytes long.
        counted = (
            (self._by_address, address),
            (self._by_user, hashlib.blake2b(user.encode(), digest_size=16).digest()),
        )
        suspect = any(limit.retry_after(k, now) for limit, k in counted)
        added = [limit.fail(k, now) for limit, k in counted]
        target = stored or users.decoy
        right = target is not None and await self._checked(
            key, password, target, address if suspect else None
        )
        now = self._clock()
        if right and stored is not None:
            for (limit, k), amount in zip(counted, added, strict=True):
                limit.forgive(k, amount, now)
            self._remembered[key] = None
            if len(self._remembered) > _REMEMBERED:
                self._remembered.popitem(last=False)
            return Outcome(Verdict.PASS)
        retry_after = max(limit.retry_after(k, now) for limit, k in counted)
        return Outcome(Verdict.LIMITED, retry_after) if retry_after else Outcome(Verdict.WRONG)

    async def _checked(self, key: bytes, password: str, stored: str, suspect: str | None) -> bool:
        """One check of these credentials, however many requests wait for it; a client
        that hangs up does not cancel it for the others."""
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(self._run(password, stored, suspect))
            self._running[key] = task
            task.add_done_callback(lambda _: self._running.pop(key, None))
        return await asyncio.shield(task)

    async def _run(self, password: str, stored: str, suspect: str | None) -> bool:
        loop = asyncio.get_running_loop()
        if suspect is None:
            return await loop.run_in_executor(self._pool, self._verify, password, stored)
        async with self._turn(suspect):
            return await loop.run_in_executor(self._suspects, self._verify, password, stored)

    @contextlib.asynccontextmanager
    async def _turn(self, address: str) -> AsyncIterator[None]:
        """One suspect check per address at a time, in arrival order: an address sending
        many guesses at once waits for its own, other addresses pass in between."""
        turns = self._turns.setdefault(address, _Turns())
        turns.waiting += 1
        try:
            async with turns.lock:
                yield
        finally:
            turns.waiting -= 1
            if not turns.waiting:
                del self._turns[address]
