"""An RFC 9110 / RFC 9111 conformance review's findings, each through the running proxy (a
real aiohttp origin on 127.0.0.1, the proxy in front). Each test names the section and
quotes the requirement it checks."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from email.utils import formatdate

import pytest
from aiohttp import web
from multidict import CIMultiDict

BODY = b"hello world"


def imf(timestamp: float) -> str:
    return formatdate(timestamp, usegmt=True)


def static(fields: list[tuple[str, str]]) -> tuple[web.Application, Counter[str]]:
    """An origin at /r answering every GET with BODY and fields; calls counts them."""
    calls: Counter[str] = Counter()

    async def handle(request: web.Request) -> web.Response:
        calls[request.method] += 1
        return web.Response(body=BODY, headers=CIMultiDict(fields))

    app = web.Application()
    app.router.add_get("/r", handle)
    return app, calls


# -- RFC 9110 §13.1.5 If-Range, §8.8.2.2 weak and strong Last-Modified -----------------------

async def test_s13_1_5_if_range_with_a_weak_last_modified_date_gets_the_whole_response(
    origin, proxy
) -> None:
    """RFC 9110 §13.1.5, evaluating If-Range: "1. If the HTTP-date validator provided is not
    a strong validator in the sense defined by Section 8.8.2.2, the condition is false."
    §8.8.2.2: a Last-Modified compared by an intermediate cache to the one of its entry is
    strong only when "that cache entry includes a Date value which is at least one second
    after the Last-Modified value" (two versions made in the same second share it). Here the
    stored Date equals Last-Modified: the date is weak, the condition false, and the client
    must get the whole 200, not a 206 that it would splice onto a part of another version."""
    now = imf(time.time())
    app, calls = static([("Date", now), ("Last-Modified", now),
                         ("Cache-Control", "max-age=60")])
    c = await proxy(await origin(app))
    assert (await c.get("/r")).status == 200
    resp = await c.get("/r", headers={"Range": "bytes=0-3", "If-Range": now})
    assert resp.headers["X-Cache"] == "HIT"
    assert resp.status == 200 and await resp.read() == BODY
    assert calls["GET"] == 1


async def test_s13_1_5_if_range_with_a_strong_last_modified_date_still_gets_the_part(
    origin, proxy
) -> None:
    """The other side of the rule above: a Date a second or more after Last-Modified makes
    the date strong, and an If-Range equal to it holds (206)."""
    t = time.time()
    app, _ = static([("Date", imf(t)), ("Last-Modified", imf(t - 3600)),
                     ("Cache-Control", "max-age=60")])
    c = await proxy(await origin(app))
    await c.get("/r")
    resp = await c.get("/r", headers={"Range": "bytes=0-3", "If-Range": imf(t - 3600)})
    assert resp.status == 206 and await resp.read() == b"hell"


# -- RFC 9110 §13.1.3, §13.1.4: a date precondition that is a list is ignored ----------------

async def test_s13_1_3_if_modified_since_in_two_field_lines_is_ignored(origin, proxy) -> None:
    """RFC 9110 §13.1.3: "A recipient MUST ignore the If-Modified-Since header field if the
    received field value is not a valid HTTP-date, the field value has more than one member,
    or if the request method is neither GET nor HEAD." Two field lines make one field value
    of two members (§5.3): the field is ignored, and the stored 200 is the answer, not a
    304 taken from the first line alone."""
    t = time.time()
    app, _ = static([("Date", imf(t)), ("Last-Modified", imf(t - 3600)),
                     ("Cache-Control", "max-age=60")])
    c = await proxy(await origin(app))
    await c.get("/r")
    resp = await c.get("/r", headers=CIMultiDict([("If-Modified-Since", imf(t)),
                                                  ("If-Modified-Since", imf(t - 7200))]))
    assert resp.headers["X-Cache"] == "HIT"
    assert resp.status == 200 and await resp.read() == BODY


async def test_s13_1_4_if_unmodified_since_in_two_field_lines_is_ignored(origin, proxy) -> None:
    """RFC 9110 §13.1.4: "A recipient MUST ignore the If-Unmodified-Since header field if the
    received field value is not a valid HTTP-date (including when the field value appears
    to be a list of dates)." Two field lines are such a list: no 412 from the first."""
    t = time.time()
    app, _ = static([("Date", imf(t)), ("Last-Modified", imf(t - 3600)),
                     ("Cache-Control", "max-age=60")])
    c = await proxy(await origin(app))
    await c.get("/r")
    resp = await c.get("/r", headers=CIMultiDict([("If-Unmodified-Since", imf(t - 7200)),
                                                  ("If-Unmodified-Since", imf(t))]))
    assert resp.status == 200 and await resp.read() == BODY


async def test_s13_1_5_if_range_in_two_field_lines_is_false(origin, proxy) -> None:
    """RFC 9110 §13.1.5: If-Range = entity-tag / HTTP-date, one value; two field lines make a
    value that is neither (§5.3), and the evaluation ends in "3. Otherwise, the condition is
    false": the whole representation, not the part the first line alone would allow."""
    t = time.time()
    app, _ = static([("Date", imf(t)), ("ETag", '"v1"'), ("Cache-Control", "max-age=60")])
    c = await proxy(await origin(app))
    await c.get("/r")
    resp = await c.get("/r", headers=CIMultiDict([("Range", "bytes=0-3"), ("If-Range", '"v1"'),
                                                  ("If-Range", '"v0"')]))
    assert resp.status == 200 and await resp.read() == BODY


# -- RFC 9111 §4.3.4 Freshening stored responses upon validation -----------------------------

