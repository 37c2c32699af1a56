"""Findings of a deep read of the sans-I/O request flow (cacheproxy/http/flow/) and the
driver that performs it (proxy/driver.py, exchange.py, handler.py, respond.py, fill.py,
collapse.py) against RFC 9111, RFC 9110, RFC 5861 and RFC 9211 (review-flowread): where
two rules meet (a Range behind a stale-while-revalidate refresh, a 304 to a conditional
request, HEAD freshening, only-if-cached, max-stale with must-revalidate, Vary changed by a
304). Each test ran against the real proxy with an origin on 127.0.0.1, failed before its
fix, and says what is expected, why, and how severe it is."""

from __future__ import annotations

from support import raw_get, raw_origin, until

# -- 1. a Range that triggers a stale-while-revalidate refresh loses the refresh --------------


async def test_rfc5861_s3_a_range_request_s_background_refresh_stores_a_chunked_200(
        proxy) -> None:
    """A Range request (a media element's seek, a download manager) answered from a stored
    response under stale-while-revalidate started a background refresh that kept the
    client's Range in its facts: the origin's new 200 of unknown length (chunked) was then
    taken as "ask again with the Range" (RFC 9110 §14.2, meant for a client waiting) and
    dropped, the connection closed. Clients went on getting the old representation for as
    long as stale-while-revalidate allowed, and every Range request in that window fetched
    the new one again for nothing. RFC 5861 §3: the refresh is to "refresh the stale
    response in the background", which a whole 200 does whatever its framing (Varnish's
    background fetch stores it). Severity: medium (a changed file keeps being served old
    within the stale window, upstream traffic per request)."""
    heads: list[bytes] = []

    def answer(head: bytes) -> bytes:
        heads.append(head)
        if len(heads) == 1:
            return (b"HTTP/1.1 200 OK\r\nCache-Control: max-age=0, stale-while-revalidate=60"
                    b'\r\nETag: "1"\r\nContent-Length: 2\r\n\r\nv1')
        return (b'HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nETag: "2"\r\n'
                b"Transfer-Encoding: chunked\r\n\r\n2\r\nv2\r\n0\r\n\r\n")

    async with raw_origin(answer) as port:
        c = await proxy(f"http://127.0.0.1:{port}")
        assert (await raw_get(c, "/r"))[2] == b"v1"
        status, fields, body = await raw_get(c, "/r", "Range: bytes=0-0")
        assert (status, body) == (206, b"v")  # the stale part, from storage
        assert "stale-while-revalidate" in fields["cache-status"]
        assert await until(lambda: len(heads) == 2)
        assert await until(lambda: not c.app_proxy.driver._background)
        assert b"Range" not in heads[1] and b'If-None-Match: "1"' in heads[1]
        status, fields, body = await raw_get(c, "/r")
        assert (status, body) == (200, b"v2"), fields
        assert fields["cache-status"].startswith("cacheproxy; hit")
        assert len(heads) == 2
