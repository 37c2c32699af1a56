"""Standard descriptors 0, 1 and 2 held open for the life of the process.

A process started with one of them closed (`serve <&- >&-`, an init script's `exec <&-`,
some daemonizers and process managers) hands that number to the next file it opens: its
listening socket, a client's. libuv (uvloop) refuses to close a descriptor below 3 and
aborts the process (an assertion, no message), at the first such close or at shutdown;
a request log "to standard output", or an error line, would be written into a socket. So
each closed one gets /dev/null, as daemons do (OpenSSH's sanitise_stdfd, nginx's
ngx_daemon, Python's daemon.DaemonContext)."""

from __future__ import annotations

import os
import sys

_NAMES = ("stdin", "stdout", "stderr")


def reopen_closed_standard_streams() -> tuple[str, ...]:
    """Open /dev/null on each of 0, 1 and 2 that is closed; the names of those that were
    ("stdin", "stdout", "stderr")."""
    closed = []
    for fd, name in enumerate(_NAMES):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:  # (the lowest free number: fd itself, unless a lower one is closed)
            os.dup2(null, fd)
            os.close(null)
        closed.append(name)
        # Python made None of the streams it found closed at start; the log sink and
        # logging write to them.
        if getattr(sys, name) is None:
            stream = open(fd, "r" if fd == 0 else "w", encoding="utf-8",  # noqa: SIM115
                          errors="backslashreplace", closefd=False)  # (the process's own)
            setattr(sys, name, stream)
    return tuple(closed)
