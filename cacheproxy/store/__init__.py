"""Where responses are kept: the Store protocol and its backends."""

from cacheproxy.config import CacheConfig
from cacheproxy.store.base import Store, StoreStats, StoreUnavailable, discard
from cacheproxy.store.layered import LayeredStore
from cacheproxy.store.memory import MemoryStore
from cacheproxy.store.redis import RedisStore


def build_store(cache: CacheConfig) -> Store:
    """The backend [cache] store names: memory, or Redis (shared by every replica) with a
    memory layer in front unless memory_layer_bytes or memory_layer_ttl is 0."""
    if cache.store != "redis":
        return MemoryStore(cache.max_bytes)
    back = RedisStore(cache)
    if cache.memory_layer_bytes > 0 and cache.memory_layer_ttl > 0:
        return LayeredStore(MemoryStore(cache.memory_layer_bytes), back, cache.memory_layer_ttl)
    return back


__all__ = ["LayeredStore", "MemoryStore", "RedisStore", "Store", "StoreStats",
           "StoreUnavailable", "build_store", "discard"]
