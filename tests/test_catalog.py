"""catalog.py, pure: PEP 740 provenance on a page points at the proxy, and a request for
`<file>.provenance` names the upstream's provenance object. (Through a real proxy: the
provenance cases of test_conformance.py.)"""

from __future__ import annotations

from typing import Any

import pytest

from cachepi.catalog import NotServed, file_spec, page, with_proxied_provenance
from cachepi.index import Listing
from cachepi.simple.model import File, Project

PAGE = "http://proxy.example:5000/index/demo/"
UPSTREAM_PROVENANCE = "https://pypi.example/integrity/demo/1.0/demo-1.0.tar.gz/provenance"


def a_file(filename: str, **fields: Any) -> File:
    return File(filename=filename, url=f"https://files.example/{filename}", **fields)


UPLOADED = "2024-05-06T07:08:09Z"
WHEEL = a_file(
    "demo-1.0-py3-none-any.whl", hashes={"sha256": "ab" * 32}, core_metadata=True, size=3,
    upload_time=UPLOADED,
)  # fmt: skip
SDIST = a_file("demo-1.0+local.tar.gz", provenance=UPSTREAM_PROVENANCE, upload_time=UPLOADED)


def listing(*files: File, **fields: Any) -> Listing:
    return Listing(Project(name="demo", files=list(files)), ("pypi",) * len(files), "v1", **fields)


def no_extraction() -> tuple[int, dict[str, str]]:
    raise AssertionError("asked for extracted metadata of a page that lacks none")


def no_times() -> tuple[int, dict[str, str]]:
    raise AssertionError("asked for upload times of a page that lacks none")


def test_provenance_urls_point_next_to_the_file_at_the_proxy() -> None:
    project = with_proxied_provenance(Project(name="demo", files=[WHEEL, SDIST]), PAGE)
    assert [file.provenance for file in project.files] == [
        None,
        PAGE + "demo-1.0%2Blocal.tar.gz.provenance",  # quoted as the file's own link is
    ]
    assert project.files[1].url == SDIST.url  # the rest is as it was


def test_a_page_with_provenance_is_a_version_per_address_the_proxy_is_reached_at() -> None:
    shown = listing(WHEEL, SDIST)
    version, make = page(shown, no_extraction, no_times, lambda: PAGE)
    other, _ = page(shown, no_extraction, no_times, lambda: "https://other.example/simple/demo/")
    assert version.startswith("v1") and version != other
    assert make().files[1].provenance == PAGE + "demo-1.0%2Blocal.tar.gz.provenance"
    assert shown.project.files[1].provenance == UPSTREAM_PROVENANCE  # the listing is unchanged


def test_a_page_without_provenance_never_asks_for_the_address() -> None:
    def address() -> str:
        raise AssertionError("asked for the address of a page that needs none")

    shown = listing(WHEEL)
    version, make = page(shown, no_extraction, no_times, address)
    assert (version, make()) == ("v1", shown.project)


def test_extracted_metadata_and_provenance_both_shown() -> None:
    bare = a_file(
        "demo-2.0-py3-none-any.whl", hashes={"sha256": "cd" * 32}, provenance="https://p/",
        upload_time=UPLOADED,
    )  # fmt: skip
    pairs = {"cd" * 32: "ef" * 32}
    version, make = page(listing(bare), lambda: (7, pairs), no_times, lambda: PAGE)
    assert version.startswith("v1~7@")
    (file,) = make().files
    assert file.core_metadata == {"sha256": "ef" * 32}
    assert file.provenance == PAGE + "demo-2.0-py3-none-any.whl.provenance"


def test_recorded_upload_times_are_shown_for_files_whose_index_gave_none() -> None:
    undated = a_file("demo-3.0.tar.gz", hashes={"sha256": "12" * 32})
    never_fetched = a_file("demo-3.1.tar.gz", hashes={"sha256": "34" * 32})
    recorded = {undated.url: "2023-01-01T00:00:00Z", WHEEL.url: "2099-01-01T00:00:00Z"}
    shown = listing(WHEEL, undated, never_fetched)
    version, make = page(shown, no_extraction, lambda: (3, recorded), lambda: PAGE)
    assert version == "v1^3"  # a new time recorded anywhere makes the page again
    assert [file.upload_time for file in make().files] == [
        UPLOADED,  # the index's own time stays
        "2023-01-01T00:00:00Z",
        None,
    ]


def test_a_provenance_request_names_the_upstreams_provenance_object() -> None:
    spec = file_spec(listing(WHEEL, SDIST), "demo", SDIST.filename + ".provenance")
    assert (spec.url, spec.hashes, spec.size, spec.upstream) == (
        UPSTREAM_PROVENANCE,
        {},
        None,
        "pypi",
    )
    assert (spec.project, spec.filename) == ("demo", "demo-1.0+local.tar.gz.provenance")
    assert spec.wheel_without_metadata is None


def test_provenance_the_index_does_not_offer_is_not_served() -> None:
    with pytest.raises(NotServed, match="no provenance") as refusal:
        file_spec(listing(WHEEL, SDIST), "demo", WHEEL.filename + ".provenance")
    assert not refusal.value.forbidden
    with pytest.raises(NotServed, match="no file"):
        file_spec(listing(WHEEL), "demo", "demo-9.0.tar.gz.provenance")


def test_provenance_of_a_refused_file_is_refused() -> None:
    refused = listing(WHEEL, refused={SDIST.filename: "denied by the policy"})
    with pytest.raises(NotServed, match="denied") as refusal:
        file_spec(refused, "demo", SDIST.filename + ".provenance")
    assert refusal.value.forbidden
