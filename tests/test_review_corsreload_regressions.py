"""Review of stored entries and the CORS mode across a reload (SIGHUP, `cacheproxy reload`),
with the memory store and with Redis, in front of real origins on 127.0.0.1.

What was looked at: what a stored entry holds of the upstream's own CORS fields under
`cors.mode = "override"` and `"passthrough"`; what the first hit after a reload that
switches the mode carries (the Plain replay of a request without Origin, and the full
path's answer to one with Origin), with no origin request; a 304 revalidation of an entry
stored under the other mode; an origin that copies the request's Origin into its grant
(with and without saying `Vary: Origin`); and Redis, read by a replica that runs the
other mode. nginx (`add_header` / `proxy_hide_header`) and Varnish (VCL in `vcl_deliver`)
store the upstream's fields and apply the CORS policy on the way out, so a reload changes
what the next hit carries; so does this proxy now.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from processes import start_serve
from redis_server import RedisServer
from support import cache_status
from test_process_life import StderrLines
from test_proxy_redis import SHARED_KEYS, redis_cache
from test_review_reload_regressions import _reloaded

ADMIN = ("https://admin.example",)  # the proxy's own grant (override)
PAGE = {"Origin": "https://app.example"}  # a page the upstream grants, the proxy not


def _api(calls: list[dict[str, str]], fields: dict[str, str]) -> web.Application:
    """An origin answering /api with fields (and "d"), counting the requests it sees."""
    async def api(request: web.Request) -> web.Response:
        calls.append(dict(request.headers))
        return web.Response(text="d", headers=fields)

    app = web.Application()
    app.router.add_get("/api", api)
    return app


@pytest.fixture(params=["memory", "redis"])
def store(request: Any) -> dict[str, Any]:
    """The [cache] section: the memory store, or Redis with no memory layer (every hit is
    read from Redis, as another replica's is)."""
    if request.param == "memory":
        return {}
    server: RedisServer = request.getfixturevalue("redis_server")
    return redis_cache(server, memory_layer_bytes=0)


async def test_a_reload_from_override_to_passthrough_serves_the_stored_upstream_grant(
        origin: Any, proxy: Any, store: dict[str, Any]) -> None:
    """Under cors.mode = "override" the upstream's own CORS fields were left out of what
    was stored. After a reload to "passthrough" the stored entries kept being served, as
    hits, without the upstream's grant until they expired: a browser's fetch() from a
    page the upstream grants ("*") was "blocked by CORS policy" for the entry's max-age,
    and a request without Origin lost Access-Control-Expose-Headers too. nginx and
    Varnish store the upstream's fields and apply add_header / VCL on the way out. Now
    the upstream's answer is stored whole and the mode in force when it goes out decides
    (Fetch §3.2.3; RFC 9111 §3: the response is stored). Severity: medium (a config
    change that breaks browser clients until a purge or the entries' expiry)."""
    calls: list[dict[str, str]] = []
    cors = {"Cache-Control": "max-age=600", "Access-Control-Allow-Origin": "*",
            "Access-Control-Expose-Headers": "X-Total"}
    c = await proxy(await origin(_api(calls, cors)), cache=store,
                    cors={"allow_origins": ADMIN})
    first = await c.get("/api", headers=PAGE)
    assert first.status == 200 and "Access-Control-Allow-Origin" not in first.headers
    admin = await c.get("/api", headers={"Origin": ADMIN[0]})  # override: the proxy's
    assert admin.headers.getall("Access-Control-Allow-Origin") == [ADMIN[0]]
    assert "Access-Control-Expose-Headers" not in admin.headers, admin.headers
    assert "hit" in cache_status(admin)
    _reloaded(c, cors={"allow_origins": ADMIN, "mode": "passthrough"})
    for fields in (PAGE, {"Origin": ADMIN[0]}, {}):  # full path, and the Plain replay
        resp = await c.get("/api", headers=fields)
        assert resp.status == 200 and await resp.text() == "d"
        assert "hit" in cache_status(resp), resp.headers
        assert resp.headers.getall("Access-Control-Allow-Origin") == ["*"], resp.headers
        assert resp.headers["Access-Control-Expose-Headers"] == "X-Total", resp.headers
    _reloaded(c, cors={"allow_origins": ()})  # CORS off: the upstream's too
    resp = await c.get("/api", headers=PAGE)
    assert resp.headers.getall("Access-Control-Allow-Origin") == ["*"], resp.headers
    assert len(calls) == 1, calls


async def test_a_reload_from_passthrough_to_override_replaces_the_stored_upstream_grant(
        origin: Any, proxy: Any, store: dict[str, Any]) -> None:
    """The other way: entries stored under "passthrough" (the upstream's "*" kept) are
    served after a reload to "override" with the upstream's CORS fields removed and the
    proxy's grant in their place: a page the proxy does not grant gets none (and Vary:
    Origin), the one it grants gets its own origin, a request without Origin neither
    (Fetch §3.2.3). No origin request. Guards the change above: stored fields are the
    upstream's, never what goes out. Severity: medium (a grant the operator revoked)."""
    calls: list[dict[str, str]] = []
    cors = {"Cache-Control": "max-age=600", "Access-Control-Allow-Origin": "*",
            "Access-Control-Expose-Headers": "X-Total"}
    c = await proxy(await origin(_api(calls, cors)), cache=store,
                    cors={"allow_origins": ADMIN, "mode": "passthrough"})
    first = await c.get("/api", headers=PAGE)
    assert first.headers.getall("Access-Control-Allow-Origin") == ["*"], first.headers
    _reloaded(c, cors={"allow_origins": ADMIN, "mode": "override"})
    for fields, grant in ((PAGE, []), ({"Origin": ADMIN[0]}, [ADMIN[0]]), ({}, [])):
        resp = await c.get("/api", headers=fields)
        assert resp.status == 200 and await resp.text() == "d"
        assert "hit" in cache_status(resp), resp.headers
        assert resp.headers.getall("Access-Control-Allow-Origin", []) == grant, resp.headers
        assert "Access-Control-Expose-Headers" not in resp.headers, resp.headers
        assert "Origin" in resp.headers.get("Vary", ""), resp.headers
    assert len(calls) == 1, calls


async def test_a_304_revalidation_after_a_reload_keeps_the_stored_upstream_grant(
        origin: Any, proxy: Any, store: dict[str, Any]) -> None:
    """An entry stored under "override" (Cache-Control: no-cache, an ETag) is revalidated
    on each request. The origin's 304 repeats no CORS field (RFC 9110 §15.4.5 asks only
    for the fields a cache needs). After a reload to "passthrough" the 304 was merged
    into a stored head that lacked the upstream's grant, and the browser was refused on
    every request, for as long as the ETag held. Now the stored head has the grant, and
    the 304 freshens it (RFC 9111 §4.3.4). Severity: medium."""
    calls: list[dict[str, str]] = []

    async def api(request: web.Request) -> web.Response:
        calls.append(dict(request.headers))
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304, headers={"ETag": '"v1"',
                                                     "Cache-Control": "no-cache"})
        return web.Response(text="d", headers={
            "ETag": '"v1"', "Cache-Control": "no-cache", "Access-Control-Allow-Origin": "*"})

    app = web.Application()
    app.router.add_get("/api", api)
    c = await proxy(await origin(app), cache=store, cors={"allow_origins": ADMIN})
    assert (await c.get("/api", headers=PAGE)).status == 200
    _reloaded(c, cors={"allow_origins": ADMIN, "mode": "passthrough"})
    for _ in range(2):
        resp = await c.get("/api", headers=PAGE)
        assert resp.status == 200 and await resp.text() == "d"
        assert "fwd=stale" in cache_status(resp) or "revalidated" in cache_status(resp) \
            or "hit" in cache_status(resp), resp.headers
        assert resp.headers.getall("Access-Control-Allow-Origin") == ["*"], resp.headers
    assert [h.get("If-None-Match") for h in calls] == [None, '"v1"', '"v1"'], calls
    _reloaded(c, cors={"allow_origins": ADMIN, "mode": "override"})
    resp = await c.get("/api", headers=PAGE)
    assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers
    assert len(calls) == 4, calls


