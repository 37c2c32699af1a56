"""Request collapsing: concurrent misses for one key make one upstream request."""

from __future__ import annotations

import asyncio


class Collapser:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._inflight: dict[str, asyncio.Future[None]] = {}

    def join(self, key: str) -> asyncio.Future[None] | None:
        """None makes the caller the leader (it must call release); else the leader's future."""
        fut = self._inflight.get(key)
        if fut is None:
            self._inflight[key] = asyncio.get_running_loop().create_future()
        return fut

    def release(self, key: str) -> None:
        fut = self._inflight.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def wait(self, fut: asyncio.Future[None]) -> bool:
        """Wait for the leader; False when the wait timed out."""
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.timeout)
        except TimeoutError:
            return False
        return True
