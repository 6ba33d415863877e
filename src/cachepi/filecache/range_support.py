"""Which upstream hosts send no ranges: many a private registry serves a whole file with a
200 whatever Range asks. Asking such a host again costs the start of a whole file each
time, so for an hour it is asked for whole files only; then ranges are tried again (it may
have been a proxy in front, since replaced)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import urlsplit

from cachepi.redact import redact

log = logging.getLogger(__name__)

FORGET_AFTER = 3600.0
_KEPT = 1024  # hosts remembered; the oldest go first


class RangeSupport:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._refused: dict[str, float] = {}  # scheme://host:port -> when it refused

    def serves(self, url: str) -> bool:
        """Whether to ask `url`'s host for ranges."""
        since = self._refused.get(_origin(url))
        if since is None:
            return True
        if self._clock() - since < FORGET_AFTER:
            return False
        del self._refused[_origin(url)]
        return True

    def refused(self, url: str, reason: str) -> None:
        """`url`'s host sent no range when asked for one (`reason`, for the log)."""
        origin = _origin(url)
        if origin not in self._refused:
            log.info("%s sends no ranges (%s): whole files only for a while", redact(url), reason)
        if len(self._refused) >= _KEPT:
            del self._refused[next(iter(self._refused))]
        self._refused[origin] = self._clock()


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2].lower()}"
