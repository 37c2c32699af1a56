"""Where log lines go: standard output or a file, written by a thread.

The event loop only appends to a list; a batch is handed to the writer thread
at most every FLUSH_SECONDS, so the loop never waits on a disk or a pipe.
A file is reopened on SIGHUP (reopen()), which is what logrotate's default
"create" mode expects: rename the file, signal, and the proxy starts a new one.

With --workers, every worker writes to the same standard output. A file is opened with
O_APPEND, where each write lands whole; a pipe (the docker default) takes a write whole
only up to PIPE_BUF bytes, so there a batch is written in pieces of whole lines no longer
than that, and two workers' lines never cut into each other (one line longer than
PIPE_BUF, rare, may still be).

The writer writes to the descriptor unbuffered and resumes a short write where it stopped
(a write interrupted by a signal, a non-blocking descriptor that is full, which it waits
on: only its thread waits), so a batch is written whole or counted lost where it broke
off; a line cut by a failed write (a full disk) is ended before the next batch, so the
next line is not glued to it. (A buffered file kept what a failed write left and wrote it
with a later batch, and PYTHONUNBUFFERED's standard output, as in the Dockerfile, returned
short writes that were never resumed.)"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import queue
import select
import stat
import sys
import threading
import time
from typing import BinaryIO

# Small batches, often: a batch's join, encode and write take the proxy's CPU (the writer
# shares it) for a time that grows with the batch, and the requests in flight meanwhile
# wait. At 50 ms, batches of ~1 MB at 65,000 hits a second doubled the p99 of hits (2.0-3.4
# ms against 1.2 at 5 ms; 1.0 with no log), for no gain in throughput (bench, 6 rounds).
FLUSH_SECONDS = 0.005
# Batches waiting for the writer, at most: about a minute at one batch per FLUSH_SECONDS.
# A stalled stdout or disk must not grow the proxy's memory; past this, lines are dropped
# (counted, and said on stderr).
MAX_BACKLOG = round(60 / FLUSH_SECONDS)
# And in characters: a minute of batches is not bounded in bytes (a client sets the length
# of its User-Agent and Referer: some 100 KB a line at most), so a stalled pipe behind
# large lines would hold gigabytes before the minute ran out.
MAX_BACKLOG_CHARS = 64 << 20
WRITE_ERROR_INTERVAL = 60.0  # seconds between two stderr lines about a log it cannot write
_REOPEN = object()
_STOP = object()
# What the sink has to say goes through logging (observe/diagnostics.py's handler), never a
# print(): the request log's stalled pipe is often stderr's too (`serve 2>&1 | ...`, docker),
# and a print to it from the event loop blocked the loop, and every request, for good.
log = logging.getLogger("cacheproxy")


class LogFileError(OSError):
    """log.path cannot be opened; the message names the setting, the file and the cause."""


def open_log_file(path: str) -> BinaryIO:
    """log.path opened for appending (unbuffered: the writer sees what each write took),
    or LogFileError naming the setting."""
    try:
        return open(path, "ab", buffering=0)
    except OSError as exc:
        raise LogFileError(f"log.path: cannot open {path}: "
                           f"{(exc.strerror or str(exc)).lower()}") from None


class LogSink:
    def __init__(self, path: str) -> None:
        self.path = path
        self._pending: list[str] = []
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._file: BinaryIO = self._open()
        self._whole_lines = _shared_pipe(self._file)
        self._scheduled = False
        # When a line came or a batch went last (time.monotonic()): the quiet spell's start
        self._touched = -FLUSH_SECONDS
        self.dropped = 0  # lines lost because the writer could not keep up (since said)
        # Characters handed to the writer, and those it has done with: each counter is
        # written by one thread only (the loop, the writer), so their difference is safe.
        self._queued_chars = 0
        self._done_chars = 0
        self._lost = 0  # lines the writer could not write (a full disk, a closed pipe)
        self._said: float | None = None  # when it last said so
        # (the writer's) A failed write cut a line: the next batch ends it first.
        self._torn = False
        self._sent = 0  # bytes of the batch being written that went out (_write)
        self._thread = threading.Thread(target=self._run, name="cacheproxy-log", daemon=True)
        self._thread.start()

    def _open(self) -> BinaryIO:
        # Bytes, encoded here: a header byte that is not UTF-8 reaches us as a surrogate,
        # which a strict text stream would refuse, losing the whole batch.
        if not self.path:  # (the descriptor under its buffer: see _write)
            return getattr(sys.stdout.buffer, "raw", sys.stdout.buffer)
        return open_log_file(self.path)

    def write(self, line: str) -> None:
        self.write_many([line])

    def write_many(self, lines: list[str]) -> None:
        self._pending += lines
        now = time.monotonic()
        quiet, self._touched = now - self._touched >= FLUSH_SECONDS, now
        if not self._scheduled:
            # A batch goes at most every FLUSH_SECONDS, from a timer set at its first line.
            # One that comes after a quiet spell (no line nor hand-off for FLUSH_SECONDS:
            # a lightly loaded proxy, each line a batch of its own) goes at once, without
            # a timer to make and run for it: some 5,500 instructions a line, 5 % of a hit.
            # (Not "FLUSH_SECONDS after the last hand-off": lines 3-5 ms apart would each
            # have their own timer then, where one timer takes two.)
            if quiet:
                self.flush()
                return
            try:
                asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
            except RuntimeError:  # no loop (closing): to the writer now
                self.flush()
                return
            self._scheduled = True

    def flush(self) -> None:
        """Hand what is pending to the writer thread."""
        self._scheduled = False
        self._touched = time.monotonic()
        if not self._pending:
            return
        waiting = self._queue.qsize()
        # Once dropping, until the writer has caught up whole: else a slow (not stopped)
        # pipe would take a batch now and then, and each would say "caught up", "stalled".
        if (waiting >= MAX_BACKLOG or (self.dropped and waiting)
                or self._queued_chars - self._done_chars >= MAX_BACKLOG_CHARS):
            if not self.dropped:
                log.warning("request log: the writer is stalled; dropping lines")
            self.dropped += len(self._pending)
        else:
            if self.dropped:  # it takes lines again: say how many were lost meanwhile
                log.warning("request log: the writer caught up (%d lines dropped)",
                            self.dropped)
                self.dropped = 0
            batch = "\n".join(self._pending) + "\n"
            self._queued_chars += len(batch)
            self._queue.put(batch)
        self._pending = []

    def wait_written(self, timeout: float = 5.0) -> bool:
        """Block until the writer thread has written what was flushed before the call.
        Call flush() on the loop first; this may block, so run it in a thread."""
        written = threading.Event()
        self._queue.put(written)
        return written.wait(timeout)

    def reopen(self) -> None:
        self.flush()
        self._queue.put(_REOPEN)

    def close(self, timeout: float = 5.0) -> None:
        self.flush()
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    self._close()
                    return
                if isinstance(item, threading.Event):
                    item.set()
                    continue
                if item is _REOPEN:
                    if self.path:  # the new file first: if it cannot open, keep the old
                        new = self._open()
                        self._file.close()
                        self._file = new
                        self._whole_lines = _shared_pipe(new)
                        self._torn = False  # (a cut line stays in the old file)
                    continue
                data = item.encode("utf-8", "backslashreplace")  # type: ignore[attr-defined]
                if self._write(data) and self._lost:
                    log.warning("request log: written again (%d lines lost)", self._lost)
                    self._lost, self._said = 0, None
            except (OSError, ValueError) as exc:  # a full disk must not stop the proxy
                if isinstance(item, str):
                    self._write_failed(exc, item.count("\n"))
                else:
                    log.warning("request log: %s", exc)
            finally:
                if isinstance(item, str):
                    self._done_chars += len(item)

    def _write(self, data: bytes) -> bool:
        """data (whole lines) written whole, in pieces of whole lines on a shared pipe; or,
        when a write fails, the lines that did not go out whole counted lost (said at most
        once a WRITE_ERROR_INTERVAL) and False."""
        self._sent = 0
        try:
            if self._torn:  # the last failed write cut a line: end it, alone
                if self._ends_mid_line():
                    self._write_all(b"\n")
                self._torn, self._sent = False, 0
            for piece in _pieces(data) if self._whole_lines else (data,):
                self._write_all(piece)
        except (OSError, ValueError) as exc:  # a full disk must not stop the proxy
            sent = self._sent
            if sent:
                self._torn = data[sent - 1] != 0x0A  # (b"\n")
            self._write_failed(exc, data.count(b"\n", sent))
            return False
        return True

    def _ends_mid_line(self) -> bool:
        """Does the file still end with the line a failed write cut? Not when another
        worker appended to it since (its line is glued to the cut one already: an empty
        line would be one more malformed line). A pipe, or no answer: yes."""
        if self._whole_lines:  # not a regular file: nothing to read back
            return True
        try:  # (the same file, opened to read: ours is write-only)
            fd = os.open(f"/proc/self/fd/{self._file.fileno()}", os.O_RDONLY)
        except (OSError, ValueError):
            return True
        try:
            size = os.fstat(fd).st_size
            return size > 0 and os.pread(fd, 1, size - 1) != b"\n"
        except OSError:
            return True
        finally:
            os.close(fd)

    def _write_all(self, piece: bytes) -> None:
        """piece written whole, adding what went out to self._sent as it goes."""
        write = self._file.write
        n = write(piece)
        if n == len(piece):  # (the usual)
            self._sent += n
            return
        view = memoryview(piece)
        while True:
            if n is None:  # a non-blocking descriptor with no room: wait (this thread may)
                room = select.poll()  # (not select(): a descriptor past 1023 after a reopen)
                room.register(self._file, select.POLLOUT)
                room.poll()
            elif n > 0:  # a short write (a signal, a disk filling up): the rest now
                self._sent += n
                view = view[n:]
                if not view:
                    return
            else:
                raise OSError(errno.EIO, "the log took no byte of a write")
            n = write(view)

    def _close(self) -> None:
        try:
            self._file.flush()
            if self.path:
                self._file.close()
        except (OSError, ValueError) as exc:  # stopping all the same
            log.warning("request log: %s", exc)

    def _write_failed(self, exc: Exception, lines: int) -> None:
        """Said once, then at most once a WRITE_ERROR_INTERVAL with the lines lost since:
        one line per batch would flood stderr (often the journal on that same full disk)."""
        self._lost += lines
        now = time.monotonic()
        if self._said is None or now - self._said >= WRITE_ERROR_INTERVAL:
            log.warning("request log: %s (%d lines lost so far; said again at most every "
                        "%g s)", exc, self._lost, WRITE_ERROR_INTERVAL)
            self._said = now


def _shared_pipe(file: BinaryIO) -> bool:
    """Is file something other than a regular file (a pipe, a FIFO, a terminal), where
    writes longer than PIPE_BUF may be interleaved with other processes' writes?"""
    try:
        return not stat.S_ISREG(os.fstat(file.fileno()).st_mode)
    except (OSError, ValueError):  # no descriptor (a test's stand-in): take care
        return True


def _pieces(data: bytes) -> list[bytes]:
    """data cut at line ends into pieces of at most PIPE_BUF bytes (a longer line alone)."""
    if len(data) <= select.PIPE_BUF:
        return [data]
    pieces, start, end = [], 0, len(data)
    while start < end:
        stop = data.rfind(b"\n", start, start + select.PIPE_BUF) + 1
        if stop <= start:  # one line longer than PIPE_BUF
            stop = data.find(b"\n", start) + 1 or end
        pieces.append(data[start:stop])
        start = stop
    return pieces
