"""The dashboard page in a real headless Chromium (Debian's, driven by Playwright).

Two kinds of server behind it:
- a stub that serves the page and a hand-written stats document, to pin the page
  against the stats contract (every figure, hostile log fields, the error and paused
  states, a prefix other than the default), with a fake page clock so polling is
  instant and deterministic;
- the real proxy in front of a real origin, to show that what was done is what is shown.

A browser that cannot start fails these tests: they never skip.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from browser import chromium
from playwright.async_api import Browser, Locator, Page, expect
from support import echo_server

import cacheproxy.observe

DASHBOARD = Path(cacheproxy.observe.__file__).with_name("dashboard.html")
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
POLL_MS = 2000


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """One Chromium per test: Playwright's async objects belong to the test's own loop."""
    async with chromium() as b:
        yield b


@dataclass
class Watched:
    """A dashboard tab and everything it did that a test may object to."""

    page: Page
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    foreign_requests: list[str] = field(default_factory=list)

    def unexpected_console_errors(self, *allowed: str) -> list[str]:
        return [m for m in self.console_errors if not any(a in m for a in allowed)]


DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


async def open_tab(browser: Browser, *, fake_clock: bool = False,
                   viewport: dict[str, int] = DESKTOP) -> Watched:
    """A fresh context (own cookies, empty HTTP cache), by default at a laptop's size."""
    context = await browser.new_context(viewport=viewport)
    page = await context.new_page()
    w = Watched(page)
    page.on("console", lambda m: m.type == "error" and w.console_errors.append(m.text))
    page.on("pageerror", lambda e: w.page_errors.append(str(e)))

    def on_request(request: Any) -> None:
        url = urlsplit(request.url)
        if url.scheme in ("http", "https", "ws", "wss") and url.hostname not in LOOPBACK:
            w.foreign_requests.append(request.url)

    page.on("request", on_request)
    if fake_clock:
        await page.clock.install()
    return w


def figure(page: Page, testid: str) -> Locator:
    return page.get_by_test_id(testid)


async def shot(page: Page, path: Path) -> None:
    await page.screenshot(path=str(path), full_page=True, animations="disabled")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


# -- the page against the stats contract (stub server) --------------------------

def sample_stats() -> dict[str, Any]:
    """The contract's example, with log fields a client chose to make hostile."""
    hostile_path = '/search?q=<img src=x onerror="window.__pwned=1">&r=</td>'
    recent = [
        {"time": f"2026-11-23T17:30:0{i}.123Z", "client": "127.0.0.1", "method": "GET",
         "host": "127.0.0.1:8080", "path": f"/a/{i}", "status": 200,
         "cache": "HIT" if i % 2 else "MISS", "bytes": 512 * i, "total_ms": 0.41 + i,
         "age": 3, "ttl": 56, "upstream_status": None, "upstream_ms": None, "collapsed": False,
         "route": "default", "policy": None, "protocol": "HTTP/1.1", "referer": None,
         "user_agent": "curl/8", "cache_status": "cacheproxy; hit; ttl=56"}
        for i in range(4)
    ]
    recent.append({**recent[0], "path": hostile_path, "host": '"><script>window.__pwned=2</script>',
                   "method": "<b>GET</b>", "status": 502, "cache": "ERROR",
                   "user_agent": "<svg onload=alert(1)>", "time": "2026-11-23T17:30:09.999Z"})
    t0 = int(time.time()) // 10 * 10 - 80  # the newest bucket is the current one
    return {
        "version": "0.1.0", "uptime_s": 3725.0, "requests": 100,
        "by_cache": {"HIT": 60, "MISS": 30, "EXPIRED": 0, "STALE": 0, "REVALIDATED": 5,
                     "UPDATING": 0, "BYPASS": 5, "ERROR": 0, "DENIED": 0, "TUNNEL": 0},
        "hit_ratio": 0.65, "byte_hit_ratio": 0.7,
        "bytes_from_cache": 123, "bytes_from_origin": 456,
        "collapsed": 3, "errors": 1,
        "store": {"backend": "memory", "entries": 10, "bytes": 1234, "max_bytes": 268435456,
                  "evictions": 7},
        # a gap between the 3rd and 4th bucket: buckets need not be contiguous
        "series": [{"t": t0 + 10 * i, "requests": 10, "hits": 6 + (i % 4)}
                   for i in (0, 1, 2, 5, 6, 7, 8)],
        "recent": recent,
        # busiest first; with hosts_other they count every request
        "hosts": [
            {"host": "127.0.0.1:8080", "requests": 90, "bytes": 51_200, "bytes_in": 0,
             "by_cache": {"HIT": 60, "MISS": 25, "REVALIDATED": 5}},
            {"host": '"><img src=x onerror="window.__pwned=3">', "requests": 5, "bytes": 7,
             "bytes_in": 0, "by_cache": {"MISS": 5}},
        ],
        "hosts_other": {"requests": 5, "bytes": 0, "bytes_in": 0, "by_cache": {"BYPASS": 5}},
    }


