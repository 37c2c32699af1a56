"""The CORS and Referer policies as a real browser meets them (Debian's headless Chromium,
driven by Playwright), with pages and resources on different origins through the proxy.

Each test starts an aiohttp origin of its own behind a real proxy on 127.0.0.1, and page
servers on other origins: http://127.0.0.1:A, http://localhost:A and http://127.0.0.1:B are
three origins. The hotlink test needs a third *host*: Chromium maps ``*.test`` to 127.0.0.1
(--host-resolver-rules), so no request leaves the loopback interface.

What the browser does is the proof: a fetch the browser withholds rejects with
"TypeError: Failed to fetch" and logs "blocked by CORS policy"; an <img> the proxy refuses has
naturalWidth 0; the Referer a navigation sends follows the Referrer-Policy the proxy set. The
upstream counts and records what reached it, so "never reached the upstream" is checked too.

A browser that cannot start fails these tests: they never skip.
"""

from __future__ import annotations

import asyncio
import json
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from browser import chromium
from playwright.async_api import Browser, Page, Request, Response

from cacheproxy.observe.record import LogRecord
from cacheproxy.proxy.server import OBSERVER

# A third host name for the hotlinker page, still on loopback: nothing is looked up.
HOSTS_ON_LOOPBACK = "--host-resolver-rules=MAP *.test 127.0.0.1"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "hotlinker.test"})
CORS_BLOCKED = "blocked by CORS policy"

Start = Callable[[web.Application], Awaitable[TestServer]]
Proxy = Callable[..., Awaitable[TestClient]]


# --- the browser ----------------------------------------------------------------------------


@dataclass
class Tab:
    """A page in a context of its own (own cookies, empty HTTP cache) and what it saw."""

    page: Page
    console: list[str] = field(default_factory=list)
    responses: list[Response] = field(default_factory=list)

    def response_for(self, path: str) -> Response:
        found = [r for r in self.responses if urlsplit(r.url).path == path]
        assert len(found) == 1, f"{path}: {[r.url for r in self.responses]}"
        return found[0]

    async def fetch(self, url: str, init: dict[str, Any] | None = None) -> dict[str, Any]:
        """fetch(url, init) in the page: the status, body and readable fields, or the error."""
        return await self.page.evaluate(
            """async ([url, init]) => {
                try {
                    const r = await fetch(url, init);
                    const headers = {};
                    r.headers.forEach((value, name) => { headers[name] = value; });
                    return {status: r.status, body: await r.text(), headers};
                } catch (e) {
                    return {error: String(e)};
                }
            }""",
            [url, init or {}],
        )

    async def load_image(self, url: str) -> dict[str, Any]:
        """An <img> added to the page: which event fired and its natural size."""
        return await self.page.evaluate(
            """(url) => new Promise((resolve) => {
                const img = document.createElement("img");
                const done = (event) => resolve(
                    {event, width: img.naturalWidth, height: img.naturalHeight});
                img.onload = () => done("load");
                img.onerror = () => done("error");
                img.src = url;
                document.body.append(img);
            })""",
            url,
        )

    def cors_errors(self) -> list[str]:
        return [m for m in self.console if CORS_BLOCKED in m]

    async def wait_cors_error(self) -> list[str]:
        """The "blocked by CORS policy" console messages, which may come just after the
        fetch() promise settles."""
        for _ in range(100):
            if found := self.cors_errors():
                return found
            await asyncio.sleep(0.02)
        return []


class Tabs:
    """Opens each page in a new browser context, and notes any request a page makes to a
    host other than the loopback names these tests use."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.foreign: list[str] = []

    def _watch(self, request: Request) -> None:
        url = urlsplit(request.url)
        if url.scheme in ("http", "https") and url.hostname not in LOOPBACK:
            self.foreign.append(request.url)

    async def open(self, url: str | None = None, cookies: list[Any] = ()) -> Tab:
        context = await self.browser.new_context()
        if cookies:
            await context.add_cookies(cookies)
        page = await context.new_page()
        tab = Tab(page)
        page.on("console", lambda m: tab.console.append(m.text))
        page.on("response", lambda r: tab.responses.append(r))
        page.on("request", self._watch)
        if url is not None:
            response = await page.goto(url)
            assert response is not None and response.status == 200, url
        return tab


@pytest.fixture
async def tabs() -> AsyncIterator[Tabs]:
    """One Chromium per test (Playwright's async objects belong to the test's own loop),
    a new context per page."""
    async with chromium(HOSTS_ON_LOOPBACK) as browser:
        opened = Tabs(browser)
        yield opened
    assert not opened.foreign, f"requests left the loopback: {opened.foreign}"


# --- servers ------------------------------------------------------------------------------


def tiny_png(width: int = 3, height: int = 2) -> bytes:
    """A valid RGB PNG of width x height red pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


