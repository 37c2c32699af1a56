"""Defects found reviewing `proxy.trust_forwarded` behind a TLS-terminating front proxy
(nginx's `proxy_set_header X-Forwarded-Proto $scheme`, a load balancer): the scheme the
front proxy says the client used is the scheme the request is for. Each test failed before
its fix (or is marked xfail, strict, with the reason it stays)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict
from support import proxy_config

from cacheproxy.http.front_scheme import front_scheme
from cacheproxy.proxy.quick import QuickHits
from cacheproxy.proxy.server import reconfigure


@pytest.fixture
def quick_seen(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the quick path made of each request it saw: Plain, Quick, Planned or None."""
    real = QuickHits.hit
    seen: list[str] = []

    def counted(self: QuickHits, msg: Any, started: float) -> Any:
        found = real(self, msg, started)
        seen.append(type(found).__name__)
        return found

    monkeypatch.setattr(QuickHits, "hit", counted)
    return seen


def _scheme_origin(seen: list[tuple[str, str | None, str | None]]) -> web.Application:
    """An origin that builds its answer from the scheme it is told (as Django's
    SECURE_PROXY_SSL_HEADER, Rails' force_ssl, Express's req.secure do): /page is cached
    for a minute, /pass never; seen: (path, X-Forwarded-Proto, Forwarded) per request."""

    async def answer(request: web.Request) -> web.Response:
        proto = request.headers.get("X-Forwarded-Proto")
        fwd = request.headers.get("Forwarded")
        seen.append((request.path, proto, fwd))
        cc = "no-store" if request.path == "/pass" else "max-age=60"
        return web.Response(text=f"built for {proto}", headers={"Cache-Control": cc})

    app = web.Application()
    app.router.add_get("/{name}", answer)
    return app


async def _text(client: Any, path: str, headers: Any = None) -> str:
    async with client.get(path, headers=headers or {}) as r:
        assert r.status == 200
        return await r.text()


# -- the quick path: hits, and forwards sent by callback ---------------------------------


async def test_quick_path_hits_are_keyed_by_the_trusted_front_scheme(
        origin: Any, proxy: Any, quick_seen: list[str]) -> None:
    """The quick path (proxy/quick.py) memoises the key of a (Host, target) pair and made
    it with the scheme "http" whatever the request said: behind a TLS terminator, with
    `proxy.trust_forwarded`, the answer built for an https client (links, the absence of
    a redirect to https) was replayed to http clients and the reverse. nginx's
    `proxy_cache_key $scheme$proxy_host$request_uri` and Varnish's hash of
    X-Forwarded-Proto (the usual vcl_hash behind Hitch) keep them apart. Severity: medium
    (an http client gets the https page, so force_ssl's redirect never happens; or an
    https page links to http:// resources: mixed content, blocked by browsers)."""
    seen: list[tuple[str, str | None, str | None]] = []
    client = await proxy(await origin(_scheme_origin(seen)), proxy={"trust_forwarded": True})
    https = {"X-Forwarded-Proto": "https"}
    assert await _text(client, "/page", https) == "built for https"
    assert await _text(client, "/page", {"X-Forwarded-Proto": "http"}) == "built for http"
    quick_seen.clear()
    for _ in range(2):  # hits: a plain one (replayed) and one lookup() decides (Quick)
        assert await _text(client, "/page", https) == "built for https"
        assert await _text(client, "/page") == "built for http"  # (no front: this hop's)
        assert await _text(client, "/page", {"X-Forwarded-Proto": "http"}) == "built for http"
        assert await _text(client, "/page", {**https, "If-None-Match": '"x"'}) \
            == "built for https"
        assert await _text(client, "/page", {"If-None-Match": '"x"'}) == "built for http"
    assert seen == [("/page", "https", None), ("/page", "http", None)]
    assert quick_seen == ["Plain", "Plain", "Plain", "Quick", "Quick"] * 2  # (no fallback)


