"""`cacheproxy logs`: the summary's numbers on a log with known answers, each filter, the JSON
report, malformed lines, the sketches' error bounds, stdin, errors, and --follow through a
rotation (a real subprocess)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import pty
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cacheproxy.cli import main
from cacheproxy.observe.logread import MAX_LINE, LineSplitter, _Tail
from cacheproxy.observe.record import CACHE_STATUSES, LogRecord, to_json, to_text
from cacheproxy.observe.summary import (
    FrequentItems,
    LatencyHistogram,
    Summary,
    parse_statuses,
    parse_when,
    render,
)

T = datetime(2026, 11, 23, 17, 0, tzinfo=UTC).timestamp()
ROOT = Path(__file__).resolve().parent.parent


# What the origin answered, as the proxy logs it (none for a hit, an error or a refusal).
_UPSTREAM = {"MISS": 200, "EXPIRED": 200, "BYPASS": 201, "REVALIDATED": 304}


def rec(minute: int, cache: str, host: str, path: str, status: int, size: int, ms: float,
        method: str = "GET") -> LogRecord:
    return LogRecord(time=T + 60 * minute, client="192.0.2.7", method=method, host=host,
                     path=path, status=status, cache=cache, bytes=size, total_ms=ms,
                     upstream_status=_UPSTREAM.get(cache),
                     user_agent="test-agent", referer="https://a.example/")


# Eleven requests, one per minute from 17:00 to 17:10 (known answers in test_summary_numbers).
RECORDS = [
    rec(0, "HIT", "a.example", "/a", 200, 1000, 1.0),
    rec(1, "HIT", "a.example", "/a", 200, 1000, 2.0),
    rec(2, "MISS", "a.example", "/b", 200, 5000, 50.0),
    rec(3, "MISS", "a.example", "/b", 200, 5000, 60.0),
    rec(4, "EXPIRED", "b.example", "/c?x=1", 200, 3000, 40.0),
    rec(5, "REVALIDATED", "b.example", "/a", 200, 2000, 20.0),
    rec(6, "BYPASS", "b.example", "/post", 201, 100, 30.0, method="POST"),
    rec(7, "ERROR", "a.example", "/b", 502, 50, 5.0),
    rec(8, "DENIED", "a.example", "/img/x.png", 403, 10, 0.5),
    rec(9, "STALE", "a.example", "/a", 200, 1000, 1.5),
    rec(10, "UPDATING", "a.example", "/a", 200, 1000, 1.0),
]
# One of each kind of bad line: garbage, truncated JSON, binary, empty, and over-long (a
# record that would parse, but is longer than MAX_LINE).
MALFORMED = [
    b"hello, this is not a log line",
    to_json(RECORDS[0]).encode()[:40],
    b"\x00\xff\xfe\x80binary\x1b[31m",
    b"",
    to_json(rec(0, "HIT", "a.example", "/" + "x" * (MAX_LINE + 10), 200, 1, 1.0)).encode(),
]


def log_bytes(records: list[LogRecord], malformed: list[bytes] = ()) -> bytes:  # type: ignore[assignment]
    """Both formats in one file, alternating, with the bad lines spread in between."""
    lines = [(to_json(r) if i % 2 == 0 else to_text(r)).encode() for i, r in enumerate(records)]
    for i, bad in enumerate(malformed):
        lines.insert(2 * i + 1, bad)
    return b"\n".join(lines) + b"\n"


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "access.log"
    path.write_bytes(log_bytes(RECORDS, MALFORMED))
    return path


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["logs", *args, "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # one JSON object, one line
    return json.loads(out)


def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "cacheproxy", "logs", *args], input=stdin,
                          capture_output=True, timeout=30, cwd=ROOT)


# --- the numbers --------------------------------------------------------------------------------


def test_summary_numbers(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = run_json(capsys, str(log))
    assert report["lines"] == {"read": 16, "malformed": 5, "filtered_out": 0, "admin": 0}
    assert report["requests"] == 11
    assert report["period"] == {"first": "2026-11-23T17:00:00.000Z",
                                "last": "2026-11-23T17:10:00.000Z", "seconds": 600.0}
    assert report["cache"] == {"HIT": 2, "MISS": 2, "EXPIRED": 1, "STALE": 1, "REVALIDATED": 1,
                               "UPDATING": 1, "BYPASS": 1, "ERROR": 1, "DENIED": 1,
                                "TUNNEL": 0}
    assert report["http_status"] == {"1xx": 0, "2xx": 9, "3xx": 0, "4xx": 1, "5xx": 1,
                                     "other": 0}
    # Hits: HIT x2, REVALIDATED, STALE, UPDATING = 5 requests, 6000 bytes from storage.
    assert report["hit_ratio"] == {"requests": round(5 / 11, 6),
                                   "bytes": round(6000 / 19160, 6)}
    assert report["bytes"] == {"sent": 19160, "from_cache": 6000, "from_origin": 13100,
                               "other": 60, "tunnels": 0, "saved": 6000}
    # Nearest rank, within 1 %: hits sorted 1, 1, 1.5, 2, 20; misses 40, 50, 60; all
    # 0.5, 1, 1, 1.5, 2, 5, 20, 30, 40, 50, 60.
    latency = report["latency_ms"]
    for name, count, p50, p95, p99, top in (("hits", 5, 1.5, 20, 20, 20),
                                             ("misses", 3, 50, 60, 60, 60),
                                             ("all", 11, 5, 60, 60, 60)):
        assert latency[name] == {"count": count, "p50": pytest.approx(p50, rel=0.01),
                                 "p95": pytest.approx(p95, rel=0.01),
                                 "p99": pytest.approx(p99, rel=0.01), "max": top}
    top = report["top"]
    assert top["by_misses"] == [{"url": "a.example/b", "misses": 2},
                                {"url": "b.example/c?x=1", "misses": 1}]
    assert top["by_origin_bytes"] == [{"url": "a.example/b", "bytes": 10000},
                                      {"url": "b.example/c?x=1", "bytes": 3000},
                                      {"url": "b.example/post", "bytes": 100}]
    assert top["max_undercount"] == {"misses": 0, "origin_bytes": 0}


def test_json_schema(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = run_json(capsys, str(log), "--top", "1")
    assert set(report) == {"period", "filters", "lines", "requests", "hit_ratio", "cache",
                           "http_status", "bytes", "latency_ms", "top"}
    assert set(report["filters"]) == {"since", "until", "host", "path", "status"}
    assert list(report["cache"]) == list(CACHE_STATUSES)
    assert set(report["bytes"]) == {"sent", "from_cache", "from_origin", "other", "tunnels",
                                    "saved"}
    for name in ("hits", "misses", "all"):
        assert set(report["latency_ms"][name]) == {"count", "p50", "p95", "p99", "max"}
    assert set(report["top"]) == {"by_misses", "by_origin_bytes", "max_undercount"}
    assert len(report["top"]["by_misses"]) == len(report["top"]["by_origin_bytes"]) == 1


def test_human_report(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["logs", str(log)]) == 0
    out = capsys.readouterr().out
    assert "2026-11-23 17:00:00 .. 2026-11-23 17:10:00 UTC  (0:10:00)" in out
    assert "requests      11   (lines 16, malformed 5, filtered out 0)" in out
    assert "45.5 % of requests, 31.3 % of bytes" in out
    for status in CACHE_STATUSES:
        assert any(line.startswith(status + " ") for line in out.splitlines())
    assert "  a.example/b" in out and "9.8 KiB" in out  # 10 000 bytes from the origin


def test_admin_calls_are_logged_but_not_counted(log: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    admin = [rec(1, "BYPASS", "a.example", "/_cacheproxy/stats", 200, 500, 3.0),
             rec(2, "DENIED", "a.example", "/metrics", 401, 50, 0.2)]
    for r in admin:
        r.route = "admin"
    path = tmp_path / "with-admin.log"
    path.write_bytes(log_bytes(RECORDS + admin))  # one JSON line and one text line
    traffic, report = run_json(capsys, str(log)), run_json(capsys, str(path))
    assert report["lines"] == {"read": 13, "malformed": 0, "filtered_out": 0, "admin": 2}
    # Not requests, bytes, statuses, latency or top URLs: as if they were not there.
    assert {k: v for k, v in report.items() if k != "lines"} == \
        {k: v for k, v in traffic.items() if k != "lines"}
    # Nor filtered out: they are skipped before the filters.
    assert run_json(capsys, str(path), "--status", "bypass")["lines"] == \
        {"read": 13, "malformed": 0, "filtered_out": 10, "admin": 2}
    assert main(["logs", str(path)]) == 0
    assert "(lines 13, malformed 0, filtered out 0, admin calls 2)" in capsys.readouterr().out


def test_empty_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty.log").write_bytes(b"")
    report = run_json(capsys, str(tmp_path / "empty.log"))
    assert report["requests"] == 0 and report["hit_ratio"] == {"requests": None, "bytes": None}
    assert report["latency_ms"]["all"]["p50"] is None
    assert "no requests" in render(report)


# --- filters ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "requests"), [
    (["--since", "2026-11-23T17:05:00Z"], 6),            # since is inclusive
    (["--until", "2026-11-23T17:05:00Z"], 5),            # until is exclusive
    (["--since", "2026-11-23T18:05:00+01:00"], 6),       # an offset is honoured
    (["--since", "2026-11-23T17:05"], 6),                # no offset: UTC
    (["--since", "2026-11-23", "--until", "2026-11-24"], 11),  # a date is its midnight
    (["--until", "2026-11-23"], 0),
    (["--host", "b.example"], 3),
    (["--host", "B.Example"], 3),                        # hosts compare in any case
    (["--host", "b.example.org"], 0),                    # exact, not a prefix
    (["--path", "/a"], 5),
    (["--path", "/img/"], 1),
    (["--status", "5xx"], 1),
    (["--status", "200"], 8),
    (["--status", "201,403"], 2),
    (["--status", "hit"], 2),                            # a cache status, any case
    (["--status", "MISS,expired"], 3),
    (["--status", "2xx", "--status", "miss"], 2),        # both kinds must match
    (["--status", "5xx", "--status", "miss"], 0),
    (["--host", "a.example", "--path", "/a", "--status", "stale"], 1),
])
def test_filters(log: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                 requests: int) -> None:
    report = run_json(capsys, str(log), *args)
    assert report["requests"] == requests
    assert report["lines"]["filtered_out"] == 11 - requests
    assert report["lines"]["malformed"] == 5  # counted whatever the filters


def test_relative_times(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    old, recent = rec(0, "HIT", "a.example", "/old", 200, 1, 1.0), \
        rec(0, "MISS", "a.example", "/new", 200, 1, 1.0)
    old.time, recent.time = now - 2 * 3600, now - 600
    (tmp_path / "r.log").write_bytes(log_bytes([old, recent]))
    assert run_json(capsys, str(tmp_path / "r.log"), "--since", "1h")["requests"] == 1
    assert run_json(capsys, str(tmp_path / "r.log"), "--since", "3h", "--until", "15m")[
        "top"]["by_misses"] == []
    assert parse_when("15m", now=10_000) == 10_000 - 900
    assert parse_when("1.5h", now=10_000) == 10_000 - 5400
    assert parse_when("1d", now=100_000) == 100_000 - 86400


def test_filter_values_parsed() -> None:
    assert parse_statuses(["5XX,200", "Hit"]) == (("5xx", "200"), frozenset({"HIT"}))
    for bad in (["600"], ["2x"], ["HITS"], [""]):
        with pytest.raises(ValueError, match="not an HTTP status"):
            parse_statuses(bad)
    with pytest.raises(ValueError, match="not a time"):
        parse_when("yesterday", now=0)


@pytest.mark.parametrize("args", [
    ["--status", "cached"], ["--since", "soon"], ["--top", "0"],
    ["--since", "9999-12-31T23:59:59-23:59"],  # parses, but past year 9999 in UTC
    ["--until", "99999999999999w"],            # before year 1
])
def test_bad_option_is_one_line_exit_2(log: Path, capsys: pytest.CaptureFixture[str],
                                       args: list[str]) -> None:
    assert main(["logs", str(log), *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1 and captured.err.startswith("cacheproxy: logs: ")


# --- reading ------------------------------------------------------------------------------------


def test_line_splitter_bounds_and_chunk_boundaries() -> None:
    data = b"one\ntwo\n" + b"x" * 50 + b"\nthree\n" + b"y" * 11 + b"\nlast"
    expected = [b"one", b"two", None, b"three", None, b"last"]
    for step in (1, 3, 7, 100):  # any cut of the stream gives the same lines
        splitter = LineSplitter(max_line=10)
        got: list[bytes | None] = []
        for i in range(0, len(data), step):
            got += splitter.feed(data[i:i + step])
        assert got + splitter.flush() == expected
        assert splitter.pending == b""


def test_ten_megabyte_line_is_malformed(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "long.log"
    with path.open("wb") as f:
        f.write(to_json(RECORDS[0]).encode() + b"\n" + b"z" * 10_000_000 + b"\n")
        f.write(to_text(RECORDS[1]).encode())  # and no newline at the end
    report = run_json(capsys, str(path))
    assert report["lines"] == {"read": 3, "malformed": 1, "filtered_out": 0, "admin": 0}
    assert report["requests"] == 2


GOOD = json.loads(to_json(RECORDS[0]))


@pytest.mark.parametrize("bad", [
    json.dumps({**GOOD, "bytes": None}),
    json.dumps({**GOOD, "status": True}),                     # a JSON boolean is no number
    json.dumps({**GOOD, "bytes": 1.5}),
    json.dumps({**GOOD, "bytes": 10**400}),                   # too big for human_bytes
    json.dumps({**GOOD, "total_ms": "fast"}),
    json.dumps({**GOOD, "time": "9999-12-31T23:59:59.9999Z"}),  # year 10000 in milliseconds
    '{"a": ' + "[" * 50_000,                                  # deeper than json goes
    re.sub(r"\[[^]]+\]", "[31/Dec/9999:23:59:59 -2359]", to_text(RECORDS[1])),
], ids=["bytes-null", "status-bool", "bytes-fraction", "bytes-huge", "total_ms-word",
        "time-rounds-out", "deep-json", "text-time-out"])
def test_malformed_values_are_counted_not_a_crash(bad: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.log"
    path.write_text(to_json(RECORDS[0]) + "\n" + bad + "\n")
    report = run_json(capsys, str(path))
    assert report["lines"]["malformed"] == 1 and report["requests"] == 1
    assert main(["logs", str(path)]) == 0  # and the human view


def test_first_and_last_writable_times_are_read(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "edges.log"
    path.write_text(json.dumps({**GOOD, "time": "0001-01-01T00:00:00Z"}) + "\n"
                    + json.dumps({**GOOD, "time": "9999-12-31T23:59:59.999Z"}) + "\n")
    report = run_json(capsys, str(path))
    assert report["lines"]["malformed"] == 0
    assert report["period"]["first"].endswith("1-01-01T00:00:00.000Z")  # glibc: no 000 pad
    assert report["period"]["last"] == "9999-12-31T23:59:59.999Z"


def test_stdin(log: Path) -> None:
    for args in ([], ["-"]):
        result = cli(*args, "--json", stdin=log.read_bytes())
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["requests"] == 11 and report["lines"]["malformed"] == 5


def test_missing_file_is_one_line_exit_2(tmp_path: Path) -> None:
    result = cli(str(tmp_path / "nope.log"))
    assert result.returncode == 2
    assert result.stdout == b""
    assert result.stderr.decode() == \
        f"cacheproxy: logs: cannot open {tmp_path / 'nope.log'}: No such file or directory\n"
    assert cli(str(tmp_path)).returncode == 2  # a directory


# --- the sketches -------------------------------------------------------------------------------


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def test_percentiles_within_one_percent() -> None:
    rng = random.Random(3)
    values = [rng.lognormvariate(math.log(20), 1.5) for _ in range(50_000)]
    hist = LatencyHistogram()
    for v in values:
        hist.add(v)
    for q in (1, 10, 50, 90, 95, 99, 99.9, 100):
        exact = nearest_rank(values, q)
        assert hist.percentile(q) == pytest.approx(exact, rel=LatencyHistogram.RELATIVE_ERROR)
    assert len(hist.counts) < 1200  # fixed, whatever the number of samples


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=1e-3, max_value=1e7), min_size=1, max_size=300),
       st.floats(min_value=0, max_value=100))
def test_percentile_error_bound_holds_for_any_sample(values: list[float], q: float) -> None:
    hist = LatencyHistogram()
    for v in values:
        hist.add(v)
    exact = nearest_rank(values, q)
    assert abs(hist.percentile(q) - exact) <= exact * LatencyHistogram.RELATIVE_ERROR * 1.000001


def test_heavy_hitters_find_the_true_top_on_a_skewed_stream() -> None:
    rng = random.Random(5)
    # 200 000 events over up to 100 000 keys, P(key) ~ 1/rank; only 200 counters kept.
    stream = [f"example.com/item/{int(100_000 ** rng.random())}" for _ in range(200_000)]
    sketch = FrequentItems(k=200)
    for key in stream:
        sketch.add(key)
    truth = Counter(stream)
    assert 0 < sketch.undercount <= len(stream) / 200  # purges happened; the stated bound
    assert len(sketch.counts) <= 400
    top = sketch.top(10)
    assert [key for key, _ in top] == [key for key, _ in truth.most_common(10)]
    for key, count in top:
        assert truth[key] - sketch.undercount <= count <= truth[key]


def test_heavy_hitters_by_bytes_through_the_summary() -> None:
    summary = Summary(top_counters=50)
    rng = random.Random(8)
    truth: Counter[str] = Counter()
    for i in range(20_000):
        big = i % 10 == 0  # a few large objects among many small distinct ones
        path = f"/video/{i % 3}.mp4" if big else f"/page/{rng.randrange(1_000_000)}"
        size = 1_000_000 if big else rng.randrange(100, 5000)
        summary.add(rec(0, "MISS", "v.example", path, 200, size, 10.0))
        truth["v.example" + path] += size
    report = summary.report(top=3)
    assert [x["url"] for x in report["top"]["by_origin_bytes"]] == \
        [url for url, _ in truth.most_common(3)]
    assert report["top"]["max_undercount"]["origin_bytes"] <= sum(truth.values()) / 50


# --- --follow -----------------------------------------------------------------------------------


class Lines:
    """A child's stdout read line by line on a thread, waited for with a deadline."""

    def __init__(self, stream: Any) -> None:
        self.queue: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: Any) -> None:
        for line in iter(stream.readline, b""):
            self.queue.put(line)

    def wait_for(self, accept: Any, timeout: float = 8.0) -> Any:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.queue.get(timeout=left)
            except queue.Empty:
                break
            if (found := accept(line)) is not None:
                return found
        raise AssertionError("the expected report did not come")