PNG = tiny_png()
BLANK = "<!doctype html><html><head><title>page</title></head><body></body></html>"


@dataclass
class Seen:
    method: str
    path: str  # path and query
    headers: dict[str, str]


class Upstream:
    """The origin behind the proxy: it records every request it is asked."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.page_policy: str | None = None  # a Referrer-Policy of the origin's own
        self.link = ""  # where /page links to
        self.app = web.Application(middlewares=[self._record])
        r = self.app.router
        r.add_get("/api/data", self.data)
        r.add_put("/api/item", self.put_item)
        r.add_route("OPTIONS", "/api/item", self.options)
        r.add_get("/api/shared", self.shared)
        r.add_get("/api/private", self.private)
        r.add_get("/images/logo.png", self.image)
        r.add_get("/gallery", self.gallery)
        r.add_get("/page", self.page)
        r.add_get("/next", self.next)

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.seen.append(Seen(request.method, request.raw_path, dict(request.headers)))
        return await handler(request)

    def requests(self, path: str, method: str | None = None) -> list[Seen]:
        return [s for s in self.seen
                if urlsplit(s.path).path == path and method in (None, s.method)]

    async def data(self, request: web.Request) -> web.Response:
        return web.json_response({"data": 42}, headers={"Cache-Control": "no-store"})

    async def put_item(self, request: web.Request) -> web.Response:
        return web.json_response({"stored": await request.json()},
                                 headers={"Cache-Control": "no-store"})

    async def options(self, request: web.Request) -> web.Response:
        return web.Response(status=200, headers={  # a lax upstream: the proxy must answer
            "Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "*",
            "Access-Control-Allow-Headers": "*"})

    async def shared(self, request: web.Request) -> web.Response:
        # A grant of the upstream's own that "override" must neither store nor pass on.
        return web.json_response({"shared": True}, headers={
            "Cache-Control": "public, max-age=60", "Vary": "Accept-Encoding",
            "Access-Control-Allow-Origin": "*"})

    async def private(self, request: web.Request) -> web.Response:
        return web.json_response({"cookie": request.headers.get("Cookie")},
                                 headers={"Cache-Control": "private, no-store"})

    async def image(self, request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png",
                            headers={"Cache-Control": "public, max-age=60"})

    async def gallery(self, request: web.Request) -> web.Response:
        return self._html('<img id="logo" src="/images/logo.png" alt="logo">')

    async def page(self, request: web.Request) -> web.Response:
        return self._html(f'<a id="next" href="{self.link}">next</a>')

    async def next(self, request: web.Request) -> web.Response:
        return self._html("<p id=arrived>arrived</p>")

    def _html(self, body: str) -> web.Response:
        headers = {"Cache-Control": "no-store"}
        if self.page_policy is not None:
            headers["Referrer-Policy"] = self.page_policy
        return web.Response(text=f"<!doctype html><html><body>{body}</body></html>",
                            content_type="text/html", headers=headers)


def pages_app() -> web.Application:
    """A page server: a blank page to run fetch() and <img> from, on whichever origin
    (host and port) the browser reaches it by."""
    async def blank(request: web.Request) -> web.Response:
        return web.Response(text=BLANK, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", blank)
    return app


def base(server: TestServer | TestClient, host: str = "127.0.0.1") -> str:
    port = server.port if isinstance(server, TestServer) else server.server.port
    return f"http://{host}:{port}"


async def proxy_records(client: TestClient, path: str, count: int) -> list[LogRecord]:
    """The proxy's log records for path, once count of them are in (a record is added
    when the response is done, which may be just after the browser has it)."""
    stats = client.server.app[OBSERVER].stats
    for _ in range(100):
        found = [r for r in stats.recent_records() if urlsplit(r.path).path == path]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.02)
    return found


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


# --- 1. CORS: fetch, preflight, credentials -----------------------------------------------


async def cors_setup(origin: Start, proxy: Proxy, upstream: Upstream,
                     **cors: Any) -> tuple[TestClient, str, str, str]:
    """The upstream behind a proxy that grants http://127.0.0.1:A only; a page server on
    port A. Returns the proxy, its URL, the allowed page origin and a refused one
    (http://localhost:A: the same server and port, another origin)."""
    up = await origin(upstream.app)
    pages = await origin(pages_app())
    allowed, other = base(pages), base(pages, "localhost")
    client = await proxy(up, cors={"allow_origins": (allowed,), **cors})
    return client, base(client), allowed, other


async def test_fetch_granted_to_allowed_origin_blocked_for_another(
    origin: Start, proxy: Proxy, upstream: Upstream, tabs: Tabs
) -> None:
    client, cdn, allowed, other = await cors_setup(origin, proxy, upstream)

    good = await tabs.open(allowed + "/")
    got = await good.fetch(cdn + "/api/data")
    assert got.get("status") == 200, got
    assert json.loads(got["body"]) == {"data": 42}
    assert not good.cors_errors()
    head = await good.response_for("/api/data").all_headers()
    assert head["access-control-allow-origin"] == allowed
    assert "Origin" in [member.strip() for member in head["vary"].split(",")]

    bad = await tabs.open(other + "/")
    got = await bad.fetch(cdn + "/api/data")
    assert got == {"error": "TypeError: Failed to fetch"}
    blocked = await bad.wait_cors_error()
    assert blocked and f"from origin '{other}'" in blocked[0], bad.console
    # A simple GET reaches the server; the browser withholds the answer. It had no grant.
    sent = upstream.requests("/api/data")
    assert [s.headers.get("Origin") for s in sent] == [allowed, other]
    records = await proxy_records(client, "/api/data", 2)
    assert [r.policy for r in records] == [None, "cors-origin"]


async def test_preflighted_put_answered_by_proxy(
    origin: Start, proxy: Proxy, upstream: Upstream, tabs: Tabs
) -> None:
    client, cdn, allowed, _ = await cors_setup(
        origin, proxy, upstream, allow_methods=("GET", "PUT"),
        allow_headers=("X-Token", "Content-Type"))
    tab = await tabs.open(allowed + "/")

    put = {"method": "PUT", "body": json.dumps({"n": 1}),
           "headers": {"X-Token": "t0k3n", "Content-Type": "application/json"}}
    got = await tab.fetch(cdn + "/api/item", put)
    assert got.get("status") == 200, (got, tab.console)
    assert json.loads(got["body"]) == {"stored": {"n": 1}}
    # The upstream saw the PUT with its header, and never the preflight.
    assert [(s.method, s.headers.get("X-Token")) for s in upstream.seen] == [("PUT", "t0k3n")]
    records = await proxy_records(client, "/api/item", 2)
    assert [(r.method, r.status, r.cache, r.policy) for r in records] == [
        ("OPTIONS", 204, "BYPASS", "cors-preflight"), ("PUT", 200, "BYPASS", None)]

    # A header the policy does not list: the preflight is refused, the PUT never sent.
    put["headers"] = {"X-Other": "1"}
    got = await tab.fetch(cdn + "/api/item", put)
    assert got == {"error": "TypeError: Failed to fetch"}
    blocked = await tab.wait_cors_error()
    assert blocked and "preflight" in blocked[0], tab.console
    assert len(upstream.seen) == 1  # still only the first PUT
    records = await proxy_records(client, "/api/item", 3)
    assert (records[2].method, records[2].status, records[2].cache, records[2].policy) == (
        "OPTIONS", 403, "DENIED", "cors-header")


async def test_credentialed_fetch_with_cookie(
    origin: Start, proxy: Proxy, upstream: Upstream, tabs: Tabs
) -> None:
    _, cdn, allowed, other = await cors_setup(
        origin, proxy, upstream, allow_credentials=True)
    # Cookies ignore ports: one for 127.0.0.1 goes to the proxy's port too (same site).
    cookie = {"name": "session", "value": "c00kie", "domain": "127.0.0.1", "path": "/"}

    tab = await tabs.open(allowed + "/", cookies=[cookie])
    got = await tab.fetch(cdn + "/api/private", {"credentials": "include"})
    assert got.get("status") == 200, (got, tab.console)
    assert json.loads(got["body"]) == {"cookie": "session=c00kie"}
    head = await tab.response_for("/api/private").all_headers()
    assert head["access-control-allow-origin"] == allowed
    assert head["access-control-allow-credentials"] == "true"

    # Without credentials mode the cookie stays home, and the grant still works.
    got = await tab.fetch(cdn + "/api/private")
    assert got.get("status") == 200 and json.loads(got["body"]) == {"cookie": None}

    # The same credentialed fetch from another origin: blocked.
    bad = await tabs.open(other + "/", cookies=[cookie])
    got = await bad.fetch(cdn + "/api/private", {"credentials": "include"})
    assert got == {"error": "TypeError: Failed to fetch"}
    assert await bad.wait_cors_error(), bad.console


# --- 2. one stored response, a grant per origin ----------------------------------------------


async def test_cached_response_granted_per_origin(
    origin: Start, proxy: Proxy, upstream: Upstream, tabs: Tabs
) -> None:
    up = await origin(upstream.app)
    first, second, third = [await origin(pages_app()) for _ in range(3)]
    origins = [base(first), base(second, "localhost"), base(third)]
    client = await proxy(up, cors={"allow_origins": tuple(origins[:2]),
                                   "expose_headers": ("X-Cache", "Age")})
    url = base(client) + "/api/shared"

    seen = []
    for page_origin in origins[:2]:
        tab = await tabs.open(page_origin + "/")  # its own context: no browser cache
        got = await tab.fetch(url)
        assert got.get("status") == 200, (got, tab.console)
        assert json.loads(got["body"]) == {"shared": True}
        head = await tab.response_for("/api/shared").all_headers()
        # Its own origin only: the upstream's "*" is replaced, the first grant not replayed.
        assert head["access-control-allow-origin"] == page_origin
        assert [m.strip() for m in head["vary"].split(",")] == ["Accept-Encoding", "Origin"]
        seen.append((got["headers"].get("x-cache"), "age" in got["headers"]))
    assert seen == [("MISS", False), ("HIT", True)]  # read through expose_headers
    assert len(upstream.requests("/api/shared")) == 1

    bad = await tabs.open(origins[2] + "/")
    got = await bad.fetch(url)
    assert got == {"error": "TypeError: Failed to fetch"}
    assert await bad.wait_cors_error(), bad.console
    assert len(upstream.requests("/api/shared")) == 1  # served from the store, no grant
    records = await proxy_records(client, "/api/shared", 3)
    assert [(r.cache, r.policy) for r in records] == [
        ("MISS", None), ("HIT", None), ("HIT", "cors-origin")]

    # The one stored response carries no grant given, only the upstream's own "*" (which
    # override replaces on the way out, above), and varies by what the upstream said only:
    # one entry serves every origin.
    store = client.app_proxy.store  # type: ignore[attr-defined]
    (key,) = await store.keys()
    (entry,) = await store.get(key)
    assert entry.vary == ("accept-encoding",)
    assert entry.get("Cache-Control") == "public, max-age=60"
    assert [name.lower() for name in entry.headers[::2]
            if name.lower().startswith("access-control-")] == ["access-control-allow-origin"]
    assert entry.get("Access-Control-Allow-Origin") == "*"


# --- 3. hotlink protection ---------------------------------------------------------------


async def test_image_loads_on_allowed_pages_refused_when_hotlinked(
    origin: Start, proxy: Proxy, upstream: Upstream, tabs: Tabs
) -> None:
    up = await origin(upstream.app)
    pages = await origin(pages_app())
    client = await proxy(up, referer={
        "protect_paths": ("/images/",),
        "valid_referers": ("none", "server_names", "localhost")})
    cdn = base(client)  # the image's host is 127.0.0.1: server_names
    image = cdn + "/images/logo.png"

    # A page on an allowed host (the "localhost" entry) loads it: MISS, then stored.
    friend = await tabs.open(base(pages, "localhost") + "/")
    assert await friend.load_image(image) == {"event": "load", "width": 3, "height": 2}
    assert upstream.requests("/images/logo.png")[0].headers.get("Referer") == \
        base(pages, "localhost") + "/"

    # A page on another host hotlinks it: refused, although a copy is stored.
    thief = await tabs.open(base(pages, "hotlinker.test") + "/")
    assert await thief.load_image(image) == {"event": "error", "width": 0, "height": 0}
    refused = thief.response_for("/images/logo.png")
    assert refused.status == 403
    assert await refused.body() != PNG
    assert (await refused.all_headers())["cache-control"] == "no-store"
    assert len(upstream.requests("/images/logo.png")) == 1

    # The proxy's own page (server_names), and no Referer at all ("none"): the stored copy.
    own = await tabs.open(cdn + "/gallery")
    width = await own.page.evaluate(
        "() => new Promise(r => { const i = document.getElementById('logo');"
        " i.complete ? r(i.naturalWidth) : i.onload = () => r(i.naturalWidth); })")
    assert width == 3
    direct = await tabs.open()
    response = await direct.page.goto(image)
    assert response is not None and response.status == 200
    assert await response.body() == PNG
    assert len(upstream.requests("/images/logo.png")) == 1
    records = await proxy_records(client, "/images/logo.png", 4)
    assert [(r.status, r.cache, r.policy) for r in records] == [
        (200, "MISS", None), (403, "DENIED", "referer-invalid"),
        (200, "HIT", None), (200, "HIT", None)]
    assert records[1].referer == base(pages, "hotlinker.test") + "/"


# --- 4. Referrer-Policy and the Referer the upstream sees -----------------------------------
# A page served through the proxy (http://127.0.0.1:P/page?gsid=SECRET&x=1) links to
# http://localhost:P/next: the same proxy, another origin, so the policies differ. The browser's
# own Referer is read from Playwright, the upstream's from what reached it.


@pytest.mark.parametrize(
    ("referer", "page_policy", "sent", "policy_header"),
    [
        # The proxy's policy decides what the browser sends on the next navigation.
        ({"policy": "no-referrer"}, None, None, "no-referrer"),
        ({"policy": "unsafe-url"}, None, "full", "unsafe-url"),
        ({}, None, "origin", "strict-origin-when-cross-origin"),  # the default
        # The origin's own policy wins unless policy_override is set.
        ({"policy": "no-referrer"}, "unsafe-url", "full", "unsafe-url"),
        ({"policy": "no-referrer", "policy_override": True}, "unsafe-url", None, "no-referrer"),
    ],
    ids=["no-referrer", "unsafe-url", "default", "upstream-kept", "override"],
)
async def test_referrer_policy_decides_next_navigation_and_secrets_are_stripped(
    origin: Start, proxy: Proxy, upstream: Upstream, tabs: Tabs,
    referer: dict[str, Any], page_policy: str | None, sent: str | None, policy_header: str,
) -> None:
    upstream.page_policy = page_policy
    up = await origin(upstream.app)
    client = await proxy(up, referer=referer)
    here = base(client)
    upstream.link = base(client, "localhost") + "/next"  # through the proxy, cross-origin
    page_url = f"{here}/page?gsid=SECRET&x=1"

    tab = await tabs.open(page_url)
    head = await tab.response_for("/page").all_headers()
    assert head["referrer-policy"] == policy_header
    async with tab.page.expect_request(lambda r: urlsplit(r.url).path == "/next") as info:
        await tab.page.click("#next")
    await tab.page.wait_for_selector("#arrived")
    browser_sent = (await (await info.value).all_headers()).get("referer")
    (arrived,) = upstream.requests("/next")
    upstream_saw = arrived.headers.get("Referer")

    if sent is None:
        assert browser_sent is None and upstream_saw is None
    elif sent == "origin":
        assert browser_sent == upstream_saw == here + "/"
    else:  # the full URL, with the session id the proxy must not pass on
        assert browser_sent == page_url
        assert upstream_saw == f"{here}/page?x=1"
