"""Regression tests for the cache-correctness defects 1-8 of issue 9 ("the request's life as
one typed, sans-I/O flow"). Each test failed on the code the issue was filed against and
names its defect; each docstring cites the RFC section it holds the proxy to.

Every test talks to a real origin on 127.0.0.1 through a running proxy (fixtures in
tests/conftest.py) and asserts on what a user sees: the bodies and statuses later clean
clients get, how often the origin was asked, the Cache-Status member and the request log.
Where the client library would tidy a request (a Connection field naming other fields, a
client that hangs up mid-body), the request is written on a raw socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from support import cache_status, proxy_config, proxy_for_toml, read_json_log, until

from cacheproxy.proxy.server import OBSERVER, PROXY, make_app
from cacheproxy.proxy.server_protocol import ProxyAppRunner

# -- helpers -------------------------------------------------------------------------------


async def raw_request(port: int, head: str) -> bytes:
    """Write a request head (which should say "Connection: close") on a socket of its own
    and read the answer until the proxy closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode("latin-1"))
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def single_route(handler: Callable[[web.Request], Any], path: str = "/{tail:.*}"
                 ) -> web.Application:
    app = web.Application()
    app.router.add_route("*", path, handler)
    return app


# -- 1. a request's no-store (or Authorization + max-age=0) evicts the stored response ----
#
# handler.py _revalidate -> exchange.relay(replaces=entry): the forwarded answer is not
# storable *because of the request* (no-store, or Authorization without public), and relay
# then discards the key with every Vary variant; _update_stored does the same on a 304.
# Any client can so empty the cache for everyone.

EVICTING_REQUESTS = {
    "no-store": {"Cache-Control": "no-store, max-age=0"},
    "authorization+max-age=0": {"Authorization": "Bearer mallory", "Cache-Control": "max-age=0"},
}


@pytest.mark.parametrize("form", EVICTING_REQUESTS)
async def test_defect1_request_no_store_does_not_evict(origin, proxy, form):
    """RFC 9111 §5.2.1.5: the request's no-store "does not apply to the already stored
    response"; §3.5 only forbids *storing* the answer to an Authorization request. Neither
    may remove what is stored for other users: only a reason in the response may evict.
    Two Vary variants are stored, a request of that form revalidates one of them (max-age=0)
    and gets a 200; both variants must still be hits for clean clients."""
    full = Counter[str]()

    async def page(request: web.Request) -> web.Response:
        lang = request.headers.get("Accept-Language", "none")
        full[lang] += 1
        return web.Response(text=f"lang={lang}", headers={
            "Cache-Control": "max-age=60", "Vary": "Accept-Language"})

    c = await proxy(await origin(single_route(page)))
    for lang in ("en", "fr"):
        assert (await c.get("/page", headers={"Accept-Language": lang})).status == 200
    attack = await c.get("/page", headers={"Accept-Language": "en", **EVICTING_REQUESTS[form]})
    assert attack.status == 200 and full == {"en": 2, "fr": 1}

    for lang in ("en", "fr"):
        resp = await c.get("/page", headers={"Accept-Language": lang})
        assert await resp.text() == f"lang={lang}"
        assert resp.headers["X-Cache"] == "HIT", (
            f"the {lang} variant was evicted by the {form} request: {cache_status(resp)}")
    assert full == {"en": 2, "fr": 1}


async def test_defect1_request_no_store_revalidated_with_304_does_not_evict(origin, proxy):
    """RFC 9111 §5.2.1.5 and §4.3.4: a stale response revalidated (304) for a request with
    no-store is freshened or left alone, never deleted. Here the entry is stale on arrival
    (Age > max-age) and has an ETag; a no-store request validates it; a clean client
    afterwards must still get the stored body (another 304, no full response)."""
    full = Counter[str]()

    async def page(request: web.Request) -> web.Response:
        headers = {"Cache-Control": "max-age=1", "Age": "5", "ETag": '"v1"'}
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304, headers=headers)
        full["200"] += 1
        return web.Response(text="stored body", headers=headers)

    c = await proxy(await origin(single_route(page)))
    await c.get("/page")
    attack = await c.get("/page", headers={"Cache-Control": "no-store"})
    assert await attack.text() == "stored body"
    clean = await c.get("/page")
    assert await clean.text() == "stored body"
    assert clean.headers["X-Cache"] == "HIT", (
        f"the no-store request evicted the entry: {cache_status(clean)}")
    assert full["200"] == 1


