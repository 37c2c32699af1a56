"""What the workers of --workers tell each other: what one's memory store forgets (the
messages are store/siblings.py's), and their counters for a scrape of /metrics (ASK, then
one COUNTED from each other worker, summed by observe/metrics.py; every worker hears every
COUNTED and keeps each other worker's last, for one that does not answer in time; a worker
restarted in a slot is handed its predecessor's last, RETIRED).

Each worker has a datagram socketpair with the supervisor, made before it is forked (so no
other process can write to it, as a named socket would let any local user); the supervisor
passes every message from one worker on to all the others (Relay). Nothing blocks on
either side: a message that finds no room in a socket's buffer (a worker too busy to read
hundreds of them) becomes a "forget everything" owed to that worker and sent once there is
room (the supervisor waits for that room as for a message, Relay.wait): a cache emptied,
never a purge lost. An ASK or an answer that finds no room is
dropped: the scrape sums what came, and the last figures of those that did not
(cacheproxy_processes_counted says how many answered).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import selectors
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cacheproxy.config import Config
from cacheproxy.observe.listing import LIST
from cacheproxy.observe.metrics import Counts, counts_from_json, counts_json, retired, summed
from cacheproxy.observe.stats_merged import STATS
from cacheproxy.proxy.invalidations import Invalidations
from cacheproxy.store.siblings import FORGET_ALL, FORGET_KEY, FORGET_PREFIX, SiblingsMemoryStore

# ASK + id: "your counters, please", which the supervisor passes on as ASK + the asker's
# slot (one byte: at most 256 workers) + id; the answer is a COUNTED (below). ASK + id + a
# question asks something else (QUESTIONS), answered by ANSWER + slot + id + answer, which
# goes to that slot alone, as ANSWER + id + answer (the supervisor reads no further than
# the kind and the slot).
ASK, ANSWER = b"?", b"="
# COUNTED + slot + id + Counts: the answer to a question for counters, which the supervisor
# passes on to every other worker with the answering worker's slot, not only to the asker:
# each worker keeps every other's last (Siblings._last), so that a worker that does not
# answer a scrape in time (busy, stopped, restarting) is summed at its last figures. A
# counter that went down for one scrape is a reset to Prometheus (rate() reads phantom
# traffic); prometheus_client's multiprocess mode keeps every process's figures alike.
COUNTED = b"#"
# RETIRED + Counts: the supervisor's first message to a worker restarted in a slot, the last
# COUNTED its predecessor sent: the restarted worker counts it as a retired process's
# figures (counters only: its store went with it), in its own answers and scrapes. Without
# it the sum went down at a restart by the predecessor's figures, and Prometheus, for which
# a reset goes to zero, read the lower sum as that much new traffic (as prometheus_client's
# multiprocess mode keeps a dead process's counters, so do we). A worker a scrape reaches
# also tells its own figures (a COUNTED for no question), so that what the others and the
# supervisor keep of it is never older than what a scrape showed.
RETIRED = b"+"
# The questions after the id: none (Counts), a forget message of store/siblings.py ("forget
# this and say how many entries you dropped": a purge's count is the server's, not the
# answering worker's), STATS (the stats API's snapshot, merged by observe/stats_merged.py),
# LIST + JSON (entries / entry from its store, merged by observe/listing.py).
ASK_ID = 8  # bytes
# How long a scrape waits for the other workers' counters (a busy worker answers within
# milliseconds; one that is restarting never does).
GATHER_SECONDS = 0.5

# A longer message (a key of a quarter MiB: request heads are smaller) is sent as "forget
# everything" instead; it also bounds what one recv() allocates.
MAX_MESSAGE = 256 * 1024


# (what multiprocessing.connection.wait uses)
_Selector = getattr(selectors, "PollSelector", selectors.SelectSelector)


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

    def say(self, message: bytes) -> None:
        """An ASK or an ANSWER: sent now or never (nothing is owed for it). Never one too
        long: _send would make it "forget everything", which empties every worker's cache
        (an ASK gains a byte at the supervisor: the asker's slot)."""
        if len(message) < MAX_MESSAGE:
            _send(self.end, message)

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
        self.counted: list[bytes | None] = [None] * slots  # each slot's last Counts

    def open(self, slot: int) -> socket.socket:
        """A new channel for the worker (re)started in slot: its end, to give it."""
        self.close(slot)
        ours, theirs = pair()
        self.ends[slot] = ours
        if (last := self.counted[slot]) is not None:  # a restart: its predecessor's figures
            _send(ours, RETIRED + last)  # (the first message on an empty socket: room)
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

    def wait(self, others: list[Any], timeout: float) -> list[Any]:
        """Until one of others (process sentinels, sockets: as for
        multiprocessing.connection.wait) or a worker's channel has something to read, or
        a channel owed a clear has room for it again, or timeout; what is ready. Without
        the room, a worker that read its full channel again (after a pause, a stop) got
        its clear only at the supervisor's next timeout: for up to a second it served
        what had been purged meanwhile (seen: 0.95 s)."""
        events: dict[int, int] = {}
        for ready in (*others, *self.waitables()):
            events[ready if isinstance(ready, int) else ready.fileno()] = selectors.EVENT_READ
        for slot in self.owed:
            if (end := self.ends[slot]) is not None:
                events[end.fileno()] = events.get(end.fileno(), 0) | selectors.EVENT_WRITE
        with _Selector() as selector:
            for fd, wanted in events.items():
                selector.register(fd, wanted)
            return [key.fd for key, _ in selector.select(timeout)]

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
                kind = message[:1]
                if kind == ANSWER:  # to the one that asked, alone
                    dest = message[1] if len(message) > 1 else len(self.ends)
                    to = self.ends[dest] if dest < len(self.ends) else None
                    if to is not None:
                        _send(to, ANSWER + message[2:])
                    continue
                if kind in (ASK, COUNTED):  # (a COUNTED: its asker's slot, replaced)
                    message = kind + bytes([slot]) + message[1 + (kind == COUNTED):]
                if kind == COUNTED and len(message) > 2 + ASK_ID:
                    self.counted[slot] = message[2 + ASK_ID:]
                for other, to in enumerate(self.ends):
                    if other == slot or to is None:
                        continue
                    if kind in (ASK, COUNTED):
                        _send(to, message)
                    elif other in self.owed or not _send(to, message):
                        self.owed.add(other)
        for slot in list(self.owed):
            end = self.ends[slot]
            if end is None or _send(end, FORGET_ALL):
                self.owed.discard(slot)


class Siblings:
    """A worker's side: its memory store's forgetting told and heard (with the memory
    store), and its counters given and gathered for /metrics."""

    def __init__(self, end: socket.socket, workers: int) -> None:
        self.channel = Channel(end)
        self.others = workers - 1
        self.counts: Callable[[], bytes] = lambda: b"{}"  # this worker's, as JSON (listen)
        self.stats: Callable[[], bytes] = lambda: b"{}"  # its stats snapshot, as JSON
        self.listing: Callable[[bytes], bytes] = lambda asked: b""  # LIST's answer
        self.store: SiblingsMemoryStore | None = None
        self.marks: Invalidations | None = None
        self._asks: dict[bytes, tuple[list[bytes], set[int], asyncio.Future[None]]] = {}
        self._last: dict[int, bytes] = {}  # each other worker's last Counts, by its slot
        self._retired: Counts | None = None  # its predecessors' in its slot (RETIRED)

    def memory_store(self, config: Config) -> SiblingsMemoryStore | None:
        """With the memory store, one that tells the other workers what it forgets
        (store/siblings.py); the Redis store tells them through Redis itself."""
        if config.cache.store == "redis":
            return None
        self.store = SiblingsMemoryStore(config.cache.max_bytes, self.channel.tell)
        return self.store

    def listen(self, marks: Invalidations, counts: Callable[[], Counts]) -> None:
        self.marks = marks
        self.counts = lambda: counts_json(self._with_retired(counts()))
        self.channel.listen(self.heard)

    def _with_retired(self, own: Counts) -> Counts:
        if self._retired is None:
            return own
        return summed(own, [self._retired], shared_store=self.store is None)  # (Redis: once)

    async def counters(self) -> list[Counts]:
        """The other workers' Counts (observe/metrics.py): those that answer in time, and
        the last answer of each that does not, counted as no process answering
        (processes=0): its counters stay in the sum, which never goes down, not even at a
        worker's restart (RETIRED)."""
        answered: set[int] = set()
        if self.others >= 1:  # this worker's figures, as the scrape shows them (RETIRED)
            self.channel.say(COUNTED + bytes(1 + ASK_ID) + self.counts())
        found = [c for c in map(counts_from_json, await self._ask(b"", answered))
                 if c is not None]
        if self._retired is not None:
            found.append(self._retired)
        for slot, data in self._last.items():
            if slot not in answered and (last := counts_from_json(data)) is not None:
                found.append(dataclasses.replace(last, processes=0))
        return found

    def heard(self, message: bytes) -> None:
        kind = message[:1]
        if kind == ASK:  # ASK + slot + id + question
            head, question = message[1:2 + ASK_ID], message[2 + ASK_ID:]
            if question:
                self.channel.say(ANSWER + head + self.answer(question))
            else:
                self.channel.say(COUNTED + head + self.counts())
        elif kind == ANSWER:  # ANSWER + id + answer
            self._answered(message[1:1 + ASK_ID], message[1 + ASK_ID:], None)
        elif kind == RETIRED:
            self._retired = retired(message[1:])
        elif kind == COUNTED and len(message) > 1 + ASK_ID:  # COUNTED + slot + id + Counts
            slot, counts = message[1], message[2 + ASK_ID:]
            self._last[slot] = counts  # (also an answer to another worker's scrape)
            self._answered(message[2:2 + ASK_ID], counts, slot)
        elif self.store is not None and self.marks is not None:
            self._forget(message)

    def answer(self, question: bytes) -> bytes:
        """What this worker answers an ASK: its Counts, its stats, or (a forget message:
        a purge) the entries it dropped, in ASCII digits; b"" to a question it cannot
        answer (another version's, or a forget without a memory store)."""
        if not question:
            return self.counts()
        if question == STATS:
            return self.stats()
        if question[:1] == LIST:
            return self.listing(question[1:])
        if question[:1] in (FORGET_KEY, FORGET_PREFIX, FORGET_ALL) \
                and self.store is not None and self.marks is not None:
            return b"%d" % self._forget(question)
        return b""

    def _forget(self, message: bytes) -> int:
        """Forget what another worker forgot, and (as for our own purges and invalidations)
        keep a fill under way here from storing what it fetched before (invalidations.py).
        The entries dropped here."""
        assert self.store is not None and self.marks is not None
        now = time.perf_counter()
        # Marked first, as the answering worker marks before it deletes (admin.py).
        kind, arg = message[:1], message[1:].decode("utf-8", "surrogateescape")
        if kind == FORGET_KEY:
            self.marks.key(arg, now)
        elif kind == FORGET_PREFIX:
            self.marks.prefix(arg, now)
        else:
            self.marks.everything(now)
        return self.store.forgotten(message)

    def _answered(self, ask_id: bytes, answer: bytes, slot: int | None) -> None:
        waiting = self._asks.get(ask_id)
        if waiting is not None:
            answers, slots, done = waiting
            answers.append(answer)
            if slot is not None:
                slots.add(slot)
            if len(answers) >= self.others and not done.done():
                done.set_result(None)

    async def gather(self) -> list[bytes]:
        """The other workers' counters: those that answer within GATHER_SECONDS."""
        return await self.ask()

    def ask(self, question: bytes = b"") -> Awaitable[list[bytes]]:
        """Ask the other workers now (before anything this worker tells them next: a purge
        asks, then deletes here, whose telling the others then find done); await what
        answers within GATHER_SECONDS. Await it always (it holds its place until then)."""
        return self._ask(question, set())

    def _ask(self, question: bytes, slots: set[int]) -> Awaitable[list[bytes]]:
        """ask(), and the slots of the workers whose counters answered, into `slots`."""
        if self.others < 1:
            return _none()
        # Random: a worker restarted in a slot takes no answer to its predecessor's ask.
        ask_id = os.urandom(ASK_ID)
        answers: list[bytes] = []
        done = asyncio.get_running_loop().create_future()
        self._asks[ask_id] = (answers, slots, done)
        self.channel.say(ASK + ask_id + question)
        return self._answers(ask_id, answers, done)

    async def _answers(self, ask_id: bytes, answers: list[bytes],
                       done: asyncio.Future[None]) -> list[bytes]:
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done, GATHER_SECONDS)
        finally:
            del self._asks[ask_id]
        return answers


async def _none() -> list[bytes]:
    return []
