"""Rendered pages: a page's bytes in one format and every coding we send, made once per
content version (rendering and compressing a big page is costly) and kept by count."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import zstandard

from cachepi.simple.model import Project, ProjectList
from cachepi.simple.negotiate import Format, content_type
from cachepi.simple.render import (
    render_project_html,
    render_project_json,
    render_project_list_html,
    render_project_list_json,
)
from cachepi.store.protocols import LIST_KEY

_PROJECT_RENDERERS: dict[Format, Callable[[Project], bytes]] = {
    Format.JSON: render_project_json,
    Format.HTML_V1: render_project_html,
    Format.HTML: render_project_html,
}
_LIST_RENDERERS: dict[Format, Callable[[ProjectList], bytes]] = {
    Format.JSON: render_project_list_json,
    Format.HTML_V1: render_project_list_html,
    Format.HTML: render_project_list_html,
}


class Representation:
    """One rendered page in one format: its bytes in every coding we send, each with its
    own strong ETag (a different coding is a different representation)."""

    def __init__(self, body: bytes, fmt: Format) -> None:
        self.content_type = content_type(fmt)
        etag = hashlib.blake2b(body, digest_size=12).hexdigest()
        self.codings: dict[str, tuple[bytes, str]] = {
            "identity": (body, f'"{etag}"'),
            "gzip": (gzip.compress(body, compresslevel=6, mtime=0), f'"{etag}-gz"'),
            # A compressor per page: they are not safe to share between render threads.
            "zstd": (zstandard.ZstdCompressor(level=3).compress(body), f'"{etag}-zst"'),
        }


class RenderCache:
    """Rendered pages by (key, format), replaced when the content version changes."""

    def __init__(self, max_entries: int = 2048) -> None:
        self._entries: OrderedDict[tuple[str, Format], tuple[str, Representation]] = OrderedDict()
        self._max_entries = max_entries

    async def get(
        self, key: str, version: str, fmt: Format, render: Callable[[], bytes]
    ) -> Representation:
        slot = (key, fmt)
        held = self._entries.get(slot)
        if held is not None and held[0] == version:
            self._entries.move_to_end(slot)
            return held[1]
        # Rendering and compressing a big page takes long enough to stall other requests.
        representation = await asyncio.to_thread(lambda: Representation(render(), fmt))
        self._entries[slot] = (version, representation)
        self._entries.move_to_end(slot)
        if len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return representation

    def forget(self, key: str) -> None:
        for fmt in Format:
            self._entries.pop((key, fmt), None)

    # Plain functions handing back `get`'s coroutine: no second coroutine per request.
    def project(
        self, name: str, version: str, fmt: Format, project: Callable[[], Project]
    ) -> Awaitable[Representation]:
        return self.get(name, version, fmt, lambda: _PROJECT_RENDERERS[fmt](project()))

    def project_list(
        self, version: str, fmt: Format, names: ProjectList
    ) -> Awaitable[Representation]:
        return self.get(LIST_KEY, version, fmt, lambda: _LIST_RENDERERS[fmt](names))
