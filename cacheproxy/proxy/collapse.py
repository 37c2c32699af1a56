"""Request collapsing: concurrent misses for one key make one upstream request; for a key
known to vary (RFC 9111 §4.1), one per variant (cache_key.wait_group): a fetch for one
variant cannot answer the requests of another, so these do not queue behind it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from cacheproxy.http.cache_key import Variant, entry_group, in_variant

if TYPE_CHECKING:
    from cacheproxy.http.fields import Headers
    from cacheproxy.http.stored import CachedResponse

# After an answer that was not stored, requests for the key skip collapsing for this
# long (Varnish's hit-for-pass): waiting behind a leader only helps when its answer
# can be shared, and a private or no-store URL would otherwise be served in waves.
PASS_SECONDS = 30.0
MAX_PASS_MARKS = 10_000
# ...and so many characters of their keys and variants at most: a client chooses a key's
# length (a target and a Host of 8 KiB each) and the values of the fields a response
# varies on, and 10,000 such marks would hold 160 MB or more, counted nowhere (the
# store's max_bytes counts the keys it holds).
MAX_PASS_CHARS = 2 * 1024 * 1024


# ...and so many variants' marks per key (the newest): one for each variant whose answer
# could not be stored (identity and gzip both too big), as Varnish keeps a hit-for-pass
# object per variant; a mark for one variant must not end another's.
MAX_VARIANT_MARKS = 8


def _chars(variant: Variant | None) -> int:
    """What a hit-for-pass mark holds besides its key, in characters."""
    if variant is None:
        return 0
    return sum(map(len, variant[0])) + sum(len(v or "") for v in variant[1])


@dataclass(frozen=True, slots=True)
class Stored:
    """An answer stored for a key while its leader was in flight: when it arrived
    (time.monotonic()), and what tells the stored response apart (born and values,
    compared by value: the Redis store reads a new object on each look)."""

    at: float
    born: float
    values: tuple[str, ...]

    def since(self, when: float) -> tuple[float, tuple[str, ...]] | None:
        """(born, values) when the answer arrived at or after when, else None."""
        return (self.born, self.values) if self.at >= when else None


class _LeaderFailed:
    """The leader got no whole answer from upstream (refused, reset, timed out, its body
    cut short)."""

    __slots__ = ()


# Its waiters do not all go upstream at once (a herd on an origin that just failed): one
# of them leads the next try and the others wait again, within their own collapse
# timeout, as behind nginx's proxy_cache_lock or in Varnish's waiting list.
LEADER_FAILED: Final = _LeaderFailed()


class _LeaderLeft:
    """The leader sent nothing: its client left while it waited for an upstream connection
    (Exchange.send's unsent_watch). No error of the origin's: its waiters try again (one
    leads), and none is answered a stored response under stale-if-error, which RFC 5861 §4
    allows only "when an error is encountered" (nginx's proxy_cache_lock waiters go on to
    the origin when the lock holder's client leaves)."""

    __slots__ = ()


LEADER_LEFT: Final = _LeaderLeft()
Result = Stored | _LeaderFailed | _LeaderLeft | None
# What a leader fetches for: a key, and the variant its waiters want (wait_group; None:
# the key is not known to vary).
Slot = tuple[str, Variant | None]


class Release(Protocol):
    """Ends a collapse leader's turn (Collapser.release); failed: no answer came; left:
    nothing was sent, its client having left (LEADER_LEFT)."""

    def __call__(self, failed: bool = False, left: bool = False) -> None: ...


class Collapser:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._inflight: dict[Slot, asyncio.Future[Result]] = {}
        # key -> the variants whose requests skip collapsing (§4.1), each until when
        self._pass: dict[str, dict[Variant | None, float]] = {}
        self._pass_count = 0  # the variants' marks in _pass, together
        # key -> its newest mark's time when it took its place in _pass's order: a key
        # marked again since (in place) gets a second chance at the bound (mark_pass)
        self._placed: dict[str, float] = {}
        self._pass_chars = 0  # the characters _pass holds (keys and variants), together
        # slot -> what was stored for it while its leader was in flight (note_stored)
        self._stored: dict[Slot, Stored] = {}

    def join(self, slot: Slot) -> tuple[asyncio.Future[Result], bool]:
        """The slot's in-flight future, and whether the caller is its leader (who must
        release it with that same future)."""
        fut = self._inflight.get(slot)
        if fut is not None:
            return fut, False
        fut = self._inflight[slot] = asyncio.get_running_loop().create_future()
        return fut, True

    def release(self, slot: Slot, fut: asyncio.Future[Result], failed: bool = False,
                left: bool = False) -> None:
        """Wake the waiters of this leader's future: LEADER_FAILED when it got no whole
        answer (even one it had begun to store: its body broke off), LEADER_LEFT when it
        sent nothing (its client left first), else what was stored for them while it was
        in flight; a later leader's slot stays."""
        stored: Result = None
        if self._inflight.get(slot) is fut:
            del self._inflight[slot]
            stored = self._stored.pop(slot, None)
        if not fut.done():
            fut.set_result(LEADER_LEFT if left else LEADER_FAILED if failed else stored)

    def note_stored(self, key: str, entry: CachedResponse) -> None:
        """An answer for key, received now, is stored (or validated the stored one),
        while requests may be waiting for it: those of its variant, and those waiting
        before the key was known to vary (they look again, and wait again if it is not
        theirs)."""
        if not self._inflight:
            return
        noted = Stored(time.monotonic(), entry.born, entry.values)
        group = entry_group(entry)
        for slot in ((key, None),) if group is None else ((key, None), (key, group)):
            if slot in self._inflight:
                self._stored[slot] = noted

    async def wait(self, fut: asyncio.Future[Result], timeout: float | None = None,
                   gone: asyncio.Future[None] | None = None) -> bool:
        """Wait for the leader (timeout: the route's, else this collapser's), or until
        gone is done (the waiter's client left: nothing will be sent to it, so it waits
        no longer, as nginx drops a request waiting on proxy_cache_lock); False when the
        leader's answer did not come. fut is never cancelled: others wait for it too."""
        waited = (fut,) if gone is None else (fut, gone)
        await asyncio.wait(waited, timeout=timeout or self.timeout,
                           return_when=asyncio.FIRST_COMPLETED)
        return fut.done()

    def passes(self, key: str, headers: Headers | None = None) -> bool:
        """Was an answer for key not storable, recently, for a request like this one (of
        the variant that answer was for; headers None: any request)?"""
        marks = self._pass.get(key)
        if marks is None:
            return False
        now = time.monotonic()
        for variant, until in marks.items():  # (nearly always one)
            # (a mark for every request, the usual, is told without in_variant's call)
            if until > now and (headers is None or variant is None or not variant[0]
                                or in_variant(variant, headers)):
                return True
        for variant in [v for v, until in marks.items() if until <= now]:
            self._drop_mark(key, variant)
        return False

    def mark_pass(self, key: str, variant: Variant | None = None) -> None:
        """variant: the requests the unstorable answer stands for (answered_variant)."""
        until = time.monotonic() + PASS_SECONDS
        marks = self._pass.get(key)
        if marks is not None and variant in marks:
            # Marked again (a URL passed per request): the time moves, not its place in
            # the order (it costs a pass-through nothing more to keep); the bound gives
            # it a second chance for it (_least_recent).
            marks[variant] = until
            return
        marks = self._pass.pop(key, None)  # (put back last: the newest key)
        if marks is None:
            marks = {}
            self._pass_chars += len(key)
        self._pass[key] = marks
        self._placed[key] = until
        marks[variant] = until
        self._pass_count += 1
        self._pass_chars += _chars(variant)
        if len(marks) > MAX_VARIANT_MARKS:
            self._drop_mark(key, next(iter(marks)))
        while len(self._pass) > 1 and (self._pass_count > MAX_PASS_MARKS
                                       or self._pass_chars > MAX_PASS_CHARS):
            self._drop_key(self._least_recent())

    def _least_recent(self) -> str:
        """The key whose marks were marked least recently: the oldest in the order, once
        those marked again in place since they took their place have moved to the end
        (a second chance, as a CLOCK cache gives): a URL passed on every request is not
        the first mark to go because it was the first marked."""
        order, placed = self._pass, self._placed
        moved = None
        for _ in range(len(order) - 1):  # (not as far as the newest: the one just marked)
            oldest = next(iter(order))
            newest = max(order[oldest].values())
            if newest <= placed[oldest]:
                return oldest
            order[oldest] = order.pop(oldest)  # marked again: to the end
            placed[oldest] = newest
            moved = moved or oldest
        return moved or next(iter(order))  # (all marked again: the first of them)

    def unmark_pass(self, key: str, stored: CachedResponse | None = None) -> None:
        """An answer was stored (stored): the marks go that are of its variant (or of
        every request)."""
        marks = self._pass.get(key)
        if marks is None:
            return
        if stored is None:
            self._drop_key(key)
            return
        for variant in [v for v in marks if v is None or not v[0]
                        or v == (stored.vary, stored.vary_values)]:
            self._drop_mark(key, variant)

    def _drop_mark(self, key: str, variant: Variant | None) -> None:
        marks = self._pass.get(key)
        if marks is None or variant not in marks:
            return
        del marks[variant]
        self._pass_count -= 1
        self._pass_chars -= _chars(variant)
        if not marks:
            del self._pass[key]
            del self._placed[key]
            self._pass_chars -= len(key)

    def _drop_key(self, key: str) -> None:
        marks = self._pass.pop(key, None)
        if marks is not None:
            del self._placed[key]
            self._pass_count -= len(marks)
            self._pass_chars -= len(key) + sum(map(_chars, marks))
