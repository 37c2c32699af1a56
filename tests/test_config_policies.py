"""The [cors], [referer] and [[routes]] configuration: lists, defaults, merging, and mistakes
that stop the start with the key named."""

import dataclasses
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cacheproxy.config import (
    CacheConfig,
    Config,
    ConfigError,
    CorsConfig,
    OnInvalid,
    RefererConfig,
    RouteConfig,
    load_config,
    parse_list,
)

SHIPPED = Path(__file__).resolve().parent.parent / "config" / "cacheproxy.toml"
MiB = 1024 * 1024


def load(tmp_path: Path, text: str, **kwargs: object) -> Config:
    path = tmp_path / "cacheproxy.toml"
    path.write_text(text, encoding="utf-8")
    kwargs.setdefault("env", {})
    return load_config(path, **kwargs)  # type: ignore[arg-type]


def error(tmp_path: Path, text: str, **kwargs: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, **kwargs)
    return info.value


# --- defaults and the shipped file --------------------------------------------------------------


def test_defaults() -> None:
    cors, referer = Config().cors, Config().referer
    assert cors == CorsConfig(
        allow_origins=(), allow_methods=("GET", "HEAD", "POST"), allow_headers=(),
        expose_headers=(), allow_credentials=False, max_age=600, allow_private_network=False,
        mode="override",
    )  # fmt: skip
    assert referer.protect_paths == ()
    assert referer.valid_referers == ("none", "blocked", "server_names")
    assert referer.on_invalid == OnInvalid("403", 403)
    assert str(referer.on_invalid) == "403"
    assert referer.policy == "strict-origin-when-cross-origin"
    assert referer.policy_override is False
    assert referer.upstream_referer == "keep"
    assert referer.strip_params == ("gsid", "sid", "session", "sessionid", "token", "access_token")
    assert Config().routes == ()


def test_shipped_file_documents_cors_and_referer() -> None:
    document = tomllib.loads(SHIPPED.read_text(encoding="utf-8"))
    for name, cls in (("cors", CorsConfig), ("referer", RefererConfig)):
        assert set(document[name]) == {f.name for f in dataclasses.fields(cls)}
    assert "routes" not in document  # the default is none: shown only as a comment
    loaded = load_config(SHIPPED, env={})
    assert (loaded.cors, loaded.referer, loaded.routes) == (CorsConfig(), RefererConfig(), ())


def test_shipped_routes_example_loads(tmp_path: Path) -> None:
    """The commented-out [[routes]] example, uncommented, is a valid config."""
    text = SHIPPED.read_text(encoding="utf-8")
    example = text[text.index("# [[routes]]\n# #"):]
    lines = [line[2:] if line.startswith("# ") else "" for line in example.splitlines()]
    placeholder = tmp_path / "hotlink.png"
    placeholder.write_bytes(b"\x89PNG\r\n\x1a\n")
    config = load(tmp_path, "\n".join(lines).replace("/srv/hotlink.png", str(placeholder)))
    api, images = config.routes
    assert (api.host, api.path_prefix, api.upstream) == ("api.example.com", "/v2/",
                                                         "http://api-v2:8000")
    assert api.cache.shared is False
    assert api.cors.allow_origins == ("https://app.example.com",)
    assert images.referer.on_invalid.status == 200
    assert images.referer.on_invalid.content_type == "image/png"


# --- list settings ------------------------------------------------------------------------------


def test_lists_from_toml(tmp_path: Path) -> None:
    config = load(tmp_path, """
        [cors]
        allow_origins = ["https://a.example", "https://b.example"]
        allow_headers = "*"
        expose_headers = "X-One, X-Two"
    """)
    assert config.cors.allow_origins == ("https://a.example", "https://b.example")
    assert config.cors.allow_headers == ("*",)
    assert config.cors.expose_headers == ("X-One", "X-Two")


