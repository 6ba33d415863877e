"""Conditional and Range requests on files (RFC 9110 sections 13 and 14), pure.

Only a single byte range is honoured; anything else (several ranges, other units, malformed
text) means "send the whole file", which the RFC allows a server to do.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*([0-9]*)\s*-\s*([0-9]*)\s*$", re.IGNORECASE)
# A position with more digits than this is past the end of any file (and int() refuses
# strings of thousands of digits).
_MAX_DIGITS = 18


class RangeNotSatisfiable(Exception):
    """The range starts past the end of the file: answer 416 with `bytes */size`."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The half-open byte span [start, stop) a Range header asks of a `size`-byte file.

    None means: ignore the header and send everything.
    """
    if not header:
        return None
    match = _RANGE_RE.match(header)
    if not match:
        return None
    first, last = match[1], match[2]
    if not first:
        if not last:
            return None
        suffix = _position(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - suffix), size
    start = _position(first)
    stop = size if not last else _position(last) + 1
    if last and stop <= start:
        return None  # "bytes=5-3" is invalid: the RFC says ignore it
    if start >= size:
        raise RangeNotSatisfiable
    return start, min(stop, size)


def _position(digits: str) -> int:
    return int(digits) if len(digits) <= _MAX_DIGITS else 10**_MAX_DIGITS


@dataclass(frozen=True)
class Plan:
    """How to answer a GET/HEAD of a file: status, byte span [start, stop), extra headers."""

    status: int
    start: int = 0
    stop: int | None = None
    headers: dict[str, str] = field(default_factory=dict)


def plan_response(headers: Mapping[str, str], size: int | None, etag: str | None) -> Plan:
    """Apply If-None-Match, If-Range and Range to a file of `size` bytes (None: unknown yet).

    If-Range is honoured only with our exact strong ETag; a date or another tag means the
    client's copy may differ, so it gets the whole file.
    """
    if etag is not None and etag_matches(headers.get("If-None-Match"), etag):
        return Plan(304)
    if size is None:
        return Plan(200)
    if_range = headers.get("If-Range")
    if if_range is not None and if_range.strip() != etag:
        return Plan(200, 0, size)
    try:
        span = parse_range(headers.get("Range"), size)
    except RangeNotSatisfiable:
        return Plan(416, headers={"Content-Range": f"bytes */{size}"})
    if span is None:
        return Plan(200, 0, size)
    start, stop = span
    return Plan(206, start, stop, {"Content-Range": f"bytes {start}-{stop - 1}/{size}"})


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 weak comparison, as If-None-Match requires."""
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag.removeprefix("W/") in tags
