"""Where responses are kept: the Store protocol and its backends."""

from cacheproxy.config import CacheConfig
from cacheproxy.store.base import Store, StoreStats, StoreUnavailable, discard
from cacheproxy.store.layered import LayeredStore
from cacheproxy.store.memory import MemoryStore
from cacheproxy.store.redis import RedisStore


def build_store(cache: CacheConfig) -> Store:
    """The backend [cache] store names: memory, or Redis (shared by every replica) with a
    memory layer in front unless memory_layer_bytes or memory_layer_ttl is 0. Without the
    layer (a ttl of 0: it holds nothing), the LayeredStore still listens on the purge
    channel, so a fill under way here hears another replica's invalidation (§4.4)."""
    if cache.store != "redis":
        return MemoryStore(cache.max_bytes)
    back = RedisStore(cache)
    if cache.memory_layer_bytes > 0 and cache.memory_layer_ttl > 0:
        return LayeredStore(MemoryStore(cache.memory_layer_bytes), back, cache.memory_layer_ttl)
    return LayeredStore(MemoryStore(0), back, 0.0)


__all__ = ["LayeredStore", "MemoryStore", "RedisStore", "Store", "StoreStats",
           "StoreUnavailable", "build_store", "discard"]
