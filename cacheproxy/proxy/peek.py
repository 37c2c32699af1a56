"""The first bytes a client sends on its connection, looked at without reading them
(MSG_PEEK): an intercepted CONNECT (connect.py) needs them to tell TLS from plain bytes
before it starts the handshake, and loop.start_tls (asyncio's, uvloop's) takes no bytes
already read. They stay in the kernel for whoever reads the connection next: the TLS
handshake, the HTTP parser, or a tunnel to the origin.

The transport's own reading is paused meanwhile; readiness is watched on a duplicate of
its socket (a loop refuses a reader on a descriptor its transport holds), removed from
the poller before the duplicate is closed (uvloop does so at remove_reader). Bytes
peeked stay readable, so a client that sent part of a request line would wake the
poller at once, again and again: the socket's low-water mark (SO_RCVLOWAT, which epoll
and kqueue honour for TCP) is raised past what came, so only a new byte, the client's
close or an error wakes it; it is 1 again before the transport reads. (Without it, a
client that sent "GET" and nothing more cost a wake-up every RETRY_SECONDS for all of
client_header_timeout: a thousand of them, a core.)"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable

# A client whose first bytes do not yet say what it speaks: looked at again this often.
RETRY_SECONDS = 0.01


async def peek(transport: asyncio.Transport, size: int, enough: Callable[[bytes], bool],
               timeout: float) -> bytes:
    """Up to size bytes the client sent, unread, once enough(those bytes) is true; b"" if
    it closed or reset the connection first; what came so far (maybe b"") if timeout
    seconds passed. The transport's reading must be paused (the caller resumes it)."""
    loop = asyncio.get_running_loop()
    raw = transport.get_extra_info("socket")
    if raw is None:
        return b""
    sock = socket.socket(fileno=os.dup(raw.fileno()))
    fd = sock.fileno()
    head = b""
    lowat = 1  # the socket's low-water mark as set here (shared with the transport's)
    try:
        async with asyncio.timeout(timeout):
            while True:
                ready: asyncio.Future[None] = loop.create_future()
                loop.add_reader(fd, lambda f=ready: f.done() or f.set_result(None))
                try:
                    await ready
                finally:
                    loop.remove_reader(fd)
                try:
                    seen = sock.recv(size, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    continue  # (woken with nothing to read)
                except OSError:  # a reset: nothing will come
                    return b""
                if lowat > 1 and len(seen) <= len(head):
                    return seen  # woken below the mark: the client closed its side
                head = seen
                if not head or enough(head) or len(head) >= size:
                    return head  # (b"": the client closed its side)
                try:  # wake for a new byte only (the ones here stay readable)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, len(head) + 1)
                    lowat = len(head) + 1
                except OSError:  # (no low-water mark here: look again in a while)
                    await asyncio.sleep(RETRY_SECONDS)
    except TimeoutError:
        return head
    finally:
        if lowat > 1:
            with contextlib.suppress(OSError):  # (the transport reads from 1 byte again)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
        sock.close()
