"""Review varyref: an answer that varies on Referer, keyed on the Referer the upstream saw.

An upstream that answers `Vary: Referer` chose its answer by the Referer the proxy sent it:
the route's Referer policy (policies/referer.py forwarded_referer) drops a userinfo and the
fragment, strips the strip_params parameters, trims to the origin ("origin") or sends none
("strip"). RFC 9111 §4.1 lets a cache normalise selecting values "in a way that is known to
have identical semantics", and the value the upstream saw is that. What was looked at, with
the real proxy in front of real origins: every place Vary's selecting values are computed or
compared (the lookup, storing, a 304's refresh, hit-for-pass marks, collapsed waiters, the
Redis store's variant filter, the admin API's listing), on each kind of route (keep with
secrets, "origin", "strip", forward mode, behind the hotlink gate), a request without
Referer, and a reload that changes the policy. A test whose docstring gives a defect failed
before its fix; "what held" tests pin what passed.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from redis.asyncio import Redis
from redis_server import RedisServer
from support import proxy_for_toml as start
from support import raw_get, until
from test_review_referer_regressions import Origin

from cacheproxy.config import load_config
from cacheproxy.http.cache_key import SelectingFields, vary_values
from cacheproxy.http.flow import request_facts
from cacheproxy.policies.referer import RefererPolicy, forwarded_referer
from cacheproxy.proxy.server import reconfigure

VARY = '[proxy]\nupstream = "{up}"\n'
SECRET = "Referer: https://m.example/p?token={}&x=1"


async def listing(c: Any) -> str:
    return await (await c.get("/_cacheproxy/entries")).text()


def stored_referers(text: str) -> list[Any]:
    """The Referer values the admin API lists for the stored variants."""
    return [v["vary"].get("referer", "absent") for e in json.loads(text)["entries"]
            for v in e["variants"]]


class Gated:
    """An origin answering `Vary: Referer` with an ETag: 304 to its own tag, else the page
    with `fields`; each request's Referer and If-None-Match are kept, and while `gate` is
    not set the answers wait for it."""

    def __init__(self, **fields: str) -> None:
        self.fields = {"Cache-Control": "public, max-age=60", "Vary": "Referer",
                       "ETag": '"e1"', **fields}
        self.seen: list[tuple[str | None, str | None]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.app = web.Application()
        self.app.router.add_get("/{tail:.*}", self.answer)

    async def answer(self, request: web.Request) -> web.Response:
        self.seen.append((request.headers.get("Referer"), request.headers.get("If-None-Match")))
        await self.gate.wait()
        if request.headers.get("If-None-Match") == '"e1"':
            return web.Response(status=304, headers=self.fields)
        return web.Response(text="page", headers=self.fields)


# --- the selecting value, sans I/O ---------------------------------------------------------


def test_selecting_fields_read_each_referer_line_as_it_is_forwarded() -> None:
    """What the fix rests on: the Referer read for Vary is each line as request_fields
    forwards it (a line the policy drops is gone, as upstream), every other field as
    sent; a request without Referer is read from its own fields, no view made (a hit or a
    pass-through without Referer pays one look-up, no parse), and a Vary without Referer
    reads the client's own fields. Severity: n/a (sans I/O)."""
    def facts(h: CIMultiDictProxy[str], upstream_referer: str = "keep") -> Any:
        policy = RefererPolicy(upstream_referer=upstream_referer)
        return request_facts("GET", h, has_body=False,
                             referer_sent=lambda v: forwarded_referer(policy, v))

    h = CIMultiDictProxy(CIMultiDict([("Referer", "https://u:p@a.example/x?token=1#f"),
                                      ("Accept-Language", "FR"),
                                      ("Referer", "https://b.example/?sid=2")]))
    view = facts(h).selecting
    assert isinstance(view, SelectingFields)
    assert view.getall("REFERER", []) == ["https://a.example/x", "https://b.example/"]
    assert view.get("Referer") == "https://a.example/x"
    assert vary_values(("accept-language", "referer"), view) == (
        "fr", "https://a.example/x,https://b.example/")
    assert vary_values(("accept-language",), view) == ("fr",)
    none = CIMultiDictProxy(CIMultiDict([("Accept", "*/*")]))
    assert facts(none).selecting is none
    assert request_facts("GET", h, has_body=False).selecting is h
    assert facts(h, "strip").selecting.get("Referer") is None
    assert vary_values(("referer",), facts(h, "strip").selecting) == (None,)


# --- routes, with the real proxy ------------------------------------------------------------


async def test_without_a_referer_the_variant_is_the_request_without_one(origin, proxy, tmp_path):
    """A request without Referer is its own variant (the value is absent, §4.1), answered
    again from storage, as before (what held); one with a Referer is another, which was
    stored under the client's Referer, token and all, and is now stored under the Referer
    the upstream saw. Severity: low."""
    up = Origin(Vary="Referer")
    c = await start(origin, proxy, tmp_path, VARY, up=up)
    assert (await raw_get(c, "/v"))[1]["x-cache"] == "MISS"
    assert (await raw_get(c, "/v"))[1]["x-cache"] == "HIT"
    assert (await raw_get(c, "/v", SECRET.format("A")))[1]["x-cache"] == "MISS"
    assert up.referers == [[], ["https://m.example/p?x=1"]]
    assert sorted(stored_referers(await listing(c)), key=str) == [
        None, "https://m.example/p?x=1"]


