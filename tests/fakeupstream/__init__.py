"""A real fake package index for tests and benchmarks (see server.py for a tour)."""

from .dists import Dist, build_sdist, build_wheel, core_metadata, dist_name, normalize
from .server import (
    HTML_V1_TYPE,
    JSON_TYPE,
    TEXT_HTML_TYPE,
    FakeUpstream,
    Format,
    Links,
    ProjectStatus,
    RecordedRequest,
    add_default_tree,
)

__all__ = [
    "HTML_V1_TYPE",
    "JSON_TYPE",
    "TEXT_HTML_TYPE",
    "Dist",
    "FakeUpstream",
    "Format",
    "Links",
    "ProjectStatus",
    "RecordedRequest",
    "add_default_tree",
    "build_sdist",
    "build_wheel",
    "core_metadata",
    "dist_name",
    "normalize",
]
