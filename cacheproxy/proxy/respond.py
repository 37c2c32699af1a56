"""Responses the proxy makes itself: replays of stored responses and errors."""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict

from cacheproxy.http.conditional import is_not_modified, not_modified_fields
from cacheproxy.http.fields import combined_value
from cacheproxy.http.stored import CachedResponse
from cacheproxy.proxy.outcome import Outcome


def mark(headers: CIMultiDict[str], outcome: Outcome, cache_name: str, via: str) -> None:
    """Fields the cache adds to every response it forwards or makes (stored_response
    adds the same ones its own way)."""
    headers.add("Via", via)  # RFC 9110 §7.6.3
    headers.add("Cache-Status", outcome.cache_status(cache_name))  # RFC 9211: appended
    headers["X-Cache"] = outcome.x_cache


def stored_response(
    request: web.Request,
    entry: CachedResponse,
    age: float,
    outcome: Outcome,
    cache_name: str,
    via: str,
) -> web.Response:
    """Replay a stored response, or a 304 when the client's copy is current (§4.3.2).

    The hit path: aiohttp copies the fields it is given into its own CIMultiDict,
    so they are handed over as one plain list, built without a Python loop."""
    h = request.headers
    inm = combined_value(h, "If-None-Match") if "If-None-Match" in h else None
    ims = h.get("If-Modified-Since")
    body: bytes | None = entry.body
    status = entry.status
    if (inm is not None or ims is not None) and is_not_modified(entry, request.method, inm, ims):
        fields = not_modified_fields(entry)
        status, body = 304, None
    else:
        flat = entry.headers
        fields = list(zip(flat[::2], flat[1::2], strict=True))
    fields += (
        ("Age", str(int(age))),  # RFC 9111 §5.1: required when served from cache
        ("Via", via),  # RFC 9110 §7.6.3
        ("Cache-Status", outcome.cache_status(cache_name)),  # RFC 9211: appended
        ("X-Cache", outcome.x_cache),
    )
    if request.method == "HEAD":
        if status != 304 and entry.get("Content-Length") is None:
            fields.append(("Content-Length", str(len(entry.body))))
        body = None
    return web.Response(status=status, headers=fields, body=body)


def error_response(
    status: int, message: str, outcome: Outcome, cache_name: str, via: str
) -> web.Response:
    """A short plain-text answer for 502 / 504 and the like; never a traceback."""
    headers: CIMultiDict[str] = CIMultiDict({"Cache-Control": "no-store"})
    mark(headers, outcome, cache_name, via)
    return web.Response(status=status, text=f"{status} {message}\n", headers=headers)
