"""A review of the shared-store deployment (cache.store = "redis", several replicas or
--workers on one Redis): each test showed a defect against a real redis-server, real
origins and real `cacheproxy serve` processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import struct
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from processes import accepting, clean_env, free_port, start_serve, stop
from redis.asyncio import Redis
from redis_server import RedisServer
from test_store_redis import make_entry, redis_cache

from cacheproxy.store.redis import RedisStore

MAX_AGE = {"Cache-Control": "max-age=60"}


def _record(header: dict[str, Any], body: bytes) -> bytes:
    """A record in serial.py's layout (magic, version 1, header length, JSON, body)."""
    text = json.dumps(header).encode()
    return b"CPR\x01" + struct.pack(">I", len(text)) + text + body


def _children(pid: int) -> list[int]:
    return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def _stderr_until(proc: asyncio.subprocess.Process, lines: list[str], text: str,
                        count: int = 1, seconds: float = 10) -> None:
    """Read proc's stderr into lines until text has appeared count times."""
    assert proc.stderr is not None
    async with asyncio.timeout(seconds):
        while sum(text in line for line in lines) < count:
            line = await proc.stderr.readline()
            if not line:
                raise AssertionError(f"{text!r} not in stderr: {''.join(lines)}")
            lines.append(line.decode(errors="replace"))


# -- serial.py: a record that decodes but cannot be served -----------------------------------


@pytest.mark.parametrize("change", [
    {"status": 0}, {"status": 99999}, {"status": 100}, {"status": 304},
    {"headers": ["X-A", "a\r\nX-Injected: 1", "Cache-Control", "max-age=600"]},
    {"headers": ["Bad Name:", "x", "Cache-Control", "max-age=600"]},
], ids=["status-0", "status-99999", "status-100", "status-304", "crlf-in-value",
        "not-a-token-name"])
async def test_a_stored_record_the_cache_could_not_have_written_is_a_miss(
        origin: Any, proxy: Any, redis_server: RedisServer, change: dict[str, Any]) -> None:
    """README (The Redis store): "a record from another version or a damaged one is treated
    as a miss and deleted"; the brief of the shared store: a foreign or damaged value is a
    miss, never a 500 or a traceback. serial.decode checks the types of a record's fields
    but not their values: a status the cache never stores (0, 99999, a 1xx, a 304) went out
    as an invalid status line (`HTTP/1.1 0`), a 100 with a body, or a 304 to a plain GET;
    a CR/LF in a stored field value made the hit path raise ("client connection failed"
    with a traceback) and close the connection without an answer; a field name that is not
    a token went out as the malformed line `Bad Name:: x`. Such a record must be refused
    when read, like any damaged one: the client gets the origin's answer."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="from the origin", headers=MAX_AGE)

    app = web.Application()
    app.router.add_get("/a", page)
    up = await origin(app)
    c = await proxy(up, cache={"store": "redis", "redis_url": redis_server.url})
    key = c.app_proxy.cache_key("http", f"127.0.0.1:{c.server.port}", "/a")
    header: dict[str, Any] = {
        "key": key, "vary": [], "vary_values": [], "status": 200,
        "headers": ["Content-Type", "text/plain", "Cache-Control", "max-age=600"],
        "response_time": time.time(), "initial_age": 0.0, "lifetime": 600.0, "etag": None,
        "last_modified": None, "modified_at": 0.0, "size": 10, **change}
    raw = Redis.from_url(redis_server.url)
    try:
        await raw.hset(f"cacheproxy:e2:{key}", "[[],[]]", _record(header, b"0123456789"))
    finally:
        await raw.aclose()
    resp = await c.get("/a")
    assert resp.status == 200
    assert await resp.text() == "from the origin"


# -- the put script and a damaged variant list ------------------------------------------------


async def test_a_damaged_variant_list_does_not_make_puts_fail_half_done(
        redis_server: RedisServer) -> None:
    """The put script reads the key's variant list ("#") and drops what it cannot use, so
    that a damaged one cannot block the key (store/redis.py). It checks the times with
    tonumber() but then compares the raw values: a list holding them as strings ("1") made
    the script fail ("attempt to compare number with string") after its HSET of the new
    variant, so put() said "not stored" while the variant was written, the key's expiry was
    never set (a key without a TTL, kept until maxmemory evicts it) and every later put of
    the key failed the same way. Such entries must be dropped as the other invalid ones."""
    store = RedisStore(redis_cache(redis_server))
    raw = Redis.from_url(redis_server.url)
    try:
        name = b"cacheproxy:e2:" + b"http://x/a"
        await raw.hset(name, mapping={"#": '{"old":["1","99999999999999"]}', "old": "x"})
        assert await store.put(make_entry(key="http://x/a"))
        assert await raw.ttl(name) > 0
        assert not await raw.hexists(name, "old")
    finally:
        await raw.aclose()
        await store.close()


# -- --workers: restart-only settings after a reload ------------------------------------------


async def test_a_worker_restarted_after_a_reload_keeps_the_running_store(
        origin: Any, tmp_path: Path, redis_server: RedisServer) -> None:
    """README (Running it, SIGHUP): settings that hold the store (`cache.store`,
    `cache.redis_*`, `cache.memory_layer_*`, `cache.max_bytes`...) "take effect at the next
    restart", and each worker logs so. With --workers, the supervisor gave a worker it
    restarted after a crash the reloaded configuration whole, restart-only settings
    included: after a reload that changed `cache.store` from redis to memory, the new worker
    ran a memory store of its own while the other still shared Redis, so the workers no
    longer shared one cache (a URL fetched once per store) and a purge through one worker
    left the other's copy. A restarted worker must keep the running restart-only settings
    (and get the reloaded others, as test_a_worker_restarted_after_a_reload_runs_the_
    reloaded_config asks)."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="n", headers=MAX_AGE)

    app = web.Application()
    app.router.add_get("/n", page)
    up = await origin(app)
    conf = tmp_path / "c.toml"
    text = (f'[proxy]\nupstream = "{up.make_url("")}"\n'
            f'[cache]\nstore = "redis"\nredis_url = "{redis_server.url}"\n')
    conf.write_text(text)
    env = clean_env(CACHEPROXY_PROXY_SHUTDOWN_TIMEOUT="0")
    proc, port = await start_serve("--config", str(conf), "--workers", "2", cwd=tmp_path,
                                   env=env)
    lines: list[str] = []
    try:
        await _stderr_until(proc, lines, "listening on", 2)
        conf.write_text(text.replace('store = "redis"', 'store = "memory"'))
        proc.send_signal(signal.SIGHUP)
        await _stderr_until(proc, lines, "configuration reloaded", 2)
        victim = _children(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)  # a crash: the supervisor starts another
        await _stderr_until(proc, lines, "listening on", 3)
        backends = set()
        for _ in range(30):  # new connections: both workers answer some
            async with aiohttp.ClientSession() as http, \
                    http.get(f"http://127.0.0.1:{port}/_cacheproxy/stats") as resp:
                backends.add((await resp.json())["store"]["backend"])
        assert backends == {"layered"}
    finally:
        await stop(proc)


