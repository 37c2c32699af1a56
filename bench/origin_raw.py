"""origin.py's answers from a bare asyncio Protocol (uvloop + httptools), for when the
origin must not be the bottleneck: `python bench/origin.py --engine raw`.

On the two-core machines the benchmarks run on, the origin shares a CPU with wrk. The
aiohttp origin then answers about 12,000 requests/s, below what nginx, Squid or a lean
proxy forward, so pass-through and revalidation figures would measure the origin. This one
answers the same routes with the same fields and bodies (and the same /__stats counters)
from pre-encoded bytes, two to three times faster. Not here: /big (streaming; memory.py uses the
aiohttp origin for it).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from email.utils import formatdate

import httptools
from origin import BODIES, FRESH, LAST_MODIFIED, REVAL_ETAG, body_of, counts

KIB = 1024
Fields = list[tuple[str, str]]


def encode(status: int, reason: str, fields: Fields, body: bytes, date: str) -> bytes:
    head = [f"HTTP/1.1 {status} {reason}", f"Date: {date}", "Server: bench-origin",
            *(f"{k}: {v}" for k, v in fields)]
    if status != 304:  # a 304's Content-Length would have to be the 200's (RFC 9110 §8.6)
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def fixed_fields(cache_control: str, etag: str) -> Fields:
    return [("Content-Type", "application/octet-stream"), ("Cache-Control", cache_control),
            ("ETag", etag), ("Last-Modified", LAST_MODIFIED)]


# path -> (counter key, status, reason, fields, body): what origin.py's handlers answer.
ROUTES: dict[str, tuple[str, int, str, Fields, bytes]] = {
    "/hit1k": ("/hit1k 200", 200, "OK", fixed_fields(FRESH, '"hit1k-v1"'), BODIES["/hit1k"]),
    "/hit32k": ("/hit32k 200", 200, "OK", fixed_fields(FRESH, '"hit32k-v1"'),
                BODIES["/hit32k"]),
    "/reval": ("/reval 200", 200, "OK", fixed_fields("no-cache", REVAL_ETAG), BODIES["/reval"]),
    "/pass": ("/pass 200", 200, "OK", [("Content-Type", "application/octet-stream"),
                                       ("Cache-Control", "no-store")], BODIES["/pass"]),
}
NOT_MODIFIED = ("/reval 304", 304, "Not Modified",
                [("Cache-Control", "no-cache"), ("ETag", REVAL_ETAG)], b"")
NOT_FOUND = ("", 404, "Not Found", [("Content-Type", "text/plain")], b"not found\n")


class Encoded:
    """Pre-encoded answers, re-encoded once a second for a fresh Date."""

    def __init__(self) -> None:
        self.second = -1
        self.cache: dict[str, bytes] = {}

    def get(self, name: str, spec: tuple[str, int, str, Fields, bytes]) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second, self.cache = now, {}
        found = self.cache.get(name)
        if found is None:
            _, status, reason, fields, body = spec
            found = self.cache[name] = encode(status, reason, fields, body,
                                              formatdate(now, usegmt=True))
        return found


class OriginProtocol(asyncio.Protocol):
    def __init__(self, encoded: Encoded) -> None:
        self.encoded = encoded
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.inm = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                 b"Connection: close\r\n\r\n")
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"if-none-match":
            self.inm = value

    def on_message_complete(self) -> None:
        assert self.transport is not None
        path = self.url.split(b"?", 1)[0].decode("latin-1")
        inm, self.url, self.inm = self.inm, b"", b""
        self.transport.write(self.answer(path, inm))
        if not self.parser.should_keep_alive():
            self.transport.close()

    def answer(self, path: str, inm: bytes) -> bytes:
        if path == "/__stats":
            body = json.dumps(dict(counts)).encode()
            return encode(200, "OK", [("Content-Type", "application/json")], body,
                          formatdate(usegmt=True))
        if path.startswith("/item/"):
            n = path[len("/item/"):]
            counts["/item 200"] += 1
            return encode(200, "OK", fixed_fields(FRESH, f'"item-{n}"'),
                          body_of(KIB, f"item {n} ".encode()), formatdate(usegmt=True))
        spec = ROUTES.get(path, NOT_FOUND)
        tags = (t.strip() for t in inm.decode("latin-1").split(","))
        if path == "/reval" and REVAL_ETAG in tags:  # RFC 9110 §13.1.2 (weak compare)
            spec = NOT_MODIFIED
        if spec[0]:
            counts[spec[0]] += 1
        return self.encoded.get(spec[0] or path, spec)


async def serve_raw(host: str, port: int) -> None:
    """Like origin.serve: until SIGTERM / SIGINT; prints "listening <port>" once bound."""
    loop = asyncio.get_running_loop()
    encoded = Encoded()
    server = await loop.create_server(lambda: OriginProtocol(encoded), host, port,
                                      backlog=1024)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        server.close()