@pytest.mark.parametrize("says_vary", [False, True])
async def test_an_origin_copying_origin_into_its_grant_keeps_each_grant_to_its_origin(
        origin: Any, proxy: Any, store: dict[str, Any], says_vary: bool) -> None:
    """An origin that grants by copying the request's Origin back (Express cors() with
    origin: true, Django's CORS_ALLOW_ALL_ORIGINS with credentials), with or without
    saying Vary: Origin. Stored under "override", its answer lacked the grant, so after a
    reload to "passthrough" app.example's page was refused. Now the grant is stored, and
    with Vary: Origin whether or not the origin said so (Fetch §3.2, CORS protocol and
    HTTP caches; as CORS off and passthrough stored it before): app.example's hit carries
    app.example's grant, and another origin's request never gets it (a variant of its
    own, from the origin). Severity: medium (refused pages; and, stored without Vary,
    one origin's grant handed to another)."""
    calls: list[dict[str, str]] = []

    async def api(request: web.Request) -> web.Response:
        calls.append(dict(request.headers))
        fields = {"Cache-Control": "max-age=600"}
        if "Origin" in request.headers:
            fields["Access-Control-Allow-Origin"] = request.headers["Origin"]
            fields["Access-Control-Allow-Credentials"] = "true"
        if says_vary:
            fields["Vary"] = "Origin"
        return web.Response(text="d", headers=fields)

    app = web.Application()
    app.router.add_get("/api", api)
    c = await proxy(await origin(app), cache=store, cors={"allow_origins": ADMIN})
    first = await c.get("/api", headers=PAGE)
    assert first.status == 200 and "Access-Control-Allow-Origin" not in first.headers
    _reloaded(c, cors={"allow_origins": ADMIN, "mode": "passthrough"})
    resp = await c.get("/api", headers=PAGE)
    assert "hit" in cache_status(resp), resp.headers
    assert resp.headers.getall("Access-Control-Allow-Origin") == [PAGE["Origin"]]
    assert resp.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in resp.headers["Vary"], resp.headers
    other = await c.get("/api", headers={"Origin": "https://other.example"})
    assert other.headers.getall("Access-Control-Allow-Origin") == ["https://other.example"]
    assert len(calls) == 2, calls  # other.example's came from the origin, not app's entry
    _reloaded(c, cors={"allow_origins": ADMIN, "mode": "override"})
    again = await c.get("/api", headers=PAGE)
    assert "hit" in cache_status(again), again.headers
    assert "Access-Control-Allow-Origin" not in again.headers, again.headers
    assert "Access-Control-Allow-Credentials" not in again.headers, again.headers
    assert len(calls) == 2, calls


