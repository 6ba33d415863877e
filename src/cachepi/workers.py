"""`cachepi serve --workers N`: N processes serving one port and one cache.

The parent checks the cache once, then forks the workers; each listens on the same port
(SO_REUSEPORT, so the kernel spreads connections) and shares the cache directory, with
locks.py keeping them from duplicating downloads, page refreshes and evictions. A worker
that dies is replaced; SIGTERM or SIGINT stops them all; a parent that dies, even by
SIGKILL, takes its workers with it.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import ssl
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from aiohttp import web

from cachepi import listener
from cachepi.config import Settings
from cachepi.metrics import MULTIPROC_ENV, forget
from cachepi.web.app import create_app, reconcile_cache

log = logging.getLogger(__name__)

_RESTART_DELAY = 1.0


def serve(settings: Settings) -> None:
    """Serve until stopped: in this process for one worker, else in `settings.workers`.
    Call `check_port` first."""
    listener.raise_descriptor_limit()
    if settings.workers == 1:  # one process: its own counters are all there is
        _run(create_app(settings), settings)
        return
    _metrics_dir(settings.cache_dir / "metrics")
    reconcile_cache(settings)
    _supervise(settings)


def _metrics_dir(parent: Path) -> None:
    """Where every process of this server keeps its Prometheus values: a new directory
    (counters start from zero with the server) of this server's own, as another server may
    share the cache (blue/green); those of servers that are gone are removed."""
    parent.mkdir(parents=True, exist_ok=True)
    for entry in parent.iterdir():
        if not (entry.name.isdigit() and _alive(int(entry.name))):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)  # the layout before one directory per server
    path = parent / str(os.getpid())
    path.mkdir()
    os.environ[MULTIPROC_ENV] = str(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's
        return True
    return True


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server's TLS context when HTTPS is configured; OSError/SSLError if the files
    are unusable."""
    if settings.certfile is None or settings.keyfile is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.certfile, settings.keyfile)
    return context


LISTENING = "is listening"


def _run(app: web.Application, settings: Settings, reuse_port: bool = False) -> None:
    def listening() -> None:  # after the socket listens, unlike the startup lines
        log.info("worker %d %s on %s:%d", os.getpid(), LISTENING, settings.host, settings.port)

    listener.serve(
        app, settings, tls=tls_context(settings), reuse_port=reuse_port, listening=listening
    )


def check_port(host: str, port: int) -> None:
    """Raise OSError (EADDRINUSE) if some process listens on the port, before anything
    touches the cache: a server refuses to start there rather than share it.

    The probe binds every address the server would, without SO_REUSEPORT: with it, the
    kernel lets it (and the workers after it) join another cachepi's workers on the port,
    say those of a server restarted with new settings, and the two would split the
    connections. SO_REUSEADDR, so connections of a server just stopped (TIME_WAIT) do not
    count. The port is refused, not the cache directory: a second server on the same cache
    and another port (a blue/green restart) starts, as processes share a cache by design.
    Two servers started at the same moment can both pass the probe before either listens.
    """
    # As asyncio listens: "" is every interface, a name every address it has.
    for family, kind, proto, _, address in socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        try:
            probe = socket.socket(family, kind, proto)
        except OSError:  # a family this machine lacks (IPv6 off): asyncio skips it too
            continue
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # IPv4 is another address, as asyncio binds it
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.bind(address)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with(supervisor: int) -> None:
    """Have the kernel SIGKILL this worker the moment its supervisor dies, however it dies.

    A worker left behind would serve on with the old settings, hold the port, and split it
    with the next server. SIGKILL rather than a graceful stop: the listening socket closes
    at once, nothing in the worker has to run (a busy event loop cannot hold it up), and a
    kill is what the cache is made to survive (tests/test_crash.py). The kernel watches the
    thread that forked the worker: the supervisor's main thread, which lives as long as it.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != supervisor:  # it died before the prctl: no signal will come
        os._exit(1)


def _worker(settings: Settings, supervisor: int) -> None:
    _die_with(supervisor)
    _run(create_app(settings, reconcile=False), settings, reuse_port=True)


def _supervise(settings: Settings) -> None:
    context = multiprocessing.get_context("fork")
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    workers: list[BaseProcess] = []
    try:
        while not stopping:
            workers = [w for w in workers if w.is_alive()]
            for _ in range(settings.workers - len(workers)):
                started = context.Process(
                    target=_worker, args=(settings, os.getpid()), daemon=False
                )
                started.start()
                workers.append(started)
            time.sleep(_RESTART_DELAY)
            for worker in workers:
                if not worker.is_alive() and not stopping:
                    log.warning("worker %d exited with %s; starting another", worker.pid,
                                worker.exitcode)  # fmt: skip
                    assert worker.pid is not None  # it was started
                    forget(worker.pid)
    finally:
        for worker in workers:
            if worker.is_alive() and worker.pid is not None:
                os.kill(worker.pid, signal.SIGTERM)
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.kill()
