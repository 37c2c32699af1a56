"""Review (bounds): every structure that lives longer than a request and grows with what
clients or origins send (hit-for-pass marks, collapse and invalidation tables, clock-skew
warnings, per-host stats and /metrics labels, the pool's per-origin maps, forward-mode
plans, the memoised heads of hits, the parsers' memo tables, the Redis memory layer) and
whether `cache.max_bytes` bounds the memory of what the store holds. Measured against a
real proxy in front of origins on 127.0.0.1, by the store's own figures beside the
objects it holds, and by what stays allocated once the store is emptied."""

from __future__ import annotations

import gc
import re
import tracemalloc
from collections.abc import Callable
from typing import Any

from support import raw_get, raw_origin

_PATH = re.compile(rb"^GET /u/(\d+)")


def _response(fields: Callable[[int], list[str]]) -> Callable[[bytes], bytes]:
    """An origin's answer to GET /u/<n>: an empty storable 200 with fields(n)."""
    def answer(head: bytes) -> bytes:
        match = _PATH.match(head)
        n = int(match.group(1)) if match else 0
        lines = ["HTTP/1.1 200 OK", "Content-Length: 0", *fields(n)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()
    return answer


def _private_list(n: int) -> list[str]:
    """A qualified private="..." naming 1,000 fields of its own (§5.2.2.7)."""
    names = ",".join(f"f{n}x{i}" for i in range(1000))
    return [f'Cache-Control: max-age=3600, private="{names}"']


async def _fill(client: Any, count: int, first: int = 0) -> None:
    for n in range(first, first + count):  # (raw: aiohttp's client takes 128 fields)
        status, _, _ = await raw_get(client, f"/u/{n}")
        assert status == 200


def _pinning(n: int) -> list[str]:
    """Values no real response repeats, each long: a private="..." list of 1,000 names,
    a Date and an Expires of 20 KB, and 300 field names of its own."""
    junk = f"{n}-" + "j" * 20_000
    return [*_private_list(n), f"Date: {junk}", f"Expires: {junk}",
            *(f"X-{n}-{i}: {i}" for i in range(300))]


async def test_what_stored_responses_parsed_goes_with_them(proxy: Any) -> None:
    """Memo tables kept what an origin sent after its responses had left the store,
    beyond every bound: parse_response_directives memoised 2,048 Cache-Control values
    (with what was parsed from them: a private="..." list of up to 20,000 names),
    parse_http_date 4,096 Date and Expires values, the shared field-names tuples 4,096
    shapes, each up to the 128 KiB an answer's fields may hold. Some GBs for a few
    thousand responses of a site (in forward mode, any site a client visits) that no
    purge, eviction or max_bytes gave back. Here 60 responses of ~130 KB of such fields
    left ~6 MB behind once the store was emptied; now only values short enough to
    repeat are memoised (256 characters, 64 for a date, 64 field names of 1,024
    characters). Severity: high (memory grows with responses an origin chooses, past
    cache.max_bytes, for good)."""
    async with raw_origin(_response(_pinning)) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        store = client.app_proxy.store
        await _fill(client, 5, first=10_000)  # (what the first requests make once)
        await store.clear()
        gc.collect()
        tracemalloc.start()
        try:
            before, _ = tracemalloc.get_traced_memory()
            await _fill(client, 60)
            assert store.stats().entries == 60
            await store.clear()
            gc.collect()
            after, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert after - before < 1_500_000
