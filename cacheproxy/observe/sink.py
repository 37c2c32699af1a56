"""Where log lines go: standard output or a file, written by a thread.

The event loop only appends to a list; a batch is handed to the writer thread
at most every FLUSH_SECONDS, so the loop never waits on a disk or a pipe.
A file is reopened on SIGHUP (reopen()), which is what logrotate's default
"create" mode expects: rename the file, signal, and the proxy starts a new one."""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
from typing import BinaryIO

FLUSH_SECONDS = 0.05
# Batches waiting for the writer, at most: about a minute at one batch per FLUSH_SECONDS.
# A stalled stdout or disk must not grow the proxy's memory; past this, lines are dropped
# (counted, and said on stderr).
MAX_BACKLOG = 1200
_REOPEN = object()
_STOP = object()


class LogFileError(OSError):
    """log.path cannot be opened; the message names the setting, the file and the cause."""


class LogSink:
    def __init__(self, path: str) -> None:
        self.path = path
        self._pending: list[str] = []
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._file: BinaryIO = self._open()
        self._thread = threading.Thread(target=self._run, name="cacheproxy-log", daemon=True)
        self._thread.start()
        self._scheduled = False
        self.dropped = 0  # lines lost because the writer could not keep up

    def _open(self) -> BinaryIO:
        # Bytes, encoded here: a header byte that is not UTF-8 reaches us as a surrogate,
        # which a strict text stream would refuse, losing the whole batch.
        if not self.path:
            return sys.stdout.buffer
        try:
            return open(self.path, "ab")
        except OSError as exc:
            raise LogFileError(f"log.path: cannot open {self.path}: "
                               f"{(exc.strerror or str(exc)).lower()}") from None

    def write(self, line: str) -> None:
        self.write_many([line])

    def write_many(self, lines: list[str]) -> None:
        self._pending += lines
        if not self._scheduled:
            try:
                asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
            except RuntimeError:  # no loop (closing): to the writer now
                self.flush()
                return
            self._scheduled = True

    def flush(self) -> None:
        """Hand what is pending to the writer thread."""
        self._scheduled = False
        if not self._pending:
            return
        if self._queue.qsize() >= MAX_BACKLOG:
            if not self.dropped:
                print("cacheproxy: request log: the writer is stalled; dropping lines",
                      file=sys.stderr)
            self.dropped += len(self._pending)
        else:
            self._queue.put("\n".join(self._pending) + "\n")
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
                    self._file.flush()
                    if self.path:
                        self._file.close()
                    return
                if isinstance(item, threading.Event):
                    item.set()
                    continue
                if item is _REOPEN:
                    if self.path:  # the new file first: if it cannot open, keep the old
                        new = self._open()
                        self._file.close()
                        self._file = new
                    continue
                self._file.write(item.encode("utf-8", "backslashreplace"))  # type: ignore[attr-defined]
                self._file.flush()
            except (OSError, ValueError) as exc:  # a full disk must not stop the proxy
                print(f"cacheproxy: request log: {exc}", file=sys.stderr)
