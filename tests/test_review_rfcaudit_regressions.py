"""Findings of a requirement-by-requirement review of RFC 9111 and the caching parts of RFC
9110 (review-rfcaudit): a real aiohttp or raw origin on 127.0.0.1, the proxy in front.
Each test failed on the code it was written against (c3d2749) and says what is expected,
why (RFC section) and how severe it is."""

from __future__ import annotations

import asyncio

from support import raw_origin


async def _raw_get(client: object, *fields: bytes) -> bytes:
    """A GET of /r for Host x with exactly these field lines; the whole answer."""
    reader, writer = await asyncio.open_connection(client.server.host,  # type: ignore[attr-defined]
                                                   client.server.port)  # type: ignore[attr-defined]
    writer.write(b"GET /r HTTP/1.1\r\nHost: x\r\n" + b"".join(f + b"\r\n" for f in fields)
                 + b"Connection: close\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


# -- 1. Pragma: no-cache on a second field line is not seen ---------------------------------


async def test_s5_4_pragma_no_cache_on_a_second_field_line_asks_for_validation(proxy) -> None:
    """A request without Cache-Control that says `Pragma: x-foo` and `Pragma: no-cache` on
    two field lines was answered from storage, unvalidated: the proxy read only the first
    Pragma line. RFC 9110 §5.3 makes the two lines one list (`x-foo, no-cache`), and RFC
    9111 §5.4: "When the Cache-Control header field is not present in a request, caches
    MUST consider the no-cache request pragma-directive as having the same effect as if
    Cache-Control: no-cache were present". Every other list field the flow reads
    (Cache-Control, Vary, the conditionals) joins its lines. Severity: low (clients send
    one Pragma line; a client that asked for validation gets a stored answer)."""
    heads: list[bytes] = []

    def answer(head: bytes) -> bytes:
        heads.append(head)
        return (b'HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nETag: "a"\r\n'
                b"Content-Length: 2\r\n\r\nhi")

    async with raw_origin(answer) as port:
        c = await proxy(f"http://127.0.0.1:{port}")
        assert b"X-Cache: MISS" in await _raw_get(c)
        assert b"X-Cache: HIT" in await _raw_get(c)
        answered = await _raw_get(c, b"Pragma: x-foo", b"Pragma: no-cache")
        assert b"fwd=request" in answered, answered
        assert len(heads) == 2
        assert b'If-None-Match: "a"' in heads[1]