# -- 2. Connection nominates a field the key or Vary depends on -----------------------------
#
# forwarding.request_fields -> fields.end_to_end drops every field Connection names
# (RFC 9110 §7.6.1), but the cache key (Host) and the Vary values (exchange.plan reads the
# client's fields) still come from the fields as received: the origin answers for inputs
# other than the ones the answer is stored under.

async def test_defect2_connection_nominating_a_vary_field_does_not_poison(origin, proxy):
    """RFC 9111 §4.1: a stored response is selected by the request fields its Vary names,
    so it must have been produced for those values. RFC 9110 §7.6.1 lets a proxy drop the
    fields Connection names, but then the answer (made without Accept-Language) may not be
    stored as the "fr" variant. A clean client asking for fr must get a fr body."""
    async def page(request: web.Request) -> web.Response:
        lang = request.headers.get("Accept-Language", "none")
        return web.Response(text=f"lang={lang}", headers={
            "Cache-Control": "max-age=60", "Vary": "Accept-Language"})

    c = await proxy(await origin(single_route(page)))
    poison = await raw_request(c.server.port, (
        "GET /page HTTP/1.1\r\nHost: site.example\r\nAccept-Language: fr\r\n"
        "Connection: close, Accept-Language\r\n\r\n"))
    assert status_of(poison) == 200
    clean = await c.get("/page", headers={"Host": "site.example", "Accept-Language": "fr"})
    assert await clean.text() == "lang=fr", cache_status(clean)


@pytest.mark.parametrize("host_header", ["pass", "upstream"])
async def test_defect2_connection_nominating_host_does_not_poison(origin, proxy, host_header):
    """RFC 9111 §2 with RFC 9110 §7.6.1: the key holds the client's Host (host_header =
    pass, or X-Forwarded-Host, on by default); "Connection: Host" makes the proxy send the
    upstream's Host (and no X-Forwarded-Host) while storing the answer under the client's
    Host. A clean visitor of victim.example must get the page made for victim.example."""
    async def site(request: web.Request) -> web.Response:
        name = request.host if host_header == "pass" \
            else request.headers.get("X-Forwarded-Host", "none")
        return web.Response(text=f"site {name}", headers={"Cache-Control": "max-age=60"})

    c = await proxy(await origin(single_route(site)), proxy={"host_header": host_header})
    poison = await raw_request(c.server.port, (
        "GET /page HTTP/1.1\r\nHost: victim.example\r\nConnection: close, Host\r\n\r\n"))
    assert status_of(poison) in (200, 400)  # relayed, or refused: both are fine
    clean = await c.get("/page", headers={"Host": "victim.example"})
    assert await clean.text() == "site victim.example", cache_status(clean)


# -- 3. the client's Forwarded / X-Forwarded-* reach the origin, unkeyed --------------------
#
# forwarding.request_fields replaces Host, X-Forwarded-Host and -Proto, appends to the
# client's X-Forwarded-For, and passes Forwarded, X-Forwarded-Scheme, -Port and -Prefix
# untouched. None of them is in the key. The fix strips the client's whole family by
# default (proxy.trust_forwarded = false) before adding the proxy's own.

CLIENT_FORWARDING = {
    "Forwarded": "for=203.0.113.66;host=evil.example;proto=https",
    "X-Forwarded-For": "203.0.113.66",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Scheme": "https",
    "X-Forwarded-Port": "4443",
    "X-Forwarded-Prefix": "/evil",
}


