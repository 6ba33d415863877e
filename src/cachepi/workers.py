"""`cachepi serve --workers N`: N processes serving one port and one cache.

The parent checks the cache once, then forks the workers; each listens on the same port
(SO_REUSEPORT, so the kernel spreads connections) and shares the cache directory, with
locks.py keeping them from duplicating downloads, page refreshes and evictions. A worker
that dies is replaced; SIGTERM or SIGINT stops them all.
"""

from __future__ import annotations

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
    """Serve until stopped: in this process for one worker, else in `settings.workers`."""
    listener.raise_descriptor_limit()
    if settings.workers == 1:  # one process: its own counters are all there is
        _run(create_app(settings), settings)
        return
    _metrics_dir(settings.cache_dir / "metrics")
    check_port(settings.host, settings.port)
    reconcile_cache(settings)
    _supervise(settings)


def _metrics_dir(path: Path) -> None:
    """Where every process of this server keeps its Prometheus values, emptied: counters
    start from zero with the server."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(path)


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
    """Raise OSError now if the workers will not be able to listen."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        probe.bind((host, port))


def _worker(settings: Settings) -> None:
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
                started = context.Process(target=_worker, args=(settings,), daemon=False)
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
