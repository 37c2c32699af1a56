"""Review perfup: the upstream side of a miss (proxy/pool.py, proxy/exchange.py): the
request sent on a pooled connection, the origin's answer parsed by llhttp's callbacks, the
answer's head handed on and the connection pooled again. The parse was made cheaper
(fewer Python steps per answer and per field); these tests pin what the review found the
suite did not pin and the change could break, against the real proxy and origins on
127.0.0.1 that send bytes of the test's choosing."""

from __future__ import annotations

from support import raw_get, raw_origin

_MAX_FIELD_BYTES = 128 * 1024  # pool._MAX_FIELD_BYTES: the most a header section may hold


def _head(section_bytes: int) -> bytes:
    """A 200's head whose header section holds about section_bytes of field names and
    values, in fields of 1 KiB (X-Fill-nnnn: 1,014 x's)."""
    lines = [b"HTTP/1.1 200 OK", b"Content-Length: 2"]
    for i in range(section_bytes // 1024):
        lines.append(b"X-Fill-%04d: " % i + b"x" * 1014)
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def test_a_header_section_over_the_bound_is_refused_however_it_arrives(proxy):
    """pool.py bounds an answer's header section at 128 KiB of field names and values
    (RFC 9110 §5.4: a recipient may refuse a section too large) by counting in on_header;
    data_received has a second, looser bound on the head's bytes (136 KiB) for a field
    llhttp is still building. The review made on_header count only once the head's bytes
    pass 128 KiB (below that no section can hold more), taking the fields it already holds
    into the count then. Nothing pinned the 128 KiB bound itself: a section of 130 KiB,
    whether in one read or in pieces that cross the switch mid-section, must be refused
    (502), and one of 120 KiB passed on. nginx refuses a head past its
    proxy_buffer_size ("upstream sent too big header", 502). Severity: low (a bound of
    memory per upstream answer, not a correctness rule), but a regression would let an
    origin's head grow past the documented bound."""
    near = _head(120 * 1024)
    over = _head(130 * 1024)
    assert len(near) < _MAX_FIELD_BYTES < len(over) < _MAX_FIELD_BYTES + 8192

    def answer(head: bytes) -> bytes | list[bytes]:
        if b"/near" in head:
            return near + b"ok"
        if b"/pieces" in head:  # 100 KiB uncounted, then the rest once counting is on
            return [over[:100 * 1024], over[100 * 1024:] + b"ok"]
        return over + b"ok"

    async with raw_origin(answer) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        status, fields, body = await raw_get(client, "/near")
        assert (status, body, fields.get("x-fill-0119")) == (200, b"ok", "x" * 1014)
        for target in ("/whole", "/pieces"):
            status, _, _ = await raw_get(client, target)
            assert status == 502, (target, status)
        status, _, body = await raw_get(client, "/near")  # and the proxy serves on
        assert (status, body) == (200, b"ok")
