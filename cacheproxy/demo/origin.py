"""The bundled demo origin: one route per caching behaviour, so a newcomer can watch the cache.

`cacheproxy serve` without an upstream starts it beside the proxy. Every response carries
`X-Origin-Count` (how often the origin served that path) so hits are visible: when the proxy
answers from its store, the origin's count does not move.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import logging
import re
import signal
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from aiohttp import WSMsgType, web

from cacheproxy.config import DemoConfig, parse_listen
from cacheproxy.http.abnf import ENTITY_TAG_RE
from cacheproxy.lifetime import listen_error, run_until_stopped

COUNTS = web.AppKey("demo_counts", Counter)
LAST_MODIFIED = web.AppKey("demo_last_modified", datetime)

IMMUTABLE = "public, max-age=31536000, immutable"  # RFC 8246: never revalidated while fresh
MAX_SLOW_MS = 10_000
MAX_BIG = 1 << 30
CHUNK = 64 * 1024
_BLOCK = b"cacheproxy-demo\n" * (CHUNK // 16)  # 16-byte pattern, so chunks join seamlessly
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Resource:
    href: str
    headers: str
    proxy_does: str

    @property
    def path(self) -> str:
        return self.href.partition("?")[0]


# A table reads better than one argument per line.
# fmt: off
RESOURCES = (
    Resource("/max-age", "public, max-age=60", "Stored; served fresh for 60 s."),
    Resource("/no-cache-etag", "no-cache + strong ETag",
             "Stored, revalidated every time with If-None-Match; origin answers 304."),
    Resource("/last-modified", "Last-Modified only",
             "Heuristic freshness (RFC 9111 §4.2.2), then If-Modified-Since revalidation."),
    Resource("/expires", "Expires = Date + 30 s", "Fresh until Expires (RFC 9111 §5.3)."),
    Resource("/private", "private, max-age=60",
             "Never stored by a shared cache (§5.2.2.7); every request reaches the origin."),
    Resource("/no-store", "no-store", "Never stored (§5.2.2.5)."),
    Resource("/vary", "Vary: Accept-Language, max-age=60",
             "One stored variant per Accept-Language (§4.1)."),
    Resource("/stale", "max-age=5, stale-while-revalidate=30, stale-if-error=300",
             "Served stale while revalidating; stale if the origin fails (RFC 5861)."),
    Resource("/targeted", "max-age=10 + CDN-Cache-Control: max-age=600",
             "Fresh here for 10 minutes, in browsers for 10 s (RFC 9213 targeted fields)."),
    Resource("/set-cookie", "max-age=60 + Set-Cookie",
             "One client's Set-Cookie is never replayed to another (§7.3)."),
    Resource("/slow?ms=2000", "max-age=10 after a delay",
             "Concurrent misses collapse into one origin request."),
    Resource("/big?size=1048576", "max-age=60, streamed",
             "Streamed through; stored only if complete and under the size limit."),
    Resource("/assets/style.css", IMMUTABLE + " + ETag",
             "Fresh for a year and immutable (RFC 8246): not even revalidated on reload."),
    Resource("/assets/app.js", IMMUTABLE + " + ETag", "As above."),
    Resource("/assets/logo.svg", IMMUTABLE + " + ETag", "As above."),
    Resource("/echo", "no-store, any method",
             "Never stored; shows what the proxy forwarded to the origin."),
    Resource("/ws", "a WebSocket (GET with Upgrade: websocket)",
             "Passed through past the cache; each message is sent back (RFC 6455)."),
)
# fmt: on

ASSETS: dict[str, tuple[str, str]] = {
    "style.css": (
        "text/css",
        "body{font-family:system-ui,sans-serif;max-width:62rem;"
        "margin:2rem auto;padding:0 1rem;color:#222}\n"
        "td,th{border-bottom:1px solid #ddd;padding:.3rem .5rem;text-align:left}\n"
        "table{border-collapse:collapse}code{font-size:.9em}\n",
    ),
    "app.js": (
        "text/javascript",
        "document.getElementById('js').textContent =\n"
        "  'app.js ran at ' + new Date().toLocaleTimeString();\n",
    ),
    "logo.svg": (
        "image/svg+xml",
        '<svg xmlns="http://www.w3.org/2000/svg" width="48" '
        'height="48" viewBox="0 0 48 48"><rect width="48" height="48" rx="8" '
        'fill="#2a6"/><text x="24" y="31" font-size="18" text-anchor="middle" '
        'fill="#fff" font-family="sans-serif">CP</text></svg>\n',
    ),
}


def http_date(when: datetime) -> str:
    return format_datetime(when.astimezone(UTC), usegmt=True)


def etag_matches(if_none_match: str, etag: str) -> bool:
    """If-None-Match evaluation: `*` or any listed tag, by weak comparison (RFC 9110 §13.1.2)."""
    if if_none_match.strip() == "*":
        return True
    wanted = ENTITY_TAG_RE.fullmatch(etag)
    # Weak comparison (§8.8.3.2): opaque-tags equal, W/ prefixes ignored.
    return wanted is not None and wanted.group(1) in ENTITY_TAG_RE.findall(if_none_match)


def is_not_modified(
    request: web.Request, etag: str | None = None, last_modified: datetime | None = None
) -> bool:
    """Whether a GET/HEAD may be answered 304 (RFC 9110 §13.2.2 evaluation order)."""
    if request.method not in ("GET", "HEAD"):
        return False
    inm = request.headers.get("If-None-Match")
    if inm is not None:  # §13.1.3: If-Modified-Since is ignored when If-None-Match is present.
        return etag is not None and etag_matches(inm, etag)
    since = request.if_modified_since  # None when absent or not a valid HTTP-date (§13.1.3)
    return since is not None and last_modified is not None and last_modified <= since


def not_modified(headers: dict[str, str]) -> web.Response:
    # §15.4.5: a 304 repeats the fields a 200 would carry that guide cache updates.
    return web.Response(status=304, headers=headers)


def best_language(accept_language: str, offered: tuple[str, ...]) -> str:
    """Pick from `offered` by Accept-Language q-values (RFC 9110 §12.5.4); first on no match."""
    best, best_q = offered[0], 0.0
    for item in accept_language.split(","):
        tag, _, params = item.strip().partition(";")
        match = re.search(r"\bq=([^;\s]*)", params)
        try:
            q = float(match.group(1)) if match else 1.0
        except ValueError:
            continue
        primary = tag.strip().lower().split("-")[0]
        lang = offered[0] if primary == "*" else primary
        if lang in offered and q > best_q:
            best, best_q = lang, q
    return best


def int_param(request: web.Request, name: str, default: int, cap: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return max(0, min(int(raw), cap))
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be an integer\n") from None


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


async def index(request: web.Request) -> web.Response:
    counts = request.app[COUNTS]
    served = [(r, counts[r.path]) for r in RESOURCES]
    digest = hashlib.sha1(repr([n for _, n in served]).encode()).hexdigest()[:16]
    etag = f'"index-{digest}"'  # changes with the counts shown, so the index revalidates
    headers = {"Cache-Control": "no-cache", "ETag": etag}
    if is_not_modified(request, etag):
        return not_modified(headers)
    rows = "\n".join(
        f'<tr><td><a href="{html.escape(r.href)}"><code>{html.escape(r.path)}</code></a></td>'
        f"<td><code>{html.escape(r.headers)}</code></td><td>{html.escape(r.proxy_does)}</td>"
        f'<td class="n">{n}</td></tr>'
        for r, n in served
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cacheproxy demo origin</title>
<link rel="stylesheet" href="/assets/style.css">
<style>.n{{text-align:right;font-variant-numeric:tabular-nums}}
h1 img{{vertical-align:middle}}</style>
</head><body>
<h1><img src="/assets/logo.svg" alt="" width="48" height="48"> cacheproxy demo origin</h1>
<p>Each link shows one caching behaviour. Open them through the proxy and reload:
the <em>origin served</em> column counts requests that reached this origin, so a count
that stays put means the cache answered. Every response also carries
<code>X-Origin-Count</code>; the proxy's <code>Cache-Status</code> says hit or miss.</p>
<table><thead><tr><th>Resource</th><th>Caching headers</th><th>What the proxy does</th>
<th>Origin served</th></tr></thead>
<tbody>
{rows}
</tbody></table>
<p id="js">app.js has not run.</p>
<script src="/assets/app.js" defer></script>
</body></html>
"""
    return web.Response(text=page, content_type="text/html", headers=headers)


