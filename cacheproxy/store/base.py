"""The Store protocol: what the proxy needs of any backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cacheproxy.http.stored import CachedResponse


@dataclass(frozen=True, slots=True)
class StoreStats:
    entries: int       # stored responses, variants counted one by one
    bytes: int         # accounted size (bodies, fields and per-entry overhead)
    max_bytes: int
    evictions: int


class Store(Protocol):
    """Responses by primary key; a key holds one response per Vary variant (§4.1)."""

    async def get(self, key: str) -> tuple[CachedResponse, ...]:
        """The variants stored under key, newest first; () when none."""
        ...

    async def put(self, entry: CachedResponse) -> bool:
        """Store entry, replacing the variant with the same Vary values; False if too big."""
        ...

    async def delete(self, key: str) -> bool:
        """Forget every variant under key; True when something was removed."""
        ...

    async def clear(self) -> None: ...

    async def keys(self, prefix: str = "", limit: int | None = None) -> list[str]:
        """Stored keys that start with prefix, at most limit of them."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Forget every key that starts with prefix; how many keys went."""
        ...

    def stats(self) -> StoreStats: ...
