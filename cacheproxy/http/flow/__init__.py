"""The request's life as typed, sans-I/O steps (in the manner of h11's state machine
and hishel's spec module): each step is a function from immutable inputs to a frozen
decision; cacheproxy.proxy performs them. See decisions.py for the map."""

from cacheproxy.http.flow.answer import (
    answered,
    freshened_still_held,
    in_background,
    refresh_may_store,
    still_held,
)
from cacheproxy.http.flow.client import NotModified, client_answer, range_answer
from cacheproxy.http.flow.decisions import (
    Answered,
    Evict,
    Failed,
    Forward,
    Freshen,
    Keep,
    Lookup,
    Pass,
    PreconditionFailed,
    Refetch,
    Refuse,
    Serve,
    ServeStale,
    Store,
    Update,
)
from cacheproxy.http.flow.facts import CacheSettings, RequestFacts, request_facts
from cacheproxy.http.flow.failure import failed, stale_on_error
from cacheproxy.http.flow.lookup import (
    DECISIVE_FIELDS,
    Waited,
    background_refresh,
    bypass,
    lookup,
    plain_serve,
    range_behind_fill,
)

__all__ = [
    "DECISIVE_FIELDS", "Answered", "CacheSettings", "Evict", "Failed",
    "Forward", "Freshen",
    "Keep", "Lookup", "NotModified", "Pass", "PreconditionFailed", "Refetch", "Refuse",
    "RequestFacts", "Serve", "ServeStale", "Store", "Update", "Waited", "answered",
    "background_refresh", "bypass", "client_answer", "failed", "freshened_still_held",
    "in_background", "lookup", "plain_serve",
    "range_answer", "range_behind_fill", "refresh_may_store", "request_facts",
    "stale_on_error", "still_held",
]