async def max_age(request: web.Request) -> web.Response:
    body = f"Generated at {http_date(now())}; fresh for 60 seconds.\n"
    return web.Response(text=body, headers={"Cache-Control": "public, max-age=60"})


async def no_cache_etag(request: web.Request) -> web.Response:
    headers = {"Cache-Control": "no-cache", "ETag": '"demo-v1"'}
    if is_not_modified(request, headers["ETag"]):
        return not_modified(headers)
    return web.Response(text="Stored but revalidated on every use (no-cache).\n", headers=headers)


async def last_modified(request: web.Request) -> web.Response:
    modified = request.app[LAST_MODIFIED]
    # With no ETag, §15.4.5 lets the 304 repeat Last-Modified to guide the cache's update.
    headers = {"Last-Modified": http_date(modified)}
    if is_not_modified(request, last_modified=modified):
        return not_modified(headers)
    body = "No Cache-Control or Expires: caches may use heuristic freshness.\n"
    return web.Response(text=body, headers=headers)


async def expires(request: web.Request) -> web.Response:
    generated = now()
    expiry = generated + timedelta(seconds=30)
    headers = {"Date": http_date(generated), "Expires": http_date(expiry)}
    return web.Response(
        text=f"Generated at {headers['Date']}; expires 30 s later.\n", headers=headers
    )