def append(path: Path, records: list[LogRecord], mode: str = "ab") -> None:
    with path.open(mode) as f:
        f.write(log_bytes(records))


def _ctrl_c_stops() -> None:
    """In the child: SIGINT as a terminal gives it (the default action). A suite started
    in the background (`.ci/run &` from a shell without job control) has it ignored, and
    children inherit that: Ctrl-C would then not reach `logs --follow` either."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_follow_through_rotation_and_truncation_then_sigint(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    append(path, [rec(0, "HIT", "f.example", "/before", 200, 10, 1.0)] * 2, "wb")
    child = subprocess.Popen(
        [sys.executable, "-m", "cacheproxy", "logs", str(path), "--follow", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, preexec_fn=_ctrl_c_stops)
    try:
        lines = Lines(child.stdout)

        def report_with(requests: int) -> Any:
            return lambda line: r if (r := json.loads(line))["requests"] == requests else None

        lines.wait_for(report_with(2))
        append(path, [rec(1, "MISS", "f.example", "/appended", 200, 10, 1.0)] * 3)
        lines.wait_for(report_with(5))
        # logrotate's way: rename, the writer finishes its line in the old file, a new file.
        path.rename(tmp_path / "access.log.1")
        append(tmp_path / "access.log.1", [rec(2, "MISS", "f.example", "/late", 200, 10, 1.0)])
        append(path, [rec(3, "MISS", "f.example", "/rotated", 200, 10, 1.0)] * 2, "wb")
        report = lines.wait_for(report_with(8))
        misses = {x["url"]: x["misses"] for x in report["top"]["by_misses"]}
        assert misses == {"f.example/appended": 3, "f.example/rotated": 2, "f.example/late": 1}
        # copytruncate's way: the same file emptied, then written again.
        append(path, [rec(4, "EXPIRED", "f.example", "/truncated", 200, 10, 1.0)], "wb")
        report = lines.wait_for(report_with(9))
        assert report["cache"]["EXPIRED"] == 1
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=10) == 0
        assert b"Traceback" not in child.stderr.read()  # type: ignore[union-attr]
    finally:
        child.kill()
        child.wait()


def test_tail_reads_the_old_file_until_the_writer_moves_to_the_newest(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    append(path, [rec(0, "HIT", "t.example", "/1", 200, 1, 1.0)], "wb")
    tail = _Tail(str(path), open(path, "rb", buffering=0))  # noqa: SIM115
    seen: list[str] = []

    def poll(times: int = 3) -> None:
        for _ in range(times):
            lines, ended = tail.read(0)
            assert not ended
            seen.extend(json.loads(x)["path"] for x in lines if x)
    try:
        poll()
        old = path.rename(tmp_path / "access.log.1")
        path.touch()  # logrotate's create; the proxy has not reopened yet
        poll()
        append(old, [rec(1, "HIT", "t.example", "/2", 200, 1, 1.0)])
        poll()
        with old.open("ab") as f:  # a last line with no newline yet
            f.write(to_json(rec(2, "HIT", "t.example", "/3", 200, 1, 1.0)).encode())
        poll()
        path.unlink()
        path.touch()  # replaced again before anything was written to it
        poll()
        append(path, [rec(3, "HIT", "t.example", "/4", 200, 1, 1.0)])  # after the reopen
        poll()
        append(tmp_path / "access.log.1", [rec(4, "HIT", "t.example", "/late", 200, 1, 1.0)])
        poll()  # the old file is closed now: nothing is read from it any more
    finally:
        tail.close()
    assert seen == ["/1", "/2", "/3", "/4"]
    assert tail.new is None and tail.f.closed


def test_follow_on_a_pipe_prints_a_report_per_interval(log: Path) -> None:
    child = subprocess.Popen([sys.executable, "-m", "cacheproxy", "logs", "--follow"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, cwd=ROOT)
    try:
        lines = Lines(child.stdout)
        child.stdin.write(log.read_bytes())  # type: ignore[union-attr]
        child.stdin.flush()  # type: ignore[union-attr]
        lines.wait_for(lambda line: line if line.startswith(b"requests      11 ") else None)
        child.stdin.write(log_bytes(RECORDS[:1]))  # type: ignore[union-attr]
        child.stdin.close()  # type: ignore[union-attr]
        # The writer closed the pipe: one last report, then a clean exit on its own.
        lines.wait_for(lambda line: line if line.startswith(b"requests      12 ") else None)
        assert child.wait(timeout=10) == 0
    finally:
        child.kill()
        child.wait()


def test_follow_on_a_terminal_redraws_in_place(log: Path) -> None:
    primary, secondary = pty.openpty()
    child = subprocess.Popen([sys.executable, "-m", "cacheproxy", "logs", str(log), "--follow"],
                             stdout=secondary, stderr=subprocess.PIPE, cwd=ROOT,
                             preexec_fn=_ctrl_c_stops)
    os.close(secondary)
    try:
        seen, deadline = b"", time.monotonic() + 8
        while b"requests      11" not in seen and time.monotonic() < deadline:
            seen += os.read(primary, 65536)
        assert seen.startswith(b"\x1b[2J") and b"\x1b[H" in seen  # clear, then home
        assert b"following" in seen and b"requests      11 " in seen
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=10) == 0
    finally:
        child.kill()
        child.wait()
        os.close(primary)


# --- progress while a big log is read (issue 13, item 6) -------------------------------------


def big_log(tmp_path: Path) -> tuple[Path, int]:
    """About 6 MiB: several chunks, so the progress line has something to show."""
    path = tmp_path / "big.log"
    records = RECORDS * 2000
    path.write_bytes(log_bytes(records))
    return path, len(records)


def test_progress_on_a_terminal_is_one_line_rewritten_then_erased(tmp_path: Path) -> None:
    path, count = big_log(tmp_path)
    primary, secondary = pty.openpty()
    child = subprocess.Popen([sys.executable, "-m", "cacheproxy", "logs", str(path)],
                             stdout=subprocess.PIPE, stderr=secondary, cwd=ROOT)
    os.close(secondary)
    seen: list[bytes] = []

    def drain() -> None:  # a terminal's buffer is small: read it while the child writes
        with contextlib.suppress(OSError):  # EIO once the child has closed its end
            while chunk := os.read(primary, 65536):
                seen.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        out, _ = child.communicate(timeout=30)
    finally:
        child.kill()
        reader.join(10)
        os.close(primary)
    assert child.returncode == 0
    err = b"".join(seen).decode()
    updates = [u for u in err.split("\r") if u]
    assert updates and updates[-1] == "\x1b[K"  # erased before the report
    shown = updates[:-1]
    assert shown and all(u.startswith(f"reading {path}: ") and u.endswith("\x1b[K")
                         for u in shown), shown
    assert re.search(r" of \d+\.\d MiB \(\d+%\), [\d,]+ lines, [\d.]+ [KMG]?i?B/s", shown[0])
    assert "\n" not in err  # one line, rewritten in place
    report = out.decode()
    assert f"requests      {count:,} " in report and "\x1b" not in report


def test_no_progress_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    path, count = big_log(tmp_path)
    result = subprocess.run([sys.executable, "-m", "cacheproxy", "logs", str(path), "--json"],
                            capture_output=True, timeout=30, cwd=ROOT)
    assert result.returncode == 0 and result.stderr == b""
    assert json.loads(result.stdout)["requests"] == count
