"""Review perfpass2: the client side's forward and relay of a pass-through (client_conn's
_forward, _upstream_head and begin_relayed, quick_forward). A client connection now keeps
the last client head begin_relayed made, and what it was made from, and writes it again
when an origin answers with the same fields, marks and connection fate; these tests pin
that every input of the head still shows in it, on one keep-alive connection to the real
proxy, in front of an origin on 127.0.0.1 that sends bytes of the test's choosing."""

from __future__ import annotations

import asyncio
import re

from support import raw_origin


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: str,
                    *fields: str) -> tuple[str, dict[str, str], bytes]:
    """One GET on an open connection: the status line, the fields and the body."""
    lines = [f"GET {target} HTTP/1.1", "Host: example.test", *fields]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status, *field_lines = head[:-4].decode("latin-1").split("\r\n")
    pairs = dict(line.partition(": ")[::2] for line in field_lines)
    body = await asyncio.wait_for(reader.readexactly(int(pairs["Content-Length"])), 10)
    return status, pairs, body


def _answer(request: bytes) -> bytes:
    """The same fields each time (a fixed Date), but X-Seq: the n of the target /p?n; an
    HTTP/1.0 status line when the request asks for one (X-Answer-Version: 1.0)."""
    n = re.search(rb"GET /p\?(\d+) ", request)
    seq = n.group(1) if n else b"0"
    older = b"X-Answer-Version: 1.0" in request  # (kept alive: RFC 9112 Appendix C.2.2)
    version = b"1.0 200 OK\r\nConnection: keep-alive" if older else b"1.1 200 OK"
    return (b"HTTP/" + version + b"\r\nDate: Sat, 05 Dec 2026 08:00:00 GMT\r\n"
            b"Content-Type: text/plain\r\nCache-Control: no-store\r\nX-Seq: " + seq +
            b"\r\nContent-Length: 2\r\n\r\nok")


async def test_a_repeated_pass_through_head_still_shows_each_answer_s_own_fields(
        proxy) -> None:
    """A keep-alive connection's pass-through heads are written again from the last one
    when nothing they are made of changed: a value the origin changed (X-Seq), a Via
    naming another version (an HTTP/1.0 answer with the same fields, RFC 9110 §7.6.3) and
    the connection's fate (RFC 9112 §9.6: Connection: close on the last answer) must each still
    reach the client, never the head kept from the answer before. Severity: would be high
    (another answer's fields, or a connection the client thinks stays open)."""
    async with raw_origin(_answer) as port:
        c = await proxy(f"http://127.0.0.1:{port}")
        reader, writer = await asyncio.open_connection(c.server.host, c.server.port)
        try:
            seen = [await _exchange(reader, writer, "/p?1") for _ in range(3)]
            changed = await _exchange(reader, writer, "/p?2")
            older = await _exchange(reader, writer, "/p?2", "X-Answer-Version: 1.0")
            again = await _exchange(reader, writer, "/p?2")
            last = await _exchange(reader, writer, "/p?2", "Connection: close")
        finally:
            writer.close()
    for status, fields, body in seen:  # (the first by the full path, the rest by callback)
        assert (status, body) == ("HTTP/1.1 200 OK", b"ok")
        assert fields["X-Seq"] == "1" and "Connection" not in fields
        assert fields["Cache-Status"] == seen[0][1]["Cache-Status"]
    assert seen[1] == seen[2]
    assert changed[1]["X-Seq"] == "2"
    assert changed[1]["Cache-Status"] == seen[0][1]["Cache-Status"]
    assert changed[1]["Via"] == "1.1 cacheproxy"
    assert older[1]["Via"] == "1.0 cacheproxy"
    assert last[1]["Via"] == "1.1 cacheproxy"
    assert last[1]["Connection"] == "close"
    assert again[1] == changed[1]
    assert [f["X-Seq"] for _, f, _ in (older, last)] == ["2", "2"]

