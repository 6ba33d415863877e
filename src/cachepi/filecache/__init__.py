"""The file cache: single-flight streaming downloads into verified, evicted blobs."""

from cachepi.filecache.cache import FileCache
from cachepi.filecache.download import Download, FileSpec

__all__ = ["Download", "FileCache", "FileSpec"]
