"""Defects found putting the proxy in front of real, widely deployed origin servers on
127.0.0.1 (nginx, Node's http module, Python's http.server): each test failed before its
fix (or is marked xfail, strict, with the reason it stays)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

# -- Python's http.server: an HTTP/1.0 origin ----------------------------------------------


class _Http10Handler(http.server.BaseHTTPRequestHandler):
    """As http.server answers: HTTP/1.0 (its default protocol_version), a request body
    read by its Content-Length alone (it knows no chunked coding)."""

    received: list[tuple[int, str | None]]

    def do_GET(self) -> None:
        self._answer(b"hello\n")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length)
        self.received.append((len(data), self.headers.get("Transfer-Encoding")))
        self._answer(b"%d\n" % len(data))

    do_PUT = do_POST

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http10_origin() -> Iterator[tuple[str, list[tuple[int, str | None]]]]:
    """http.server's ThreadingHTTPServer on 127.0.0.1: its URL, and (length, its
    Transfer-Encoding) of each request body it read."""
    received: list[tuple[int, str | None]] = []
    handler = type("Handler", (_Http10Handler,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 1000):
        yield data[i:i + 1000]


@pytest.mark.parametrize("method", ["POST", "PUT"])
async def test_chunked_upload_to_an_http10_origin_keeps_its_body(
        proxy: Any, http10_origin: tuple[str, list[tuple[int, str | None]]], method: str,
) -> None:
    """A client's chunked request body (`curl -T -`, `Transfer-Encoding: chunked`) went on
    to the origin chunked even after that origin had answered as HTTP/1.0. An HTTP/1.0
    server (Python's http.server, on which many small apps and tools are built; old
    embedded servers) knows no transfer coding: it read a body of length 0 and answered
    as if the client had sent nothing, so the upload was silently lost (the 200 says
    "0"). RFC 9112 §6.1: a client MUST NOT send Transfer-Encoding unless it knows the
    server handles HTTP/1.1, which it can know "by remembering the version of a prior
    received response". nginx never sends a chunked request upstream to such an origin
    (it buffers the body and sends its Content-Length; its default proxy_http_version is
    1.0), and Squid dechunks a request up to chunked_request_body_max_size (64 KB) and
    answers 411 beyond. Severity: medium (silent data loss for uploads, to HTTP/1.0
    origins only)."""
    url, received = http10_origin
    client = await proxy(url)
    first = await client.get("/warm")  # the origin answers as HTTP/1.0
    assert first.status == 200 and first.headers["Via"].startswith("1.0 ")
    data = bytes(range(256)) * 12  # 3,072 bytes, sent in 1,000-byte chunks
    resp = await client.request(method, "/upload", data=_chunks(data))
    assert resp.status == 200
    assert await resp.read() == b"%d\n" % len(data)
    assert received == [(len(data), None)]


async def test_chunked_upload_too_big_to_dechunk_gets_411_not_a_lost_body(
        proxy: Any, http10_origin: tuple[str, list[tuple[int, str | None]]],
) -> None:
    """The other half of the test above: a chunked body over 64 KiB, which the proxy does
    not hold to count, gets 411 Length Required (RFC 9110 §15.5.12), as Squid answers past
    chunked_request_body_max_size, rather than reaching the HTTP/1.0 origin as an empty
    body. Severity: medium (with the test above)."""
    url, received = http10_origin
    client = await proxy(url)
    assert (await client.get("/warm")).status == 200
    resp = await client.post("/upload", data=_chunks(b"x" * 100_000))
    assert resp.status == 411
    assert received == []
    assert (await client.get("/after")).status == 200  # the proxy goes on serving