async def test_defect3_client_forwarding_fields_do_not_reach_the_origin(origin, proxy):
    """RFC 7239 §8.1 / RFC 9111 §2: a proxy that does not trust its clients' Forwarded and
    X-Forwarded-* must not pass them on, since the origin builds URLs from them and they
    are not in the key. By default the origin sees only the proxy's own: X-Forwarded-For
    rebuilt from the client's address (no earlier hops), -Proto and -Host from the request.
    (test_proxy_forwarding.py test_x_forwarded_fields_and_host_rewrite and
    test_each_x_forwarded_field_can_be_turned_off expect the client's X-Forwarded-For to be
    kept today; with proxy.trust_forwarded = true they still can be.)"""
    seen: list[Any] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(request.headers.copy())
        return web.Response(text="ok", headers={"Cache-Control": "no-store"})

    c = await proxy(await origin(single_route(echo)))
    assert (await c.get("/page", headers=CLIENT_FORWARDING)).status == 200
    [fields] = seen
    got = {name: fields.getall(name, []) for name in CLIENT_FORWARDING}
    assert got == {
        "Forwarded": [],
        "X-Forwarded-For": ["127.0.0.1"],
        "X-Forwarded-Host": [f"{c.server.host}:{c.server.port}"],
        "X-Forwarded-Proto": ["http"],
        "X-Forwarded-Scheme": [],
        "X-Forwarded-Port": [],
        "X-Forwarded-Prefix": [],
    }


def public_url(request: web.Request) -> str:
    """The absolute URL a framework behind a proxy builds (Werkzeug's ProxyFix, Rails,
    Spring's ForwardedHeaderFilter honour these fields)."""
    forwarded = dict(
        part.strip().split("=", 1)
        for part in request.headers.get("Forwarded", "").split(",")[0].split(";") if "=" in part)
    h = request.headers
    scheme = forwarded.get("proto") or h.get("X-Forwarded-Scheme") \
        or h.get("X-Forwarded-Proto") or "http"
    host = forwarded.get("host") or h.get("X-Forwarded-Host") or request.host
    if "X-Forwarded-Port" in h:
        host = f"{host.rsplit(':', 1)[0]}:{h['X-Forwarded-Port']}"
    return f"{scheme}://{host}{h.get('X-Forwarded-Prefix', '')}/login"


@pytest.mark.parametrize("name", ["Forwarded", "X-Forwarded-Scheme", "X-Forwarded-Port",
                                  "X-Forwarded-Prefix"])
async def test_defect3_forwarding_fields_do_not_poison_the_cache(origin, proxy, name):
    """RFC 9111 §2 (the key) and §4: an answer made from an unkeyed input must not be
    served to requests without it. An attacker sends one forwarding field; the origin puts
    the login link it builds into a cacheable page; a clean visitor of the same URL must
    get the link every clean visitor gets (here: the one of a clean request elsewhere)."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=f'<a href="{public_url(request)}">log in</a>',
                            headers={"Cache-Control": "max-age=60"})

    c = await proxy(await origin(single_route(page)))
    reference = await (await c.get("/elsewhere")).text()
    await c.get("/page", headers={name: CLIENT_FORWARDING[name]})
    clean = await c.get("/page")
    assert await clean.text() == reference, cache_status(clean)


# -- 4. a private default route shares keys with a shared [[routes]] entry -------------------
#
# routing.RoutePlan.cache_key appends "#private:<route>" only for a [[routes]] entry
# (route.index is not None); the default route's private entries take the plain key. When
# the key names the upstream (host_header = upstream, x_forwarded_host = false: nginx's
# $proxy_host key, tests/test_proxy_caching.py test_s2_the_key_names_the_upstream...), a
# shared route to the same upstream reads what the private default route stored.

PRIVATE_DEFAULT = """
[proxy]
upstream = "{site}"
x_forwarded_host = false
[cache]
shared = false

