"""PEP 700 upload times for files whose index gives none (HTML pages, JSON before
api-version 1.1: devpi, Nexus, older Artifactory, mirrors). uv's `--exclude-newer` skips a
file without one. The upstream's Last-Modified for a file, when cachepi first touches it
(a range, a whole download or a HEAD), is recorded once for every process and node, and
pages show it as the file's `upload-time` from then on (catalog.py).

Best effort: a file nobody fetched through the proxy has none; a mirror's Last-Modified may
be when it fetched the file rather than when it was uploaded (later, so such a file is
excluded sooner, never later); a time ahead of the clock is taken as now. The release
cooldown does not use these times: a file would be shown, then hidden by the touch of the
resolution that picked it, between its metadata and its download. `UPLOAD_TIMES=index`
turns this off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from cachepi.catalog import METADATA_SUFFIX
from cachepi.redact import redact
from cachepi.store.protocols import UPLOAD_TIMES, MetadataStore, StoreUnavailable
from cachepi.store.shared_map import SharedMap

log = logging.getLogger(__name__)


def upload_time(last_modified: str, now: float) -> str | None:
    """A Last-Modified header as an upload time (ISO 8601, UTC, with `Z`), no later than
    `now`; None if it is not an HTTP date."""
    try:
        when = parsedate_to_datetime(last_modified)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; the obsolete forms may say nothing
        when = when.replace(tzinfo=UTC)
    stamp = min(when.timestamp(), now)
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class UploadTimes:
    """File URL -> the upload time recorded for it, in every process. `enabled=False`:
    nothing is recorded or shown."""

    def __init__(self, store: MetadataStore, clock: Callable[[], float], enabled: bool) -> None:
        self._store = store
        self._clock = clock
        self.enabled = enabled
        self._times = SharedMap(store, UPLOAD_TIMES, lambda urls: store.upload_times(urls), clock)

    def load(self) -> None:
        if self.enabled:
            self._times.load()

    def known(self) -> tuple[int, Mapping[str, str]]:
        """(generation, file URL -> upload time) of what pages may show."""
        return self._times.known() if self.enabled else (0, {})

    def saw(self, url: str, last_modified: str) -> None:
        """The upstream answered for the file at `url` with this Last-Modified: recorded
        as its upload time, unless one is (the first one stays). Not for PEP 658
        `.metadata` files: no page lists them."""
        if url in self._times.current or url.endswith(METADATA_SUFFIX):
            return
        time = upload_time(last_modified, self._clock())
        if time is None:
            return
        try:
            self._store.put_upload_time(url, time)
        except StoreUnavailable as failure:  # recorded at a later touch
            log.warning("cannot record the upload time of %s: %s", redact(url), failure)
            return
        self._times.add({url: time})
