"""What happened to one request: the cache's account of it, shown to the client
in Cache-Status / X-Cache and (later) written to the request log."""

from __future__ import annotations

from dataclasses import dataclass

from cacheproxy.http.cache_status import cache_status


@dataclass(slots=True)
class Outcome:
    # HIT, MISS, EXPIRED, STALE, REVALIDATED, UPDATING, BYPASS, ERROR (nginx's words)
    status: str = "MISS"
    hit: bool = False            # answered from storage without going forward (RFC 9211 §2.1)
    fwd: str | None = None       # RFC 9211 §2.2 forward reason
    fwd_status: int | None = None
    stored: bool = False
    ttl: float | None = None
    collapsed: bool = False
    detail: str | None = None
    from_cache: bool = False     # the body came from storage (X-Cache: HIT)
    age: float | None = None     # Age sent with a stored response
    upstream_ms: float | None = None  # time to the upstream's response head
    bytes_sent: int = 0          # body bytes sent to the client
    route: str = "default"
    policy: str | None = None    # a CORS / Referer decision and its reason
    cache_status_sent: str = ""  # the Cache-Status member as sent, for the log
    host: str | None = None      # the authority the request was for (absolute-form too)
    target: str | None = None    # its path and query, origin-form
    secrets: frozenset[str] = frozenset()  # query parameters the log shows as REDACTED

    def cache_status(self, name: str) -> str:
        self.cache_status_sent = cache_status(
            name, hit=self.hit, fwd=self.fwd, fwd_status=self.fwd_status, stored=self.stored,
            ttl=self.ttl, collapsed=self.collapsed, detail=self.detail,
        )
        return self.cache_status_sent

    @property
    def x_cache(self) -> str:
        return "HIT" if self.from_cache else "MISS"