async def private(request: web.Request) -> web.Response:
    user = request.cookies.get("user")
    who = f"Hello, {user}!" if user else "Hello, anonymous (set a `user` cookie)."
    body = f"{who} This answer is for you only: a shared cache must not store it.\n"
    return web.Response(text=body, headers={"Cache-Control": "private, max-age=60"})


async def no_store(request: web.Request) -> web.Response:
    return web.Response(
        text=f"Never stored. Generated at {http_date(now())}.\n",
        headers={"Cache-Control": "no-store"},
    )


GREETINGS = {"en": "Hello", "fr": "Bonjour", "de": "Hallo"}


async def vary(request: web.Request) -> web.Response:
    lang = best_language(request.headers.get("Accept-Language", ""), tuple(GREETINGS))
    headers = {"Vary": "Accept-Language", "Cache-Control": "max-age=60", "Content-Language": lang}
    return web.Response(text=f"{GREETINGS[lang]}!\n", headers=headers)


async def stale(request: web.Request) -> web.Response:
    cache_control = "max-age=5, stale-while-revalidate=30, stale-if-error=300"
    return web.Response(
        text=f"Generated at {http_date(now())}.\n", headers={"Cache-Control": cache_control}
    )


async def targeted(request: web.Request) -> web.Response:
    # RFC 9213: CDN-Cache-Control is for caches acting for the origin (this proxy follows
    # it); browsers only know Cache-Control.
    headers = {"Cache-Control": "public, max-age=10", "CDN-Cache-Control": "max-age=600"}
    body = (f"Generated at {http_date(now())}: the proxy keeps it 600 s, a browser 10 s.\n")
    return web.Response(text=body, headers=headers)


async def set_cookie(request: web.Request) -> web.Response:
    response = web.Response(
        text="This response sets a cookie.\n", headers={"Cache-Control": "max-age=60"}
    )
    response.set_cookie("demo", "1", path="/")
    return response


async def slow(request: web.Request) -> web.Response:
    ms = int_param(request, "ms", 1000, MAX_SLOW_MS)
    await asyncio.sleep(ms / 1000)
    return web.Response(
        text=f"Answered after {ms} ms at {http_date(now())}.\n",
        headers={"Cache-Control": "max-age=10"},
    )


