"""Review of the request log and `cacheproxy logs` (review-logs), read as an operator and
as an attacker: what clients can put in a line (control characters, CR/LF, ESC, NUL, bytes
that are no UTF-8, very long values) in both formats, each outcome's fields, the sink
behind a stalled or failing pipe or file, and the summariser on hostile input. Each
defect's test failed on the code it was written against (61fa4df)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

from processes import clean_env, free_port, start_serve

from cacheproxy.observe import sink as sink_module

REPO = Path(__file__).resolve().parent.parent


def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        assert proc.poll() is None, "serve exited early"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_cacheproxy/healthz",
                                        timeout=5):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            threading.Event().wait(0.05)
    raise AssertionError("serve did not start")


def test_a_stalled_stdout_shared_with_stderr_does_not_freeze_the_proxy(tmp_path):
    """The request log's sink said "the writer is stalled; dropping lines" with a print()
    to stderr from the event loop. When stdout and stderr are one pipe (`serve 2>&1 |
    ...`, docker's log driver blocking), that pipe is the stalled one: the print blocked
    the loop, and the proxy stopped answering anyone, hits and healthz included, for
    good, once the writer was a minute (MAX_BACKLOG) behind; the README promises that "a
    slow disk or pipe never stalls requests". Severity: high (a total outage from a slow
    log reader). Here MAX_BACKLOG is 3 batches so that it comes in a second, not a minute;
    each request waits at most 5 s, a failure, not a sleep."""
    port = free_port()
    read_end, write_end = os.pipe()  # never read: full at 64 KiB
    code = ("import cacheproxy.observe.sink as s; s.MAX_BACKLOG = 3; "
            "from cacheproxy.cli import main; raise SystemExit(main())")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "serve", "--listen", f"127.0.0.1:{port}",
         "--upstream", "http://127.0.0.1:9"],
        cwd=tmp_path, env=clean_env(PYTHONPATH=str(REPO)), stdout=write_end,
        stderr=write_end, start_new_session=True)
    os.close(write_end)
    try:
        _wait_listening(port, proc)
        answered = 0
        for i in range(150):  # 150 lines of 4 KB: the pipe is full after some 16
            request = urllib.request.Request(f"http://127.0.0.1:{port}/x{i}",
                                              headers={"User-Agent": "u" * 4000})
            try:
                with urllib.request.urlopen(request, timeout=5):
                    pass
            except urllib.error.HTTPError as exc:  # 502: no origin; the log line is the point
                assert exc.code == 502
            answered += 1
        assert answered == 150
        assert proc.poll() is None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait()
        os.close(read_end)


async def test_the_log_backlog_is_bounded_in_bytes_and_the_loss_is_said(
        monkeypatch, tmp_path, caplog):
    """A stalled log writer held up to MAX_BACKLOG batches (a minute of them) whatever their
    size: lines are as long as a client makes its User-Agent and Referer (some 100 KB each
    at most), so a client sending such requests to a proxy whose log pipe stalled grew its
    memory by gigabytes before the minute was out (the README: "lines are dropped and
    counted rather than held in memory"). And the count of lines dropped was never said:
    one "dropping lines" at the first loss, then nothing, not even at the next stall
    (diagnostics.py, for stderr, says the count when the stream takes lines again).
    Now the backlog is bounded in characters too, and the count is said when the writer
    takes lines again. Severity: medium (memory exhaustion with a stalled log)."""
    monkeypatch.setattr(sink_module, "MAX_BACKLOG_CHARS", 250_000, raising=False)
    sink = sink_module.LogSink(str(tmp_path / "requests.log"))
    stalled, released = threading.Event(), threading.Event()
    write = sink._file.write

    def slow_write(data: bytes) -> int:  # the writer thread stalls inside its first write
        stalled.set()
        released.wait(5)
        return write(data)
    monkeypatch.setattr(sink._file, "write", slow_write)
    big = "x" * 100_000
    caplog.set_level(logging.WARNING, logger="cacheproxy")
    for n in range(10):
        sink.write(f"{n} {big}")
        sink.flush()  # one batch per line
        if n == 0:
            assert await asyncio.to_thread(stalled.wait, 5)
    # One batch being written, two more waiting (300 KB): the other seven dropped.
    assert sink.dropped == 7
    released.set()
    assert await asyncio.to_thread(sink.wait_written)
    sink.write("after")
    sink.flush()  # taken again: the loss is said
    sink.close()
    lines = (tmp_path / "requests.log").read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["0", "1", "2", "after"]
    said = [r.getMessage() for r in caplog.records if "request log" in r.getMessage()]
    assert any("7 lines dropped" in m for m in said), said


async def _logged(tmp_path: Path, fmt: str, *requests: bytes) -> str:
    """The request log (format fmt) of a real `cacheproxy serve`, in front of an origin
    answering 200 "hello" (max-age=60) to all, after these raw requests, each on a
    connection of its own."""
    log = tmp_path / f"{fmt}.log"

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
                             b"Cache-Control: max-age=60\r\n\r\nhello")
                await writer.drain()
        writer.close()

    origin = await asyncio.start_server(answer, "127.0.0.1", 0)
    oport = origin.sockets[0].getsockname()[1]
    proc, port = await start_serve(
        "--upstream", f"http://127.0.0.1:{oport}", "--log-file", str(log), cwd=tmp_path,
        env=clean_env(PYTHONPATH=str(REPO), CACHEPROXY_LOG_FORMAT=fmt))
    try:
        for request in requests:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 200")
            writer.close()
    finally:
        proc.terminate()  # a graceful stop writes the log out
        await asyncio.wait_for(proc.wait(), 20)
        origin.close()
    return log.read_bytes().decode("utf-8", "surrogateescape")


def _logs(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "cacheproxy", "logs", *args],
                          env=clean_env(PYTHONPATH=str(REPO)), capture_output=True, timeout=60)


async def test_the_longest_lines_the_proxy_writes_are_read_by_logs(tmp_path):
    """A User-Agent and a Referer of 8,000 bytes each that are no UTF-8 (obs-text, which the
    proxy forwards) are written \\uDCHH in both formats: six characters a byte, a line of
    some 96 KB. `cacheproxy logs` skipped any line over 64 KiB as malformed, so such a
    request (a MISS, with its bytes from the origin) was left out of every figure: a client
    could keep its own traffic out of the operator's summary. The reader's bound now lies
    above the longest line the proxy writes (a head of at most 64 KiB, a byte escaped in
    at most six characters). Severity: low (figures wrong; an attacker hides)."""
    junk = b"\xff" * 8000
    for fmt in ("json", "text"):
        text = await _logged(tmp_path, fmt, b"GET /a HTTP/1.1\r\nHost: x\r\nUser-Agent: " + junk
                             + b"\r\nReferer: http://r/" + junk + b"\r\nConnection: close\r\n\r\n")
        [line] = text.splitlines()
        assert len(line) > 64 * 1024
        report = json.loads(_logs("--json", str(tmp_path / f"{fmt}.log")).stdout)
        assert report["lines"]["malformed"] == 0, fmt
        assert report["requests"] == 1 and report["cache"]["MISS"] == 1
        assert report["bytes"]["from_origin"] == 5


# U+2028/U+2029 (line and paragraph separators), and bidirectional controls.
_INVISIBLE = ("\u2028", "\u2029", "\u202e", "\u2066", "\u200f", "\u061c")


async def test_line_separators_and_bidi_controls_from_clients_are_escaped(tmp_path):
    """A User-Agent or Referer is forwarded with any UTF-8 in it, and was written as it
    came: U+2028 and U+2029 raw in both formats (valid JSON, but a line break to Python's
    str.splitlines() and to editors: a client forged a second line there), and U+202E /
    U+2066 (bidirectional overrides) raw, so a terminal or editor showing the log reordered
    the rest of the line (status, cache, client: CVE-2021-42574's trick). nginx escapes
    every byte over 0x7E as \\xHH. Both formats now write them \\uHHHH, and read them
    back as they were. Severity: low (log spoofing)."""
    from cacheproxy.observe.record import parse_line

    agent = "ua\u202e\u2066 200 HIT\u200f\u061c"
    referer = "http://r/\u2028{\"forged\":1}\u2029x"
    request = (f"GET /a HTTP/1.1\r\nHost: x\r\nUser-Agent: {agent}\r\nReferer: {referer}"
               "\r\nConnection: close\r\n\r\n").encode()
    for fmt in ("json", "text"):
        text = await _logged(tmp_path, fmt, request)
        assert not any(c in text for c in _INVISIBLE), (fmt, text)
        [line] = text.splitlines()
        record = parse_line(line)
        assert record is not None and record.cache == "MISS", (fmt, line)
        assert (record.user_agent, record.referer) == (agent, referer), fmt


def test_the_report_shows_control_characters_of_a_log_escaped(tmp_path):
    """`cacheproxy logs` reads a log's escapes back (\\u001b in JSON, \\x1B in text) and
    printed the top URLs as they were: an ESC, a CSI (U+009B) or a bidi override in a
    line's host or path drove, or reordered, the terminal of the operator reading the
    report (a log is input like any other: from an older version, another tool, a file
    copied from elsewhere). Now shown escaped, as the log wrote them. Severity: low."""
    log = tmp_path / "access.log"
    log.write_text(
        '{"time":"2026-11-23T17:32:24.676Z","client":"127.0.0.1","method":"GET",'
        '"host":"h","path":"/a\\u001b[2J\\u009b31m\\u202eb","status":200,"cache":"MISS",'
        '"bytes":66,"total_ms":0.167}\n'
        '127.0.0.1 - - [23/Nov/2026:17:32:25 +0000] "GET /t\\x1B]0;title\\x07 HTTP/1.1" 200 5 '
        '"-" "-" host=h cache=MISS age=- ttl=- upstream_status=200 upstream_ms=0.1 '
        'total_ms=0.2 collapsed=0 route=default policy="-" cache_status="-"\n')
    done = _logs(str(log))
    out = done.stdout.decode()
    assert done.returncode == 0 and "malformed 0" in out, out
    assert not any(c in out for c in ("\x1b", "\x07", "\x9b", "\u202e")), out
    assert "h/a\\x1B[2J\\x9B31m\\u202Eb" in out and "h/t\\x1B]0;title\\x07" in out, out


def _close_stdin_and_stdout() -> None:
    os.close(0)
    os.close(1)


def test_serve_started_with_stdin_and_stdout_closed_serves_and_stops_cleanly(tmp_path):
    """`cacheproxy serve <&- >&-` (a daemonizer or process manager that closes them) gave
    descriptors 0 and 1 to the next files opened: the listening socket among them. libuv
    refuses to close a descriptor below 3 and aborted the process (`uv__close: Assertion
    fd > STDERR_FILENO failed`, SIGABRT, no message): at the stop, cutting the requests in
    flight, and at the start when the request log went to standard output. Now each closed
    one gets /dev/null first, as nginx's daemon start does, and a closed stdout is said
    (the request log written there is lost). Severity: medium (a crash, rare setup)."""
    port = free_port()
    log = tmp_path / "requests.log"
    for log_args in ((), ("--log-file", str(log))):
        proc = subprocess.Popen(
            [sys.executable, "-m", "cacheproxy", "serve", "--listen", f"127.0.0.1:{port}",
             "--upstream", "http://127.0.0.1:9", *log_args],
            cwd=tmp_path, env=clean_env(PYTHONPATH=str(REPO)), stderr=subprocess.PIPE,
            preexec_fn=_close_stdin_and_stdout, start_new_session=True)
        try:
            _wait_listening(port, proc)
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/x", timeout=5)
            except urllib.error.HTTPError as exc:
                assert exc.code == 502  # no origin: the line is the point
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err.decode()
        # (said only when the request log would have gone there: cli's serve)
        assert ("standard output was closed" in err.decode()) is (not log_args)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["status"] for r in records if r["path"] == "/x"] == [502]
