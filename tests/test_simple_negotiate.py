import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachepi.simple.negotiate import Format, choose_encoding, choose_format, content_type

JSON = "application/vnd.pypi.simple.v1+json"
HTML_V1 = "application/vnd.pypi.simple.v1+html"

PIP = f"{JSON}, {HTML_V1}; q=0.1, text/html; q=0.01"
UV = f"{JSON}, {HTML_V1};q=0.2, text/html;q=0.01"
POETRY = f"{JSON}, */*;q=0.1"
FIREFOX = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (PIP, Format.JSON),
        (UV, Format.JSON),
        (POETRY, Format.JSON),
        (FIREFOX, Format.HTML),
        ("text/html", Format.HTML),
        ("*/*", Format.HTML),
        (None, Format.HTML),
        ("", Format.HTML),
        ("application/vnd.pypi.simple.latest+html", Format.HTML_V1),
        ("application/vnd.pypi.simple.latest+json", Format.JSON),
        (HTML_V1, Format.HTML_V1),
    ],
)
def test_real_clients_get_the_format_they_prefer(accept: str | None, expected: Format) -> None:
    assert choose_format(accept, None) is expected


def test_q_values_decide_not_the_order_of_entries() -> None:
    assert choose_format(f"text/html;q=0.01, {HTML_V1};q=0.1, {JSON}", None) is Format.JSON
    assert choose_format(f"{JSON};q=0.5, text/html", None) is Format.HTML


def test_equal_q_goes_to_the_server_preference() -> None:
    assert choose_format(f"text/html, {HTML_V1}, {JSON}", None) is Format.JSON
    assert choose_format(f"text/html, {HTML_V1}", None) is Format.HTML_V1


def test_a_named_type_beats_a_wildcard_of_equal_q() -> None:
    assert choose_format(f"*/*, {HTML_V1}", None) is Format.HTML_V1


def test_application_wildcard_means_the_pypi_types() -> None:
    assert choose_format("application/*", None) is Format.JSON


def test_text_wildcard_means_html() -> None:
    assert choose_format("text/*", None) is Format.HTML


def test_more_specific_entry_overrides_a_wildcard() -> None:
    # JSON is refused by name, so */* must not bring it back.
    assert choose_format(f"{JSON};q=0, {HTML_V1};q=0, */*", None) is Format.HTML
    assert choose_format("text/html;q=0, */*", None) is Format.HTML_V1


@pytest.mark.parametrize(
    "accept", ["application/json", "image/png, text/plain", "*/*;q=0", f"{JSON};q=0, text/*;q=0"]
)
def test_nothing_acceptable_means_none(accept: str) -> None:
    assert choose_format(accept, None) is None


@pytest.mark.parametrize(
    "accept",
    [
        f"  {JSON.upper()} ;  q = 1.0 , text/html;q=0.1",
        f"{JSON};charset=utf-8;q=0.9, text/html;q=0.5",
        f"{JSON};q=nope, text/html;q=0.5, {JSON};q=0.9",
        f"{JSON};q=2, {JSON};q=0.9, text/html;q=0.5",
        f",,{JSON};;, text/html;q=0.5",
    ],
)
def test_whitespace_parameters_and_malformed_entries_are_tolerated(accept: str) -> None:
    assert choose_format(accept, None) is Format.JSON


def test_only_malformed_entries_mean_no_accept_at_all() -> None:
    assert choose_format(f"{JSON};q=abc", None) is Format.HTML


@pytest.mark.parametrize(
    ("param", "expected"),
    [
        (JSON, Format.JSON),
        ("application/vnd.pypi.simple.latest+json", Format.JSON),
        ("latest+json", Format.JSON),
        ("v1+html", Format.HTML_V1),
        ("text/html", Format.HTML),
        (" Latest+HTML ", Format.HTML_V1),
    ],
)
def test_format_parameter_overrides_accept(param: str, expected: Format) -> None:
    assert choose_format("image/png", param) is expected


@pytest.mark.parametrize("param", ["", "xml", "application/json", "latest+yaml"])
def test_unknown_format_parameter_falls_back_to_accept(param: str) -> None:
    assert choose_format(PIP, param) is Format.JSON


def test_content_type_adds_charset_to_text_html_only() -> None:
    assert content_type(Format.HTML) == "text/html; charset=utf-8"
    assert content_type(Format.JSON) == JSON
    assert content_type(Format.HTML_V1) == HTML_V1


@pytest.mark.parametrize(
    ("accept_encoding", "expected"),
    [
        ("gzip, deflate, br", "gzip"),
        ("GZIP", "gzip"),
        ("br, gzip;q=0.5", "gzip"),
        ("gzip, deflate, br, zstd", "zstd"),
        ("zstd;q=0.5, gzip", "gzip"),
        ("*", "zstd"),
        ("deflate, *;q=0.1", "zstd"),
        ("gzip;q=0, *", "zstd"),
        ("zstd;q=0, *", "gzip"),
        ("x-gzip", "gzip"),
        ("br", "identity"),
        ("gzip;q=0", "identity"),
        ("*;q=0", "identity"),
        ("gzip;q=bad", "identity"),
        ("", "identity"),
        (None, "identity"),
    ],
)
def test_best_acceptable_coding(accept_encoding: str | None, expected: str) -> None:
    assert choose_encoding(accept_encoding) == expected


header_text = st.text() | st.lists(
    st.sampled_from([JSON, HTML_V1, "text/html", "*/*", "text/*", ";q=", "0.5", ",", " ", "q", "="])
).map("".join)


@given(header_text, st.none() | st.text())
def test_choose_format_never_raises(accept: str, param: str | None) -> None:
    assert choose_format(accept, param) in (*Format, None)


@given(header_text)
def test_choose_encoding_never_raises(accept_encoding: str) -> None:
    assert choose_encoding(accept_encoding) in ("zstd", "gzip", "identity")


def test_format_param_with_an_unescaped_plus_decoded_as_space() -> None:
    assert choose_format("text/html", "application/vnd.pypi.simple.v1 json") is Format.JSON
