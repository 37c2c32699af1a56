"""Reading a request log for `cacheproxy logs`: whole, or following it as it grows
(like `tail -F`: through rotation and truncation), in bounded memory."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import select
import shutil
import sys
import time
from typing import IO

from cacheproxy.observe.summary import Summary, human_bytes, human_duration, render

LOG_CHUNK = 1 << 20           # bytes read at a time
# A longer line is skipped as malformed (never held whole). Above the longest the proxy
# writes: a request head is at most 64 KiB (proxy/client_conn.py), and a byte of it is
# at most six characters in a line (obs-text as \uDCHH): some 400 KB with the rest.
MAX_LINE = 1 << 20
FOLLOW_INTERVAL = 1.0         # seconds between two views in --follow
PROGRESS_INTERVAL = 0.25      # seconds between two progress lines on a terminal


class LineSplitter:
    """Cuts a byte stream into lines while holding at most MAX_LINE bytes of an unfinished
    one: a longer line comes out as None (malformed), its bytes dropped as they arrive."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self.pending = b""
        self.overlong = False

    def feed(self, chunk: bytes) -> list[bytes | None]:
        *complete, tail = chunk.split(b"\n")
        lines: list[bytes | None] = []
        if complete:
            complete[0] = self.pending + complete[0]  # it ends the unfinished line
            limit = self.max_line
            lines = [line if len(line) <= limit else None for line in complete]
            if self.overlong:
                lines[0] = None
            self.pending, self.overlong = b"", False
        if not self.overlong:
            if len(self.pending) + len(tail) > self.max_line:
                self.pending, self.overlong = b"", True
            else:
                self.pending += tail
        return lines

    def flush(self) -> list[bytes | None]:
        """At the end of the stream (or of a rotated file): the unterminated last line."""
        last: list[bytes | None] = [None] if self.overlong else [self.pending] if self.pending \
            else []
        self.pending, self.overlong = b"", False
        return last


def _decode(line: bytes | None) -> str | None:
    return None if line is None else line.decode("utf-8", "replace")


def open_log(name: str) -> IO[bytes]:
    if name == "-":
        return open(sys.stdin.fileno(), "rb", buffering=0, closefd=False)
    f = open(name, "rb", buffering=0)  # noqa: SIM115 (closed by _logs)
    if os.path.isdir(name):  # Linux lets a directory be opened; reading it is the error
        f.close()
        raise IsADirectoryError(21, "Is a directory", name)
    if os.path.isfile(name) and os.pread(f.fileno(), 2, 0) == GZIP_MAGIC:
        # A log logrotate compressed (access.log.2.gz): read as zcat would give it.
        f.close()
        return gzip.open(name, "rb")  # type: ignore[return-value]
    return f


GZIP_MAGIC = b"\x1f\x8b"


def compressed(source: IO[bytes]) -> bool:
    return isinstance(source, gzip.GzipFile)


def read_to_end(source: IO[bytes], summary: Summary, progress: Progress | None = None) -> None:
    splitter = LineSplitter()
    done = 0
    while chunk := source.read(LOG_CHUNK):
        for line in splitter.feed(chunk):
            summary.add_line(_decode(line))
        done += len(chunk)
        if progress is not None:
            progress.update(done, summary.lines)
    for line in splitter.flush():
        summary.add_line(_decode(line))


class Progress:
    """One line on a terminal, rewritten in place while a log is read to its end (a 1 GiB
    log takes about a minute): bytes read of the file's size, lines, speed and time left.
    Nothing when `out` is not a terminal; erased before the report is printed."""

    def __init__(self, name: str, total: int | None, out: IO[str]) -> None:
        self.name, self.total, self.out = name, total, out
        self.enabled = out.isatty()
        self.started = time.monotonic()
        self.next = self.started  # the first line right after the first chunk
        self.shown = False

    def update(self, done: int, lines: int) -> None:
        now = time.monotonic()
        if not self.enabled or now < self.next:
            return
        self.next = now + PROGRESS_INTERVAL
        rate = done / max(now - self.started, 1e-3)
        text = f"reading {self.name}: {human_bytes(done)}"
        if self.total:
            text += f" of {human_bytes(self.total)} ({min(done / self.total, 1):.0%})"
        text += f", {lines:,} lines, {human_bytes(int(rate))}/s"
        if self.total and rate > 0 and done < self.total:
            text += f", about {human_duration((self.total - done) / rate + 0.5)} left"
        try:  # the width of the terminal it goes to (0: unknown), so it never wraps
            columns = os.get_terminal_size(self.out.fileno()).columns
        except (OSError, ValueError):
            columns = 0
        self.out.write(f"\r{text[: columns - 1] if columns > 1 else text}\x1b[K")
        self.out.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.out.write("\r\x1b[K")
            self.out.flush()
            self.shown = False


