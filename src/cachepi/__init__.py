"""cachepi: a caching proxy for Python package indexes."""

__version__ = "0.1.0"
