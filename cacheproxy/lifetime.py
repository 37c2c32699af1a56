"""How a server process runs: its coroutine until SIGTERM or SIGINT, on uvloop when there;
and how a failure to start is said."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
from collections.abc import Awaitable, Callable

# Signals that would end the process by their default action once the loop that handled
# them is gone: a stopping process ignores them (nginx goes on quitting when a HUP comes).
_HELD_AT_EXIT = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def run_until_stopped(main: Callable[[], Awaitable[None]]) -> None:
    """Run main() until SIGTERM or SIGINT cancels it; its `finally` blocks do the stopping.
    main() unblocks those signals itself when a --workers parent forked it with them held."""

    async def cancellable() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        stopping = False

        def stop() -> None:
            # Once: a second cancel would land in main()'s graceful stop and cut the
            # requests it drains (SIGTERM repeated; with --workers, a group's SIGTERM or
            # Ctrl-C and then the supervisor's own reach each worker twice).
            nonlocal stopping
            if not stopping:
                stopping = True
                task.cancel()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await main()
        finally:
            # Stopped: SIGTERM, SIGINT and SIGHUP are held from here on. The loop's
            # handlers go with the loop, and their default action would kill the process
            # as it exits cleanly (-15, -2, -1) when a supervisor repeats SIGTERM, a user
            # presses Ctrl-C again, or a reload (logrotate) lands during the stop.
            signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_AT_EXIT)

    try:
        import uvloop  # the faster loop when installed (pyproject: not on Windows)
    except ImportError:
        asyncio.run(cancellable())
    else:
        uvloop.run(cancellable())
    for sig in _HELD_AT_EXIT:  # (one held meanwhile is dropped)
        signal.signal(sig, signal.SIG_IGN)


class StartError(Exception):
    """The server cannot start, said in one line that names the setting, its value and the
    cause (`cacheproxy` prints it and exits 1)."""


_BIND_CAUSES = {
    errno.EADDRINUSE: "address already in use (by another process, perhaps another "
                      "cacheproxy)",
    errno.EADDRNOTAVAIL: "no interface of this machine has that address",
    errno.EACCES: "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
}


LISTEN_HINT = "choose another with --listen HOST:PORT (proxy.listen)"
DEMO_HINT = ("the demo origin starts because proxy.upstream is empty: give --upstream URL, "
             "or set demo.listen")


def listen_error(key: str, address: str, exc: OSError, hint: str = "") -> StartError:
    """A bind or resolve failure of the `key` setting's `address`, as a StartError; `hint`
    says what the user can change."""
    host = address.rpartition(":")[0].strip("[]")
    if isinstance(exc, socket.gaierror):
        cause = f"cannot resolve the host {host!r} ({exc.strerror or exc})"
    else:
        cause = _BIND_CAUSES.get(exc.errno or 0) or (
            os.strerror(exc.errno).lower() if exc.errno else str(exc))
    return StartError(f"{key}: cannot listen on {address}: {cause}" + (f"; {hint}" if hint else ""))