async def big(request: web.Request) -> web.StreamResponse:
    size = int_param(request, "size", 1 << 20, MAX_BIG)
    response = web.StreamResponse(headers={"Cache-Control": "max-age=60"})
    response.content_type = "application/octet-stream"
    response.content_length = size
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    try:
        for offset in range(0, size, CHUNK):
            await response.write(_BLOCK[: min(CHUNK, size - offset)])
        await response.write_eof()
    except ConnectionError:  # the client went away mid-body; nothing left to send
        pass
    return response


def asset_handler(content_type: str, text: str) -> Handler:
    etag = '"' + hashlib.sha1(text.encode()).hexdigest()[:16] + '"'
    headers = {"Cache-Control": IMMUTABLE, "ETag": etag}

    async def asset(request: web.Request) -> web.Response:
        if is_not_modified(request, etag):
            return not_modified(headers)
        return web.Response(text=text, content_type=content_type, headers=headers)

    return asset


async def echo(request: web.Request) -> web.Response:
    length = 0
    try:
        async for chunk in request.content.iter_any():  # counted, not buffered
            length += len(chunk)
    except ConnectionError:  # the body was cut short (a proxy abandoning an upload): not
        return web.Response(status=400, text="request body cut short\n")  # an error here
    report = {
        "method": request.method,
        "path_qs": request.path_qs,
        "headers": [[name, value] for name, value in request.headers.items()],
        "body_length": length,
    }
    return web.Response(
        text=json.dumps(report, indent=2) + "\n",
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def _count_served(request: web.Request, response: web.StreamResponse) -> None:
    # Counted when the response starts, so a slow request counts when it is actually served.
    if request.match_info.http_exception is not None:
        return  # unrouted paths (404/405) are not demo resources
    counts = request.app[COUNTS]
    counts[request.path] += 1
    response.headers["X-Origin-Count"] = str(counts[request.path])


async def websocket_echo(request: web.Request) -> web.StreamResponse:
    """A WebSocket that sends each message back (the proxy passes it through); a plain
    GET gets a page saying so."""
    ws = web.WebSocketResponse()
    if not ws.can_prepare(request).ok:
        return web.Response(text="a WebSocket echo: connect with ws://\n",
                            headers={"Cache-Control": "no-store"})
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


def make_demo_app() -> web.Application:
    app = web.Application()
    app[COUNTS] = Counter()
    app[LAST_MODIFIED] = now() - timedelta(hours=1)
    app.on_response_prepare.append(_count_served)
    app.router.add_get("/", index)
    app.router.add_get("/max-age", max_age)
    app.router.add_get("/no-cache-etag", no_cache_etag)
    app.router.add_get("/last-modified", last_modified)
    app.router.add_get("/expires", expires)
    app.router.add_get("/private", private)
    app.router.add_get("/no-store", no_store)
    app.router.add_get("/vary", vary)
    app.router.add_get("/stale", stale)
    app.router.add_get("/targeted", targeted)
    app.router.add_get("/set-cookie", set_cookie)
    app.router.add_get("/slow", slow)
    app.router.add_get("/big", big)
    for name, (content_type, text) in ASSETS.items():
        app.router.add_get(f"/assets/{name}", asset_handler(content_type, text))
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/ws", websocket_echo)
    return app


async def start_demo_origin(host: str, port: int, hint: str = "") -> tuple[web.AppRunner, int]:
    """Serve the demo origin on host:port (0 picks a free port); return the runner and port.
    An address it cannot listen on is a StartError naming demo.listen (with `hint`)."""
    runner = web.AppRunner(make_demo_app(), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise listen_error("demo.listen", address, exc, hint) from None
    except BaseException:
        await runner.cleanup()
        raise
    return runner, runner.addresses[0][1]


def run_demo_origin(config: DemoConfig, ready: Callable[[int], None] | None = None,
                    hint: str = "") -> None:
    """Blocking: `cacheproxy demo`, the demo origin alone (a compose service of its own)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    host, port = parse_listen(config.listen)

    async def main() -> None:
        # A --workers parent forks this with them blocked: handled from now on.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
        runner, bound = await start_demo_origin(host, port, hint)
        logging.getLogger("cacheproxy").info("demo origin listening on %s:%s", host, bound)
        if ready is not None:
            ready(bound)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    run_until_stopped(main)
