"""What of a URL anyone may see: `redact` cuts the user and password from it."""

from __future__ import annotations

from urllib.parse import urlsplit


def redact(url: str) -> str:
    """`url` without user:password, for anything a person or another program can see.

    From a URL that parses, only the user information is cut from the authority: an IPv6
    host keeps its brackets. One that does not (an impossible port, unbalanced brackets, no
    `scheme://`: what a configuration error shows) may hold its password anywhere, say
    after an unescaped `/`, so everything between the scheme and its last `@` goes.
    """
    if "@" not in url:
        return url
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - reading it checks it
    except ValueError:
        parts = None
    if parts is not None and parts.netloc:
        return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    scheme, separator, _ = url.partition("://")
    kept = scheme + separator if separator and "@" not in scheme else ""
    return kept + url.rpartition("@")[2]
