"""A bare aiohttp server answering each page request with bytes held in memory: the floor
for an aiohttp server on this machine, to set cachepi's per-request cost against.

    python bench/bare.py --port P --root DIR --workers 2

Every `index.json.gz` under DIR is served at its folder's path (`/index/x/`) with the
headers cachepi sends; nothing else is looked at (no negotiation, no logging).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from aiohttp import web

PAGE_TYPE = "application/vnd.pypi.simple.v1+json"


def make_app(root: Path) -> web.Application:
    pages = {
        f"/{gz.parent.relative_to(root)}/": gz.read_bytes() for gz in root.rglob("index.json.gz")
    }
    headers = {
        "Content-Type": PAGE_TYPE,
        "Content-Encoding": "gzip",
        "Vary": "Accept, Accept-Encoding",
        "Cache-Control": "max-age=600, public",
    }

    async def page(request: web.Request) -> web.Response:
        body = pages.get(request.path)
        if body is None:
            raise web.HTTPNotFound()
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    for _ in range(args.workers - 1):
        if os.fork() == 0:
            break  # a child: serve, like the parent, on the shared port
    web.run_app(
        make_app(args.root),
        host="127.0.0.1",
        port=args.port,
        reuse_port=True,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