async def test_s4_3_4_a_304_freshens_every_stored_response_with_its_strong_validator(
    origin, proxy
) -> None:
    """RFC 9111 §4.3.4: "If the new response contains a strong validator ..., then that
    strong validator identifies the selected representations for update. All the stored
    responses with the same strong validator are identified for update. ... For each stored
    response identified, the cache MUST update its header fields with the header fields
    provided in the 304 (Not Modified) response, as per Section 3.2." Two variants (Vary:
    Accept-Language) carry the same strong ETag; the 304 that validates one (max-age=60)
    freshens the other too, which is then served without asking the origin again."""
    calls: Counter[str] = Counter()

    async def handle(request: web.Request) -> web.Response:
        calls[request.headers.get("If-None-Match", "full")] += 1
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304, headers={"ETag": '"v1"',
                                                     "Cache-Control": "max-age=60"})
        return web.Response(body=BODY, headers={"ETag": '"v1"', "Age": "5",
                                                "Cache-Control": "max-age=1",
                                                "Vary": "Accept-Language"})

    app = web.Application()
    app.router.add_get("/r", handle)
    c = await proxy(await origin(app))
    for lang in ("en", "fr"):  # both stored, both stale at once (Age 5 > max-age=1)
        assert (await c.get("/r", headers={"Accept-Language": lang})).status == 200
    validated = await c.get("/r", headers={"Accept-Language": "en"})
    assert validated.status == 200 and calls['"v1"'] == 1
    other = await c.get("/r", headers={"Accept-Language": "fr"})
    assert other.status == 200 and await other.read() == BODY
    assert other.headers["X-Cache"] == "HIT"
    assert calls == {"full": 2, '"v1"': 1}, "the other variant was validated again"


async def test_s4_3_4_a_304_does_not_put_back_a_variant_stored_anew_meanwhile(
    origin, proxy
) -> None:
    """The variants a 304's strong tag freshens are the ones read when the validation
    began. One stored anew while the 304 was on its way (a newer answer, another tag) is
    the newer representation: the freshened older one must not replace it (RFC 9111 §4.3.4
    updates the stored responses that have the tag, and the newer one has not)."""
    release = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        lang = request.headers.get("Accept-Language")
        if request.headers.get("If-None-Match") == '"v1"' and lang == "en":
            await release.wait()  # the 304 for en waits until fr is stored anew
            return web.Response(status=304, headers={"ETag": '"v1"',
                                                     "Cache-Control": "max-age=60"})
        version = "v2" if request.headers.get("If-None-Match") else "v1"
        return web.Response(text=f"{lang} {version}", headers={
            "ETag": f'"{version}"', "Age": "5", "Cache-Control": "max-age=1" if
            version == "v1" else "max-age=60", "Vary": "Accept-Language"})

    app = web.Application()
    app.router.add_get("/r", handle)
    c = await proxy(await origin(app), cache={"collapse": False})  # (fr goes at once)
    for lang in ("en", "fr"):  # both stored with "v1", both stale (Age 5 > max-age=1)
        assert await (await c.get("/r", headers={"Accept-Language": lang})).text() \
            == f"{lang} v1"
    validating = asyncio.ensure_future(c.get("/r", headers={"Accept-Language": "en"}))
    await asyncio.sleep(0.1)  # its lookup read fr ("v1") as a sibling
    newer = await c.get("/r", headers={"Accept-Language": "fr"})  # fr: "v2" stored
    assert await newer.text() == "fr v2"
    release.set()
    assert (await validating).status == 200
    again = await c.get("/r", headers={"Accept-Language": "fr"})
    assert await again.text() == "fr v2", "the freshened older variant replaced the newer"
    assert again.headers["X-Cache"] == "HIT"


# -- RFC 9213 §3: CDN-Cache-Control is for caches acting for the origin, not forward proxies --

async def forward_get(port: int, url: str, *fields: str) -> tuple[bytes, bytes]:
    """A forward-mode (absolute-form) GET through the proxy: (head, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    host = url.split("/")[2]
    lines = [f"GET {url} HTTP/1.1", f"Host: {host}", *fields, "Connection: close"]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    try:
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


@pytest.mark.parametrize("targeted", [("CDN-Cache-Control", "max-age=600"),
                                      ("Surrogate-Control", "max-age=600")])
async def test_forward_mode_keeps_a_private_answer_whatever_cdn_cache_control_says(
    origin, proxy, targeted: tuple[str, str]
) -> None:
    """RFC 9213 §3: CDN-Cache-Control "applies to caches that are part of a distributed
    network that operate on behalf of an origin server (commonly called a content delivery
    network or CDN)"; Surrogate-Control (W3C Edge Architecture) likewise targets surrogates
    the origin's owner operates. As a browser's forward proxy, cacheproxy acts for the
    clients, not for the sites they visit: neither field targets it, and Cache-Control
    binds it as the shared cache it is. RFC 9111 §5.2.2.7: "a shared cache MUST NOT store
    the response" that says private; §5.2.2.5 no-store: "a cache MUST NOT store any part
    of either the immediate request or the response". A site's per-user page (a cookie
    session) marked private and no-store, with a CDN lifetime for its own CDN, was stored
    and served to the next user of the proxy."""
    async def page(request: web.Request) -> web.Response:
        fields = {"Cache-Control": "private, no-store", targeted[0]: targeted[1]}
        return web.Response(text=f"page of {request.headers.get('Cookie')}", headers=fields)

    app = web.Application()
    app.router.add_get("/me", page)
    site = await origin(app)
    client = await proxy(await origin(web.Application()), forward={"enabled": True})
    url = f"http://localhost:{site.port}/me"
    _, alice = await forward_get(client.port, url, "Cookie: session=alice")
    _, bob = await forward_get(client.port, url, "Cookie: session=bob")
    assert alice == b"page of session=alice"
    assert bob == b"page of session=bob", "one user's private page served to another"
