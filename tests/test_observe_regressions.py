"""Regression tests from a second reader's review of observe/ (admin access, the request
log and `cacheproxy logs`): each one showed a defect, fixed since."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from cacheproxy.cli import main
from cacheproxy.config import AdminConfig
from cacheproxy.observe import logread
from cacheproxy.observe.admin import Admin
from cacheproxy.observe.logread import _Tail
from cacheproxy.observe.record import LogRecord, parse_line, to_json
from cacheproxy.observe.sink import LogSink
from cacheproxy.observe.summary import Summary, url_key
from cacheproxy.proxy.server import OBSERVER


def origin_app() -> web.Application:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=f"page {request.path}", headers={"Cache-Control": "max-age=60"})
    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    return app


async def read_log(client: Any, path: Path) -> list[str]:
    observer = client.server.app[OBSERVER]
    await asyncio.sleep(0.02)  # the access log runs once the response has gone out
    observer.flush()
    sink = observer.sink
    assert await asyncio.to_thread(sink.wait_written)
    return path.read_text().splitlines() if path.exists() else []


async def raw_request(client: Any, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(data)
    await writer.drain()
    head = await reader.read(200)
    writer.close()
    return head.split(b"\r\n", 1)[0]


# -- admin access ---------------------------------------------------------------------------------

async def test_loopback_only_admin_refuses_a_foreign_host(origin, proxy):
    c = await proxy(await origin(origin_app()))
    await c.get("/account?session=abc123")
    resp = await c.get("/_cacheproxy/entries", headers={"Host": "attacker.example"})
    assert resp.status == 403


async def test_loopback_only_admin_refuses_cross_site_posts(origin, proxy):
    c = await proxy(await origin(origin_app()))
    await c.get("/a")
    resp = await c.post("/_cacheproxy/clear", headers={
        "Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"})
    assert resp.status == 403
    assert c.app_proxy.store.stats().entries == 1


async def test_dashboard_token_is_not_written_to_the_request_log(origin, proxy, tmp_path):
    log = tmp_path / "requests.log"
    c = await proxy(await origin(origin_app()), log={"path": str(log)},
                    admin={"token": "s3cret-token"})
    assert (await c.get("/_cacheproxy/dashboard", params={"token": "s3cret-token"})).status == 200
    lines = await read_log(c, log)
    assert lines, "the dashboard request is logged"
    assert not any("s3cret-token" in line for line in lines)


async def test_undecodable_authorization_is_a_401_not_a_500(origin, proxy):
    c = await proxy(await origin(origin_app()), admin={"token": "s3cret"})
    status_line = await raw_request(
        c, b"GET /_cacheproxy/stats HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer \xff\r\n"
           b"Connection: close\r\n\r\n")
    assert status_line.split()[1] == b"401", status_line


def test_ipv4_mapped_loopback_is_loopback():
    class Transport:
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return ("::ffff:127.0.0.1", 40000) if name == "peername" else default

        def is_closing(self) -> bool:
            return False
    admin = Admin(AdminConfig(), store=None, observer=None)  # type: ignore[arg-type]
    request = make_mocked_request("GET", "/_cacheproxy/stats", headers={"Host": "127.0.0.1:8080"},
                                  transport=Transport())
    assert admin.denied(request) is None


# -- stats and log accuracy ---------------------------------------------------------------------

async def test_cacheproxy_logs_counts_like_the_stats_api(origin, proxy, tmp_path):
    log = tmp_path / "requests.log"
    c = await proxy(await origin(origin_app()), log={"path": str(log)})
    await c.get("/a")
    await c.get("/a")
    for _ in range(3):
        await c.get("/_cacheproxy/stats")
    await c.get("/metrics")
    await asyncio.sleep(0.02)
    stats = await (await c.get("/_cacheproxy/stats")).json()
    summary = Summary()
    for line in await read_log(c, log):
        summary.add_line(line)
    report = summary.report()
    assert (stats["requests"], stats["bytes_from_origin"]) == (2, len("page /a"))
    assert report["requests"] == stats["requests"]
    assert report["bytes"]["from_origin"] == stats["bytes_from_origin"]


async def test_head_answered_by_the_proxy_logs_zero_bytes(origin, proxy, tmp_path):
    log = tmp_path / "requests.log"
    c = await proxy(await origin(origin_app()), log={"path": str(log)})
    resp = await c.head("/nothing", headers={"Cache-Control": "only-if-cached"})
    assert resp.status == 504 and await resp.read() == b""
    [line] = await read_log(c, log)
    assert json.loads(line)["bytes"] == 0


async def test_absolute_form_is_logged_under_the_host_it_was_for(origin, proxy, tmp_path):
    log = tmp_path / "requests.log"
    c = await proxy(await origin(origin_app()), proxy={"host_header": "pass"},
                    log={"path": str(log)})
    status_line = await raw_request(c, b"GET http://a.example/z HTTP/1.1\r\nHost: b.example\r\n"
                                       b"Connection: close\r\n\r\n")
    assert status_line.split()[1] == b"200"
    entries = await (await c.get("/_cacheproxy/entries")).json()
    # host_header = pass: the client's authority (here the request line's) is in the key.
    assert [e["key"] for e in entries["entries"]] == ["http://a.example/z"]
    [line] = [x for x in await read_log(c, log) if "_cacheproxy" not in x]
    record = parse_line(line)
    assert record is not None and url_key(record) == "a.example/z"


# -- the log writer -----------------------------------------------------------------------------

async def test_a_non_utf8_header_does_not_lose_the_stdout_batch(origin, proxy, monkeypatch):
    out = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out, encoding="utf-8",
                                                        write_through=True))
    c = await proxy(await origin(origin_app()), log={"path": ""})
    await c.get("/first")
    await raw_request(c, b"GET /odd HTTP/1.1\r\nHost: a\r\nUser-Agent: x\xff\r\n"
                         b"Connection: close\r\n\r\n")
    await c.get("/last")
    observer = c.server.app[OBSERVER]
    await asyncio.sleep(0.02)
    observer.flush()
    sink = observer.sink
    assert await asyncio.to_thread(sink.wait_written)
    paths = [json.loads(line)["path"] for line in out.getvalue().decode("utf-8", "replace")
             .splitlines()]
    assert paths == ["/first", "/odd", "/last"]


async def test_a_failed_reopen_keeps_writing_to_the_old_file(tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    sink = LogSink(str(folder / "requests.log"))
    try:
        sink.write("before")
        sink.flush()
        folder.rename(tmp_path / "moved")  # the new file cannot be created at the old path
        sink.reopen()
        sink.write("after")
        sink.flush()
        assert await asyncio.to_thread(sink.wait_written)
        assert (tmp_path / "moved" / "requests.log").read_text().split() == ["before", "after"]
    finally:
        sink.close()


# -- cacheproxy logs ----------------------------------------------------------------------------

GOOD = json.loads(to_json(LogRecord(time=1_795_000_000, client="c", method="GET", host="h",
                                    path="/", status=200, cache="HIT", bytes=1, total_ms=1.0)))


def _line(**changes: Any) -> str:
    return json.dumps({**GOOD, **changes})


@pytest.mark.parametrize("line", [
    _line(total_ms=None),
    _line(status=None),
    '127.0.0.1 - - [23/Nov/2026:17:32:24 +0000] "GET /a HTTP/1.1" 200 66 "-" "-" host=h '
    'cache=HIT age=0 ttl=59 upstream_status=- upstream_ms=- total_ms=- collapsed=0 '
    'route=default policy="-" cache_status="x"',
], ids=["json-total_ms-null", "json-status-null", "text-total_ms-dash"])
def test_null_required_numbers_are_malformed_not_a_crash(line):
    summary = Summary()
    summary.add_line(line)
    summary.report()
    assert summary.malformed == 1


@pytest.mark.parametrize("when", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+14:00"])
def test_time_out_of_range_after_offset_is_malformed_not_a_crash(when, tmp_path, capsys):
    log = tmp_path / "access.log"
    log.write_text(_line() + "\n" + _line(time=when) + "\n")
    assert main(["logs", str(log), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lines"]["malformed"] == 1


def test_follow_reads_what_lands_in_the_rotated_file_before_the_reopen(tmp_path):
    path = tmp_path / "requests.log"
    path.write_text(_line(path="/1") + "\n")
    tail = _Tail(str(path), open(path, "rb", buffering=0))  # noqa: SIM115
    seen: list[str] = []

    def drain() -> None:
        for _ in range(5):
            lines, _ended = tail.read(0)
            seen.extend(json.loads(x)["path"] for x in lines if x)
    try:
        drain()
        path.rename(tmp_path / "requests.log.1")  # logrotate: rename, create, then HUP
        path.touch()
        drain()  # a poll between logrotate's create and its postrotate kill -HUP
        with open(tmp_path / "requests.log.1", "a") as old:  # the proxy's batch, pre-HUP
            old.write(_line(path="/2") + "\n")
        with open(path, "a") as new:  # after the reopen
            new.write(_line(path="/3") + "\n")
        drain()
    finally:
        tail.close()
    assert seen == ["/1", "/2", "/3"]


def test_follow_drains_the_old_file_after_seeing_the_new_one(tmp_path, monkeypatch):
    path = tmp_path / "requests.log"
    path.write_text(_line(path="/1") + "\n")
    tail = _Tail(str(path), open(path, "rb", buffering=0))  # noqa: SIM115
    seen: list[str] = []
    moved = tmp_path / "requests.log.1"

    class RacingOs:
        """os as logread sees it: stat() lets the writer finish first (it ran just
        after the empty read of the old file)."""
        raced = False

        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        def stat(self, name: Any) -> Any:
            # README's `mv requests.log requests.log.1 && kill -HUP`: the writer thread
            # writes its last batch to the old file, then opens the new one.
            if not RacingOs.raced:
                RacingOs.raced = True
                path.rename(moved)
                with open(moved, "a") as old:
                    old.write(_line(path="/2") + "\n")
                path.write_text(_line(path="/3") + "\n")
            return os.stat(name)
    try:
        for _ in range(2):
            lines, _ended = tail.read(0)
            seen.extend(json.loads(x)["path"] for x in lines if x)
        monkeypatch.setattr(logread, "os", RacingOs())
        for _ in range(5):
            lines, _ended = tail.read(0)
            seen.extend(json.loads(x)["path"] for x in lines if x)
    finally:
        monkeypatch.undo()
        tail.close()
    assert seen == ["/1", "/2", "/3"]