# -- --workers: the request log on standard output --------------------------------------------


async def test_workers_logging_to_a_pipe_keep_one_json_object_per_line(
        origin: Any, tmp_path: Path) -> None:
    """README: the request log is JSON Lines, on standard output by default ("the docker
    default", where stdout is a pipe to the log driver), and --workers N processes share
    that stdout. Each worker wrote a whole batch of lines (FLUSH_SECONDS of requests, often
    tens of KiB) in one write(); a write to a pipe is atomic only up to PIPE_BUF (4 KiB), so when
    the reader lagged (the pipe full) batches of two workers were cut into each other, in
    the middle of lines: with three workers under load and a slow reader, about one line in
    twenty was broken, and `cacheproxy logs` or any JSON reader lost them. Every line read
    from the shared pipe must be one whole JSON object."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="n", headers=MAX_AGE)

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    up = await origin(app)
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cacheproxy", "serve", "--listen", f"127.0.0.1:{port}",
        "--upstream", str(up.make_url("")), "--workers", "3", cwd=tmp_path,
        env=clean_env(CACHEPROXY_PROXY_SHUTDOWN_TIMEOUT="0"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True, limit=4096)  # (a small buffer: reads lag)
    assert proc.stdout is not None
    try:
        await accepting(port, 10)
        await asyncio.sleep(0.5)  # all three workers listening

        async def client(n: int) -> None:
            async with aiohttp.ClientSession() as http:
                for i in range(150):  # long paths: long lines, big batches
                    url = f"http://127.0.0.1:{port}/{'p' * 300}/{n}/{i % 10}"
                    async with http.get(url) as resp:
                        await resp.read()

        chunks: list[bytes] = []

        async def slow_reader() -> None:  # a log driver that lags behind the workers
            assert proc.stdout is not None
            while chunk := await proc.stdout.read(4096):
                chunks.append(chunk)
                await asyncio.sleep(0.002)

        reader = asyncio.ensure_future(slow_reader())
        await asyncio.gather(*(client(n) for n in range(30)))
        await asyncio.sleep(0.5)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 20)
    await asyncio.wait_for(reader, 20)
    lines = b"".join(chunks).split(b"\n")
    broken = []
    for line in lines:
        if line:
            try:
                json.loads(line)
            except ValueError:
                broken.append(line[:80])
    assert len(lines) > 1000
    assert broken == []
