"""Which Simple-API format, and which content coding, to answer a request with.

Headers come from any client on the network, so nothing here raises: a malformed entry is
skipped, never an error.
"""

from __future__ import annotations

import enum
import functools
import math


class Format(enum.Enum):
    JSON = "application/vnd.pypi.simple.v1+json"
    HTML_V1 = "application/vnd.pypi.simple.v1+html"
    HTML = "text/html"


# Media types (lowercase, parameters stripped) that name a format outright; PEP 691's
# "latest" aliases are answered with the v1 type.
_EXACT = {
    Format.JSON.value: Format.JSON,
    "application/vnd.pypi.simple.latest+json": Format.JSON,
    Format.HTML_V1.value: Format.HTML_V1,
    "application/vnd.pypi.simple.latest+html": Format.HTML_V1,
    Format.HTML.value: Format.HTML,
}
# The short spellings ?format= also takes ("latest+json" and the like).
_SHORT = {
    media.removeprefix("application/vnd.pypi.simple."): fmt
    for media, fmt in _EXACT.items()
    if media.startswith("application/")
}
# Server preference on equal quality: JSON is the smallest and cheapest for installers...
_PREFERENCE = (Format.JSON, Format.HTML_V1, Format.HTML)
# ...but a client that names none of our types (no Accept, "*/*") is a browser or a
# pre-PEP 691 installer, and both expect the original text/html page.
_WILDCARD_PREFERENCE = (Format.HTML, Format.HTML_V1, Format.JSON)

# Content codings we can send for pages, in server preference.
CODINGS = ("zstd", "gzip")

# How specifically an Accept entry named a format: the most specific entry decides its q.
_ANY, _SAME_TYPE, _EXACT_TYPE = 0, 1, 2


def content_type(fmt: Format) -> str:
    """The Content-Type header value for a page in `fmt`."""
    return f"{fmt.value}; charset=utf-8" if fmt is Format.HTML else fmt.value


@functools.lru_cache(maxsize=1024)  # pure, and clients send the same few headers
def choose_format(accept: str | None, format_param: str | None) -> Format | None:
    """The format to answer with; None when the client refuses all of them (answer 406).

    `?format=` wins when it names a supported type. Otherwise the highest q in Accept wins,
    ties going to the more specific match, then to the server's preference.
    """
    if format_param:
        # An unescaped "+" in a query string arrives as a space; media types have none.
        wanted = format_param.strip().lower().replace(" ", "+")
        fmt = _EXACT.get(wanted) or _SHORT.get(wanted)
        if fmt is not None:
            return fmt
    entries = _parse_accept(accept or "")
    if not entries:
        # RFC 9110: no Accept means anything is acceptable; an unreadable one is no better.
        entries = [("*/*", 1.0)]
    scores = {fmt: _quality(fmt, entries) for fmt in Format}
    best = max(Format, key=lambda fmt: _rank(fmt, *scores[fmt]))
    return best if scores[best][0] > 0 else None


@functools.lru_cache(maxsize=1024)
def choose_encoding(accept_encoding: str | None) -> str:
    """The content coding for a page: the acceptable one (by name or through "*") with the
    highest q, "zstd" on a tie (smaller and far cheaper to decode); else "identity"."""
    qualities = dict(_parse_accept(accept_encoding or ""))
    wildcard = qualities.get("*", 0.0)
    best, best_q = "identity", 0.0
    for coding in CODINGS:
        q = qualities.get(coding, qualities.get(f"x-{coding}", wildcard))
        if q > best_q:
            best, best_q = coding, q
    return best


def _rank(fmt: Format, q: float, specificity: int) -> tuple[float, int, int]:
    """Sort key: q, then how specifically the client named it, then server preference."""
    order = _WILDCARD_PREFERENCE if specificity == _ANY else _PREFERENCE
    return q, specificity, -order.index(fmt)


def _quality(fmt: Format, entries: list[tuple[str, float]]) -> tuple[float, int]:
    """q and specificity of the most specific Accept entry matching `fmt` (0, 0 if none)."""
    best = (0.0, -1)
    main_type = fmt.value.partition("/")[0]
    for media, q in entries:
        if _EXACT.get(media) is fmt:
            specificity = _EXACT_TYPE
        elif media == f"{main_type}/*":
            specificity = _SAME_TYPE
        elif media == "*/*":
            specificity = _ANY
        else:
            continue
        # A more specific entry overrides; among equals the higher q counts.
        if (specificity, q) > (best[1], best[0]):
            best = (q, specificity)
    return best[0], max(best[1], _ANY)


def _parse_accept(header: str) -> list[tuple[str, float]]:
    """(lowercased token, q) for each readable entry of an Accept-style header."""
    entries = []
    for item in header.split(","):
        token, *params = item.split(";")
        token = token.strip().lower()
        q = _q_value(params)
        if token and q is not None:
            entries.append((token, q))
    return entries


def _q_value(params: list[str]) -> float | None:
    """The entry's q (1 when absent); None when it is malformed, so the entry is skipped."""
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() != "q":
            continue
        try:
            q = float(value.strip())
        except ValueError:
            return None
        return q if math.isfinite(q) and 0 <= q <= 1 else None
    return 1.0
