"""The Store protocol: what the proxy needs of any backend."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Protocol

from cacheproxy.http.fields import Headers
from cacheproxy.http.stored import CachedResponse


class StoreUnavailable(Exception):
    """A shared store cannot be reached. get and put never raise it (the request path
    goes on uncached); delete, delete_prefix, clear and keys do, so that the admin API
    answers 503 rather than report a purge that did not happen."""


@dataclass(frozen=True, slots=True)
class StoreStats:
    entries: int       # stored responses, variants counted one by one
    bytes: int         # accounted size (bodies, fields and per-entry overhead)
    max_bytes: int
    evictions: int


class Store(Protocol):
    """Responses by primary key; a key holds one response per Vary variant (§4.1)."""

    async def get(self, key: str, headers: Headers | None = None
                  ) -> tuple[CachedResponse, ...]:
        """The variants stored under key, newest first; () when none. With the headers
        of a request, a store may leave out the variants whose Vary'd request fields
        that request does not match (RFC 9111 §4.1: they cannot be selected for it; nor
        are they in the "initial set" its 304 updates, §4.3.4), and then answers a
        cache_key.Selectable, which says how many it left out."""
        ...

    async def put(self, entry: CachedResponse) -> bool:
        """Store entry, replacing the variant with the same Vary values; False if too big."""
        ...

    async def delete(self, key: str) -> bool:
        """Forget every variant under key; True when something was removed.
        Raises StoreUnavailable (as do clear, keys and delete_prefix)."""
        ...

    async def clear(self) -> int:
        """Forget everything this cache stored; how many keys (URLs) went."""
        ...

    async def keys(self, prefix: str = "", limit: int | None = None) -> list[str]:
        """Stored keys that start with prefix, at most limit of them."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Forget every key that starts with prefix; how many keys went."""
        ...

    def stats(self) -> StoreStats: ...

    async def start(self) -> None:
        """Open connections; called once before the first request."""
        ...

    async def close(self) -> None:
        """Release connections; called once after the last request."""
        ...


async def discard(store: Store, key: str) -> None:
    """Forget key on the request path (§4.4 invalidation, a response no longer storable):
    best effort. With the shared store down the request has already reached the origin and
    must get its answer, not a 500; the store has logged the outage."""
    with contextlib.suppress(StoreUnavailable):
        await store.delete(key)
