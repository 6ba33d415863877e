"""Settings: CLI flags > CACHEPI_* > PROXPI_* > the TOML file > defaults.

Everything is validated here, once, so the rest of the code receives plain typed values and
never reads the environment. A bad value raises `ConfigError` naming the setting; the CLI
turns that into one line on stderr and exit code 2.

    parsers   a setting's text to a value
    sources   where the text comes from, and the origin an error names
    schema    THE list of settings: name, parser, default, help
    tables    the TOML file's [[index]] and [[route]] tables
    settings  the typed `Settings`, and `load_settings`
    readme    the README's settings table, written from the schema
"""

from cachepi.config.schema import (
    DEFAULT_CACHE_SIZE,
    SETTING,
    SETTINGS,
    Setting,
    default_cache_dir,
    default_index_url,
    default_node_id,
)
from cachepi.config.settings import Settings, load_settings
from cachepi.config.sources import ConfigError
from cachepi.config.tables import IndexSettings

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "SETTING",
    "SETTINGS",
    "ConfigError",
    "IndexSettings",
    "Setting",
    "Settings",
    "default_cache_dir",
    "default_index_url",
    "default_node_id",
    "load_settings",
]
