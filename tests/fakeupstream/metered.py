"""FakeUpstream, measured: what it actually sent, and the connections it has open.

    async with MeteredUpstream() as up:
        ...
        up.sent(up.file_path(dist.filename))   # bytes it put on the wire for that path (GETs)
        up.unfinished("/files/")              # responses under a prefix still being sent
        up.open_connections()                 # TCP connections clients hold open to it

For asserting what a proxy pulled from its upstream, and that it let go of a connection.
Nothing here imports pytest, like the rest of the package.
"""

from __future__ import annotations

from aiohttp import web

from .server import BODY_RESPONSE, FakeUpstream


class MeteredUpstream(FakeUpstream):
    """A FakeUpstream that also counts the bytes each response put on the wire (headers
    included: what its transport took, also when the client hung up half-way)."""

    def __init__(self, **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self._sent: dict[int, int] = {}  # index in `requests` -> bytes written

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        index = len(self.requests)  # the record super() appends before its first await
        response: web.StreamResponse | None = None
        try:
            response = await super()._handle(request)
            return response
        finally:  # also when the handler is cancelled: the client hung up mid-body
            response = response if response is not None else request.get(BODY_RESPONSE)
            self._sent[index] = 0 if response is None else _written(response)

    def sent(self, path: str, method: str | None = "GET") -> int:
        """Bytes sent in answers to `path` (a trailing `*`: a prefix) that have ended (or
        were cut off)."""
        return sum(
            self._sent.get(index, 0)
            for index, record in enumerate(self.requests)
            if _matches(record.path, path) and (method is None or record.method == method)
        )

    def unfinished(self, prefix: str) -> int:
        """Answers under `prefix` not yet fully sent (or cut): being sent right now."""
        return sum(1 for r in self.requests if r.path.startswith(prefix) and r.finished is None)

    def open_connections(self) -> int:
        """Connections clients hold open to this server now (idle keep-alive ones too)."""
        runner = self._runner
        if runner is None or runner.server is None:
            return 0
        return len(runner.server.connections)


def _matches(path: str, pattern: str) -> bool:
    return path.startswith(pattern[:-1]) if pattern.endswith("*") else path == pattern


def _written(response: web.StreamResponse) -> int:
    """What the response's writer handed to the transport: counted by the writer until
    the end, then (once aiohttp dropped the writer) its body_length; 0 if never prepared."""
    writer = getattr(response, "_payload_writer", None)
    if writer is None:
        return response.body_length
    return int(getattr(writer, "output_size", 0))
