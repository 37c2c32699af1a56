"""The benchmark origin: fixed, cheap answers for each scenario, from memory.

    python bench/origin.py --listen 127.0.0.1:9001

Routes (all GET):
    /hit1k          1 KiB,  Cache-Control: max-age=3600 (a cache hit once stored)
    /hit32k         32 KiB, same
    /reval          1 KiB,  Cache-Control: no-cache + ETag: every use is revalidated,
                    and If-None-Match with the current ETag gets 304
    /pass           1 KiB,  Cache-Control: no-store (passes through every time)
    /item/<n>       1 KiB distinct bodies, max-age=3600 (fills the cache in the memory test)
    /big?size=N     N bytes streamed in 64 KiB chunks with Content-Length, max-age=3600
                    (storable but for its size: larger than max_object_bytes it must
                    stream through uncached)
    /__stats        JSON: answers given so far, per route and status (the benchmark reads
                    it to prove that hits did not reach the origin)

`--engine raw` answers the same routes (but /big) from origin_raw.py's bare asyncio
Protocol instead: two to three times faster, for runs where the aiohttp origin would be the
bottleneck (bench/peers.py's pass-through and revalidation).

It runs on uvloop with no access log, so it costs the proxy's benchmark as
little as an origin can.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import signal
import sys

from aiohttp import web

KIB = 1024
CHUNK = 64 * KIB
FRESH = "max-age=3600"
# A fixed Last-Modified keeps the answers byte-identical from run to run.
LAST_MODIFIED = "Mon, 01 Jan 2024 00:00:00 GMT"


def body_of(size: int, seed: bytes = b"cacheproxy-bench ") -> bytes:
    return (seed * (size // len(seed) + 1))[:size]


BODIES = {
    "/hit1k": body_of(KIB),
    "/hit32k": body_of(32 * KIB),
    "/reval": body_of(KIB, b"revalidate-me "),
    "/pass": body_of(KIB, b"pass-through "),
}
REVAL_ETAG = '"reval-v1"'
BIG_CHUNK = body_of(CHUNK, b"big ")

counts: collections.Counter[str] = collections.Counter()


def fixed(path: str, cache_control: str, etag: str) -> web.Response:
    return web.Response(
        body=BODIES[path],
        headers={
            "Content-Type": "application/octet-stream",
            "Cache-Control": cache_control,
            "ETag": etag,
            "Last-Modified": LAST_MODIFIED,
        },
    )


async def hit1k(request: web.Request) -> web.Response:
    counts["/hit1k 200"] += 1
    return fixed("/hit1k", FRESH, '"hit1k-v1"')


async def hit32k(request: web.Request) -> web.Response:
    counts["/hit32k 200"] += 1
    return fixed("/hit32k", FRESH, '"hit32k-v1"')


async def reval(request: web.Request) -> web.Response:
    inm = request.headers.get("If-None-Match", "")
    if REVAL_ETAG in (t.strip() for t in inm.split(",")):  # RFC 9110 §13.1.2 (weak compare)
        counts["/reval 304"] += 1
        return web.Response(
            status=304, headers={"Cache-Control": "no-cache", "ETag": REVAL_ETAG}
        )
    counts["/reval 200"] += 1
    return fixed("/reval", "no-cache", REVAL_ETAG)


async def passthrough(request: web.Request) -> web.Response:
    counts["/pass 200"] += 1
    return web.Response(
        body=BODIES["/pass"],
        headers={"Content-Type": "application/octet-stream", "Cache-Control": "no-store"},
    )


async def item(request: web.Request) -> web.Response:
    counts["/item 200"] += 1
    n = request.match_info["n"]
    return web.Response(
        body=body_of(KIB, f"item {n} ".encode()),  # distinct per n
        headers={
            "Content-Type": "application/octet-stream",
            "Cache-Control": FRESH,
            "ETag": f'"item-{n}"',
            "Last-Modified": LAST_MODIFIED,
        },
    )


async def big(request: web.Request) -> web.StreamResponse:
    try:
        size = int(request.query.get("size", str(CHUNK)))
    except ValueError:
        raise web.HTTPBadRequest(text="size must be an integer\n") from None
    if size < 0:
        raise web.HTTPBadRequest(text="size must be >= 0\n")
    counts["/big 200"] += 1
    resp = web.StreamResponse(
        headers={"Content-Type": "application/octet-stream", "Cache-Control": FRESH}
    )
    resp.content_length = size
    await resp.prepare(request)
    view = memoryview(BIG_CHUNK)
    left = size
    while left > 0:
        n = min(left, CHUNK)
        await resp.write(view[:n])  # write() drains: bounded memory whatever the size
        left -= n
    await resp.write_eof()
    return resp


async def stats(request: web.Request) -> web.Response:
    return web.json_response(dict(counts))


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/hit1k", hit1k)
    app.router.add_get("/hit32k", hit32k)
    app.router.add_get("/reval", reval)
    app.router.add_get("/pass", passthrough)
    app.router.add_get("/item/{n}", item)
    app.router.add_get("/big", big)
    app.router.add_get("/__stats", stats)
    return app


async def serve(host: str, port: int, app: web.Application) -> None:
    """Run app until SIGTERM / SIGINT; prints "listening <port>" once bound."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound = runner.addresses[0][1]
    print(f"listening {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run(coro_factory) -> None:  # type: ignore[no-untyped-def]
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro_factory())
    else:
        uvloop.run(coro_factory())


def parse_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any free)")
    parser.add_argument("--engine", choices=("aiohttp", "raw"), default="aiohttp",
                        help="raw: origin_raw.py's asyncio Protocol (needs httptools)")
    args = parser.parse_args(argv)
    host, port = parse_listen(args.listen)
    with contextlib.suppress(KeyboardInterrupt):
        if args.engine == "raw":
            from origin_raw import serve_raw

            run(lambda: serve_raw(host, port))
        else:
            run(lambda: serve(host, port, make_app()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