async def test_quick_forward_tells_the_origin_the_trusted_front_scheme(
        origin: Any, proxy: Any, forward_switch: Any, quick_seen: list[str]) -> None:
    """A miss the quick path sends on (by callback, proxy/quick_forward.py, or handed to
    the driver as Planned) made its upstream fields with this hop's scheme: with
    `proxy.trust_forwarded` the front's `X-Forwarded-Proto: https` reached the origin as
    `http`. Severity: medium (the app redirects an https client to https: a loop)."""
    seen: list[tuple[str, str | None, str | None]] = []
    client = await proxy(await origin(_scheme_origin(seen)), proxy={"trust_forwarded": True})
    for proto in ("https", "http"):  # first misses wait for no one only once not stored
        await _text(client, "/pass", {"X-Forwarded-Proto": proto})  # (hit-for-pass)
    before = forward_switch.state["sent"]
    assert await _text(client, "/pass", {"X-Forwarded-Proto": "https"}) == "built for https"
    assert await _text(client, "/pass", {"X-Forwarded-Proto": "http"}) == "built for http"
    assert forward_switch.state["sent"] == before + 2  # both went by callback
    forward_switch(False)  # the driver's way, from the quick path's plan
    assert await _text(client, "/pass", {"X-Forwarded-Proto": "https"}) == "built for https"
    assert quick_seen[-3:] == ["Planned"] * 3
    assert [proto for path, proto, _ in seen if path == "/pass"] == ["https", "http"] * 2 \
        + ["https"]


# -- the full path and the rules for the value -------------------------------------------


async def test_with_x_forwarded_proto_off_the_fronts_own_is_kept_and_keyed(
        origin: Any, proxy: Any) -> None:
    """With `proxy.x_forwarded_proto = false` (this proxy adds none of its own) and
    `proxy.trust_forwarded = true` ("keep the client's own ... X-Forwarded-*", README), the
    front's X-Forwarded-Proto was dropped all the same (it was counted among the fields this
    proxy writes). Kept, it must key the answer too. Severity: medium."""
    seen: list[tuple[str, str | None, str | None]] = []
    client = await proxy(await origin(_scheme_origin(seen)),
                         proxy={"trust_forwarded": True, "x_forwarded_proto": False})
    assert await _text(client, "/page", {"X-Forwarded-Proto": "https"}) == "built for https"
    assert await _text(client, "/page") == "built for None"  # none from the front: none
    assert await _text(client, "/page", {"X-Forwarded-Proto": "HTTPS"}) == "built for https"
    assert await _text(client, "/other", {"X-Forwarded-Proto": "gopher"}) == "built for None"
    assert [proto for _, proto, _ in seen] == ["https", None, None]


async def test_only_http_or_https_from_the_nearest_proxy_is_taken(
        origin: Any, proxy: Any) -> None:
    """The scheme is the last member of X-Forwarded-Proto: the one the nearest proxy, the
    trusted one, wrote (nginx replaces the field; a proxy that appends puts its own
    last, and anything before it came from further away, the client included; Werkzeug's
    ProxyFix with x_proto=1 reads the last one too). Only http and https, in any case, are
    taken: anything else is ignored (this hop's scheme applies), so no client picks a key
    of its own or an odd value the origin builds links from. What goes upstream is the
    one value the key names. Severity: low (a front that appends; a garbage value)."""
    seen: list[tuple[str, str | None, str | None]] = []
    client = await proxy(await origin(_scheme_origin(seen)), proxy={"trust_forwarded": True})
    assert await _text(client, "/page", {"X-Forwarded-Proto": "http, HTTPS"}) \
        == "built for https"
    assert await _text(client, "/page", [("X-Forwarded-Proto", "http"),
                                         ("X-Forwarded-Proto", "https")]) == "built for https"
    for odd in ("https, http", "ftp", "javascript", "https x", "", "https, gopher"):
        assert await _text(client, "/page", {"X-Forwarded-Proto": odd}) == "built for http", odd
    assert [proto for _, proto, _ in seen] == ["https", "http"]  # two entries, no more


async def test_forwarded_proto_of_the_nearest_proxy_keys_the_answer(
        origin: Any, proxy: Any) -> None:
    """A front that says the scheme in RFC 7239 Forwarded alone (proto=, §5.4: "the
    protocol used to make the request") keeps it with trust_forwarded, and the origin is
    told it in X-Forwarded-Proto as well; the answer is keyed by it. The last element is
    the nearest proxy's (§4: each proxy appends one). Severity: medium."""
    seen: list[tuple[str, str | None, str | None]] = []
    client = await proxy(await origin(_scheme_origin(seen)), proxy={"trust_forwarded": True})
    front = "for=198.51.100.7;proto=http, for=192.0.2.60;proto=https;by=203.0.113.43"
    assert await _text(client, "/page", {"Forwarded": front}) == "built for https"
    assert await _text(client, "/page", {"Forwarded": 'for="[2001:db8::1]";PROTO="HTTPS"'}) \
        == "built for https"  # (a quoted value, a name in capitals: the same entry)
    assert await _text(client, "/page", {"Forwarded": "for=192.0.2.60;proto=http"}) \
        == "built for http"
    assert await _text(client, "/page", {"Forwarded": "for=192.0.2.60;proto=ws"}) \
        == "built for http"
    assert seen == [("/page", "https", front), ("/page", "http", "for=192.0.2.60;proto=http")]


