"""The file cache: single-flight streaming downloads into verified, evicted blobs."""

from cachepi.filecache.cache import FileCache
from cachepi.filecache.download import Claim, Download, FileSpec
from cachepi.filecache.limits import Busy, DownloadLimits

__all__ = ["Busy", "Claim", "Download", "DownloadLimits", "FileCache", "FileSpec"]
