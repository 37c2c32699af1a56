"""What an intercepted TLS client (forward.intercept_tls) is handed at a time.

TLS (asyncio's sslproto, uvloop's) encrypts all it is given at once, whether or not the
socket takes it: a 50 MiB hit written whole became 50 MiB of ciphertext in the TCP
transport's buffer (and, while it was encrypted, a second copy in the outgoing BIO), held
until a slow client read it: about 100 MB of memory per slow client of a 50 MiB hit
(issue 10). On plain TCP the transport keeps a reference to the stored bytes, no copy.

So a big write to a TLS client waits here, as views of the bytes it was made of (no
copy: a hit's body is the store's), and goes to TLS a slice at a time, each once the TCP
transport under it has emptied its buffer (proxy/under_tls.py): what one slow client
costs is about a slice of ciphertext, whatever the body's size. nginx does the same with
its output chain (sendfile or buffers of output_buffers size, SSL_write'n as the socket
takes them)."""

from __future__ import annotations

from collections import deque

# A write to a TLS client over this is sliced; and the slices' size: a few TLS records
# (16 KiB each), few enough writes that a fast client loses nothing to them.
TLS_SLICE = 256 * 1024

Buffer = bytes | bytearray | memoryview


class Slices:
    """Bytes written to a TLS client not handed to TLS yet, in order; size: how many."""

    __slots__ = ("_parts", "size")

    def __init__(self) -> None:
        self._parts: deque[Buffer] = deque()
        self.size = 0

    def __bool__(self) -> bool:
        return self.size > 0

    def add(self, parts: list[Buffer]) -> None:
        for part in parts:
            if not isinstance(part, bytes) and not (isinstance(part, memoryview)
                                                    and part.readonly):
                part = bytes(part)  # (a mutable buffer may change once write() returned)
            self._parts.append(part)
            self.size += len(part)

    def take(self, limit: int = TLS_SLICE) -> list[Buffer]:
        """The next limit bytes (fewer at the end), as views where a part is cut."""
        parts, taken, left = self._parts, [], limit
        while parts and left > 0:
            part = parts[0]
            if len(part) <= left:
                taken.append(parts.popleft())
                left -= len(part)
                continue
            view = part if isinstance(part, memoryview) else memoryview(part)
            taken.append(view[:left])
            parts[0] = view[left:]
            left = 0
        self.size -= limit - left
        return taken

    def clear(self) -> None:
        """Dropped (the client is gone, or cut at send_timeout): the stored bytes are let go."""
        self._parts.clear()
        self.size = 0
