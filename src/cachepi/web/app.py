"""The aiohttp application: routes, and the components it owns for its lifetime."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from cachepi.config import Settings
from cachepi.files import FileCache
from cachepi.index import IndexCache
from cachepi.store.blobs import BlobStore
from cachepi.store.metadata import MetadataStore
from cachepi.upstream import Upstream, make_session
from cachepi.web import admin, files, pages
from cachepi.web.keys import FILE_CACHE, INDEX_CACHE, SETTINGS

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[SETTINGS] = settings
    app[pages.RENDERED] = pages.RenderCache()
    for prefix in ("/index", "/simple"):  # /simple/ is an alias many configs use
        app.router.add_get(prefix + "/", pages.project_list)
        app.router.add_get(prefix + "/{project}", pages.project_page)
        app.router.add_get(prefix + "/{project}/", pages.project_page)
        app.router.add_get(prefix + "/{project}/{filename}", files.dist_file)
    app.router.add_get("/", admin.home)
    app.router.add_get("/health", admin.health)
    app.router.add_delete("/cache/list", admin.invalidate_list)
    app.router.add_delete("/cache/{project}", admin.invalidate_project)
    app.router.add_post("/cache/invalidate", admin.invalidate_form)
    app.cleanup_ctx.append(_components)
    return app


async def _components(app: web.Application) -> AsyncIterator[None]:
    """Open the stores and the upstream session at startup; close them at shutdown."""
    settings = app[SETTINGS]
    metadata = MetadataStore(settings.cache_dir / "cachepi.sqlite3")
    session = make_session(settings.connect_timeout, settings.read_timeout, settings.verify_ssl)
    upstreams = [Upstream(up.url, up.ttl, session) for up in settings.upstreams]
    app[INDEX_CACHE] = IndexCache(upstreams, metadata, settings.negative_ttl)
    file_cache = FileCache(BlobStore(settings.cache_dir), metadata, settings.cache_size)
    file_cache.open()
    app[FILE_CACHE] = file_cache
    log.info(
        "serving %s from %s (%d files, %d bytes cached)",
        ", ".join(up.url for up in upstreams),
        settings.cache_dir,
        file_cache.blob_count,
        file_cache.total_bytes,
    )
    try:
        yield
    finally:
        await file_cache.close()
        await session.close()
        metadata.close()