class StatsStub:
    """Serves the page at <prefix>dashboard and a stats document the test edits."""

    def __init__(self, prefix: str) -> None:
        self.stats = sample_stats()
        self.status = 200
        self.stats_requests: list[web.Request] = []
        self.app = web.Application()
        self.app.router.add_get(prefix + "dashboard", self.dashboard)
        self.app.router.add_get(prefix + "stats", self.get_stats)

    async def dashboard(self, request: web.Request) -> web.Response:
        return web.Response(body=DASHBOARD.read_bytes(), content_type="text/html",
                            charset="utf-8")

    async def get_stats(self, request: web.Request) -> web.Response:
        self.stats_requests.append(request)
        if self.status != 200:
            return web.json_response({"error": "boom"}, status=self.status)
        return web.json_response(self.stats)


async def start_stub(origin: Any, prefix: str) -> tuple[StatsStub, TestServer]:
    stub = StatsStub(prefix)
    return stub, await origin(stub.app)


def test_page_is_self_contained() -> None:
    html = DASHBOARD.read_text()
    for external in ("http://", "https://", "//cdn", "@import", "url("):
        # the only URL allowed is the SVG namespace the script needs
        assert html.replace("http://www.w3.org/2000/svg", "").count(external) == 0, external


async def test_stub_every_figure_rendered_and_log_fields_escaped(
        browser: Browser, origin: Any, tmp_path: Path) -> None:
    stub, server = await start_stub(origin, "/ops/admin/")  # a prefix other than the default
    w = await open_tab(browser)
    page = w.page
    await page.goto(str(server.make_url("/ops/admin/dashboard")))

    await expect(figure(page, "requests-total")).to_have_text("100")
    expected = {
        "hit-ratio": "65.0%", "byte-hit-ratio": "70.0%", "bytes-from-cache": "123 B",
        "bytes-from-origin": "456 B", "collapsed": "3", "errors": "1", "uptime": "1h 02m",
        "version": "0.1.0", "status-count-HIT": "60", "status-count-MISS": "30",
        "status-count-REVALIDATED": "5", "status-count-BYPASS": "5", "status-count-STALE": "0",
        "status-count-DENIED": "0", "store-entries": "10", "store-evictions": "7",
        "store-bytes": "1.21 KiB", "store-max-bytes": "256 MiB", "store-backend": "memory",
        "log-count": "5",
    }
    for testid, text in expected.items():
        await expect(figure(page, testid)).to_have_text(text)
    fill = float(await figure(page, "store-fill").get_attribute("data-value") or "nan")
    assert fill == pytest.approx(1234 / 268435456)
    await expect(page.get_by_test_id("chart-bucket")).to_have_count(7)
    # the gap in the series breaks the line into two runs
    line = await figure(page, "hit-ratio-line").get_attribute("d") or ""
    assert line.count("M") == 2 and line.count("L") == 5

    rows = page.get_by_test_id("log-row")
    await expect(rows).to_have_count(5)
    # newest first, and every hostile field is shown as the text it is
    newest = rows.first
    await expect(newest.get_by_test_id("log-target")).to_have_text(
        '"><script>window.__pwned=2</script>'
        '/search?q=<img src=x onerror="window.__pwned=1">&r=</td>')
    await expect(newest.get_by_test_id("log-method")).to_have_text("<b>GET</b>")
    await expect(newest.get_by_test_id("log-cache")).to_have_text("ERROR")
    await expect(newest.get_by_test_id("log-status")).to_have_text("502")
    await expect(rows.last.get_by_test_id("log-target")).to_have_text("127.0.0.1:8080/a/0")
    # Hosts: busiest first, counts by cache status, then the rest summed
    hosts = page.get_by_test_id("host-row")
    await expect(hosts).to_have_count(2)
    await expect(figure(page, "hosts-count")).to_have_text("2")
    await expect(hosts.get_by_test_id("host-name")).to_have_text(
        ["127.0.0.1:8080", '"><img src=x onerror="window.__pwned=3">'])
    await expect(hosts.get_by_test_id("host-requests")).to_have_text(["90", "5"])
    await expect(hosts.first.get_by_test_id("host-statuses")).to_have_text(
        "HIT 60MISS 25REVALIDATED 5")  # in the order of the status bars
    await expect(hosts.first.get_by_test_id("host-bytes")).to_have_text("50.0 KiB")
    other = figure(page, "hosts-other")
    await expect(other.get_by_test_id("host-name")).to_have_text("other hosts")
    await expect(other.get_by_test_id("host-count-BYPASS")).to_have_text("BYPASS 5")

    assert await page.evaluate("window.__pwned") is None
    injected = page.locator("#log-body img, #log-body script, #log-body b, svg[onload], "
                            "#hosts-body img")
    assert await injected.count() == 0

    await expect(figure(page, "auth-error")).to_be_hidden()
    await expect(figure(page, "fetch-error")).to_be_hidden()
    assert "Authorization" not in stub.stats_requests[0].headers  # no token in the URL
    await shot(page, tmp_path / "dashboard-stub.png")
    assert not w.console_errors and not w.page_errors
    assert not w.foreign_requests