async def test_a_strip_route_stores_one_variant_for_every_referer(origin, proxy, tmp_path):
    """With `upstream_referer = "strip"` the upstream saw no Referer at all, so its answer
    is the same for every request; the proxy stored one variant per client Referer (and
    listed each, secrets and all), a miss for every new page that linked to it. Now every
    request is the one variant (absent Referer). RFC 9111 §4.1. Severity: low."""
    up = Origin(Vary="Referer")
    c = await start(origin, proxy, tmp_path,
                    VARY + '[referer]\nupstream_referer = "strip"\n', up=up)
    for fields in ([SECRET.format("A")], [SECRET.format("B")], [],
                   ["Referer: https://other.example/"]):
        assert (await raw_get(c, "/v", *fields))[0] == 200
    assert up.referers == [[]]
    text = await listing(c)
    assert stored_referers(text) == [None] and "token" not in text


async def test_an_origin_route_shares_a_variant_between_pages_of_one_site(
        origin, proxy, tmp_path):
    """With `upstream_referer = "origin"` the upstream saw `https://m.example/` for every
    page of that site; the proxy keyed each page's full URL (its query and secrets too), a
    miss per page. Now the pages of one site share the variant; another site's is its
    own. RFC 9111 §4.1. Severity: low."""
    up = Origin(Vary="Referer")
    c = await start(origin, proxy, tmp_path,
                    VARY + '[referer]\nupstream_referer = "origin"\n', up=up)
    for referer in ("https://m.example/p?token=A", "https://m.example/q#x",
                    "https://other.example/p"):
        assert (await raw_get(c, "/v", f"Referer: {referer}"))[0] == 200
    assert up.referers == [["https://m.example/"], ["https://other.example/"]]
    assert sorted(stored_referers(await listing(c))) == [
        "https://m.example/", "https://other.example/"]


async def test_forward_mode_keys_on_the_referer_it_forwarded(origin, proxy, tmp_path):
    """Forward mode (a browser's proxy setting) applies the default route's strip_params
    to the Referer it forwards; its stored variants kept the client's, the session id in
    the store and the listing, one miss per token. Now as in reverse mode. RFC 9111 §4.1.
    Severity: low."""
    up = Origin(Vary="Referer")
    site = await origin(up.app)
    c = await start(origin, proxy, tmp_path,
                    VARY + '[forward]\nenabled = true\nallow_hosts = ["localhost"]\n', up=up)
    url = f"http://localhost:{site.port}/v"
    for secret in ("A", "B"):
        status, _, _ = await raw_get(c, url, SECRET.format(secret), host=f"localhost:{site.port}")
        assert status == 200
    assert up.referers == [["https://m.example/p?x=1"]]
    assert "token" not in await listing(c)


async def test_behind_the_hotlink_gate_a_refused_referer_is_never_a_variant(
        origin, proxy, tmp_path):
    """A protected path: the gate refuses an invalid Referer before the lookup (nothing is
    looked up, stored or forwarded for it); the valid ones are keyed as forwarded, so two
    pages differing in their token share the answer. Before, each token was a miss and
    its own stored variant. RFC 9111 §4.1; nginx's valid_referers. Severity: low."""
    up = Origin(Vary="Referer")
    c = await start(origin, proxy, tmp_path, VARY + '[referer]\nprotect_paths = ["/img/"]\n'
                    'valid_referers = ["m.example"]\n', up=up)
    assert (await raw_get(c, "/img/a", SECRET.format("A")))[0] == 200
    assert (await raw_get(c, "/img/a", "Referer: https://evil.example/?token=E"))[0] == 403
    assert (await raw_get(c, "/img/a", SECRET.format("B")))[1]["x-cache"] == "HIT"
    assert up.referers == [["https://m.example/p?x=1"]]
    assert stored_referers(await listing(c)) == ["https://m.example/p?x=1"]


async def test_redis_holds_no_secret_and_selects_by_the_forwarded_referer(
        origin, proxy, tmp_path, redis_server: RedisServer):
    """The Redis store filters a key's variants by the request's selecting values
    (store/redis.py _selectable): it held the client's Referer with its session id,
    readable by anyone with access to Redis, and another token was a miss for every
    replica. Now the variant is named by the Referer the upstream saw, and a replica's
    request with another token reads it. RFC 9111 §4.1. Severity: low."""
    up = Origin(Vary="Referer")
    c = await start(origin, proxy, tmp_path, VARY + '[cache]\nstore = "redis"\n'
                    f'redis_url = "{redis_server.url}"\nmemory_layer_bytes = 0\n', up=up)
    assert (await raw_get(c, "/v", SECRET.format("S3CRET1")))[1]["x-cache"] == "MISS"
    assert (await raw_get(c, "/v", SECRET.format("S3CRET2")))[1]["x-cache"] == "HIT"
    assert len(up.referers) == 1
    raw = Redis.from_url(redis_server.url)
    try:
        dumped = [await raw.hgetall(k) for k in await raw.keys("*")
                  if await raw.type(k) == b"hash"]
    finally:
        await raw.aclose()
    assert dumped and b"S3CRET" not in repr(dumped).encode()


