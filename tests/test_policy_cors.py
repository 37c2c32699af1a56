"""CORS from the server's side: the Fetch standard, §3.2 "CORS protocol"."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cacheproxy.config import CorsConfig
from cacheproxy.config.entries import WildcardOrigin, parse_origin_entry
from cacheproxy.http.origins import Origin, parse_origin
from cacheproxy.policies.cors import (
    CorsPolicy,
    Denial,
    Grant,
    actual_fields,
    allows_origin,
    is_preflight,
    merge_vary,
    preflight,
    strip_upstream_cors,
    varies_by_origin,
    with_cors,
    with_vary,
)


def policy(**settings: object) -> CorsPolicy:
    return CorsPolicy.from_config(CorsConfig(**settings))  # type: ignore[arg-type]


APP = policy(
    allow_origins=("https://app.example", "https://*.example.org", r"~http://localhost:\d+"),
    allow_methods=("GET", "PUT"),
    allow_headers=("X-Token", "Content-Type"),
    expose_headers=("X-Request-Id",),
    allow_credentials=True,
    max_age=300,
)
ANY = policy(allow_origins=("*",))


# --- origins (Fetch §3.2.1 and HTML's origin tuple) ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "origin"),
    [
        ("https://app.example", Origin("https", "app.example", None)),
        ("HTTPS://App.Example:443", Origin("https", "app.example", None)),  # default port
        ("http://app.example:80", Origin("http", "app.example", None)),
        ("http://app.example:443", Origin("http", "app.example", 443)),
        ("http://127.0.0.1:8080", Origin("http", "127.0.0.1", 8080)),
        ("http://[::1]:3000", Origin("http", "::1", 3000)),
        ("chrome-extension://abcdef", Origin("chrome-extension", "abcdef", None)),
    ],
)
def test_parse_origin(text: str, origin: Origin) -> None:
    assert parse_origin(text) == origin
    assert parse_origin(origin.serialize()) == origin


@pytest.mark.parametrize(
    "text",
    ["null", "", "app.example", "https://app.example/", "https://app.example/path",
     "https://user@app.example", "https://app.example:99999", "https://app.example:",
     "https://*.example", "https://a b", "https://app.example, https://b.example"],
)  # fmt: skip
def test_not_an_origin(text: str) -> None:
    assert parse_origin(text) is None


def test_origin_entries() -> None:
    assert parse_origin_entry("*") == "*"
    assert parse_origin_entry("null") == "null"
    assert parse_origin_entry("https://*.Example.com:8443") == WildcardOrigin(
        "https", "example.com", 8443)
    assert parse_origin_entry("https://*.example.com:443") == WildcardOrigin(
        "https", "example.com", None)
    assert isinstance(parse_origin_entry("~https://.*"), re.Pattern)
    with pytest.raises(ValueError, match=re.escape("scheme://*.domain")):
        parse_origin_entry("https://*example.com")


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://app.example", True),
        ("https://APP.example:443", True),  # the same origin, per Fetch
        ("http://app.example", False),  # another scheme is another origin
        ("https://app.example:8443", False),
        ("https://evil-app.example", False),
        ("https://a.example.org", True),
        ("https://a.b.example.org", True),
        ("https://example.org", False),  # "*." means subdomains only
        ("http://a.example.org", False),
        ("https://a.example.org:444", False),
        ("https://evilexample.org", False),
        ("http://localhost:3000", True),
        ("http://localhost:3000.evil.example", False),  # a regex must match the whole origin
        ("http://localhost", False),
        ("null", False),
        ("", False),
        ("https://app.example/", False),
    ],
)
def test_allows_origin(origin: str, allowed: bool) -> None:
    assert allows_origin(APP, origin) is allowed


def test_regex_matches_the_whole_origin() -> None:
    """An unanchored "~https://app\\.example" must not let "https://app.example.evil.net" in."""
    anchored = policy(allow_origins=(r"~https://app\.example", r"~https://[a-z]+\.test"))
    assert allows_origin(anchored, "https://app.example")
    assert allows_origin(anchored, "HTTPS://Shop.test:443")  # matched in the normal form
    assert not allows_origin(anchored, "https://app.example.evil.net")
    assert not allows_origin(anchored, "https://shop.test:8443")


def test_null_origin_only_by_name() -> None:
    """"null" (sandboxed iframes, file: pages, cross-origin redirects) is never matched by
    "*", a wildcard or a regex: only an exact "null" entry grants it."""
    assert not allows_origin(ANY, "null")
    assert not allows_origin(policy(allow_origins=("~.*",)), "null")
    named = policy(allow_origins=("null",))
    assert allows_origin(named, "null")
    assert actual_fields(named, "null") == [("Access-Control-Allow-Origin", "null")]


origin_entries = st.one_of(
    st.just("*"),
    st.builds("https://*.{}".format, st.from_regex(r"[a-z]{1,8}\.(com|org)", fullmatch=True)),
    st.builds("~{}".format, st.sampled_from([".*", "n.*", "null", "[a-z]+", ".+l{2}", "(?i)NULL"])),
    st.from_regex(r"https?://[a-z]{1,8}\.example(:[0-9]{2,4})?", fullmatch=True),
)


@given(st.lists(origin_entries, min_size=1), st.booleans())
def test_wildcards_never_grant_null(entries: list[str], credentials: bool) -> None:
    """Opaque origins (HTML) serialize as "null"; no pattern of any kind may grant it."""
    if credentials and "*" in entries:
        entries.remove("*")
    if not entries:
        return
    compiled = policy(allow_origins=tuple(entries), allow_credentials=credentials)
    assert not allows_origin(compiled, "null")
    assert actual_fields(compiled, "null") == []
    assert isinstance(preflight(compiled, "null", "GET"), Denial)


@given(st.text())
def test_any_origin_text_is_an_answer(text: str) -> None:
    assert allows_origin(APP, text) in (True, False)
    assert isinstance(preflight(APP, text, "PUT", text, True), Grant | Denial)


# --- preflight (Fetch §3.2.2 request, §3.2.3 response) ------------------------------------------


def test_is_preflight() -> None:
    assert is_preflight("OPTIONS", "https://app.example", "PUT")
    assert not is_preflight("OPTIONS", "https://app.example", None)  # a plain OPTIONS
    assert not is_preflight("OPTIONS", None, "PUT")
    assert not is_preflight("GET", "https://app.example", "PUT")


def test_preflight_grant() -> None:
    grant = preflight(APP, "https://app.example", "PUT", "x-token, content-type")
    assert grant == Grant((
        ("Access-Control-Allow-Origin", "https://app.example"),
        ("Access-Control-Allow-Credentials", "true"),
        ("Access-Control-Allow-Methods", "GET, PUT"),
        ("Access-Control-Allow-Headers", "X-Token, Content-Type"),
        ("Access-Control-Max-Age", "300"),
        ("Vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
    ))


def test_preflight_with_star_policy() -> None:
    """Without credentials "*" is the grant; the requested headers are named back."""
    star = policy(allow_origins=("*",), allow_headers=("*",), allow_methods=("*",))
    grant = preflight(star, "https://any.example", "PATCH", "x-a,X-B")
    assert isinstance(grant, Grant)
    fields = dict(grant.fields)
    assert fields["Access-Control-Allow-Origin"] == "*"
    assert fields["Access-Control-Allow-Methods"] == "PATCH"
    assert fields["Access-Control-Allow-Headers"] == "x-a, x-b"
    assert "Access-Control-Allow-Credentials" not in fields


def test_preflight_mirrors_star_headers_with_credentials() -> None:
    """Fetch §3.2.3: with credentials a literal "*" in Allow-Headers is a header named "*",
    so "*" is answered with the names asked for."""
    mirror = policy(allow_origins=("https://app.example",), allow_headers=("*",),
                    allow_credentials=True)
    grant = preflight(mirror, "https://app.example", "GET", "authorization, x-custom")
    assert isinstance(grant, Grant)
    fields = dict(grant.fields)
    assert fields["Access-Control-Allow-Headers"] == "authorization, x-custom"
    assert fields["Access-Control-Allow-Origin"] == "https://app.example"
    assert fields["Access-Control-Allow-Credentials"] == "true"
    none_asked = preflight(mirror, "https://app.example", "GET")
    assert isinstance(none_asked, Grant)
    assert "Access-Control-Allow-Headers" not in dict(none_asked.fields)


@pytest.mark.parametrize(
    ("origin", "method", "headers", "reason", "detail"),
    [
        ("https://evil.example", "PUT", None, "cors-origin", "https://evil.example"),
        ("https://app.example", "DELETE", None, "cors-method", "DELETE"),
        ("https://app.example", "put", None, "cors-method", "put"),  # methods are case-sensitive
        ("https://app.example", "GE T", None, "cors-method", "GE T"),
        ("https://app.example", "PUT", "x-token, x-other, x-more", "cors-header",
         "x-other, x-more"),
        ("https://app.example", "PUT", "x token", "cors-header", "x token"),
    ],
)
def test_preflight_denials(
    origin: str, method: str, headers: str | None, reason: str, detail: str
) -> None:
    assert preflight(APP, origin, method, headers) == Denial(reason, detail)


def test_safelisted_methods_pass() -> None:
    """Fetch §2.2.1: GET, HEAD and POST are CORS-safelisted; a browser uses them without
    asking, so refusing them in a preflight would only break pages."""
    only_put = policy(allow_origins=("https://app.example",), allow_methods=("PUT",))
    assert isinstance(preflight(only_put, "https://app.example", "POST", "x"), Denial)  # header
    assert isinstance(preflight(only_put, "https://app.example", "POST"), Grant)
    assert isinstance(preflight(only_put, "https://app.example", "DELETE"), Denial)


def test_private_network_access() -> None:
    """Private Network Access: Access-Control-Request-Private-Network: true needs
    Access-Control-Allow-Private-Network: true, which only allow_private_network gives."""
    assert preflight(APP, "https://app.example", "GET", None, True) == Denial(
        "cors-private-network", "https://app.example")
    pna = policy(allow_origins=("https://app.example",), allow_private_network=True)
    grant = preflight(pna, "https://app.example", "GET", None, True)
    assert isinstance(grant, Grant)
    fields = dict(grant.fields)
    assert fields["Access-Control-Allow-Private-Network"] == "true"
    assert fields["Vary"].endswith(", Access-Control-Request-Private-Network")
    plain = preflight(pna, "https://app.example", "GET", None, False)
    assert isinstance(plain, Grant)
    assert "Access-Control-Allow-Private-Network" not in dict(plain.fields)


# --- the response to an actual request (Fetch §3.2.3) -------------------------------------------


def test_actual_fields() -> None:
    assert actual_fields(APP, "https://a.example.org") == [
        ("Access-Control-Allow-Origin", "https://a.example.org"),
        ("Access-Control-Allow-Credentials", "true"),
        ("Access-Control-Expose-Headers", "X-Request-Id"),
    ]
    assert actual_fields(APP, "https://evil.example") == []
    assert actual_fields(APP, None) == []
    assert actual_fields(ANY, "https://x.example") == [("Access-Control-Allow-Origin", "*")]
    # Fetch "CORS protocol and HTTP caches": a static "*" goes on non-CORS responses too.
    assert actual_fields(ANY, None) == [("Access-Control-Allow-Origin", "*")]
    assert actual_fields(ANY, "null") == []
    assert actual_fields(CorsPolicy(), "https://x.example") == []


def test_disabled_policy_touches_nothing() -> None:
    """No allow_origins: the proxy does no CORS, whatever mode says."""
    disabled = policy(mode="override")
    assert not disabled.enabled
    upstream = [("Access-Control-Allow-Origin", "*"), ("Vary", "Accept")]
    assert with_cors(disabled, "https://x.example", upstream) == upstream


def test_override_replaces_upstream_fields() -> None:
    upstream = [
        ("Content-Type", "text/html"),
        ("Access-Control-Allow-Origin", "*"),
        ("access-control-allow-credentials", "true"),
        ("Access-Control-Expose-Headers", "X-Secret"),
        ("Vary", "Accept-Encoding"),
    ]
    assert with_cors(APP, "https://app.example", upstream) == [
        ("Content-Type", "text/html"),
        ("Vary", "Accept-Encoding, Origin"),
        ("Access-Control-Allow-Origin", "https://app.example"),
        ("Access-Control-Allow-Credentials", "true"),
        ("Access-Control-Expose-Headers", "X-Request-Id"),
    ]
    # A refused origin gets no grant, and the upstream's is gone too.
    assert with_cors(APP, "https://evil.example", upstream) == [
        ("Content-Type", "text/html"), ("Vary", "Accept-Encoding, Origin")]


def test_passthrough_leaves_upstream_fields() -> None:
    through = policy(allow_origins=("https://app.example",), mode="passthrough")
    upstream = [("Access-Control-Allow-Origin", "https://other.example"), ("Vary", "Origin")]
    assert with_cors(through, "https://app.example", upstream) == upstream
    bare = [("Content-Type", "image/png")]
    assert with_cors(through, "https://app.example", bare) == [
        ("Content-Type", "image/png"),
        ("Access-Control-Allow-Origin", "https://app.example"),
        ("Vary", "Origin"),
    ]


def test_vary_origin_whenever_the_grant_depends_on_it() -> None:
    """Fetch §3.2 "CORS protocol and HTTP caches": a response whose CORS fields depend
    on Origin says Vary: Origin even when it grants nothing, or a cache would hand the
    ungranted copy to an allowed origin."""
    assert varies_by_origin(APP, "https://app.example")
    assert varies_by_origin(APP, "https://evil.example")
    assert varies_by_origin(APP, None)
    assert with_cors(APP, None, []) == [("Vary", "Origin")]
    # "*" is one grant for every origin but "null", which it refuses: that difference is a
    # dependence on Origin too, or a cache could replay the "*" answer to a null origin.
    assert varies_by_origin(ANY, "https://x.example")
    assert varies_by_origin(ANY, None)
    assert with_cors(ANY, "https://x.example", []) == [("Access-Control-Allow-Origin", "*"),
                                                        ("Vary", "Origin")]
    assert with_cors(ANY, "null", []) == [("Vary", "Origin")]
    # Granting "null" as well, "*" is the same for all: no Vary.
    every = CorsPolicy(enabled=True, any_origin=True, null_origin=True)
    assert not varies_by_origin(every, "https://x.example")
    assert not varies_by_origin(every, "null")
    assert not varies_by_origin(CorsPolicy(), "https://x.example")


@pytest.mark.parametrize(
    ("values", "merged"),
    [
        ([], "Origin"),
        (["Accept-Encoding"], "Accept-Encoding, Origin"),
        (["accept-encoding, origin"], "accept-encoding, origin"),
        (["Accept-Encoding", "ORIGIN"], "Accept-Encoding, ORIGIN"),
        (["*"], "*"),
        (["Accept, *"], "*"),
        ([" , Accept ,"], "Accept, Origin"),
    ],
)
def test_merge_vary(values: list[str], merged: str) -> None:
    """RFC 9110 §12.5.5: Vary is a list of field names, or "*" alone."""
    assert merge_vary(values, "Origin") == merged


@given(st.lists(st.from_regex(r"[A-Za-z-]{0,12}(, ?[A-Za-z*-]{1,12})*", fullmatch=True)))
def test_merge_vary_names_origin_once(values: list[str]) -> None:
    merged = merge_vary(values)
    members = [m.strip().lower() for m in merged.split(",")]
    assert merged == "*" or members.count("origin") == 1
    assert merge_vary([merged]) == merged  # idempotent


def test_with_vary_keeps_one_field_in_place() -> None:
    pairs = [("Vary", "Accept"), ("ETag", '"x"'), ("vary", "Accept-Language")]
    assert with_vary(pairs) == [("Vary", "Accept, Accept-Language, Origin"), ("ETag", '"x"')]


def test_strip_upstream_cors() -> None:
    pairs = [(name, "x") for name in (
        "Access-Control-Allow-Origin", "Access-Control-Allow-Methods",
        "Access-Control-Allow-Headers", "Access-Control-Max-Age",
        "Access-Control-Allow-Private-Network", "ACCESS-CONTROL-EXPOSE-HEADERS",
        "Access-Control-Allow-Credentials", "Access-Control-Request-Method", "Vary")]
    assert strip_upstream_cors(pairs) == [
        ("Access-Control-Request-Method", "x"), ("Vary", "x")]
