"""Regression tests from a second reader's review of the cache core: each one showed a
defect (fixed since), mostly about what one user could get of another's response.

Every test talks to a real origin on 127.0.0.1 through a running proxy (fixtures in
tests/conftest.py). Where a test needs bytes on the wire (HEAD bodies, odd Host fields),
it uses a raw socket, so that the client library does not tidy anything away. Timing is
made deterministic with events, not sleeps, wherever the order matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from email.utils import formatdate

import pytest
from aiohttp import web
from support import cache_status, raw_origin, until

# -- helpers -------------------------------------------------------------------------------


async def raw_exchange(port: int, data: bytes, idle: float = 0.5) -> bytes:
    """Send bytes to the proxy and read until it closes or stays quiet for `idle` s."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), idle):
            out += chunk
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return out


def split_response(data: bytes) -> tuple[bytes, bytes]:
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


# -- 1. collapsing hands a waiter another user's response --------------------------------
#
# handler.py _collapsed/_cached(validated_since=...): after waiting for the leader, a waiter
# is served any entry whose response_time is after its arrival, even when the entry says it
# must be validated before every reuse (no-cache, or max-age=0 + must-revalidate answering
# an Authorization request, RFC 9111 §3.5, §5.2.2.2, §5.2.2.4). The waiter's own request,
# with its own credentials, never reaches the origin.

