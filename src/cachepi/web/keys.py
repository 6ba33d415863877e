"""Typed keys for what the application object carries (aiohttp AppKey)."""

from __future__ import annotations

from aiohttp import web

from cachepi.config import Settings
from cachepi.files import FileCache
from cachepi.index import IndexCache

SETTINGS = web.AppKey("settings", Settings)
INDEX_CACHE = web.AppKey("index_cache", IndexCache)
FILE_CACHE = web.AppKey("file_cache", FileCache)
