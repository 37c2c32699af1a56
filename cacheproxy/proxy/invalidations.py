"""When keys were last invalidated or purged, so that a fill under way then does not store
its answer after (RFC 9111 §4.4; the admin API's purge and clear).

A fill's answer was made by the origin before the request that invalidated the URL (an
unsafe method's 2xx, §4.4) or before the operator's purge; stored after them, it would be
served as fresh for its whole lifetime, as if neither had happened. Each fill therefore
carries the time its request was sent (UpstreamResponse.sent), and is not stored when its
key was invalidated since. Times are time.perf_counter() (as the exchange's). Per
process, as collapsing is: a fill in another worker or replica does not see these marks.
"""

from __future__ import annotations

import time
from array import array

# Bounds: beyond them the oldest mark goes, and every fill sent before it counts as
# invalidated (the floor; for a key's mark, the floor of its share of the keys,
# KEY_FLOORS): a rare fill refused, never an invalidation forgotten.
MAX_KEYS = 10_000
MAX_PREFIXES = 64
# A key's mark is held under the key's hash(), not the key: a client chooses a key's length
# (a target and a Host of 8 KiB each) and invalidates as many as it POSTs to, and holding
# the keys would need a bound in characters, which at 16 KB a key a client's 128 POSTs
# reach, pushing marks out (and refusing fills) long before MAX_KEYS. Two keys of one
# hash share a mark: a fill refused that need not be (with 10,000 marks held, one in
# about 2**50), never an invalidation missed. hash() of a str is salted per process (no
# client aims at one) and kept on the str, so the check a fill pays is a dict look-up.
# A key's mark that goes raises the floor of its share of the keys only (one of so many, by
# the key's hash), not every key's: one floor for all would refuse every fill slower than
# the last 10,000 invalidations, whatever its URL.
KEY_FLOORS = 4096


class Invalidations:
    def __init__(self) -> None:
        self._keys: dict[int, float] = {}  # hash(key) -> when it was last invalidated
        self._prefixes: dict[str, float] = {}  # a purged prefix -> when
        self._floor = 0.0  # everything sent before this counts as invalidated
        # ...and, of the keys whose hash is i (modulo KEY_FLOORS), what was sent before
        # _key_floors[i]: the marks of such keys that went (KEY_FLOORS)
        self._key_floors = array("d", bytes(8 * KEY_FLOORS))

    def key(self, key: str, now: float) -> None:
        keys, h = self._keys, hash(key)
        keys.pop(h, None)  # (the newest last: the dict's order is the marks')
        keys[h] = now
        if len(keys) > MAX_KEYS:
            oldest = next(iter(keys))
            at, floors = keys.pop(oldest), self._key_floors
            slot = oldest % KEY_FLOORS
            floors[slot] = max(floors[slot], at)

    def prefix(self, prefix: str, now: float) -> None:
        self._prefixes.pop(prefix, None)
        self._prefixes[prefix] = now
        if len(self._prefixes) > MAX_PREFIXES:
            self._raise_floor(self._prefixes.pop(next(iter(self._prefixes))))

    def everything(self, now: float) -> None:
        """The whole cache was cleared: no mark older than now matters any more."""
        self._keys.clear()
        self._prefixes.clear()
        self._floor = now

    def heard(self, key: str | None, prefix: str | None) -> None:
        """What another replica sharing the Redis store forgot, heard now (its purge
        channel, store/layered.py): a key, a prefix, or (both None) everything."""
        now = time.perf_counter()
        if key is not None:
            self.key(key, now)
        elif prefix is not None:
            self.prefix(prefix, now)
        else:
            self.everything(now)

    def since(self, key: str, sent: float) -> bool:
        """Whether key was invalidated after a request for it was sent at sent."""
        h = hash(key)
        if sent < self._floor or sent < self._keys.get(h, sent) \
                or sent < self._key_floors[h % KEY_FLOORS]:
            return True
        return any(sent < at and key.startswith(p) for p, at in self._prefixes.items())

    def _raise_floor(self, at: float) -> None:
        self._floor = max(self._floor, at)
