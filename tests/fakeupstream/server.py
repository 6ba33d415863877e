"""A real package index over HTTP on 127.0.0.1: Simple API pages, files, a request log, faults.

    async with FakeUpstream() as up:
        up.add_project("app", ["1.0"], deps=["lib>=1.0"])
        up.add_project("lib", ["1.0", "1.1"])
        up.url                      # "http://127.0.0.1:PORT/simple/"
        up.throttle("/files/*", 100_000)
        up.count("/simple/app/")
        up.set_status("lib", "archived", "moved to lib2")   # PEP 792, both formats
        up.serve_raw("/simple/evil/", b'{"files": ...}')    # any bytes, hostile or broken
        up.peak_concurrency("/files/")  # most file requests being answered at one moment

Fault and count paths are request paths; a trailing `*` makes a fault match a prefix.
Nothing here imports pytest, so benchmarks can use it as a plain library.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import json
import re
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from typing import Literal
from urllib.parse import quote

from aiohttp import web
from multidict import CIMultiDictProxy
from packaging.version import Version

from .dists import Dist, build_sdist, build_wheel, normalize

Format = Literal["json", "html", "negotiate"]
Links = Literal["absolute", "relative"]

JSON_TYPE = "application/vnd.pypi.simple.v1+json"
HTML_V1_TYPE = "application/vnd.pypi.simple.v1+html"
TEXT_HTML_TYPE = "text/html"
# Offered types per format, best first on a tie: with `*/*` (or no Accept) HTML wins, as on PyPI.
_OFFERS: dict[Format, tuple[str, ...]] = {
    "json": (JSON_TYPE,),
    "html": (TEXT_HTML_TYPE,),
    "negotiate": (TEXT_HTML_TYPE, HTML_V1_TYPE, JSON_TYPE),
}
_ALIASES = {
    "application/vnd.pypi.simple.latest+json": JSON_TYPE,
    "application/vnd.pypi.simple.latest+html": HTML_V1_TYPE,
}
# api-version by what a page carries: PEP 700 fields (1.1), PEP 740/792 ones (1.4), or neither.
_API_MINIMAL, _API_PEP700, _API_LATEST = "1.0", "1.1", "1.4"
ProjectStatus = Literal["active", "archived", "quarantined", "deprecated"]
_NAME_RE = re.compile(r"([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])\Z", re.IGNORECASE | re.ASCII)
_UPLOAD_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
_CHUNK = 1024 * 1024
_WRONG_LENGTH_EXTRA = 1024  # how many bytes `wrong_length` promises but never sends
_GARBAGE_JSON = b'{"meta": {"api-version": "1.1"}, "files": [{"filename": '
_GARBAGE_HTML = b'<!DOCTYPE html><html><body><a href="\x00\xff">\xfe\xfe</a'
# The streamed response of a request, once it has one (MeteredUpstream counts its bytes).
BODY_RESPONSE = web.RequestKey("body_response", web.StreamResponse)
_FAULT_KINDS = ("hang", "delay", "fail", "garbage", "throttle", "reset", "corrupt", "wrong_length")


@dataclass
class RecordedRequest:
    """One request as the fake upstream saw it."""

    method: str
    path: str  # decoded, without the query string
    query: str
    headers: CIMultiDictProxy[str]  # all of them; look up case-insensitively
    status: int | None = None  # None while unanswered (hung) or if it never got an answer
    started: float = 0.0  # loop time the request arrived
    finished: float | None = None  # loop time its answer was fully sent (None: not yet)


@dataclass(eq=False)
class _Entry:
    """A file as listed on its project page."""

    dist: Dist
    project: _Project
    upload_time: datetime
    yanked: bool | str
    added: int  # Unix seconds it was listed: its page's Last-Modified
    core_metadata: bool  # False: no `.metadata` offered (not listed, and 404)
    release: str  # the version the index files it under (PEP 700 `versions`)


@dataclass(eq=False)
class _Project:
    name: str  # as first added: what the root page lists
    format: Format | None
    entries: dict[str, _Entry] = field(default_factory=dict)  # by filename
    modified: int = 0
    status: ProjectStatus | None = None  # PEP 792; None: not stated (means active)
    status_reason: str | None = None
    files_hidden: bool = False  # listed on no page and not downloadable (quarantine)
    tracks: list[str] = field(default_factory=list)  # PEP 708
    alternate_locations: list[str] = field(default_factory=list)


@dataclass
class _Fault:
    kind: str
    pattern: str
    remaining: int | None  # None: forever; exhausted faults stay registered until cleared
    arg: float = 0  # status, seconds, bytes per second or byte count, by kind
    released: asyncio.Event = field(default_factory=asyncio.Event)  # ends a `hang`

    def matches(self, path: str) -> bool:
        if self.remaining == 0:
            return False
        if self.pattern.endswith("*"):
            return path.startswith(self.pattern[:-1])
        return path == self.pattern


@dataclass
class _Resource:
    """Something with a body that the conditional, Range and fault logic all apply to."""

    body: memoryview
    content_type: str
    etag: str
    modified: int
    cache_control: str
    is_page: bool
    headers: Mapping[str, str] = field(default_factory=dict)  # more, sent as they are
    ranges: bool = True  # whether Range is honoured


class FakeUpstream:
    """A package index on 127.0.0.1, random port, kept across `stop()`/`start()`."""

    def __init__(
        self,
        *,
        format: Format = "negotiate",
        links: Links = "absolute",
        require_auth: tuple[str, str] | None = None,
        separate_files_host: bool = False,
        pep700: bool = True,
        provenance: bool = False,
        last_serial: int | str | None = None,
        serial_in: Collection[Literal["body", "header"]] = ("body", "header"),
        ranges: bool = True,
    ) -> None:
        """`format`: page format unless a project overrides it. `links`: HTML hrefs to files,
        absolute URLs (like PyPI) or relative to the page. `require_auth`: (user, password)
        for HTTP basic auth on the index origin. `separate_files_host`: serve file URLs
        from a second port (another origin, like PyPI's file host), open without auth.
        `pep700=False`: JSON pages as a minimal PEP 691 index writes them (api-version 1.0,
        no `versions`, `size` or `upload-time`). `provenance`: give every file a PEP 740
        provenance URL (`provenance_url()`), and serve it there. `last_serial`:
        `meta._last-serial` on JSON pages and `<!--SERIAL n-->` in HTML, exactly as given
        (PyPI sends a string), and in the X-PyPI-Last-Serial header of both; settable later
        as an attribute.
        `serial_in`: where the serial goes, the page's body and/or that header.
        `ranges=False`: a file server without Range support (many a private registry's),
        which sends the whole file with a 200 whatever the Range header asks, and no
        Accept-Ranges; settable later as an attribute.

        A file's Last-Modified is its upload time, as a static file server sends the mtime
        of what was uploaded (PEP 700 pages say the same time as `upload-time`)."""
        if separate_files_host and links == "relative":
            raise ValueError("files on another origin need absolute links")
        if provenance and not pep700:
            raise ValueError("provenance needs api-version 1.3 or later, so PEP 700 fields")
        self.format: Format = format
        self.links: Links = links
        self.require_auth = require_auth
        self.separate_files_host = separate_files_host
        self.pep700 = pep700
        self.provenance = provenance
        self.last_serial = last_serial
        self.serial_in = serial_in
        self.ranges = ranges
        self.requests: list[RecordedRequest] = []
        self._projects: dict[str, _Project] = {}
        self._files: dict[str, _Entry] = {}
        self._faults: dict[tuple[str, str], _Fault] = {}
        self._raw: dict[str, tuple[bytes, str]] = {}  # path -> (body, content type)
        self._arrived = asyncio.Event()  # set on every request, for wait_for_requests()
        self._index_modified = 0
        self._uploads = 0
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._files_port = 0

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> FakeUpstream:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Listen; after a `stop()`, on the same port(s) again."""
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # A short shutdown timeout makes stop() abrupt: in-flight responses are cut off, as
        # when a real upstream goes down. handler_cancellation ends hung handlers whose
        # client gave up.
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=0.1, handler_cancellation=True
        )
        await runner.setup()
        try:
            self._port = await _listen(runner, self._port)
            if self.separate_files_host:
                self._files_port = await _listen(runner, self._files_port)
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner

    async def stop(self) -> None:
        """Close the listener and every connection; projects, log and faults are kept."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    @property
    def running(self) -> bool:
        return self._runner is not None

    # -- addresses ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("FakeUpstream was never started")
        return self._port

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def files_origin(self) -> str:
        return f"http://127.0.0.1:{self._files_port}" if self.separate_files_host else self.origin

    @property
    def url(self) -> str:
        """The index URL to give a client: `http://127.0.0.1:PORT/simple/`."""
        return f"{self.origin}/simple/"

    @property
    def url_with_auth(self) -> str:
        """`url` with the required credentials in it (`url` itself when none are required)."""
        if self.require_auth is None:
            return self.url
        user, password = (quote(part, safe="") for part in self.require_auth)
        return f"http://{user}:{password}@127.0.0.1:{self.port}/simple/"

    @staticmethod
    def page_path(project: str) -> str:
        return f"/simple/{normalize(project)}/"

    @staticmethod
    def file_path(filename: str) -> str:
        return f"/files/{filename}"

    def file_url(self, filename: str) -> str:
        return f"{self.files_origin}/files/{quote(filename)}"

    def provenance_url(self, filename: str) -> str:
        """The PEP 740 provenance URL listed for `filename` when `provenance` is on: on the
        index's origin, not next to the file, as PyPI's integrity API has it (loopback is
        a secure origin, as the PEP asks)."""
        return f"{self.origin}/integrity/{quote(filename)}/provenance"

    def provenance_object(self, filename: str) -> bytes:
        """The PEP 740 provenance object served for `filename`: its shape, an in-toto
        statement naming the file and its sha256, and a signature that is none."""
        dist = self._files[filename].dist
        statement = {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": filename, "digest": {"sha256": dist.sha256}}],
            "predicateType": "https://docs.pypi.org/attestations/publish/v1",
            "predicate": None,
        }
        attestation = {
            "version": 1,
            "verification_material": {"certificate": "", "transparency_entries": []},
            "envelope": {
                "statement": base64.b64encode(_json(statement)).decode(),
                "signature": base64.b64encode(b"fakeupstream").decode(),
            },
        }
        publisher = {"kind": "fakeupstream", "claims": {}}
        bundle = {"publisher": publisher, "attestations": [attestation]}
        return _json({"version": 1, "attestation_bundles": [bundle]})

    # -- content -----------------------------------------------------------------------

    def add_project(
        self,
        name: str,
        versions: Sequence[str],
        *,
        deps: Sequence[str] | Mapping[str, Sequence[str]] = (),
        requires_python: str | Mapping[str, str] | None = None,
        sdist: bool = True,
        wheel: bool = True,
        big_mb: float | None = None,
        modules: int = 0,
        yanked: Mapping[str, bool | str] | Collection[str] = (),
        format: Format | None = None,
        core_metadata: bool = True,
    ) -> list[Dist]:
        """Build and list a wheel and/or sdist per version; returns them, wheels first.

        `deps` and `requires_python` apply to every version, or per version as a mapping.
        `big_mb` pads the wheels, `modules` adds that many small modules to each (a big
        central directory). `yanked`: versions, or version -> reason (or True).
        `format` overrides the server's page format for this project. `core_metadata=False`:
        an index without PEP 658, whose pages offer no `.metadata` for the wheels.
        """
        added: list[Dist] = []
        for version in versions:
            requires = deps.get(version, ()) if isinstance(deps, Mapping) else deps
            python = (
                requires_python.get(version)
                if isinstance(requires_python, Mapping)
                else requires_python
            )
            yank = yanked.get(version, False) if isinstance(yanked, Mapping) else version in yanked
            built = []
            if wheel:
                built.append(
                    build_wheel(
                        name,
                        version,
                        requires=requires,
                        requires_python=python,
                        big_mb=big_mb,
                        modules=modules,
                    )
                )
            if sdist:
                built.append(build_sdist(name, version, requires=requires, requires_python=python))
            for dist in built:
                self.add_dist(dist, name=name, yanked=yank, core_metadata=core_metadata)
            added += built
        project = self._project(name)  # listed even with no files: an empty page is a case too
        if format is not None:
            project.format = format
        return added

    def add_dist(
        self,
        dist: Dist,
        *,
        name: str | None = None,
        yanked: bool | str = False,
        upload_time: datetime | None = None,
        core_metadata: bool = True,
        release: str | None = None,
    ) -> Dist:
        """List one file (replacing a same-named one) on the page of project `name` (default:
        the dist's own project; another name lists a file that does not belong there).
        `core_metadata=False`: offer no `.metadata` for it even if it is a wheel. `release`:
        the version the index files it under, when not the one in its name (PyPI lists
        numpy-1.10.0.post2.tar.gz under 1.10.0)."""
        if dist.filename in self._files:
            self.remove_dist(dist.filename)
        project = self._project(name or dist.project)
        if upload_time is None:
            # Deterministic, increasing upload times: one minute apart in adding order.
            upload_time = _UPLOAD_EPOCH + timedelta(minutes=self._uploads)
            self._uploads += 1
        entry = _Entry(
            dist,
            project,
            upload_time,
            yanked,
            _next_second(project.modified),
            core_metadata,
            release or dist.version,
        )
        project.entries[dist.filename] = self._files[dist.filename] = entry
        project.modified = entry.added
        return dist

    def set_status(
        self,
        name: str,
        status: ProjectStatus | None,
        reason: str | None = None,
        *,
        hide_files: bool | None = None,
    ) -> None:
        """Mark a project with a PEP 792 status (None: state none, which means active), with
        an optional reason. Quarantined projects offer no files (the PEP's MUST): they are
        left off the page and their downloads are 404; `hide_files` overrides that, e.g.
        `False` for an index that wrongly keeps listing a quarantined project's files."""
        project = self._projects[normalize(name)]
        project.status, project.status_reason = status, reason
        project.files_hidden = status == "quarantined" if hide_files is None else hide_files
        project.modified = _next_second(project.modified)

    def set_tracks(self, name: str, urls: Sequence[str]) -> None:
        """PEP 708: the project pages this index says the project's page tracks (JSON
        `meta.tracks`, HTML `<meta name="pypi:tracks">`, one per URL)."""
        project = self._projects[normalize(name)]
        project.tracks = list(urls)
        project.modified = _next_second(project.modified)

    def set_alternate_locations(self, name: str, urls: Sequence[str]) -> None:
        """PEP 708: where the project's owner says it also lives (JSON top-level
        `alternate-locations`, HTML `<meta name="pypi:alternate-locations">`)."""
        project = self._projects[normalize(name)]
        project.alternate_locations = list(urls)
        project.modified = _next_second(project.modified)

    def remove_project(self, name: str) -> None:
        project = self._projects.pop(normalize(name))
        for filename in project.entries:
            del self._files[filename]
        self._touch_index()

    def remove_dist(self, filename: str) -> None:
        entry = self._files.pop(filename)
        del entry.project.entries[filename]
        entry.project.modified = _next_second(entry.project.modified)

    def dists(self, project: str) -> list[Dist]:
        """The files added to a project, in page order (also while a quarantine hides them)."""
        return [entry.dist for entry in self._entries(self._projects[normalize(project)])]

    def dist(self, filename: str) -> Dist:
        return self._files[filename].dist

    def _project(self, name: str) -> _Project:
        """The project called `name`, created (and listed) if new."""
        project = self._projects.get(normalize(name))
        if project is None:
            project = self._projects[normalize(name)] = _Project(name, None)
            self._touch_index()
        return project

    def _touch_index(self) -> None:
        self._index_modified = _next_second(self._index_modified)

    # -- request log -------------------------------------------------------------------

    def requests_to(self, path: str, method: str | None = None) -> list[RecordedRequest]:
        return [
            r for r in self.requests if r.path == path and (method is None or r.method == method)
        ]

    def count(self, path: str, method: str | None = "GET") -> int:
        """Requests to exactly `path` (any method when `method` is None)."""
        return len(self.requests_to(path, method))

    def count_prefix(self, prefix: str, method: str | None = "GET") -> int:
        return sum(
            1
            for r in self.requests
            if r.path.startswith(prefix) and (method is None or r.method == method)
        )

    def reset_counts(self) -> None:
        self.requests.clear()

    def peak_concurrency(self, prefix: str) -> int:
        """The most requests under `prefix` that were being answered at one moment."""
        events = []
        for r in self.requests:
            if r.path.startswith(prefix):
                events += [(r.started, 1), (r.finished if r.finished is not None else 1e300, -1)]
        peak = current = 0
        for _, step in sorted(events):  # at a tie an end sorts first: back-to-back is not overlap
            current += step
            peak = max(peak, current)
        return peak

    async def wait_for_requests(self, path: str, count: int = 1, within: float = 5.0) -> None:
        """Wait until `count` requests (any method) to `path` have arrived, at most `within`
        seconds (then TimeoutError): e.g. to know a proxy's request reached a `hang`."""
        async with asyncio.timeout(within):
            while self.count(path, None) < count:
                # No await between the check and clear(), so no arrival can slip in between.
                self._arrived.clear()
                await self._arrived.wait()

    # -- faults ------------------------------------------------------------------------
    # Each applies to requests whose path equals `path`, or starts with it when it ends in
    # `*`; `times` limits it to the next N matching requests. Setting one replaces the
    # same kind on the same path. Faults of different kinds combine (say delay + throttle).

    def throttle(self, path: str, bytes_per_sec: float, *, times: int | None = None) -> None:
        """Send the body at about `bytes_per_sec`, in small paced chunks."""
        self._add_fault("throttle", path, times, bytes_per_sec)

    def delay(self, path: str, seconds: float, *, times: int | None = None) -> None:
        """Wait before answering at all (before the status line)."""
        self._add_fault("delay", path, times, seconds)

    def fail(self, path: str, status: int = 503, *, times: int | None = None) -> None:
        """Answer `status` with a short text body."""
        self._add_fault("fail", path, times, status)

    def reset(self, path: str, after_bytes: int = 0, *, times: int | None = None) -> None:
        """Send the headers (full Content-Length) and `after_bytes` of the body, then close
        the connection. A FIN, not an RST: Linux drops a receiver's unread bytes on RST,
        which would make `after_bytes` a lie."""
        self._add_fault("reset", path, times, after_bytes)

    def corrupt(self, path: str, *, times: int | None = None) -> None:
        """Flip the byte in the middle of the file: same length, wrong sha256."""
        self._add_fault("corrupt", path, times)

    def hang(self, path: str, *, times: int | None = None) -> None:
        """Accept the request and never answer, until cleared or the server stops."""
        self._add_fault("hang", path, times)

    def wrong_length(self, path: str, *, times: int | None = None) -> None:
        """Promise more bytes in Content-Length than the body has, send it, then close."""
        self._add_fault("wrong_length", path, times)

    def garbage(
        self, path: str, *, times: int | None = None, format: Literal["json", "html"] | None = None
    ) -> None:
        """Answer 200 with a broken JSON or HTML body (by the Accept header, or `format`)."""
        self._add_fault("garbage", path, times, {"json": 1, "html": 2}.get(format or "", 0))

    def serve_raw(self, path: str, body: bytes, content_type: str = JSON_TYPE) -> None:
        """Answer GET `path` with exactly `body` from now on, whatever it holds (a hostile
        or broken page the model could never produce); faults on the path still win."""
        self._raw[path] = (body, content_type)

    def clear(self, path: str | None = None) -> None:
        """Remove the faults (and `serve_raw` answers) set on `path` (exactly as given), or
        all; hung requests go on."""
        for key, fault in list(self._faults.items()):
            if path is None or fault.pattern == path:
                del self._faults[key]
                fault.released.set()
        for raw_path in list(self._raw):
            if path is None or raw_path == path:
                del self._raw[raw_path]

    def _add_fault(self, kind: str, path: str, times: int | None, arg: float = 0) -> None:
        old = self._faults.pop((kind, path), None)
        if old is not None:
            old.released.set()
        self._faults[kind, path] = _Fault(kind, path, times, arg)

    def _take_faults(self, path: str) -> dict[str, _Fault]:
        """The faults for one request, one per kind (the most specific), each used once."""
        taken: dict[str, _Fault] = {}
        for kind in _FAULT_KINDS:
            candidates = [f for f in self._faults.values() if f.kind == kind and f.matches(path)]
            if candidates:
                # An exact path beats any prefix; a longer prefix beats a shorter one.
                fault = max(candidates, key=lambda f: (not f.pattern.endswith("*"), len(f.pattern)))
                if fault.remaining is not None:
                    fault.remaining -= 1
                taken[kind] = fault
        return taken

    # -- HTTP --------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        record = RecordedRequest(
            request.method, request.path, request.query_string, request.headers, None, loop.time()
        )
        self.requests.append(record)
        self._arrived.set()
        try:
            faults = self._take_faults(request.path)
            raw = self._raw.get(request.path)
            if raw is not None and not faults:
                response: web.StreamResponse = web.Response(
                    body=raw[0], headers={"Content-Type": raw[1]}
                )
            else:
                response = await self._answer(request, faults)
            record.status = response.status
            return response
        finally:
            record.finished = loop.time()

    async def _answer(self, request: web.Request, faults: dict[str, _Fault]) -> web.StreamResponse:
        if "hang" in faults:
            await faults["hang"].released.wait()
        if "delay" in faults:
            await asyncio.sleep(faults["delay"].arg)
        if "fail" in faults:
            status = int(faults["fail"].arg)
            return web.Response(status=status, text=f"{status} (injected by FakeUpstream)\n")
        if not self._authorized(request):
            return web.Response(
                status=401,
                text="401 authentication required\n",
                headers={"WWW-Authenticate": 'Basic realm="fakeupstream"'},
            )
        if "garbage" in faults:
            forced = int(faults["garbage"].arg)  # 1: JSON, 2: HTML, 0: by Accept
            negotiated = _negotiate(request.headers.get("Accept"), "negotiate") == JSON_TYPE
            is_json = forced == 1 or (forced == 0 and negotiated)
            return web.Response(
                body=_GARBAGE_JSON if is_json else _GARBAGE_HTML,
                headers={"Content-Type": JSON_TYPE if is_json else TEXT_HTML_TYPE},
            )
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET, HEAD"})
        target = self._route(request)
        if isinstance(target, _Resource):
            return await _send(request, target, faults)
        return target

    def _authorized(self, request: web.Request) -> bool:
        if self.require_auth is None or self._on_files_origin(request):
            return True
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        try:
            decoded = base64.b64decode(credentials, validate=True).decode()
        except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
            return False
        user, _, password = decoded.partition(":")
        return scheme.lower() == "basic" and (user, password) == self.require_auth

    def _on_files_origin(self, request: web.Request) -> bool:
        if not self.separate_files_host or request.transport is None:
            return False
        return request.transport.get_extra_info("sockname")[1] == self._files_port

    def _route(self, request: web.Request) -> _Resource | web.Response:
        path = request.path
        if path == "/simple":
            return _redirect("/simple/")
        if path == "/simple/":
            return self._root_page(request)
        if match := re.fullmatch(r"/simple/([^/]+)(/?)", path):
            name, slash = match.groups()
            if not _NAME_RE.match(name):
                return _not_found()
            if normalize(name) != name or not slash:
                return _redirect(self.page_path(name))  # as PyPI does, before any lookup
            project = self._projects.get(name)
            return _not_found() if project is None else self._project_page(request, project)
        if match := re.fullmatch(r"/files/([^/]+)", path):
            return self._file(match[1])
        if match := re.fullmatch(r"/integrity/([^/]+)/provenance", path):
            return self._provenance(match[1])
        return _not_found()

    def _provenance(self, filename: str) -> _Resource | web.Response:
        entry = self._files.get(filename)
        if not self.provenance or entry is None or entry.project.files_hidden:
            return _not_found()
        body = self.provenance_object(filename)
        return _Resource(
            body=memoryview(body),
            content_type="application/vnd.pypi.integrity.v1+json",
            etag=f'"{hashlib.sha256(body).hexdigest()}"',
            modified=entry.added,
            cache_control="max-age=600, public",  # unlike a file's, it may change (PEP 740)
            is_page=False,
        )

    def _file(self, filename: str) -> _Resource | web.Response:
        entry = self._files.get(filename)
        if entry is not None:
            if entry.project.files_hidden:
                return _not_found()
            return _file_resource(
                entry.dist.view, entry.dist.sha256, int(entry.upload_time.timestamp()), self.ranges
            )
        # PEP 658: `<wheel>.metadata` is the wheel's METADATA, byte for byte.
        wheel = self._files.get(filename.removesuffix(".metadata"))
        metadata = None if wheel is None else wheel.dist.metadata
        if (
            wheel is None
            or metadata is None
            or not _offers_metadata(wheel)
            or wheel.project.files_hidden
        ):
            return _not_found()
        digest = hashlib.sha256(metadata).hexdigest()
        return _file_resource(
            memoryview(metadata), digest, int(wheel.upload_time.timestamp()), self.ranges
        )

    # -- pages -------------------------------------------------------------------------

    def _root_page(self, request: web.Request) -> _Resource | web.Response:
        content_type = _negotiate(request.headers.get("Accept"), self.format)
        if content_type is None:
            return web.Response(status=406)
        projects = sorted(self._projects.items())
        api_version = _API_PEP700 if self.pep700 else _API_MINIMAL
        if content_type == JSON_TYPE:
            body = _json(
                {
                    "meta": self._meta(api_version),
                    "projects": [{"name": project.name} for _, project in projects],
                }
            )
        else:
            links = [
                _anchor(self._page_href(normalized), project.name, {})
                for normalized, project in projects
            ]
            body = _html_page("Simple index", links, api_version, [], self._body_serial)
        return _page(body, content_type, self._index_modified, self._serial_header())

    def _project_page(self, request: web.Request, project: _Project) -> _Resource | web.Response:
        content_type = _negotiate(request.headers.get("Accept"), project.format or self.format)
        if content_type is None:
            return web.Response(status=406)
        entries = [] if project.files_hidden else self._entries(project)
        normalized = normalize(project.name)
        api_version = self._api_version(project)
        if content_type == JSON_TYPE:
            meta = self._meta(api_version)
            if project.tracks:
                meta["tracks"] = project.tracks
            page: dict[str, object] = {"meta": meta, "name": normalized}
            if project.alternate_locations:
                page["alternate-locations"] = project.alternate_locations
            if self.pep700:
                page["versions"] = sorted({e.release for e in entries}, key=Version)
            page["files"] = [self._json_file(entry) for entry in entries]
            if project.status is not None:
                status = {"status": project.status}
                if project.status_reason is not None:
                    status["reason"] = project.status_reason
                page["project-status"] = status
            body = _json(page)
        else:
            links = [
                _anchor(self._file_href(e.dist), e.dist.filename, self._attrs(e)) for e in entries
            ]
            metas = []
            if project.status is not None:
                metas.append(("pypi:project-status", project.status))
                if project.status_reason is not None:
                    metas.append(("pypi:project-status-reason", project.status_reason))
            metas += [("pypi:tracks", url) for url in project.tracks]
            metas += [("pypi:alternate-locations", url) for url in project.alternate_locations]
            title = f"Links for {normalized}"
            body = _html_page(title, links, api_version, metas, self._body_serial)
        return _page(body, content_type, project.modified, self._serial_header())

    @property
    def _body_serial(self) -> int | str | None:
        return self.last_serial if "body" in self.serial_in else None

    def _serial_header(self) -> dict[str, str]:
        if self.last_serial is None or "header" not in self.serial_in:
            return {}
        return {"X-PyPI-Last-Serial": str(self.last_serial)}

    def _api_version(self, project: _Project) -> str:
        if not self.pep700:
            return _API_MINIMAL
        later = project.status is not None or project.tracks or project.alternate_locations
        return _API_LATEST if self.provenance or later else _API_PEP700

    def _meta(self, api_version: str) -> dict[str, object]:
        meta: dict[str, object] = {"api-version": api_version}
        if self._body_serial is not None:
            meta["_last-serial"] = self._body_serial
        return meta

    def _json_file(self, entry: _Entry) -> dict[str, object]:
        dist = entry.dist
        metadata = dist.metadata_sha256 if _offers_metadata(entry) else None
        file: dict[str, object] = {
            "filename": dist.filename,
            "url": self.file_url(dist.filename),
            "hashes": {"sha256": dist.sha256},
            "requires-python": dist.requires_python,
            "core-metadata": {"sha256": metadata} if metadata else False,
            "yanked": entry.yanked,
        }
        if self.pep700:
            file["size"] = dist.size
            file["upload-time"] = entry.upload_time.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if self.provenance:
            file["provenance"] = self.provenance_url(dist.filename)
        return file

    def _attrs(self, entry: _Entry) -> dict[str, str]:
        """The HTML data attributes of a file's link."""
        dist = entry.dist
        attrs = {}
        if dist.requires_python:
            attrs["data-requires-python"] = dist.requires_python
        if _offers_metadata(entry):
            # Both names: PEP 714's, and the older PEP 658 one that pip < 23.1 reads.
            attrs["data-core-metadata"] = attrs["data-dist-info-metadata"] = (
                f"sha256={dist.metadata_sha256}"
            )
        if entry.yanked is not False:
            attrs["data-yanked"] = "" if entry.yanked is True else entry.yanked
        if self.provenance:
            attrs["data-provenance"] = self.provenance_url(dist.filename)
        return attrs

    def _page_href(self, normalized: str) -> str:
        if self.links == "relative":
            return f"{normalized}/"
        return f"{self.origin}/simple/{normalized}/"

    def _file_href(self, dist: Dist) -> str:
        if self.links == "relative":
            return f"../../files/{quote(dist.filename)}#sha256={dist.sha256}"
        return f"{self.file_url(dist.filename)}#sha256={dist.sha256}"

    @staticmethod
    def _entries(project: _Project) -> list[_Entry]:
        return sorted(
            project.entries.values(), key=lambda e: (Version(e.dist.version), e.dist.filename)
        )


def add_default_tree(upstream: FakeUpstream) -> None:
    """The small tree most tests need: `app 1.0` -> `lib>=1.0` (1.0, 1.1) and `util-pkg` 0.5,
    the latter required under a non-normalized spelling. Wheels and sdists throughout."""
    upstream.add_project("app", ["1.0"], deps=["lib>=1.0", "Util_Pkg"])
    upstream.add_project("lib", ["1.0", "1.1"])
    upstream.add_project("util-pkg", ["0.5"])


# -- module helpers ------------------------------------------------------------------------


async def _listen(runner: web.AppRunner, port: int) -> int:
    """Start one more site on 127.0.0.1 (port 0: any free one) and return its port."""
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    return runner.addresses[-1][1]


def _next_second(previous: int) -> int:
    # Strictly increasing whole seconds, so If-Modified-Since sees every change even when
    # two happen within one second (HTTP dates have no finer resolution).
    return max(int(time.time()), previous + 1)


def _negotiate(accept: str | None, format: Format) -> str | None:
    """The media type to answer with, or None when the client accepts none we offer."""
    offers = _OFFERS[format]
    if format != "negotiate":
        return offers[0]  # single-format servers ignore Accept, as static file servers do
    ranges = _parse_accept(accept or "*/*")
    best, best_q = None, 0.0
    for offer in offers:
        q = _quality(offer, ranges)
        if q > best_q:
            best, best_q = offer, q
    return best


def _parse_accept(header: str) -> list[tuple[str, float]]:
    ranges = []
    for part in header.split(","):
        media, *params = (piece.strip() for piece in part.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.lower()
        ranges.append((_ALIASES.get(media, media), q))
    return ranges


def _quality(offer: str, ranges: list[tuple[str, float]]) -> float:
    # The most specific matching range decides: exact, then type/*, then */*.
    wildcard = offer.split("/")[0] + "/*"
    specificity, quality = -1, 0.0
    for media, q in ranges:
        rank = {offer: 2, wildcard: 1, "*/*": 0}.get(media, -1)
        if rank > specificity:
            specificity, quality = rank, q
    return quality


def _json(obj: object) -> bytes:
    return json.dumps(obj).encode()


def _page(body: bytes, content_type: str, modified: int, headers: Mapping[str, str]) -> _Resource:
    if content_type != JSON_TYPE:
        content_type += "; charset=utf-8"
    return _Resource(
        body=memoryview(body),
        content_type=content_type,
        etag=f'"{hashlib.sha256(body).hexdigest()[:32]}"',
        modified=modified,
        cache_control="max-age=600, public",
        is_page=True,
        headers=headers,
    )


def _file_resource(body: memoryview, sha256: str, modified: int, ranges: bool) -> _Resource:
    return _Resource(
        body=body,
        content_type="application/octet-stream",
        etag=f'"{sha256}"',
        modified=modified,
        cache_control="max-age=365000000, immutable, public",
        is_page=False,
        ranges=ranges,
    )


def _offers_metadata(entry: _Entry) -> bool:
    return entry.core_metadata and entry.dist.metadata is not None


def _anchor(href: str, text: str, attrs: dict[str, str]) -> str:
    extra = "".join(f' {key}="{html.escape(value)}"' for key, value in attrs.items())
    return f'<a href="{html.escape(href)}"{extra}>{html.escape(text)}</a><br />'


def _html_page(
    title: str,
    links: list[str],
    api_version: str,
    metas: Sequence[tuple[str, str]],
    last_serial: int | str | None,
) -> bytes:
    lines = [
        "<!DOCTYPE html>",
        "<html>",
        "  <head>",
        f'    <meta name="pypi:repository-version" content="{api_version}">',
        *(f'    <meta name="{name}" content="{html.escape(value)}">' for name, value in metas),
        f"    <title>{html.escape(title)}</title>",
        "  </head>",
        "  <body>",
        f"    <h1>{html.escape(title)}</h1>",
        *(f"    {link}" for link in links),
        "  </body>",
        "</html>",
    ]
    if last_serial is not None:
        lines.append(f"<!--SERIAL {last_serial}-->")  # where PyPI puts it
    return ("\n".join(lines) + "\n").encode()


def _redirect(location: str) -> web.Response:
    return web.Response(status=301, headers={"Location": location})


def _not_found() -> web.Response:
    return web.Response(status=404, text="404 Not Found\n")


# -- sending a body: conditional requests, Range, and the body faults ------------------------


async def _send(
    request: web.Request, resource: _Resource, faults: dict[str, _Fault]
) -> web.StreamResponse:
    headers = {
        "ETag": resource.etag,
        "Last-Modified": formatdate(resource.modified, usegmt=True),
        "Cache-Control": resource.cache_control,
        **resource.headers,
    }
    if resource.is_page:
        headers["Vary"] = "Accept"
    elif resource.ranges:
        headers["Accept-Ranges"] = "bytes"
    if _not_modified(request, resource):
        return web.Response(status=304, headers=headers)
    size = len(resource.body)
    span = _parse_range(request.headers.get("Range") if resource.ranges else None, size)
    if span == "unsatisfiable":
        return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
    start, end = span or (0, size)
    if span:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    headers["Content-Type"] = resource.content_type
    response = web.StreamResponse(status=206 if span else 200, headers=headers)
    request[BODY_RESPONSE] = response  # what went out counts also if the client hangs up
    response.content_length = end - start + (_WRONG_LENGTH_EXTRA if "wrong_length" in faults else 0)
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    if "reset" in faults:
        end = min(end, start + int(faults["reset"].arg))
    flip = size // 2 if "corrupt" in faults else None
    rate = faults["throttle"].arg if "throttle" in faults else None
    try:
        await _write_body(response, resource.body, start, end, flip, rate)
    except ConnectionError:
        return response  # the client went away; nothing left to do
    if "reset" in faults or "wrong_length" in faults:
        # Closing flushes what was written, then ends the connection short of Content-Length.
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response


async def _write_body(
    response: web.StreamResponse,
    body: memoryview,
    start: int,
    end: int,
    flip: int | None,
    rate: float | None,
) -> None:
    """Write body[start:end]; flip the byte at absolute offset `flip`; pace to `rate` B/s."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    # Paced writes are small (~20 a second) so the rate holds from the first bytes on.
    chunk = _CHUNK if rate is None else max(1, min(64 * 1024, int(rate / 20)))
    for pos in range(start, end, chunk):
        piece: memoryview | bytearray = body[pos : min(pos + chunk, end)]
        if flip is not None and pos <= flip < pos + len(piece):
            piece = bytearray(piece)
            piece[flip - pos] ^= 0xFF
        await response.write(piece)
        if rate is not None:
            await asyncio.sleep(max(0.0, began + (pos + len(piece) - start) / rate - loop.time()))


def _not_modified(request: web.Request, resource: _Resource) -> bool:
    # If-None-Match wins over If-Modified-Since when both are sent (RFC 9110 §13.2.2).
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None:
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return "*" in tags or resource.etag in tags
    since = request.if_modified_since
    return since is not None and resource.modified <= since.timestamp()


def _parse_range(
    header: str | None, size: int
) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """A single `bytes=` range as [start, end); None means "send it all" (absent,
    malformed or multi-range headers are ignored, which RFC 9110 allows)."""
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header or "")
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":  # suffix range: the last N bytes
        length = int(last)
        return (max(0, size - length), size) if length else "unsatisfiable"
    start = int(first)
    end = size if last == "" else min(size, int(last) + 1)
    if last != "" and int(last) < start:
        return None
    return (start, end) if start < size else "unsatisfiable"
