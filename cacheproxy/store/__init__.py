"""Where responses are kept: the Store protocol and its backends."""

from cacheproxy.store.base import Store, StoreStats
from cacheproxy.store.memory import MemoryStore

__all__ = ["MemoryStore", "Store", "StoreStats"]
