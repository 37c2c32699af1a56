"""Regressions from the second reading of issue 5 (deployment, Redis, workers): each test
showed a defect against real servers on 127.0.0.1, a real redis-server and real
`cacheproxy serve` processes; the "Was:" line above it says what it was."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from processes import clean_env, start_serve, stop
from redis.asyncio import Redis

from cacheproxy.config import Config, load_config
from cacheproxy.proxy.server import OBSERVER, PROXY, make_app
from cacheproxy.proxy.server_protocol import ProxyAppRunner

MAX_AGE = {"Cache-Control": "max-age=60"}


class _ProxyServer(TestServer):
    """The proxy on the runner `cacheproxy serve` uses, with its request log."""

    async def _make_runner(self, **kwargs: Any) -> ProxyAppRunner:
        kwargs.update(self.app[OBSERVER].runner_args())
        return ProxyAppRunner(self.app, **kwargs)


async def start_proxy(aiohttp_client: Any, config: Config) -> TestClient:
    return await aiohttp_client(_ProxyServer(make_app(config), host="127.0.0.1"),
                                auto_decompress=False)


async def start_origin(aiohttp_server: Any, handler: Any) -> str:
    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    server = await aiohttp_server(app, host="127.0.0.1")
    return str(server.make_url("")).rstrip("/")


def config_file(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "cacheproxy.toml"
    path.write_text(text)
    return load_config(path, env={})


def children(pid: int) -> list[int]:
    return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def catches_sighup(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:  # gone meanwhile
        return False
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGHUP - 1)))
    return False


# -- cache keys (proxy/routing.py) --------------------------------------------------------------


# Was: X-Forwarded-Host (the client's Host) is sent upstream but left out of the key: one
# client's Host poisons the entry for everyone
async def test_the_host_a_client_sends_cannot_poison_the_entry_others_get(
        aiohttp_client, aiohttp_server):
    async def page(request: web.Request) -> web.Response:
        # What frameworks behind a proxy do: absolute URLs from X-Forwarded-Host. The origin
        # even says it varies on it; the proxy derives that header itself, so Vary can't help.
        host = request.headers.get("X-Forwarded-Host")
        return web.Response(text=f'<script src="https://{host}/app.js"></script>',
                            headers={**MAX_AGE, "Vary": "X-Forwarded-Host"})

    upstream = await start_origin(aiohttp_server, page)
    c = await start_proxy(aiohttp_client, dataclasses.replace(
        Config(), proxy=dataclasses.replace(Config().proxy, upstream=upstream)))
    await (await c.get("/", headers={"Host": "attacker.example"})).read()
    victim = await c.get("/", headers={"Host": "www.example"})
    assert "attacker.example" not in await victim.text()


# Was: the key names the upstream's host but not its path: two routes to one host under
# different paths share entries
async def test_routes_to_different_paths_on_one_origin_host_keep_apart(
        aiohttp_client, aiohttp_server, tmp_path):
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=request.path, headers=MAX_AGE)

    base = await start_origin(aiohttp_server, page)
    c = await start_proxy(aiohttp_client, config_file(tmp_path, f"""
[proxy]
upstream = "{base}/site-a"
[[routes]]
host = "b.example"
upstream = "{base}/site-b"
"""))
    assert await (await c.get("/x", headers={"Host": "a.example"})).text() == "/site-a/x"
    assert await (await c.get("/x", headers={"Host": "b.example"})).text() == "/site-b/x"


# Was: routes with one upstream share keys whatever their cache.shared: a private response
# stored for a shared = false route is a HIT for every client of the shared default route
async def test_a_private_cache_route_does_not_leak_into_a_shared_one(
        aiohttp_client, aiohttp_server, tmp_path):
    async def account(request: web.Request) -> web.Response:
        return web.Response(text="alice's account",
                            headers={"Cache-Control": "private, max-age=60"})

    base = await start_origin(aiohttp_server, account)
    c = await start_proxy(aiohttp_client, config_file(tmp_path, f"""