async def test_stub_polls_shows_fetch_errors_and_pauses_when_hidden(
        browser: Browser, origin: Any) -> None:
    stub, server = await start_stub(origin, "/_cacheproxy/")
    w = await open_tab(browser, fake_clock=True)
    page = w.page
    await page.goto(str(server.make_url("/_cacheproxy/dashboard")))
    await expect(figure(page, "requests-total")).to_have_text("100")
    await expect(figure(page, "live-state")).to_contain_text("live")

    # live refresh: the next poll shows the new figures
    stub.stats = copy.deepcopy(stub.stats)
    stub.stats["requests"] = 1234
    stub.stats["by_cache"]["HIT"] = 61
    await page.clock.run_for(POLL_MS)
    await expect(figure(page, "requests-total")).to_have_text("1,234")
    await expect(figure(page, "status-count-HIT")).to_have_text("61")

    # a failing fetch: a visible error, the last figures kept
    stub.status = 500
    await page.clock.run_for(POLL_MS)
    await expect(figure(page, "fetch-error")).to_be_visible()
    await expect(figure(page, "fetch-error-text")).to_contain_text("HTTP 500")
    await expect(figure(page, "requests-total")).to_have_text("1,234")

    # and it recovers by itself
    stub.status = 200
    await page.clock.run_for(POLL_MS)
    await expect(figure(page, "fetch-error")).to_be_hidden()
    await expect(figure(page, "live-state")).to_contain_text("live")

    # a hidden tab stops polling; showing it again polls at once
    await page.evaluate("""() => {
        Object.defineProperty(document, "hidden", {configurable: true, get: () => true});
        document.dispatchEvent(new Event("visibilitychange"));
    }""")
    await expect(figure(page, "live-state")).to_contain_text("paused")
    before = len(stub.stats_requests)
    await page.clock.run_for(10 * POLL_MS)
    assert len(stub.stats_requests) == before
    stub.stats["requests"] = 1300
    await page.evaluate("""() => {
        Object.defineProperty(document, "hidden", {configurable: true, get: () => false});
        document.dispatchEvent(new Event("visibilitychange"));
    }""")
    await expect(figure(page, "requests-total")).to_have_text("1,300")

    assert w.unexpected_console_errors("status of 500") == [] and not w.page_errors
    assert not w.foreign_requests


