"""Route matching: Host (RFC 9110 §7.2) and path prefix (RFC 3986 §6.2.2 normal form);
first match wins, the default route takes the rest."""

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cacheproxy.config import Config, load_config
from cacheproxy.config.entries import (
    host_matches,
    host_pattern_covers,
    normalize_path,
    parse_host_pattern,
)
from cacheproxy.policies import request_host
from cacheproxy.policies.cors import CorsPolicy, allows_origin
from cacheproxy.policies.referer import RefererPolicy, referer_valid
from cacheproxy.policies.routes import RouteTable

CONFIG = """
[proxy]
upstream = "http://default:8000"
[cors]
allow_origins = ["https://app.example"]
[referer]
protect_paths = ["/images/"]

[[routes]]
host = "api.example.com"
path_prefix = "/v2/"
upstream = "http://api-v2:8000"
[routes.cors]
allow_origins = ["https://*.example.com"]

[[routes]]
host = "api.example.com"
upstream = "http://api:8000"
[routes.cache]
shared = false

[[routes]]
host = "*.static.example"
upstream = "https://static:8443"
[routes.referer]
valid_referers = ["server_names"]

[[routes]]
path_prefix = "/legacy/"
upstream = "http://legacy"
"""


@pytest.fixture
def table(tmp_path: Path) -> RouteTable:
    path = tmp_path / "cacheproxy.toml"
    path.write_text(CONFIG, encoding="utf-8")
    return RouteTable.from_config(load_config(path, env={}))


@pytest.mark.parametrize(
    ("host", "path", "name", "upstream"),
    [
        ("api.example.com", "/v2/users", "routes[0]", "http://api-v2:8000"),
        ("API.Example.COM:443", "/v2/users?page=2", "routes[0]", "http://api-v2:8000"),
        ("api.example.com.", "/v2/", "routes[0]", "http://api-v2:8000"),
        ("api.example.com", "/v1/users", "routes[1]", "http://api:8000"),
        ("api.example.com", "/v2", "routes[1]", "http://api:8000"),  # "/v2/" is the prefix
        ("api.example.com", "/x/../v2/users", "routes[0]", "http://api-v2:8000"),
        ("api.example.com", "//v2/users", "routes[0]", "http://api-v2:8000"),
        ("cdn.static.example", "/a.css", "routes[2]", "https://static:8443"),
        ("a.b.static.example:8080", "/a.css", "routes[2]", "https://static:8443"),
        ("static.example", "/a.css", "default", "http://default:8000"),  # "*." not the apex
        ("other.example", "/legacy/page", "routes[3]", "http://legacy"),
        ("api.example.com", "/legacy/page", "routes[1]", "http://api:8000"),  # first match wins
        ("other.example", "/legacy", "default", "http://default:8000"),
        ("other.example", "/", "default", "http://default:8000"),
        ("[::1]:8080", "/", "default", "http://default:8000"),
        ("", "/", "default", "http://default:8000"),
    ],
)
def test_match(table: RouteTable, host: str, path: str, name: str, upstream: str) -> None:
    route = table.match(host, path)
    assert (route.name, route.upstream) == (name, upstream)


def test_routes_carry_their_merged_rules(table: RouteTable) -> None:
    v2, api, static, legacy = table.routes
    assert (v2.index, api.index, table.default.index) == (0, 1, None)
    assert allows_origin(v2.cors, "https://app.example.com")
    assert not allows_origin(v2.cors, "https://app.example")
    assert allows_origin(api.cors, "https://app.example")  # the top-level [cors]
    assert api.cache.shared is False and v2.cache.shared is True
    assert static.referer.protect_paths == ("/images/",)  # inherited key
    assert not static.referer.allow_none  # the route's own valid_referers
    assert referer_valid(static.referer, "https://x.static.example/", "y.example", static.host)
    assert legacy.referer == table.default.referer


def test_default_route(table: RouteTable) -> None:
    default = table.default
    assert (default.name, default.host, default.path_prefix) == ("default", "", "/")
    assert default.upstream == "http://default:8000"
    assert default.cors == CorsPolicy.from_config(load_config(None, env={}, overrides={
        "cors.allow_origins": "https://app.example"}).cors)


