"""Request collapsing: concurrent misses for one key make one upstream request."""

from __future__ import annotations

import asyncio
import time

# After an answer that was not stored, requests for the key skip collapsing for this
# long (Varnish's hit-for-pass): waiting behind a leader only helps when its answer
# can be shared, and a private or no-store URL would otherwise be served in waves.
PASS_SECONDS = 30.0
MAX_PASS_MARKS = 10_000


# Not-stored reasons that come from the response, not from one request: after one of
# these the URL is not collapsed for a while (hit-for-pass).
PASS_REASONS = frozenset({"private", "no-store", "set-cookie", "vary-star", "too-big",
                          "status", "not-reusable", "must-understand"})


class Collapser:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._inflight: dict[str, asyncio.Future[None]] = {}
        self._pass: dict[str, float] = {}  # key -> until when requests skip collapsing

    def join(self, key: str) -> tuple[asyncio.Future[None], bool]:
        """The key's in-flight future, and whether the caller is its leader (who must
        release it with that same future)."""
        fut = self._inflight.get(key)
        if fut is not None:
            return fut, False
        fut = self._inflight[key] = asyncio.get_running_loop().create_future()
        return fut, True

    def release(self, key: str, fut: asyncio.Future[None]) -> None:
        """Wake the waiters of this leader's future; a later leader's slot stays."""
        if self._inflight.get(key) is fut:
            del self._inflight[key]
        if not fut.done():
            fut.set_result(None)

    async def wait(self, fut: asyncio.Future[None], timeout: float | None = None) -> bool:
        """Wait for the leader (timeout: the route's, else this collapser's); False when
        the wait timed out."""
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout or self.timeout)
        except TimeoutError:
            return False
        return True

    def passes(self, key: str) -> bool:
        """Was the last answer for key not storable, recently?"""
        until = self._pass.get(key)
        if until is None:
            return False
        if until > time.monotonic():
            return True
        del self._pass[key]
        return False

    def mark_pass(self, key: str) -> None:
        if len(self._pass) >= MAX_PASS_MARKS:
            del self._pass[next(iter(self._pass))]  # the oldest goes
        self._pass[key] = time.monotonic() + PASS_SECONDS

    def unmark_pass(self, key: str) -> None:
        self._pass.pop(key, None)