async def test_a_304_refreshes_the_variant_another_token_selects(origin, proxy, tmp_path):
    """A stored answer to validate (no-cache) varying on Referer: a page with another
    session id did not select it (a vary-miss, fetched whole, stored beside it under its
    own token); now it selects it, is validated with its ETag (the origin's 304), and the
    refreshed response is stored as the one variant. RFC 9111 §4.1, §4.3.4. Severity: low."""
    up = Gated(**{"Cache-Control": "public, no-cache"})
    c = await start(origin, proxy, tmp_path, VARY, up=up)
    assert (await raw_get(c, "/v", SECRET.format("A")))[0] == 200
    status, head, _ = await raw_get(c, "/v", SECRET.format("B"))
    assert status == 200 and "fwd-status=304" in head["cache-status"]
    assert up.seen == [("https://m.example/p?x=1", None), ("https://m.example/p?x=1", '"e1"')]
    assert stored_referers(await listing(c)) == ["https://m.example/p?x=1"]


async def test_a_waiter_with_another_token_is_answered_by_its_leader(origin, proxy, tmp_path):
    """Two pages differing only in their session id ask for the same URL at once: the
    second waits behind the first (collapsed), then looked again with its own Referer,
    found the answer stored for the first's, and went upstream itself. The upstream's
    answer is the same for both (it saw the same Referer): now the waiter gets it. RFC
    9111 §4.1, §4 (collapsed requests). Severity: low."""
    up = Gated()
    up.gate.clear()
    c = await start(origin, proxy, tmp_path, VARY, up=up)
    leader = asyncio.ensure_future(raw_get(c, "/v", SECRET.format("A")))
    assert await until(lambda: len(up.seen) == 1)
    collapser = c.app_proxy.driver.collapser
    waiter = asyncio.ensure_future(raw_get(c, "/v", SECRET.format("B")))
    # (parked on the leader's future: asyncio.wait put its callback there)
    assert await until(lambda: any(f._callbacks for f in collapser._inflight.values()))
    up.gate.set()
    (s1, _, _), (s2, head, _) = await asyncio.gather(leader, waiter)
    assert (s1, s2) == (200, 200)
    assert "collapsed" in head["cache-status"]
    assert len(up.seen) == 1


async def test_a_hit_for_pass_mark_holds_for_another_token(origin, proxy, tmp_path):
    """An answer that may not be stored (no-store) and varies on Referer marks its variant
    hit-for-pass: the requests of that variant go as they are (their conditionals too,
    Varnish's pass), so the origin's 304 reaches a client that has the page. The mark was
    keyed on the client's Referer: a page with another session id was not in it, its
    If-None-Match was stripped for a fill that could not happen, and it got the whole page
    again. RFC 9111 §4.1, §4.3.2. Severity: low."""
    up = Gated(**{"Cache-Control": "no-store"})
    c = await start(origin, proxy, tmp_path, VARY, up=up)
    assert (await raw_get(c, "/v", SECRET.format("A")))[0] == 200
    status, _, _ = await raw_get(c, "/v", SECRET.format("B"), 'If-None-Match: "e1"')
    assert status == 304
    assert up.seen[-1] == ("https://m.example/p?x=1", '"e1"')


async def test_a_reload_that_changes_the_policy_never_serves_an_answer_made_for_another(
        origin, proxy, tmp_path):
    """Stored under `upstream_referer = "strip"`, the answer was made for a request without
    Referer. After a reload to "keep", a request with a Referer (which the upstream now
    sees) was served that answer, keyed on the client's Referer it had never seen: a wrong
    hit. Now entries keep the value the upstream saw under the policy they were stored
    with, and a request is read under the policy in force: a match means the upstream
    would see the same Referer (a right hit); otherwise it is a miss. RFC 9111 §4.1.
    Severity: low."""
    up = Origin(Vary="Referer")
    c = await start(origin, proxy, tmp_path,
                    VARY + '[referer]\nupstream_referer = "strip"\n', up=up)
    ref = "Referer: https://m.example/p?x=1"
    assert (await raw_get(c, "/v", ref))[1]["x-cache"] == "MISS"
    new = tmp_path / "new.toml"
    new.write_text(f'[proxy]\nupstream = "{c.app_proxy.plans.default.upstream}"\n')
    reconfigure(c.server.app, load_config(new, env={}))  # what SIGHUP does
    assert (await raw_get(c, "/v", ref))[1]["x-cache"] == "MISS"
    assert (await raw_get(c, "/v"))[1]["x-cache"] == "HIT"  # the upstream sees none: as stored
    assert up.referers == [[], ["https://m.example/p?x=1"]]
