"""Upstream Simple-API pages (PEP 503 HTML, PEP 691 JSON) into the model.

The upstream is not trusted: entries whose filename is not one safe path segment, or whose URL
is not http(s), are dropped (not fatal); hashes that are not hex are dropped; a page that is
not the expected shape at all raises ParseError, and so does anything else a hostile page
makes a parser raise (deep nesting, bad UTF-8). HTML is read by a linear scan
(simple/htmlscan.py) that builds no tree, so no markup costs more than its length.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterable, Iterator
from typing import TypeVar
from urllib.parse import unquote, urljoin, urlsplit

import msgspec

from cachepi.simple.htmlscan import Attributes, Scan, scan
from cachepi.simple.model import File, Project, ProjectList
from cachepi.simple.names import belongs_to, is_safe_filename, is_valid_project_name, normalize

# Hash name -> hex digest length, for the algorithms every Python has (shake_* has no fixed
# length); a digest of any other name or length is dropped, so "#egg=cafe" is not a hash.
_HEX_LENGTHS = {
    name: hashlib.new(name).digest_size * 2
    for name in hashlib.algorithms_guaranteed
    if not name.startswith("shake_")
}
_HEX_DIGITS = "0123456789abcdef"
# An absolute http(s) URL of printable ASCII, with a plain host: the usual file link. A regex
# splits it far faster than urljoin + urlsplit, for every link; other URLs go through urllib.
# Path: printable ASCII but "#", "?" and "\\"; query: the same with "?"; fragment: any.
_PLAIN_URL_RE = re.compile(
    r"(https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?)"
    r"(/[\x21\x22\x24-\x3e\x40-\x5b\x5d-\x7e]*)?"
    r"(\?[\x21\x22\x24-\x5b\x5d-\x7e]*)?"
    r"(?:#([\x21-\x7e]*))?\Z",
    re.ASCII,
)
_SHA256_RE = re.compile(r"sha256=([0-9a-f]{64})\Z")
# PyPI marks its pages with the serial in a comment: <!--SERIAL 12345-->
_SERIAL_RE = re.compile(rb"<!--SERIAL (\d{1,19})-->")
_SERIAL_DIGITS_RE = re.compile(r"\d{1,19}", re.ASCII)
# Names of a project list joined into its lines this many at a time.
_NAMES_BATCH = 10_000


class ParseError(ValueError):
    """The upstream page is not a Simple-API page we can read."""


@contextlib.contextmanager
def _unreadable_is_parse_error() -> Iterator[None]:
    """Whatever reading a page raises is a ParseError: a hostile page gets the stale copy
    or a 502, never a 500 (or a dead worker thread)."""
    try:
        yield
    except ParseError:
        raise
    except (
        ValueError,  # UnicodeDecodeError too
        msgspec.MsgspecError,
        LookupError,
        TypeError,
        ArithmeticError,
        RecursionError,
    ) as error:
        raise ParseError(f"unreadable page ({type(error).__name__}: {error})") from None


# --- PEP 691 JSON -----------------------------------------------------------------------------


class _Meta(msgspec.Struct):
    api_version: str = msgspec.field(default="1.0", name="api-version")
    last_serial: int | str | None = msgspec.field(default=None, name="_last-serial")
    tracks: list[str] = []  # PEP 708, on project pages


class _Status(msgspec.Struct):
    status: str | None = None
    reason: str | None = None


class _JsonFile(msgspec.Struct, rename="kebab"):
    filename: str
    url: str
    hashes: dict[str, str] = {}
    requires_python: str | None = None
    core_metadata: bool | dict[str, str] | None = None
    # Pre-PEP 714 spellings, read only when core-metadata is absent.
    dist_info_metadata: bool | dict[str, str] | None = None
    data_dist_info_metadata: bool | dict[str, str] | None = None
    yanked: bool | str | None = False
    size: int | None = None
    upload_time: str | None = None
    provenance: str | None = None


class _JsonProject(msgspec.Struct, rename="kebab"):
    name: str
    files: list[_JsonFile] = []
    meta: _Meta = msgspec.field(default_factory=_Meta)
    versions: list[str] | None = None
    project_status: _Status | None = None
    alternate_locations: list[str] = []


class _JsonName(msgspec.Struct):
    name: str


class _JsonProjectList(msgspec.Struct):
    # Each entry as its JSON text, decoded a batch at a time: 800,000 entries decoded at
    # once cost twice the memory, and the time too (bench/results/notes.md).
    projects: list[msgspec.Raw]
    meta: _Meta = msgspec.field(default_factory=_Meta)


_project_decoder = msgspec.json.Decoder(_JsonProject)
_list_decoder = msgspec.json.Decoder(_JsonProjectList)
_name_decoder = msgspec.json.Decoder(_JsonName)


def parse_project_json(body: bytes, page_url: str) -> Project:
    """A PEP 691 project page; relative file URLs are resolved against `page_url`."""
    with _unreadable_is_parse_error():
        page = _decode(_project_decoder, body)
        _check_api_version(page.meta.api_version)
        if not is_valid_project_name(page.name):
            raise ParseError("the page names no valid project")
        status = page.project_status or _Status()
        return Project(
            name=page.name,
            files=_own(normalize(page.name), _json_files(page.files, page_url)),
            versions=page.versions,
            last_serial=page.meta.last_serial,
            status=status.status,
            status_reason=status.reason,
            tracks=_urls(page_url, page.meta.tracks),
            alternate_locations=_urls(page_url, page.alternate_locations),
        )


def parse_project_list_json(body: bytes) -> ProjectList:
    """A PEP 691 root page; names that are not valid project names are dropped."""
    with _unreadable_is_parse_error():
        page = _decode(_list_decoder, body)
        _check_api_version(page.meta.api_version)
        projects, pieces = page.projects, []
        for start in range(0, len(projects), _NAMES_BATCH):
            entries = projects[start : start + _NAMES_BATCH]
            batch = _valid_names([_decode(_name_decoder, entry).name for entry in entries])
            pieces.append("\n".join(batch))
        return ProjectList.of((piece for piece in pieces if piece), page.meta.last_serial)


_T = TypeVar("_T")


def _decode(decoder: msgspec.json.Decoder[_T], body: bytes) -> _T:
    try:
        return decoder.decode(body)
    # ValidationError is a DecodeError; invalid UTF-8 surfaces as UnicodeDecodeError;
    # deep nesting (even in a key nobody reads) as RecursionError.
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ParseError(f"not a Simple-API JSON page: {exc}") from None


def _json_files(entries: list[_JsonFile], page_url: str) -> Iterator[File]:
    for entry in entries:
        link = _http_link(page_url, entry.url)
        if link is None or not is_safe_filename(entry.filename):
            continue
        metadata = entry.core_metadata
        if metadata is None:
            metadata = entry.dist_info_metadata
        if metadata is None:
            metadata = entry.data_dist_info_metadata
        yield File(
            filename=entry.filename,
            url=link[0],
            hashes=_clean_hashes(entry.hashes.items()),
            requires_python=entry.requires_python or None,
            core_metadata=_clean_metadata(metadata),
            yanked=entry.yanked or False,
            size=entry.size,
            upload_time=entry.upload_time,
            provenance=_http_url(page_url, entry.provenance),
        )


def _clean_metadata(value: bool | dict[str, str] | None) -> bool | dict[str, str]:
    if isinstance(value, dict):
        # A dict whose every hash was unusable still says "the file exists".
        return _clean_hashes(value.items()) or True
    return bool(value)


# --- PEP 503 HTML -----------------------------------------------------------------------------


def parse_project_html(body: bytes, page_url: str, name: str) -> Project:
    """A PEP 503 project page; `name` is the project the page was fetched for."""
    with _unreadable_is_parse_error():
        page = scan(_utf8(body))
        _check_api_version(_first_meta(page, "pypi:repository-version") or "1.0")
        base = _base_url(page.base_href, page_url)
        files = (_html_file(anchor, base) for anchor in page.anchors if "href" in anchor)
        return Project(
            name=name,
            files=_own(normalize(name), (file for file in files if file is not None)),
            last_serial=_html_serial(body),
            status=_first_meta(page, "pypi:project-status") or None,
            status_reason=_first_meta(page, "pypi:project-status-reason") or None,
            tracks=_urls(base, page.metas.get("pypi:tracks", ())),
            alternate_locations=_urls(base, page.metas.get("pypi:alternate-locations", ())),
        )


def parse_project_list_html(body: bytes) -> ProjectList:
    """A PEP 503 root page: the project names are the link texts."""
    with _unreadable_is_parse_error():
        pieces: list[str] = []

        def take(texts: list[str]) -> None:
            if names := _valid_names([text.strip() for text in texts]):
                pieces.append("\n".join(names))

        page = scan(_utf8(body), texts=True, on_texts=take)
        _check_api_version(_first_meta(page, "pypi:repository-version") or "1.0")
        return ProjectList.of(pieces, _html_serial(body))


def _html_file(attrs: Attributes, base: str) -> File | None:
    link = _http_link(base, attrs.get("href"))
    if link is None:
        return None
    url, path, fragment = link
    # pip names the file after the last path segment, percent-decoded; decoding happens
    # before the safety check so "%2F" and "%2e%2e" are judged as what they become.
    filename = unquote(path.rpartition("/")[2])
    if not is_safe_filename(filename):
        return None
    metadata = attrs.get("data-core-metadata")
    if metadata is None:
        metadata = attrs.get("data-dist-info-metadata")
    yanked = attrs.get("data-yanked", False)
    return File(
        filename=filename,
        url=url,
        hashes=_one_hash(fragment),
        requires_python=attrs.get("data-requires-python") or None,
        core_metadata=_html_metadata(metadata),
        # Attribute present: yanked; its non-empty value is the reason.
        yanked=True if yanked is None or yanked == "" else yanked,
        provenance=_http_url(base, attrs.get("data-provenance")),
    )


def _first_meta(page: Scan, name: str) -> str | None:
    """The content of the first `<meta>` named `name` (an HTML5 reader takes the first)."""
    return page.metas.get(name, [None])[0]


def _html_metadata(value: str | None) -> bool | dict[str, str]:
    """PEP 714 attribute: "true", or "<hashname>=<hex>"; anything else means absent."""
    if value is None:
        return False
    if value.strip().lower() == "true":
        return True
    return _one_hash(value) or False


def _base_url(href: str | None, page_url: str) -> str:
    link = _http_link(page_url, href)
    # Keep the fragment-less form: a base only matters for resolving relative links.
    return link[0] if link is not None else page_url


def _html_serial(body: bytes) -> int | None:
    match = _SERIAL_RE.search(body)
    return int(match.group(1)) if match else None


_P = TypeVar("_P", bound=Project | ProjectList)


def with_serial_header(page: _P, header: str | None) -> _P:
    """`page` with the last serial its response's LAST_SERIAL_HEADER gave, when the page
    itself gave none; a header that is not a serial (digits) is ignored."""
    if page.last_serial is not None or header is None:
        return page
    if (serial := _SERIAL_DIGITS_RE.fullmatch(header.strip())) is None:
        return page
    return msgspec.structs.replace(page, last_serial=int(serial[0]))


# --- shared -----------------------------------------------------------------------------------


def _check_api_version(version: str) -> None:
    # PEP 629: a client must refuse a major version it does not know.
    if version.strip().partition(".")[0] != "1":
        raise ParseError(f"unsupported Simple-API version {version!r}")


# An http(s) link: (absolute URL without the fragment, path, fragment). A plain tuple: a
# NamedTuple costs a Python call to make, on every link of every page.
_Link = tuple[str, str, str]


def _http_link(base: str, href: str | None) -> _Link | None:
    """`href` resolved against `base`, if that is an absolute http(s) URL with a host."""
    if not href:
        return None
    plain = _PLAIN_URL_RE.match(href)
    if plain is not None:
        origin, path, query, fragment = plain.groups("")
        return origin + path + query, path, fragment
    try:
        parts = urlsplit(urljoin(base, href))
    except ValueError:  # e.g. "http://[::1" (an unclosed IPv6 host)
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts._replace(fragment="").geturl(), parts.path, parts.fragment


def _http_url(base: str, href: str | None) -> str | None:
    link = _http_link(base, href)
    return link[0] if link is not None else None


def _urls(base: str, hrefs: Iterable[str | None]) -> list[str]:
    """A PEP 708 list, logically a set: each http(s) URL once, resolved against `base`,
    fragment dropped; anything else (`javascript:`, no host) is left out."""
    return list(dict.fromkeys(url for href in hrefs if (url := _http_url(base, href))))


def _one_hash(text: str) -> dict[str, str]:
    """`_clean_hashes` of one "<hashname>=<hex>" (a URL fragment, a PEP 714 attribute)."""
    if (common := _SHA256_RE.match(text)) is not None:  # the way nearly every page says it
        return {"sha256": common[1]}
    name, _, digest = text.partition("=")
    name, digest = name.lower(), digest.lower()
    if _HEX_LENGTHS.get(name) == len(digest) and not digest.strip(_HEX_DIGITS):
        return {name: digest}
    return {}


def _clean_hashes(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Lowercased hash names and hex digests; pairs that are not well-formed are dropped."""
    hashes: dict[str, str] = {}
    for name, digest in items:
        name, digest = name.lower(), digest.lower()
        # strip() peels off every hex digit: nothing left means all of it was hex.
        if _HEX_LENGTHS.get(name) == len(digest) and not digest.strip(_HEX_DIGITS):
            hashes[name] = digest
    return hashes


def _utf8(body: bytes) -> str:
    """PEP 503 pages are UTF-8; anything else is not a page we can trust to be complete."""
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise ParseError("the HTML page is not valid UTF-8") from None
    return text[1:] if text.startswith("\ufeff") else text


def _own(project: str, files: Iterable[File]) -> list[File]:
    """The files that are distributions of `project`, each filename once: a page cannot
    list another project's files, or anything that is no distribution at all."""
    return _unique(file for file in files if belongs_to(file.filename, project))


def _unique(files: Iterable[File]) -> list[File]:
    """First entry per filename: a file is served by its name, so two can't share one."""
    by_name: dict[str, File] = {}
    for file in files:
        by_name.setdefault(file.filename, file)
    return list(by_name.values())


def _valid_names(names: list[str]) -> list[str]:
    return [name for name in names if is_valid_project_name(name)]
