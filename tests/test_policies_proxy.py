"""Routes, CORS and Referer through the running proxy (issue 3), against real origins.

Configs are written as TOML and loaded by load_config, so every case also goes through the
checks a user's file does. The browser's side of the same rules is tests/test_browser_policies.py.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from aiohttp import web
from support import proxy_for_toml as start
from support import read_json_log as read_log

from cacheproxy.config import Config
from cacheproxy.proxy.server import reconfigure

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478"
    "9c6360000002000100e221bc330000000049454e44ae426082")


class Site:
    """An origin that says who it is, counts requests by method and path, and keeps the
    Referer it was sent."""

    def __init__(self, name: str, **extra: str) -> None:
        self.name = name
        self.calls: Counter[str] = Counter()
        self.referers: list[str | None] = []
        self.extra = extra
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.answer)

    async def answer(self, request: web.Request) -> web.Response:
        self.calls[f"{request.method} {request.path}"] += 1
        self.referers.append(request.headers.get("Referer"))
        if request.path.startswith("/images/"):
            return web.Response(body=PNG, content_type="image/png",
                                headers={"Cache-Control": "public, max-age=60"})
        headers = {"Cache-Control": "public, max-age=60", "X-Site": self.name, **self.extra}
        return web.Response(text=f"{self.name} {request.path_qs}", headers=headers)


# -- routes -------------------------------------------------------------------------------------

ROUTES = """
[proxy]
upstream = "{main}"
[[routes]]
host = "api.example"
upstream = "{api}"
[[routes]]
host = "*.cdn.example"
path_prefix = "/static/"
upstream = "{cdn}"
[routes.cache]
max_object_bytes = 10
"""


async def test_the_first_matching_route_wins_and_the_default_is_proxy_upstream(
        origin, proxy, tmp_path):
    main, api, cdn = Site("main"), Site("api"), Site("cdn")
    c = await start(origin, proxy, tmp_path, ROUTES, main=main, api=api, cdn=cdn)

    async def site(path: str, host: str) -> str:
        resp = await c.get(path, headers={"Host": host})
        assert resp.status == 200
        return resp.headers["X-Site"]

    assert await site("/static/a.css", "API.example:8080") == "api"  # host, any case and port
    assert await site("/static/a.css", "img.cdn.example") == "cdn"
    assert await site("/static/a.css", "a.b.cdn.example") == "cdn"
    assert await site("/other", "img.cdn.example") == "main"  # path prefix not matched
    assert await site("/static/a.css", "cdn.example") == "main"  # *.x does not match x
    assert await site("/%73tatic/a.css", "img.cdn.example") == "cdn"  # normalised path
    assert await site("/", "elsewhere.example") == "main"


async def test_a_route_overrides_cache_settings(origin, proxy, tmp_path):
    main, api, cdn = Site("main"), Site("api"), Site("cdn")
    c = await start(origin, proxy, tmp_path, ROUTES, main=main, api=api, cdn=cdn)
    for _ in range(2):  # cdn: max_object_bytes = 10, so never stored
        resp = await c.get("/static/big.css", headers={"Host": "img.cdn.example"})
        assert resp.headers["X-Cache"] == "MISS"
    assert cdn.calls["GET /static/big.css"] == 2
    for _ in range(2):  # main: the top-level cache settings
        await c.get("/static/big.css", headers={"Host": "www.example"})
    assert main.calls["GET /static/big.css"] == 1


async def test_each_route_has_its_own_cache_entries_and_is_logged(origin, proxy, tmp_path):
    main, api, cdn = Site("main"), Site("api"), Site("cdn")
    log = tmp_path / "requests.log"
    c = await start(origin, proxy, tmp_path, ROUTES + f'[log]\npath = "{log}"\n',
                    main=main, api=api, cdn=cdn)
    await c.get("/x", headers={"Host": "api.example"})
    second = await c.get("/x", headers={"Host": "www.example"})
    assert second.headers["X-Site"] == "main" and second.headers["X-Cache"] == "MISS"
    routes = [line["route"] for line in await read_log(c) if line["path"] == "/x"]
    assert routes == ["routes[0]", "default"]


async def test_readyz_checks_every_route_upstream(origin, proxy, tmp_path):
    main, api, cdn = Site("main"), Site("api"), Site("cdn")
    c = await start(origin, proxy, tmp_path, ROUTES, main=main, api=api, cdn=cdn)
    ready = await (await c.get("/_cacheproxy/readyz")).json()
    assert ready["ready"] is True and len(ready["checks"]["upstreams"]) == 3


async def test_a_reload_replaces_the_routes(origin, proxy, tmp_path):
    main, api, cdn = Site("main"), Site("api"), Site("cdn")
    c = await start(origin, proxy, tmp_path, ROUTES, main=main, api=api, cdn=cdn)
    assert (await c.get("/n", headers={"Host": "api.example"})).headers["X-Site"] == "api"
    config: Config = c.app_proxy.config
    reconfigure(c.server.app, dataclasses.replace(config, routes=()))  # what SIGHUP does
    resp = await c.get("/m", headers={"Host": "api.example"})
    assert resp.headers["X-Site"] == "main"  # the route is gone: the default answers


# -- CORS ---------------------------------------------------------------------------------------

CORS = """
[proxy]
upstream = "{site}"
[cors]
allow_origins = ["https://app.example", "https://*.partner.example"]
allow_methods = ["GET", "PUT"]
allow_headers = ["X-Token"]
expose_headers = ["X-Site", "X-Cache"]
max_age = 300
"""


async def test_a_preflight_is_answered_by_the_proxy(origin, proxy, tmp_path):
    site = Site("site")
    c = await start(origin, proxy, tmp_path, CORS, site=site)
    resp = await c.options("/data", headers={
        "Origin": "https://a.partner.example", "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "x-token"})
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "https://a.partner.example"
    assert resp.headers["Access-Control-Allow-Methods"] == "GET, PUT"
    assert resp.headers["Access-Control-Allow-Headers"] == "X-Token"
    assert resp.headers["Access-Control-Max-Age"] == "300"
    assert "Origin" in resp.headers["Vary"]
    assert not site.calls  # the upstream never saw it


async def test_a_preflight_for_a_foreign_origin_method_or_header_gets_403_and_no_grant(
        origin, proxy, tmp_path):
    site = Site("site")
    log = tmp_path / "requests.log"
    c = await start(origin, proxy, tmp_path, CORS + f'[log]\npath = "{log}"\n', site=site)
    cases = [("https://evil.example", "PUT", None, "cors-origin"),
             ("https://app.example", "DELETE", None, "cors-method"),
             ("https://app.example", "PUT", "X-Other", "cors-header"),
             ("null", "GET", None, "cors-origin")]
    for origin_value, method, headers, _ in cases:
        request = {"Origin": origin_value, "Access-Control-Request-Method": method}
        if headers:
            request["Access-Control-Request-Headers"] = headers
        resp = await c.options("/data", headers=request)
        assert resp.status == 403
        assert "Access-Control-Allow-Origin" not in resp.headers
    assert not site.calls
    lines = [line for line in await read_log(c) if line["method"] == "OPTIONS"]
    assert [(x["cache"], x["policy"]) for x in lines] == [
        ("DENIED", reason) for *_, reason in cases]


async def test_a_grant_is_added_on_the_way_out_and_never_stored(origin, proxy, tmp_path):
    """Fetched for origin A, replayed for origin B: B sees its own grant, never A's; the
    stored entry holds none of the proxy's CORS fields, only the upstream's own, as it
    sent them (override mode replaces them on the way out, so a reload to passthrough
    serves them: test_review_corsreload_regressions.py)."""
    site = Site("site", **{"Access-Control-Allow-Origin": "*", "Vary": "Accept-Encoding"})
    c = await start(origin, proxy, tmp_path, CORS, site=site)
    a = await c.get("/shared", headers={"Origin": "https://app.example"})
    b = await c.get("/shared", headers={"Origin": "https://x.partner.example"})
    assert (a.headers["X-Cache"], b.headers["X-Cache"]) == ("MISS", "HIT")
    assert a.headers.getall("Access-Control-Allow-Origin") == ["https://app.example"]
    assert b.headers.getall("Access-Control-Allow-Origin") == ["https://x.partner.example"]
    assert b.headers["Access-Control-Expose-Headers"] == "X-Site, X-Cache"
    assert b.headers.getall("Vary") == ["Accept-Encoding, Origin"]  # merged, once
    foreign = await c.get("/shared", headers={"Origin": "https://evil.example"})
    assert foreign.headers["X-Cache"] == "HIT"
    assert "Access-Control-Allow-Origin" not in foreign.headers  # no grant: browser blocks
    assert "Origin" in foreign.headers["Vary"]
    plain = await c.get("/shared")  # no Origin: no grant, still Vary: Origin
    assert "Access-Control-Allow-Origin" not in plain.headers and "Origin" in plain.headers["Vary"]
    entry = await (await c.get("/_cacheproxy/entry", params={"url": "/shared"})).json()
    cors = [(name.lower(), value) for name, value in entry["variants"][0]["fields"]
            if name.lower().startswith("access-control-")]
    assert cors == [("access-control-allow-origin", "*")], entry  # the upstream's alone
    assert site.calls["GET /shared"] == 1


async def test_passthrough_leaves_the_upstreams_cors_fields_alone(origin, proxy, tmp_path):
    site = Site("site", **{"Access-Control-Allow-Origin": "https://own.example"})
    c = await start(origin, proxy, tmp_path, CORS + 'mode = "passthrough"\n', site=site)
    resp = await c.get("/p", headers={"Origin": "https://app.example"})
    assert resp.headers.getall("Access-Control-Allow-Origin") == ["https://own.example"]
    stored = await c.get("/p", headers={"Origin": "https://app.example"})
    assert stored.headers["X-Cache"] == "HIT"
    assert stored.headers.getall("Access-Control-Allow-Origin") == ["https://own.example"]


async def test_a_star_policy_without_credentials_answers_star(origin, proxy, tmp_path):
    """'*' refuses only "null" (never matched by a wildcard): that is still a dependence on
    Origin, so Vary: Origin; with "null" granted too, the answer is one for all, no Vary."""
    site = Site("site")
    c = await start(origin, proxy, tmp_path,
                    '[proxy]\nupstream = "{site}"\n[cors]\nallow_origins = ["*"]\n', site=site)
    resp = await c.get("/s", headers={"Origin": "https://anyone.example"})
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert resp.headers["Vary"] == "Origin"
    null = await c.get("/s", headers={"Origin": "null"})
    assert "Access-Control-Allow-Origin" not in null.headers
    c = await start(origin, proxy, tmp_path, '[proxy]\nupstream = "{site}"\n[cors]\n'
                    'allow_origins = ["*", "null"]\n', site=site)
    resp = await c.get("/t", headers={"Origin": "https://anyone.example"})
    assert resp.headers["Access-Control-Allow-Origin"] == "*" and "Vary" not in resp.headers


async def test_no_cors_config_means_the_proxy_stays_out_of_it(origin, proxy, tmp_path):
    site = Site("site", **{"Access-Control-Allow-Origin": "https://own.example"})
    c = await start(origin, proxy, tmp_path, '[proxy]\nupstream = "{site}"\n', site=site)
    resp = await c.options("/o", headers={"Origin": "https://a.example",
                                          "Access-Control-Request-Method": "PUT"})
    assert resp.status == 200 and site.calls["OPTIONS /o"] == 1  # the upstream answers it
    got = await c.get("/o", headers={"Origin": "https://a.example"})
    assert got.headers.getall("Access-Control-Allow-Origin") == ["https://own.example"]


async def test_a_route_has_its_own_cors_policy(origin, proxy, tmp_path):
    site, api = Site("site"), Site("api")
    toml = CORS + '[[routes]]\npath_prefix = "/api/"\nupstream = "{api}"\n' \
        '[routes.cors]\nallow_origins = ["https://api-client.example"]\n'
    c = await start(origin, proxy, tmp_path, toml, site=site, api=api)
    resp = await c.get("/api/x", headers={"Origin": "https://api-client.example"})
    assert resp.headers["Access-Control-Allow-Origin"] == "https://api-client.example"
    # The route's other keys are the top-level ones: expose_headers came along.
    assert resp.headers["Access-Control-Expose-Headers"] == "X-Site, X-Cache"
    resp = await c.get("/api/x", headers={"Origin": "https://app.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers
    top = await c.get("/x", headers={"Origin": "https://app.example"})
    assert top.headers["Access-Control-Allow-Origin"] == "https://app.example"


# -- Referer ------------------------------------------------------------------------------------

HOTLINK = """
[proxy]
upstream = "{site}"
[referer]
protect_paths = ["/images/"]
valid_referers = ["none", "blocked", "server_names", "*.friend.example"]
"""


async def test_a_hotlinker_is_refused_before_the_cache(origin, proxy, tmp_path):
    site = Site("site")
    log = tmp_path / "requests.log"
    c = await start(origin, proxy, tmp_path, HOTLINK + f'[log]\npath = "{log}"\n', site=site)
    own = await c.get("/images/a.png", headers={"Host": "shop.example",
                                                "Referer": "https://shop.example/page"})
    assert own.status == 200 and await own.read() == PNG
    friend = await c.get("/images/a.png", headers={"Host": "shop.example",
                                                   "Referer": "http://www.friend.example/"})
    assert friend.status == 200 and friend.headers["X-Cache"] == "HIT"
    assert (await c.get("/images/a.png", headers={"Host": "shop.example"})).status == 200
    thief = await c.get("/images/a.png", headers={"Host": "shop.example",
                                                  "Referer": "https://thief.example/x"})
    assert thief.status == 403 and await thief.read() != PNG
    assert thief.headers["Cache-Control"] == "no-store"
    assert thief.headers["X-Cache"] == "MISS"  # not the stored image
    odd = await c.get("/%69mages/a.png", headers={"Referer": "https://thief.example/x"})
    assert odd.status == 403  # an encoded path is the same path
    assert (await c.get("/page", headers={"Referer": "https://thief.example/"})).status == 200
    assert site.calls["GET /images/a.png"] == 1
    denied = [x for x in await read_log(c) if x["status"] == 403]
    assert [(x["cache"], x["policy"]) for x in denied] == [("DENIED", "referer-invalid")] * 2


async def test_on_invalid_can_redirect_or_serve_a_placeholder(origin, proxy, tmp_path):
    site = Site("site")
    c = await start(origin, proxy, tmp_path,
                    HOTLINK + 'on_invalid = "https://shop.example/no-hotlinking"\n', site=site)
    resp = await c.get("/images/a.png", headers={"Referer": "https://thief.example/"},
                       allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "https://shop.example/no-hotlinking"
    placeholder = tmp_path / "hotlink.png"
    placeholder.write_bytes(PNG[:-4] + b"PLCH")
    other = tmp_path / "other"
    other.mkdir()
    c = await start(origin, proxy, other, HOTLINK + f'on_invalid = "{placeholder}"\n', site=site)
    resp = await c.get("/images/a.png", headers={"Referer": "https://thief.example/"})
    assert resp.status == 200 and await resp.read() == PNG[:-4] + b"PLCH"
    assert resp.headers["Content-Type"] == "image/png"
    assert resp.headers["Cache-Control"] == "no-store"


async def test_referrer_policy_is_set_unless_the_upstream_has_one(origin, proxy, tmp_path):
    plain, own = Site("plain"), Site("own", **{"Referrer-Policy": "no-referrer"})
    c = await start(origin, proxy, tmp_path, '[proxy]\nupstream = "{plain}"\n', plain=plain)
    resp = await c.get("/r")
    assert resp.headers.getall("Referrer-Policy") == ["strict-origin-when-cross-origin"]
    assert (await c.get("/r")).headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
    c = await start(origin, proxy, tmp_path, '[proxy]\nupstream = "{own}"\n', own=own)
    assert (await c.get("/r")).headers.getall("Referrer-Policy") == ["no-referrer"]
    c = await start(origin, proxy, tmp_path, '[proxy]\nupstream = "{own}"\n[referer]\n'
                    'policy = "same-origin"\npolicy_override = true\n', own=own)
    assert (await c.get("/r")).headers.getall("Referrer-Policy") == ["same-origin"]


async def test_secret_parameters_never_reach_the_upstream_in_a_referer(origin, proxy, tmp_path):
    site = Site("site")
    c = await start(origin, proxy, tmp_path, '[proxy]\nupstream = "{site}"\n', site=site)
    await c.get("/a", headers={
        "Referer": "https://mail.example/inbox?gsid=SECRET&x=1&Token=t2#frag"})
    assert site.referers[-1] == "https://mail.example/inbox?x=1"
    c = await start(origin, proxy, tmp_path, '[proxy]\nupstream = "{site}"\n[referer]\n'
                    'upstream_referer = "origin"\n', site=site)
    await c.get("/b", headers={"Referer": "https://mail.example:443/inbox?gsid=S"})
    assert site.referers[-1] == "https://mail.example/"
    c = await start(origin, proxy, tmp_path, '[proxy]\nupstream = "{site}"\n[referer]\n'
                    'upstream_referer = "strip"\n', site=site)
    await c.get("/c", headers={"Referer": "https://mail.example/inbox"})
    assert site.referers[-1] is None


async def test_a_same_origin_request_without_a_grant_is_not_logged_as_refused(
        origin, proxy, tmp_path):
    """Browsers send Origin on same-origin POSTs too; the page reads those without CORS."""
    site = Site("site")
    log = tmp_path / "requests.log"
    c = await start(origin, proxy, tmp_path, CORS + f'[log]\npath = "{log}"\n', site=site)
    await c.post("/form", headers={"Origin": "http://shop.example", "Host": "shop.example"})
    await c.post("/form", headers={"Origin": "https://evil.example", "Host": "shop.example"})
    assert [x["policy"] for x in await read_log(c)] == [None, "cors-origin"]
