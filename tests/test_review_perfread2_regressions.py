"""A second reading of this morning's performance merges (perfio, perfup, perflog2,
perfflow, perfreval3): for each memo or shortcut, every input that can change its answer
(route settings at a reload, the Redis store, routes sharing a URL, Vary, a 304's other
fields, a request's directives and credentials, pipelined and split reads, a header
section crossing the 128 KiB bound, --workers), object identities used as keys, and
growth without bound."""

from __future__ import annotations

import gc
import tracemalloc

from cacheproxy.observe.stats import Stats


def _miss(host: str) -> list[object]:
    """A miss's record fields (observer.record's order), as Stats.add_fields takes them."""
    return [1e9, "::1", "GET", host, "/p", 200, "MISS", 10, 1.5, None, None, 200, 0.5,
            False, "default", None, "HTTP/1.1", None, "curl/8", "c; fwd=miss", None]


def test_miss_slots_do_not_hold_long_hosts():
    """perflog2's miss slots (Stats.add_fields) are keyed by route, cache status, Host and
    whether the origin answered, at most 4,096 of them, "about 1 MB at most". But the Host
    is the client's, up to the parser's 8,190 characters, and each slot kept it whole (the
    host table keeps 255 characters of one, HOST_CHARS): a client sending requests with
    4,096 different long Host values made the proxy hold some 32 MB more per worker, until
    the next 4,096 came. The hit slots bound their values (1,024 characters); the miss
    slots did not. Now a Host longer than HOST_CHARS gets no slot (its requests are counted
    at once, as before the slots). Severity: low (memory 30 times the documented bound,
    bounded; any client)."""
    stats = Stats(0.0)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(4096):
            stats.add_fields(_miss(f"{i:05d}" + "h" * 8000))
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # (the 50 recent records keep theirs: 400 KB; the host table 255 characters of each)
    assert held < 4 * 1024 * 1024, f"{held / 1e6:.1f} MB held for 4,096 misses"
    assert stats.requests == 4096
