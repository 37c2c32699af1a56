"""Review perfpool4: the upstream pool's exchange (proxy/pool.py), the answer's head step.

The review looked at what a pooled connection does for the usual answer (HTTP/1.1, a 200
or 304, one Content-Length, no Transfer-Encoding, no Connection field, whole in one read):
on_headers_complete now decides such an answer in one short branch, chosen by one check of
the fields' index against the names that need the full rules (Transfer-Encoding,
Connection, Proxy-Connection), and takes the connection's persistence from the framing it
already read instead of asking llhttp. These tests pin what that could break and no
earlier test pins: a `Proxy-Connection: close` from the origin (llhttp honours it as a
Connection: close) and an HTTP/1.1 answer run to the close, on a reused connection.
"""

from __future__ import annotations

from typing import Any

from support import raw_origin


async def test_an_origins_proxy_connection_close_is_honoured_on_a_reused_connection(
        proxy: Any) -> None:
    """llhttp takes `Proxy-Connection: close` as `Connection: close` (a connection it
    will not read another answer on). The usual answer's short branch skips llhttp's
    should_keep_alive(); had it not left such an answer to the full rules, a user saw
    the next request sent on a connection the origin closes (a 502, or a retry), where
    nginx opens a new one. RFC 9112 §9.6 (close), RFC 9110 §7.6.1 (Proxy-Connection is
    a connection option some origins send). Severity: medium, were it broken."""
    answer = (b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nProxy-Connection: close\r\n"
              b"Content-Length: 2\r\n\r\nok")
    connections: list[int] = []
    async with raw_origin(lambda head: answer, connections) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        for _ in range(3):  # (a new connection, then the quick forward's idle lookup)
            resp = await client.get("/x")
            assert resp.status == 200 and await resp.read() == b"ok"
        assert len(connections) == 3  # none reused after the origin said close


async def test_an_http11_answer_with_no_length_runs_to_the_close_and_is_not_reused(
        proxy: Any) -> None:
    """An HTTP/1.1 200 with neither Content-Length nor Transfer-Encoding runs to the
    close (RFC 9112 §6.3 rule 8); the usual answer's short branch decides that itself.
    Had it taken the answer as ended with its head, a user saw an empty body, and the
    connection reused with the body's bytes read as the next answer. Each of three
    requests gets the whole body and a connection of its own (nginx reads such a body
    to the close and does not keep the connection). Severity: high, were it broken."""
    answer = [b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\n\r\nall of it", None]
    connections: list[int] = []
    async with raw_origin(lambda head: answer, connections) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        for _ in range(3):
            resp = await client.get("/y")
            assert resp.status == 200 and await resp.read() == b"all of it"
        assert len(connections) == 3
