"""Hits answered where they are parsed (proxy/quick.py) say exactly what the full path
says: the same status, fields, body and log line for every request shape, whether the
quick path answers it or hands it on. Each request is sent twice to one proxy, with the
quick path on and then off, and the two answers are compared."""

from __future__ import annotations

import asyncio
import re
from email.utils import formatdate
from typing import Any

import pytest
from aiohttp import web
from aiohttp.http import HttpVersion10, HttpVersion11
from support import proxy_config, proxy_for_toml, raw_origin, read_json_log
from test_client_plane import Raw

from cacheproxy.proxy.quick import QuickHits
from cacheproxy.proxy.routed import Planned
from cacheproxy.proxy.server import reconfigure

STAMP = formatdate(1_700_000_000, usegmt=True)
BODY = b"0123456789" * 20


def origin_app() -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        headers = {"ETag": '"v1"', "Last-Modified": STAMP, "Content-Type": "text/plain"}
        headers["Cache-Control"] = {
            "fresh": "max-age=600", "nocache": "no-cache", "shared": "s-maxage=600",
            "swr": "max-age=0, stale-while-revalidate=600", "private": "private, max-age=600",
            "mustrev": "max-age=600, must-revalidate",
        }.get(name, "max-age=600")
        if name == "vary":
            headers["Vary"] = "Accept-Language"
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304, headers=headers)
        lang = request.headers.get("Accept-Language", "-").encode()
        return web.Response(body=BODY + lang, headers=headers)

    app = web.Application()
    app.router.add_get("/{name}", answer)
    return app


RESOURCES = ("fresh", "nocache", "shared", "swr", "private", "mustrev", "vary")
SHAPES: tuple[tuple[str, ...], ...] = (
    (),
    ("Cookie: a=1",),
    ("Authorization: Basic dTpw",),
    ("Cache-Control: no-cache",),
    ("Cache-Control: max-age=0",),
    ("Cache-Control: max-stale=1000",),
    ("Cache-Control: min-fresh=100000",),
    ("Cache-Control: only-if-cached",),
    ("Pragma: no-cache",),
    ('If-None-Match: "v1"',),
    ('If-None-Match: "v2"',),
    (f"If-Modified-Since: {STAMP}",),
    ("If-Match: \"v9\"",),
    ("Range: bytes=0-3",),
    ('Range: bytes=0-3', 'If-Range: "v1"'),
    ("Accept-Language: de",),
    ("Origin: http://elsewhere.example",),
    ("Referer: http://example/page?token=secret",),
    ("Connection: close",),
    ("Max-Forwards: 0",),
)

_VARYING = re.compile(rb"^(Age|Date): .*\r\n|ttl=-?\d+", re.MULTILINE | re.IGNORECASE)


