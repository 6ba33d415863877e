"""Whether a browser's POST comes from a page of the proxy itself (against cross-site
request forgery), pure.

X-Forwarded-* headers are not trusted anywhere in cachepi, so "the proxy itself" is the
scheme it is served with and the Host the request names: a reverse proxy in front must pass
both on unchanged for the dashboard's forms to work (DELETE is not affected).
"""

from __future__ import annotations

from yarl import URL


def cross_site(origin: str | None, referer: str | None, scheme: str, host: str) -> bool:
    """True unless the page that sent the request is on `scheme://host` (default ports
    filled in). Browsers send Origin with every POST, `null` when the origin is hidden
    (sandboxed frames, some redirects: refused, as it cannot be told); Referer is the
    fallback. A request with neither is not from a browser, and cannot be forged by one."""
    claimed = origin if origin is not None else referer
    if claimed is None:
        return False
    theirs = _origin(claimed)
    return theirs is None or theirs != _origin(f"{scheme}://{host}")


def _origin(url: str) -> tuple[str, str, int | None] | None:
    try:
        parsed = URL(url)
    except ValueError:
        return None
    if not parsed.absolute or not parsed.host:
        return None
    return parsed.scheme.lower(), parsed.host.lower(), parsed.port
