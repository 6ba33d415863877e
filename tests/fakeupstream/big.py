"""PyPI-scale pages, made up, for `FakeUpstream.serve_raw`: a project list as long as
PyPI's, and project pages of thousands of files (tests/test_big_pages.py, bench/pages.py)."""

from __future__ import annotations

import json
import random


def project_list_html(names: int) -> bytes:
    """A PEP 503 root page of `names` projects (800,000: 42 MB, PyPI's is ~50 MB)."""
    links = "".join(
        f'<a href="/simple/project-{i:06d}/">Project-{i:06d}</a>\n' for i in range(names)
    )
    return f"<!DOCTYPE html><html><body>\n{links}</body></html>\n".encode()


def project_json(name: str, files: int, files_url: str) -> bytes:
    """A PEP 691 page of `files` wheels with hashes, sizes, upload times and metadata, as
    PyPI's big pages (numpy, botocore) have them; the same for the same arguments."""
    rng = random.Random(name)
    entries = []
    for i in range(files):
        filename = f"{name}-{i // 10}.{i % 10}.0-cp312-cp312-manylinux_2_17_x86_64.whl"
        entries.append(
            {
                "filename": filename,
                "url": f"{files_url}{rng.randbytes(16).hex()}/{filename}",
                "hashes": {"sha256": rng.randbytes(32).hex()},
                "requires-python": ">=3.9",
                "core-metadata": {"sha256": rng.randbytes(32).hex()},
                "size": rng.randrange(10**5, 10**8),
                "upload-time": "2025-01-01T00:00:00.000000Z",
            }
        )
    page = {"meta": {"api-version": "1.1"}, "name": name, "files": entries, "versions": []}
    return json.dumps(page).encode()
