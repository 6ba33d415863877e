"""The model into Simple-API pages for clients of the proxy (PEP 503 HTML, PEP 691 JSON).

File links point at the proxy, relative to the project page (`/index/<project>/`), so a page
is valid whatever host or prefix the proxy is reached under. Same model in, same bytes out:
pages are rendered once per content version and served with a strong ETag.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from html import escape
from typing import TypeVar
from urllib.parse import quote

import msgspec
from msgspec import UNSET, UnsetType

from cachepi.simple.model import File, Project, ProjectList
from cachepi.simple.names import normalize, versions_from_filenames

API_VERSION = "1.4"
# Without a size for every file the page cannot claim PEP 700 (api-version 1.1 and later).
_API_VERSION_WITHOUT_SIZES = "1.0"
# Hashes that both pip and uv accept in a URL fragment, strongest usual choice first;
# uv refuses "#sha1=".
_FRAGMENT_HASHES = ("sha256", "sha512", "sha384", "md5")
# RFC 3986 unreserved characters: what quote() leaves alone.
_UNRESERVED_RE = re.compile(r"[A-Za-z0-9._~-]*\Z", re.ASCII)
# Lines of one or more unreserved characters: relative links that cannot leave their folder.
_UNRESERVED_LINES_RE = re.compile(r"[A-Za-z0-9._~-]+(?:\n[A-Za-z0-9._~-]+)*\Z", re.ASCII)
_SERIAL_RE = re.compile(r"[0-9]{1,19}\Z", re.ASCII)


# --- PEP 691 JSON -----------------------------------------------------------------------------


class _Meta(msgspec.Struct):
    api_version: str = msgspec.field(name="api-version")
    last_serial: int | str | UnsetType = msgspec.field(default=UNSET, name="_last-serial")
    tracks: list[str] | UnsetType = UNSET


class _JsonFile(msgspec.Struct, rename="kebab"):
    # UNSET fields are left out of the output; None is written as null.
    filename: str
    url: str
    hashes: dict[str, str]
    requires_python: str | UnsetType = UNSET
    core_metadata: bool | dict[str, str] | UnsetType = UNSET
    yanked: bool | str | UnsetType = UNSET
    size: int | UnsetType = UNSET
    upload_time: str | UnsetType = UNSET
    provenance: str | UnsetType | None = UNSET


class _JsonStatus(msgspec.Struct):
    status: str
    reason: str | UnsetType = UNSET


class _JsonProject(msgspec.Struct, rename="kebab"):
    meta: _Meta
    name: str
    files: list[_JsonFile]
    versions: list[str]
    project_status: _JsonStatus | UnsetType = UNSET
    alternate_locations: list[str] | UnsetType = UNSET


class _JsonName(msgspec.Struct):
    name: str


class _JsonProjectList(msgspec.Struct):
    meta: _Meta
    projects: list[_JsonName]


_encoder = msgspec.json.Encoder()


def render_project_json(project: Project) -> bytes:
    """PEP 691 page; api-version 1.4 when every file has a size, else 1.0."""
    full = all(file.size is not None for file in project.files)
    page = _JsonProject(
        meta=_Meta(
            API_VERSION if full else _API_VERSION_WITHOUT_SIZES,
            _unset_if_none(project.last_serial),
            project.tracks or UNSET,
        ),
        name=normalize(project.name),
        files=[_json_file(file, full) for file in project.files],
        versions=_versions(project),
        project_status=(
            UNSET
            if project.status is None
            else _JsonStatus(project.status, _unset_if_none(project.status_reason))
        ),
        alternate_locations=project.alternate_locations or UNSET,
    )
    return _encoder.encode(page)


def render_project_list_json(plist: ProjectList) -> Iterator[bytes]:
    """PEP 691 root page: every project name as the upstream spelled it, in pieces (see
    `ProjectList.chunks`). No version after 1.0 changed the root page, so it satisfies the
    latest, as the HTML one says."""
    meta = _Meta(API_VERSION, _unset_if_none(plist.last_serial))
    empty = _encoder.encode(_JsonProjectList(meta, []))
    yield empty.removesuffix(b"]}")
    separator = b""
    for chunk in plist.chunks():
        entries = _encoder.encode([_JsonName(name) for name in chunk.split("\n")])
        yield separator + entries[1:-1]  # without the brackets: one list of all the pieces
        separator = b","
    yield b"]}"


def _json_file(file: File, full: bool) -> _JsonFile:
    """One file entry; `full` (api-version 1.4) always writes the provenance key."""
    metadata = file.core_metadata
    return _JsonFile(
        file.filename,
        file_href(file.filename),
        _sorted(file.hashes),
        UNSET if file.requires_python is None else file.requires_python,
        UNSET if metadata is False else _sorted(metadata) if isinstance(metadata, dict) else True,
        # An empty reason is "not yanked" to pip, so it is left out like False.
        file.yanked or UNSET,
        UNSET if file.size is None else file.size,
        UNSET if file.upload_time is None else _zulu(file.upload_time),
        file.provenance if full or file.provenance is not None else UNSET,
    )


def file_href(filename: str) -> str:
    """The file's URL relative to the project page; a stray "/" is escaped too."""
    # Most filenames need no quoting, and quote() on each file of a big page adds up.
    if _UNRESERVED_RE.match(filename):
        return filename
    return quote(filename, safe="")


def _versions(project: Project) -> list[str]:
    """The upstream's own list when it gave one: it knows which release each file belongs
    to, and a filename may say otherwise (`numpy-1.10.0.post2.tar.gz` is a file of numpy
    1.10.0). Read from the filenames only for an upstream that gave none."""
    if project.versions is not None:
        return project.versions
    return versions_from_filenames(file.filename for file in project.files)


