"""A second reading of the fixes merged on 12-05 (review-second9): the pool's queue for a
connection (Pool._woken, first come first served) with the retry's fresh connection, a
reload's retired origins and the pool's close at shutdown; "a new representation not
stored removes the one it outdates" (Store.outdates) with the fill budget; the private
cache's Set-Cookie stripping with 304s; the Redis store without a memory layer, now a
LayeredStore with ttl 0; the Via name a request's plan holds across a reload; the client
side's timer after an answer (_await_next). Each test ran against the real proxy (or the
real pool) with servers on 127.0.0.1; those marked as findings failed before their fix."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import pytest
from support import raw_get, raw_origin, until

from cacheproxy.proxy.server import reconfigure

# -- 1. a new representation over the fill budget kept the response it outdates -------------

_V1 = (b"HTTP/1.1 200 OK\r\nCache-Control: max-age=0, stale-if-error=600\r\n"
       b'ETag: "1"\r\nContent-Length: 2\r\n\r\nv1')
_BIG = b"2" * 300  # over the fill_buffer_bytes of 100 set below, under max_object_bytes
_V2 = {
    "chunked": (b"HTTP/1.1 200 OK\r\nCache-Control: max-age=0, stale-if-error=600\r\n"
                b'ETag: "2"\r\nTransfer-Encoding: chunked\r\n\r\n12c\r\n' + _BIG
                + b"\r\n0\r\n\r\n"),
    "length": (b"HTTP/1.1 200 OK\r\nCache-Control: max-age=0, stale-if-error=600\r\n"
               b'ETag: "2"\r\nContent-Length: 300\r\n\r\n' + _BIG),
}


@pytest.mark.parametrize("framing", ["chunked", "length"])
async def test_s4_3_3_a_new_200_over_the_fill_budget_removes_the_response_it_outdates(
        proxy, framing: str) -> None:
    """9379bca made a new representation that proved too big to store (max_object_bytes)
    remove the stored response it outdates, so that stale-if-error does not serve the
    old one after a client was sent the new one. A new representation not stored because
    the fill budget (cache.fill_buffer_bytes, shared by every fill under way) had no room
    for it was left out (UpstreamResponse.unstored == "fill-budget", not "too-big"): v1
    stayed, and when the origin then failed, the proxy served v1 under stale-if-error
    after it had sent v2, content going back in time, only because other fills were
    under way at that moment (or, as here, the budget is smaller than the body). RFC 9111
    §4.3.3 (the full response is the cache's current knowledge), RFC 5861 §4 (a stale
    response is the latest the cache has). Varnish: a fetched object that is not kept
    still shadows the older one (hit-for-miss). Severity: medium, as for too-big."""
    heads: list[bytes] = []

    def answer(head: bytes) -> bytes:
        heads.append(head)
        if len(heads) == 1:
            return _V1
        if len(heads) == 2:
            return _V2[framing]
        return b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown"

    async with raw_origin(answer) as port:
        c = await proxy(f"http://127.0.0.1:{port}",
                        cache={"fill_buffer_bytes": 100, "max_object_bytes": 10_000})
        assert (await raw_get(c, "/r"))[2] == b"v1"
        status, fields, body = await raw_get(c, "/r")
        assert (status, fields["etag"]) == (200, '"2"')  # v2, not stored: the budget
        status, fields, body = await raw_get(c, "/r")
        assert (status, body) == (503, b"down"), (status, fields, body)
        assert "stale-if-error" not in fields["cache-status"]


# -- 2. a 103 relayed after a reload took the new name in its Via -----------------------------


async def test_an_interim_answer_in_flight_at_a_reload_keeps_the_via_name_it_started_with(
        proxy) -> None:
    """2ed0819 made every answer to a request in flight at a reload take the cache's name
    (proxy.via) from the request's route plan: the final answer said "1.1 edge-1", the
    name it went upstream with. An interim answer relayed before it (103 Early Hints,
    RFC 9110 §15.2: a proxy MUST forward it, with its own Via, §7.6.3) still read the
    running name: the same exchange reached the client as a 103 "via edge-2" and a 200
    "via edge-1", two configs on one answer. Severity: low (a pseudonym on interim
    answers in flight at a reload)."""
    arrived, go = asyncio.Event(), asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            arrived.set()
            await go.wait()
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
                         b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\n"
                         b"Content-Length: 2\r\n\r\nok")
            await writer.drain()
            await reader.read()
        writer.close()

    origin = await asyncio.start_server(serve, "127.0.0.1", 0)
    c = await proxy(f"http://127.0.0.1:{origin.sockets[0].getsockname()[1]}",
                    proxy={"via": "edge-1"})
    pending = asyncio.ensure_future(raw_get(c, "/a"))  # (HTTP/1.1: it gets the 103)
    await arrived.wait()
    config = c.app_proxy.config
    reconfigure(c.server.app, dataclasses.replace(
        config, proxy=dataclasses.replace(config.proxy, via="edge-2")))
    go.set()
    status, fields, rest = await pending  # the 103's head, then the 200
    origin.close()
    assert rest.startswith(b"HTTP/1.1 200 OK") and b"\r\nVia: 1.1 edge-1\r\n" in rest, rest
    assert (status, fields["via"]) == (103, "1.1 edge-1"), (status, fields)


# -- 3. a request waiting for a connection at the pool's close connected anew ----------------


async def test_a_request_waiting_for_a_connection_at_shutdown_makes_none() -> None:
    """Pool.close() (the proxy stopping) promises that no connection is made or lent any
    more, and acquire refuses a request that starts after it (503 "the proxy is
    stopping"). A request already waiting in the queue for a connection (all
    proxy.max_connections in use) was not told: the close of the connections in use woke
    it (Pool._forget), and, the pool being empty now, it connected anew, a connection
    the closed pool then held and nobody closed (until the process ended), and its
    request went upstream during the stop. Now close() wakes every waiter and each ends
    in 503 at once. nginx's exiting worker sends no new upstream request. Severity: low
    (at a stop, with a saturated pool)."""
    from test_upstream_pool import raw_origin as scripted_origin

    from cacheproxy.proxy.pool import Origin, Pool
    from cacheproxy.proxy.upstream import UpstreamError

    async def ok(head: bytes, index: int) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"

    async with scripted_origin(ok) as origin:
        pool = Pool(1, 5.0, 30.0)
        o = Origin("http", "127.0.0.1", origin.port)
        await pool.acquire(o)  # in use: the pool is full
        waiter = asyncio.create_task(pool.acquire(o))
        assert await until(lambda: len(pool._waiters) == 1)
        pool.close()
        try:
            outcome = f"connected ({origin.connections} connections)" \
                if await waiter else ""
        except UpstreamError as exc:
            outcome = f"{exc.status} {exc.reason}"
        assert outcome == "503 the proxy is stopping", outcome
        assert origin.connections == 1 and not pool._woken