def request(path: str, fields: tuple[str, ...], method: str = "GET", version: str = "1.1"
            ) -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: example", "User-Agent: t", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def exchange(client: Any, data: bytes) -> bytes:
    """The whole answer to one request on its own connection, as bytes, with what changes
    from second to second taken out."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(data)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = re.search(rb"\r\nContent-Length: (\d+)", head)
    body = b""
    if length and not data.startswith(b"HEAD") and b" 304 " not in head[:13]:
        body = await asyncio.wait_for(reader.readexactly(int(length[1])), 5)
    writer.close()
    # Sorted: a stale-while-revalidate refresh between the two may merge a 304 into the
    # entry, which reorders its fields.
    status, *fields = _VARYING.sub(b"", head).split(b"\r\n")
    return b"\r\n".join([status, *sorted(fields)]) + body


def _log_view(line: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in line.items()
            if k not in ("time", "total_ms", "upstream_ms", "age", "ttl")} \
        | {"cache_status": re.sub(r"ttl=-?\d+", "", line["cache_status"])}


@pytest.fixture
def quick_switch(monkeypatch: pytest.MonkeyPatch) -> Any:
    """switch(False) sends every request on the full path; switch(True) restores it.
    taken counts the requests the quick path answered, planned those it sent forward."""
    real = QuickHits.hit
    taken: list[tuple[str, tuple[str, ...]]] = []
    planned: list[tuple[str, tuple[str, ...]]] = []
    methods: list[str] = []

    def counted(self: QuickHits, msg: Any, started: float) -> Any:
        found = real(self, msg, started)
        # the path, and the names of the fields beyond ours
        shape = (msg.path, tuple(name for name in msg.headers
                                 if name not in ("Host", "User-Agent")))
        if isinstance(found, Planned):
            planned.append(shape)
        elif found is not None:
            taken.append(shape)
            methods.append(msg.method)
        return found

    state = {"on": True}
    monkeypatch.setattr(QuickHits, "hit", lambda self, msg, started:
                        counted(self, msg, started) if state["on"] else None)

    def switch(on: bool) -> None:
        state["on"] = on

    switch.taken = taken  # type: ignore[attr-defined]
    switch.planned = planned  # type: ignore[attr-defined]
    switch.methods = methods  # type: ignore[attr-defined]
    return switch


@pytest.mark.parametrize("shared", [True, False])
async def test_every_request_shape_gets_the_full_paths_answer(
        proxy: Any, origin: Any, quick_switch: Any, shared: bool) -> None:
    client = await proxy(await origin(origin_app()), cache={"shared": shared})
    for name in RESOURCES:
        await exchange(client, request(f"/{name}", ()))  # stored (or not) first
        for fields in SHAPES:
            for method in ("GET", "HEAD"):
                sent = request(f"/{name}", fields, method)
                await exchange(client, sent)  # what it stores (or refreshes), first
                quick_switch(True)
                quick = await exchange(client, sent)
                quick_switch(False)
                full = await exchange(client, sent)
                assert quick == full, (name, fields, method)
    taken = set(quick_switch.taken)
    # A plain request for a fresh stored response is answered where it was parsed...
    assert {("/fresh", ()), ("/vary", ()), ("/vary", ("Accept-Language",)),
            ("/fresh", ("Cookie",)), ("/fresh", ("Connection",))} <= taken
    # ... and so is a stale one the client accepts stale (max-stale): the flow decides.
    assert ("/swr", ("Cache-Control",)) in taken
    # ... and what the driver's reply step makes of a Serve: a 304, a 206, a HEAD's head,
    # an answer to a request with an Origin.
    assert {("/fresh", ("If-None-Match",)), ("/fresh", ("Range",)),
            ("/fresh", ("Range", "If-Range")), ("/fresh", ("Origin",))} <= taken
    assert any(method == "HEAD" for method in quick_switch.methods)
    # What needs more than a lookup goes the full way; what goes forward, as planned here
    # (then by the quick forward when its answer comes whole: proxy/quick_forward.py).
    assert not {("/nocache", ()), ("/fresh", ("If-Match",))} & taken
    assert {("/nocache", ()), ("/fresh", ("Cache-Control",)), ("/nocache", ("Cookie",))} \
        <= set(quick_switch.planned)


async def test_log_lines_are_the_full_paths(proxy: Any, origin: Any, quick_switch: Any,
                                            tmp_path: Any) -> None:
    client = await proxy(await origin(origin_app()), log={"path": str(tmp_path / "log")})
    await exchange(client, request("/fresh", ()))
    shapes = ((), ("Referer: http://example/page?token=secret",), ("Cookie: a=1",))
    for fields in shapes:
        for on in (True, False):
            quick_switch(on)
            await exchange(client, request("/fresh", fields, version="1.0"))
            await exchange(client, request("/fresh", fields))
    lines = [_log_view(line) for line in await read_json_log(client)][1:]
    assert len(lines) == 4 * len(shapes)
    for i in range(0, len(lines), 4):
        assert lines[i:i + 2] == lines[i + 2:i + 4]
        assert lines[i]["cache"] == "HIT" and lines[i]["protocol"] == "HTTP/1.0"
    assert len(quick_switch.taken) == 2 * len(shapes)


async def test_pipelined_quick_and_full_answers_keep_their_order(
        proxy: Any, origin: Any, quick_switch: Any) -> None:
    client = await proxy(await origin(origin_app()))
    await exchange(client, request("/fresh", ()))
    conn = await Raw.open(client)
    order = ("/fresh", "/nocache", "/fresh", "/fresh", "/vary", "/fresh")
    await conn.send(b"".join(request(path, ()) for path in order))
    for path in order:
        reply = await conn.reply()
        assert reply.status == 200
        assert reply.body.startswith(BODY), path
        assert ("max-age=600" if path != "/nocache" else "no-cache") \
            in reply.headers["cache-control"]
    conn.close()
    assert [path for path, _ in quick_switch.taken].count("/fresh") == 4


async def test_a_reload_reroutes_quick_hits(proxy: Any, origin: Any) -> None:
    """The route memo belongs to one config: after a reload a (Host, target) is routed,
    and keyed, by the new one."""
    up = await origin(origin_app())
    client = await proxy(up)
    await exchange(client, request("/fresh", ()))
    hit = await exchange(client, request("/fresh", ()))
    assert b"X-Cache: HIT" in hit
    url = str(up.make_url("")).rstrip("/")
    config = proxy_config(url, cache={"shared": not client.app_proxy.config.cache.shared})
    reconfigure(client.server.app, config)
    # The other cache (shared or private) has its own keys: the first answer is a miss.
    assert b"X-Cache: MISS" in await exchange(client, request("/fresh", ()))


async def _answers(conn: Raw, n: int) -> int:
    answered = 0
    try:
        for _ in range(n):
            assert (await asyncio.wait_for(conn.reply(), 2)).status == 200
            answered += 1
    except TimeoutError:
        pass
    return answered


@pytest.mark.parametrize("quick", [True, False])
@pytest.mark.parametrize("count", [33, 64, 100])
async def test_more_pipelined_hits_than_the_parser_queues_are_all_answered(
        proxy: Any, origin: Any, quick_switch: Any, quick: bool, count: int) -> None:
    """The parser stops after 32 unanswered requests and keeps the rest: answering them
    where they were parsed must feed it again (found by review: it stalled at 32)."""
    client = await proxy(await origin(origin_app()))
    await exchange(client, request("/fresh", ()))
    quick_switch(quick)
    conn = await Raw.open(client)
    await conn.send(request("/fresh", ()) * count)  # one write, then only reading
    assert await _answers(conn, count) == count
    conn.close()


@pytest.mark.parametrize("quick", [True, False])
async def test_a_miss_among_many_pipelined_hits_does_not_stall_them(
        proxy: Any, origin: Any, quick_switch: Any, quick: bool) -> None:
    client = await proxy(await origin(origin_app()))
    await exchange(client, request("/fresh", ()))
    quick_switch(quick)
    conn = await Raw.open(client)
    await conn.send(request("/fresh", ()) + request("/other", ()) + request("/fresh", ()) * 60)
    assert await _answers(conn, 62) == 62
    conn.close()


async def test_a_quick_path_failure_falls_back_to_the_full_path(
        proxy: Any, origin: Any, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    client = await proxy(await origin(origin_app()))
    await exchange(client, request("/fresh", ()))

    def broken(self: QuickHits, msg: Any, started: float) -> None:
        raise RuntimeError("quick path broke")

    monkeypatch.setattr(QuickHits, "hit", broken)
    answer = await exchange(client, request("/fresh", ()))
    assert answer.startswith(b"HTTP/1.1 200") and b"X-Cache: HIT" in answer
    assert "quick hit failed on GET /fresh" in caplog.text


CORS_TOML = """
[proxy]
upstream = "{site}"
[cors]
allow_origins = ["https://app.example", "https://*.partner.example"]
allow_methods = ["GET", "PUT"]
expose_headers = ["X-Cache"]
max_age = 300
[referer]
strip_params = ["token"]
[log]
path = "{log}"
"""


async def test_cors_grants_and_refusals_are_the_full_paths(
        proxy: Any, origin: Any, quick_switch: Any, tmp_path: Any) -> None:
    """With CORS on, a request with an Origin is answered from storage by the writer that
    makes the grant (or withholds it), as on the full path."""
    site = type("Site", (), {"app": origin_app()})()
    toml = CORS_TOML.replace("{log}", str(tmp_path / "requests.log"))
    client = await proxy_for_toml(origin, proxy, tmp_path, toml, site=site)
    origins = ("https://app.example", "https://a.partner.example", "https://evil.example",
               "null", "http://example")
    for name in ("fresh", "vary", "shared"):
        await exchange(client, request(f"/{name}", ()))
        for value in origins:
            for extra in ((), ('If-None-Match: "v1"',), ("Range: bytes=0-3",)):
                for method in ("GET", "HEAD"):
                    sent = request(f"/{name}", (f"Origin: {value}", *extra), method)
                    quick_switch(True)
                    quick = await exchange(client, sent)
                    quick_switch(False)
                    full = await exchange(client, sent)
                    assert quick == full, (name, value, extra, method)
    lines = [_log_view(line) for line in await read_json_log(client)]
    fills = [i for i, line in enumerate(lines) if line["cache"] == "MISS"]
    assert len(fills) == 3
    pairs = [line for i, line in enumerate(lines) if i not in fills]
    assert pairs[0::2] == pairs[1::2]
    assert {"cors-origin"} == {line["policy"] for line in pairs} - {None}
    granted = [path for path, names in quick_switch.taken if "Origin" in names]
    assert granted.count("/fresh") == len(origins) * 3 * 2


async def _head(client: Any, data: bytes) -> bytes:
    """The head of the answer to one request on its own connection, as sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(data)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    return head


