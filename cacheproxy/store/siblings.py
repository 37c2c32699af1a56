"""--workers with the memory store: what one worker forgets, every worker forgets.

Each worker caches in its own memory, so a purge, a clear or an invalidation (RFC 9111
§4.4: an unsafe method's success) answered by one worker must reach the others, or they
go on serving what the operator or the origin ended, for as long as it stays fresh (nginx's
workers share one cache zone, so a purge there is everyone's). The forgetting is told as
the Redis store publishes it (store/redis.py, store/layered.py): b"d" + key, b"p" + prefix,
b"c"; proxy/siblings.py carries the messages between the processes.
"""

from __future__ import annotations

from collections.abc import Callable

from cacheproxy.store.memory import MemoryStore

FORGET_KEY, FORGET_PREFIX, FORGET_ALL = b"d", b"p", b"c"


def _bytes(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")  # keys from raw request targets


class SiblingsMemoryStore(MemoryStore):
    """A MemoryStore that tells its sibling workers what it forgets (`tell`), and forgets
    what they tell it (`heard`). Reads and puts are MemoryStore's own: the hit path is
    the same."""

    def __init__(self, max_bytes: int, tell: Callable[[bytes], None]) -> None:
        super().__init__(max_bytes)
        self.tell = tell

    async def delete(self, key: str) -> bool:
        gone = self.forget(key)
        self.tell(FORGET_KEY + _bytes(key))  # (a sibling may hold it when this one does not)
        return gone

    async def delete_prefix(self, prefix: str) -> int:
        gone = self.forget_prefix(prefix)
        self.tell(FORGET_PREFIX + _bytes(prefix))
        return gone

    async def clear(self) -> int:
        gone = self.forget_all()
        self.tell(FORGET_ALL)
        return gone

    def heard(self, message: bytes) -> tuple[bytes, str]:
        """A sibling's message, done here; what it was (kind, key or prefix)."""
        self.forgotten(message)
        kind, arg = message[:1], message[1:].decode("utf-8", "surrogateescape")
        return (kind if kind in (FORGET_KEY, FORGET_PREFIX) else FORGET_ALL), arg

    def forgotten(self, message: bytes) -> int:
        """A sibling's message, done here: the entries it dropped (a purge's answer)."""
        kind, arg = message[:1], message[1:].decode("utf-8", "surrogateescape")
        if kind == FORGET_KEY:
            return int(self.forget(arg))
        if kind == FORGET_PREFIX:
            return self.forget_prefix(arg)
        # "c", or a kind this version does not know: forgetting all is always safe
        return self.forget_all()
