"""Review of reloading a running proxy's configuration (SIGHUP, `cacheproxy reload`), with
and without --workers, with the memory store and Redis, in front of real origins on
127.0.0.1.

What was looked at: requests in flight across a reload (their CORS grant, Referrer-Policy
and route stay those they started with; Via and Cache-Status too, now); collapsed waiters
and requests arriving just after a reload (served the stored answer of a fetch begun
before it, as any stored entry is: the README's "a reload does not purge"); quick hits
and quick forwards on a keep-alive connection across 30 reloads that swap a route's
upstream (each request after a reload goes where the new config says); a reload storm
(10 SIGHUPs in a second, alternating upstream, CORS and log.path, under 6 clients: every
answer a 200, with 1 and 2 workers, memory and Redis); an invalid config (refused naming
the key, the old one serving; files that are not UTF-8, not TOML or a directory too); the
settings that take effect at a restart (listen, workers, store: warned, kept);
cache.max_bytes (now applied at once to the memory store, its accounting checked; a
restart with Redis); log.path changed (reopened); what a
refused reload leaves behind in the --workers supervisor; the default config file gone at
a reload; idle pooled connections to an upstream a reload no longer routes to; CORS mode
switched both ways; and stored entries whose freshness came from a config value
(cache.heuristic_*: figured when stored, as nginx's proxy_cache_valid and Varnish's TTL
are, not again at each lookup as Squid's refresh_pattern is).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from processes import start_serve
from support import cache_status, until
from test_process_life import StderrLines
from test_review_workers_regressions import _workers_of, versioned_origin

from cacheproxy.proxy.server import reconfigure


async def test_a_reload_the_workers_refuse_is_not_what_a_restarted_worker_runs(
        origin: Any, tmp_path: Path) -> None:
    """With --workers, a reload whose log.path cannot be opened was refused by each worker
    (one line each), but the supervisor, which had not tried the file, kept the refused
    config as the one a restarted worker runs. The next worker death (an OOM kill, a
    crash) then started a worker that could not open its log: "a worker could not start;
    stopping", and the whole server exited 1, minutes or days after a reload the log said
    was refused. nginx's master checks a new configuration whole (its files opened) before
    any worker gets it, and keeps the old one for new workers when it fails. Now the
    supervisor makes the checks the workers make (log.path opened, routes built, the local
    CA, an upstream to send to) and, refusing, says so once and signals no worker.
    Severity: high (an outage, later, from a refused reload)."""
    up, _ = await versioned_origin(origin)
    config = tmp_path / "cacheproxy.toml"
    good = f'[proxy]\nupstream = "{up.make_url("")}"\n'
    config.write_text(good + f'[log]\npath = "{tmp_path / "requests.log"}"\n')
    proc, port = await start_serve("--config", str(config), "--workers", "2", cwd=tmp_path)
    err = StderrLines(proc)
    try:
        for _ in range(2):
            await err.wait_for("listening on")
        config.write_text(good + f'[log]\npath = "{tmp_path / "no" / "such" / "x.log"}"\n')
        proc.send_signal(signal.SIGHUP)
        refused = await err.wait_for("reload refused")
        assert "log.path" in refused, refused
        victim = _workers_of(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)  # an OOM kill
        await err.wait_for(f"worker {victim} exited")
        # The worker started in its place listens (3 "listening" lines), or the server
        # gives up (it exits): whichever comes first.
        assert await until(lambda: proc.returncode is not None or sum(
            "listening on" in line for line in err.lines) == 3, 15), err.lines
        assert proc.returncode is None, "".join(err.lines)
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{port}/a") as resp:
            assert resp.status == 200
    finally:
        if proc.returncode is None:
            proc.terminate()
        code = await proc.wait()
        text = await err.close()
    assert sum("reload refused" in line for line in text.splitlines()) == 1, text
    assert code == 0 and "Traceback" not in text, text


async def _held_origin(origin: Any, fields: dict[str, str]) -> tuple[Any, asyncio.Event,
                                                                      asyncio.Event]:
    """An origin whose answer (fields) waits for the test: arrived is set when a request
    reaches it, and it answers once go is set."""
    arrived, go = asyncio.Event(), asyncio.Event()

    async def held(request: web.Request) -> web.Response:
        arrived.set()
        await go.wait()
        return web.Response(text="x", headers=fields)

    app = web.Application()
    app.router.add_get("/{tail:.*}", held)
    return await origin(app), arrived, go


def _reloaded(client: Any, **sections: dict[str, Any]) -> None:
    """What SIGHUP does, in the test's process: the running config with sections changed."""
    config = client.app_proxy.config
    reconfigure(client.server.app, dataclasses.replace(config, **{
        name: dataclasses.replace(getattr(config, name), **values)
        for name, values in sections.items()}))