def test_no_routes() -> None:
    table = RouteTable.from_config(Config())
    assert table.routes == ()
    route = table.match("anything.example", "/any")
    assert route is table.default
    assert route.upstream == ""  # the demo origin's case, resolved by the server
    assert route.cors == CorsPolicy()  # the default policy: disabled
    assert not route.cors.enabled
    assert route.referer == RefererPolicy.from_config(Config().referer)


# --- host patterns ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "host"),
    [
        ("Example.COM", "example.com"),
        ("example.com:8080", "example.com"),
        ("example.com.", "example.com"),
        ("[::1]:8080", "::1"),
        ("[::1]", "::1"),
        ("user@example.com:1", "example.com"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("", ""),
    ],
)
def test_request_host(value: str, host: str) -> None:
    assert request_host(value) == host


def test_parse_host_pattern() -> None:
    assert parse_host_pattern("") == ""
    assert parse_host_pattern("*.Example.com") == "*.example.com"
    assert parse_host_pattern("bücher.example") == "xn--bcher-kva.example"
    assert parse_host_pattern("[::1]") == "::1"
    assert parse_host_pattern("my_app") == "my_app"  # docker service names
    for bad in ("example.com:80", "*", "a.*.com", "*example.com", "a b", "-a.com", "a..b"):
        with pytest.raises(ValueError):
            parse_host_pattern(bad)


def test_host_matches() -> None:
    assert host_matches("", "anything")
    assert host_matches("a.example", "a.example")
    assert not host_matches("a.example", "b.a.example")
    assert host_matches("*.a.example", "b.a.example")
    assert host_matches("*.a.example", "c.b.a.example")
    assert not host_matches("*.a.example", "a.example")
    assert not host_matches("*.a.example", "ba.example")


hosts = st.from_regex(r"[a-c]{1,2}(\.[a-c]{1,2}){0,3}", fullmatch=True)
patterns = st.one_of(st.just(""), hosts, hosts.map(lambda h: "*." + h))


@given(patterns, patterns, hosts)
def test_covers_means_every_match_matches(wider: str, narrower: str, host: str) -> None:
    """The shadowing check's premise: if `wider` covers `narrower`, no host reaches a route
    with `narrower` past a route with `wider`."""
    if host_pattern_covers(wider, narrower) and host_matches(narrower, host):
        assert host_matches(wider, host)


@given(patterns, patterns)
def test_covers_is_exact_for_some_host(wider: str, narrower: str) -> None:
    """And it is not over-eager: when it says no, some host matches `narrower` only."""
    if host_pattern_covers(wider, narrower):
        return
    witness = "zz." + narrower[2:] if narrower.startswith("*.") else narrower or "zz.zz"
    assert host_matches(narrower, witness)
    assert not host_matches(wider, witness) or narrower == ""


# --- the path form (RFC 3986) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("/a/b/c/./../../g", "/a/g"),  # RFC 3986 §5.2.4's example
        ("/mid/content=5/../6", "/mid/6"),
        ("/../a", "/a"),
        ("/a/..", "/"),
        ("/a/.", "/a/"),
        ("", "/"),
        ("//a///b", "/a/b"),
        ("/%7euser/%41%2f%2e", "/~user/A/"),  # every escape decoded once, as nginx does
        ("/images%2Fa.png", "/images/a.png"),
        ("/l%C3%A4den/", "/läden/"),
        ("/%252F", "/%2F"),  # once only
        ("/a?x=/../b#f", "/a"),
    ],
)
def test_normalize_path(path: str, normal: str) -> None:
    assert normalize_path(path) == normal


@given(st.text(alphabet="/.%2eEfF7a~?", max_size=20))
def test_normalize_path_is_idempotent(path: str) -> None:
    normal = normalize_path(path)
    assert normal.startswith("/")
    assert normalize_path(normal) == normal
    assert "/../" not in normal + "/" and "//" not in normal
