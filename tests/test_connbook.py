"""The book of client connections, pure: who is closed at the cap, and when a waiting
connection's time is up. Times are plain numbers: the clock is the test's."""

from __future__ import annotations

from cachepi.connbook import Book, Limits, connection_cap

HEAD, IDLE = 10.0, 15.0


def book(cap: int = 100, head: float = HEAD, idle: float = IDLE) -> Book[str]:
    return Book(Limits(head_timeout=head, keepalive_timeout=idle, cap=cap))


def served(connections: Book[str], conn: str, at: float, answered: float) -> None:
    """`conn` sends a complete head at `at` and is answered at `answered`."""
    connections.received(conn, at, busy=True)
    connections.answered(conn, answered)


def test_the_cap_is_half_the_descriptors_left_after_upstreams_and_the_process() -> None:
    assert connection_cap(1024, upstream_connections=64) == 352  # as the README says
    assert connection_cap(65536, upstream_connections=64) == 32608
    # Larger upstream pools leave less for clients; a tiny limit still leaves one.
    assert connection_cap(1024, upstream_connections=128) < 352
    assert connection_cap(256, upstream_connections=64) == 1


def test_under_the_cap_nothing_is_closed() -> None:
    connections = book(cap=3)
    assert [connections.opened(c, t, busy=False) for t, c in enumerate("abc")] == [None] * 3
    assert len(connections) == 3


def test_over_the_cap_the_connection_waiting_longest_is_closed() -> None:
    connections = book(cap=3)
    for t, conn in enumerate("abc"):
        connections.opened(conn, t, busy=False)
    assert connections.opened("d", 3, busy=False) == ("a", "evicted")
    assert connections.opened("e", 4, busy=False) == ("b", "evicted")
    assert len(connections) == 3


def test_a_busy_connection_is_never_evicted_however_old() -> None:
    connections = book(cap=3)
    for t, conn in enumerate("abc"):
        connections.opened(conn, t, busy=False)
    connections.received("a", 3, busy=True)  # the oldest is in the middle of a request
    assert connections.opened("d", 4, busy=False) == ("b", "evicted")


def test_with_every_other_connection_busy_the_newcomer_is_refused() -> None:
    connections = book(cap=2)
    connections.opened("a", 0, busy=False)
    connections.opened("b", 1, busy=True)  # its head came with it (as over TLS)
    connections.received("a", 2, busy=True)
    assert connections.opened("c", 3, busy=False) == ("c", "refused")
    assert len(connections) == 2
    connections.answered("a", 4)  # waiting again: now it may make room
    assert connections.opened("d", 5, busy=False) == ("a", "evicted")


def test_a_kept_alive_connection_waits_from_its_last_answer() -> None:
    """A client that was just answered is younger than silent sockets that came before."""
    connections = book(cap=3)
    connections.opened("client", 0, busy=False)
    connections.opened("silent-1", 1, busy=False)
    connections.opened("silent-2", 2, busy=False)
    served(connections, "client", at=0.1, answered=3)
    assert connections.opened("new-1", 4, busy=False) == ("silent-1", "evicted")
    assert connections.opened("new-2", 5, busy=False) == ("silent-2", "evicted")
    assert connections.opened("new-3", 6, busy=False) == ("client", "evicted")


def test_a_pipelined_connection_stays_busy_until_its_last_answer() -> None:
    connections = book(cap=2)
    connections.opened("a", 0, busy=False)
    connections.received("a", 1, busy=True)
    connections.received("a", 1.5, busy=True)  # a second head behind the first: no change
    connections.opened("b", 2, busy=False)
    assert connections.opened("c", 3, busy=False) == ("b", "evicted")
    assert connections.expired(1000) == [("c", "head_timeout")]  # never "a"


def test_a_head_is_due_from_connecting_however_it_trickles() -> None:
    connections = book()
    connections.opened("slowloris", 0, busy=False)
    for tenth in range(1, 100):
        connections.received("slowloris", tenth / 10, busy=False)
        assert connections.expired(tenth / 10) == []
    assert connections.expired(HEAD) == [("slowloris", "head_timeout")]
    assert len(connections) == 0


def test_a_head_in_time_ends_the_wait() -> None:
    connections = book()
    connections.opened("client", 0, busy=False)
    connections.received("client", HEAD - 0.1, busy=True)
    assert connections.expired(1000) == []


def test_a_kept_alive_connection_may_idle_for_the_keepalive_timeout() -> None:
    connections = book()
    connections.opened("client", 0, busy=False)
    served(connections, "client", at=1, answered=2)
    assert connections.expired(2 + IDLE - 0.01) == []
    assert connections.expired(2 + IDLE) == [("client", "keepalive_timeout")]


def test_the_next_head_is_due_from_its_first_byte() -> None:
    connections = book()
    connections.opened("client", 0, busy=False)
    served(connections, "client", at=1, answered=2)
    connections.received("client", 12, busy=False)  # the next request begins; no byte since 2
    connections.received("client", 13, busy=False)  # later bytes move nothing
    assert connections.expired(12 + HEAD - 0.01) == []  # past the idle deadline, 17
    assert connections.expired(12 + HEAD) == [("client", "head_timeout")]


def test_a_busy_connection_never_expires() -> None:
    connections = book()
    connections.opened("download", 0, busy=False)
    connections.received("download", 1, busy=True)
    assert connections.expired(10_000) == []
    connections.answered("download", 10_000)
    assert connections.expired(10_000 + IDLE) == [("download", "keepalive_timeout")]


def test_every_late_connection_is_found_whatever_its_place() -> None:
    """Connections wait in the order they began to; later ones may be due sooner."""
    connections = book(head=20, idle=5)
    connections.opened("fresh", 0, busy=False)  # due at 20
    connections.opened("kept", 1, busy=False)
    served(connections, "kept", at=1, answered=2)  # due at 7
    connections.opened("fresh-2", 3, busy=False)  # due at 23
    assert connections.expired(7) == [("kept", "keepalive_timeout")]
    assert connections.expired(23) == [("fresh", "head_timeout"), ("fresh-2", "head_timeout")]


def test_closed_connections_are_forgotten() -> None:
    connections = book(cap=1)
    connections.opened("a", 0, busy=False)
    connections.closed("a")
    connections.closed("a")  # closed twice (evicted, then its connection is lost): harmless
    connections.received("a", 1, busy=True)  # a late event of a closed connection
    connections.answered("a", 2)
    assert len(connections) == 0
    assert connections.opened("b", 3, busy=False) is None
    assert connections.expired(1000) == [("b", "head_timeout")]