def test_lists_from_env_and_overrides(tmp_path: Path) -> None:
    env = {
        "CACHEPROXY_CORS_ALLOW_ORIGINS": " https://a.example ,, https://b.example ,",
        "CACHEPROXY_REFERER_STRIP_PARAMS": "",
        "CACHEPROXY_REFERER_PROTECT_PATHS": "/images/",
    }
    config = load(tmp_path, "", env=env, overrides={"cors.allow_methods": "GET,PUT"})
    assert config.cors.allow_origins == ("https://a.example", "https://b.example")
    assert config.referer.strip_params == ()
    assert config.referer.protect_paths == ("/images/",)
    assert config.cors.allow_methods == ("GET", "PUT")
    listed = load(tmp_path, "", overrides={"cors.allow_methods": ["DELETE"]})
    assert listed.cors.allow_methods == ("DELETE",)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("cors.allow_origins = [1]", "expected a list of strings"),
        ("cors.allow_origins = 1", "expected a list of strings"),
        ('cors.allow_headers = ["x-a", ""]', "an empty entry"),
        ("referer.strip_params = [[]]", "expected a list of strings"),
    ],
)
def test_list_type_errors_name_the_key(tmp_path: Path, line: str, reason: str) -> None:
    mistake = error(tmp_path, line)
    assert mistake.key == line.split(" = ")[0]
    assert reason in mistake.reason


@given(st.text())
def test_parse_list_of_text(text: str) -> None:
    """Entries are trimmed and never empty, and writing them back reads the same."""
    items = parse_list(text)
    assert all(item and item == item.strip() and "," not in item for item in items)
    assert parse_list(", ".join(items)) == items
    assert parse_list(list(items)) == items


# --- [cors] and [referer] mistakes --------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "key", "reason"),
    [
        ('[cors]\nallow_origins = ["https://a.example/app"]', "cors.allow_origins", "no path"),
        ('[cors]\nallow_origins = ["a.example"]', "cors.allow_origins", "expected an origin"),
        ('[cors]\nallow_origins = ["NULL"]', "cors.allow_origins", "expected an origin"),
        ('[cors]\nallow_origins = ["https://a.example:99999"]', "cors.allow_origins",
         "not a valid origin"),
        ('[cors]\nallow_origins = ["https://a.*.example"]', "cors.allow_origins",
         "scheme://*.domain"),
        ('[cors]\nallow_origins = ["*.example.com"]', "cors.allow_origins", "expected an origin"),
        ('[cors]\nallow_origins = ["https://*"]', "cors.allow_origins", "scheme://*.domain"),
        ('[cors]\nallow_origins = ["~https://(a"]', "cors.allow_origins", "bad regular expr"),
        ('[cors]\nallow_methods = ["GE T"]', "cors.allow_methods", "expected a token"),
        ('[cors]\nallow_methods = ["*", "GET"]', "cors.allow_methods", "must be alone"),
        ('[cors]\nallow_headers = ["*", "x-a"]', "cors.allow_headers", "must be alone"),
        ('[cors]\nallow_headers = ["x:a"]', "cors.allow_headers", "expected a token"),
        ('[cors]\nexpose_headers = ["x a"]', "cors.expose_headers", "expected a token"),
        ("[cors]\nmax_age = -1", "cors.max_age", "must be at least 0"),
        ("[cors]\nmax_age = 1.5", "cors.max_age", "expected an integer"),
        ('[cors]\nmode = "merge"', "cors.mode", "expected one of 'override', 'passthrough'"),
        ('[referer]\nprotect_paths = ["images/"]', "referer.protect_paths", "starting with '/'"),
        ('[referer]\nprotect_paths = ["/a/../images/"]', "referer.protect_paths",
         "write it as '/images/'"),
        ('[referer]\nprotect_paths = ["/img?x"]', "referer.protect_paths", "'?'"),
        ('[referer]\nvalid_referers = ["~(a"]', "referer.valid_referers", "bad regular expr"),
        ('[referer]\nvalid_referers = ["example.com:8080"]', "referer.valid_referers",
         "without a port"),
        ('[referer]\nvalid_referers = ["/galleries/"]', "referer.valid_referers",
         "a host is missing"),
        ('[referer]\nvalid_referers = ["ex*ample.com"]', "referer.valid_referers", "wildcard"),
        ('[referer]\nvalid_referers = ["None"]', "referer.valid_referers", "write 'none'"),
        ('[referer]\non_invalid = "404"', "referer.on_invalid", "403 is the only status"),
        ('[referer]\non_invalid = "ftp://x.example/"', "referer.on_invalid",
         "expected an absolute http:// or https:// URL"),
        ('[referer]\non_invalid = "https://x.example/a b"', "referer.on_invalid", "whitespace"),
        ('[referer]\non_invalid = "no-such-placeholder.png"', "referer.on_invalid",
         "cannot read the file 'no-such-placeholder.png'"),
        ('[referer]\non_invalid = ""', "referer.on_invalid", "expected \"403\""),
        ("[referer]\non_invalid = 403", "referer.on_invalid", "expected \"403\""),
        ('[referer]\npolicy = "no-referrer, bogus"', "referer.policy",
         "unknown referrer policy 'bogus'"),
        ('[referer]\npolicy = "No-Referrer"', "referer.policy", "unknown referrer policy"),
        ('[referer]\nupstream_referer = "drop"', "referer.upstream_referer", "expected one of"),
        ('[referer]\nstrip_params = ["a=b"]', "referer.strip_params", "query parameter name"),
    ],
)
def test_mistakes_name_the_key(tmp_path: Path, toml: str, key: str, reason: str) -> None:
    mistake = error(tmp_path, toml)
    assert mistake.key == key
    assert reason in mistake.reason


