"""Standard descriptors 0, 1 and 2 held open for the life of a server process.

A process started with one of them closed (`serve <&- >&-`, some daemonizers and process
managers) hands that number to the next file it opens: its listening socket, a client's.
libuv (uvloop) refuses to close a descriptor below 3 and aborts the process (an assertion,
no message), at the first such close or at shutdown; a request log "to standard output"
would write into a socket. So each closed one gets /dev/null, as daemons do (nginx's
ngx_daemon, Python's daemon.DaemonContext)."""

from __future__ import annotations

import os
import sys


def reopen_closed_standard_fds() -> list[int]:
    """Open /dev/null on each of 0, 1 and 2 that is closed; the ones that were."""
    closed = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            closed.append(fd)
    # Python made None of the streams it found closed at start; the log sink and logging
    # write to them.
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 (for the process's life)
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    return closed
