"""Review "browser": what a browser user sees go wrong through the proxy, each replayed
exactly as Chromium sends it (the requests a <video>/<audio> element, a reload, a CORS
fetch() make), against a real proxy and aiohttp origins on 127.0.0.1."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import aiohttp
from aiohttp import web

MEDIA = bytes((i * 7) & 0xFF for i in range(640 * 1024))
CHUNK = 32 * 1024


def slow_media_origin(pause: float, seen: list[str | None] | None = None) -> web.Application:
    """A static media server, as nginx serves a file: it honours one Range itself, and
    sends 32 KiB every `pause` seconds (a large file over a slow link). seen: the Range
    of each request it gets (None: none)."""
    async def media(request: web.Request) -> web.StreamResponse:
        if seen is not None:
            seen.append(request.headers.get("Range"))
        first, last, status = 0, len(MEDIA) - 1, 200
        headers = {"Cache-Control": "public, max-age=60", "ETag": '"m1"',
                   "Accept-Ranges": "bytes", "Content-Type": "audio/wav"}
        if (m := re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("Range", ""))):
            first, last = int(m[1]), int(m[2]) if m[2] else last
            status = 206
            headers["Content-Range"] = f"bytes {first}-{last}/{len(MEDIA)}"
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = last - first + 1
        await resp.prepare(request)
        for at in range(first, last + 1, CHUNK):
            await resp.write(MEDIA[at:min(last + 1, at + CHUNK)])
            await asyncio.sleep(pause)
        return resp

    app = web.Application()
    app.router.add_get("/media.wav", media)
    return app


async def test_a_seek_during_the_first_load_of_a_media_file_does_not_wait_for_all_of_it(
        origin: Any, proxy: Any) -> None:
    """A <video>/<audio> element's seek while the file's first load is still coming: the
    seek's `Range: bytes=N-` waited behind the fill of the whole representation
    (collapsed, up to `collapse_timeout`, 10 s), and when that ran out fetched the whole
    representation again from byte 0 to cut the range from it. In Chromium (an <audio>
    of 1.9 MB from an origin sending it in 15 s) the seek took 22 s; straight to the
    origin it is at once. Squid sends the Range on as it is (range_offset_limit 0);
    Varnish answers it from the object as it streams. The same wait held a second
    viewer's `bytes=0-`. RFC 9110 §14.2 lets a cache send a Range on to the origin; the
    fill in flight stores the whole. Severity: medium (media seeking stalls for seconds
    on every file not yet cached)."""
    up = await origin(slow_media_origin(pause=0.4))  # 20 chunks: 8 s for the whole file
    client = await proxy(up)
    url = f"http://127.0.0.1:{client.port}/media.wav"
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        first = await session.get(url, headers={"Range": "bytes=0-"})  # the element's load
        assert first.status == 206
        await first.content.readexactly(CHUNK)
        started = time.monotonic()
        offset = len(MEDIA) - 2 * CHUNK
        async with session.get(url, headers={"Range": f"bytes={offset}-"}) as seek:
            body = await asyncio.wait_for(seek.read(), 20)
            took = time.monotonic() - started
        assert seek.status == 206
        assert seek.headers["Content-Range"] == f"bytes {offset}-{len(MEDIA) - 1}/{len(MEDIA)}"
        assert body == MEDIA[offset:]
        started = time.monotonic()
        async with session.get(url, headers={"Range": "bytes=0-"}) as viewer:
            assert viewer.status == 206
            assert await asyncio.wait_for(viewer.content.readexactly(CHUNK), 20) \
                == MEDIA[:CHUNK]
            second_viewer = time.monotonic() - started
        whole = await asyncio.wait_for(first.read(), 20)
        assert MEDIA[CHUNK:] == whole
        first.release()
    # The origin needs 0.8 s for the seek's two chunks; the whole file takes 8 s.
    assert took < 3, f"the seek waited {took:.1f} s"
    assert second_viewer < 3, f"a second viewer waited {second_viewer:.1f} s for a byte"


async def test_ranges_of_a_media_file_too_big_to_store_go_to_the_origin_at_once(
        origin: Any, proxy: Any) -> None:
    """A video above `max_object_bytes` (8 MiB by default: most videos): every Range a
    media element sends (its first `bytes=0-`, each seek) made two origin requests, a GET
    of the whole file, abandoned once its head showed the file too big to store (its
    connection closed, as nothing of the body is read), then the Range itself. The
    README says a URL whose last answer was not storable for anyone (hit-for-pass) sends
    its Range as it is at once; the too-big verdict became a refetch that never marked
    the URL, so each seek paid an extra round trip and a connection, and the origin
    began sending the whole file each time. In Chromium an <audio> above the limit made
    4 origin requests for 2 ranges. Severity: low (latency and origin load per seek)."""
    seen: list[str | None] = []
    up = await origin(slow_media_origin(pause=0.0, seen=seen))
    client = await proxy(up, cache={"max_object_bytes": 128 * 1024})
    url = f"http://127.0.0.1:{client.port}/media.wav"
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.get(url, headers={"Range": "bytes=0-"}) as first:
            assert first.status == 206 and await first.read() == MEDIA
        assert seen == [None, "bytes=0-"]  # (the first learns the file is too big)
        offset = len(MEDIA) - CHUNK
        async with session.get(url, headers={"Range": f"bytes={offset}-"}) as seek:
            assert seek.status == 206 and await seek.read() == MEDIA[offset:]
    assert seen[2:] == [f"bytes={offset}-"], seen
