"""A shared-cache review (cache poisoning, deception, leaks between users), written
against fb8f70f. Each test failed on that code and names the rule it holds the proxy to.
Real origins and clients on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from support import cache_status
from test_hostile_http_regressions import exchange
from test_proxy_caching import Origin, start

import cacheproxy.proxy.listener as listener_mod


@pytest.fixture
def client_addresses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The address each next client connection is seen from (all of them still come
    from 127.0.0.1): two users behind different addresses, without leaving loopback."""
    addresses: list[str] = []
    monkeypatch.setattr(listener_mod.Listener, "remote", staticmethod(
        lambda peername: addresses.pop(0) if addresses else str(peername[0])))
    return addresses


def body_of(answer: bytes) -> bytes:
    return answer.partition(b"\r\n\r\n")[2]


async def test_vary_x_forwarded_for_answer_is_not_served_to_another_client(
        origin: Any, proxy: Any, client_addresses: list[str]) -> None:
    """The proxy writes X-Forwarded-For itself (the client's address), so the origin's
    `Vary: X-Forwarded-For` says the answer was made for that address. RFC 9111 §4.1: a
    stored response is reused only when the fields it nominates match those of the
    request it was made for; the secondary key was taken from the client's own (absent)
    field, not from what the origin saw, so one address's answer (a geo page, "your IP
    is ...") was served to every other. Varnish sets X-Forwarded-For on the request
    before the lookup, so its Vary match sees each client's address."""
    o = Origin(r=lambda req: web.Response(
        text="made for " + req.headers.get("X-Forwarded-For", "?"),
        headers={"Cache-Control": "max-age=60", "Vary": "X-Forwarded-For"}))
    c = await start(origin, proxy, o)
    port = c.server.port
    client_addresses.extend(["203.0.113.1", "198.51.100.2"])
    first = await exchange(port, b"GET /r HTTP/1.1\r\nHost: shop\r\n\r\n", idle=0.3)
    second = await exchange(port, b"GET /r HTTP/1.1\r\nHost: shop\r\n\r\n", idle=0.3)
    assert body_of(first) == b"made for 203.0.113.1"
    assert body_of(second) == b"made for 198.51.100.2", second


@pytest.mark.parametrize("field", ["X-Scheme", "Front-End-Https"])
async def test_a_forged_scheme_field_cannot_poison_a_page(origin: Any, proxy: Any,
                                                          field: str) -> None:
    """README (Proxy behaviour): the client's own forwarding fields are dropped "origins
    build URLs from them, and a forged one would end up in a page the cache serves to
    everyone". X-Scheme is one: Tornado's `xheaders=True` reads it before
    X-Forwarded-Proto (and CodeIgniter's is_https() reads Front-End-Https); they went
    upstream, so one client's `X-Scheme: https` put https:// links into the page stored
    for everyone on this http site."""
    def page(req: web.Request) -> web.Response:
        scheme = req.headers.get("X-Forwarded-Proto", "http")
        if req.headers.get("X-Scheme") in ("http", "https"):  # Tornado: X-Scheme first
            scheme = req.headers["X-Scheme"]
        if req.headers.get("Front-End-Https", "").lower() == "on":
            scheme = "https"
        return web.Response(text=f'<a href="{scheme}://shop/next">next</a>',
                            headers={"Cache-Control": "max-age=60"})

    o = Origin(r=page)
    c = await start(origin, proxy, o)
    value = "https" if field == "X-Scheme" else "on"
    await c.get("/r", headers={field: value})  # the attacker fills the entry
    victim = await c.get("/r")
    assert victim.headers["X-Cache"] == "HIT" or "stored" in cache_status(victim)
    assert await victim.text() == '<a href="http://shop/next">next</a>'


async def test_a_failed_background_refresh_does_not_log_a_session_id(
        origin: Any, proxy: Any, caplog: pytest.LogCaptureFixture) -> None:
    """README (Referer): the values of `referer.strip_params` are redacted where the proxy
    writes a request's URL, "so a session id kept from the upstream is not written to a
    log file either"; the other failure lines redact them (driver.upstream_failed, a body that
    broke off). The line for a stale-while-revalidate refresh that failed named the key,
    query and session id included."""
    calls = {"n": 0}

    async def page(req: web.Request) -> web.Response:
        calls["n"] += 1
        if calls["n"] > 1:  # the refresh: the origin breaks the connection
            assert req.transport is not None
            req.transport.close()
            return web.Response()
        return web.Response(text="inbox", headers={
            "Cache-Control": "max-age=1, stale-while-revalidate=60", "Age": "5"})

    o = Origin(inbox=page)
    c = await start(origin, proxy, o)
    await c.get("/inbox?gsid=SECRET123")
    caplog.set_level("INFO", logger="cacheproxy")
    stale = await c.get("/inbox?gsid=SECRET123")
    assert "stale-while-revalidate" in cache_status(stale)
    for _ in range(50):
        if "background revalidation" in caplog.text:
            break
        await asyncio.sleep(0.02)
    assert "background revalidation" in caplog.text
    assert "SECRET123" not in caplog.text