[[routes]]
%s
[routes.cache]
shared = true
"""
# Two ways one upstream URL is reached through both routes: by Host, or by a path prefix
# whose route upstream has a path (/v2/account -> {site}/api/v2/account, the URL the
# default route sends /api/v2/account to). Each: (route, Alice's request, Bob's request).
SHARED_ROUTES = {
    "by-host": ('host = "shared.example"\nupstream = "{site}"',
                ("app.example", "/account"), ("shared.example", "/account")),
    "by-path": ('path_prefix = "/v2/"\nupstream = "{site}/api"',
                ("app.example", "/api/v2/account"), ("app.example", "/v2/account")),
}


class AccountSite:
    """An origin with one private page per user (the Cookie says who)."""

    def __init__(self) -> None:
        self.app = single_route(self.account)

    async def account(self, request: web.Request) -> web.Response:
        user = request.headers.get("Cookie", "sid=nobody").removeprefix("sid=")
        return web.Response(text=f"account of {user}",
                            headers={"Cache-Control": "private, max-age=60"})


@pytest.mark.parametrize("shape", SHARED_ROUTES)
async def test_defect4_private_default_route_does_not_share_keys_with_shared_route(
        origin, proxy, tmp_path: Path, shape):
    """RFC 9111 §5.2.2.7: a shared cache "MUST NOT store" a private response, so one may
    never reach a shared route's users. Alice's private page, stored by the private default
    route, must not be served to Bob through a shared [[routes]] entry to the same upstream
    URL. (The key names the upstream URL only with host_header = upstream and
    x_forwarded_host = false; with the defaults or host_header = pass it holds the client's
    Host and raw target, and the two routes never meet.)"""
    route, (alice_host, alice_path), (bob_host, bob_path) = SHARED_ROUTES[shape]
    c = await proxy_for_toml(origin, proxy, tmp_path, PRIVATE_DEFAULT % route,
                             site=AccountSite())
    alice = {"Host": alice_host, "Cookie": "sid=alice"}
    assert await (await c.get(alice_path, headers=alice)).text() == "account of alice"
    again = await c.get(alice_path, headers=alice)
    assert again.headers["X-Cache"] == "HIT"  # the private route keeps it, as it may
    bob = await c.get(bob_path, headers={"Host": bob_host, "Cookie": "sid=bob"})
    assert await bob.text() == "account of bob", cache_status(bob)


async def test_defect4_a_fragment_in_the_target_cannot_name_a_private_key(
        origin, proxy, tmp_path: Path):
    """A private route's keys end in "#private:<route>"; a request-target never holds a
    fragment (RFC 9112 §3.2, RFC 3986 §3.5), so "/account#private:default" through the
    shared route is refused (400) instead of reading Alice's page."""
    route, (alice_host, alice_path), (bob_host, _) = SHARED_ROUTES["by-host"]
    c = await proxy_for_toml(origin, proxy, tmp_path, PRIVATE_DEFAULT % route,
                             site=AccountSite())
    alice = {"Host": alice_host, "Cookie": "sid=alice"}
    await c.get(alice_path, headers=alice)
    assert (await c.get(alice_path, headers=alice)).headers["X-Cache"] == "HIT"
    answer = await raw_request(c.port, f"GET {alice_path}#private:default HTTP/1.1\r\n"
                                       f"Host: {bob_host}\r\nCookie: sid=bob\r\n"
                                       "Connection: close\r\n\r\n")
    assert status_of(answer) == 400 and b"account of alice" not in answer


# -- 5. a refused memory-store put removes the key's other variants ------------------------
#
# store/memory.py MemoryStore.put pops the key's variants first, then returns False when
# the new tuple does not fit max_bytes, without putting the old ones back.

async def test_defect5_refused_put_keeps_the_other_variants(origin, proxy):
    """RFC 9111 §4.1: variants are stored responses of their own; a response the store
    cannot take (within max_object_bytes, beyond the store's max_bytes) must leave the
    others as they were. The small "en" variant must stay a hit after a big "de" one was
    refused."""
    async def page(request: web.Request) -> web.Response:
        lang = request.headers.get("Accept-Language", "none")
        body = "x" * 16000 if lang == "de" else f"lang={lang}"
        return web.Response(text=body, headers={
            "Cache-Control": "max-age=60", "Vary": "Accept-Language"})

    c = await proxy(await origin(single_route(page)),
                    cache={"max_bytes": 16384, "max_object_bytes": 16384})
    en = {"Accept-Language": "en"}
    await c.get("/page", headers=en)
    assert (await c.get("/page", headers=en)).headers["X-Cache"] == "HIT"
    big = await c.get("/page", headers={"Accept-Language": "de"})
    assert len(await big.read()) == 16000
    after = await c.get("/page", headers=en)
    assert await after.text() == "lang=en"
    assert after.headers["X-Cache"] == "HIT", (
        f"the refused de variant took the en variant with it: {cache_status(after)}")


