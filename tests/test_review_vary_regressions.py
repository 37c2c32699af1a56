"""Findings of a review of content negotiation, content codings and Vary (review-vary):
an origin that compresses per Accept-Encoding (aiohttp's enable_compression) or negotiates
on other fields, the proxy in front, both on 127.0.0.1; where in doubt compared with
nginx 1.22 (proxy_cache) and Squid 5.7 (accel) in front of the same origin. Each test
failed on the code it was written against (1916a5a) and says what is expected, why (RFC
section, or what the peers do) and how severe it is."""

from __future__ import annotations

import asyncio
import gzip
from typing import Any

from aiohttp import web

BODY = b"negotiated text, long enough for a compressing origin to bother with it. " * 8


class Compressing:
    """An origin that gzips for clients that accept it (aiohttp's enable_compression) and
    answers its own If-None-Match with a 304 whose fields a test chooses. Counts the full
    answers it sends, by the request's Accept-Encoding."""

    def __init__(self, vary: str, vary_on_304: str | None) -> None:
        self.vary, self.vary_on_304 = vary, vary_on_304
        self.full: list[str | None] = []
        self.app = web.Application()
        self.app.router.add_get("/r", self.answer)

    async def answer(self, request: web.Request) -> web.StreamResponse:
        headers = {"Cache-Control": "max-age=60", "ETag": '"v1"', "Vary": self.vary}
        if request.headers.get("If-None-Match") == '"v1"':
            if self.vary_on_304 is None:
                del headers["Vary"]
            else:
                headers["Vary"] = self.vary_on_304
            return web.Response(status=304, headers=headers)
        self.full.append(request.headers.get("Accept-Encoding"))
        resp = web.Response(body=BODY, headers=headers, content_type="text/plain")
        resp.enable_compression()
        return resp


async def _get(client: Any, path: str, *fields: str) -> tuple[str, bytes]:
    """A GET with exactly these fields (no Accept-Encoding unless given): the head, the body."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    lines = [f"GET {path} HTTP/1.1", "Host: example.test", "Connection: close", *fields]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), body


def _field(head: str, name: str) -> str | None:
    """The field's lines, joined (RFC 9110 §5.3); None when absent."""
    values = [v.strip() for k, _, v in (line.partition(":") for line in head.split("\r\n")[1:])
              if k.strip().lower() == name.lower()]
    return ", ".join(values) if values else None


# -- 1. a 304 whose Vary names fewer fields re-keys the stored coded body ----------------


async def test_a_304_naming_fewer_vary_fields_does_not_widen_the_stored_variant(origin, proxy):
    """The 200s say `Vary: Origin, Accept-Encoding`; the origin's 304 says `Vary: Origin`
    only. Read from their source (not run here), that is what Express sends with
    `compression` and `cors({origin: ...})`: cors sets Vary: Origin on every answer,
    compression adds Accept-Encoding only when the Content-Type is compressible, and
    Express's res.send takes Content-Type off a 304. The proxy merged the 304's Vary over
    the stored one (RFC 9111 §3.2) and re-keyed the stored gzip body on Origin alone, so a
    client without Accept-Encoding (curl) was then served gzip it cannot decode, from
    storage, until the entry went. RFC 9110 §15.4.5 says the 304 should repeat the 200's
    Vary, but §3.2 lets a cache keep the fields its stored response depends on to keep it
    whole, and the content was negotiated on the stored Vary's fields: a 304 carries no
    content to say otherwise. nginx and Squid, in front of the same origin, keep
    `Vary: Origin, Accept-Encoding` after the 304 and fetch identity for curl.
    Severity: high (an undecodable body, or another language's, from a shared cache, to
    every client of the other variants, behind a popular origin stack)."""
    up = Compressing("Origin, Accept-Encoding", vary_on_304="Origin")
    c = await proxy(await origin(up.app))
    head, body = await _get(c, "/r", "Accept-Encoding: gzip")
    assert _field(head, "Content-Encoding") == "gzip"
    # A reload: the proxy revalidates its gzip variant, the origin answers 304.
    head, _ = await _get(c, "/r", "Accept-Encoding: gzip", "Cache-Control: no-cache")
    assert "fwd-status=304" in (_field(head, "Cache-Status") or ""), head
    assert _field(head, "Vary") is not None and "accept-encoding" in _field(head, "Vary").lower()

    head, body = await _get(c, "/r")  # curl: no Accept-Encoding
    assert _field(head, "Content-Encoding") is None, head
    assert body == BODY
    assert up.full == ["gzip", None]