def test_star_with_credentials_is_refused(tmp_path: Path) -> None:
    """Fetch §3.2.5: a credentialed response cannot say Access-Control-Allow-Origin: *."""
    mistake = error(tmp_path, '[cors]\nallow_origins = ["*"]\nallow_credentials = true\n')
    assert mistake.key == "cors.allow_origins"
    assert "browsers refuse" in mistake.reason
    assert "list the origins" in mistake.reason
    env = {"CACHEPROXY_CORS_ALLOW_ORIGINS": "*", "CACHEPROXY_CORS_ALLOW_CREDENTIALS": "true"}
    assert error(tmp_path, "", env=env).key == "cors.allow_origins"
    exposed = error(tmp_path, '[cors]\nexpose_headers = "*"\nallow_credentials = true\n')
    assert exposed.key == "cors.expose_headers"
    # Either alone is fine.
    assert load(tmp_path, '[cors]\nallow_origins = ["*"]\nexpose_headers = "*"\n').cors


def test_null_is_an_exact_entry_only(tmp_path: Path) -> None:
    config = load(tmp_path, '[cors]\nallow_origins = ["null", "https://*.example.com"]\n')
    assert config.cors.allow_origins == ("null", "https://*.example.com")


def test_env_errors_name_the_variable(tmp_path: Path) -> None:
    env = {"CACHEPROXY_CORS_ALLOW_ORIGINS": "https://a.example, https://b.example/x"}
    mistake = error(tmp_path, "", env=env)
    assert mistake.key == "CACHEPROXY_CORS_ALLOW_ORIGINS"
    assert "'https://b.example/x'" in mistake.reason
    assert error(tmp_path, "", env={"CACHEPROXY_CORS_MAX_AGE": "soon"}).key == (
        "CACHEPROXY_CORS_MAX_AGE")


def test_protecting_with_no_valid_referer(tmp_path: Path) -> None:
    mistake = error(tmp_path, '[referer]\nprotect_paths = ["/i/"]\nvalid_referers = []\n')
    assert mistake.key == "referer.valid_referers"
    assert load(tmp_path, "[referer]\nvalid_referers = []\n").referer.valid_referers == ()


def test_on_invalid_forms(tmp_path: Path) -> None:
    redirect = load(tmp_path, '[referer]\non_invalid = "https://example.com/no-hotlinking"\n')
    assert redirect.referer.on_invalid == OnInvalid(
        "https://example.com/no-hotlinking", 302, location="https://example.com/no-hotlinking")
    image = tmp_path / "placeholder.gif"
    image.write_bytes(b"GIF89a" + b"\0" * (MiB - 6))  # exactly 1 MiB is allowed
    placeholder = load(tmp_path, f'[referer]\non_invalid = "{image}"\n').referer.on_invalid
    assert (placeholder.status, placeholder.content_type) == (200, "image/gif")
    assert placeholder.body == image.read_bytes()
    assert "body" not in repr(placeholder)  # a megabyte in a log line helps nobody
    image.write_bytes(b"x" * (MiB + 1))
    assert "over 1 MiB" in error(tmp_path, f'[referer]\non_invalid = "{image}"\n').reason
    directory = error(tmp_path, f'[referer]\non_invalid = "{tmp_path}"\n')
    assert (directory.key, "cannot read the file" in directory.reason) == (
        "referer.on_invalid", True)
    unknown = tmp_path / "placeholder.zzunknown"
    unknown.write_bytes(b"?")
    assert load(tmp_path, f'[referer]\non_invalid = "{unknown}"\n').referer.on_invalid \
        .content_type == "application/octet-stream"