[proxy]
upstream = "{base}"
[[routes]]
host = "me.example"
upstream = "{base}"
[routes.cache]
shared = false
"""))
    await (await c.get("/account", headers={"Host": "me.example"})).read()
    other = await c.get("/account", headers={"Host": "www.example"})
    await other.read()
    assert other.headers["X-Cache"] != "HIT"


# Was: admin _key re-keys a full URL through the route its host matches: a key that entries
# lists for a non-default route cannot be purged by that key (404, another key tried)
async def test_a_key_the_admin_api_lists_can_be_purged_as_listed(
        aiohttp_client, aiohttp_server, tmp_path):
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="x", headers=MAX_AGE)

    main = await start_origin(aiohttp_server, page)
    other = await start_origin(aiohttp_server, page)
    c = await start_proxy(aiohttp_client, config_file(tmp_path, f"""
[proxy]
upstream = "{main}"
[[routes]]
host = "b.example"
upstream = "{other}"
"""))
    await (await c.get("/x", headers={"Host": "b.example"})).read()
    [listed] = (await (await c.get("/_cacheproxy/entries")).json())["entries"]
    purged = await c.post("/_cacheproxy/purge", params={"url": listed["key"]})
    assert purged.status == 200, await purged.text()


# -- the Redis store (store/redis.py) -----------------------------------------------------------


# Was: RedisStore refuses bodies over the top-level max_object_bytes fixed at start; a route's
# (or a reload's) larger limit is ignored while Cache-Status says 'stored'
async def test_a_route_max_object_bytes_applies_with_the_redis_store(
        aiohttp_client, aiohttp_server, tmp_path, redis_server):
    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 5000, headers=MAX_AGE)

    base = await start_origin(aiohttp_server, big)
    c = await start_proxy(aiohttp_client, config_file(tmp_path, f"""
[proxy]
upstream = "{base}"
[cache]
store = "redis"
redis_url = "{redis_server.url}"
max_object_bytes = 1000
[[routes]]
path_prefix = "/big/"
upstream = "{base}"
[routes.cache]
max_object_bytes = 100000
"""))
    first = await c.get("/big/x")
    await first.read()
    assert "stored" in first.headers["Cache-Status"]  # what the client is told
    second = await c.get("/big/x")
    await second.read()
    assert second.headers["X-Cache"] == "HIT"


# Was: clear() unlinks '{redis_prefix}*', not the entries' '{redis_prefix}e:*': with an empty
# prefix it wipes the whole database (an empty prefix is now refused at load, too)
async def test_clear_touches_only_the_caches_own_keys(
        aiohttp_client, aiohttp_server, tmp_path, redis_server):
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="a", headers=MAX_AGE)

    base = await start_origin(aiohttp_server, page)
    c = await start_proxy(aiohttp_client, config_file(tmp_path, f"""
[proxy]
upstream = "{base}"
[cache]
store = "redis"
redis_url = "{redis_server.url}"
redis_prefix = "cp"
"""))
    raw = Redis.from_url(redis_server.url)
    try:
        await raw.set("cpsession:42", "alice")  # another application's key, same database
        await (await c.get("/a")).read()
        cleared = await c.post("/_cacheproxy/clear")
        assert cleared.status == 200
        assert await raw.get("cpsession:42") == b"alice"
        assert (await cleared.json())["cleared"] == 1  # the one entry, counted
    finally:
        await raw.aclose()


# Was: serial.decode lets RecursionError (deeply nested JSON header) escape RedisStore.get: a
# damaged entry is a 500, not a miss
async def test_a_damaged_entry_in_redis_is_a_miss(
        aiohttp_client, aiohttp_server, tmp_path, redis_server):
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="fresh", headers=MAX_AGE)

    base = await start_origin(aiohttp_server, page)
    c = await start_proxy(aiohttp_client, config_file(tmp_path, f"""
