"""Review perfobs2: a miss's record, log line and counts (cacheproxy/observe/), made
cheaper without changing a byte of what the log, /metrics or /stats show. These tests pin
the shortcuts that review took: json_line's inlined time and durations must write what
iso_time and ms_json write, for every input, including lines within one second of the
last (the inlined case) and durations whose third decimal is 0 (the one left to ms_json)."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from cacheproxy.observe.record import iso_time, json_line, ms_json, record_of, to_json

_MS = (st.floats(0, 1e7) | st.floats(allow_nan=False)
       | st.integers(0, 10**9).map(lambda n: n / 1000)  # third decimal often 0
       | st.integers(0, 10**9).map(lambda n: n / 2000))  # halves of a microsecond


@settings(max_examples=1000, deadline=None)
@given(second=st.integers(0, 4 * 10**9), offsets=st.lists(st.floats(0, 0.9999), min_size=1,
                                                          max_size=5),
       total=_MS, up=st.none() | _MS)
@example(second=1764926022, offsets=[0.0, 0.9995, 0.9994], total=1.07, up=0.5)
@example(second=0, offsets=[0.0005], total=1e12, up=float("inf"))
def test_a_miss_line_within_one_second_writes_iso_time_and_ms_json(second, offsets, total,
                                                                    up):
    """json_line writes the time within the second it wrote last, and a duration whose
    third decimal is not 0, without calling iso_time and ms_json (about 1,900 of a
    pass-through's some 60,000 instructions of observation). What was at risk: a line's
    time or total_ms/upstream_ms written otherwise than to_json writes the record's (the
    log's format is a contract: README "The request log"; `cacheproxy logs` reads it).
    Severity: every miss's line, were it to differ."""
    for offset in offsets:
        when = second + offset
        f = [when, "127.0.0.1", "GET", "h:1", "/p", 200, "MISS", 1024, total, None, None,
             200, up, False, "default", None, "HTTP/1.1", None, None,
             "cacheproxy; fwd=uri-miss; fwd-status=200; detail=no-store", None]
        line = json_line(f)
        assert line == to_json(record_of(f))
        assert line.startswith(f'{{"time":"{iso_time(when)}",')
        assert f'"total_ms":{ms_json(total)},' in line
