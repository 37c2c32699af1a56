"""The Cache-Status response field (RFC 9211)."""

from __future__ import annotations

import math


def cache_status(
    name: str,
    *,
    hit: bool = False,
    fwd: str | None = None,
    fwd_status: int | None = None,
    stored: bool = False,
    ttl: float | None = None,
    collapsed: bool | None = None,
    detail: str | None = None,
) -> str:
    """One member of the list: "name; hit" or "name; fwd=uri-miss; fwd-status=200; stored"."""
    if hit and ttl is not None and not (fwd or stored or detail) and collapsed is None \
            and math.isfinite(ttl):
        return f"{name}; hit; ttl={math.floor(ttl)}"  # the common case, kept cheap
    parts = [name]
    if hit:
        parts.append("hit")  # §2.1
    if fwd:
        parts.append(f"fwd={fwd}")  # §2.2: uri-miss, vary-miss, request, stale, bypass...
    if fwd_status is not None:
        parts.append(f"fwd-status={fwd_status}")  # §2.3
    if stored:
        parts.append("stored")  # §2.4
    if ttl is not None and math.isfinite(ttl):
        parts.append(f"ttl={math.floor(ttl)}")  # §2.5: may be negative when stale
    if collapsed is not None:  # §2.6: reused (true), or a new request had to be made
        parts.append("collapsed" if collapsed else "collapsed=?0")
    if detail:
        parts.append(f"detail={detail}")  # §2.8: a token
    return "; ".join(parts)
