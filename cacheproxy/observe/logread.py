"""Reading a request log for `cacheproxy logs`: whole, or following it as it grows
(like `tail -F`: through rotation and truncation), in bounded memory."""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import sys
import time
from typing import IO

from cacheproxy.observe.summary import Summary, render

LOG_CHUNK = 1 << 20           # bytes read at a time
MAX_LINE = 64 * 1024          # a longer line is skipped as malformed (never held whole)
FOLLOW_INTERVAL = 1.0         # seconds between two views in --follow


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
    return f


def read_to_end(source: IO[bytes], summary: Summary) -> None:
    splitter = LineSplitter()
    while chunk := source.read(LOG_CHUNK):
        for line in splitter.feed(chunk):
            summary.add_line(_decode(line))
    for line in splitter.flush():
        summary.add_line(_decode(line))


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
    """Follows a file like tail -F: reads what is appended, and reopens the path when it
    names another file (rotated: renamed and recreated) or shrinks (truncated)."""

    def __init__(self, path: str, f: IO[bytes]) -> None:
        self.path, self.f = path, f
        self.splitter = LineSplitter()
        self.identity = self._identity(os.fstat(f.fileno()))

    @staticmethod
    def _identity(st: os.stat_result) -> tuple[int, int]:
        return st.st_dev, st.st_ino

    def read(self, wait: float) -> tuple[list[bytes | None], bool]:
        """Lines available now (waiting up to `wait` for some) and whether the input ended."""
        chunk = self.f.read(LOG_CHUNK)
        if chunk:
            return self.splitter.feed(chunk), False
        # At the end of what is there: the old file is drained, so a switch loses nothing.
        try:
            st = os.stat(self.path)
        except FileNotFoundError:  # between the rename and the new file
            st = None
        if st is not None and self._identity(st) != self.identity:
            new = open(self.path, "rb", buffering=0)  # noqa: SIM115 (kept open while following)
            self.f.close()
            self.f, self.identity = new, self._identity(os.fstat(new.fileno()))
            return self.splitter.flush(), False
        if st is not None and st.st_size < self.f.tell():
            self.f.seek(0)
            return self.splitter.flush(), False
        time.sleep(wait)
        return [], False

    def close(self) -> None:
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