async def test_a_plain_hits_head_is_remade_when_what_it_says_changes(
        proxy: Any, origin: Any) -> None:
    """A plain hit reuses the head made for the last one on its route only while it would
    be the same: the same entry, HTTP version and Connection, Age and ttl in the same
    seconds."""
    version = {"n": 0}

    async def answer(request: web.Request) -> web.Response:
        if request.method == "POST":
            version["n"] += 1
            return web.Response(text="changed")
        return web.Response(body=BODY, headers={"Cache-Control": "max-age=600",
                                                "ETag": f'"v{version["n"]}"'})

    app = web.Application()
    app.router.add_route("*", "/page", answer)
    client = await proxy(await origin(app))
    await _head(client, request("/page", ()))  # stored
    first = await _head(client, request("/page", ()))
    assert b'ETag: "v0"' in first and b"X-Cache: HIT" in first
    # A POST invalidates the entry (RFC 9111 §4.4). The next one stored, replayed in the
    # same second (same Age and ttl), says its own fields, not the head made before.
    posted = await _head(client, request("/page", ("Content-Length: 1",), "POST") + b"x")
    assert posted.startswith(b"HTTP/1.1 200")
    assert b"X-Cache: MISS" in await _head(client, request("/page", ()))
    first = await _head(client, request("/page", ()))
    assert b"X-Cache: HIT" in first and b'ETag: "v1"' in first
    assert b"Connection" not in first
    closing = await _head(client, request("/page", ("Connection: close",)))
    assert b"\r\nConnection: close\r\n" in closing
    old = await _head(client, request("/page", (), version="1.0"))
    assert old.startswith(b"HTTP/1.1 200") and b"\r\nConnection: close\r\n" in old
    kept = await _head(client, request("/page", ("Connection: keep-alive",), version="1.0"))
    assert kept.startswith(b"HTTP/1.1 200") and b"\r\nConnection: keep-alive\r\n" in kept
    again = await _head(client, request("/page", ()))
    assert again.startswith(b"HTTP/1.1 200") and b"Connection" not in again

    def seconds(head: bytes) -> tuple[int, int]:
        age = re.search(rb"\r\nAge: (\d+)\r\n", head)
        ttl = re.search(rb"; ttl=(-?\d+)", head)
        assert age is not None and ttl is not None
        return int(age[1]), int(ttl[1])

    age, ttl = seconds(again)
    await asyncio.sleep(1.1)
    later = await _head(client, request("/page", ()))
    assert seconds(later)[0] >= age + 1 and seconds(later)[1] <= ttl - 1