async def test_redis_entries_stored_under_override_serve_a_passthrough_replica(
        origin: Any, proxy: Any, redis_server: RedisServer) -> None:
    """Replicas sharing Redis during a rolling config change: replica a (still
    "override") stored the entry; replica b (already "passthrough") served it without the
    upstream's grant, since a had left it out of Redis. Now Redis holds the upstream's
    answer, and each replica applies its own mode to it on the way out. Severity: medium
    (half the replicas refuse browsers during and after a rollout)."""
    calls: list[dict[str, str]] = []
    cors = {"Cache-Control": "max-age=600", "Access-Control-Allow-Origin": "*"}
    up = await origin(_api(calls, cors))
    a = await proxy(up, proxy=SHARED_KEYS, cache=redis_cache(redis_server),
                    cors={"allow_origins": ADMIN})
    b = await proxy(up, proxy=SHARED_KEYS, cache=redis_cache(redis_server),
                    cors={"allow_origins": ADMIN, "mode": "passthrough"})
    assert "Access-Control-Allow-Origin" not in (await a.get("/api", headers=PAGE)).headers
    resp = await b.get("/api", headers=PAGE)
    assert "hit" in cache_status(resp), resp.headers
    assert resp.headers.getall("Access-Control-Allow-Origin") == ["*"], resp.headers
    again = await a.get("/api", headers=PAGE)
    assert "Access-Control-Allow-Origin" not in again.headers, again.headers
    assert len(calls) == 1, calls


async def test_a_sighup_from_override_to_passthrough_changes_the_next_hit(
        origin: Any, tmp_path: Path) -> None:
    """The first test's case through the real reload: `cacheproxy serve` with a config file
    in override mode, the file changed to passthrough, SIGHUP ("configuration reloaded"):
    the next request, a hit with no origin request, carries the upstream's grant. Before,
    it lacked it until the entry expired, and the reload logged a WARNING saying to
    purge (now gone: nothing to purge). Severity: medium."""
    calls: list[dict[str, str]] = []
    up = await origin(_api(calls, {"Cache-Control": "max-age=600",
                                   "Access-Control-Allow-Origin": "*"}))
    config = tmp_path / "cacheproxy.toml"
    head = f'[proxy]\nupstream = "{up.make_url("")}"\n[cors]\nallow_origins = ["{ADMIN[0]}"]\n'
    config.write_text(head)
    proc, port = await start_serve("--config", str(config), cwd=tmp_path)
    err = StderrLines(proc)
    url = f"http://127.0.0.1:{port}/api"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url, headers=PAGE) as resp:
                assert "Access-Control-Allow-Origin" not in resp.headers, resp.headers
            config.write_text(head + 'mode = "passthrough"\n')
            proc.send_signal(signal.SIGHUP)
            assert "configuration reloaded" in await err.wait_for("reload")
            async with http.get(url, headers=PAGE) as resp:
                assert resp.headers["X-Cache"] == "HIT", resp.headers
                assert resp.headers.getall("Access-Control-Allow-Origin") == ["*"]
    finally:
        proc.terminate()
        code = await proc.wait()
        text = await err.close()
    assert code == 0 and "Traceback" not in text and "CORS fields" not in text, text
    assert len(calls) == 1, calls
