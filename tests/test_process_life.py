"""Process life (issue 5): health endpoints, graceful SIGTERM, SIGHUP reload, --workers.

The process tests run `cacheproxy serve` for real, in front of an aiohttp origin in the
test's own loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Any

import aiohttp
from aiohttp import web
from processes import clean_env, free_port, start_serve, stop

from cacheproxy.proxy.server import HEALTH


async def counting_origin(origin: Any, slow_seconds: float = 1.0) -> tuple[Any, dict[str, Any]]:
    """/n: cacheable, counted; /slow: answers after slow_seconds (started is set on arrival)."""
    state: dict[str, Any] = {"hits": 0, "started": asyncio.Event()}

    async def counted(request: web.Request) -> web.Response:
        state["hits"] += 1
        return web.Response(text="counted", headers={"Cache-Control": "max-age=60"})

    async def slow(request: web.Request) -> web.Response:
        state["started"].set()
        await asyncio.sleep(slow_seconds)
        return web.Response(body=b"x" * 100_000, headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_get("/n", counted)
    app.router.add_get("/slow", slow)
    return await origin(app), state


class StderrLines:
    """Collects a process's stderr as it comes, so a test can wait for a line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.lines: list[str] = []
        self._task = asyncio.ensure_future(self._read(proc))

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for line in proc.stderr:
            self.lines.append(line.decode(errors="replace"))

    async def wait_for(self, text: str, seconds: float = 10) -> str:
        for _ in range(int(seconds / 0.02)):
            found = [line for line in self.lines if text in line]
            if found:
                return found[-1]
            await asyncio.sleep(0.02)
        raise AssertionError(f"{text!r} not in stderr: {''.join(self.lines)}")

    async def close(self) -> str:
        await asyncio.wait_for(self._task, 10)
        return "".join(self.lines)


