"""Review (quickfull): the quick path (proxy/quick.py hits, proxy/quick_forward.py
misses sent by callback) against the full path (handler, driver, exchange), request by
request: the same answer, log line, metrics and store, whichever path takes it.

Each test sends the same requests through a proxy whose quick path takes what it can and
through one whose quick path takes nothing (QuickHits.hit declines every request of that
proxy: the full path then routes, looks up and forwards it as it always did), each in
front of its own copy of the origin, and compares what a client and an operator see."""

from __future__ import annotations

import asyncio
import re
from email.utils import formatdate
from typing import Any

from aiohttp import web
from support import read_json_log

from cacheproxy.proxy.quick import QuickHits

STAMP = formatdate(1_700_000_000, usegmt=True)
_TTL = re.compile(r"ttl=-?\d+")


def _full_only(monkeypatch: Any, full: Any) -> None:
    """The proxy full (a CacheProxy) answers every request by the full path."""
    real = QuickHits.hit

    def hit(self: QuickHits, msg: Any, started: float) -> Any:
        return None if self.proxy is full else real(self, msg, started)

    monkeypatch.setattr(QuickHits, "hit", hit)


async def _pair(proxy: Any, origin: Any, monkeypatch: Any, tmp_path: Any,
                app: Any, **sections: Any) -> tuple[Any, Any]:
    """(quick, full): two proxies, each in front of its own origin made by app()."""
    quick = await proxy(await origin(app()), log={"path": str(tmp_path / "quick.log")},
                        **sections)
    full = await proxy(await origin(app()), log={"path": str(tmp_path / "full.log")},
                       **sections)
    _full_only(monkeypatch, full.app_proxy)
    return quick, full


async def _once(port: int, data: bytes) -> tuple[str, list[str], bytes]:
    """One request on its own connection (closed after it): the status line, the fields
    but those that change from second to second (Date, Age, a ttl), sorted, and the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *fields = head.decode("latin-1").split("\r\n")
    return status, sorted(_TTL.sub("", f) for f in fields
                          if not f.lower().startswith(("date:", "age:"))), body


def _request(path: str, *fields: str, method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: example", "Connection: close", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _line(line: dict[str, Any]) -> dict[str, Any]:
    """A log line without what changes from run to run."""
    kept = {k: v for k, v in line.items()
            if k not in ("time", "total_ms", "upstream_ms", "age", "ttl")}
    if kept.get("cache_status"):
        kept["cache_status"] = _TTL.sub("", kept["cache_status"])
    return kept


def fresh_origin() -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(text="stored body", headers={
            "Cache-Control": "max-age=600", "ETag": '"v1"', "Last-Modified": STAMP})

    app = web.Application()
    app.router.add_get("/{name}", answer)
    return app


# -- a hit whose Via says the request went round a loop ---------------------------------


async def test_a_looping_request_for_a_stored_response_gets_the_full_paths_508(
        proxy: Any, origin: Any, monkeypatch: Any, tmp_path: Any) -> None:
    """A request whose Via names this cache LOOP_HOPS (8) times is answered 508 Loop
    Detected by the full path (handler._respond, before the cache: RFC 5842 §7.2, README
    "Via ... 508"), and was so before the quick path existed. The quick path checked Via
    only for a request it sends forward (Planned), so when the URL was stored, a plain GET
    (Plain), a HEAD or a GET with validators or a Range (Quick) got the stored 200 (HIT)
    instead: the answer, the log line (HIT vs ERROR) and the metrics
    (cacheproxy_requests_total{cache="ERROR"}, cacheproxy_errors_total) depended on which
    path the request happened to take, so an operator looking for loops by the 508s or
    the error counter missed every looping request that hit. Severity: low (a loop
    through a hit ends either way; the defect is the inconsistency an operator sees)."""
    quick, full = await _pair(proxy, origin, monkeypatch, tmp_path, fresh_origin)
    loop = "Via: " + ", ".join(["1.1 cacheproxy"] * 8)
    shapes = [((), "GET"), ((), "HEAD"), (('If-None-Match: "v1"',), "GET"),
              (("Range: bytes=0-3",), "GET")]
    for client in (quick, full):
        await _once(client.port, _request("/page"))  # stored
        for fields, method in shapes:
            status, _, _ = await _once(client.port, _request("/page", loop, *fields,
                                                             method=method))
            assert status.split()[1] == "508", (client is quick, fields, method)
    lines_quick = [_line(line) for line in await read_json_log(quick)]
    lines_full = [_line(line) for line in await read_json_log(full)]
    assert lines_quick == lines_full
    assert [line["cache"] for line in lines_quick[1:]] == ["ERROR"] * len(shapes)
