"""Findings of a review of content codings and proactive negotiation through the cache
(review-encoding): aiohttp origins that compress (enable_compression, FileResponse with
a pre-compressed sibling) or send the codings a test chooses, the proxy in front, both on
127.0.0.1; where in doubt compared with nginx 1.22 (proxy_cache) in front of the same
origin, and with Varnish as documented (http_gzip_support). Each finding's test failed on
the code it was written against (326ba27) and says what is expected, why (RFC section, or
what the peers do) and how severe it is; a guard of the first fix and the RFC 9110 §12.5.3
reading it rests on go with it."""

from __future__ import annotations

import asyncio
import gzip
import zlib

import pytest
from aiohttp import web
from support import raw_get, raw_origin

from cacheproxy.http.codings import accepts

BODY = b"negotiated text, long enough for a compressing origin to bother with it. " * 8
BROWSER = "Accept-Encoding: gzip, deflate, br, zstd"  # (aiohttp answers it with deflate)


def _decoded(fields: dict[str, str], body: bytes) -> bytes:
    """The content a client that decodes gzip and deflate (RFC 9110 §8.4.1) reads."""
    coding = fields.get("content-encoding")
    if coding == "gzip":
        return gzip.decompress(body)
    return zlib.decompress(body) if coding == "deflate" else body


def _compressing_without_vary() -> tuple[web.Application, list[str | None]]:
    """aiohttp's own enable_compression(): gzip for a request that accepts it, identity
    otherwise, and no `Vary: Accept-Encoding` on either (aiohttp 3.14 adds none). Records
    the Accept-Encoding of each request it answers."""
    seen: list[str | None] = []

    async def page(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Accept-Encoding"))
        resp = web.Response(body=BODY, content_type="text/plain",
                            headers={"Cache-Control": "max-age=60", "ETag": '"c1"'})
        resp.enable_compression()
        return resp

    app = web.Application()
    app.router.add_get("/r", page)
    return app, seen


# -- 1. a coded response stored without Vary goes to clients that refuse its coding --------


@pytest.mark.parametrize("refusal", [
    ("Accept-Encoding: identity",),
    ("Accept-Encoding: br, zstd;q=0.5",),  # (codings aiohttp does not make)
    ("Accept-Encoding: *;q=0, identity;q=1",),
    (),  # none at all: curl without --compressed, Java's and .NET's HTTP clients
])
async def test_a_coded_response_without_vary_is_not_served_to_a_client_refusing_it(
        origin, proxy, refusal):
    """The origin compresses per Accept-Encoding but forgets `Vary: Accept-Encoding`, as
    aiohttp's enable_compression() does. A browser's request stores the coded answer (deflate here);
    then a client that does not take it (`identity`, `br, zstd`, `*;q=0`) or sends no
    Accept-Encoding (curl, http.client-based scripts, Java, .NET: none decode gzip) was
    served the stored coded bytes as a hit: an undecodable body it never asked for, from
    the cache, to every such client for the entry's lifetime, where the origin would have
    sent them identity. RFC 9111 §4.1 lets a cache reuse a response without Vary for any
    request, but RFC 9110 §12.5.3 says what the client accepts; a cache may always go
    forward instead of reusing. Varnish (http_gzip_support, on by default) never sends a
    gzip object to a client whose Accept-Encoding lacks gzip (it gunzips it); nginx
    1.22's proxy_cache, run here in front of the same origin, serves the gzip copy to
    `identity` and to curl. The proxy now goes forward for such a client (its answer
    replaces the stored one, which every client may then decode), for the compressions
    origins negotiate (gzip, deflate, br, zstd, compress); an unregistered coding, which
    no client lists, is still reused (the public cache-tests suite stores one).
    Severity: medium (a broken page or API answer for every non-browser client of a
    common origin misconfiguration, until the entry expires)."""
    app, seen = _compressing_without_vary()
    c = await proxy(await origin(app))
    status, fields, body = await raw_get(c, "/r", BROWSER)
    assert status == 200 and fields.get("content-encoding") is not None
    assert _decoded(fields, body) == BODY

    status, fields, body = await raw_get(c, "/r", *refusal)
    assert status == 200 and "fwd=miss" in fields["cache-status"]  # (RFC 9211 §2.2)
    assert fields.get("content-encoding") is None, fields
    assert body == BODY
    assert len(seen) == 2  # it went to the origin, which answered identity
    # ...and the browser still gets a body it decodes (the identity one now stored).
    status, fields, body = await raw_get(c, "/r", BROWSER)
    assert status == 200 and _decoded(fields, body) == BODY



async def test_refusing_waiters_behind_an_origin_that_always_codes_do_not_queue(origin, proxy):
    """The other side of the test above: an origin that sends gzip whatever the request
    says (pre-compressed files, as object stores serve them with Content-Encoding: gzip)
    answers a refusing client's miss with gzip again, stored again. Concurrent refusing
    clients collapse behind one miss (README "Concurrent misses?"); had they waited again
    when the stored answer is still refused, each would lead the next wait, one origin
    request after the other (five clients, five times the origin's latency). They go
    upstream together instead: the origin sees them at once. (A guard for the fix above,
    not a defect of the code before it, which served them the stored gzip.)"""
    in_flight, most = 0, 0

    async def page(request: web.Request) -> web.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.3)
        in_flight -= 1
        return web.Response(body=gzip.compress(BODY), headers={
            "Cache-Control": "max-age=60", "Content-Encoding": "gzip"})

    app = web.Application()
    app.router.add_get("/r", page)
    c = await proxy(await origin(app))
    answers = await asyncio.gather(*(raw_get(c, "/r") for _ in range(5)))
    assert all(status == 200 for status, _, _ in answers)
    assert most >= 2  # after the first miss, the waiters' requests overlapped


