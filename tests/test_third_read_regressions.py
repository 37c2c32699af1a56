"""Regressions found in a third reading of the CORS passthrough, Referer and request-log
commits (third-read).

Each test says what is expected and why, with the section of the standard it follows.
"""

from __future__ import annotations

import gzip

from aiohttp import web
from support import proxy_for_toml as start
from support import read_json_log
from test_review_cors_regressions import Recording


class Revalidated:
    """An origin that stores fine: gzip or identity by Accept-Encoding (Vary:
    Accept-Encoding on its 200s), a CORS grant reflecting Origin without Vary: Origin, and
    304s to If-None-Match whose fields it chooses (grant, Vary or neither)."""

    def __init__(self, grant_on_304: bool, vary_on_304: bool) -> None:
        self.grant_on_304, self.vary_on_304 = grant_on_304, vary_on_304
        self.app = web.Application()
        self.app.router.add_get("/r", self.answer)

    async def answer(self, request: web.Request) -> web.Response:
        gz = "gzip" in request.headers.get("Accept-Encoding", "")
        tag = '"gz"' if gz else '"id"'
        headers = {"Cache-Control": "public, max-age=60", "ETag": tag}
        origin = request.headers.get("Origin")
        if request.headers.get("If-None-Match") == tag:
            if origin and self.grant_on_304:
                headers["Access-Control-Allow-Origin"] = origin
            if self.vary_on_304:
                headers["Vary"] = "Accept-Encoding"
            return web.Response(status=304, headers=headers)
        if origin:
            headers["Access-Control-Allow-Origin"] = origin
        headers["Vary"] = "Accept-Encoding"
        if gz:
            headers["Content-Encoding"] = "gzip"
            return web.Response(body=gzip.compress(b"data"), headers=headers)
        return web.Response(body=b"data", headers=headers)


PASSTHROUGH = """
[proxy]
upstream = "{up}"
[cors]
allow_origins = ["https://a.example", "https://b.example"]
mode = "passthrough"
"""
A, B = {"Origin": "https://a.example"}, {"Origin": "https://b.example"}
GZIP, IDENTITY = {"Accept-Encoding": "gzip"}, {"Accept-Encoding": "identity"}


async def test_passthrough_304_with_a_grant_keeps_the_stored_vary(origin, proxy, tmp_path):
    """RFC 9111 §4.3.4 and §3.2: a 304 freshens the stored response, its fields replacing
    those of the same name. A 304 without Vary leaves the stored Vary as it is; the
    Vary: Origin added for the 304's grant (Fetch §3.2) must be added to the merged
    response's Vary, not stand for it: were it to replace `Vary: Accept-Encoding`, the
    gzip body would then be served to a client that cannot decode it (RFC 9111 §4.1)."""
    c = await start(origin, proxy, tmp_path, PASSTHROUGH,
                    up=Revalidated(grant_on_304=True, vary_on_304=False))
    await c.get("/r", headers={**A, **GZIP}, auto_decompress=False)
    again = await c.get("/r", headers={**A, **GZIP, "Cache-Control": "no-cache"},
                        auto_decompress=False)
    assert again.status == 200
    plain = await c.get("/r", headers={**A, **IDENTITY}, auto_decompress=False)
    assert plain.headers.get("Content-Encoding") is None
    assert await plain.read() == b"data"


async def test_passthrough_304_without_a_grant_keeps_vary_origin(origin, proxy, tmp_path):
    """The other way round: a 304 that repeats `Vary: Accept-Encoding` (RFC 9110 §15.4.5)
    but not the grant replaces the stored Vary (Accept-Encoding, Origin) while the stored
    `Access-Control-Allow-Origin: https://a.example` stays (RFC 9111 §3.2). The merged
    response still names an origin, so it still varies on Origin (Fetch §3.2): another
    origin's request must not be handed a's grant from storage."""
    c = await start(origin, proxy, tmp_path, PASSTHROUGH,
                    up=Revalidated(grant_on_304=False, vary_on_304=True))
    await c.get("/r", headers={**A, **GZIP}, auto_decompress=False)
    again = await c.get("/r", headers={**A, **GZIP, "Cache-Control": "no-cache"},
                        auto_decompress=False)
    assert again.status == 200
    other = await c.get("/r", headers={**B, **GZIP}, auto_decompress=False)
    assert other.headers.getall("Access-Control-Allow-Origin", []) != ["https://a.example"]


async def test_userinfo_is_dropped_upstream_with_no_strip_params(origin, proxy, tmp_path):
    """W3C Referrer Policy §8.3: a referrer never carries a username or password, and the
    README says a `user:password@` in the Referer is dropped upstream. That holds whatever
    `strip_params` lists: with `strip_params = []` and the default `upstream_referer =
    "keep"` the password must not reach the upstream either."""
    up = Recording()
    c = await start(origin, proxy, tmp_path,
                    '[proxy]\nupstream = "{up}"\n[referer]\nstrip_params = []\n', up=up)
    resp = await c.get("/x", headers={"Referer": "http://user:SECRET@site.example/page?a=1"})
    assert resp.status == 200
    assert up.referers[-1] == "http://site.example/page?a=1"


class Granting:
    """An origin that grants the request's Origin (and says Vary: Origin itself)."""

    def __init__(self) -> None:
        self.app = web.Application()
        self.app.router.add_get("/g", self.answer)

    async def answer(self, request: web.Request) -> web.Response:
        headers = {"Cache-Control": "no-store", "Vary": "Origin"}
        if "Origin" in request.headers:
            headers["Access-Control-Allow-Origin"] = request.headers["Origin"]
        return web.Response(text="ok", headers=headers)


async def test_passthrough_upstream_grant_is_not_logged_as_no_grant(origin, proxy, tmp_path):
    """README ("CORS and Referer policies"): `policy: cors-origin` in the request log means
    a request from an origin that gets no grant. In passthrough mode a request the
    upstream granted (`Access-Control-Allow-Origin` naming its Origin, passed on untouched)
    got a grant: its line must not say cors-origin, as it did not before Vary: Origin was
    added for such grants."""
    toml = PASSTHROUGH.replace('"{up}"\n', '"{up}"\n[log]\npath = "LOG"\n', 1)
    c = await start(origin, proxy, tmp_path, toml.replace("LOG", str(tmp_path / "log.json")),
                    up=Granting())
    resp = await c.get("/g", headers=A)
    assert resp.headers["Access-Control-Allow-Origin"] == "https://a.example"
    lines = await read_json_log(c)
    assert lines[-1]["policy"] is None