class View:
    """Where reports go: one at the end, or one per interval in --follow (a redrawn screen
    on a terminal, appended reports on a pipe, JSON Lines with --json)."""

    def __init__(self, args: argparse.Namespace, out: IO[str]) -> None:
        self.args, self.out = args, out
        self.live = args.follow and not args.json and out.isatty()
        if self.live:
            out.write("\x1b[2J")  # clear once; each redraw then overwrites from the top

    def show(self, summary: Summary) -> None:
        report = summary.report(self.args.top)
        if self.args.json:
            self.out.write(json.dumps(report, ensure_ascii=False) + "\n")
        elif self.live:
            columns, rows = shutil.get_terminal_size()
            head = f"following {self.args.file}  {time.strftime('%H:%M:%S')}  Ctrl-C quits"
            lines = [head, "", *render(report, self.args.top, columns).splitlines()]
            # Home, each line clearing its own rest, then clear below: no flicker, like top.
            self.out.write("\x1b[H" + "".join(f"{x[:columns]}\x1b[K\n"
                                              for x in lines[: rows - 1]) + "\x1b[J")
        else:
            if self.args.follow:
                self.out.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
            self.out.write(render(report, self.args.top))
        self.out.flush()


class _Tail:
    """Follows a file like tail -F: reads what is appended, goes back to the start when the
    file shrinks (truncated), and moves to the file the path names when that changes
    (rotated: renamed and recreated), without losing what still lands in the old one."""

    def __init__(self, path: str, f: IO[bytes]) -> None:
        self.path, self.f = path, f
        self.splitter = LineSplitter()
        self.identity = self._identity(os.fstat(f.fileno()))
        self.new: IO[bytes] | None = None  # the file now at the path, once rotated
        self.new_identity: tuple[int, int] | None = None
        self.draining = False  # the new file has data: the old one is read to its end

    @staticmethod
    def _identity(st: os.stat_result) -> tuple[int, int]:
        return st.st_dev, st.st_ino

    def read(self, wait: float) -> tuple[list[bytes | None], bool]:
        """Lines available now (waiting up to `wait` for some) and whether the input ended."""
        chunk = self.f.read(LOG_CHUNK)
        if chunk:
            return self.splitter.feed(chunk), False
        if self.draining:  # the old file's last lines are read: on to the new one
            return self._switch(), False
        # A new file at the path does not end the old one: the proxy writes on to the renamed
        # file until its SIGHUP reopen (logrotate's create mode: rename, create, then HUP),
        # so both stay open. Its writer finishes a batch in the old file before it opens the
        # new one, so once the new file has data, the old one only has to be read to its end.
        try:
            st = os.stat(self.path)
        except FileNotFoundError:  # between the rename and the new file
            st = None
        if st is not None and self._identity(st) == self.identity:
            self._forget_new()  # (a new file that went away again)
            if st.st_size < self.f.tell():  # truncated (copytruncate)
                self.f.seek(0)
                return self.splitter.flush(), False
        elif st is not None and self._identity(st) != self.new_identity:
            self._forget_new()
            try:
                self.new = open(self.path, "rb", buffering=0)  # noqa: SIM115 (see close)
            except OSError:  # gone again, or not readable (yet): the old one is still read
                pass
            else:
                self.new_identity = self._identity(os.fstat(self.new.fileno()))
        if self.new is not None and os.fstat(self.new.fileno()).st_size > 0:
            self.draining = True  # what reached the old file since the read above, then on
            chunk = self.f.read(LOG_CHUNK)
            return (self.splitter.feed(chunk) if chunk else self._switch()), False
        time.sleep(wait)
        return [], False

    def _switch(self) -> list[bytes | None]:
        assert self.new is not None and self.new_identity is not None
        self.f.close()
        self.f, self.identity = self.new, self.new_identity
        self.new, self.new_identity, self.draining = None, None, False
        return self.splitter.flush()  # the old file's unterminated last line, if any

    def _forget_new(self) -> None:
        if self.new is not None:
            self.new.close()
            self.new, self.new_identity = None, None

    def close(self) -> None:
        self._forget_new()
        self.f.close()


class _Pipe:
    """Follows stdin (or a FIFO): waits with select, ends when the writer closes it."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.splitter = LineSplitter()

    def read(self, wait: float) -> tuple[list[bytes | None], bool]:
        if not select.select([self.f], [], [], wait)[0]:
            return [], False
        chunk = self.f.read(LOG_CHUNK)
        if not chunk:
            return self.splitter.flush(), True
        return self.splitter.feed(chunk), False

    def close(self) -> None:
        self.f.close()


def follow(source: IO[bytes], summary: Summary, view: View) -> None:
    regular = os.path.isfile(view.args.file) and view.args.file != "-"
    reader = _Tail(view.args.file, source) if regular else _Pipe(source)
    try:
        _follow_loop(reader, summary, view)
    finally:
        reader.close()  # after a rotation it holds a file _logs never saw


def _follow_loop(reader: _Tail | _Pipe, summary: Summary, view: View) -> None:
    next_view = time.monotonic()  # the first view right after the first read
    changed = True
    while True:
        lines, ended = reader.read(min(0.1, max(0.0, next_view - time.monotonic())))
        for line in lines:
            summary.add_line(_decode(line))
        changed = changed or bool(lines)
        now = time.monotonic()
        if ended or now >= next_view:
            if changed or view.live:  # a pipe gets a report only when something was added
                view.show(summary)
                changed = False
            next_view = now + FOLLOW_INTERVAL
        if ended:
            return


# --- the command --------------------------------------------------------------------------------
