"""Regressions found reviewing the CORS and Referer policies (review-cors).

Each test says what is expected and why, with the section of the standard it follows.
"""

from __future__ import annotations

from aiohttp import web
from browser import chromium
from support import proxy_for_toml as start
from support import read_json_log


class Reflecting:
    """An origin whose CORS grant reflects the request's Origin, without Vary: Origin (a
    common upstream mistake passthrough mode must not turn into a shared-cache one)."""

    def __init__(self) -> None:
        self.calls = 0
        self.referers: list[str | None] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.answer)

    async def answer(self, request: web.Request) -> web.Response:
        self.calls += 1
        self.referers.append(request.headers.get("Referer"))
        headers = {"Cache-Control": "public, max-age=60"}
        if request.path == "/page":
            return web.Response(text="<!doctype html><title>p</title>", content_type="text/html")
        if "Origin" in request.headers:
            headers["Access-Control-Allow-Origin"] = request.headers["Origin"]
        return web.Response(text="data", headers=headers)


PASSTHROUGH = """
[proxy]
upstream = "{up}"
[cors]
allow_origins = ["https://a.example", "https://b.example", "{pages}"]
mode = "passthrough"
"""


async def test_passthrough_does_not_replay_one_origins_upstream_grant_to_another(
        origin, proxy, tmp_path):
    """Fetch standard §3.2 ("CORS protocol and HTTP caches"): a response whose
    Access-Control-Allow-Origin names the requesting origin depends on Origin, so a cache
    must not hand it to a request from another origin. In passthrough mode the upstream's
    grant is kept, and stored: a stored `Access-Control-Allow-Origin: https://a.example`
    must not be what https://b.example (which the upstream and [cors] both grant) gets
    from storage, and what goes out must say `Vary: Origin` so no cache further on reuses
    it either."""
    up = Reflecting()
    c = await start(origin, proxy, tmp_path,
                    PASSTHROUGH.replace("{pages}", "https://c.example"), up=up)
    first = await c.get("/r", headers={"Origin": "https://a.example"})
    assert first.headers["Access-Control-Allow-Origin"] == "https://a.example"
    assert "origin" in first.headers.get("Vary", "").lower()
    second = await c.get("/r", headers={"Origin": "https://b.example"})
    assert second.headers.getall("Access-Control-Allow-Origin") == ["https://b.example"]
    assert "origin" in second.headers.get("Vary", "").lower()
    plain = await c.get("/r")
    assert "https://a.example" not in plain.headers.getall("Access-Control-Allow-Origin", [])


async def test_passthrough_grant_for_one_page_origin_does_not_block_another_in_chromium(
        origin, proxy, tmp_path):
    """The same in Chromium: a page on http://127.0.0.1:P fetches a resource (the upstream
    grants it, the response is stored), then a page on http://localhost:P, also granted,
    fetches it. Fetch §3.2.5 (CORS check): the browser refuses a response whose
    Access-Control-Allow-Origin is not its own origin, so a replayed grant for the first
    page makes the second page's fetch fail ("blocked by CORS policy")."""
    up = Reflecting()
    pages = await origin(up.app)  # the pages' origins: 127.0.0.1:P and localhost:P
    port = pages.port
    toml = PASSTHROUGH.replace(
        '"{pages}"', f'"http://127.0.0.1:{port}", "http://localhost:{port}"')
    c = await start(origin, proxy, tmp_path, toml, up=up)
    url = f"http://127.0.0.1:{c.port}/shared"
    results = []
    async with chromium() as browser:
        for host in ("127.0.0.1", "localhost"):
            context = await browser.new_context()
            page = await context.new_page()
            await page.goto(f"http://{host}:{port}/page")
            results.append(await page.evaluate(
                "async (u) => { try { const r = await fetch(u); return await r.text(); }"
                " catch (e) { return String(e); } }", url))
            await context.close()
    assert results == ["data", "data"]


class Recording:
    """An origin that keeps the Referer it was sent, and answers "ok" with cache_control."""

    def __init__(self, cache_control: str = "no-store") -> None:
        self.referers: list[str | None] = []
        self.cache_control = cache_control
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.answer)

    async def answer(self, request: web.Request) -> web.Response:
        self.referers.append(request.headers.get("Referer"))
        return web.Response(text="ok", headers={"Cache-Control": self.cache_control})


