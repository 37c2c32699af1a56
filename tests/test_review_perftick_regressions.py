"""Review perftick: the request log's flush timer (observe/sink.py).

The sink handed every batch of log lines to its writer thread from a timer FLUSH_SECONDS
after the batch's first line; one request at a time, every line made and ran a timer of
its own. After a quiet spell a batch now goes at once; closer lines still wait for the
timer, so batches go at most every FLUSH_SECONDS, as before. (The review's other change,
one end-of-iteration callback for the pool's sends, the answers and the log's batch, was
not merged: its gain was within the rounds' spread.)
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from support import until

from cacheproxy.observe.sink import LogSink


async def test_log_batches_go_at_most_every_flush_seconds_and_at_once_after_a_quiet_spell(
        tmp_path: Path) -> None:
    """The sink handed every batch to its writer thread from a timer FLUSH_SECONDS after
    the batch's first line: one request at a time, each line made and ran a timer of its
    own (some 5,500 instructions a line, 5 % of a 1 KiB hit). A batch that comes after
    FLUSH_SECONDS with no line nor hand-off now goes at once; one that comes sooner
    waits FLUSH_SECONDS for a timer, as before, so batches still go at most every
    FLUSH_SECONDS (what keeps the writer's share of the CPU, and the p99 of hits, down
    under load: sink.py). Severity: low (a guard for this review's change; the bound
    was pinned by no test)."""
    sink = LogSink(str(tmp_path / "requests.log"))
    try:
        sink.write_many(["a"])  # after a quiet spell: handed over at once
        assert sink._pending == [] and not sink._scheduled
        # A line as if just now (and some: the test may be descheduled meanwhile).
        sink._touched = time.monotonic() + 0.05
        sink.write_many(["b"])  # too soon: waits for the interval's end
        sink.write_many(["c"])
        assert sink._pending == ["b", "c"] and sink._scheduled
        assert await until(lambda: not sink._pending)  # (the timer ran: one batch)
        assert await asyncio.to_thread(sink.wait_written)
        assert (tmp_path / "requests.log").read_text() == "a\nb\nc\n"
    finally:
        sink.close()
