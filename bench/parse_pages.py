#!/usr/bin/env python3
"""CPU time to parse synthetic upstream pages: a 5,000-link project page and an
800,000-name project list, in HTML and JSON, plus 100,000 nested <div>s (best of N runs).

    PYTHONPATH=src python bench/parse_pages.py

To compare two versions, run it with each one's `src` first on PYTHONPATH.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable

from cachepi.simple.parse import (
    parse_project_html,
    parse_project_json,
    parse_project_list_html,
    parse_project_list_json,
)

PAGE_URL = "https://index.example/simple/bigproj/"


def filenames(count: int) -> list[str]:
    return [
        f"bigproj-{i // 10}.{i % 10}.0-cp312-cp312-manylinux_2_17_x86_64.whl"
        if i % 2
        else f"bigproj-{i // 10}.{i % 10}.0.tar.gz"
        for i in range(count)
    ]


def project_html(count: int) -> bytes:
    links = []
    for filename in filenames(count):
        digest = hashlib.sha256(filename.encode()).hexdigest()
        url = f"https://files.example/packages/{digest[:2]}/{digest[2:4]}/{digest[4:]}/{filename}"
        links.append(
            f'    <a href="{url}#sha256={digest}" data-requires-python="&gt;=3.8"'
            f' data-dist-info-metadata="sha256={digest}" data-core-metadata="sha256={digest}">'
            f"{filename}</a><br />"
        )
    head = '<meta name="pypi:repository-version" content="1.1"><title>Links</title>'
    return (
        f"<!DOCTYPE html>\n<html>\n<head>{head}</head>\n<body>\n<h1>Links for bigproj</h1>\n"
        + "\n".join(links)
        + "\n</body>\n</html>\n<!--SERIAL 123-->"
    ).encode()


def project_json(count: int) -> bytes:
    files = []
    for i, filename in enumerate(filenames(count)):
        digest = hashlib.sha256(filename.encode()).hexdigest()
        url = f"https://files.example/packages/{digest[:2]}/{digest[2:4]}/{digest[4:]}/{filename}"
        files.append(
            {
                "filename": filename,
                "url": url,
                "hashes": {"sha256": digest},
                "requires-python": ">=3.8",
                "core-metadata": {"sha256": digest},
                "size": 1000 + i,
                "upload-time": "2024-04-21T18:21:52.125849Z",
                "yanked": False,
            }
        )
    return json.dumps({"meta": {"api-version": "1.1"}, "name": "bigproj", "files": files}).encode()


def project_names(count: int) -> list[str]:
    rng = random.Random(1)
    letters = "abcdefghijklmnopqrstuvwxyz"
    return [
        "".join(rng.choice(letters) for _ in range(rng.randint(3, 14)))
        + rng.choice(["", "-", ".", "_"])
        + str(i)
        for i in range(count)
    ]


def list_html(names: list[str]) -> bytes:
    links = "\n".join(f'    <a href="/simple/{name.lower()}/">{name}</a>' for name in names)
    head = '<meta name="pypi:repository-version" content="1.1"><title>Simple index</title>'
    return f"<!DOCTYPE html>\n<html><head>{head}</head>\n<body>\n{links}\n</body></html>".encode()


def list_json(names: list[str]) -> bytes:
    projects = [{"name": name} for name in names]
    return json.dumps({"meta": {"api-version": "1.1"}, "projects": projects}).encode()


def best_ms(parse: Callable[[], object], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        began = time.process_time()
        parse()
        best = min(best, time.process_time() - began)
    return best * 1000


def main() -> None:
    names = project_names(800_000)
    deep = b"<div>" * 100_000 + b'<a href="/p/bigproj-1.0.tar.gz">x</a>' + b"</div>" * 100_000
    cases: list[tuple[str, bytes, Callable[[bytes], object], int]] = [
        ("project page, 5,000 links, HTML", project_html(5000),
         lambda body: parse_project_html(body, PAGE_URL, "bigproj"), 15),
        ("project page, 5,000 files, JSON", project_json(5000),
         lambda body: parse_project_json(body, PAGE_URL), 15),
        ("project list, 800,000 names, HTML", list_html(names), parse_project_list_html, 5),
        ("project list, 800,000 names, JSON", list_json(names), parse_project_list_json, 5),
        ("100,000 nested <div>s, HTML", deep,
         lambda body: parse_project_html(body, PAGE_URL, "bigproj"), 1),
    ]  # fmt: skip
    for label, body, parse, runs in cases:
        milliseconds = best_ms(lambda: parse(body), runs)  # noqa: B023
        print(f"{label} ({len(body) / 1e6:.1f} MB): {milliseconds:,.0f} ms CPU, best of {runs}")


if __name__ == "__main__":
    main()