[proxy]
upstream = "{base}"
[cache]
store = "redis"
redis_url = "{redis_server.url}"
"""))
    header = b"[" * 100_000
    raw = Redis.from_url(redis_server.url)
    try:
        key = c.server.app[PROXY].cache_key("http", f"127.0.0.1:{c.server.port}", "/a")
        await raw.hset(f"cacheproxy:e2:{key}", "[]",
                       b"CPR\x01" + len(header).to_bytes(4, "big") + header)
    finally:
        await raw.aclose()
    resp = await c.get("/a")
    assert resp.status == 200 and await resp.text() == "fresh"


# -- --workers (proxy/workers.py) ---------------------------------------------------------------


async def _via_values(port: int, seconds: float) -> set[str]:
    """Via of responses on new connections (spread over the workers), until an "old" one."""
    seen: set[str] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and "1.1 old" not in seen:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/n") as r:
            await r.read()
            seen.add(r.headers["Via"])
    return seen


# Was: the supervisor restarts a dead worker with the config it started with, not the one SIGHUP
# loaded: workers then disagree
async def test_a_worker_restarted_after_a_reload_runs_the_reloaded_config(
        aiohttp_server, tmp_path):
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="n", headers={"Cache-Control": "no-store"})

    upstream = await start_origin(aiohttp_server, page)
    conf = tmp_path / "c.toml"
    conf.write_text('[proxy]\nvia = "old"\n')
    env = clean_env(CACHEPROXY_PROXY_SHUTDOWN_TIMEOUT="0")
    proc, port = await start_serve("--config", str(conf), "--workers", "2",
                                   "--upstream", upstream, cwd=tmp_path, env=env)
    try:
        await asyncio.sleep(0.2)  # both workers listening
        conf.write_text('[proxy]\nvia = "new"\n')
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.2)
        assert await _via_values(port, 0.3) == {"1.1 new"}
        victim = children(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)  # a crash; the supervisor starts another
        for _ in range(100):
            kids = children(proc.pid)
            if victim not in kids and len(kids) == 2:
                break
            await asyncio.sleep(0.02)
        assert await _via_values(port, 1.2) == {"1.1 new"}
    finally:
        await stop(proc)


# Was: a worker keeps SIGHUP at SIG_DFL until its loop handles it (after the store starts): a
# reload then kills every starting worker, and 5 such deaths make the supervisor give up and
# exit 1
async def test_a_reload_while_the_workers_start_kills_none(tmp_path, redis_server):
    redis_server.pause()  # Redis hung at boot: each worker's start waits redis_timeout
    env = clean_env(CACHEPROXY_PROXY_SHUTDOWN_TIMEOUT="0", CACHEPROXY_CACHE_STORE="redis",
                    CACHEPROXY_CACHE_REDIS_URL=redis_server.url,
                    CACHEPROXY_CACHE_REDIS_TIMEOUT="1.0")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cacheproxy", "serve", "--listen", "127.0.0.1:0",
        "--upstream", "http://127.0.0.1:9", "--workers", "5", cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    died: set[int] = set()
    try:
        kids: list[int] = []
        for _ in range(400):  # the workers are forked and not serving yet
            kids = children(proc.pid) if proc.returncode is None else []
            if len(kids) == 5 and not any(catches_sighup(k) for k in kids):
                break
            await asyncio.sleep(0.005)
        proc.send_signal(signal.SIGHUP)  # e.g. `docker compose kill -s HUP` right after `up`
        for _ in range(150):  # until the supervisor has passed it on (0.5 s at most)
            died = set(kids) - set(children(proc.pid)) if proc.returncode is None else set()
            if died:
                break
            await asyncio.sleep(0.005)
    finally:
        redis_server.resume()
        if died:  # (its stop would wait on workers that lost their SIGTERM the same way)
            proc.send_signal(signal.SIGSTOP)
            for pid in children(proc.pid):
                os.kill(pid, signal.SIGKILL)
            proc.kill()
            await proc.wait()
        else:
            await stop(proc)
    assert not died, f"workers {sorted(died)} were killed by the reload"


# Was: the port holder binds with SO_REUSEPORT, so a second --workers instance on a busy port
# starts and silently shares its traffic
async def test_a_second_workers_instance_on_a_port_in_use_exits_1(tmp_path):
    env = clean_env(CACHEPROXY_PROXY_SHUTDOWN_TIMEOUT="0")
    first, port = await start_serve("--workers", "2", "--upstream", "http://127.0.0.1:9",
                                    cwd=tmp_path, env=env)
    second = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cacheproxy", "serve", "--listen", f"127.0.0.1:{port}",
        "--workers", "2", "--upstream", "http://127.0.0.1:9", cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        exited: int | None = await asyncio.wait_for(second.wait(), 5.0)  # (a slow start)
    except TimeoutError:
        exited = None  # still running beside the first
    finally:
        await asyncio.gather(stop(first), stop(second))
    assert exited == 1, "a port already in use exits with code 1 (README, Running it)"