@pytest.mark.parametrize(("accept_encoding", "codings", "taken"), [
    ("gzip, deflate, br, zstd", ["gzip"], True),
    ("GZIP;Q=0.5", ["gzip"], True),
    ("x-gzip", ["gzip"], True),  # RFC 9110 §8.4.1.3
    ("gzip", ["x-gzip"], True),
    ("gzip;q=0, identity", ["gzip"], False),
    ("gzip ; q=0.000", ["gzip"], False),
    ("*;q=0, identity", ["gzip"], False),
    ("*", ["br"], True),
    ("br;q=0, *", ["br"], False),  # the coding's own weight, not the wildcard's
    ("gzip", ["gzip", "br"], False),  # every coding applied must be taken
    ("", ["gzip"], False),  # RFC 9110 §12.5.3: an empty value takes no coding
    (None, ["gzip"], False),  # none at all: as Varnish reads it (see above)
    ("identity", ["identity"], True),
    ("identity", [], True),
])
def test_the_accept_encoding_reading_behind_it(accept_encoding, codings, taken):
    """RFC 9110 §12.5.3 as the check above reads it (coding names and weights are
    case-insensitive, §8.4.1, §12.4.2; a coding neither listed nor covered by `*` is not
    acceptable)."""
    assert accepts(accept_encoding, codings) is taken


# -- 2. a transfer coding with a parameter is relayed and stored as the content -------------


@pytest.mark.parametrize("coding", [
    "gzip;level=9, chunked",
    "GZIP ; level=9 , chunked",
    'x-gzip;note="a, b", chunked',  # (a comma inside a quoted parameter value)
])
async def test_a_transfer_coding_with_parameters_is_not_relayed_as_the_content(proxy, coding):
    """RFC 9112 §7: `transfer-coding = token *( OWS ";" OWS transfer-parameter )`. The
    proxy refuses (502, README "Upstream failures") a Transfer-Encoding naming a coding
    it cannot take off (it decodes chunked alone); but it compared each whole list
    member with the coding names, so `gzip;level=9, chunked` named no coding it knew:
    the chunked framing came off, the gzip did not, and the gzip bytes were relayed, and
    stored, as the content itself, without any Content-Encoding: every later client got
    undecodable bytes as identity from the cache. (nginx 1.22's proxy_cache, run here in
    front of such an origin, does the same, for `gzip, chunked` too: it looks for
    "chunked" alone; RFC 9112 §7 has a recipient decode every coding or refuse.)
    Severity: low (transfer codings with parameters are rare; the content served from
    the cache is corrupt when one comes)."""
    served = 0
    coded = gzip.compress(BODY)

    def answer(head: bytes) -> bytes:
        nonlocal served
        served += 1
        return (b"HTTP/1.1 200 OK\r\nCache-Control: max-age=3600\r\nTransfer-Encoding: "
                + coding.encode() + b"\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(coded), coded))

    async with raw_origin(answer) as port:
        c = await proxy(f"http://127.0.0.1:{port}")
        for _ in range(2):
            status, _, body = await raw_get(c, "/r")
            assert status == 502 and coded not in body
        assert served == 2  # nothing stored


# -- 3. chunked with a parameter: its framing is relayed and stored as the content ---------


async def test_chunked_with_a_parameter_is_not_relayed_with_its_framing(proxy):
    """`Transfer-Encoding: chunked;x=1` (RFC 9112 §7's grammar allows parameters;
    chunked defines none). llhttp takes only a bare `chunked` for the chunked coding, so
    the proxy read the answer to the close and relayed, and stored, the chunk framing
    (`78\\r\\n...0\\r\\n\\r\\n`) as the content: every later client got it from the cache.
    nginx 1.22, run here in front of the same origin, takes it for chunked and relays
    the content alone. The proxy cannot decode what its parser does not frame: a 502,
    as for a coding it cannot take off, never stored. Severity: low (an odd origin; the
    content served from the cache is corrupt when one comes)."""
    served = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await reader.readuntil(b"\r\n\r\n")
        served += 1
        writer.write(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=3600\r\n"
                     b"Transfer-Encoding: chunked;x=1\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
                     % (len(BODY), BODY))
        await writer.drain()
        writer.close()  # (the end of an answer its parser does not frame)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        c = await proxy(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        for _ in range(2):
            status, _, body = await raw_get(c, "/r")
            assert status == 502 and b"0\r\n\r\n" not in body
        assert served == 2  # nothing stored
    finally:
        server.close()
