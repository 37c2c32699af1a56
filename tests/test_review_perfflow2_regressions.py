"""Review perfflow2: the flow's decision on an answer it does not store. answered()
remembers its last Pass with every input it was made from (the route, the Forward, the
status, the request's directives, Authorization, credentials, body and range, and the
answer's Cache-Control, targeted fields, Expires, Set-Cookie, Vary and Content-Type) and
hands it out again for the same inputs: a URL passed on per request is decided once. The
tests pin, through the real proxy, that an answer differing from the last one in any of
those inputs is decided afresh."""

from __future__ import annotations

from typing import Any

from support import raw_origin
from test_client_plane import Raw
from test_quick_hits import request


def _ok(*fields: str) -> bytes:
    return ("\r\n".join(("HTTP/1.1 200 OK", *fields, "Content-Length: 2")) + "\r\n\r\nok"
            ).encode()


async def _sequence(proxy: Any, answers: list[bytes],
                    requests: list[tuple[str, ...]]) -> list[str | None]:
    """The X-Cache of each request for /m on one connection, the origin giving answers[i]
    to its i-th request (no collapsing: each miss goes as it is)."""
    given = iter(answers)
    async with raw_origin(lambda head: next(given)) as port:
        client = await proxy(f"http://127.0.0.1:{port}", cache={"collapse": False})
        conn = await Raw.open(client)
        seen = []
        for fields in requests:
            await conn.send(request("/m", fields))
            reply = await conn.reply()
            assert reply.status == 200
            seen.append(reply.headers.get("x-cache"))
        return seen


async def test_a_pass_remembered_is_not_taken_for_an_answer_a_targeted_field_stores(
        proxy: Any) -> None:
    """Performance (perfflow2): the last Pass is remembered with the answer's fields it
    was decided from. An answer that repeats the last one's Cache-Control: no-store but
    adds Surrogate-Control: max-age=60 (RFC 9213 §2.2, Edge Architecture §2.2: a targeted
    field for this cache sets Cache-Control aside) is stored, and the next request is a
    hit; likewise one whose Content-Type is no longer text/event-stream. Taking the
    remembered Pass for them would pass on, uncached, a URL the origin asks to cache.
    Severity if broken: high (a cache that stops caching what it is told to)."""
    seen = await _sequence(proxy, [
        _ok("Cache-Control: no-store"),
        _ok("Cache-Control: no-store", "Surrogate-Control: max-age=60"),
    ], [(), (), ()])
    assert seen == ["MISS", "MISS", "HIT"]
    seen = await _sequence(proxy, [
        _ok("Cache-Control: max-age=60", "Content-Type: text/event-stream"),
        _ok("Cache-Control: max-age=60", "Content-Type: text/plain"),
    ], [(), (), ()])
    assert seen == ["MISS", "MISS", "HIT"]


async def test_a_pass_for_one_requests_authorization_is_not_taken_for_another(
        proxy: Any) -> None:
    """Performance (perfflow2): the same answer (Cache-Control: max-age=60) to a request
    with Authorization is not stored (RFC 9111 §3.5), to one without it is. The
    remembered Pass of the first must not answer for the second: its answer is stored,
    and the request after it is a hit. Severity if broken: high (a cacheable URL passed
    on uncached after any authenticated request to it)."""
    answer = _ok("Cache-Control: max-age=60")
    seen = await _sequence(proxy, [answer, answer],
                           [("Authorization: Basic dTpw",), (), ()])
    assert seen == ["MISS", "MISS", "HIT"]
