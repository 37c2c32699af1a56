"""Findings of a third reader's review of the latest changes (review-third): the single-range
miss streamed as its body arrives (95fdf3a), the request-head bound, collapsing after a failed
leader, and HTTP/1.1 status lines to HTTP/1.0 clients. Each test fails on the code it was
written against (08d4a51) and says what is expected, why (RFC section, or what a peer does)
and how severe it is. The origins and the proxy run on 127.0.0.1."""

from __future__ import annotations

from typing import Any

from aiohttp import web

BODY = bytes(range(256)) * 64  # 16 KiB


def _media_app(seen: list[dict[str, str]], body: bytes = BODY,
               extra: dict[str, str] | None = None) -> web.Application:
    """An origin of one cacheable 200 (ETag "v1") that answers a Range itself, as
    aiohttp's static files do; seen gets each request's fields."""
    async def media(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        headers = {"Cache-Control": "max-age=600", "ETag": '"v1"',
                   "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT",
                   "Content-Type": "video/mp4", "Accept-Ranges": "bytes", **(extra or {})}
        rng = request.headers.get("Range")
        if rng is not None and rng.startswith("bytes=") and "," not in rng:
            first_s, _, last_s = rng[6:].partition("-")
            if first_s:
                first = int(first_s)
                last = min(int(last_s), len(body) - 1) if last_s else len(body) - 1
            else:
                first, last = len(body) - int(last_s), len(body) - 1
            headers["Content-Range"] = f"bytes {first}-{last}/{len(body)}"
            return web.Response(status=206, body=body[first:last + 1], headers=headers)
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get("/v.mp4", media)
    return app


async def test_a_range_miss_with_a_matching_if_none_match_gets_304(
        origin: Any, proxy: Any) -> None:
    """A Range miss with the client's own If-None-Match (or If-Modified-Since) that the
    fetched 200 satisfies gets a 206 of the range (95fdf3a's streamed part), where the
    store-first path (and any hit) answers 304. RFC 9110 §13.2.2: If-None-Match is
    evaluated before Range, and a match means 304; README (`Range` row): "If-None-Match/
    If-Modified-Since come first (304)". The proxy strips the client's validators upstream
    to store the whole (strips_client_conditionals), so only it can answer them; the
    streamed path (driver._perform, whole_first with one range) goes to exchange.relay
    without client_answer. nginx's not_modified filter runs before its range filter.
    Severity: low (the client gets bytes it already has; nothing wrong is cached)."""
    seen: list[dict[str, str]] = []
    client = await proxy(await origin(_media_app(seen)))
    for conditional in ({"If-None-Match": '"v1"'},
                        {"If-Modified-Since": "Mon, 01 Jan 2024 00:00:00 GMT"}):
        resp = await client.get(f"/v.mp4?{len(seen)}",
                                headers={"Range": "bytes=0-99", **conditional})
        assert resp.status == 304, (conditional, resp.status, resp.headers)
        assert await resp.read() == b""

