"""Findings of a differential review of unusual client requests (review-diffreq): the
same raw requests sent to cacheproxy, Squid 5.7 (accel) and nginx 1.22 (proxy_cache) in
front of one aiohttp origin, looking for answers where cacheproxy differs from both
peers and the RFCs side with them. Each test failed on the code it was written against
(5e47b2b) and says what RFC 9110/9111/9112 or the peers do instead. Real origins and
clients on 127.0.0.1 only."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from test_hostile_http_regressions import exchange
from test_proxy_caching import Origin, start


async def test_overlapping_ranges_of_a_stored_response_do_not_multiply_it(
        origin: Any, proxy: Any) -> None:
    """`Range: bytes=0-,0-,...` (32 times, the most parse_ranges took) on a stored 1 MB
    response was answered with a 32 MB multipart/byteranges body, built whole in memory
    per request: a ~100-byte request bought 32 times the object in bandwidth and memory
    (with the default 8 MiB max_object_bytes, 256 MiB per request; a few concurrent ones
    exhaust the process). RFC 9110 §14.2 lets a server ignore "a ranges-specifier with
    more than two overlapping ranges", and §17.15 says servers "ought to ignore, coalesce,
    or reject egregious range requests, such as requests for more than two overlapping
    ranges" (Apache's CVE-2011-3192). nginx ignores a Range whose ranges add up to more
    than the representation (ngx_http_range_parse, NGX_DECLINED: 200) and Squid answered
    this request with the 1 MB 200 too. Severity: medium (amplification, memory DoS)."""
    size = 1_000_000
    o = Origin(r=lambda req: web.Response(body=b"x" * size,
                                          headers={"Cache-Control": "max-age=60"}))
    c = await start(origin, proxy, o)
    assert len(await (await c.get("/r")).read()) == size  # stored
    resp = await c.get("/r", headers={"Range": "bytes=" + ",".join(["0-"] * 32)})
    body = await resp.read()
    assert o.calls["r"] == 1
    assert resp.status == 200 and len(body) == size, (resp.status, len(body))


async def test_a_head_with_range_is_answered_from_the_stored_response(
        origin: Any, proxy: Any) -> None:
    """A HEAD carrying `Range` (download managers and media players probe with one) went
    to the origin on every request (Cache-Status fwd=bypass, nothing stored), beside a
    fresh stored response for the URL. RFC 9110 §14.2: "A server MUST ignore a Range
    header field received with a request method that is unrecognized or for which range
    handling is not defined", and GET is the only method it is defined for (If-Range is
    then ignored too, §13.1.5); the HEAD is any other HEAD, which the stored GET response
    answers (RFC 9110 §9.3.2). nginx and Squid answered it from their caches. Severity:
    low (a miss per such HEAD, origin load; the answer was right)."""
    o = Origin(r=lambda req: web.Response(body=b"0123456789",
                                          headers={"Cache-Control": "max-age=60",
                                                   "ETag": '"v1"'}))
    c = await start(origin, proxy, o)
    await (await c.get("/r")).read()
    for fields in ({"Range": "bytes=0-1"}, {"Range": "bytes=0-1", "If-Range": '"v1"'}):
        resp = await c.head("/r", headers=fields)
        assert resp.status == 200 and resp.headers["Content-Length"] == "10"
        assert resp.headers["X-Cache"] == "HIT", resp.headers.get("Cache-Status")
    assert o.calls["r"] == 1


async def test_an_http_1_0_request_is_answered_with_the_servers_own_version(
        origin: Any, proxy: Any) -> None:
    """An HTTP/1.0 request got `HTTP/1.0 200 OK` back, a miss and a hit alike. RFC 9110
    §6.2: "A server SHOULD send a response version equal to the highest version to which
    the server is conformant that has a major version less than or equal to the one
    received in the request", which is 1.1 (the proxy applies that rule to an HTTP/2.0
    request line already); the version says what the sender can do, not what the
    message is (RFC 9110 §2.5), and HTTP/1.0 framing still applies since the client said
    1.0. nginx and Squid answered `HTTP/1.1 200 OK`, with `Connection: close`. Severity:
    low."""
    o = Origin(r=lambda req: web.Response(text="ok", headers={"Cache-Control": "max-age=60"}))
    c = await start(origin, proxy, o)
    for want in ("MISS", "HIT"):
        answer = await exchange(c.server.port, b"GET /r HTTP/1.0\r\nHost: x\r\n\r\n",
                                idle=0.5)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:20]
        assert f"\r\nX-Cache: {want}\r\n".encode() in answer
        assert b"\r\nConnection: close\r\n" in answer and answer.endswith(b"\r\n\r\nok")


async def test_an_empty_transfer_encoding_beside_content_length_is_refused(
        origin: Any, proxy: Any) -> None:
    """`Transfer-Encoding:` with an empty value beside `Content-Length: 5` was taken as
    a 5-byte body and forwarded (the field dropped as hop-by-hop), though the proxy
    refuses Content-Length with any other Transfer-Encoding (README: request-smuggling
    shapes get 400). RFC 9112 §6.3: a message with both "ought to be handled as an
    error", and (item 4) "If a Transfer-Encoding header field is present in a request and
    the chunked transfer coding is not the final encoding, the message body length cannot
    be determined reliably; the server MUST respond with the 400 (Bad Request) status
    code and then close the connection". A front proxy that takes the field's presence as
    chunked (or as overriding the length) would split this connection's bytes into other
    requests than the proxy does. nginx and Squid answered 501 and closed; llhttp lets the
    empty value through. Severity: medium (request framing, smuggling-adjacent)."""
    o = Origin(r=lambda req: web.Response(text="ok"), r2=lambda req: web.Response(text="2"))
    c = await start(origin, proxy, o)
    answer = await exchange(
        c.server.port,
        b"POST /r HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \r\nContent-Length: 5\r\n\r\n"
        b"hello"
        b"GET /r2 HTTP/1.1\r\nHost: x\r\n\r\n", idle=0.5)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:40]
    assert answer.count(b"HTTP/1.1 ") == 1  # the connection closes after it
    assert o.calls["r"] == 0 and o.calls["r2"] == 0


@pytest.mark.parametrize(("version", "status"), [
    (b"HTTP/1.2", b"200"), (b"HTTP/1.9", b"200"), (b"HTTP/3.0", b"505"), (b"HTTP/0.8", b"505"),
    (b"HTTP/4.1", b"505")])
async def test_an_unknown_http_version_is_answered_as_rfc_9110_says(
        origin: Any, proxy: Any, version: bytes, status: bytes) -> None:
    """`GET / HTTP/1.2` and `GET / HTTP/3.0` got 400 Bad Request. RFC 9110 §2.5: "A
    recipient that receives a message with a major version number that it implements and
    a minor version number higher than what it implements SHOULD process the message as
    if it were in the highest minor version within that major version to which the
    recipient is conformant" (nginx and Squid answer HTTP/1.2 as 1.1: 200); §15.6.6: a
    major version the server does not support gets 505 (HTTP Version Not Supported), as
    nginx and Squid answer HTTP/3.0. Severity: low (no client sends these today; a 400
    tells a client its request was malformed rather than of an unsupported version)."""
    o = Origin(r=lambda req: web.Response(text="ok"))
    c = await start(origin, proxy, o)
    answer = await exchange(c.server.port, b"GET /r " + version + b"\r\nHost: x\r\n\r\n",
                            idle=0.5)
    assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer[:40]


async def echo(request: web.Request) -> web.Response:
    return web.Response(body=await request.read())


async def test_higher_minor_versions_are_read_as_1_1_however_the_bytes_arrive(
        origin: Any, proxy: Any) -> None:
    """llhttp refuses `HTTP/1.2` before the proxy sees it; the proxy rewrites the digit
    where its walk of the bytes finds a request line (RFC 9110 §2.5: a higher minor
    version is processed as the highest the recipient conforms to, 1.1). That has to hold
    for every shape the bytes come in: pipelined behind a 1.1 request and before another
    1.2 one in one read, a head split inside its request line or after it, a POST with its
    body, an unknown method (the Python parser's path), and a 1.2 request after one with
    `Connection: close` (not processed). A 1.2 request keeps 1.1's keep-alive."""
    o = Origin(r=lambda req: web.Response(text="ok"), r2=lambda req: web.Response(text="2"),
               p=echo)
    c = await start(origin, proxy, o)
    port = c.server.port
    answer = await exchange(port, b"GET /r HTTP/1.1\r\nHost: x\r\n\r\n"
                            b"GET /r2 HTTP/1.2\r\nHost: x\r\n\r\n"
                            b"GET /r HTTP/1.3\r\nHost: x\r\n\r\n")
    assert answer.count(b"HTTP/1.1 200 ") == 3, answer
    assert answer.index(b"\r\n\r\nok") < answer.index(b"\r\n\r\n2") < answer.rindex(b"ok")
    for chunks, answered in (
            ([b"GET /r HTTP/1.", b"2\r\nHost: x\r\n\r\n"], 1),
            ([b"GET /r HTTP/1.2\r\n", b"Host: x\r\n", b"\r\n"], 1),
            ([b"GET /r HTTP/1.1\r\nHost: x\r\n\r\nGET /r2 HTTP/1.2\r\nHo",
              b"st: x\r\n\r\n", b"GET /r HTTP/1.2\r\nHost: x\r\n\r\n"], 3)):
        answer = await exchange(port, *chunks)
        assert answer.count(b"HTTP/1.1 200 ") == answered, (chunks, answer)
        assert b" 400 " not in answer and b"Connection: close" not in answer, answer
    answer = await exchange(port, b"POST /p HTTP/1.2\r\nHost: x\r\nContent-Length: 5\r\n"
                            b"\r\nhel", b"lo")
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\nhello"), answer
    answer = await exchange(port, b"GET /r HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                            b"GET /r2 HTTP/1.2\r\nHost: x\r\n\r\n")
    assert answer.count(b"HTTP/1.1 ") == 1 and answer.endswith(b"ok"), answer
    assert o.calls["r2"] == 2
    answer = await exchange(port, b"PURGEX /r HTTP/1.2\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 ") and b" 400 " not in answer[:20], answer[:60]
    # read as 1.1, it meets 1.1's framing rules: Content-Length beside chunked is refused
    answer = await exchange(port, b"POST /p HTTP/1.2\r\nHost: x\r\nContent-Length: 3\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ") and answer.count(b"HTTP/1.1") == 1, answer
    assert o.calls["p"] == 1


async def test_close_ends_an_http_1_0_connection_that_also_says_keep_alive(
        origin: Any, proxy: Any) -> None:
    """An HTTP/1.0 request with `Connection: keep-alive, close` was answered with
    `Connection: keep-alive`, the connection kept open and the next request on it
    served: llhttp lets an HTTP/1.0 keep-alive win over close (for HTTP/1.1 close wins).
    RFC 9112 §9.3: "If the "close" connection option is present, the connection will
    not persist after the current response"; §9.6: "A server that receives a "close"
    connection option MUST initiate closure of the connection after it sends the final
    response to the request that contained the "close" connection option" (and nothing
    after it is processed: the README's own rule for requests behind a close). nginx
    answers with `Connection: close` and closes. Severity: low."""
    o = Origin(r=lambda req: web.Response(text="ok"), r2=lambda req: web.Response(text="2"))
    c = await start(origin, proxy, o)
    for options in (b"keep-alive, close", b"close, keep-alive"):
        answer = await exchange(
            c.server.port,
            b"GET /r HTTP/1.0\r\nHost: x\r\nConnection: " + options + b"\r\n\r\n",
            b"GET /r2 HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n", idle=0.5)
        assert answer.count(b"HTTP/1.1 200 ") == 1, answer
        assert b"\r\nConnection: close\r\n" in answer and answer.endswith(b"\r\n\r\nok")
    assert o.calls["r2"] == 0
