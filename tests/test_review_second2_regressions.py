"""Defects found by a second reading of the fixes made for the races, admin, exhaust and
vary reviews (git log 0ee4b38..): each test failed on the code before its fix (or is a
strict xfail where it is not fixed). Real `cacheproxy serve` processes and origins on
127.0.0.1."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from test_review_exhaust_regressions import MiB, _origin, _resident
from test_review_exhaust_regressions import served as served  # (the fixture)
from test_review_vary_regressions import _field, _get

# -- the §4.4 invalidation marks are bounded in count only ---------------------------------


async def test_long_urls_a_client_posts_to_do_not_fill_the_invalidation_marks(served):
    """58d840c keeps, per process, when each invalidated key was last invalidated
    (proxy/invalidations.py: 10,000 keys), so that a fill under way is not stored after
    the invalidation. The marks are bounded in count only, where 8ed5621 had just bounded
    the hit-for-pass marks and the route memo in characters too (README: "the proxy's own
    bookkeeping of URLs ... is bounded in characters as well as in count"): a client that
    POSTs to 6,000 distinct 8 KiB targets under 6.7 KB Hosts, each answered 200 by the
    origin (an invalidation, §4.4), holds some 100 MiB of keys that cache.max_bytes does not
    count, until 10,000 other POSTs push them out. Severity: medium (one client, a few
    seconds, hundreds of MB past the configured bounds)."""
    async def ok(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")

    server, origin_port = await _origin(ok)
    labels = ".".join(["b" * 60] * 110)
    try:
        proc, port = await served(origin_port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.3)
        before = _resident(proc.pid)
        for start in range(0, 6000, 16):
            writer.write(b"".join(
                f"POST /u/{i:06d}/{'a' * 8000} HTTP/1.1\r\nHost: h{i}.{labels}\r\n"
                f"Content-Length: 0\r\n\r\n".encode() for i in range(start, start + 16)))
            for _ in range(16):
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                assert head.startswith(b"HTTP/1.1 200"), head
                await reader.readexactly(1)
        grew = _resident(proc.pid) - before
        writer.close()
        assert grew < 48 * MiB, f"resident memory grew {grew // MiB} MiB, nothing stored"
    finally:
        server.close()


# -- hit-for-pass per variant: one mark per URL, the last variant's -------------------------


async def test_hit_for_pass_of_one_variant_outlives_another_variants_mark(origin, proxy):
    """160d549 keeps hit-for-pass for the variant of the answer that could not be stored
    (as Varnish's hit-for-pass objects vary), but in one mark per URL: a mark for another
    variant replaces it. A large download behind `gzip_vary on` whose identity and gzip
    answers are both over max_object_bytes: curl's identity request marks the identity
    variant, a browser's gzip request then replaces that mark with the gzip variant's, and
    identity requests collapse behind each other again, each waiting for the one before
    to get its (unstorable) answer: served in waves, what hit-for-pass is there to stop
    (README: Concurrent misses?). Before 160d549 the mark was the URL's and they did not
    wait; Varnish keeps its hit-for-pass objects as objects of the URL, one per variant
    (read from its design, not run here). Severity: low (latency of unstorable URLs with
    more than one variant; answers are right)."""
    arrived: list[float] = []
    big = bytes(range(256)) * 12  # 3 KiB, incompressible enough: over max_object_bytes

    async def page(request: web.Request) -> web.Response:
        arrived.append(time.monotonic())
        await asyncio.sleep(0.4)
        headers = {"Cache-Control": "max-age=60", "Vary": "Accept-Encoding",
                   "Content-Type": "application/octet-stream"}
        if request.headers.get("Accept-Encoding") == "gzip":
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=big, headers=headers)

    app = web.Application()
    app.router.add_get("/big", page)
    c = await proxy(await origin(app), cache={"max_object_bytes": 1000})
    head, _ = await _get(c, "/big")  # curl: identity, too big (hit-for-pass, identity)
    assert "too-big" in (_field(head, "Cache-Status") or ""), head
    head, _ = await _get(c, "/big", "Accept-Encoding: gzip")  # a browser: gzip, too big
    assert "too-big" in (_field(head, "Cache-Status") or ""), head
    arrived.clear()
    probes = [asyncio.ensure_future(_get(c, "/big")) for _ in range(3)]
    await asyncio.gather(*probes)
    assert len(arrived) == 3
    assert max(arrived) - min(arrived) < 0.2, \
        f"identity requests reached the origin {max(arrived) - min(arrived):.2f} s apart"


# -- a 304 naming fewer Vary fields: the stored rest kept, in another order -----------------


async def test_a_304_naming_fewer_vary_fields_does_not_store_the_variant_twice(origin, proxy):
    """0aab4f5 keeps the stored Vary fields a 304 leaves out (RFC 9111 §3.2), appended
    after the 304's own: a stored `Vary: Origin, Accept-Encoding` revalidated by a 304
    saying `Vary: Accept-Encoding` became `Accept-Encoding, Origin`. A variant is told
    apart by its Vary fields in order (variant_id), so the freshened response was put as
    a new variant beside the stale one it freshened: two stored copies of one variant for
    the same requests (memory, and one of the 32 variant slots, per revalidated variant),
    where §4.3.4 has the 304 update the stored response it selected. The HEAD path
    (§4.3.5) merges the same way and gets the same fix (not run here). Severity: low."""
    async def page(request: web.Request) -> web.Response:
        headers = {"Cache-Control": "max-age=1", "ETag": '"v1"',
                   "Vary": "Origin, Accept-Encoding"}
        if request.headers.get("If-None-Match") == '"v1"':
            headers["Vary"] = "Accept-Encoding"
            return web.Response(status=304, headers=headers)
        return web.Response(text="body", headers=headers)

    app = web.Application()
    app.router.add_get("/r", page)
    c = await proxy(await origin(app))
    head, _ = await _get(c, "/r", "Accept-Encoding: gzip")
    assert "stored" in (_field(head, "Cache-Status") or ""), head
    await asyncio.sleep(1.1)
    head, _ = await _get(c, "/r", "Accept-Encoding: gzip")
    assert "fwd-status=304; stored" in (_field(head, "Cache-Status") or ""), head
    head, body = await _get(c, "/r", "Accept-Encoding: gzip")
    assert "hit" in (_field(head, "Cache-Status") or "") and body == b"body", head
    assert c.app_proxy.store.stats().entries == 1
