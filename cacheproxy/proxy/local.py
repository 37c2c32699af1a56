"""Requests the proxy answers as their final recipient (RFC 9110 §7.6.2, §9.3.7, §9.3.8)."""

from __future__ import annotations

from multidict import CIMultiDict

from cacheproxy.http.fields import HOP_BY_HOP
from cacheproxy.proxy.downstream import Answer, ClientMessage

# Never echoed by TRACE: credentials (RFC 9110 §9.3.8 "SHOULD exclude ... sensitive data").
_SECRET = frozenset({"authorization", "cookie", "proxy-authorization"})


def final_answer(request: ClientMessage, fields: list[tuple[str, str]]) -> Answer:
    """OPTIONS: 200 with the methods a proxy passes on. TRACE: the request as received
    (message/http), minus credentials."""
    if request.method == "TRACE":
        lines = [f"TRACE {request.raw_path} HTTP/{request.version.major}.{request.version.minor}"]
        lines += [f"{k}: {v}" for k, v in request.headers.items()
                  if k.lower() not in _SECRET and k.lower() not in HOP_BY_HOP]
        body = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "replace")
        return Answer(200, CIMultiDict([*fields, ("Content-Type", "message/http")]), body)
    # A proxy passes any method on (RFC 9110 §9.1); these are the ones it knows.
    allow = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE"
    return Answer(200, CIMultiDict([*fields, ("Allow", allow)]))