async def test_a_request_in_flight_keeps_the_via_name_it_started_with(
        origin: Any, proxy: Any) -> None:
    """README, SIGHUP: "A request in flight finishes under the config it started with". Its
    CORS grant and Referrer-Policy do, but a reload that renames the cache (proxy.via)
    while a miss waits for its origin gives that miss's answer the new name in Via and
    Cache-Status, beside the old config's grant, and upstream it went with the old name
    (a loop check or a log reader tying Via to a config sees one answer of two configs).
    Now the answers to a request in flight (relayed, replayed from storage, a 304, an
    error) take the name from the request's route plan, made with the config it started
    under; a hit answered without waiting (proxy/quick.py) takes the running one, as it
    always starts and ends under one config. Severity: low (a pseudonym, on answers in
    flight at the reload)."""
    up, arrived, go = await _held_origin(origin, {"Cache-Control": "max-age=60"})
    c = await proxy(up, proxy={"via": "edge-1"})
    pending = asyncio.ensure_future(c.get("/a"))
    await arrived.wait()
    _reloaded(c, proxy={"via": "edge-2"})
    go.set()
    resp = await pending
    assert resp.status == 200
    assert resp.headers["Via"] == "1.1 edge-1", resp.headers
    assert cache_status(resp).startswith("edge-1;"), resp.headers


async def test_a_reload_that_stops_overriding_cors_serves_the_upstreams_grant(
        origin: Any, proxy: Any) -> None:
    """With the proxy's CORS on (mode override), the upstream's own CORS fields are left out
    of what is stored. A reload that turns the proxy's grants off (allow_origins = [], or
    mode = "passthrough") means to let the upstream's grant through; but the entries stored
    before keep being served, as hits, without it, until they expire: a browser's fetch
    from a page the upstream grants (Access-Control-Allow-Origin: *) is "blocked by CORS
    policy" for as long as the entry's max-age (a day, for some APIs). nginx and Varnish
    store the upstream's fields and apply add_header / VCL on the way out, so a reload
    changes what the next hit carries. Now so does this proxy: the upstream's fields are
    stored whatever the mode, and the mode in force applies on the way out (more in
    test_review_corsreload_regressions.py). Severity: medium (a config change that breaks
    browser clients until a purge or the entries' expiry)."""
    calls = []

    async def api(request: web.Request) -> web.Response:
        calls.append(request.path)
        return web.Response(text="d", headers={"Cache-Control": "max-age=600",
                                               "Access-Control-Allow-Origin": "*"})

    app = web.Application()
    app.router.add_get("/api", api)
    c = await proxy(await origin(app), cors={"allow_origins": ("https://admin.example",)})
    page = {"Origin": "https://app.example"}
    assert (await c.get("/api", headers=page)).status == 200  # stored, its grant left out
    _reloaded(c, cors={"allow_origins": ()})  # the proxy grants nothing: the upstream's go
    resp = await c.get("/api", headers=page)
    assert resp.status == 200
    assert resp.headers.get("Access-Control-Allow-Origin") == "*", (resp.headers, calls)


async def test_a_reload_closes_idle_connections_to_an_upstream_it_no_longer_routes_to(
        origin: Any, proxy: Any) -> None:
    """A reload that moves proxy.upstream (or a route) from one origin to another left the
    pooled idle connections to the old one open until proxy.upstream_keepalive_timeout:
    nothing would use them again, yet the old origin, being drained for decommissioning,
    still saw the proxy's connections (for a minute with a keepalive of 60 s) and they
    counted against proxy.max_connections. nginx's old workers close their idle upstream
    keepalive connections at a reload. Now a reload closes at once the idle connections
    to the origins no route sends to any more; one in use finishes its exchange and then
    closes at its keepalive deadline. Severity: low."""
    closed = asyncio.Event()

    async def old(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"
                             b"Cache-Control: no-store\r\n\r\nold")
        except (asyncio.IncompleteReadError, ConnectionError):
            closed.set()  # the proxy closed its connection
        finally:
            writer.close()

    server = await asyncio.start_server(old, "127.0.0.1", 0)
    new = await origin(web.Application())
    try:
        port = server.sockets[0].getsockname()[1]
        c = await proxy(f"http://127.0.0.1:{port}", proxy={"upstream_keepalive_timeout": 60})
        assert await (await c.get("/a")).text() == "old"  # its connection is pooled, idle
        _reloaded(c, proxy={"upstream": str(new.make_url("")).rstrip("/")})
        assert await until(closed.is_set, 5)
    finally:
        server.close()