@pytest.mark.parametrize("shape", ["authorization+must-revalidate", "cookie+no-cache"])
async def test_collapsed_waiter_is_not_served_another_users_unvalidated_response(
    origin, proxy, shape
):
    gate = asyncio.Event()
    seen: list[dict[str, str]] = []

    async def me(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        if shape.startswith("authorization"):
            if request.headers.get("Authorization") != "Bearer alice":
                return web.Response(status=401, text="who are you?")
            await gate.wait()
            return web.Response(text="alice's secret", headers={
                "Cache-Control": "max-age=0, must-revalidate", "ETag": '"alice"'})
        user = request.headers.get("Cookie", "").removeprefix("sid=")
        if user == "alice":
            await gate.wait()
        tag = f'"{user}"'
        if request.headers.get("If-None-Match") == tag:
            return web.Response(status=304, headers={"ETag": tag})
        return web.Response(text=f"{user}'s page",
                            headers={"Cache-Control": "no-cache", "ETag": tag})

    app = web.Application()
    app.router.add_get("/me", me)
    c = await proxy(await origin(app))
    if shape.startswith("authorization"):
        alice_h, bob_h = {"Authorization": "Bearer alice"}, {}
    else:
        alice_h, bob_h = {"Cookie": "sid=alice"}, {"Cookie": "sid=bob"}
    alice = asyncio.ensure_future(c.get("/me", headers=alice_h))
    assert await until(lambda: len(seen) == 1)
    bob = asyncio.ensure_future(c.get("/me", headers=bob_h))
    await asyncio.sleep(0.1)  # Bob is now queued behind Alice's request
    gate.set()
    alice_resp, bob_resp = await alice, await bob
    assert await alice_resp.text() in ("alice's secret", "alice's page")
    assert "alice" not in await bob_resp.text()


# -- 2. the cache key takes an unvalidated Host: one URL's answer stored under another -----
#
# handler.py handle -> cache_key.primary_key(scheme, request.host, target): a Host field
# such as "victim.example/foo" is accepted (RFC 9112 §3.2 requires a 400 for an invalid
# Host) and concatenated with the target, so "Host: victim.example/foo" + "GET /bar" has
# the key of "Host: victim.example" + "GET /foo/bar", while the origin is asked for /bar.

async def test_host_with_a_path_cannot_poison_another_url(origin, proxy):
    async def echo_path(request: web.Request) -> web.Response:
        return web.Response(text=f"content of {request.path}",
                            headers={"Cache-Control": "max-age=60"})
    app = web.Application()
    app.router.add_get("/{tail:.*}", echo_path)
    c = await proxy(await origin(app))
    port = c.server.port
    attack = await raw_exchange(port, b"GET /bar HTTP/1.1\r\nHost: victim.example/foo\r\n"
                                      b"Connection: close\r\n\r\n")
    victim = await raw_exchange(port, b"GET /foo/bar HTTP/1.1\r\nHost: victim.example\r\n"
                                      b"Connection: close\r\n\r\n")
    assert split_response(victim)[1] == b"content of /foo/bar"
    assert attack.startswith((b"HTTP/1.1 400", b"HTTP/1.0 400"))  # RFC 9112 §3.2


async def test_invalid_host_on_post_is_rejected_before_reaching_the_origin(origin, proxy):
    posts: list[str] = []

    async def create(request: web.Request) -> web.Response:
        posts.append(await request.text())
        return web.Response(status=201, text="created")
    app = web.Application()
    app.router.add_post("/items", create)
    c = await proxy(await origin(app))
    out = await raw_exchange(c.server.port, b"POST /items HTTP/1.1\r\nHost: [bad\r\n"
                                            b"Content-Length: 3\r\nConnection: close\r\n\r\nabc")
    # Either refuse it up front (400, nothing executed) or relay the origin's answer.
    assert out.startswith(b"HTTP/1.1 400") or out.startswith(b"HTTP/1.1 201")
    assert not (posts and out.startswith(b"HTTP/1.1 500"))


# -- 3. absolute-form: keyed by the target's authority, forwarded with the Host field ------
#
# handler.py handle: request.host is the authority of an absolute-form target (RFC 9112
# §3.2.2), but forwarding.request_fields sends the received Host field (pass mode) and
# X-Forwarded-Host from it. RFC 9112 §3.2.2: a proxy MUST ignore the received Host and
# generate one from the target. The origin answers for the Host field's site; the answer
# is stored under the target's site.

@pytest.mark.parametrize("host_header", ["pass", "upstream"])
async def test_absolute_form_key_and_forwarded_host_agree(origin, proxy, host_header):
    async def site(request: web.Request) -> web.Response:
        name = request.headers.get("X-Forwarded-Host") if host_header == "upstream" \
            else request.headers.get("Host")
        return web.Response(text=f"site {name}", headers={"Cache-Control": "max-age=60"})
    app = web.Application()
    app.router.add_get("/page", site)
    c = await proxy(await origin(app), proxy={"host_header": host_header})
    port = c.server.port
    await raw_exchange(port, b"GET http://victim.example/page HTTP/1.1\r\n"
                             b"Host: evil.example\r\nConnection: close\r\n\r\n")
    victim = await raw_exchange(port, b"GET /page HTTP/1.1\r\nHost: victim.example\r\n"
                                      b"Connection: close\r\n\r\n")
    assert split_response(victim)[1] == b"site victim.example"


# -- 4. HEAD on a stale entry is answered with a body --------------------------------------
#
# handler.py _revalidate sends GET upstream for a HEAD request (fine), but a non-304
# answer goes to exchange.relay, which streams the GET body to the HEAD client. The bytes
# after the header block are read by the client as the start of the *next* response on a
# keep-alive connection (response desync; RFC 9110 §9.3.2: a HEAD response has no content).
# relay also plans with method HEAD, so the stored entry is deleted and nothing stored.

async def test_head_on_a_stale_entry_sends_no_body(origin, proxy):
    n = {"calls": 0}

    async def r(request: web.Request) -> web.Response:
        n["calls"] += 1
        return web.Response(text=f"version {n['calls']}", headers={
            "Cache-Control": "max-age=1", "Age": "5", "ETag": f'"{n["calls"]}"'})
    app = web.Application()
    app.router.add_get("/r", r)
    c = await proxy(await origin(app))
    port = c.server.port
    await raw_exchange(port, b"GET /r HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    out = await raw_exchange(port, b"HEAD /r HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    head, rest = split_response(out)
    assert head.startswith(b"HTTP/1.1 200")
    assert rest == b"", f"body bytes after a HEAD response: {rest!r}"


# -- 5. a finishing leader releases the *next* leader's waiters ----------------------------
#
# handler.py _collapsed: `finally: self.collapser.release(key)` pops whatever future is
# registered for the key. When the leader's Fill already released early (too big,
# not storable), a newer leader B may own the key by then; A's finally pops B's future and
# wakes B's waiters while B is still in flight, so they all go upstream (stampede).
# Fix: release only the future this leader created (compare identity).

async def test_old_leader_does_not_release_the_new_leaders_waiters(origin, proxy):
    a_go, b_go = asyncio.Event(), asyncio.Event()
    calls: list[int] = []

    async def r(request: web.Request) -> web.StreamResponse:
        calls.append(len(calls) + 1)
        n = len(calls)
        if n == 1:  # chunked and over max_object_bytes: A's Fill releases mid-body
            resp = web.StreamResponse(headers={"Cache-Control": "max-age=60"})
            await resp.prepare(request)
            await resp.write(b"a" * 2000)
            await a_go.wait()
            await resp.write(b"a" * 10)
            await resp.write_eof()
            return resp
        if n == 2:
            await b_go.wait()
        return web.Response(text=f"small {n}", headers={"Cache-Control": "max-age=60"})
    app = web.Application()
    app.router.add_get("/r", r)
    c = await proxy(await origin(app), cache={"max_object_bytes": 1000,
                                              "collapse_timeout": 5.0})
    a = await c.get("/r")
    await a.content.readexactly(2000)           # A is streaming, its waiters released
    b = asyncio.ensure_future(c.get("/r"))      # B: the new leader
    assert await until(lambda: len(calls) == 2)
    waiter = asyncio.ensure_future(c.get("/r"))  # waits for B
    await asyncio.sleep(0.1)
    a_go.set()
    await a.read()                               # A ends: its finally runs
    await asyncio.sleep(0.2)
    b_go.set()
    rb, rw = await b, await waiter
    assert await rb.text() == await rw.text() == "small 2"
    assert len(calls) == 2


# -- 6. a leader whose own request says no-store holds its waiters for the whole body ------
#
# handler.py _fetch passes fill=None when the leader's request says no-store, so nothing
# ever calls Fill.done(): waiters are released only by _collapsed's finally, after the
# leader's whole body has streamed (or after collapse_timeout). The URL is then marked
# hit-for-pass for 30 s, so one client's no-store turns collapsing off for everyone.

async def test_no_store_leader_does_not_stall_waiters(origin, proxy):
    gate = asyncio.Event()
    calls: list[str | None] = []

    async def r(request: web.Request) -> web.StreamResponse:
        calls.append(request.headers.get("Cache-Control"))
        resp = web.StreamResponse(headers={"Cache-Control": "max-age=60"})
        await resp.prepare(request)
        await resp.write(b"x" * 100)
        if len(calls) == 1:
            await gate.wait()  # the leader's body is slow
        await resp.write_eof()
        return resp
    app = web.Application()
    app.router.add_get("/r", r)
    c = await proxy(await origin(app), cache={"collapse_timeout": 3.0})
    leader = await c.get("/r", headers={"Cache-Control": "no-store"})
    await leader.content.readexactly(100)
    waiter = asyncio.ensure_future(c.get("/r"))
    reached = await until(lambda: len(calls) >= 2, timeout=0.7)
    gate.set()
    await leader.read()
    await waiter
    assert reached, "the waiter did not reach the origin while the no-store leader streamed"


async def test_one_authorized_request_does_not_turn_collapsing_off_for_the_url(origin, proxy):
    calls: list[str | None] = []

    async def r(request: web.Request) -> web.Response:
        calls.append(request.headers.get("Authorization"))
        await asyncio.sleep(0.2)
        return web.Response(text="public", headers={"Cache-Control": "max-age=60"})
    app = web.Application()
    app.router.add_get("/r", r)
    c = await proxy(await origin(app))
    await c.get("/r", headers={"Authorization": "Bearer anyone"})  # not stored: §3.5
    responses = await asyncio.gather(*(c.get("/r") for _ in range(5)))
    assert all(x.status == 200 for x in responses)
    assert calls.count(None) == 1, f"{calls.count(None)} concurrent misses went upstream"


# -- 7. a 304 without Date never freshens the entry ----------------------------------------
#
# revalidation.merge_304 keeps the stored Date when the 304 has none; make_stored_response
# then computes apparent_age from that old Date, so the "freshened" entry is as stale as
# before and every request revalidates. RFC 9110 §6.6.1: a recipient caching a message
# without Date MUST add one (the time of receipt); RFC 9111 §4.3.4 freshening.

async def test_304_without_date_freshens_the_entry(proxy):
    requests: list[bytes] = []

    def answer(head: bytes) -> bytes:
        requests.append(head)
        if b"if-none-match" in head.lower():  # a 304 with no Date (allowed: no clock)
            return b'HTTP/1.1 304 Not Modified\r\nCache-Control: max-age=60\r\nETag: "v"\r\n\r\n'
        old = formatdate(time.time() - 120, usegmt=True).encode()  # stored stale
        return (b"HTTP/1.1 200 OK\r\nDate: " + old + b'\r\nCache-Control: max-age=60\r\n'
                b'ETag: "v"\r\nContent-Length: 4\r\n\r\nbody')

    async with raw_origin(answer) as port:
        c = await proxy(f"http://127.0.0.1:{port}")
        await c.get("/r")                       # stored, stale
        revalidated = await c.get("/r")         # 304: freshened for 60 s
        assert "fwd-status=304" in cache_status(revalidated)
        third = await c.get("/r")
        assert third.headers["X-Cache"] == "HIT" and "fwd=" not in cache_status(third)
        assert len(requests) == 2


# -- 8. stale-while-revalidate without collapsing: one refresh per request -----------------
#
# handler.py _refresh_in_background: "one background revalidation per key at a time" is
# enforced only through the Collapser; with cache.collapse = false every request that is
# served stale starts its own background refresh (origin amplification).

async def test_swr_refreshes_once_even_without_collapsing(origin, proxy):
    release = asyncio.Event()
    calls: list[int] = []

    async def r(request: web.Request) -> web.Response:
        calls.append(1)
        if len(calls) > 1:
            await release.wait()
        return web.Response(text="x", headers={
            "Cache-Control": "max-age=1, stale-while-revalidate=600", "Age": "5"})
    app = web.Application()
    app.router.add_get("/r", r)
    c = await proxy(await origin(app), cache={"collapse": False})
    await c.get("/r")
    responses = await asyncio.gather(*(c.get("/r") for _ in range(5)))
    assert all("stale-while-revalidate" in cache_status(x) for x in responses)
    await asyncio.sleep(0.1)
    in_flight = len(calls) - 1
    release.set()
    await until(lambda: not c.app_proxy.driver._background)
    assert in_flight == 1


# -- 9. the client's If-Match / If-Unmodified-Since are stripped -----------------------------
#
# handler.py _fetch -> request_fields(strip_conditionals=True) drops every entry of
# revalidation.CLIENT_CONDITIONALS, including If-Match and If-Unmodified-Since, which a
# cache never evaluates (RFC 9111 §4.3.2) and answers nothing for: the origin's 412 becomes
# a 200 with a representation the client said it did not want (RFC 9110 §13.1.1, §13.1.4).

async def test_if_match_reaches_the_origin(origin, proxy):
    async def r(request: web.Request) -> web.Response:
        if request.headers.get("If-Match", '"current"') != '"current"':
            return web.Response(status=412)
        return web.Response(text="current", headers={"ETag": '"current"',
                                                     "Cache-Control": "max-age=60"})
    app = web.Application()
    app.router.add_get("/r", r)
    c = await proxy(await origin(app))
    resp = await c.get("/r", headers={"If-Match": '"old"'})
    assert resp.status == 412


# -- 10. Max-Forwards is not honoured ---------------------------------------------------------
#
# RFC 9110 §7.6.2: an intermediary receiving OPTIONS or TRACE with Max-Forwards: 0 MUST NOT
# forward it and MUST respond as the final recipient; otherwise it MUST decrement it.
# forwarding.request_fields passes Max-Forwards through unchanged.

async def test_max_forwards_zero_is_answered_by_the_proxy(origin, proxy):
    seen: list[str | None] = []

    async def r(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Max-Forwards"))
        return web.Response(text="origin")
    app = web.Application()
    app.router.add_route("OPTIONS", "/r", r)
    c = await proxy(await origin(app))
    await c.options("/r", headers={"Max-Forwards": "3"})
    await c.options("/r", headers={"Max-Forwards": "0"})
    assert seen == ["2"]


# -- 11. strip mode: a conditional miss loses the client's own Set-Cookie ---------------------
#
# exchange.relay -> _not_modified builds the 304 from the *stored* fields, from which
# Set-Cookie was stripped (cache.set_cookie = "strip"), so the client that caused the
# response never receives the cookie the origin set for it (README: in strip mode the
# causing client gets it).

async def test_strip_mode_conditional_miss_keeps_the_clients_cookie(origin, proxy):
    async def r(request: web.Request) -> web.Response:
        return web.Response(text="body", headers={
            "Cache-Control": "max-age=60", "ETag": '"v"', "Set-Cookie": "sid=alice"})
    app = web.Application()
    app.router.add_get("/r", r)
    c = await proxy(await origin(app), cache={"set_cookie": "strip"})
    resp = await c.get("/r", headers={"If-None-Match": '"v"'})
    assert resp.status in (200, 304)
    assert resp.headers.get("Set-Cookie") == "sid=alice"


# -- 12. Cache-Status says both "hit" and "fwd=" for a collapsed waiter -----------------------
#
# handler.py _cached sets outcome.fwd on the first pass (uri-miss), then the waiter's second
# pass sets hit=True without clearing it: "cacheproxy; hit; fwd=uri-miss; ...; collapsed".
# RFC 9211 §2.1: hit means the request was not forwarded; §2.2: fwd means it went forward.

async def test_collapsed_waiter_cache_status_is_not_both_hit_and_fwd(origin, proxy):
    gate = asyncio.Event()
    calls: list[int] = []

    async def r(request: web.Request) -> web.Response:
        calls.append(1)
        await gate.wait()
        return web.Response(text="shared", headers={"Cache-Control": "max-age=60"})
    app = web.Application()
    app.router.add_get("/r", r)
    c = await proxy(await origin(app))
    leader = asyncio.ensure_future(c.get("/r"))
    assert await until(lambda: len(calls) == 1)
    waiter = asyncio.ensure_future(c.get("/r"))
    await asyncio.sleep(0.1)
    gate.set()
    await leader
    status = cache_status(await waiter)
    assert "collapsed" in status
    members = [p.strip() for p in status.split(";")]
    assert not ("hit" in members and any(p.startswith("fwd=") for p in members)), status


# -- 13. the SWR refresh stores the answer to a request that said no-store -----------------
#
# handler.py _refresh_in_background copies the triggering request's fields (its
# Cache-Control: no-store included) into the background request, then _refresh stores the
# answer with Fill(request=RequestDirectives()), ignoring that directive. RFC 9111 §5.2.1.5:
# a cache MUST NOT store any response to a request with no-store.

async def test_swr_refresh_for_a_no_store_request_stores_nothing(origin, proxy):
    calls: list[str | None] = []

    async def r(request: web.Request) -> web.Response:
        calls.append(request.headers.get("Cache-Control"))
        return web.Response(text=f"v{len(calls)}", headers={
            "Cache-Control": "max-age=1, stale-while-revalidate=600",
            "Age": "5" if len(calls) == 1 else "0"})
    app = web.Application()
    app.router.add_get("/r", r)
    c = await proxy(await origin(app))
    await c.get("/r")
    await c.get("/r", headers={"Cache-Control": "no-store"})  # stale: served, refresh starts
    await until(lambda: len(calls) == 2)
    await until(lambda: not c.app_proxy.driver._background)
    if len(calls) > 1 and calls[1] is not None and "no-store" in calls[1]:
        # the refresh was the no-store request forwarded: its answer must not be stored
        later = await c.get("/r", headers={"Cache-Control": "only-if-cached, max-stale"})
        assert await later.text() != "v2"


# -- 14. obs-text bytes in response fields pass unchanged -----------------------------------
#
# Non-UTF-8 octets (obs-text, RFC 9110 §5.5: recipients treat them as opaque data) were
# lost: "X-Name: \xe9t\xe9" reached the client as "X-Name: t", on the miss and from
# storage (aiohttp's serialiser drops the surrogates they are decoded to). proxy/wire.py
# encodes heads with surrogateescape.

async def test_obs_text_in_response_fields_passes_unchanged(proxy):
    def answer(head: bytes) -> bytes:
        return (b"HTTP/1.1 200 OK\r\nX-Name: \xe9t\xe9\r\n"
                b"Cache-Control: max-age=60\r\nContent-Length: 4\r\n\r\nbody")

    async with raw_origin(answer) as port:
        c = await proxy(f"http://127.0.0.1:{port}")
        for _ in range(2):  # the miss, then the hit
            out = await raw_exchange(c.server.port, b"GET /r HTTP/1.1\r\nHost: h\r\n"
                                                    b"Connection: close\r\n\r\n")
            assert b"\r\nX-Name: \xe9t\xe9\r\n" in split_response(out)[0]
