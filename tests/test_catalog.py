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


# What the file cache extracted and the proxy recorded, for pages that have their own.
ELSEWHERE = {"99" * 32: "98" * 32}
TIMES_ELSEWHERE = {"https://files.example/other-1.0.tar.gz": "2023-01-01T00:00:00Z"}


def test_provenance_urls_point_next_to_the_file_at_the_proxy() -> None:
    project = with_proxied_provenance(Project(name="demo", files=[WHEEL, SDIST]), PAGE)
    assert [file.provenance for file in project.files] == [
        None,
        PAGE + "demo-1.0%2Blocal.tar.gz.provenance",  # quoted as the file's own link is
    ]
    assert project.files[1].url == SDIST.url  # the rest is as it was


def test_a_page_with_provenance_is_a_version_per_address_the_proxy_is_reached_at() -> None:
    shown = listing(WHEEL, SDIST)
    version, make = page(shown, ELSEWHERE, TIMES_ELSEWHERE, PAGE)
    other, _ = page(shown, ELSEWHERE, TIMES_ELSEWHERE, "https://other.example/simple/demo/")
    assert version.startswith("v1") and version != other
    assert make().files[1].provenance == PAGE + "demo-1.0%2Blocal.tar.gz.provenance"
    assert shown.project.files[1].provenance == UPSTREAM_PROVENANCE  # the listing is unchanged


def test_a_page_without_provenance_is_one_version_whatever_the_address() -> None:
    shown = listing(WHEEL)
    version, make = page(shown, ELSEWHERE, TIMES_ELSEWHERE, PAGE)
    assert (version, make()) == ("v1", shown.project)
    assert page(shown, ELSEWHERE, TIMES_ELSEWHERE, None)[0] == "v1"


def test_extracted_metadata_and_provenance_both_shown() -> None:
    bare = a_file(
        "demo-2.0-py3-none-any.whl", hashes={"sha256": "cd" * 32}, provenance="https://p/",
        upload_time=UPLOADED,
    )  # fmt: skip
    pairs = {"cd" * 32: "ef" * 32, **ELSEWHERE}
    version, make = page(listing(bare), pairs, TIMES_ELSEWHERE, PAGE)
    assert version.startswith("v1~") and "@" in version
    # Only its own wheels' METADATA moves a page's version: not an extraction elsewhere.
    assert page(listing(bare), {"cd" * 32: "ef" * 32}, {}, PAGE)[0] == version
    assert page(listing(bare), ELSEWHERE, {}, PAGE)[0] != version
    (file,) = make().files
    assert file.core_metadata == {"sha256": "ef" * 32}
    assert file.provenance == PAGE + "demo-2.0-py3-none-any.whl.provenance"


def test_recorded_upload_times_are_shown_for_files_whose_index_gave_none() -> None:
    undated = a_file("demo-3.0.tar.gz", hashes={"sha256": "12" * 32})
    never_fetched = a_file("demo-3.1.tar.gz", hashes={"sha256": "34" * 32})
    recorded = {undated.url: "2023-01-01T00:00:00Z", WHEEL.url: "2099-01-01T00:00:00Z"}
    shown = listing(WHEEL, undated, never_fetched)
    version, make = page(shown, ELSEWHERE, {**recorded, **TIMES_ELSEWHERE}, PAGE)
    assert version.startswith("v1^")  # a time recorded for one of its files: a new page
    assert page(shown, ELSEWHERE, recorded, PAGE)[0] == version  # not one elsewhere
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
