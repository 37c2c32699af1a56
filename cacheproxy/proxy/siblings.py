"""How what one worker forgets reaches the others (--workers with the memory store; the
messages are store/siblings.py's).

Each worker has a datagram socketpair with the supervisor, made before it is forked (so no
other process can write to it, as a named socket would let any local user); the supervisor
passes every message from one worker on to all the others (Relay). Nothing blocks on
either side: a message that finds no room in a socket's buffer (a worker too busy to read
hundreds of them) becomes a "forget everything" owed to that worker and sent once there is
room: a cache emptied, never a purge lost.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

from cacheproxy.config import Config
from cacheproxy.proxy.invalidations import Invalidations
from cacheproxy.store import Store
from cacheproxy.store.siblings import FORGET_ALL, FORGET_KEY, FORGET_PREFIX, SiblingsMemoryStore

# A longer message (a key of a quarter MiB: request heads are smaller) is sent as "forget
# everything" instead; it also bounds what one recv() allocates.
MAX_MESSAGE = 256 * 1024


def pair() -> tuple[socket.socket, socket.socket]:
    """(the supervisor's end, the worker's end)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    return ours, theirs


def _send(end: socket.socket, message: bytes) -> bool:
    """Sent whole, or False: no room now (or the other end is gone)."""
    try:
        end.send(message if len(message) <= MAX_MESSAGE else FORGET_ALL)
    except OSError:  # BlockingIOError (full), ConnectionRefusedError (closed), ...
        return False
    return True


class Channel:
    """A worker's end: `tell` the others, and hear what they tell (`listen`)."""

    def __init__(self, end: socket.socket) -> None:
        end.setblocking(False)
        self.end = end
        self._owed = False  # a message found no room: "forget everything" is owed

    def tell(self, message: bytes) -> None:
        if self._owed or not _send(self.end, message):
            self._owe()

    def _owe(self) -> None:
        if not self._owed:
            self._owed = True
            asyncio.get_running_loop().add_writer(self.end, self._pay)

    def _pay(self) -> None:
        try:
            self.end.send(FORGET_ALL)
        except BlockingIOError:
            return  # (still no room: the next writable event)
        except OSError:  # the supervisor is gone (its SIGTERM follows): nobody to tell
            pass
        self._owed = False
        asyncio.get_running_loop().remove_writer(self.end)

    def listen(self, heard: Callable[[bytes], object]) -> None:
        loop = asyncio.get_running_loop()

        def readable() -> None:
            for _ in range(64):  # then the loop's other work gets a turn
                try:
                    message = self.end.recv(MAX_MESSAGE)
                except BlockingIOError:
                    return
                except OSError:  # (not seen: a datagram socketpair has no such state)
                    loop.remove_reader(self.end)
                    return
                heard(message)

        loop.add_reader(self.end, readable)


class Relay:
    """The supervisor's ends, one per worker slot: what one says, the others hear."""

    def __init__(self, slots: int) -> None:
        self.ends: list[socket.socket | None] = [None] * slots
        self.owed: set[int] = set()

    def open(self, slot: int) -> socket.socket:
        """A new channel for the worker (re)started in slot: its end, to give it."""
        self.close(slot)
        ours, theirs = pair()
        self.ends[slot] = ours
        return theirs

    def close(self, slot: int) -> None:
        end, self.ends[slot] = self.ends[slot], None
        self.owed.discard(slot)
        if end is not None:
            end.close()

    def close_all(self) -> None:
        for slot in range(len(self.ends)):
            self.close(slot)

    def waitables(self) -> list[socket.socket]:
        return [end for end in self.ends if end is not None]

    def pass_on(self) -> None:
        """Every message waiting, to every other worker; then what is owed."""
        for slot, end in enumerate(self.ends):
            while end is not None:
                try:
                    message = end.recv(MAX_MESSAGE)
                except BlockingIOError:
                    break
                except OSError:  # (not seen): its worker's restart opens a new channel
                    self.close(slot)
                    break
                for other, to in enumerate(self.ends):
                    if other != slot and to is not None and (
                            other in self.owed or not _send(to, message)):
                        self.owed.add(other)
        for slot in list(self.owed):
            end = self.ends[slot]
            if end is None or _send(end, FORGET_ALL):
                self.owed.discard(slot)


def shared_forgetting(config: Config, siblings: socket.socket | None
                      ) -> tuple[Store | None, Channel | None]:
    """With --workers and the memory store, a store that tells the other workers what it
    forgets (store/siblings.py); the Redis store tells them through Redis itself."""
    if siblings is None or config.cache.store == "redis":
        if siblings is not None:
            siblings.close()
        return None, None
    channel = Channel(siblings)
    return SiblingsMemoryStore(config.cache.max_bytes, channel.tell), channel


def hear_siblings(channel: Channel, store: Store | None, marks: Invalidations) -> None:
    """Forget what another worker forgot, and (as for our own purges and invalidations)
    keep a fill under way here from storing what it fetched before (invalidations.py)."""
    assert isinstance(store, SiblingsMemoryStore)

    def heard(message: bytes) -> None:
        kind, arg = store.heard(message)
        now = time.perf_counter()
        if kind == FORGET_KEY:
            marks.key(arg, now)
        elif kind == FORGET_PREFIX:
            marks.prefix(arg, now)
        else:
            marks.everything(now)

    channel.listen(heard)
