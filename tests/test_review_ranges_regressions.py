"""Findings of a review of Range, conditional and HEAD requests answered from storage
(review-ranges): the RFC 9110 §13/§14 and RFC 9111 §3.3, §4.3.2, §4.3.5 rules, with nginx
1.22 (proxy_cache, slice off) on loopback where the RFC leaves a choice. Each test failed
on the code it was written against (c3d2749) and says what the RFCs or nginx do
instead. Real origins and clients on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from test_proxy_caching import Origin, start
from test_review_own_regressions import paused_media


def stored_origin(body: bytes = b"0123456789", **headers: str) -> Origin:
    return Origin(r=lambda req: web.Response(
        body=body, headers={"Cache-Control": "max-age=600", "ETag": '"v1"', **headers}))


async def test_a_range_with_thousands_of_digits_is_no_500(origin: Any, proxy: Any) -> None:
    """`Range: bytes=0-999...9` (5,000 digits; the head may hold 64 KiB) was answered 500
    with a traceback in the log, on a hit and on a miss alike: parse_ranges called int()
    on the digits, and Python refuses strings of more than 4,300 digits (ValueError). One
    small request per traceback floods the log, and a media client with an absurd range
    gets an error instead of its bytes. RFC 9110 §14.1.1: a last-pos past the end means
    the end (206), a first-pos past it is unsatisfiable (416), and a suffix longer than
    the representation is all of it (206 / 416 / 206). nginx's parser checks for overflow
    and answers 416; never a 500. The design's rule: "a bad input is an answer, not a
    crash". Severity: medium."""
    o = stored_origin()
    c = await start(origin, proxy, o)
    digits = "9" * 5000
    resp = await c.get("/r", headers={"Range": f"bytes=-{digits}"})  # a miss
    assert resp.status == 206, resp.status
    assert resp.headers["Content-Range"] == "bytes 0-9/10"
    assert await resp.read() == b"0123456789"
    resp = await c.get("/r", headers={"Range": f"bytes=2-{digits}"})  # a hit
    assert resp.status == 206 and resp.headers["Content-Range"] == "bytes 2-9/10"
    assert await resp.read() == b"23456789"
    resp = await c.get("/r", headers={"Range": f"bytes={digits}-"})
    assert resp.status == 416 and resp.headers["Content-Range"] == "bytes */10"
    assert o.calls["r"] == 1


async def test_a_suffix_range_of_an_empty_representation_is_no_416(
        origin: Any, proxy: Any) -> None:
    """`Range: bytes=-5` on a stored 200 with `Content-Length: 0` was answered 416
    (`Content-Range: bytes */0`), on the miss that stored it and on hits after. RFC 9110
    §14.1.1: "If the selected representation has zero length, the only satisfiable form
    of range-spec is a suffix-range with a non-zero suffix-length", so 416 (§15.5.17: no
    range satisfiable) is wrong; as no Content-Range can name zero bytes, the whole,
    empty, 200 is the answer, which nginx sends (for every Range on an empty body). A
    client that takes the 416 to mean the resource shrank starts over or fails (download
    managers resume with a suffix). `bytes=0-` stays a 416, as §14.1.1 says. Severity:
    low."""
    o = stored_origin(b"")
    c = await start(origin, proxy, o)
    for _ in ("miss", "hit"):
        resp = await c.get("/r", headers={"Range": "bytes=-5"})
        assert resp.status == 200, resp.status
        assert "Content-Range" not in resp.headers and await resp.read() == b""
    resp = await c.get("/r", headers={"Range": "bytes=0-"})
    assert resp.status == 416 and resp.headers["Content-Range"] == "bytes */0"
    assert o.calls["r"] == 1


