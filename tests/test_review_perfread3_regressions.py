"""Review perfread3: a second reader of the memos and shortcuts of the latest performance
merges (e63149b begin_relayed's kept client head, af5a32c decided, 8fe31d0 replayed,
1d57f34 the timed Cache-Status members, a75ac70 validating_fields' last entry, d65770f
_replay_head's kept fresh lines, 89e76b4 coding_refused's last uncoded shape and
RequestFacts.validating, 25ad3b8 routed_outcome, f995198 the miss line's kept parts).

Each memo was read for an input it does not key on (Origin and CORS, HEAD against GET, a
Vary'd entry, the Redis store's new objects, a reload, a route's policies, a redacted
Referer, a long User-Agent, a non-finite ttl, --workers), for id() keys on objects not
held, and for growth without bound; none was found (the report says how each was read).
The tests here pin, through the real proxy, the inputs no earlier review test held."""

from __future__ import annotations

import asyncio
from typing import Any

from support import raw_origin
from test_review_reload_regressions import _reloaded

# An origin's pass-through answer, the same bytes every time (a fixed Date).
_SAME = (b"HTTP/1.1 200 OK\r\nDate: Sat, 05 Dec 2026 08:00:00 GMT\r\n"
         b"Content-Type: text/plain\r\nCache-Control: no-store\r\nContent-Length: 2\r\n\r\nok")


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
               method: str = "GET") -> dict[str, str]:
    """One request on an open connection: the answer's fields (its body read, if any)."""
    writer.write(f"{method} /p HTTP/1.1\r\nHost: example.test\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status, *lines = head[:-4].decode("latin-1").split("\r\n")
    assert status == "HTTP/1.1 200 OK", head
    fields = dict(line.partition(": ")[::2] for line in lines)
    if method != "HEAD":
        assert await asyncio.wait_for(reader.readexactly(int(fields["Content-Length"])),
                                      10) == b"ok"
    return fields


async def test_a_reload_s_referrer_policy_reaches_a_kept_alive_pass_through(
        proxy: Any) -> None:
    """begin_relayed writes a keep-alive connection's pass-through head again when the
    origin's fields, the marks, status, reason, route plan, added Date and Connection are
    equal. The plan is in that key because the Referrer-Policy the cache appends comes from
    it (appended_fields): a key on anything narrower (the route's name, the upstream)
    would have a client on a connection opened before a SIGHUP keep the old policy on
    every answer of that connection, though the README says the reload applies to the
    next request. This pins that the new policy (W3C Referrer Policy §4.1), and a HEAD's
    answer between GETs (RFC 9110 §9.3.2: the GET's fields; its own Cache-Status), reach
    the client on one connection. A guard: it passes on the code reviewed, and fails with
    plan.upstream in the key for plan (tried). Severity: would be medium (a config change
    not applied to long-lived connections)."""
    async with raw_origin(lambda _: _SAME) as port:
        c = await proxy(f"http://127.0.0.1:{port}", referer={"policy": "no-referrer"})
        reader, writer = await asyncio.open_connection(c.server.host, c.server.port)
        try:
            before = [await _get(reader, writer) for _ in range(2)]  # (full path, kept)
            head = await _get(reader, writer, "HEAD")
            # (two: the last GET before the reload is one whose head is kept)
            before += [await _get(reader, writer) for _ in range(2)]
            _reloaded(c, referer={"policy": "same-origin"})
            after = [await _get(reader, writer) for _ in range(4)]
        finally:
            writer.close()
    assert [f["Referrer-Policy"] for f in before] == ["no-referrer"] * 4
    # (the GETs after the HEAD get the GET's marks, not the HEAD's kept head)
    assert before[0] == before[1] == before[2] == before[3]
    assert head["Cache-Status"] == "cacheproxy; fwd=bypass; fwd-status=200"  # RFC 9211 §2.2
    assert {k: v for k, v in head.items() if k != "Cache-Status"} == \
        {k: v for k, v in before[1].items() if k != "Cache-Status"}
    assert [f["Referrer-Policy"] for f in after] == ["same-origin"] * 4
    assert after[0] == after[1] == after[2] == after[3]
    assert {k: v for k, v in after[1].items() if k != "Referrer-Policy"} == \
        {k: v for k, v in before[1].items() if k != "Referrer-Policy"}
