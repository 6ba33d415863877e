"""The README's settings table, written from the schema.

    python -m cachepi.config.readme            prints the table
    python -m cachepi.config.readme README.md  rewrites the table in README.md

A test fails while README.md holds anything else, so the table is rewritten, never edited.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cachepi.config.schema import SETTINGS, Setting

HEADER = "| name | default | meaning |\n| --- | --- | --- |\n"


def _default(setting: Setting) -> str:
    """A value one can type is shown as code; a default described in words, as written."""
    if isinstance(setting.default, str) and not setting.shown_default:
        return f"`{setting.default}`"
    return setting.default_text


def _row(*cells: str) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |\n"


def table() -> str:
    rows = (_row(f"`{s.name}`", _default(s), s.meaning or s.help) for s in SETTINGS)
    return HEADER + "".join(rows)


def with_table(readme: str) -> str:
    """`readme` with its settings table, from the header to the first line that is not a
    row, replaced by the schema's."""
    start = readme.index(HEADER)
    end = start + len(HEADER)
    for line in readme[end:].splitlines(keepends=True):
        if not line.startswith("|"):
            break
        end += len(line)
    return readme[:start] + table() + readme[end:]


def main(arguments: list[str]) -> None:
    if not arguments:
        sys.stdout.write(table())
        return
    path = Path(arguments[0])
    path.write_text(with_table(path.read_text()))


if __name__ == "__main__":
    main(sys.argv[1:])
