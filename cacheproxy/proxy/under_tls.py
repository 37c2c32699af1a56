"""The TCP transport under an intercepted TLS connection (connect.py's start_tls), watched
for what leaves it.

TLS (asyncio's sslproto, uvloop's) encrypts what the connection writes at once and hands
it to the TCP transport underneath: a large hit is in that transport's buffer, not the
TLS transport's, and nothing tells the connection when it drains. nginx's $bytes_sent
counts what SSL_write accepted, straight to the socket: here, what left the TCP
transport's buffer for the kernel. So the TCP transport calls the connection back each
time its buffer is empty (a low-water mark of 0; a high-water mark of 0, so every drain
is told), after TLS has handed it what it held meanwhile, and each time it holds what the
socket did not take (paused): TLS keeps what is written while it is paused, but hands it
all it encrypted when it was not (a big hit whole, 22 MB of 24 here), so the TLS
transport's own buffer is empty and never pauses the connection; the TCP transport's
pause is then the connection's too (its send_timeout, no more requests read). The
connection counts what is in both buffers as unsent. Each drain is also when it hands
TLS the next slice of a big write (proxy/tls_slices.py): a slow client has about a
slice of ciphertext waiting here, not a whole body."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class UnderTls(asyncio.BufferedProtocol):
    """The TCP transport's protocol: TLS's own, to which every call goes (bound methods,
    no frame of ours per read), `paused` called when its buffer holds what the socket did
    not take, and `drained` when the buffer has emptied."""

    def __init__(self, tls: Any, drained: Callable[[], None],
                 paused: Callable[[], None]) -> None:
        self._tls = tls
        self._drained = drained
        self._paused = paused
        self.get_buffer = tls.get_buffer  # type: ignore[method-assign]
        self.buffer_updated = tls.buffer_updated  # type: ignore[method-assign]
        self.eof_received = tls.eof_received  # type: ignore[method-assign]
        self.connection_lost = tls.connection_lost  # type: ignore[method-assign]

    def pause_writing(self) -> None:
        self._tls.pause_writing()
        self._paused()  # (the connection is told: a client reading nothing is timed out)

    def resume_writing(self) -> None:
        self._tls.resume_writing()  # (TLS hands on what it held: a new look sees it)
        self._drained()


def watch_under_tls(transport: asyncio.Transport, drained: Callable[[], None],
                    paused: Callable[[], None]) -> bool:
    """Put UnderTls between transport (a TCP transport start_tls wrapped) and its TLS
    protocol; False when transport is not a plain TCP one (TLS in TLS: left alone)."""
    if transport.get_extra_info("sslcontext") is not None or transport.is_closing():
        return False
    tls = transport.get_protocol()
    if not all(hasattr(tls, name) for name in ("get_buffer", "buffer_updated",
                                               "resume_writing")):
        return False
    transport.set_protocol(UnderTls(tls, drained, paused))
    transport.set_write_buffer_limits(high=0)  # (low is 0 too)
    return True