async def test_a_reload_leaves_the_freshness_stored_entries_were_given(
        origin: Any, proxy: Any) -> None:
    """What README is to say (found right, pinned): a stored entry's freshness lifetime is
    figured when it is stored, with the config of then (cache.heuristic_fraction and
    heuristic_max_age for a response with Last-Modified alone, RFC 9111 §4.2.2), and kept
    with it (in Redis too): a reload that lowers heuristic_max_age applies to what is
    stored from then on, not to the entries already stored, which stay fresh as long as
    they were given (nginx's proxy_cache_valid and Varnish's TTL alike; Squid's
    refresh_pattern is applied again at each lookup). Purging applies it at once."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="p", headers={
            "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"})  # long ago: a day's cap

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    c = await proxy(await origin(app), cache={"heuristic_max_age": 3600.0})

    async def ttl(path: str) -> float:
        member = cache_status(await c.get(path))
        return float(member.split("ttl=")[1].split(";")[0])

    assert 3500 < await ttl("/old") <= 3600  # stored: fresh for an hour
    _reloaded(c, cache={"heuristic_max_age": 60.0})
    assert 3500 < await ttl("/old") <= 3600  # a hit, as fresh as it was stored
    assert 50 < await ttl("/new") <= 60  # stored since: the new bound


async def test_a_reload_without_the_default_config_file_it_started_with_is_refused(
        origin: Any, tmp_path: Path) -> None:
    """`cacheproxy serve` without --config reads ./config/cacheproxy.toml when it exists;
    its reloads looked again, and when the file was not there at that moment (moved
    aside while being edited, a deploy replacing the directory, a checkout of another
    branch) they silently applied the defaults with the flags and environment:
    "configuration reloaded", and the routes, CORS grants, hotlink gate, admin token and
    log.path of the file were gone (here the Via name reverts to "cacheproxy"). README:
    a reload reads "the same file". nginx refuses a reload whose file it cannot read,
    and keeps running the old configuration. Now the file the start read is the one
    every reload reads, and its absence is refused naming it. Severity: medium (a
    silent reset of every policy by a reload at the wrong moment)."""
    up, _ = await versioned_origin(origin)
    (tmp_path / "config").mkdir()
    file = tmp_path / "config" / "cacheproxy.toml"
    file.write_text('[proxy]\nvia = "edge-1"\n')
    proc, port = await start_serve("--upstream", str(up.make_url("")), cwd=tmp_path)
    err = StderrLines(proc)
    try:
        file.rename(tmp_path / "cacheproxy.toml.editing")
        proc.send_signal(signal.SIGHUP)
        line = await err.wait_for("reload")
        assert "refused" in line and "config/cacheproxy.toml" in line, line
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{port}/a") as resp:
            assert resp.headers["Via"] == "1.1 edge-1"
    finally:
        proc.terminate()
        code = await proc.wait()
        text = await err.close()
    assert code == 0 and "Traceback" not in text, text


async def test_a_reload_storm_under_load_answers_every_request(
        origin: Any, tmp_path: Path) -> None:
    """Found right, pinned: 10 SIGHUPs in a second, each config swapping the upstream, the
    Via name, the CORS grant and log.path, while 4 keep-alive clients ask for cached,
    uncacheable and slow URLs, with --workers 2: every answer is a 200, the last config
    is the one that serves, and the server stops cleanly. (A reload is done between two
    loop iterations; signals that come while one is done are coalesced, as nginx's.)"""
    def site(name: str) -> web.Application:
        async def page(request: web.Request) -> web.Response:
            if request.path.startswith("/slow"):
                await asyncio.sleep(0.2)  # (the origin's pace: in flight across reloads)
            return web.Response(text=name, headers={"Cache-Control": "max-age=60"
                                if request.path.startswith("/c") else "no-store"})

        app = web.Application()
        app.router.add_get("/{tail:.*}", page)
        return app

    sites = [await origin(site("a")), await origin(site("b"))]
    config = tmp_path / "cacheproxy.toml"

    def write(i: int) -> None:
        config.write_text(f'[proxy]\nupstream = "{sites[i % 2].make_url("")}"\nvia = "v{i}"\n'
                          f'[cors]\nallow_origins = ["https://o{i}.example"]\n'
                          f'[log]\npath = "{tmp_path / f"requests{i % 3}.log"}"\n')

    write(0)
    proc, port = await start_serve("--config", str(config), "--workers", "2", cwd=tmp_path)
    err = StderrLines(proc)
    statuses: list[int] = []
    storming = True

    async def client(k: int) -> None:
        async with aiohttp.ClientSession() as http:
            i = 0
            while storming:
                i += 1
                path = (f"/c/{i % 5}", f"/f/{k}-{i}", f"/slow/{k}-{i}")[i % 3]
                async with http.get(f"http://127.0.0.1:{port}{path}") as resp:
                    await resp.read()
                    statuses.append(resp.status)

    async def storm() -> None:
        nonlocal storming
        for i in range(1, 11):
            write(i)
            proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.1)  # (the storm's pace, not a wait for an outcome)
        storming = False

    async def last_config_serves() -> bool:
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{port}/f/last") as resp:
            return resp.headers["Via"] == "1.1 v10" and await resp.text() == "a"

    try:
        await asyncio.gather(storm(), *(client(k) for k in range(4)))
        for _ in range(20):  # new connections: either worker (the kernel picks)
            assert await until_async(last_config_serves, 5), err.lines
    finally:
        proc.terminate()
        code = await proc.wait()
        text = await err.close()
    assert statuses and set(statuses) == {200}, statuses
    assert code == 0 and "Traceback" not in text and "refused" not in text, text