def test_policy_list_and_empty(tmp_path: Path) -> None:
    """W3C Referrer Policy §4.1: a comma-separated list, the last known token winning."""
    config = load(tmp_path, '[referer]\npolicy = "no-referrer, strict-origin-when-cross-origin"\n')
    assert config.referer.policy == "no-referrer, strict-origin-when-cross-origin"
    assert load(tmp_path, '[referer]\npolicy = ""\n').referer.policy == ""


# --- [[routes]] ---------------------------------------------------------------------------------


def test_routes_parse_and_merge(tmp_path: Path) -> None:
    config = load(tmp_path, """
        [cache]
        heuristic_fraction = 0.2
        [cors]
        allow_origins = ["https://app.example"]
        max_age = 60
        [[routes]]
        host = "API.Example.com"
        path_prefix = "/v1/"
        upstream = "http://api:8000"
        [routes.cache]
        shared = false
        [routes.cors]
        allow_credentials = true
        [[routes]]
        upstream = "https://static.example"
        path_prefix = "/static/"
    """, env={"CACHEPROXY_CORS_MAX_AGE": "120"})
    api, static = config.routes
    assert isinstance(api, RouteConfig)
    assert (api.host, api.path_prefix, api.upstream) == ("api.example.com", "/v1/",
                                                         "http://api:8000")
    # Key-level merge: the route's keys over the top-level section as finally loaded.
    assert api.cache == dataclasses.replace(config.cache, shared=False)
    assert api.cache.heuristic_fraction == 0.2
    assert api.cors == dataclasses.replace(config.cors, allow_credentials=True)
    assert api.cors.max_age == 120  # the environment set the top level; the route inherits it
    assert api.referer == config.referer
    assert (static.host, static.path_prefix) == ("", "/static/")
    assert (static.cache, static.cors) == (config.cache, config.cors)


def test_merged_route_is_validated_as_a_whole(tmp_path: Path) -> None:
    text = """
        [cors]
        allow_origins = ["*"]
        [[routes]]
        path_prefix = "/a/"
        upstream = "http://a"
        [[routes]]
        path_prefix = "/b/"
        upstream = "http://b"
        [routes.cors]
        allow_credentials = true
    """
    mistake = error(tmp_path, text)
    assert mistake.key == "routes[1].cors.allow_origins"
    assert "browsers refuse" in mistake.reason
    big = error(tmp_path, """
        [cache]
        max_bytes = "1MiB"
        max_object_bytes = "1MiB"
        [[routes]]
        upstream = "http://a"
        [routes.cache]
        max_object_bytes = "2MiB"
    """)
    assert big.key == "routes[0].cache.max_object_bytes"


@pytest.mark.parametrize(
    "key", ["store", "redis_url", "redis_prefix", "redis_timeout", "redis_retry_interval",
            "max_bytes", "memory_layer_bytes", "memory_layer_ttl"])  # fmt: skip
def test_store_wide_cache_keys_are_not_per_route(tmp_path: Path, key: str) -> None:
    value = getattr(CacheConfig(), key)
    toml_value = f'"{value}"' if isinstance(value, str) else repr(value)
    mistake = error(tmp_path, f"""
        [[routes]]
        path_prefix = "/a/"
        upstream = "http://a"
        [[routes]]
        upstream = "http://b"
        [routes.cache]
        {key} = {toml_value}
    """)
    assert mistake.key == f"routes[1].cache.{key}"
    assert "every route" in mistake.reason


@pytest.mark.parametrize(
    ("route", "key", "reason"),
    [
        ('host = "a.example"', "routes[0].upstream", "missing"),
        ('upstream = ""', "routes[0].upstream", "a route needs its origin"),
        ('upstream = "ftp://a"', "routes[0].upstream", "expected an absolute http://"),
        ('upstream = "a.example"', "routes[0].upstream", "expected an absolute http://"),
        ("upstream = 8080", "routes[0].upstream", "expected a string"),
        ('upstream = "http://a"\nhost = "a.example:8080"', "routes[0].host", "without a port"),
        ('upstream = "http://a"\nhost = "a.*.example"', "routes[0].host", "wildcard"),
        ('upstream = "http://a"\nhost = "a b"', "routes[0].host", "expected a host name"),
        ('upstream = "http://a"\npath_prefix = "api/"', "routes[0].path_prefix",
         "starting with '/'"),
        ('upstream = "http://a"\npath_prefix = "//api/"', "routes[0].path_prefix",
         "write it as '/api/'"),
        ('upstream = "http://a"\npathprefix = "/a/"', "routes[0].pathprefix",
         "unknown key; did you mean routes[0].path_prefix?"),
        ('upstream = "http://a"\ncors = "on"', "routes[0].cors", "expected a [routes[0].cors]"),
        ('upstream = "http://a"\n[routes.cors]\nallow_origin = "*"', "routes[0].cors.allow_origin",
         "unknown key; did you mean routes[0].cors.allow_origins?"),
        ('upstream = "http://a"\n[routes.referer]\non_invalid = "410"',
         "routes[0].referer.on_invalid", "403 is the only status"),
        ('upstream = "http://a"\n[routes.cors]\nallow_origins = ["https://x/y"]',
         "routes[0].cors.allow_origins", "no path"),
    ],
)
def test_route_mistakes_name_the_key(tmp_path: Path, route: str, key: str, reason: str) -> None:
    mistake = error(tmp_path, f"[[routes]]\n{route}\n")
    assert mistake.key == key
    assert reason in mistake.reason