# -- 6. variants are told apart by their Vary values only -----------------------------------
#
# store/memory.py MemoryStore.put (and redis.py _variant_field) treat two variants with
# equal Vary *values* as the same, whatever fields they are values of. Once the origin
# varies on other fields, a new variant replaces an unrelated one. What users see is a
# lost variant (the origin asked again), not another variant's body: select_variant
# matches each stored response by the fields of its own Vary.

async def test_defect6_variants_of_different_vary_fields_do_not_collide(origin, proxy):
    """RFC 9111 §4.1: a stored response is selected by the fields *its* Vary names, so
    (Vary: Accept-Language, no Accept-Language) and (Vary: Accept-Encoding, no
    Accept-Encoding) are different variants. The origin first varies on Accept-Language,
    then on Accept-Encoding; storing the new "no Accept-Encoding" variant must not drop
    the "no Accept-Language" one, which still answers the first client."""
    mode = {"vary": "Accept-Language"}
    full = Counter[str]()

    async def page(request: web.Request) -> web.Response:
        field = mode["vary"]
        value = request.headers.get(field, "none")
        full[f"{field}={value}"] += 1
        return web.Response(text=f"{field}={value}", headers={
            "Cache-Control": "max-age=60", "Vary": field})

    c = await proxy(await origin(single_route(page)))
    first = {"Accept-Encoding": "gzip"}  # no Accept-Language: the stored values are (None,)
    assert await (await c.get("/page", headers=first)).text() == "Accept-Language=none"
    mode["vary"] = "Accept-Encoding"
    # No Accept-Encoding (aiohttp would add one): the new variant's values are (None,) too.
    other = await c.get("/page", headers={"Accept-Language": "de"},
                        skip_auto_headers=["Accept-Encoding"])
    assert await other.text() == "Accept-Encoding=none"

    again = await c.get("/page", headers=first)
    assert await again.text() == "Accept-Language=none", cache_status(again)
    assert again.headers["X-Cache"] == "HIT", cache_status(again)
    assert sum(full.values()) == 2


# -- 7. the log says `stored` and `collapsed` for what did not happen ----------------------
#
# exchange.plan sets outcome.stored before the body is read; a client that leaves
# mid-body (relay: ConnectionError) leaves it set, and the log records the Cache-Status
# member computed when the head went out. handler._collapsed sets outcome.collapsed
# whether or not collapser.wait() returned in time.

class ServedTestServer(TestServer):
    """The proxy on the runner `cacheproxy serve` uses, as it runs there: aiohttp's
    TestServer (and so the `proxy` fixture) cancels a handler whose client went away
    (handler_cancellation=True), `cacheproxy serve` lets it finish (aiohttp's default)."""

    async def _make_runner(self, **kwargs: Any) -> ProxyAppRunner:
        kwargs.update(self.app[OBSERVER].runner_args(), handler_cancellation=False)
        return ProxyAppRunner(self.app, **kwargs)


async def test_defect7_aborted_body_is_not_logged_as_stored(origin, aiohttp_client, tmp_path):
    """RFC 9211 §2.4: "stored" means the cache stored the response. A client that hangs
    up in the middle of a large cacheable miss leaves nothing stored (the proxy stops
    reading the body), so its log line must not say stored."""
    chunk, chunks = b"x" * 65536, 48

    async def big(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Cache-Control": "max-age=60",
                                           "Content-Length": str(len(chunk) * chunks)})
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(chunks):
                await resp.write(chunk)
                await asyncio.sleep(0.005)
        return resp

    upstream = str((await origin(single_route(big))).make_url("")).rstrip("/")
    app = make_app(proxy_config(upstream, log={"path": str(tmp_path / "log")}))
    c = await aiohttp_client(ServedTestServer(app, host="127.0.0.1"))
    reader, writer = await asyncio.open_connection("127.0.0.1", c.server.port)
    writer.write(b"GET /big HTTP/1.1\r\nHost: site.example\r\nConnection: close\r\n\r\n")
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(len(chunk))  # the body has started
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
    writer.close()

    lines: list[dict[str, Any]] = []

    async def logged() -> bool:
        lines[:] = [x for x in await read_json_log(c) if x["path"] == "/big"]
        return bool(lines)

    deadline = time.monotonic() + 5
    while not await logged() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    [line] = lines
    # Today nothing is stored; a proxy that read the body to the end anyway and stored it
    # may say so. Either way the log must tell what the store holds.
    stored = bool(await app[PROXY].store.keys())
    assert ("stored" in line["cache_status"]) == stored, (stored, line)