async def test_stub_auth_refusal_shows_message_not_figures(browser: Browser, origin: Any) -> None:
    stub, server = await start_stub(origin, "/_cacheproxy/")
    stub.status = 401
    w = await open_tab(browser)
    await w.page.goto(str(server.make_url("/_cacheproxy/dashboard?token=wrong")))
    await expect(figure(w.page, "auth-error")).to_be_visible()
    await expect(figure(w.page, "auth-status")).to_contain_text("HTTP 401")
    await expect(figure(w.page, "requests-total")).to_be_hidden()
    assert stub.stats_requests[0].headers["Authorization"] == "Bearer wrong"
    assert w.unexpected_console_errors("status of 401") == [] and not w.page_errors


# -- the page on the real proxy -------------------------------------------------

class Origin:
    """/cached may be stored for a minute, /fresh never; every request is recorded."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.app = web.Application(middlewares=[self.record])
        self.app.router.add_get("/cached", self.cached)
        self.app.router.add_get("/fresh", self.fresh)

    async def cached(self, request: web.Request) -> web.Response:
        return web.Response(text="x" * 1000, headers={"Cache-Control": "max-age=60"})

    async def fresh(self, request: web.Request) -> web.Response:
        return web.Response(text="never stored", headers={"Cache-Control": "no-store"})

    @web.middleware
    async def record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.seen.append(request.path_qs + " " + request.headers.get("Referer", ""))
        return await handler(request)


async def test_dashboard_shows_what_went_through_the_proxy(
        browser: Browser, origin: Any, proxy: Any, tmp_path: Path) -> None:
    o = Origin()
    client = await proxy(await origin(o.app))
    done = {"/cached": ["MISS", "HIT", "HIT"], "/fresh": ["MISS"]}
    for path, statuses in done.items():
        for expected in statuses:
            resp = await client.get(path)
            assert resp.status == 200 and resp.headers["X-Cache"] == expected
            await resp.read()
    assert len(o.seen) == 2

    w = await open_tab(browser)
    page = w.page
    await page.goto(str(client.make_url("/_cacheproxy/dashboard")))
    await expect(figure(page, "requests-total")).to_have_text("4")
    await expect(figure(page, "status-count-HIT")).to_have_text("2")
    await expect(figure(page, "status-count-MISS")).to_have_text("2")
    await expect(figure(page, "hit-ratio")).to_have_text("50.0%")
    await expect(figure(page, "store-entries")).to_have_text("1")
    await expect(figure(page, "bytes-from-cache")).to_have_text("1.95 KiB")  # two hits of 1000
    rows = page.get_by_test_id("log-row")
    await expect(rows).to_have_count(4)
    await expect(rows.filter(has_text="/fresh")).to_have_count(1)
    await expect(rows.filter(has_text="/cached").get_by_test_id("log-cache")).to_have_text(
        ["HIT", "HIT", "MISS"])  # newest first
    await expect(page.get_by_test_id("chart-bucket")).not_to_have_count(0)
    await expect(figure(page, "live-state")).to_contain_text("live")

    screenshot = tmp_path / "dashboard.png"
    await shot(page, screenshot)
    assert not w.console_errors, w.console_errors
    assert not w.page_errors, w.page_errors
    assert not w.foreign_requests, w.foreign_requests
    assert len(o.seen) == 2, o.seen  # the page sent nothing through to the origin (no favicon)


async def raw_exchange(port: int, data: bytes) -> bytes:
    """data sent to the proxy as it is, and what comes back until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def test_dashboard_shows_forward_and_tunnel_traffic_by_host(
        browser: Browser, origin: Any, proxy: Any) -> None:
    o = Origin()
    site = await origin(o.app)

    echo, echo_port = await echo_server()
    try:
        client = await proxy(site, forward={"enabled": True, "allow_hosts": ["localhost"],
                                            "connect_ports": [echo_port]})
        for _ in range(3):  # forward mode, absolute-form: MISS, HIT, HIT
            got = await raw_exchange(client.port, (
                f"GET http://localhost:{site.port}/cached HTTP/1.1\r\n"
                f"Host: localhost:{site.port}\r\nConnection: close\r\n\r\n").encode())
            assert got.startswith(b"HTTP/1.1 200")
        got = await raw_exchange(client.port, b"GET http://elsewhere.test/ HTTP/1.1\r\n"
                                              b"Host: elsewhere.test\r\nConnection: close\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 403")  # not in allow_hosts
        got = await raw_exchange(client.port, b"GET /fresh HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                              b"Connection: close\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 200")  # reverse mode, beside it
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(f"CONNECT localhost:{echo_port} HTTP/1.1\r\nHost: localhost:{echo_port}"
                     "\r\n\r\n".encode())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        writer.write(b"t" * 3000)
        writer.write_eof()
        assert len(await asyncio.wait_for(reader.read(), 5)) == 3000
        writer.close()
    finally:
        echo.close()

    w = await open_tab(browser)
    page = w.page
    await page.goto(str(client.make_url("/_cacheproxy/dashboard")))
    await expect(figure(page, "requests-total")).to_have_text("6")  # once the tunnel closed
    rows = page.get_by_test_id("host-row")
    await expect(rows.get_by_test_id("host-name")).to_have_text(  # busiest first, then by name
        [f"localhost:{site.port}", "127.0.0.1", "elsewhere.test", f"localhost:{echo_port}"])
    await expect(rows.get_by_test_id("host-requests")).to_have_text(["3", "1", "1", "1"])
    forward = rows.nth(0)
    await expect(forward.get_by_test_id("host-count-HIT")).to_have_text("HIT 2")
    await expect(forward.get_by_test_id("host-count-MISS")).to_have_text("MISS 1")
    await expect(rows.nth(2).get_by_test_id("host-statuses")).to_have_text("DENIED 1")
    tunnel = rows.nth(3)
    await expect(tunnel.get_by_test_id("host-statuses")).to_have_text("TUNNEL 1")
    await expect(tunnel.get_by_test_id("host-bytes")).to_have_text("2.93 KiB")
    assert "3,000 from clients through tunnels" in (
        await tunnel.get_by_test_id("host-bytes").get_attribute("title") or "")
    await expect(figure(page, "hosts-other")).to_have_count(0)  # every host is listed
    # A tunnel is no failure: the errors card stays at 0 and TUNNEL has a bar of its own.
    await expect(figure(page, "errors")).to_have_text("0")
    assert "bad" not in (await page.locator("#errors-card").get_attribute("class") or "")
    await expect(figure(page, "status-count-TUNNEL")).to_have_text("1")
    await expect(figure(page, "status-count-ERROR")).to_have_text("0")
    # The log shows a CONNECT's host:port once.
    connect = page.get_by_test_id("log-row").filter(has_text="CONNECT")
    await expect(connect.get_by_test_id("log-target")).to_have_text(f"localhost:{echo_port}")
    await expect(connect.get_by_test_id("log-cache")).to_have_text("TUNNEL")
    assert not w.console_errors and not w.page_errors and not w.foreign_requests


async def test_dashboard_with_a_token(browser: Browser, origin: Any, proxy: Any) -> None:
    o = Origin()
    client = await proxy(await origin(o.app), admin={"token": "s3cret"})
    await (await client.get("/cached")).read()
    page_url = client.make_url("/_cacheproxy/dashboard")

    w = await open_tab(browser)
    stats_auth: list[str | None] = []
    w.page.on("request", lambda r: r.url.endswith("/stats")
              and stats_auth.append(r.headers.get("authorization")))
    await w.page.goto(str(page_url.with_fragment("token=s3cret")))  # never sent to a server
    await expect(figure(w.page, "requests-total")).to_have_text("1")
    await expect(figure(w.page, "auth-error")).to_be_hidden()
    assert stats_auth and set(stats_auth) == {"Bearer s3cret"}
    assert not w.console_errors and not w.page_errors and not w.foreign_requests
    assert all("s3cret" not in seen for seen in o.seen), o.seen  # no Referer carried it out

    # The page itself is static and public; without the right token its stats calls are
    # refused and it says so instead of showing figures.
    for url in (page_url, page_url.with_query(token="wrong")):
        w = await open_tab(browser)
        resp = await w.page.goto(str(url))
        assert resp is not None and resp.status == 200
        await expect(figure(w.page, "auth-error")).to_be_visible()
        assert await figure(w.page, "requests-total").count() == 0 or await figure(
            w.page, "requests-total").is_hidden()


async def test_a_token_in_the_url_never_reaches_the_origin(
        browser: Browser, origin: Any, proxy: Any) -> None:
    o = Origin()
    client = await proxy(await origin(o.app), admin={"token": "s3cret"})
    w = await open_tab(browser)
    resp = await w.page.goto(str(client.make_url("/_cacheproxy/dashboard?token=s3cre")))
    assert resp is not None and resp.headers["referrer-policy"] == "no-referrer"
    await expect(figure(w.page, "auth-error")).to_be_visible()  # a wrong token
    await w.page.wait_for_timeout(500)  # time for the browser's favicon request, if any
    assert all("token=" not in seen for seen in o.seen), o.seen


# -- nothing cut off, on a laptop and on a phone (issue 13, item 7) ---------------

# Every box on the page whose content is wider than the box itself (cut off, or spilling
# over its neighbours), and whether the page scrolls sideways. Inline boxes have no width
# of their own, and the chart's SVG internals are drawn to the SVG's size.
OVERFLOWING = """() => {
  const bad = [];
  const where = (el) => `${el.tagName.toLowerCase()}.${el.className || el.dataset.testid || ""}`;
  for (const el of document.querySelectorAll("header, header *, main, main *")) {
    const display = getComputedStyle(el).display;
    if (el.closest("svg") || ["inline", "none", "contents"].includes(display)) continue;
    // wider than its box on the right (scrollWidth) ...
    if (el.scrollWidth > el.clientWidth + 1) {
      bad.push(`${where(el)}: ${el.scrollWidth} > ${el.clientWidth} ` +
               el.textContent.slice(0, 40));
    }
    // ... or on either side (right-aligned text spills to the left, which scrollWidth misses)
    const range = document.createRange();
    range.selectNodeContents(el);
    const text = range.getBoundingClientRect(), box = el.getBoundingClientRect();
    if (text.width && (text.left < box.left - 1 || text.right > box.right + 1)) {
      bad.push(`${where(el)}: text ${text.left}..${text.right} outside ${box.left}..${box.right} ` +
               el.textContent.slice(0, 40));
    }
  }
  // the chart's axis labels keep a gap between them
  const labels = [...document.querySelectorAll("#chart text")]
    .map((t) => t.getBoundingClientRect());
  labels.forEach((a, i) => labels.slice(i + 1).forEach((b) => {
    const gap = 4;
    if (a.left < b.right + gap && b.left < a.right + gap && a.top < b.bottom && b.top < a.bottom) {
      bad.push(`chart labels touch at ${a.left},${a.top} and ${b.left},${b.top}`);
    }
  }));
  if (document.documentElement.scrollWidth > window.innerWidth) {
    bad.push(`page: ${document.documentElement.scrollWidth} > ${window.innerWidth}`);
  }
  return bad;
}"""


def crowded_stats() -> dict[str, Any]:
    """The widest figures a busy proxy shows: long counts, big bodies, every cache status,
    slow and sub-millisecond requests, an OPTIONS, a long URL; traffic 12 minutes ago."""
    stats = sample_stats()
    row = stats["recent"][0]
    widths = [  # (method, cache, status, bytes, total_ms)
        ("GET", "HIT", 200, 1_048_576, 0.0), ("OPTIONS", "REVALIDATED", 204, 9_999_999, 1.0),
        ("GET", "MISS", 200, 123_456_789, 16.0), ("POST", "BYPASS", 201, 0, 2014.0),
        ("GET", "UPDATING", 200, 512, 0.41), ("GET", "EXPIRED", 504, 7, 123_456.0),
        ("DELETE", "DENIED", 403, 33, 9.999),
    ]
    stats["recent"] = [
        {**row, "method": m, "cache": c, "status": st, "bytes": b, "total_ms": ms,
         "time": f"2026-11-23T17:30:{10 + i}.123Z"} for i, (m, c, st, b, ms) in enumerate(widths)]
    stats["recent"].append({**row, "path": "/assets/" + "very-long-file-name-" * 12 + ".js",
                            "host": "static.assets.example-cdn-provider.com:8443"})
    every = {c: 1_234_567 for c in ("HIT", "MISS", "EXPIRED", "STALE", "REVALIDATED",
                                     "UPDATING", "BYPASS", "ERROR", "DENIED", "TUNNEL")}
    stats["hosts"] = [
        {"host": "static.assets.example-cdn-provider.com:8443", "requests": 12_345_670,
         "bytes": 1_048_576 * 1536, "bytes_in": 0, "by_cache": every},
        {"host": "a-very-long-subdomain-name-" * 6 + ".example.com:443", "requests": 9_999_999,
         "bytes": 123_456_789, "bytes_in": 987_654_321, "by_cache": {"TUNNEL": 9_999_999}},
    ]
    stats["hosts_other"] = {"requests": 101_111_120, "bytes": 5, "bytes_in": 0,
                            "by_cache": {"MISS": 101_111_120}}
    stats.update(requests=123_456_789, collapsed=9_999_999, errors=1_234_567,
                 bytes_from_cache=1_048_576 * 1536, bytes_from_origin=1_048_576)
    end = int(time.time()) // 10 * 10
    stats["series"] = [{"t": end - 10 * i, "requests": 5 + i % 7, "hits": 3 + i % 4}
                       for i in (95, 85, 72, 71, 40, 2, 1, 0)]  # 95: over 15 minutes ago
    return stats


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1280x800", "390x844"])
async def test_nothing_is_cut_off_at_either_size(
        browser: Browser, origin: Any, tmp_path: Path, viewport: dict[str, int]) -> None:
    stub, server = await start_stub(origin, "/_cacheproxy/")
    stub.stats = crowded_stats()
    w = await open_tab(browser, viewport=viewport)
    page = w.page
    await page.goto(str(server.make_url("/_cacheproxy/dashboard")))
    await expect(page.get_by_test_id("log-row")).to_have_count(8)
    # One rule for durations: under 10 ms two decimals, then whole ms.
    await expect(page.get_by_test_id("log-ms")).to_have_text(
        ["0.41", "10", "123,456", "0.41", "2,014", "16", "1.00", "0.00"])  # newest first
    await expect(page.get_by_test_id("log-bytes")).to_have_text(
        ["0", "33", "7", "512", "0", "118 MiB", "9,999,999", "1,048,576"])
    await expect(figure(page, "requests-total")).to_have_text("123.5M")
    assert await figure(page, "requests-total").get_attribute("title") == "123,456,789"
    await expect(figure(page, "collapsed")).to_have_text("9,999,999")
    # the last 15 minutes: every bucket but the one from 15 min 50 s ago
    await expect(page.get_by_test_id("chart-bucket")).to_have_count(7)
    assert await page.evaluate(OVERFLOWING) == []
    minus = "\N{MINUS SIGN}"
    label = f"{minus}15 min" if viewport is DESKTOP else f"{minus}15m"  # short on a phone
    await expect(page.locator("#chart text", has_text=label)).to_have_count(1)
    await shot(page, tmp_path / f"dashboard-{viewport['width']}.png")
    assert not w.console_errors and not w.page_errors and not w.foreign_requests
