"""The Referer policy: hotlink protection with nginx's valid_referers semantics
(ngx_http_referer_module), and leak protection after the W3C Referrer Policy."""

import re
from pathlib import Path
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cacheproxy.config import OnInvalid, RefererConfig, parse_on_invalid
from cacheproxy.config.entries import HostRule, parse_referrer_policy, parse_valid_referer
from cacheproxy.policies.referer import (
    RefererDenial,
    RefererPolicy,
    denial,
    forwarded_referer,
    is_protected,
    referer_valid,
    refusal,
    response_policy_fields,
    with_referrer_policy,
)


def policy(**settings: object) -> RefererPolicy:
    return RefererPolicy.from_config(RefererConfig(**settings))  # type: ignore[arg-type]


NGINX_EXAMPLE = policy(  # the example of nginx's documentation
    protect_paths=("/images/",),
    valid_referers=("none", "blocked", "server_names", "*.example.com", "example.*",
                    "www.example.org/galleries/", r"~\.google\."),
)  # fmt: skip


# --- valid_referers entries ---------------------------------------------------------------------


def test_parse_valid_referer() -> None:
    assert parse_valid_referer("none") == "none"
    assert parse_valid_referer("Example.COM") == HostRule("example.com")
    assert parse_valid_referer("*.example.com") == HostRule("*.example.com")
    assert parse_valid_referer("www.example.*") == HostRule("www.example.*")
    assert parse_valid_referer("example.com/galleries/") == HostRule("example.com", "/galleries/")
    pattern = parse_valid_referer(r"~\.google\.")
    assert isinstance(pattern, re.Pattern)
    assert pattern.flags & re.IGNORECASE  # nginx compiles them caseless
    for bad in ("~", "~(", "a.*.com", "*example.com", "example.com:80", "/x/", "None"):
        with pytest.raises(ValueError):
            parse_valid_referer(bad)


# --- is the Referer valid? (nginx valid_referers) -----------------------------------------------


@pytest.mark.parametrize(
    ("referer", "valid"),
    [
        (None, True),  # none
        ("", True),  # blocked: present, not http(s)
        ("XXXXXXXXXXXXXXXXXXXXX", True),  # blocked: cut by a firewall
        ("android-app://com.example/", True),  # blocked
        ("http://cdn.example.com/page", True),  # *.example.com
        ("https://a.b.example.com:8443/", True),  # the port is ignored
        ("https://example.com/", True),  # by example.*: "*.example.com" is subdomains only
        ("https://example.net/x", True),  # example.*
        ("https://example/", False),  # example.* needs something after the dot
        ("http://www.example.org/galleries/2024/1.html", True),  # host + path prefix
        ("http://www.example.org/other/", False),
        ("http://WWW.EXAMPLE.ORG/galleries/", True),  # hosts compare caseless
        ("http://www.example.org/Galleries/", False),  # paths do not
        ("https://www.google.de/search?q=x", True),  # ~\.google\.
        ("https://images.GOOGLE.com/", True),  # caseless regex
        ("HTTPS://evil.example/", False),
        ("https://evil.example/?u=www.google.com", True),  # nginx searches the whole rest
        ("https://proxy.test/page", True),  # server_names: the Host asked for
        ("https://user@proxy.test/page", True),
        ("https://proxy.test.evil.example/", False),
    ],
)
def test_referer_valid(referer: str | None, valid: bool) -> None:
    assert referer_valid(NGINX_EXAMPLE, referer, "Proxy.Test:8080") is valid


def test_without_none_and_blocked() -> None:
    strict = policy(protect_paths=("/",), valid_referers=("site.example", "*.cdn.example"))
    assert referer_valid(strict, "https://a.cdn.example/", "proxy.test")
    assert not referer_valid(strict, "https://cdn.example/", "proxy.test")
    assert not referer_valid(strict, None, "proxy.test")
    assert not referer_valid(strict, "ftp://site.example/", "proxy.test")
    assert not referer_valid(strict, "https://proxy.test/", "proxy.test")  # no server_names
    assert referer_valid(strict, "https://site.example/", "proxy.test")