async def test_memoised_heads_go_with_their_entries(proxy: Any, origin: Any) -> None:
    """A hit's encoded head is memoised (proxy/replay.py, and a plain hit's whole head on
    its route) but only while its entry is stored: a head repeats its entry's fields (up
    to 128 KiB of them), so heads kept after the store evicted their entries would hold
    memory cache.max_bytes does not bound. Checked on the objects: every head held
    belongs to an entry still alive, the heads weigh no more than the store holds, and a
    large head is not kept per route."""
    async def answer(request: web.Request) -> web.Response:
        pad = "p" * (20000 if request.match_info["name"].startswith("big") else 10)
        return web.Response(body=b"b" * 100, headers={"Cache-Control": "max-age=600",
                                                      "X-Pad": pad})

    app = web.Application()
    app.router.add_get("/{name}", answer)
    client = await proxy(await origin(app), cache={"max_bytes": 128 * 1024,
                                                   "max_object_bytes": 64 * 1024})
    for i in range(40):  # each a miss (stored), then a hit (replayed): most evicted later
        for name in (f"big{i}", f"small{i}"):
            assert b"X-Cache: MISS" in await _head(client, request(f"/{name}", ()))
            assert b"X-Cache: HIT" in await _head(client, request(f"/{name}", ()))
    listener = client.server.runner.server
    stats = client.app_proxy.store.stats()
    assert stats.evictions > 0
    records = list(listener.replays._memo._values.values())  # (entry ref, head, ...)
    assert 0 < len(records) <= stats.entries
    assert all(record[0]() is not None for record in records)  # the entry is stored
    held = sum(len(record[1][0]) for record in records)
    assert held == listener.replays.bytes <= stats.bytes
    kept = [route.replayed for route in listener.quick._routes.values()
            if route is not None and route.replayed is not None]
    assert kept and all(ref() is not None for ref, _, _, _ in kept)
    assert all(len(head) < 1000 for _, _, head, _ in kept)  # the big ones are not kept
    # The next hit of a big entry is made again, the same.
    again = await _head(client, request("/big39", ()))
    assert b"X-Cache: HIT" in again and b"p" * 20000 in again


