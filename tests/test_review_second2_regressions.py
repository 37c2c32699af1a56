"""Defects found by a second reading of the fixes made for the races, admin, exhaust and
vary reviews (git log 0ee4b38..): each test failed on the code before its fix (or is a
strict xfail where it is not fixed). Real `cacheproxy serve` processes and origins on
127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from processes import clean_env, start_serve, stop

MiB = 1024 * 1024


def _resident(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def _raw_origin(answer: bytes) -> tuple[asyncio.AbstractServer, int]:
    """A raw origin on 127.0.0.1 answering every request (head only) with answer."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Callable[..., object]]:
    """served(origin_port, *args) -> (process, port) of `cacheproxy serve` in front of it."""
    procs = []

    async def start(origin_port: int, *args: str) -> tuple[asyncio.subprocess.Process, int]:
        proc, port = await start_serve(
            "--upstream", f"http://127.0.0.1:{origin_port}", *args, cwd=tmp_path,
            env=clean_env(CACHEPROXY_LOG_FORMAT="off"))
        procs.append(proc)
        return proc, port

    yield start
    for proc in procs:
        await stop(proc)


# -- the §4.4 invalidation marks are bounded in count only ---------------------------------


async def test_long_urls_a_client_posts_to_do_not_fill_the_invalidation_marks(served):
    """58d840c keeps, per process, when each invalidated key was last invalidated
    (proxy/invalidations.py: 10,000 keys), so that a fill under way is not stored after
    the invalidation. The marks are bounded in count only, where 8ed5621 had just bounded
    the hit-for-pass marks and the route memo in characters too (README: "the proxy's own
    bookkeeping of URLs ... is bounded in characters as well as in count"): a client that
    POSTs to 6,000 distinct 8 KiB targets under 6.7 KB Hosts, each answered 200 by the
    origin (an invalidation, §4.4), holds some 100 MiB of keys that cache.max_bytes does not
    count, until 10,000 other POSTs push them out. Severity: medium (one client, a few
    seconds, hundreds of MB past the configured bounds)."""
    server, origin_port = await _raw_origin(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
    labels = ".".join(["b" * 60] * 110)
    try:
        proc, port = await served(origin_port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.3)
        before = _resident(proc.pid)
        for start in range(0, 6000, 16):
            writer.write(b"".join(
                f"POST /u/{i:06d}/{'a' * 8000} HTTP/1.1\r\nHost: h{i}.{labels}\r\n"
                f"Content-Length: 0\r\n\r\n".encode() for i in range(start, start + 16)))
            for _ in range(16):
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                assert head.startswith(b"HTTP/1.1 200"), head
                await reader.readexactly(1)
        grew = _resident(proc.pid) - before
        writer.close()
        assert grew < 48 * MiB, f"resident memory grew {grew // MiB} MiB, nothing stored"
    finally:
        server.close()