def _zulu(timestamp: str) -> str:
    # Clients parse upload-time as RFC 3339 with a "Z"; Python's isoformat() writes "+00:00".
    if timestamp.endswith("+00:00"):
        return timestamp[: -len("+00:00")] + "Z"
    return timestamp


def _sorted(hashes: dict[str, str]) -> dict[str, str]:
    # Equal models must give equal bytes, whatever order the hashes were inserted in.
    return hashes if len(hashes) < 2 else dict(sorted(hashes.items()))


_V = TypeVar("_V")


def _unset_if_none(value: _V | None) -> _V | UnsetType:
    return UNSET if value is None else value


# --- PEP 503 HTML -----------------------------------------------------------------------------


def render_project_html(project: Project) -> bytes:
    """PEP 503 page (repository-version 1.4) with PEP 592/658/708/714/740/792 attributes."""
    title = f"Links for {escape(normalize(project.name))}"
    lines = [
        "<!DOCTYPE html>",
        "<html>",
        "  <head>",
        f'    <meta name="pypi:repository-version" content="{API_VERSION}">',
        *_status_meta(project),
        *_url_metas("pypi:tracks", project.tracks),
        *_url_metas("pypi:alternate-locations", project.alternate_locations),
        f"    <title>{title}</title>",
        "  </head>",
        "  <body>",
        f"    <h1>{title}</h1>",
        *(_html_link(file) for file in project.files),
        "  </body>",
        "</html>",
        *_serial_comment(project.last_serial),
        "",
    ]
    return "\n".join(lines).encode()


def render_project_list_html(plist: ProjectList) -> Iterator[bytes]:
    """PEP 503 root page, in pieces (see `ProjectList.chunks`); links are relative to
    `/index/`.

    The parsers only keep valid project names; should another name get here, its link is
    percent-quoted so it still points under `/index/`, and an empty name is left out.
    """
    yield "\n".join(
        [
            "<!DOCTYPE html>",
            "<html>",
            "  <head>",
            f'    <meta name="pypi:repository-version" content="{API_VERSION}">',
            "    <title>Simple index</title>",
            "  </head>",
            "  <body>",
            "",
        ]
    ).encode()
    for chunk in plist.chunks():
        # One call on a piece of the list is far cheaper than one per name.
        hrefs, texts = normalize(chunk), escape(chunk)
        if _UNRESERVED_LINES_RE.match(hrefs):
            links = zip(hrefs.split("\n"), texts.split("\n"), strict=True)
        else:
            names = [name for name in chunk.split("\n") if name]
            links = zip(
                [quote(normalize(name), safe="") for name in names],
                [escape(name) for name in names],
                strict=True,
            )
        lines = [f'    <a href="{href}/">{text}</a><br />\n' for href, text in links]
        yield "".join(lines).encode()
    yield "".join(
        ["  </body>\n</html>\n", *(f"{line}\n" for line in _serial_comment(plist.last_serial))]
    ).encode()


def serial_text(last_serial: int | str | None) -> str | None:
    """The last serial as the HTTP header and the HTML comment say it (`<!--SERIAL n-->`,
    where PyPI puts it), or None: only digits, whatever an upstream spelled in its JSON."""
    text = str(last_serial)
    return text if last_serial is not None and _SERIAL_RE.match(text) else None


def _serial_comment(last_serial: int | str | None) -> list[str]:
    text = serial_text(last_serial)
    return [] if text is None else [f"<!--SERIAL {text}-->"]


def _status_meta(project: Project) -> list[str]:
    if project.status is None:
        return []
    lines = [f'    <meta name="pypi:project-status" content="{escape(project.status)}">']
    if project.status_reason is not None:
        reason = escape(project.status_reason)
        lines.append(f'    <meta name="pypi:project-status-reason" content="{reason}">')
    return lines


def _url_metas(name: str, urls: list[str]) -> list[str]:
    """PEP 708: one `<meta>` per URL."""
    return [f'    <meta name="{name}" content="{escape(url)}">' for url in urls]


def _html_link(file: File) -> str:
    href, text = file_href(file.filename), escape(file.filename)
    fragment = _fragment(file.hashes)
    if fragment:
        href = f"{href}#{escape(fragment)}"
    attrs = ""
    if file.requires_python is not None:
        attrs += f' data-requires-python="{escape(file.requires_python)}"'
    if file.core_metadata is not False:
        # PEP 714 name, plus the older PEP 658 name for pip < 23.2 and friends.
        value = escape(_metadata_attr(file.core_metadata))
        attrs += f' data-core-metadata="{value}" data-dist-info-metadata="{value}"'
    if file.yanked:
        reason = "" if file.yanked is True else file.yanked
        attrs += f' data-yanked="{escape(reason)}"'
    if file.provenance is not None:
        attrs += f' data-provenance="{escape(file.provenance)}"'
    # file_href output is unreserved characters and %XX only: nothing to escape.
    return f'    <a href="{href}"{attrs}>{text}</a><br />'


def _metadata_attr(metadata: bool | dict[str, str]) -> str:
    fragment = _fragment(metadata) if isinstance(metadata, dict) else ""
    return fragment or "true"


def _fragment(hashes: dict[str, str]) -> str:
    """`name=hex` for the best hash clients accept in a link, or "" if there is none."""
    for name in _FRAGMENT_HASHES:
        if name in hashes:
            return f"{name}={hashes[name]}"
    return ""