# -- 2. whitespace around ";" splits variants the README says are normalised ---------------


async def test_whitespace_around_parameters_does_not_split_variants(origin, proxy):
    """README (What is the key?): Vary adds the request's values "normalised (whitespace,
    case for Accept*)". Whitespace around commas was taken out, not around the ";" before
    a parameter: `en-US,en;q=0.9` (Chromium) and `en-US, en; q=0.9` (the same preference,
    RFC 9110 §12.4.2 and §5.6.6: `weight = OWS ";" OWS "q=" qvalue`) were two variants,
    each fetched from the origin and stored. Severity: low (needless misses and storage,
    never a wrong answer)."""
    seen: list[str | None] = []

    async def page(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Accept-Language"))
        return web.Response(text="en", headers={"Cache-Control": "max-age=60",
                                                "Vary": "Accept-Language"})

    app = web.Application()
    app.router.add_get("/r", page)
    c = await proxy(await origin(app))
    for spelling in ("en-US,en;q=0.9", "en-US, en; q=0.9", "en-US ,en ; q=0.9"):
        head, body = await _get(c, "/r", f"Accept-Language: {spelling}")
        assert body == b"en"
    assert seen == ["en-US,en;q=0.9"], head


# -- 3. waiters for another variant all go upstream at once ---------------------------------


async def test_waiters_for_another_variant_do_not_all_go_upstream_at_once(origin, proxy):
    """Concurrent misses for one URL collapse behind one upstream request (README:
    Concurrent misses?, nginx's proxy_cache_lock). A browser's miss (gzip) leads; four
    clients without Accept-Encoding arrive meanwhile and wait for it. Its answer is
    stored, but it is not their variant (Vary: Accept-Encoding, RFC 9111 §4.1): the four
    then went upstream together, four requests for one identity response, where one of
    them should lead again and the others wait for it (as waiters behind a leader that got
    no answer already do). nginx 1.22 (proxy_cache_lock) in front of the same origin
    sends one identity request: after a Vary mismatch it looks up the variant's own key,
    and its lock holds there too (Squid 5.7's collapsed_forwarding lets the four go, as
    the proxy did). On a cold cache (a start, a purge, a deploy) every variant but the
    first herds onto the origin, after waiting for the first for nothing.
    Severity: low (origin load on a cold cache; answers are right)."""
    full: list[str | None] = []

    async def page(request: web.Request) -> web.Response:
        full.append(request.headers.get("Accept-Encoding"))
        await asyncio.sleep(0.3)
        resp = web.Response(body=BODY, content_type="text/plain", headers={
            "Cache-Control": "max-age=60", "Vary": "Accept-Encoding"})
        resp.enable_compression()
        return resp

    app = web.Application()
    app.router.add_get("/r", page)
    c = await proxy(await origin(app))
    leader = asyncio.ensure_future(_get(c, "/r", "Accept-Encoding: gzip"))
    await asyncio.sleep(0.1)
    waiters = [asyncio.ensure_future(_get(c, "/r")) for _ in range(4)]
    await asyncio.gather(leader, *waiters)
    assert _field(leader.result()[0], "Content-Encoding") == "gzip"
    for w in waiters:
        head, body = w.result()
        assert _field(head, "Content-Encoding") is None and body == BODY, head
    assert full == ["gzip", None]


# -- 4. one background refresh per URL, not per variant ------------------------------------


async def test_stale_while_revalidate_refreshes_each_variant_served_stale(origin, proxy):
    """RFC 5861 §3: a response served stale under stale-while-revalidate is revalidated in
    the background. The proxy ran one background refresh per URL at a time: the gzip and
    identity variants (Vary: Accept-Encoding) both stale, a browser's request started the
    gzip variant's refresh, and a request for the identity variant while it ran was
    served stale with no refresh of its own, so the identity variant stayed stale (and
    was served stale again) until another request came after the first refresh ended; a
    rarely asked variant could leave its window that way and then cost a client a
    blocking revalidation. Severity: low (staleness within what the origin allowed)."""
    asked: list[tuple[str | None, str | None]] = []

    async def page(request: web.Request) -> web.Response:
        asked.append((request.headers.get("Accept-Encoding"),
                      request.headers.get("If-None-Match")))
        if request.headers.get("If-None-Match"):
            await asyncio.sleep(0.3)  # a slow revalidation: the refreshes overlap
        gz = request.headers.get("Accept-Encoding") == "gzip"
        tag = '"gz"' if gz else '"id"'
        headers = {"Cache-Control": "max-age=3, stale-while-revalidate=60", "ETag": tag,
                   "Vary": "Accept-Encoding"}
        if request.headers.get("If-None-Match") == tag:
            return web.Response(status=304, headers=headers)
        if gz:
            headers["Content-Encoding"] = "gzip"
            return web.Response(body=gzip.compress(BODY), headers=headers)
        return web.Response(body=BODY, headers=headers)

    app = web.Application()
    app.router.add_get("/r", page)
    c = await proxy(await origin(app))
    await _get(c, "/r", "Accept-Encoding: gzip")
    await _get(c, "/r")
    await asyncio.sleep(3.1)  # both stale, within stale-while-revalidate
    head, _ = await _get(c, "/r", "Accept-Encoding: gzip")
    assert "stale-while-revalidate" in (_field(head, "Cache-Status") or ""), head
    head, _ = await _get(c, "/r")
    assert "stale-while-revalidate" in (_field(head, "Cache-Status") or ""), head
    await asyncio.sleep(0.6)  # both refreshes done
    assert sorted(asked[2:], key=str) == [("gzip", '"gz"'), (None, '"id"')], asked
    head, _ = await _get(c, "/r")
    assert "hit; ttl=" in (_field(head, "Cache-Status") or "") \
        and "stale" not in (_field(head, "Cache-Status") or ""), head


# -- 5. hit-for-pass marks the URL, not the variant whose answer could not be stored -------


async def test_an_unstorable_variant_does_not_stop_the_others_collapsing(origin, proxy):
    """Hit-for-pass (README: Concurrent misses?, Varnish's): after an answer that could
    not be stored for anyone, the URL's requests stop waiting behind each other for 30 s,
    and a conditional or Range miss goes to the origin as it is. The mark was the URL's,
    whatever the answer's Vary: one identity answer too big for max_object_bytes (curl, a
    monitoring probe, on a large compressible file whose gzip fits) and the browsers' gzip
    misses herded onto the origin uncollapsed, their conditional misses were passed on
    (304s relayed, the gzip variant never filled) for as long as such probes kept coming.
    Varnish's hit-for-miss object varies like the answer it was made from (RFC 9111 §4.1;
    read from its cache_fetch.c, not run here: Vary instructions are made for every object
    that is not private, uncacheable ones too): only the identity requests would pass.
    Severity: low (origin load, hit rate)."""
    full: list[str | None] = []

    async def page(request: web.Request) -> web.StreamResponse:
        full.append(request.headers.get("Accept-Encoding"))
        await asyncio.sleep(0.3)
        resp = web.Response(body=BODY * 3, content_type="text/plain", headers={
            "Cache-Control": "max-age=60", "Vary": "Accept-Encoding"})
        resp.enable_compression()
        return resp

    app = web.Application()
    app.router.add_get("/r", page)
    c = await proxy(await origin(app), cache={"max_object_bytes": 1000})
    head, body = await _get(c, "/r")  # identity: 1.7 kB, too big for the store
    assert body == BODY * 3 and "too-big" in (_field(head, "Cache-Status") or ""), head
    browsers = [asyncio.ensure_future(_get(c, "/r", "Accept-Encoding: gzip")) for _ in range(4)]
    await asyncio.gather(*browsers)
    for b in browsers:
        assert _field(b.result()[0], "Content-Encoding") == "gzip"
    assert full == [None, "gzip"]