def test_server_names_include_the_route_host() -> None:
    """server_names: the Host the request was addressed to, and the route's host pattern."""
    names = policy(valid_referers=("server_names",))
    assert referer_valid(names, "https://shop.example.com/", "cdn.example.net", "*.example.com")
    assert referer_valid(names, "https://cdn.example.net/", "cdn.example.net", "*.example.com")
    assert referer_valid(names, "https://[::1]:8080/", "[::1]:8080")
    assert not referer_valid(names, "https://example.com/", "cdn.example.net", "*.example.com")
    assert not referer_valid(names, "https://other.example/", "", "")


def test_is_protected() -> None:
    assert is_protected(NGINX_EXAMPLE, "/images/cat.png")
    assert is_protected(NGINX_EXAMPLE, "/images/cat.png?size=2")
    assert not is_protected(NGINX_EXAMPLE, "/image")
    assert not is_protected(NGINX_EXAMPLE, "/index.html")
    assert not is_protected(policy(), "/images/cat.png")  # protect_paths = [] by default


@pytest.mark.parametrize("path", ["/%69mages/a.png", "//images/a.png", "/x/../images/a.png",
                                  "/./images/a.png", "/images/%2e%2e/images/a.png"])
def test_protection_is_not_bypassed_by_spelling(path: str) -> None:
    """RFC 3986 §6.2.2: these name /images/a.png to the origin, so they are checked."""
    assert is_protected(NGINX_EXAMPLE, path)


# --- the answer to an invalid Referer -----------------------------------------------------------


def test_denial_403() -> None:
    answer = denial(NGINX_EXAMPLE)
    assert (answer.status, answer.reason) == (403, "referer-invalid")
    assert ("Cache-Control", "no-store") in answer.fields
    assert answer.body.startswith(b"Forbidden")


def test_denial_redirect() -> None:
    redirect = policy(on_invalid=parse_on_invalid("https://example.com/no-hotlinking.html"))
    assert denial(redirect) == RefererDenial(302, (
        ("Location", "https://example.com/no-hotlinking.html"), ("Cache-Control", "no-store")),
        b"")


def test_denial_placeholder(tmp_path: Path) -> None:
    image = tmp_path / "hotlink.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\nplaceholder")
    answer = denial(policy(on_invalid=parse_on_invalid(str(image))))
    assert answer.status == 200
    assert dict(answer.fields) == {"Content-Type": "image/png", "Cache-Control": "no-store"}
    assert answer.body == image.read_bytes()
    assert answer.reason == "referer-invalid"


def test_refusal_gate() -> None:
    """The inbound step: only protected paths, only invalid Referers."""
    assert refusal(NGINX_EXAMPLE, "/images/a.png", "https://evil.example/", "proxy.test") == (
        denial(NGINX_EXAMPLE))
    assert refusal(NGINX_EXAMPLE, "/images/a.png", None, "proxy.test") is None
    assert refusal(NGINX_EXAMPLE, "/page.html", "https://evil.example/", "proxy.test") is None
    assert refusal(NGINX_EXAMPLE, "/images/a.png", "https://proxy.test/", "proxy.test") is None


def test_default_on_invalid_is_403() -> None:
    assert RefererPolicy().on_invalid is None
    assert denial(RefererPolicy()).status == 403
    assert denial(policy(on_invalid=OnInvalid("403", 403))).status == 403


# --- the Referer forwarded upstream -------------------------------------------------------------

SEED = "http://www.example.com/page?gsid=abc123&id=7&Token=x&page=2#top"


def test_keep_strips_session_params() -> None:
    """The seed's leak: a session id in the referring URL must not travel on."""
    assert forwarded_referer(policy(), SEED) == "http://www.example.com/page?id=7&page=2"
    assert forwarded_referer(policy(), "https://a.example/?sid=1") == "https://a.example/"
    assert forwarded_referer(policy(), "https://a.example/?SESSIONID=1&s%69d=2") == (
        "https://a.example/")  # names compare decoded and caseless


def test_keep_is_byte_exact_otherwise() -> None:
    referer = "https://A.example:443/p%7Eth/x;y?b=%41&a=1&&c&token2=z"
    assert forwarded_referer(policy(), referer) == referer
    assert forwarded_referer(policy(strip_params=()), SEED) == SEED.split("#")[0]
    assert forwarded_referer(policy(), "android-app://com.example/x?sid=2") == (
        "android-app://com.example/x")


