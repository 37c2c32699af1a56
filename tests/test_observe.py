"""The request log, the stats API, /metrics, the admin API and PURGE, through the proxy."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import re
import threading
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import HttpVersion, web
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st
from support import cache_status

from cacheproxy.config import AdminConfig
from cacheproxy.observe import gc_pauses
from cacheproxy.observe import sink as sink_module
from cacheproxy.observe.admin import Admin
from cacheproxy.observe.record import (
    HitLines,
    LogRecord,
    iso_time,
    parse_line,
    to_json,
    to_text,
)
from cacheproxy.proxy.server import OBSERVER


def origin_app() -> web.Application:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=f"page {request.path}", headers={"Cache-Control": "max-age=60"})

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text="origin's own metrics")
    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/{tail:.*}", page)
    return app


async def read_log(client: Any, path: Path) -> list[str]:
    """Lines written so far (the sink writes from a thread)."""
    observer = client.server.app[OBSERVER]
    observer.flush()  # what was recorded, to the writer thread
    sink = observer.sink
    assert await asyncio.to_thread(sink.wait_written)
    return path.read_text().splitlines() if path.exists() else []


# -- the request log --------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["json", "text"])
async def test_one_log_line_per_request_with_the_cache_fields(origin, proxy, tmp_path, fmt):
    log = tmp_path / "requests.log"
    c = await proxy(await origin(origin_app()), log={"path": str(log), "format": fmt})
    miss = await c.get("/a?x=1", headers={"Referer": "http://ref.example/", "User-Agent": "t/1"})
    hit = await c.get("/a?x=1")
    lines = await read_log(c, log)
    assert len(lines) == 2
    if fmt == "json":
        assert json.loads(lines[0])["cache"] == "MISS"
    else:
        assert lines[0].startswith("127.0.0.1 - - [") and ' "GET /a?x=1 HTTP/1.1" 200 ' in lines[0]
    first, second = (parse_line(line) for line in lines)
    assert first is not None and second is not None
    assert (first.method, first.path, first.status, first.cache) == ("GET", "/a?x=1", 200, "MISS")
    assert first.upstream_status == 200 and first.upstream_ms is not None
    assert first.bytes == len("page /a") and first.referer == "http://ref.example/"
    assert first.user_agent == "t/1" and first.collapsed is False and first.route == "default"
    assert first.cache_status == cache_status(miss)  # the log says what the client was told
    assert second.cache == "HIT" and second.age == 0 and 58 <= second.ttl <= 60
    assert second.upstream_status is None and second.cache_status == cache_status(hit)


async def test_format_off_writes_nothing_but_still_counts(origin, proxy, tmp_path):
    log = tmp_path / "requests.log"
    c = await proxy(await origin(origin_app()), log={"path": str(log), "format": "off"})
    await c.get("/a")
    await asyncio.sleep(0.1)
    assert not log.exists()
    assert (await (await c.get("/_cacheproxy/stats")).json())["requests"] == 1


async def test_reopen_starts_a_new_file_after_rotation(origin, proxy, tmp_path):
    log = tmp_path / "requests.log"
    c = await proxy(await origin(origin_app()), log={"path": str(log)})
    await c.get("/before")
    assert len(await read_log(c, log)) == 1
    log.rename(tmp_path / "requests.log.1")  # what logrotate does, then SIGHUP
    c.server.app[OBSERVER].reopen()
    await c.get("/after")
    lines = await read_log(c, log)
    assert len(lines) == 1 and json.loads(lines[0])["path"] == "/after"
    assert "/before" in (tmp_path / "requests.log.1").read_text()


# -- stats, metrics -----------------------------------------------------------------------------

async def test_stats_count_what_happened(origin, proxy):
    c = await proxy(await origin(origin_app()))
    for path in ("/a", "/a", "/a", "/b"):
        await c.get(path)
    stats = await (await c.get("/_cacheproxy/stats")).json()
    assert stats["requests"] == 4
    assert stats["by_cache"]["HIT"] == 2 and stats["by_cache"]["MISS"] == 2
    assert stats["hit_ratio"] == 0.5
    assert stats["bytes_from_cache"] == 2 * len("page /a")
    assert stats["store"]["entries"] == 2 and stats["store"]["backend"] == "memory"
    assert sum(b["requests"] for b in stats["series"]) == 4
    assert [r["path"] for r in stats["recent"]] == ["/a", "/a", "/a", "/b"]


async def test_metrics_in_prometheus_format(origin, proxy):
    c = await proxy(await origin(origin_app()))
    await c.get("/a")
    await c.get("/a")
    resp = await c.get("/metrics")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    assert 'cacheproxy_requests_total{cache="HIT",route="default"} 1.0' in text
    assert 'cacheproxy_requests_total{cache="MISS",route="default"} 1.0' in text
    assert f'cacheproxy_response_body_bytes_total{{source="cache"}} {len("page /a")}.0' in text
    assert "cacheproxy_upstream_response_seconds_count 1.0" in text
    assert "cacheproxy_store_entries 1.0" in text and "cacheproxy_store_evictions_total" in text
    full = re.compile(r'^python_gc_collections_total\{generation="2"\} (\d+)\.0$', re.M)
    timed = re.compile(r'^cacheproxy_gc_pause_seconds_count\{generation="2"\} (\d+)\.0$', re.M)
    longest = re.compile(r'^cacheproxy_gc_longest_pause_seconds\{generation="2"\} (\S+)$', re.M)
    before, timed_before = full.search(text), timed.search(text)
    assert before and timed_before and longest.search(text), text
    gc.collect()  # a full collection: counted, and timed
    text = await (await c.get("/metrics")).text()
    after, timed_after, took = full.search(text), timed.search(text), longest.search(text)
    assert after and int(after[1]) > int(before[1])
    assert timed_after and int(timed_after[1]) > int(timed_before[1])
    assert took and float(took[1]) > 0


def test_collector_pauses_fall_in_their_buckets() -> None:
    clock = iter([10.0, 10.03, 20.0, 22.0, 30.0, 30.00005])
    pauses = gc_pauses.GCPauses(clock=lambda: next(clock))
    pauses("stop", {"generation": 1})  # a stop without its start is not a pause
    for generation in (2, 2, 0):
        pauses("start", {"generation": generation})
        pauses("stop", {"generation": generation, "collected": 0, "uncollectable": 0})
    buckets = gc_pauses.BUCKETS
    assert pauses.counts[2][buckets.index(0.05)] == 1  # 30 ms: in (25 ms, 50 ms]
    assert pauses.counts[2][-1] == 1  # 2 s: past the last bound
    assert pauses.counts[0][0] == 1 and sum(pauses.counts[1]) == 0
    assert pauses.sums[2] == pytest.approx(2.03) and pauses.longest[2] == pytest.approx(2.0)


def test_a_collection_no_request_waits_for_is_not_timed() -> None:
    gc_pauses.install()
    counted = sum(gc_pauses.PAUSES.counts[2])
    with gc_pauses.untimed():
        gc.collect()
    assert sum(gc_pauses.PAUSES.counts[2]) == counted
    gc.collect()
    assert sum(gc_pauses.PAUSES.counts[2]) > counted


async def test_metrics_path_can_be_given_back_to_the_origin(origin, proxy):
    c = await proxy(await origin(origin_app()), admin={"metrics_path": ""})
    assert await (await c.get("/metrics")).text() == "origin's own metrics"


# -- the admin API -----------------------------------------------------------------------------

async def test_purge_one_url_makes_the_next_request_a_miss(origin, proxy):
    c = await proxy(await origin(origin_app()))
    await c.get("/a")
    assert (await c.get("/a")).headers["X-Cache"] == "HIT"
    purged = await c.post("/_cacheproxy/purge", params={"url": "/a"})
    assert purged.status == 200 and (await purged.json())["purged"] == 1
    assert (await c.get("/a")).headers["X-Cache"] == "MISS"
    again = await c.post("/_cacheproxy/purge", params={"url": str(c.make_url("/zzz"))})
    assert again.status == 404


async def test_purge_by_prefix_and_clear(origin, proxy):
    c = await proxy(await origin(origin_app()))
    for path in ("/img/1", "/img/2", "/css/1"):
        await c.get(path)
    resp = await c.post("/_cacheproxy/purge", params={"prefix": "/img/"})
    assert (await resp.json())["purged"] == 2
    assert (await c.get("/img/1")).headers["X-Cache"] == "MISS"
    assert (await c.get("/css/1")).headers["X-Cache"] == "HIT"
    cleared = await (await c.post("/_cacheproxy/clear")).json()
    assert cleared["cleared"] == 2 and c.app_proxy.store.stats().entries == 0


async def test_purge_method_on_a_url(origin, proxy):
    c = await proxy(await origin(origin_app()))
    await c.get("/a")
    resp = await c.request("PURGE", "/a")
    assert resp.status == 200 and (await resp.json())["purged"] == 1
    assert (await c.request("PURGE", "/a")).status == 404
    assert (await c.get("/a")).headers["X-Cache"] == "MISS"


async def test_entries_list_and_inspect(origin, proxy):
    up = await origin(origin_app())
    c = await proxy(up)
    await c.get("/a")
    await c.get("/b")
    listed = await (await c.get("/_cacheproxy/entries")).json()
    keys = [e["key"] for e in listed["entries"]]
    # Keyed by the client's URL: the origin sees its Host (X-Forwarded-Host, on by default).
    assert keys == [str(c.make_url("/a")), str(c.make_url("/b"))]
    variant = listed["entries"][0]["variants"][0]
    assert variant["status"] == 200 and variant["ttl"] > 50 and variant["size"] > 0
    one = await (await c.get("/_cacheproxy/entry", params={"url": "/a"})).json()
    assert ["Cache-Control", "max-age=60"] in one["variants"][0]["fields"]
    assert (await c.get("/_cacheproxy/entry", params={"url": "/none"})).status == 404


async def test_admin_paths_are_never_forwarded(origin, proxy):
    c = await proxy(await origin(origin_app()))
    resp = await c.get("/_cacheproxy/no-such-thing")
    assert resp.status == 404 and "no admin endpoint" in (await resp.json())["error"]


async def test_an_admin_endpoint_asked_with_another_method_is_a_405_naming_its_own(
        origin, proxy):
    """RFC 9110 §15.5.6: `curl .../purge?url=/a` without -X POST used to be told that
    no such endpoint existed (404)."""
    c = await proxy(await origin(origin_app()))
    resp = await c.get("/_cacheproxy/purge", params={"url": "/a"})
    assert resp.status == 405 and resp.headers["Allow"] == "POST"
    assert "takes POST" in (await resp.json())["error"]
    resp = await c.post("/_cacheproxy/healthz")
    assert resp.status == 405 and resp.headers["Allow"] == "GET, HEAD"


async def test_a_token_is_required_when_configured(origin, proxy):
    c = await proxy(await origin(origin_app()), admin={"token": "s3cret"})
    await c.get("/a")
    for path in ("/_cacheproxy/stats", "/metrics", "/_cacheproxy/entries"):
        assert (await c.get(path)).status == 401
        assert (await c.get(path, headers={"Authorization": "Bearer wrong"})).status == 401
        ok = await c.get(path, headers={"Authorization": "Bearer s3cret"})
        assert ok.status == 200
    assert (await c.post("/_cacheproxy/clear")).status == 401
    assert (await c.request("PURGE", "/a")).status == 401
    assert (await c.get("/a")).headers["X-Cache"] == "HIT"  # nothing was purged
    purged = await c.request("PURGE", "/a", headers={"Authorization": "Bearer s3cret"})
    assert purged.status == 200


class _Transport:
    """Stands in for a socket: only the peer address is read."""

    def __init__(self, peer: str) -> None:
        self.peer = peer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self.peer, 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False


@pytest.mark.parametrize(("peer", "host", "token", "allowed"), [
    ("127.0.0.1", "127.0.0.1:8080", "", True), ("::1", "[::1]:8080", "", True),
    ("::ffff:127.0.0.1", "localhost:8080", "", True),
    ("203.0.113.9", "127.0.0.1:8080", "", False),
    ("127.0.0.1", "rebound.example:8080", "", False),  # DNS rebinding: a foreign name
    ("203.0.113.9", "127.0.0.1:8080", "t", False),
])
def test_without_a_token_only_loopback_clients_are_answered(peer, host, token, allowed):
    admin = Admin(AdminConfig(token=token), store=None, observer=None)  # type: ignore[arg-type]
    request = make_mocked_request("GET", "/_cacheproxy/stats", headers={"Host": host},
                                  transport=_Transport(peer))
    refusal = admin.denied(request)
    assert (refusal is None) is allowed
    if not allowed:
        assert refusal is not None and refusal.status == (401 if token else 403)


# -- the record's formats -----------------------------------------------------------------------

_text = st.text(max_size=40)
_maybe = st.none() | _text


@settings(max_examples=200, deadline=None)
@given(path=_text, host=_text, ua=_maybe, referer=_maybe, policy=_maybe,
       age=st.none() | st.integers(-10**6, 10**9), upstream_ms=st.none() | st.floats(0, 1e6),
       collapsed=st.booleans(), when=st.floats(0, 4e9),
       # Values to_json keeps escaped (a memo): repeated ones included, and long ones.
       client=st.sampled_from(("127.0.0.1", "::1", "203.0.113.9")),
       route=st.sampled_from(("default", "r\u00e9")) | _text,
       member=st.sampled_from(("cacheproxy; hit", "\x7f")) | st.text(max_size=300))
def test_to_json_is_exactly_json_dumps_and_reads_back(path, host, ua, referer, policy, age,
                                                      upstream_ms, collapsed, when, client,
                                                      route, member):
    record = LogRecord(time=when, client=client, method="GET", host=host, path=path,
                       status=200, cache="HIT", bytes=1, total_ms=0.5, age=age, ttl=age,
                       upstream_ms=upstream_ms, collapsed=collapsed, route=route,
                       policy=policy, referer=referer, user_agent=ua, cache_status=member)
    expected = {f.name: getattr(record, f.name) for f in dataclasses.fields(LogRecord)}
    expected["time"] = iso_time(when)
    del expected["bytes_in"]  # written only on a tunnel's line
    line = to_json(record)
    # C1 controls are escaped (\u0085), as C0 ones are: the same JSON value; so are the
    # line separators and bidirectional controls (record._INVISIBLE).
    assert line == re.sub("[\x80-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]",
                          lambda m: f"\\u{ord(m.group()):04x}",
                          json.dumps(expected, separators=(",", ":"), ensure_ascii=False))
    back = parse_line(line)
    assert back is not None and dataclasses.replace(back, time=record.time) == record
    assert abs(back.time - round(when * 1000) / 1000) < 1e-3
    text_back = parse_line(to_text(record))
    assert text_back is not None and text_back.path == path
    assert text_back.host == host and text_back.user_agent == ua  # "-" too: it is escaped


class _Clock:
    """time.time() and time.perf_counter() for the observer: one wall time, and the
    perf_counter readings in the order they are taken."""

    def __init__(self, wall: float, ticks: list[float]) -> None:
        self.wall, self._ticks = wall, iter(ticks)

    def time(self) -> float:
        return self.wall

    def perf_counter(self) -> float:
        return next(self._ticks)


_few = st.sampled_from  # a few values each: lines of one shape repeat, others differ in one
_hit = st.tuples(
    _few(("GET", "HEAD")), _few((None, "127.0.0.1", "::1")),
    _few(("a.example", "b.example:8080")) | _text, _few(("/x", "/y?q=1")) | _text,
    _few(("default", "r\u00e9")), _few((frozenset(), frozenset({"token"}))),
    _few((200, 404)), _few((0, 1024)), st.floats(0, 5), st.floats(-5, 3600),
    _few(((1, 1), (1, 0))), _few((None, "https://a.example/?token=s&b=1")) | _text,
    _few((None, "curl/8")) | _text, _few(("cacheproxy; hit; ttl=3", "c; hit")),
    st.floats(0, 10), st.floats(0, 2))


# Hits like a first one but for one field each: of the same shape (the time fields, an
# equal value) or of a shape that differs from it in that field alone.
_hits = st.tuples(_hit, st.lists(st.tuples(st.integers(0, 15), _hit), max_size=30)).map(
    lambda t: [t[0], *((*t[0][:i], other[i], *t[0][i + 1:]) for i, other in t[1])])


@settings(max_examples=200, deadline=None)
@given(hits=_hits, wall=st.floats(1e9, 4e9))
def test_hit_lines_from_templates_are_the_records_lines(hits, wall):
    """A fresh hit's line is made from a template (record.HitLines) and its counts by
    Stats.add_hit: the same line, counts and recent records as from its LogRecord."""
    from multidict import CIMultiDict, CIMultiDictProxy

    from cacheproxy.config import LogConfig
    from cacheproxy.observe import observer as observer_module
    from cacheproxy.observe.observer import Observer, _hit_fields, _hit_record
    from cacheproxy.observe.stats import Stats

    now = 20.0  # perf_counter at settle time: after every hit ended
    ticks = [started + took for *_, started, took in hits] + [now]
    written: list[str] = []
    observer = Observer(LogConfig(format="off"), 0.0)
    observer.sink, observer.format = SimpleNamespace(write_many=written.extend), to_json
    parts = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(observer_module, "time", _Clock(wall, ticks))

        async def record_all() -> None:
            for (method, remote, host, path, route, secrets, status, sent, age, ttl,
                 version, referer, agent, member, started, _) in hits:
                fields = CIMultiDict(Host=host)
                for name, value in (("Referer", referer), ("User-Agent", agent)):
                    if value is not None:
                        fields[name] = value
                msg = SimpleNamespace(method=method, version=HttpVersion(*version),
                                      headers=CIMultiDictProxy(fields))
                observer.record_hit(msg, remote, host, path, route, secrets, status, sent,
                                    age, ttl, member, started)
                parts.append(observer._pending[-1][0])
            observer.settle()  # the batch, as at the loop iteration's end

        asyncio.run(record_all())
    records = [_hit_record(_hit_fields(p), wall, now) for p in parts]
    assert written == [to_json(r) for r in records]
    expected = Stats(0.0)
    for r in records:
        expected.add(r)
    got = observer.stats
    assert got.recent_records() == expected.recent_records()
    assert got.snapshot(0.0, {}, "v") == expected.snapshot(0.0, {}, "v")
    assert [got.requests, got.by_route_cache, got.bytes_from_cache, list(got.series)] == \
        [expected.requests, expected.by_route_cache, expected.bytes_from_cache,
         list(expected.series)]


def test_a_hits_record_kept_for_the_stats_api_keeps_none_of_its_request():
    """The stats API's recent records are made when read; what waits for that keeps the
    fields a line shows, not the request (its Cookie, its other fields)."""
    from multidict import CIMultiDict, CIMultiDictProxy

    from cacheproxy.config import LogConfig
    from cacheproxy.observe.observer import Observer

    class Msg:  # (weakly referenceable, as aiohttp's messages are not)
        method, version = "GET", HttpVersion(1, 1)
        headers = CIMultiDictProxy(CIMultiDict(
            {"Cookie": "session=s3cret", "Referer": "https://a.example/?token=t&x=1",
             "User-Agent": "curl/8"}))

    msg = Msg()
    observer = Observer(LogConfig(format="off"), 0.0)

    async def hit(msg: Msg) -> None:
        observer.record_hit(msg, "::1", "a.example", "/p", "default", frozenset({"token"}),
                            200, 5, 1.5, 9.5, "c; hit", 1.0)
        observer.settle()

    asyncio.run(hit(msg))
    gone = weakref.ref(msg)
    del msg
    gc.collect()
    assert gone() is None
    [record] = observer.stats.recent_records()
    assert (record.referer, record.user_agent, record.age, record.ttl) == \
        ("https://a.example/?token=REDACTED&x=1", "curl/8", 1, 9)


def test_hit_line_templates_are_bounded_in_number_and_length():
    """A template is kept for a short line only, and at most `kept` of them: a line too
    long for one is made from its record every time, and still right."""
    lines = HitLines(kept=2, longest=600)
    made: list[str] = []

    def line(shape: str, agent: str) -> str:
        r = LogRecord(time=1e9, client="::1", method="GET", host="a", path="/" + shape,
                      status=200, cache="HIT", bytes=5, total_ms=0.25, age=1, ttl=9,
                      user_agent=agent, cache_status="c; hit")

        def record() -> LogRecord:
            made.append(shape)
            return r

        out = lines.line((shape, agent), r.time, r.client, r.total_ms, record)
        assert out == to_json(r)
        return out

    line("a", "curl"), line("a", "curl")
    assert made == ["a"]  # kept
    line("long", "x" * 600), line("long", "x" * 600)
    assert made == ["a", "long", "long"]  # too long to keep
    line("b", "curl"), line("c", "curl"), line("a", "curl")
    assert made == ["a", "long", "long", "b", "c", "a"]  # a third shape: the table starts over


async def test_requests_no_handler_answered_are_logged_too(origin, proxy, tmp_path):
    """A request aiohttp's parser refuses (400) and the admin API's answers never reach
    the proxy's handler; they are in the log all the same."""
    log = tmp_path / "requests.log"
    c = await proxy(await origin(origin_app()), log={"path": str(log)},
                    admin={"token": "s3cret"})
    reader, writer = await asyncio.open_connection("127.0.0.1", c.server.port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
    await writer.drain()
    status_line = (await reader.read(100)).split(b"\r\n", 1)[0]
    assert status_line.split()[1] == b"400", status_line
    writer.close()
    assert (await c.get("/_cacheproxy/stats")).status == 401
    records = [parse_line(line) for line in await read_log(c, log)]
    assert [(r.status, r.cache) for r in records] == [(400, "ERROR"), (401, "DENIED")]
    stats = await c.get("/_cacheproxy/stats", headers={"Authorization": "Bearer s3cret"})
    by_cache = (await stats.json())["by_cache"]
    assert by_cache["ERROR"] == 1 and by_cache["DENIED"] == 0  # admin calls are not traffic


async def test_a_stalled_writer_drops_lines_instead_of_growing(monkeypatch, tmp_path):
    """The request log's memory stays bounded when its file or pipe stops draining."""
    monkeypatch.setattr(sink_module, "MAX_BACKLOG", 3)
    sink = sink_module.LogSink(str(tmp_path / "requests.log"))
    stalled, released = threading.Event(), threading.Event()
    write = sink._file.write  # stall the writer thread inside its first write

    def slow_write(data: bytes) -> int:
        stalled.set()
        released.wait(5)
        return write(data)
    monkeypatch.setattr(sink._file, "write", slow_write)
    sink.write("line 0")
    sink.flush()
    assert await asyncio.to_thread(stalled.wait, 5)
    for n in range(1, 10):
        sink.write(f"line {n}")
        sink.flush()  # one batch per line
    # One batch is being written (stalled), three wait; the other six were dropped.
    assert sink.dropped == 6
    released.set()
    sink.close()
    assert (tmp_path / "requests.log").read_text().splitlines() == [
        f"line {n}" for n in range(4)]


async def test_a_private_routes_listed_key_purges_as_listed(origin, proxy):
    """cache.shared = false keys apart ("#private:default", issue 9 defect 4): the key the
    entries list shows is the key a purge takes, and a path on this host finds it too."""
    up = await origin(origin_app())
    c = await proxy(up, cache={"shared": False})
    for _ in range(2):
        await c.get("/a")
        listed = await (await c.get("/_cacheproxy/entries")).json()
        [key] = [e["key"] for e in listed["entries"]]
        assert key.endswith("/a#private:default")
        purged = await c.post("/_cacheproxy/purge", params={"url": key})
        assert purged.status == 200 and (await purged.json())["key"] == key
        assert (await c.get("/a")).headers["X-Cache"] == "MISS"
        assert (await c.request("PURGE", "/a")).status == 200


def test_the_stats_series_covers_fifteen_minutes_in_bounded_memory() -> None:
    """The dashboard's chart: one bucket per 10 s with traffic, the last 15 minutes' worth
    kept (90 buckets), whatever the traffic before (issue 13, item 7)."""
    from cacheproxy.observe.stats import SERIES_BUCKETS, SERIES_SECONDS, Stats

    start = 1_800_000_000.0
    stats = Stats(start)
    for second in range(0, 20 * 60, 2):  # 20 minutes, a request every 2 s, every 3rd a hit
        cache = "HIT" if second % 3 == 0 else "MISS"
        stats.add(LogRecord(time=start + second, client="127.0.0.1", method="GET", host="h",
                            path="/", status=200, cache=cache, bytes=1, total_ms=1.0))
    series = stats.snapshot(start + 1200, {}, "x")["series"]
    assert SERIES_BUCKETS * SERIES_SECONDS == 15 * 60 and len(series) == SERIES_BUCKETS
    assert series[0]["t"] == start + 5 * 60 and series[-1]["t"] == start + 1190
    assert all(b["requests"] == 5 for b in series)
    assert sum(b["hits"] for b in series) == sum(1 for s in range(300, 1200, 2) if s % 3 == 0)