async def test_a_stored_204_is_replayed_without_content_length(proxy: Any) -> None:
    """RFC 9110 §8.6: a server MUST NOT send Content-Length in a 204. The hit says what
    the miss said: no Content-Length, no content; and a 304 the cache answers a
    conditional with carries none either (§8.6 allows it only as the 200's length)."""
    def answer(head: bytes) -> bytes:
        if head.startswith(b"GET /empty "):
            return (b"HTTP/1.1 204 No Content\r\nCache-Control: max-age=600\r\n"
                    b"Content-Length: 0\r\n\r\n")  # (a non-conforming origin's)
        return (b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nETag: \"v1\"\r\n"
                b"Content-Length: 3\r\n\r\nabc")

    async with raw_origin(answer) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        miss = await _head(client, request("/empty", ()))
        assert miss.startswith(b"HTTP/1.1 204") and b"X-Cache: MISS" in miss
        for shape in ((), ("Origin: http://elsewhere.example",)):  # quick, and full path
            hit = await _head(client, request("/empty", shape))
            assert hit.startswith(b"HTTP/1.1 204") and b"X-Cache: HIT" in hit
            assert b"Content-Length" not in miss + hit
        await _head(client, request("/page", ()))  # stored
        not_modified = await _head(client, request("/page", ('If-None-Match: "v1"',)))
        assert not_modified.startswith(b"HTTP/1.1 304") and b"X-Cache: HIT" in not_modified
        assert b"Content-Length" not in not_modified


def test_a_head_made_under_one_plan_is_not_replayed_under_another_at_its_id(monkeypatch):
    """A reload frees the old route plans, and a new one may be made at a freed one's id()
    with other outbound policies (here the Referrer-Policy): the head kept for the old
    plan is not replayed under the new one. (id() is made to collide, as it may.)"""
    from test_store_memory import entry

    from cacheproxy.proxy import replay
    from cacheproxy.proxy.routing import Plans

    def plan(policy: str) -> Any:
        config = proxy_config("http://127.0.0.1:1", referer={"policy": policy})
        return Plans.build(config, "http://127.0.0.1:1").default

    monkeypatch.setattr(replay, "id", lambda obj: 0, raising=False)
    blocks, stored = replay.ReplayBlocks(), entry("http://h/x")
    before, _ = blocks.head(stored, plan("no-referrer"), HttpVersion11)
    after, _ = blocks.head(stored, plan("same-origin"), HttpVersion11)
    assert b"\r\nReferrer-Policy: no-referrer\r\n" in before + b"\r\n"
    assert b"\r\nReferrer-Policy: same-origin\r\n" in after + b"\r\n"


def test_an_entry_refreshed_with_the_stored_fields_reuses_the_last_encoded_head(
        monkeypatch: Any) -> None:
    """A URL revalidated on every request (no-cache) gets a new entry per 304, holding
    the stored field tuple when the 304 repeated them (stored.refreshed): its head is
    encoded once. What else goes into a head (status, body length, plan, version) makes
    it again when it differs."""

    from test_store_memory import entry

    from cacheproxy.proxy import replay
    from cacheproxy.proxy.routing import Plans

    config = proxy_config("http://127.0.0.1:1")
    plan = Plans.build(config, "http://127.0.0.1:1").default
    other = Plans.build(config, "http://127.0.0.1:1").default
    blocks, stored = replay.ReplayBlocks(), entry("http://h/x")
    encoded: list[int] = []
    real = blocks._encode
    monkeypatch.setattr(blocks, "_encode",
                        lambda e, p, v: encoded.append(e.status) or real(e, p, v))
    head, _ = blocks.head(stored, plan, HttpVersion11)
    refreshed = stored.replace(response_time=5.0, initial_age=0.0)  # the same tuples
    assert blocks.head(refreshed, plan, HttpVersion11)[0] == head and len(encoded) == 1
    for changed, again in (
            ((stored.replace(status=404), plan, HttpVersion11), b" 404 "),
            ((stored.replace(body=b"y" * 7), plan, HttpVersion11),
             b"Content-Length: 7"),
            ((stored.replace(headers=tuple(stored.headers)), other,
              HttpVersion10), b"HTTP/1.1 200"),
            ((stored.replace(headers=(*stored.headers, "X-A", "1")), plan,
              HttpVersion11), b"X-A: 1")):
        before = len(encoded)
        made, _ = blocks.head(*changed)
        assert len(encoded) == before + 1 and again in made
