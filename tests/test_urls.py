"""velora.urls: which Host headers and base URLs may ever be echoed into a URL."""

from __future__ import annotations

import pytest

from velora.urls import MAX_AUTHORITY, clean_authority, parse_base_url


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("api.example.com", "api.example.com"),
        ("API.Example.COM:8443", "api.example.com:8443"),
        ("localhost", "localhost"),
        ("127.0.0.1:8080", "127.0.0.1:8080"),
        ("[::1]:8080", "[::1]:8080"),
        ("[2001:DB8:0:0:0:0:0:1]", "[2001:db8::1]"),
        ("a-b.c-d.example", "a-b.c-d.example"),
        ("x" * 63 + ".example", "x" * 63 + ".example"),
    ],
)
def test_valid_authorities_are_normalised(raw, clean):
    assert clean_authority(raw) == clean


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "",
        "evil.example.com/path",
        "user@evil.example.com",
        "evil.example.com:0",
        "evil.example.com:65536",
        "evil.example.com:",
        "evil.example.com:80:80",
        "evil example.com",
        "evil.example.com\r\nSet-Cookie: x=1",
        "<script>alert(1)</script>",
        "-leading-hyphen.example",
        "trailing-hyphen-.example",
        "x" * 64 + ".example",  # label over 63
        "a." * 130 + "com",  # name over 253
        "x" * (MAX_AUTHORITY + 1),
        "999.1.1.1",
        "1.2.3",
        "::1",  # IPv6 without brackets
        "[::1",
        "[not-ipv6]:80",
        "bücher.example",  # not ASCII (IDNA is the client's job)
        "a..b",
        ".",
    ],
)
def test_anything_else_is_never_echoed(raw):
    assert clean_authority(raw) is None


def test_a_ten_kilobyte_host_is_refused_quickly():
    assert clean_authority("a" * 10_000) is None


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("https://api.velora.health", "https://api.velora.health"),
        ("HTTPS://API.velora.health:443/", "https://api.velora.health:443"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_base_urls_are_normalised(raw, clean):
    assert parse_base_url(raw) == clean


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("api.velora.health", "http:// or https://"),
        ("ftp://api.velora.health", "http:// or https://"),
        ("https://u:p@api.velora.health", "user information"),
        ("https://api.velora.health/v2", "without a path"),
        ("https://api.velora.health?x", "without a path"),
        ("https://api.velora.health#x", "without a path"),
        ("https://", "valid host"),
        ("https://bad_host.example", "valid host"),
        ("https://[::1", "http(s) URL"),
    ],
)
def test_bad_base_urls_say_why(raw, reason):
    with pytest.raises(ValueError) as info:
        parse_base_url(raw)
    assert reason in str(info.value)
