"""A WARNING when an origin's clock is so far behind this host's that its responses
arrive stale (RFC 9111 §4.2.3: a response is at least as old as its Date says): the
cache then stores them and never serves them fresh, which the request log shows only
as a negative ttl on every miss."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from cacheproxy.config import masked_url
from cacheproxy.http.dates import parse_http_date
from cacheproxy.http.freshness import parse_age, stale_by_date
from cacheproxy.http.stored import CachedResponse, all_values, first_value

log = logging.getLogger("cacheproxy")

EVERY = 600.0  # seconds between two warnings about one origin
_ORIGINS_KEPT = 1024  # origins remembered (forward mode reaches any number)


class ClockSkew:
    """Warns about each origin at most once every EVERY seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._warned: dict[str, float] = {}

    def arrived_stale(self, upstream: str, url: str, entry: CachedResponse,
                      fields: list[tuple[str, str]], request_time: float,
                      response_time: float) -> None:
        """entry, just made from an answer with fields for url (as the log shows it:
        redacted), is stale on arrival: say so when the origin's Date alone made it so."""
        age_value = parse_age(all_values(fields, "age"))
        lag = stale_by_date(
            lifetime=entry.lifetime, date=parse_http_date(first_value(fields, "date")),
            age_value=age_value or 0, request_time=request_time,
            response_time=response_time)
        if lag <= 0 or age_value is None:
            return
        now = self._clock()
        last = self._warned.get(upstream)
        if last is not None and now - last < EVERY:
            return
        if len(self._warned) >= _ORIGINS_KEPT:
            self._warned.clear()
        self._warned[upstream] = now
        log.warning(
            "origin %s sends a Date %.0f s behind this host's clock: its responses arrive "
            "stale (RFC 9111 §4.2.3): those fresh for less than that (%s: %.0f s) are "
            "stored but never served from the cache; synchronise the clocks (NTP)",
            masked_url(upstream), lag, url, entry.lifetime)
