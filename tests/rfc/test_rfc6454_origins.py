"""RFC 6454 §4-§6.2 origins, as the cache key, CORS and the Referer trimming name them
(cacheproxy/http/origins.py): the scheme's default port is left out, any other kept."""

from __future__ import annotations

import pytest

from cacheproxy.http.cache_key import origin_of as origin_of_from_cache_key
from cacheproxy.http.origins import default_port, origin_of, serialize_origin


@pytest.mark.parametrize(("scheme", "host", "origin"), [
    ("http", "Example.COM", "http://example.com"),
    ("http", "example.com:80", "http://example.com"),
    ("https", "example.com:443", "https://example.com"),
    ("http", "example.com:443", "http://example.com:443"),
    ("https", "example.com:8443", "https://example.com:8443"),
    ("http", "[::1]:80", "http://[::1]"),
    ("http", "[::1]:8080", "http://[::1]:8080"),
    ("http", "[::1]", "http://[::1]"),
])
def test_s4_origin_of_an_authority(scheme: str, host: str, origin: str) -> None:
    assert origin_of(scheme, host) == origin


def test_origin_of_is_still_importable_from_the_cache_key_module() -> None:
    assert origin_of_from_cache_key is origin_of


@pytest.mark.parametrize(("scheme", "port"), [
    ("http", 80), ("https", 443), ("ws", 80), ("wss", 443), ("ftp", 21), ("gopher", None),
])
def test_default_ports_of_the_special_schemes(scheme: str, port: int | None) -> None:
    assert default_port(scheme) == port


def test_s6_2_serialization_leaves_the_default_port_out() -> None:
    assert serialize_origin("https", "a.example", 443) == "https://a.example"
    assert serialize_origin("https", "a.example", None) == "https://a.example"
    assert serialize_origin("http", "[::1]", 8080) == "http://[::1]:8080"