@pytest.mark.parametrize(("cache_control", "size"), [
    ("no-store", 5),      # not storable for anyone
    ("private", 5),
    ("max-age=600", 11),  # over max_object_bytes
])
async def test_range_requests_to_an_unstorable_url_go_to_the_origin_once_each(
        origin: Any, proxy: Any, cache_control: str, size: int) -> None:
    """Every `Range` request for a URL whose answers cannot be stored (no-store, private,
    or over max_object_bytes: a video file, where a media element sends nothing but Range
    requests, `bytes=0-` then one per seek) cost two origin requests, forever: the whole
    representation first (read up to its head, its connection then closed), then the
    request again with its Range. The README says a URL "whose last answer was not
    storable for anyone (hit-for-pass) ... sends its Range as it is at once", and so it
    did after a plain GET; but the Range miss's answer was turned into the Refetch
    before the driver looked for hit-for-pass, so it was never marked. Varnish's
    hit-for-pass after the first answer, and nginx with proxy_cache, send such a request
    once. Severity: medium (twice the origin requests, and a closed origin connection,
    per seek in every unstorable media file)."""
    seen: list[str | None] = []

    def answer(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Range"))
        return web.Response(body=b"x" * size, headers={"Cache-Control": cache_control})

    c = await start(origin, proxy, Origin(r=answer), cache={"max_object_bytes": 10})
    for first in range(3):
        resp = await c.get("/r", headers={"Range": f"bytes={first}-"})
        assert resp.status == 200 and len(await resp.read()) == size  # (origin: no ranges)
    # The first asked whole (it might have been storable), then as the client asked.
    assert seen == [None, "bytes=0-", "bytes=1-", "bytes=2-"], seen


@pytest.mark.parametrize("fields", [
    b"Range: bytes=100-\r\nIf-Range: \"v0\"\r\n",  # a seek after the file changed
    b"Range: items=0-1\r\n",                       # a unit the cache ignores
    b"Range: bytes=5-2\r\n",                       # an invalid range-spec: ignored
])
async def test_a_range_miss_answered_whole_streams(origin: Any, proxy: Any,
                                                   fields: bytes) -> None:
    """On a Range miss the proxy asks for the whole representation to store it. When the
    answer to the client is that whole 200 anyway (If-Range names another version, as a
    media element's seek does after the file changed; a unit other than bytes; an
    invalid range), the proxy still read the whole body into storage before sending the
    client a byte (whole_first without a part): the client waited for the last byte of
    up to max_object_bytes (8 MiB) to reach the proxy, where the same miss without Range
    streams at once. DESIGN: "the first byte reaches the client before the last byte
    leaves the origin"; nginx's proxy_cache streams the 200 it sends for such a request.
    Severity: low (latency only; nothing wrong is served)."""
    half = 64 * 1024
    app, first_half, go_on = paused_media(
        "/v", half, {"Cache-Control": "max-age=600", "ETag": '"v1"'})
    client = await proxy(await origin(app))
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write(b"GET /v HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s\r\n"
                     % (client.server.port, fields))
        await asyncio.wait_for(first_half.wait(), 5)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 1)
        except TimeoutError:
            head = b""
        streamed = bool(head)
        go_on.set()
        if not head:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        body = await asyncio.wait_for(reader.readexactly(2 * half), 10)
    finally:
        go_on.set()
        writer.close()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
    assert body == b"a" * half + b"b" * half
    assert streamed, "the 200 head came only once the origin had sent the whole body"
    again = await client.get("/v", headers={"Range": "bytes=0-1"})  # stored whole
    assert again.status == 206 and again.headers["X-Cache"] == "HIT"


@pytest.mark.parametrize("value", ["bytes=0-1", "bytes=0-1, 4-5", "bytes=50-"])
async def test_a_part_made_from_storage_carries_no_digest_of_the_whole(
        origin: Any, proxy: Any, value: str) -> None:
    """A 206 (or 416) the cache cut from a stored 200 kept the 200's `Content-Digest` and
    `Content-MD5`, digests of the 200's content, on a message whose content is the part
    (or nothing). RFC 9530 §2: Content-Digest is computed over the message's content, and
    its Appendix B example of a 206 carries the digest of the partial content (with
    `Repr-Digest` for the whole representation); Content-MD5 (RFC 1864; RFC 2616 §14.15)
    likewise covers the body sent. A client that checks them (download tools verifying
    integrity) rejects every range the cache serves as corrupt and fetches again. Both
    misses (the part streamed as the whole is stored) and hits did it; nginx does too.
    Repr-Digest, of the whole representation, stays. Severity: low."""
    o = stored_origin(**{"Content-Digest": "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
                         "Content-MD5": "eB5eJF1ptWaXm4bijSPyxw==",
                         "Repr-Digest": "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"})
    c = await start(origin, proxy, o)
    for _ in ("miss", "hit"):
        resp = await c.get("/r", headers={"Range": value})
        assert resp.status in (206, 416)
        assert "Content-Digest" not in resp.headers and "Content-MD5" not in resp.headers
        assert resp.status == 416 or "Repr-Digest" in resp.headers
    whole = await c.get("/r")
    assert whole.headers["X-Cache"] == "HIT" and "Content-Digest" in whole.headers
