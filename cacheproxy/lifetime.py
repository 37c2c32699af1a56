"""How a server process runs: its coroutine until SIGTERM or SIGINT, on uvloop when there."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable


def run_until_stopped(main: Callable[[], Awaitable[None]]) -> None:
    """Run main() until SIGTERM or SIGINT cancels it; its `finally` blocks do the stopping.
    main() unblocks those signals itself when a --workers parent forked it with them held."""

    async def cancellable() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await main()

    try:
        import uvloop  # the faster loop when installed (pyproject: not on Windows)
    except ImportError:
        asyncio.run(cancellable())
    else:
        uvloop.run(cancellable())
