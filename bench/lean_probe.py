#!/usr/bin/env python3
"""Feasibility probe, not product code: how fast can one Python process (uvloop +
llhttp via httptools) relay HTTP/1.1 when the I/O is lean? Two modes:

  pass  every request goes to the origin over a pooled keep-alive connection
  hit   the first answer per URL is kept as bytes and replayed (no freshness logic)

Gives the per-core ceiling for a pure-Python-driven proxy on this machine, to set
cacheproxy's pass-through and hit targets. Content-Length answers only.

Usage: lean_probe.py (needs uvloop and httptools)
         --port 9030 --upstream 127.0.0.1:9000 [--mode pass|hit]

Copied unchanged (but for this note and lint fixes) from ../shared/bench/lean_probe.py, the
script behind the "lean probe" row of issue 10 ("A lean data plane"); bench/peers.py runs it
as one more peer. It is a measuring stick, not a proxy: no freshness, no validation, no
error handling worth the name.
"""
from __future__ import annotations

import argparse
import asyncio
from collections import deque

import httptools
import uvloop


class Upstream(asyncio.Protocol):
    def __init__(self, pool):
        self.pool, self.transport, self.cb = pool, None, None
        self.parser = httptools.HttpResponseParser(self)
        self.buf: list[bytes] = []

    def connection_made(self, t):
        self.transport = t

    def data_received(self, data):
        self.buf.append(data)
        self.parser.feed_data(data)

    def on_message_complete(self):
        raw = b"".join(self.buf)
        self.buf.clear()
        cb, self.cb = self.cb, None
        self.pool.idle.append(self)
        cb(raw)

    def connection_lost(self, exc):
        if self in self.pool.idle:
            self.pool.idle.remove(self)


class Pool:
    def __init__(self, host, port):
        self.host, self.port, self.idle = host, port, deque()

    async def send(self, raw: bytes, cb):
        if self.idle:
            up = self.idle.pop()
        else:
            _, up = await asyncio.get_running_loop().create_connection(
                lambda: Upstream(self), self.host, self.port)
        up.cb = cb
        up.transport.write(raw)


class Client(asyncio.Protocol):
    def __init__(self, pool, mode, cache):
        self.pool, self.mode, self.cache = pool, mode, cache
        self.parser = httptools.HttpRequestParser(self)
        self.transport, self.url, self.head = None, b"", []

    def connection_made(self, t):
        self.transport = t

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            self.transport.close()

    def on_url(self, url):
        self.url = url
        self.head = []

    def on_header(self, name, value):
        self.head.append(b"%s: %s\r\n" % (name, value))

    def on_message_complete(self):
        url, t = self.url, self.transport
        if self.mode == "hit":
            hit = self.cache.get(url)
            if hit is not None:
                t.write(hit)
                return
        raw = b"GET %s HTTP/1.1\r\n%s\r\n" % (url, b"".join(self.head))

        def done(resp, url=url):
            if self.mode == "hit":
                self.cache[url] = resp
            if not t.is_closing():
                t.write(resp)

        asyncio.ensure_future(self.pool.send(raw, done))  # noqa: RUF006 (as in the original)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=9030)
    ap.add_argument("--upstream", default="127.0.0.1:9000")
    ap.add_argument("--mode", choices=("pass", "hit"), default="pass")
    a = ap.parse_args()
    host, port = a.upstream.rsplit(":", 1)
    uvloop.install()
    loop = asyncio.new_event_loop()
    pool, cache = Pool(host, int(port)), {}
    srv = loop.run_until_complete(loop.create_server(
        lambda: Client(pool, a.mode, cache), "127.0.0.1", a.port, backlog=1024))
    try:
        loop.run_forever()
    finally:
        srv.close()


if __name__ == "__main__":
    main()