async def test_defect7_timed_out_collapse_wait_is_not_logged_as_collapsed(
        origin, proxy, tmp_path):
    """RFC 9211 §2.6: "collapsed" means the request was collapsed with another, i.e.
    answered from that one's result. A waiter whose collapse_timeout ran out went to the
    origin on its own: neither its Cache-Status nor its log line may say collapsed.
    (test_proxy_caching.py test_collapse_wait_is_bounded asserts the opposite today; the
    fix changes that line.)"""
    calls = Counter[str]()

    async def slow(request: web.Request) -> web.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            await asyncio.sleep(1.0)  # the leader's request: longer than collapse_timeout
        return web.Response(text=f"answer {calls['n']}", headers={"Cache-Control": "max-age=60"})

    c = await proxy(await origin(single_route(slow)), cache={"collapse_timeout": 0.2},
                    log={"path": str(tmp_path / "log")})
    leader = asyncio.ensure_future(c.get("/slow", headers={"User-Agent": "leader"}))
    assert await until(lambda: calls["n"] == 1)
    waiter = await c.get("/slow", headers={"User-Agent": "waiter"})
    assert await waiter.text() == "answer 2"  # its own answer: the wait timed out
    await (await leader).read()

    [line] = [x for x in await read_json_log(c) if x["user_agent"] == "waiter"]
    said_collapsed = ("collapsed" in cache_status(waiter), line["collapsed"],
                      "collapsed" in line["cache_status"])
    assert said_collapsed == (False, False, False), line


# -- 8. a validator-less 304 freshens a stored response that has a validator ---------------
#
# revalidation.selects returns True for a 304 without ETag and Last-Modified whatever the
# stored response carries, so handler._revalidate merges it and serves the old body as
# validated, and stores it fresh again.

async def test_defect8_validatorless_304_does_not_select_a_stored_response_with_one(
        origin, proxy):
    """RFC 9111 §4.3.4: a 304 with no validator identifies a stored response for update
    only when "there is only one stored response in the initial set, and that stored
    response also lacks a validator". Here the stored response has ETag "v1", so the bare
    304 selects nothing: "the cache MUST NOT use" it to update a stored response (no
    freshening, no header merge), and it cannot answer this unconditional client either.
    What is left is the full response (an unconditional request, as the proxy already
    does for a 304 that names another representation). The origin now has "v2" and answers
    any conditional request with a bare 304 (a broken origin, or an intermediary that strips
    ETag); no client may be served "v1" as if validated, now or from a freshened entry.

    The stored response here has an ETag. One with only Last-Modified is left out on
    purpose: RFC 9110 §15.4.5 does not require a 304 to repeat Last-Modified, and
    test_proxy_caching.py test_s4_3_revalidation_by_last_modified relies on such a 304
    being taken. (tests/rfc/test_rfc9111_s4_3_validation.py
    test_s4_3_4_304_without_validator_answers_the_request_made_for_this_entry states the
    opposite reading for an ETag'd entry; the fix replaces it.)"""
    version = {"current": 1}

    async def doc(request: web.Request) -> web.Response:
        if version["current"] == 1:  # stale on arrival (Age > max-age), with a validator
            return web.Response(text="v1", headers={
                "Cache-Control": "max-age=1", "Age": "5", "ETag": '"v1"'})
        if "If-None-Match" in request.headers or "If-Modified-Since" in request.headers:
            return web.Response(status=304, headers={"Cache-Control": "max-age=60"})
        return web.Response(text="v2", headers={"Cache-Control": "max-age=60", "ETag": '"v2"'})

    c = await proxy(await origin(single_route(doc)))
    assert await (await c.get("/doc")).text() == "v1"
    version["current"] = 2
    revalidated = await c.get("/doc")
    assert await revalidated.text() == "v2", cache_status(revalidated)
    later = await c.get("/doc")
    assert await later.text() == "v2", cache_status(later)
