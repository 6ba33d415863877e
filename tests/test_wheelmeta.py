"""Extracting a wheel's METADATA for indexes without PEP 658."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from cachepi.simple.model import File, Project
from cachepi.wheelmeta import lacks_metadata, read_wheel_metadata, with_extracted_metadata
from tests.fakeupstream import build_wheel

WHEEL = "demo-1.0-py3-none-any.whl"


def zip_with(path: Path, members: dict[str, bytes]) -> Path:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    path.write_bytes(buffer.getvalue())
    return path


def test_metadata_bytes_are_the_wheels_own(tmp_path: Path) -> None:
    wheel = build_wheel("demo", "1.0", requires=["lib>=1"])
    path = tmp_path / "w.whl"
    path.write_bytes(wheel.read_bytes())
    assert read_wheel_metadata(path, wheel.filename) == wheel.metadata


def test_the_dist_info_named_after_the_wheel_wins(tmp_path: Path) -> None:
    path = zip_with(
        tmp_path / "w.whl",
        {"other-2.0.dist-info/METADATA": b"other", "demo-1.0.dist-info/METADATA": b"mine"},
    )
    assert read_wheel_metadata(path, WHEEL) == b"mine"


def test_no_or_ambiguous_or_nested_metadata_gives_none(tmp_path: Path) -> None:
    ambiguous = {"a-1.dist-info/METADATA": b"a", "b-1.dist-info/METADATA": b"b"}
    assert read_wheel_metadata(zip_with(tmp_path / "a.whl", ambiguous), WHEEL) is None
    nested = {"x/demo-1.0.dist-info/METADATA": b"n"}
    assert read_wheel_metadata(zip_with(tmp_path / "n.whl", nested), WHEEL) is None
    (tmp_path / "bad.whl").write_bytes(b"not a zip")
    assert read_wheel_metadata(tmp_path / "bad.whl", WHEEL) is None


def test_only_wheels_without_metadata_are_enriched() -> None:
    files = [
        File(WHEEL, "https://x/" + WHEEL, {"sha256": "a" * 64}),
        File("demo-1.0.tar.gz", "https://x/demo-1.0.tar.gz", {"sha256": "b" * 64}),
        File(
            "demo-0.9-py3-none-any.whl", "https://x/0.9", {"sha256": "c" * 64}, core_metadata=True
        ),
    ]
    project = Project("demo", files)
    assert lacks_metadata(project)
    extracted = {"a" * 64: "d" * 64, "b" * 64: "e" * 64, "c" * 64: "f" * 64}
    enriched = with_extracted_metadata(project, extracted)
    assert [f.core_metadata for f in enriched.files] == [{"sha256": "d" * 64}, False, True]
    assert not lacks_metadata(enriched)
