"""Typed keys for what the application object carries (aiohttp AppKey)."""

from __future__ import annotations

from aiohttp import web

from cachepi.config import Settings
from cachepi.filecache import FileCache
from cachepi.filecache.range_support import RangeSupport
from cachepi.filecache.wheel_metadata import WheelMetadata
from cachepi.index import IndexCache
from cachepi.metrics import Metrics
from cachepi.overview import Overviews
from cachepi.rendered import RenderedPages
from cachepi.store import Stores
from cachepi.store.protocols import MetadataStore
from cachepi.types import CacheResult
from cachepi.upload_times import UploadTimes
from cachepi.web.passwords import PasswordChecks

SETTINGS = web.AppKey("settings", Settings)
INDEX_CACHE = web.AppKey("index_cache", IndexCache)
FILE_CACHE = web.AppKey("file_cache", FileCache)
WHEEL_METADATA = web.AppKey("wheel_metadata", WheelMetadata)
RANGES = web.AppKey("ranges", RangeSupport)
UPLOAD_TIME_RECORDS = web.AppKey("upload_time_records", UploadTimes)
METRICS = web.AppKey("metrics", Metrics)
RENDERED = web.AppKey("rendered", RenderedPages)
METADATA = web.AppKey("metadata", MetadataStore)
OVERVIEWS = web.AppKey("overviews", Overviews)
STORES = web.AppKey("stores", Stores)
# Only when basic auth is on.
PASSWORDS = web.AppKey("passwords", PasswordChecks)
# Route handler -> the name requests are counted under in /metrics.
ROUTE_NAMES = web.AppKey("route_names", dict)
# Per request: how it was answered, for the access log.
CACHE_RESULT = web.RequestKey("cache_result", CacheResult)
# Per request: body bytes a file response sent (sendfile bypasses aiohttp's count).
BODY_BYTES = web.RequestKey("body_bytes", int)
# Per request, under basic auth: the user its credentials proved it is.
USER = web.RequestKey("user", str)
