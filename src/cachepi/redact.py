"""What of a URL anyone may see: `redact` cuts the user and password from it."""

from __future__ import annotations

from urllib.parse import urlsplit


def redact(url: str) -> str:
    """`url` without user:password, for anything a person or another program can see.
    Only the user information is cut from the authority: an IPv6 host keeps its brackets,
    and a port is left as written (even one that is no number)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