async def test_an_upstream_keyed_route_keys_the_trusted_scheme_too(
        origin: Any, proxy: Any) -> None:
    """With the key named after the upstream URL (`x_forwarded_host = false`, Host
    rewritten: nginx's $proxy_host key) the scheme the origin is told must still key the
    answer: the key's own scheme is the upstream's. Severity: medium."""
    seen: list[tuple[str, str | None, str | None]] = []
    client = await proxy(await origin(_scheme_origin(seen)),
                         proxy={"trust_forwarded": True, "x_forwarded_host": False})
    assert await _text(client, "/page", {"X-Forwarded-Proto": "https"}) == "built for https"
    assert await _text(client, "/page") == "built for http"
    assert await _text(client, "/page", {"X-Forwarded-Proto": "https"}) == "built for https"
    assert await _text(client, "/page") == "built for http"
    assert len(seen) == 2


async def test_untrusted_x_forwarded_proto_still_changes_nothing(
        origin: Any, proxy: Any) -> None:
    """Without trust_forwarded the client's X-Forwarded-Proto and Forwarded are dropped
    and the origin is told this hop's scheme; one entry serves all (unchanged: a forged
    https keys nothing)."""
    seen: list[tuple[str, str | None, str | None]] = []
    client = await proxy(await origin(_scheme_origin(seen)))
    assert await _text(client, "/page", {"X-Forwarded-Proto": "https"}) == "built for http"
    assert await _text(client, "/page", {"Forwarded": "proto=https"}) == "built for http"
    assert await _text(client, "/page") == "built for http"
    assert seen == [("/page", "http", None)]


async def test_a_reload_that_turns_trust_on_rekeys_the_quick_path(
        origin: Any, proxy: Any, quick_seen: list[str]) -> None:
    """The quick path's memo of (Host, target) -> key follows a reload that turns
    trust_forwarded on (the key of an https request changes): the https client is not
    answered from the entry the untrusted requests filled."""
    seen: list[tuple[str, str | None, str | None]] = []
    upstream = await origin(_scheme_origin(seen))
    client = await proxy(upstream)
    https = {"X-Forwarded-Proto": "https"}
    assert await _text(client, "/page", https) == "built for http"  # (untrusted: dropped)
    assert await _text(client, "/page", https) == "built for http"
    url = str(upstream.make_url("")).rstrip("/")
    reconfigure(client.server.app, proxy_config(url, proxy={"trust_forwarded": True}))
    quick_seen.clear()
    assert await _text(client, "/page", https) == "built for https"
    assert await _text(client, "/page", https) == "built for https"
    assert await _text(client, "/page") == "built for http"
    assert [proto for _, proto, _ in seen] == ["http", "https"]
    assert quick_seen == ["Planned", "Plain", "Plain"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=40), min_size=1, max_size=3),
       st.lists(st.text(max_size=60), max_size=3))
def test_front_scheme_is_http_https_or_none_for_any_field_values(
        xfp: list[str], forwarded: list[str]) -> None:
    """Whatever a front (or a client through it) sends, the scheme taken is http, https or
    nothing: never a key or an upstream value of the sender's choosing; X-Forwarded-Proto,
    when present, decides, by its last member."""
    fields = CIMultiDict([*(("X-Forwarded-Proto", v) for v in xfp),
                          *(("Forwarded", v) for v in forwarded)])
    scheme = front_scheme(fields)
    assert scheme in (None, "http", "https")
    members = [m.strip() for m in ", ".join(xfp).split(",") if m.strip()]
    if '"' not in "".join(xfp):
        expected = members[-1].lower() if members else None
        assert scheme == (expected if expected in ("http", "https") else None)