async def keepalive_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        path: str) -> tuple[int, dict[str, str]]:
    """One GET on an open connection, leaving it open; the status and fields."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode()
    status_line, *lines = head.strip().split("\r\n")
    fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    await reader.readexactly(int(fields["content-length"]))
    return int(status_line.split()[1]), fields


# -- health -----------------------------------------------------------------------------------


async def test_healthz_is_alive_and_readyz_checks_the_upstream(proxy, origin):
    up, _ = await counting_origin(origin)
    client = await proxy(up)
    health = await client.get("/_cacheproxy/healthz")
    assert health.status == 200 and (await health.json()) == {"alive": True}
    assert health.headers["Cache-Control"] == "no-store"
    ready = await client.get("/_cacheproxy/readyz")
    body = await ready.json()
    assert ready.status == 200 and body["ready"] is True
    assert body["checks"] == {"upstreams": {"upstream[0]": "up"}, "store": "up"}


async def test_readyz_is_503_when_the_upstream_refuses_connections(proxy):
    client = await proxy(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    ready = await client.get("/_cacheproxy/readyz")
    assert ready.status == 503
    assert (await ready.json())["checks"]["upstreams"] == {"upstream[0]": "down"}
    # Liveness is about the process, not the origin.
    assert (await client.get("/_cacheproxy/healthz")).status == 200


async def test_readyz_is_503_while_draining(proxy, origin):
    up, _ = await counting_origin(origin)
    client = await proxy(up)
    client.server.app[HEALTH].draining = True
    ready = await client.get("/_cacheproxy/readyz")
    assert ready.status == 503 and (await ready.json())["draining"] is True


async def test_health_endpoints_need_no_token_when_one_is_set(proxy, origin):
    up, _ = await counting_origin(origin)
    client = await proxy(up, admin={"token": "s3cret"})
    assert (await client.get("/_cacheproxy/healthz")).status == 200
    assert (await client.get("/_cacheproxy/readyz")).status == 200
    assert (await client.get("/_cacheproxy/stats")).status == 401  # the rest stays protected


# -- SIGTERM ----------------------------------------------------------------------------------


async def test_sigterm_finishes_the_request_in_flight_and_refuses_new_ones(origin, tmp_path):
    up, state = await counting_origin(origin, slow_seconds=1.0)
    proc, port = await start_serve("--upstream", str(up.make_url("")), cwd=tmp_path)
    async with aiohttp.ClientSession() as http:
        slow = asyncio.ensure_future(http.get(f"http://127.0.0.1:{port}/slow"))
        await asyncio.wait_for(state["started"].wait(), 10)
        proc.send_signal(signal.SIGTERM)
        refused = False
        for _ in range(100):  # the listening socket closes at once
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
            except OSError:
                refused = True
                break
            await asyncio.sleep(0.01)
        assert refused, "still accepting connections after SIGTERM"
        assert not slow.done()
        response = await asyncio.wait_for(slow, 10)
        assert response.status == 200
        assert await response.read() == b"x" * 100_000
    code, err = await stop(proc)
    assert code == 0 and "Traceback" not in err
    assert "finishing requests in flight" in err


async def test_with_admin_listen_readyz_answers_503_while_the_proxy_drains(origin, tmp_path):
    """README: readyz answers 503 while it drains. admin.listen used to close before the
    drain began, so a probe got a refused connection instead."""
    up, state = await counting_origin(origin, slow_seconds=2.0)
    admin = free_port()
    env = clean_env(CACHEPROXY_ADMIN_LISTEN=f"127.0.0.1:{admin}")
    proc, port = await start_serve("--upstream", str(up.make_url("")), cwd=tmp_path, env=env)
    async with aiohttp.ClientSession() as http:
        slow = asyncio.ensure_future(http.get(f"http://127.0.0.1:{port}/slow"))
        await asyncio.wait_for(state["started"].wait(), 10)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        ready = await http.get(f"http://127.0.0.1:{admin}/_cacheproxy/readyz")
        assert ready.status == 503 and (await ready.json())["draining"] is True
        response = await asyncio.wait_for(slow, 10)
        assert response.status == 200
        await response.read()
    code, err = await stop(proc)
    assert code == 0 and "Traceback" not in err


async def test_sigterm_does_not_wait_longer_than_shutdown_timeout(origin, tmp_path):
    up, state = await counting_origin(origin, slow_seconds=30)
    env = clean_env(CACHEPROXY_PROXY_SHUTDOWN_TIMEOUT="0.5")
    proc, port = await start_serve("--upstream", str(up.make_url("")), cwd=tmp_path, env=env)
    async with aiohttp.ClientSession() as http:
        slow = asyncio.ensure_future(http.get(f"http://127.0.0.1:{port}/slow"))
        await asyncio.wait_for(state["started"].wait(), 10)
        loop = asyncio.get_running_loop()
        signalled = loop.time()
        proc.send_signal(signal.SIGTERM)
        code, err = await stop(proc, timeout=20)
        took = loop.time() - signalled
        assert code == 0 and "Traceback" not in err
        assert took < 10, f"took {took:.1f}s to stop with shutdown_timeout 0.5"
        try:
            response = await slow
            status = response.status
            await response.read()
        except aiohttp.ClientError:
            status = None  # cut off: the connection closed without a complete answer
        assert status != 200 or state["hits"] == 0


# -- SIGHUP -----------------------------------------------------------------------------------


async def test_sighup_reloads_the_config_on_an_open_connection(origin, tmp_path):
    up, _ = await counting_origin(origin)
    config = tmp_path / "cacheproxy.toml"
    config.write_text(f'[proxy]\nupstream = "{up.make_url("")}"\nvia = "edge-1"\n')
    proc, port = await start_serve("--config", str(config), cwd=tmp_path)
    err = StderrLines(proc)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    status, fields = await keepalive_get(reader, writer, "/n")
    assert status == 200 and fields["via"].endswith("edge-1")
    config.write_text(f'[proxy]\nupstream = "{up.make_url("")}"\nvia = "edge-2"\n')
    proc.send_signal(signal.SIGHUP)
    await err.wait_for("configuration reloaded")
    # The same connection, still open, now sees the new config.
    status, fields = await keepalive_get(reader, writer, "/n")
    assert status == 200 and fields["via"].endswith("edge-2")
    assert "edge-2" in fields["cache-status"] and fields["x-cache"] == "HIT"  # cache kept
    writer.close()
    proc.terminate()
    assert await asyncio.wait_for(proc.wait(), 15) == 0
    assert "Traceback" not in await err.close()


async def test_an_invalid_config_on_sighup_is_refused_and_the_old_one_stays(origin, tmp_path):
    up, _ = await counting_origin(origin)
    config = tmp_path / "cacheproxy.toml"
    good = f'[proxy]\nupstream = "{up.make_url("")}"\nvia = "edge-1"\n'
    config.write_text(good)
    proc, port = await start_serve("--config", str(config), cwd=tmp_path)
    err = StderrLines(proc)
    config.write_text(good + '[cache]\nmax_object_bytes = "lots"\n')
    proc.send_signal(signal.SIGHUP)
    line = await err.wait_for("reload refused")
    assert "cache.max_object_bytes" in line and "running configuration stays" in line
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{port}/n") as response:
        assert response.status == 200 and response.headers["Via"].endswith("edge-1")
    # A setting that needs a restart is named, and the rest of the reload applies.
    config.write_text(good.replace("edge-1", "edge-3") + '[cache]\nfill_buffer_bytes = "128MiB"\n')
    proc.send_signal(signal.SIGHUP)
    await err.wait_for("cache.fill_buffer_bytes changed; it takes effect at the next restart")
    await err.wait_for("configuration reloaded")
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{port}/n") as response:
        assert response.headers["Via"].endswith("edge-3")
    proc.terminate()
    assert await asyncio.wait_for(proc.wait(), 15) == 0
    assert "Traceback" not in await err.close()


async def test_sighup_switches_the_request_log_format(origin, tmp_path):
    up, _ = await counting_origin(origin)
    config, log = tmp_path / "cacheproxy.toml", tmp_path / "requests.log"
    base = f'[proxy]\nupstream = "{up.make_url("")}"\n[log]\npath = "{log}"\n'
    config.write_text(base + 'format = "json"\n')
    proc, port = await start_serve("--config", str(config), cwd=tmp_path)
    err = StderrLines(proc)
    async with aiohttp.ClientSession() as http:
        await (await http.get(f"http://127.0.0.1:{port}/n?json")).read()
        config.write_text(base + 'format = "text"\n')
        proc.send_signal(signal.SIGHUP)
        await err.wait_for("configuration reloaded")
        await (await http.get(f"http://127.0.0.1:{port}/n?text")).read()
    proc.terminate()
    assert await asyncio.wait_for(proc.wait(), 15) == 0
    lines = log.read_text().splitlines()
    json_lines = [line for line in lines if line.startswith("{")]
    text_lines = [line for line in lines if line.startswith("127.0.0.1 - ")]
    assert any("/n?json" in line for line in json_lines)
    assert any("/n?text" in line for line in text_lines)


# -- --workers --------------------------------------------------------------------------------


async def test_workers_share_the_port_each_with_its_own_memory_store(origin, tmp_path):
    up, state = await counting_origin(origin)
    proc, port = await start_serve("--upstream", str(up.make_url("")), "--workers", "2",
                                   cwd=tmp_path)
    err = StderrLines(proc)
    await err.wait_for("2 workers on")
    for _ in range(2):  # both workers listening
        await err.wait_for("listening on")
    caches = []
    for _ in range(40):  # a new connection each time: the kernel picks a worker
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{port}/n") as response:
            assert response.status == 200
            caches.append(response.headers["X-Cache"])
    # One miss per worker's own memory store (40 connections all landing on one of two
    # workers would happen once in 2**39 runs).
    assert caches.count("MISS") == 2 and state["hits"] == 2
    proc.send_signal(signal.SIGHUP)  # passed on: each worker reloads
    for _ in range(40):
        if sum("configuration reloaded" in line for line in err.lines) >= 2:
            break
        await asyncio.sleep(0.05)
    assert sum("configuration reloaded" in line for line in err.lines) == 2
    proc.terminate()
    assert await asyncio.wait_for(proc.wait(), 20) == 0
    assert "Traceback" not in await err.close()


async def test_workers_restart_a_worker_that_dies(origin, tmp_path):
    up, _ = await counting_origin(origin)
    proc, port = await start_serve("--upstream", str(up.make_url("")), "--workers", "2",
                                   cwd=tmp_path)
    err = StderrLines(proc)
    for _ in range(2):
        await err.wait_for("listening on")
    line = await err.wait_for("listening on")
    pid_list = (await asyncio.create_subprocess_exec(
        "pgrep", "-P", str(proc.pid), stdout=asyncio.subprocess.PIPE)).stdout
    assert pid_list is not None
    children = [int(p) for p in (await pid_list.read()).split()]
    assert len(children) == 2, line
    victim = children[0]
    os.kill(victim, signal.SIGKILL)
    await err.wait_for(f"worker {victim} exited")
    for _ in range(100):
        if sum("listening on" in x for x in err.lines) >= 3:
            break
        await asyncio.sleep(0.05)
    assert sum("listening on" in x for x in err.lines) == 3
    async with aiohttp.ClientSession() as http:
        for _ in range(10):
            async with http.get(f"http://127.0.0.1:{port}/n") as response:
                assert response.status == 200
    proc.terminate()
    assert await asyncio.wait_for(proc.wait(), 20) == 0


async def test_workers_with_the_redis_store_share_one_cache(origin, tmp_path, redis_server):
    up, state = await counting_origin(origin)
    env = clean_env(CACHEPROXY_CACHE_STORE="redis", CACHEPROXY_CACHE_REDIS_URL=redis_server.url)
    proc, port = await start_serve("--upstream", str(up.make_url("")), "--workers", "2",
                                   cwd=tmp_path, env=env)
    err = StderrLines(proc)
    for _ in range(2):
        await err.wait_for("listening on")
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{port}/n") as first:
        assert first.headers["X-Cache"] == "MISS"
    await asyncio.sleep(0.2)  # stored in Redis once its body is in
    caches = []
    for _ in range(40):  # new connections: both workers answer some
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{port}/n") as response:
            caches.append(response.headers["X-Cache"])
    assert set(caches) == {"HIT"} and state["hits"] == 1  # one origin fetch for both workers
    proc.terminate()
    assert await asyncio.wait_for(proc.wait(), 20) == 0
    assert "Traceback" not in await err.close()


async def test_sigterm_repeated_while_it_stops_still_ends_in_a_clean_exit(origin, tmp_path):
    """A supervisor (or a script) that sends SIGTERM again while the process stops must
    not turn its clean exit (0) into a kill by the signal (-15)."""
    up, _ = await counting_origin(origin, slow_seconds=0.1)
    proc, _ = await start_serve("--upstream", str(up.make_url("")), cwd=tmp_path)
    proc.send_signal(signal.SIGTERM)
    while proc.returncode is None:  # again and again, until it is gone
        with contextlib.suppress(ProcessLookupError):  # (os.kill: send_signal would reap
            os.kill(proc.pid, signal.SIGTERM)  # it, ahead of asyncio's child watcher)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 0.002)
    code, err = await stop(proc)
    assert code == 0 and "Traceback" not in err
