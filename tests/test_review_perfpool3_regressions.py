"""Review perfpool3: the upstream pool's exchange (proxy/pool.py) made cheaper per answer.

The review looked at what a pooled connection does for each answer: its reset, the llhttp
callbacks (on_header, on_headers_complete, on_body, on_message_complete), the read's
bookkeeping, take_body and release. The answer's index by lower-cased name is now made as
its fields arrive (on_header), from names decoded and lower-cased once per spelling, and
llhttp's version is read off the first read's status line when it has one. These tests
pin what that could break and no earlier test pins: an interim answer's fields stay out
of the final answer's index, and names in any case and repeated land in one entry.
"""

from __future__ import annotations

from typing import Any

from support import cache_status, raw_origin

_EARLY = (b"HTTP/1.1 103 Early Hints\r\nCache-Control: no-store\r\n"
          b"Link: </style.css>; rel=preload\r\n\r\n")
_FINAL = b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 2\r\n\r\nok"


async def test_an_interim_answers_fields_stay_out_of_the_final_answers_index(
        proxy: Any) -> None:
    """The index of an answer's fields by name is made as they arrive; a 103's fields
    (`Cache-Control: no-store` here) must not be counted in the final 200's index, which
    the store decision reads. Had they been, a user saw a cacheable 200 never stored (or
    a 200 stored under the 1xx's rules). RFC 9110 §15.2: a 1xx is interim, its fields
    are not the final answer's (nginx and Varnish drop them from the final head). The
    103 and the 200 come in one read, on a reused connection (the quick forward) and on
    a new one. Severity: high, were it broken (what is stored would change)."""
    async with raw_origin(lambda head: _EARLY + _FINAL) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        first = await client.get("/a")  # (a new connection: the full path)
        assert first.status == 200 and await first.read() == b"ok"
        assert "Link" not in first.headers
        second = await client.get("/b")  # (the idle connection: the quick forward)
        assert second.status == 200 and await second.read() == b"ok"
        assert "Link" not in second.headers
        assert "; stored" in cache_status(second)
        third = await client.get("/b")
        assert third.headers["X-Cache"] == "HIT" and await third.read() == b"ok"


async def test_field_names_in_any_case_and_repeated_share_one_index_entry(
        proxy: Any) -> None:
    """Names are decoded and lower-cased once per spelling and remembered: two
    spellings of Cache-Control in one answer must land in one index entry, each value
    in order, so that the no-store of the second governs. Had the memo keyed the index
    by the spelling, a user saw a `no-store` answer stored and served to others. RFC
    9110 §5.1 (field names are case-insensitive), §5.3 (repeated lines are one list);
    RFC 9111 §5.2.2.5. Severity: high, were it broken (a no-store answer stored)."""
    answer = (b"HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\nCACHE-CONTROL: no-store\r\n"
              b"Content-Length: 2\r\n\r\nok")
    async with raw_origin(lambda head: answer) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        for _ in range(3):  # (a new connection, then the reused one twice)
            resp = await client.get("/x")
            assert resp.status == 200 and await resp.read() == b"ok"
            assert resp.headers["X-Cache"] == "MISS"
            assert "stored" not in cache_status(resp)


async def test_a_quick_exchange_that_fails_leaves_the_next_ones_answered(proxy: Any) -> None:
    """A request sent by callback on an idle connection (send_quick) now keeps its head's
    state in futures the pool shares (pending, answered), not in one made per exchange;
    a failure gets a future of its own. Had a timeout (504) or an origin's close (502)
    been set on the shared pending one, a user saw every later request on a reused
    connection fail at once with the same error. RFC 9110 §15.6.5 (504) and §15.6.3
    (502) for the failing one alone; nginx's upstream keepalive serves the next request
    as usual. Severity: high, were it broken (the proxy stops forwarding)."""
    ok = b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 2\r\n\r\nok"
    seen: dict[bytes, int] = {}

    def answer(head: bytes) -> bytes | list[bytes | None]:
        path = head.split(b" ", 2)[1]
        seen[path] = seen.get(path, 0) + 1
        if seen[path] == 1:  # (a no-store answer first: the next request for it is sent
            return ok  # by callback, hit-for-pass, not collapsed behind others)
        if path == b"/slow":
            return [b"", *[b""] * 8, ok]  # (0.45 s: past the read timeout)
        if path == b"/close":
            return [None]
        return ok

    async with raw_origin(answer) as port:
        client = await proxy(f"http://127.0.0.1:{port}", proxy={"read_timeout": 0.2})
        for path, status in (("/ok", 200), ("/slow", 200), ("/ok", 200), ("/slow", 504),
                             ("/ok", 200), ("/ok", 200), ("/close", 200), ("/close", 502),
                             ("/ok", 200), ("/ok", 200)):
            resp = await client.get(path)
            assert resp.status == status, path
            if status == 200:
                assert await resp.read() == b"ok"