@pytest.mark.parametrize(
    ("referer", "origin"),
    [
        (SEED, "http://www.example.com/"),
        ("HTTPS://User:pw@A.Example:443/x?y", "https://a.example/"),
        ("https://a.example:8443", "https://a.example:8443/"),
        ("http://[::1]:80/x", "http://[::1]/"),
        ("android-app://com.example/", None),
        ("https://a.example:99999/", None),
        ("not a url", None),
    ],
)
def test_origin_mode(referer: str, origin: str | None) -> None:
    """W3C Referrer Policy §8.4: the origin-only form, scheme://host[:port]/."""
    assert forwarded_referer(policy(upstream_referer="origin"), referer) == origin


def test_defect9_a_huge_port_in_the_referer_is_no_origin() -> None:
    """Issue 9, defect 9: a port past 4,300 digits made int() raise (a 500)."""
    origin_mode = policy(upstream_referer="origin")
    assert forwarded_referer(origin_mode, "https://a.example:" + "9" * 5000 + "/") is None
    assert forwarded_referer(origin_mode, "https://a.example:" + "0" * 5000 + "443/x") == (
        "https://a.example/")


def test_strip_mode_and_no_referer() -> None:
    assert forwarded_referer(policy(upstream_referer="strip"), SEED) is None
    assert forwarded_referer(policy(), None) is None


def param_names(url: str) -> list[str]:
    query = url.partition("?")[2]
    return [unquote(part.partition("=")[0]).lower() for part in query.split("&")] if query else []


params = st.lists(st.tuples(
    st.sampled_from(["sid", "SID", "s%69d", "token", "id", "page", "", "Access_Token", "x y"]),
    st.text(alphabet="abc=%&?#", max_size=4)))


@given(st.text(), params, st.sampled_from(["keep", "origin", "strip"]))
def test_forwarded_referer_never_leaks_a_stripped_param(
    base: str, pairs: list[tuple[str, str]], mode: str
) -> None:
    compiled = policy(upstream_referer=mode)
    referer = base + "?" + "&".join(f"{k}={v}" for k, v in pairs)
    for candidate in (base, referer):
        sent = forwarded_referer(compiled, candidate)
        if sent is None:
            continue
        assert "#" not in sent
        assert not set(param_names(sent)) & compiled.strip_params
        if mode == "origin":
            assert re.fullmatch(r"https?://[^/?#@]+/", sent)


# --- Referrer-Policy on responses (W3C Referrer Policy §4.1) ------------------------------------


def test_parse_referrer_policy() -> None:
    assert parse_referrer_policy("") == ()
    assert parse_referrer_policy("no-referrer , same-origin") == ("no-referrer", "same-origin")
    with pytest.raises(ValueError, match="unknown referrer policy 'never'"):
        parse_referrer_policy("never")
    with pytest.raises(ValueError):
        parse_referrer_policy("no-referrer,")


def test_response_policy_fields() -> None:
    default = policy()
    assert response_policy_fields(default, False) == [
        ("Referrer-Policy", "strict-origin-when-cross-origin")]
    assert response_policy_fields(default, True) == []  # the upstream's stays
    assert response_policy_fields(policy(policy_override=True), True) == [
        ("Referrer-Policy", "strict-origin-when-cross-origin")]
    assert response_policy_fields(policy(policy=""), False) == []
    assert response_policy_fields(policy(policy="no-referrer,same-origin"), False) == [
        ("Referrer-Policy", "no-referrer, same-origin")]


def test_with_referrer_policy() -> None:
    upstream = [("Content-Type", "text/html"), ("referrer-policy", "unsafe-url")]
    assert with_referrer_policy(policy(), upstream) == upstream
    assert with_referrer_policy(policy(policy_override=True), upstream) == [
        ("Content-Type", "text/html"), ("Referrer-Policy", "strict-origin-when-cross-origin")]
    assert with_referrer_policy(policy(policy="", policy_override=True), upstream) == upstream
    assert with_referrer_policy(policy(), [("Content-Type", "text/html")]) == [
        ("Content-Type", "text/html"), ("Referrer-Policy", "strict-origin-when-cross-origin")]
