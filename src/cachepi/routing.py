"""Which upstream indexes may answer for a project.

Pure. A route pins project-name globs to some indexes (`acme-*` -> internal): those projects
are asked of those indexes only, so a public project of the same name can never shadow or be
merged into them (dependency confusion). Projects no route names are asked of every index
that is not `explicit` (an explicit index serves only the projects routed to it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class Route:
    patterns: tuple[re.Pattern[str], ...]
    positions: tuple[int, ...]  # of the indexes, in configuration order


class Router:
    def __init__(self, routes: Sequence[Route], default: tuple[int, ...]) -> None:
        self._routes = tuple(routes)
        self._default = default
        # Names repeat (every page and file request asks): remember recent answers.
        self.positions = lru_cache(maxsize=65536)(self.match)

    @property
    def routed(self) -> bool:
        """Whether some project is served by other indexes than the rest."""
        return bool(self._routes)

    def match(self, name: str) -> tuple[int, ...]:
        """The indexes, in order, that serve the (normalized) project `name`; `positions`
        is the same, remembered."""
        for route in self._routes:
            if any(pattern.fullmatch(name) for pattern in route.patterns):
                return route.positions
        return self._default