async def until_async(check: Any, timeout: float) -> bool:
    """until() for an asynchronous check: polled until it holds or timeout passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_a_reload_that_lowers_cache_max_bytes_shrinks_the_memory_store_at_once(
        origin: Any, proxy: Any) -> None:
    """cache.max_bytes took effect only at a restart: an operator lowering it because the
    process was near its memory limit was told so in the log, and the only way to apply
    it was a restart, which empties the memory store whole (every URL a miss at once, on
    the origin). nginx's cache manager trims the cache to a new max_size after a reload,
    and Squid applies a new cache_mem at a reconfigure. Now a reload bounds the memory
    store at once: lowered, its least recently used entries go (counted as evictions)
    until what it holds fits, and the byte count stays the sum of what it holds; raised,
    it takes more. (With the Redis store the bound is Redis's maxmemory: a restart, as
    before.) Severity: medium (an operator under memory pressure had to drop the cache)."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 4000, headers={"Cache-Control": "max-age=600"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    c = await proxy(await origin(app), cache={"max_bytes": 64 * 1024})
    store = c.app_proxy.store
    for i in range(12):
        await (await c.get(f"/p{i}")).read()
    await (await c.get("/p0")).read()  # the most recently used, now
    before = store.stats()
    assert before.entries == 12 and before.bytes > 16 * 1024

    _reloaded(c, cache={"max_bytes": 16 * 1024})
    after = store.stats()
    assert after.max_bytes == 16 * 1024 and 0 < after.bytes <= 16 * 1024, after
    assert after.evictions - before.evictions == 12 - after.entries, after
    held = [key for key in await store.keys() if store.peek(key)]
    assert sum(v.size for key in held for v in store.peek(key)) == after.bytes
    assert any(key.endswith("/p0") for key in held), held  # the LRU's tail went first
    assert (await c.get("/p0")).headers["X-Cache"] == "HIT"

    _reloaded(c, cache={"max_bytes": 1024 * 1024})  # raised: room for them all again
    for i in range(12):
        await (await c.get(f"/p{i}")).read()
    assert store.stats().entries == 12 and store.stats().bytes > 16 * 1024


async def test_with_the_redis_store_cache_max_bytes_still_waits_for_a_restart(
        origin: Any, proxy: Any, redis_server: Any, caplog: Any) -> None:
    """The other side of the test above: with cache.store = "redis" the bound is Redis's
    maxmemory (cache.max_bytes is only the figure its stats show without one), so a reload
    that changes it still says it takes effect at the next restart, and changes nothing."""
    app = web.Application()
    c = await proxy(await origin(app),
                    cache={"store": "redis", "redis_url": redis_server.url})
    figure = c.app_proxy.store.stats().max_bytes
    _reloaded(c, cache={"max_bytes": 1024 * 1024})
    assert any("cache.max_bytes changed; it takes effect at the next restart"
               in r.getMessage() for r in caplog.records), caplog.records
    assert c.app_proxy.store.stats().max_bytes == figure