LOGGED = """
[proxy]
upstream = "{up}"
[log]
path = "LOG"
"""


async def _referer_round(origin, proxy, tmp_path, referer: str, target: str = "/x"):
    up = Recording()
    c = await start(origin, proxy, tmp_path,
                    LOGGED.replace("LOG", str(tmp_path / "log.json")), up=up)
    resp = await c.get(target, headers={"Referer": referer})
    assert resp.status == 200
    lines = await read_json_log(c)
    return up.referers[-1], lines[-1]


async def test_strip_params_also_removes_semicolon_separated_parameters(
        origin, proxy, tmp_path):
    """A session id after a `;` (`?lang=en;sid=SECRET`) is a parameter to every server that
    takes `;` as a separator as HTML 4.01 §B.2.2 recommended (Perl's CGI, Rack before 3.0,
    Python before 3.9.2): strip_params exists so the secret never reaches the upstream or
    the log (W3C Referrer Policy §1 on leaking session ids; README "Referer: leaks"), so it
    must go whichever separator stands before it; the other parameters stay as they were."""
    sent, line = await _referer_round(
        origin, proxy, tmp_path, "http://site.example/inbox?lang=en;sid=SECRET&x=1",
        "/x?a=1;token=SECRET2")
    assert sent == "http://site.example/inbox?lang=en&x=1"
    assert "SECRET" not in str(line)


async def test_log_redacts_secret_parameters_in_a_fragment(origin, proxy, tmp_path):
    """An OAuth implicit-flow return URL carries its token in the fragment
    (`#access_token=...`, RFC 6749 §4.2.2). Browsers never send a fragment (Fetch §4.1,
    Referrer Policy §8.3 strips it), and the proxy drops it upstream; a client that does send
    one must not get the token written to the request log either (README: strip_params
    values are REDACTED in the log)."""
    sent, line = await _referer_round(
        origin, proxy, tmp_path, "http://site.example/cb#access_token=SECRET&state=1")
    assert sent == "http://site.example/cb"
    assert "SECRET" not in str(line)


async def test_forwarded_referer_drops_userinfo(origin, proxy, tmp_path):
    """W3C Referrer Policy §8.3 (strip url for use as a referrer): a referrer never carries
    a username or password. A browser strips them itself; a Referer that still has them
    (`http://user:pass@host/`, from another kind of client) must not carry the password
    to the upstream ("keep" keeps the URL, not credentials in it)."""
    sent, _ = await _referer_round(
        origin, proxy, tmp_path, "http://user:SECRET@site.example/page?a=1")
    assert sent == "http://site.example/page?a=1"


def test_null_origin_with_credentials_is_refused_at_start(tmp_path):
    """Any page can send `Origin: null`: a sandboxed iframe (`<iframe sandbox=
    "allow-scripts" srcdoc=...>`, HTML §7.1 opaque origins) on any site does. Granting
    "null" with credentials therefore hands every site a credentialed read, the very
    reason `*` and a catch-all `~regex` are refused with allow_credentials (Fetch §3.2.5).
    Reviewed in headless Chromium: a sandboxed iframe on http://localhost:P read a
    `credentials: "include"` response through the proxy configured so. The start must
    stop, naming the key, for the top-level section and a route's."""
    import pytest

    from cacheproxy.config import load_config
    from cacheproxy.config.values import ConfigError

    path = tmp_path / "cacheproxy.toml"
    path.write_text('[proxy]\nupstream = "http://127.0.0.1:9"\n[cors]\n'
                    'allow_origins = ["https://app.example", "null"]\nallow_credentials = true\n')
    with pytest.raises(ConfigError) as top:
        load_config(path, env={})
    assert top.value.key == "cors.allow_origins"
    path.write_text('[proxy]\nupstream = "http://127.0.0.1:9"\n[[routes]]\nhost = "a.example"\n'
                    'upstream = "http://127.0.0.1:9"\n[routes.cors]\nallow_origins = ["null"]\n'
                    'allow_credentials = true\n')
    with pytest.raises(ConfigError) as routed:
        load_config(path, env={})
    assert routed.value.key == "routes[0].cors.allow_origins"
