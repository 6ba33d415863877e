"""Settings: flags > CACHEPI_* > PROXPI_* > defaults; bad values exit 2 with one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cachepi.cli import main
from cachepi.config import (
    DEFAULT_CACHE_SIZE,
    SETTINGS,
    ConfigError,
    IndexSettings,
    Settings,
    default_index_url,
    load_settings,
)
from cachepi.config.readme import with_table
from cachepi.policy import Policy
from tests.clients import isolated_env

README = Path(__file__).parents[1] / "README.md"


def test_defaults_match_proxpi() -> None:
    settings = load_settings({}, {})
    assert settings.upstreams == (IndexSettings(default_index_url(), 1800),)
    assert default_index_url().startswith("https://") and default_index_url().endswith("/simple/")
    assert settings.cache_size == DEFAULT_CACHE_SIZE == 5 * 1024**3
    assert (settings.host, settings.port) == ("127.0.0.1", 5000)
    assert (settings.connect_timeout, settings.read_timeout) == (3.1, 20.0)


def test_every_proxpi_variable_is_read() -> None:
    env = {
        "PROXPI_INDEX_URL": "http://a.example/simple",
        "PROXPI_INDEX_TTL": "60",
        "PROXPI_EXTRA_INDEX_URLS": "http://b.example/simple/,http://c.example/x/",
        "PROXPI_EXTRA_INDEX_TTLS": "10,0",
        "PROXPI_CACHE_SIZE": "1000",
        "PROXPI_CACHE_DIR": "/tmp/somewhere",
        "PROXPI_BINARY_FILE_MIME_TYPE": "1",
        "PROXPI_DISABLE_INDEX_SSL_VERIFICATION": "1",
        "PROXPI_DOWNLOAD_TIMEOUT": "2.5",
        "PROXPI_CONNECT_TIMEOUT": "1.5",
        "PROXPI_READ_TIMEOUT": "7",
    }
    settings = load_settings({}, env)
    assert settings.upstreams == (
        IndexSettings("http://a.example/simple/", 60),
        IndexSettings("http://b.example/simple/", 10),
        IndexSettings("http://c.example/x/", 0),
    )
    assert settings.cache_size == 1000
    assert settings.cache_dir == Path("/tmp/somewhere")
    assert settings.binary_file_mime_type is True
    assert settings.verify_ssl is False
    assert settings.download_timeout == 2.5
    assert (settings.connect_timeout, settings.read_timeout) == (1.5, 7.0)


def test_extra_indexes_default_to_three_minutes() -> None:
    settings = load_settings({}, {"PROXPI_EXTRA_INDEX_URLS": "http://b.example/"})
    assert settings.upstreams[1] == IndexSettings("http://b.example/", 180)


def test_flag_beats_cachepi_beats_proxpi() -> None:
    env = {"PROXPI_INDEX_TTL": "1", "CACHEPI_INDEX_TTL": "2"}
    assert load_settings({}, env).upstreams[0].ttl == 2
    assert load_settings({"index_ttl": 3}, env).upstreams[0].ttl == 3
    assert load_settings({}, {"PROXPI_INDEX_TTL": "1"}).upstreams[0].ttl == 1


@pytest.mark.parametrize(
    ("text", "size"),
    [("0", 0), ("5368709120", 5 * 1024**3), ("5G", 5 * 1024**3), ("500MiB", 500 * 1024**2)],
)
def test_cache_size_units(text: str, size: int) -> None:
    assert load_settings({}, {"PROXPI_CACHE_SIZE": text}).cache_size == size


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PROXPI_INDEX_TTL": "-5"}, "PROXPI_INDEX_TTL"),
        ({"PROXPI_CACHE_SIZE": "lots"}, "PROXPI_CACHE_SIZE"),
        ({"CACHEPI_INDEX_URL": "ftp://x/"}, "CACHEPI_INDEX_URL"),
        ({"CACHEPI_INDEX_URL": "http://x:99999/simple/"}, "CACHEPI_INDEX_URL"),
        ({"PROXPI_EXTRA_INDEX_URLS": "http://a/,http://b:port/"}, "PROXPI_EXTRA_INDEX_URLS"),
        ({"PROXPI_READ_TIMEOUT": "soon"}, "PROXPI_READ_TIMEOUT"),
        (
            {"PROXPI_EXTRA_INDEX_URLS": "http://a/,http://b/", "PROXPI_EXTRA_INDEX_TTLS": "5"},
            "PROXPI_EXTRA_INDEX_TTLS",
        ),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings({}, env)


def test_bad_value_exits_2_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cachepi", "serve", "--cache-dir", str(tmp_path)],
        env={"PROXPI_CACHE_SIZE": "lots", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "PROXPI_CACHE_SIZE" in result.stderr and "Traceback" not in result.stderr


# -- what errors show of a bad value -----------------------------------------------------

SECRET = "s3cr3t-pw"  # under 16 characters, so it is a bad ADMIN_TOKEN too
BAD_PORT = f"http://user:{SECRET}@host:99999/simple/"


def serve_error(tmp_path: Path, args: list[str], env: dict[str, str], toml: str = "") -> str:
    """The one line `cachepi serve` writes for a configuration error (exit code 2)."""
    if toml:
        (tmp_path / "cachepi.toml").write_text(toml)
        args = [*args, "--config", str(tmp_path / "cachepi.toml")]
    result = subprocess.run(
        [sys.executable, "-m", "cachepi", "serve", "--cache-dir", str(tmp_path / "cache"), *args],
        env=isolated_env(tmp_path) | env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cachepi: error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--index-url", BAD_PORT], {}, "--index-url='http://host:99999/simple/'"),
        ([], {"CACHEPI_INDEX_URL": BAD_PORT}, "CACHEPI_INDEX_URL"),
        ([], {"PROXPI_INDEX_URL": f"http://user:{SECRET}@[::1/simple/"}, "PROXPI_INDEX_URL"),
        # urlsplit's own reason for this one quotes the netloc, password and all
        ([], {"PROXPI_INDEX_URL": f"http://user:{SECRET}\uff03@host/"}, "PROXPI_INDEX_URL"),
        ([], {"CACHEPI_INDEX_URL": f"user:{SECRET}@host/simple/"}, "CACHEPI_INDEX_URL"),
        (["--index-url", f"http://user:{SECRET}/x@host/simple/"], {}, "--index-url"),
        (
            [],
            {"PROXPI_EXTRA_INDEX_URLS": f"http://a:{SECRET}@h1/,{BAD_PORT}"},
            "PROXPI_EXTRA_INDEX_URLS='http://h1/,http://host:99999/simple/'",
        ),
        (
            ["--extra-index-urls", f"http://a:{SECRET}@h1/", "--extra-index-urls", BAD_PORT],
            {},
            "--extra-index-urls",
        ),
        (
            [],
            {"PROXPI_EXTRA_INDEX_URLS": f"http://a:{SECRET}@h/", "PROXPI_EXTRA_INDEX_TTLS": "1,2"},
            "PROXPI_EXTRA_INDEX_TTLS",
        ),
        (["--redis-url", f"redis://:{SECRET}@[::1/0"], {}, "--redis-url"),
        ([], {"CACHEPI_STORAGE": f"s4://key:{SECRET}@bucket/"}, "CACHEPI_STORAGE"),
        ([], {"CACHEPI_S3_ENDPOINT": BAD_PORT}, "CACHEPI_S3_ENDPOINT"),
        ([], {"CACHEPI_ADMIN_TOKEN": SECRET}, "CACHEPI_ADMIN_TOKEN"),
        # Usage errors, from click: an index URL without its flag, a URL for a number.
        ([f"http://user:{SECRET}@host/simple/"], {}, "(http://host/simple/)"),
        (["--port", f"http://user:{SECRET}@host/"], {}, "'--port': 'http://host/'"),
    ],
)
def test_flag_and_environment_errors_never_show_a_password(
    args: list[str], env: dict[str, str], named: str, tmp_path: Path
) -> None:
    line = serve_error(tmp_path, args, env)
    assert named in line and SECRET not in line, line


@pytest.mark.parametrize(
    ("toml", "env", "named"),
    [
        (f'index-url = "{BAD_PORT}"\n', {}, "cachepi.toml: index-url"),
        (
            f'extra-index-urls = ["http://a:{SECRET}@h1/", "{BAD_PORT}"]\n',
            {},
            "cachepi.toml: extra-index-urls",
        ),
        (f'[[index]]\nurl = "{BAD_PORT}"\n', {}, "index #1: url='http://host:99999/simple/'"),
        # Shown as written: the variable's value is never in the error.
        (
            '[[index]]\nurl = "http://user:${PASSWORD}@host:99999/"\n',
            {"PASSWORD": SECRET},
            "url='http://host:99999/'",
        ),
        (
            '[[index]]\nurl = "http://host/simple/"\n',
            {"CACHEPI_INDEX_URL": f"http://user:{SECRET}@host/simple/"},
            "CACHEPI_INDEX_URL",
        ),
    ],
)
def test_file_errors_never_show_a_password(
    toml: str, env: dict[str, str], named: str, tmp_path: Path
) -> None:
    line = serve_error(tmp_path, [], env, toml)
    assert named in line and SECRET not in line, line


def test_help_lists_serve() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cachepi", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "serve" in result.stdout


# -- one schema: the README, --help and Settings agree with it ----------------------------


def test_readme_settings_table_is_the_schemas() -> None:
    readme = README.read_text()
    assert with_table(readme) == readme, "run: python -m cachepi.config.readme README.md"


def test_serve_help_lists_every_setting() -> None:
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0, result.output
    # Help text wraps anywhere between words, so compare without whitespace.
    squeezed = "".join(result.output.split())
    for setting in SETTINGS:
        assert f"  {setting.flag} " in result.output or f"  {setting.flag}\n" in result.output
        assert "".join(setting.help.replace("`", "").split()) in squeezed, setting.name
        if not setting.is_flag and setting.default_text != "none":
            shown = "".join(setting.default_text.replace("`", "").split())
            assert f"[default:{shown}]" in squeezed, setting.name


def test_defaults_written_in_words_where_computed() -> None:
    assert all(setting.shown_default for setting in SETTINGS if setting.compute is not None)


def test_settings_defaults_are_those_load_settings_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    loaded = load_settings({}, {})
    assert Settings(upstreams=loaded.upstreams) == loaded
    # The policy's own defaults, written in cachepi.policy, agree with the schema's.
    assert loaded.policy == Policy()
