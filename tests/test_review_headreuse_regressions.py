"""Review: the upstream connection after an answer to a HEAD sent upstream as HEAD (a
request that bypasses the cache, a hit-for-pass URL, a link checker's or monitor's HEAD).

RFC 9110 §9.3.2 and RFC 9112 §6.3 rule 1: such an answer ends with its header section,
whatever its Content-Length or Transfer-Encoding say; the connection persists after it as
after any answer (RFC 9112 §9.3). The pool closed it every time instead (llhttp cannot be
told the answer has no body), so each HEAD opened a new TCP (and TLS) connection to the
origin, where nginx and Squid reuse it. The tests count the connections the origin
accepts, on the quick forward path and the full one, and check that an answer with bytes
past its head (a body sent anyway) still closes the connection, never read as the next
request's answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from support import https_site, raw_origin, until

NO_STORE = {"Cache-Control": "no-store"}  # not answered from the cache: HEAD goes as HEAD
GET_ANSWER = b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 5\r\n\r\nhello"


def origin_answering_head(head_answer: bytes | list[bytes | None], seen: list[bytes]) -> Any:
    """An answer function for raw_origin: head_answer to HEAD, GET_ANSWER to the rest;
    the request lines go to seen."""
    def answer(request: bytes) -> bytes | list[bytes | None]:
        seen.append(request.split(b"\r\n", 1)[0])
        return head_answer if request.startswith(b"HEAD ") else GET_ANSWER
    return answer


async def head_then_get(client: Any, heads: int = 1) -> None:
    """heads HEADs then a GET through the proxy, each answered as the origin meant."""
    for _ in range(heads):
        async with client.head("/x", headers=NO_STORE) as resp:
            assert resp.status in (200, 304)  # (the origin's)
    async with client.get("/x", headers=NO_STORE) as resp:
        assert resp.status == 200 and await resp.read() == b"hello"


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "full"])
async def test_two_heads_then_a_get_share_one_origin_connection(
        proxy: Any, forward_switch: Any, quick: bool) -> None:
    """What was wrong: the pool closed the connection after every answer to a HEAD.
    A user saw: each HEAD (a monitor's, a link checker's, a no-store or hit-for-pass
    request's) open a new TCP (and TLS) connection to the origin, a handshake and a
    round trip more each time, and the origin's connection count climb. RFC 9110
    §9.3.2, RFC 9112 §6.3 rule 1 and §9.3; nginx and Squid reuse the connection.
    Severity: medium (performance, origin load)."""
    forward_switch(quick)
    seen: list[bytes] = []
    connections: list[int] = []
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"  # the GET's length, no body
    async with raw_origin(origin_answering_head(head, seen), connections) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        for _ in range(2):
            async with client.head("/x", headers=NO_STORE) as resp:
                assert resp.status == 200 and resp.headers["Content-Length"] == "5"
        async with client.get("/x", headers=NO_STORE) as resp:
            # The GET's own answer, not 5 bytes of it taken for the HEAD's body.
            assert resp.status == 200 and await resp.read() == b"hello"
        assert [line.split(b" ")[0] for line in seen] == [b"HEAD", b"HEAD", b"GET"]
        assert len(connections) == 1
        if quick:  # the second HEAD and the GET found the connection idle
            assert forward_switch.state["sent"] == 2


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "full"])
@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-No-Framing: 1\r\n\r\n",  # llhttp: "runs to the close"
    b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
], ids=["chunked", "length-0", "no-framing", "1.0-keep-alive", "304"])
async def test_a_head_answered_without_bytes_past_its_head_keeps_the_connection(
        proxy: Any, forward_switch: Any, quick: bool, head: bytes) -> None:
    """What was wrong: as above, for every framing a HEAD's answer may announce (chunked,
    none at all: llhttp takes that to run to the close, yet it has no content either).
    A user saw: a new origin connection per HEAD. RFC 9112 §6.3 rule 1, §9.3 (an HTTP/1.0
    answer with keep-alive persists too, RFC 9112 §C.2.2). Severity: medium."""
    forward_switch(quick)
    seen: list[bytes] = []
    connections: list[int] = []
    async with raw_origin(origin_answering_head(head, seen), connections) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        await head_then_get(client, heads=2)
        assert len(connections) == 1


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "full"])
@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",  # a body sent anyway
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5",
    b"HTTP/1.1 200 OK\r\n\r\nsome content",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" + GET_ANSWER,  # a second answer
], ids=["body", "part-of-body", "last-chunk", "chunk-line", "part-of-chunk-line",
        "until-close", "close", "1.0", "1.0-no-framing", "second-answer"])
async def test_a_head_answered_with_bytes_past_its_head_or_close_is_not_reused(
        proxy: Any, forward_switch: Any, quick: bool, head: bytes) -> None:
    """The guard beside the reuse: an answer to HEAD with bytes past its head (content an
    origin sent anyway, whole or in part, in the read that brought the head), or one that
    said close (or HTTP/1.0 without keep-alive), must not leave its connection pooled:
    those bytes would be read as the next request's answer. A user would have seen
    another request's answer get the HEAD's body. RFC 9112 §6.3 rule 1, §9.3, §9.6;
    nginx closes an upstream connection with bytes past the answer. Severity: high if
    broken (it passed before, the connection never being reused)."""
    forward_switch(quick)
    seen: list[bytes] = []
    connections: list[int] = []
    async with raw_origin(origin_answering_head(head, seen), connections) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        await head_then_get(client)
        assert len(connections) == 2


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "full"])
async def test_a_body_after_a_heads_answer_in_a_later_read_closes_the_idle_connection(
        proxy: Any, forward_switch: Any, quick: bool) -> None:
    """A body an origin sends to HEAD in a read after the head's, while the connection is
    idle in the pool: it is closed (a byte on an idle connection), and the next request
    goes on a new one, answered right. RFC 9112 §6.3 rule 1. Severity: high if broken."""
    forward_switch(quick)
    seen: list[bytes] = []
    connections: list[int] = []
    head = [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"hello"]
    async with raw_origin(origin_answering_head(head, seen), connections) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        pool = client.app_proxy.exchange.pool
        async with client.head("/x", headers=NO_STORE) as resp:
            assert resp.status == 200
        # Pooled (the head ended the answer), then closed once the body came.
        assert await until(lambda: pool.in_use == 0)
        async with client.get("/x", headers=NO_STORE) as resp:
            assert resp.status == 200 and await resp.read() == b"hello"
        assert len(connections) == 2


async def test_heads_to_an_https_origin_share_one_tls_connection(
        proxy: Any, tmp_path: Path) -> None:
    """What was wrong: as above, over TLS, where each new connection costs a handshake
    too. A user saw: a monitor's HEADs to an https origin each make a TLS handshake.
    RFC 9112 §9.3, §6.3 rule 1; nginx reuses the connection. Severity: medium."""
    transports: set[int] = set()

    async def answer(request: web.Request) -> web.Response:
        transports.add(id(request.transport))
        return web.Response(body=b"hello", headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_route("*", "/x", answer)
    site, site_ca = await https_site(app, tmp_path)
    try:
        client = await proxy(f"https://localhost:{site.port}",
                             proxy={"upstream_ca_file": str(site_ca.cert_path)})
        await head_then_get(client, heads=3)
        assert len(transports) == 1
    finally:
        await site.close()
