"""Diagnostic lines (the log records of `logging`) to standard error, without ever
stopping the event loop on it.

Standard error is often a pipe (docker's log driver, `serve 2>&1 | ...`, a supervisor). A
pipe nobody drains is full at 64 KiB, and a plain StreamHandler's next write then blocks
the thread that logs: here the event loop, and with it every client, hits too (602
failed upstream requests, a WARNING each, stopped the proxy). So a line is written at
once only where that cannot block: to a file or terminal, as before, or to a pipe or
socket that select() says has room for it (a line of at most PIPE_BUF bytes), with
nothing queued before it. Otherwise a thread writes it; past MAX_QUEUED lines waiting,
the newest are dropped and counted, and the count is said once the stream takes lines
again, as the request log does with its own (observe/sink.py).
"""

from __future__ import annotations

import logging
import os
import select
import stat
import sys
import threading
import time
from collections import deque
from typing import TextIO

MAX_QUEUED = 10_000  # lines waiting for a stalled stderr, at most (a few MB)
FLUSH_SECONDS = 2.0  # what flush() (at exit) waits for a stalled stderr, at most


def _is_pipe(fd: int) -> bool:
    """A pipe, FIFO or socket: a reader that stops makes a write block."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


class StderrHandler(logging.Handler):
    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self.stream = stream if stream is not None else sys.stderr
        self._fd = self.stream.fileno()
        self._pipe = _is_pipe(self._fd)
        self._queued: deque[bytes] = deque()
        self._ready = threading.Condition()
        self._writer: threading.Thread | None = None
        self.dropped = 0  # lines lost since the stream last took one
        os.register_at_fork(after_in_child=self._forked)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
        except Exception:  # (a record that cannot be formatted: logging's own report)
            self.handleError(record)
            return
        with self._ready:
            if not self._queued and self._room_for(len(data)):
                self._write(data)
                return
            if len(self._queued) >= MAX_QUEUED:
                self.dropped += 1
                return
            self._queued.append(data)
            if self._writer is None:
                self._writer = threading.Thread(target=self._run, name="cacheproxy-stderr",
                                                daemon=True)
                self._writer.start()
            self._ready.notify_all()

    def flush(self) -> None:
        """Wait (at most FLUSH_SECONDS: the pipe may never drain) for the lines queued."""
        deadline = time.monotonic() + FLUSH_SECONDS
        with self._ready:
            while self._queued and self._writer is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._ready.wait(left)

    def _room_for(self, size: int) -> bool:
        if not self._pipe:
            return True
        # Linux: a pipe is writable with a page free, where a write of PIPE_BUF fits whole.
        return size <= select.PIPE_BUF and bool(select.select([], [self._fd], [], 0)[1])

    def _write(self, data: bytes) -> None:
        try:
            self.stream.flush()  # (what print() left in the text stream goes first)
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
        except (OSError, ValueError):  # a closed stderr must not stop the proxy
            pass

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queued:
                    self._ready.wait()
                data = self._queued[0]
            self._write(data)  # (may block: nothing waits on it but this thread)
            with self._ready:
                self._queued.popleft()
                if self.dropped and not self._queued:
                    note = f"cacheproxy: stderr was stalled: {self.dropped} log lines dropped\n"
                    self._queued.append(note.encode())
                    self.dropped = 0
                self._ready.notify_all()

    def _forked(self) -> None:
        """A new process (a worker): the parent's queue is the parent's to write, and its
        writer thread is not here."""
        self._ready = threading.Condition()
        self._queued = deque()
        self._writer = None
        self.dropped = 0