def test_routes_must_be_an_array_of_tables(tmp_path: Path) -> None:
    assert error(tmp_path, '[routes]\nupstream = "http://a"\n').key == "routes"
    assert error(tmp_path, 'routes = ["http://a"]\n').key == "routes[0]"
    assert error(tmp_path, "[route]\n").reason == "unknown section; did you mean routes?"


def test_routes_cannot_come_from_the_environment(tmp_path: Path) -> None:
    mistake = error(tmp_path, "", env={"CACHEPROXY_ROUTES_0_UPSTREAM": "http://a"})
    assert mistake.key == "CACHEPROXY_ROUTES_0_UPSTREAM"
    assert "[[routes]]" in mistake.reason


def route(host: str, prefix: str) -> str:
    return f'[[routes]]\nhost = "{host}"\npath_prefix = "{prefix}"\nupstream = "http://o"\n'


@pytest.mark.parametrize(
    ("routes", "shadowed", "by"),
    [
        ([("", "/"), ("a.example", "/x/")], 1, 0),  # a catch-all must come last
        ([("a.example", "/"), ("b.example", "/"), ("", "/"), ("", "/z/")], 3, 2),
        ([("a.example", "/api/"), ("A.EXAMPLE", "/api/v2/")], 1, 0),
        ([("*.example.com", "/"), ("api.example.com", "/x/")], 1, 0),
        ([("*.example.com", "/"), ("*.api.example.com", "/")], 1, 0),
        ([("", "/api/"), ("a.example", "/api/v1")], 1, 0),
        ([("a.example", "/x/"), ("a.example", "/x/")], 1, 0),
        ([("a.example", "/p"), ("b.example", "/"), ("a.example", "/p/q")], 2, 0),
    ],
)
def test_route_that_can_never_match(
    tmp_path: Path, routes: list[tuple[str, str]], shadowed: int, by: int
) -> None:
    mistake = error(tmp_path, "".join(route(h, p) for h, p in routes))
    assert mistake.key == f"routes[{shadowed}]"
    assert mistake.reason.startswith(f"can never match: routes[{by}] comes first")
    if routes[by] == ("", "/"):
        assert "catch-all" in mistake.reason


@pytest.mark.parametrize(
    "routes",
    [
        [("a.example", "/x/"), ("", "/")],  # catch-all last
        [("api.example.com", "/"), ("*.example.com", "/")],  # narrower first
        [("a.example", "/api/v2/"), ("a.example", "/api/")],
        [("*.example.com", "/"), ("example.com", "/")],  # "*." does not match the apex
        [("", "/api/"), ("a.example", "/")],  # a.example/other still reaches routes[1]
        [("a.example", "/x/"), ("b.example", "/x/")],
    ],
)
def test_routes_that_all_can_match(tmp_path: Path, routes: list[tuple[str, str]]) -> None:
    config = load(tmp_path, "".join(route(h, p) for h, p in routes))
    assert [(r.host, r.path_prefix) for r in config.routes] == [
        (h.lower(), p) for h, p in routes]


def test_an_empty_or_glob_redis_prefix_is_refused(tmp_path) -> None:
    """clear and prefix purges act on the keys under it: "" would reach other data."""
    from cacheproxy.config import ConfigError, load_config

    for bad in ("", "cache*"):
        path = tmp_path / "c.toml"
        path.write_text(f'[cache]\nredis_prefix = "{bad}"\n')
        try:
            load_config(path, env={})
        except ConfigError as exc:
            assert exc.key == "cache.redis_prefix"
        else:
            raise AssertionError(f"{bad!r} was accepted")
