"""The book of one worker's client connections: which may stay open, and until when.

Pure: the caller says what happened and when, and closes what it is told to (listener.py).

A connection is busy from a complete request head until its response is done, and waiting
otherwise: since it connected, or since its last response (kept alive). Only waiting
connections have deadlines: a complete head within `head_timeout` of connecting, or of the
first byte of the next request on a kept-alive connection, and at most `keepalive_timeout`
idle between requests. Trickling a head byte by byte extends neither.

Over the cap, the connection that has waited longest is closed: a flood of silent sockets
pushes out its own oldest members, never a busy client. A newcomer waits too, so when every
other connection is busy, it is the one closed.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

Conn = TypeVar("Conn", bound=Hashable)
# Why a connection was closed while waiting for a request head (a metric's label).
Reason = Literal["evicted", "refused", "head_timeout", "keepalive_timeout"]

# Connections asyncio accepts in one go (the listen backlog), before any can be evicted.
ACCEPT_BACKLOG = 128
# Descriptors a worker holds besides connections: stdio, the event loop, the listening
# socket, SQLite and its journal, metric files, lock files (measured: about 20 when idle).
_OWN_DESCRIPTORS = 64


def connection_cap(descriptors: int, upstream_connections: int) -> int:
    """How many client connections a worker may hold with `descriptors` (RLIMIT_NOFILE).

    Set aside: the two upstream pools (pages, files) of `upstream_connections` each, a burst
    of accepted connections not yet evicted, the process's own files. Half of the rest, as
    a busy connection may hold a second descriptor: the stored file it is sent, or the part
    file of the download it follows.
    """
    spare = descriptors - 2 * upstream_connections - ACCEPT_BACKLOG - _OWN_DESCRIPTORS
    return max(1, spare // 2)


@dataclass(frozen=True)
class Limits:
    head_timeout: float
    keepalive_timeout: float
    cap: int


@dataclass
class _Waiting:
    since: float  # connected, or answered its last request
    head_from: float | None  # when its head became due; None: kept alive, no byte yet


class Book(Generic[Conn]):
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        # In the order they began waiting (times only grow): the oldest first.
        self._waiting: dict[Conn, _Waiting] = {}
        self._busy: set[Conn] = set()

    def __len__(self) -> int:
        return len(self._waiting) + len(self._busy)

    def opened(self, conn: Conn, now: float, busy: bool) -> tuple[Conn, Reason] | None:
        """A new connection (`busy`: its head came with it, as one may with the end of a TLS
        handshake); the connection to close if that makes one too many."""
        if busy:
            self._busy.add(conn)
        else:
            self._waiting[conn] = _Waiting(now, now)
        if len(self) <= self.limits.cap:
            return None
        oldest = next(iter(self._waiting), conn)
        self.closed(oldest)
        return oldest, "evicted" if oldest is not conn else "refused"

    def received(self, conn: Conn, now: float, busy: bool) -> None:
        """Bytes arrived; `busy`: a complete head is in that is not answered yet."""
        waiting = self._waiting.get(conn)
        if waiting is None:  # busy already, or closed
            return
        if busy:
            del self._waiting[conn]
            self._busy.add(conn)
        elif waiting.head_from is None:
            waiting.head_from = now

    def answered(self, conn: Conn, now: float) -> None:
        """Its last request is answered: it waits for the next one."""
        if conn in self._busy:
            self._busy.remove(conn)
            self._waiting[conn] = _Waiting(now, None)

    def closed(self, conn: Conn) -> None:
        self._waiting.pop(conn, None)
        self._busy.discard(conn)

    def expired(self, now: float) -> list[tuple[Conn, Reason]]:
        """The waiting connections past a deadline, forgotten: the caller closes them."""
        head, idle = self.limits.head_timeout, self.limits.keepalive_timeout
        shortest = min(head, idle)
        late: list[tuple[Conn, Reason]] = []
        for conn, waiting in self._waiting.items():
            if waiting.since + shortest > now:  # no deadline comes sooner: nor for later ones
                break
            if waiting.head_from is not None:
                if waiting.head_from + head <= now:
                    late.append((conn, "head_timeout"))
            elif waiting.since + idle <= now:
                late.append((conn, "keepalive_timeout"))
        for conn, _ in late:
            del self._waiting[conn]
        return late
