"""Review perfread: a second reading, for correctness, of this session's four speed merges
on a miss (perfreq: ClientConnection._upstream_head reusing the last upstream field lines;
perfhead: begin_relayed writing a pass-through's head from the origin's pairs, the
Cache-Status member and reason-phrase memos; perf304: the shared stored-fields view, the
sealed class swap, the refresh's freshness memo; perflog: a miss's line and counts from
its fields, ms_json). No behaviour was found changed. These tests pin, through the real
proxy, the equivalences those shortcuts rely on that no test held yet: a reuse key that
follows a reload and a route's own credentials and Referer policy, and the relayed head
byte for byte against begin()'s for hostile origin fields. Each passed on main as merged
(no fix here); each fails if the shortcut it guards loses what it keys on."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from support import proxy_config, raw_origin
from test_client_plane import Raw
from test_quick_hits import request

from cacheproxy.config import load_config
from cacheproxy.proxy.client_conn import ClientConnection
from cacheproxy.proxy.server import reconfigure

_NO_STORE = b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 2\r\n\r\nok"
# Lines the request_fields decisions read: Referer (policy), the forwarding family (kept
# or dropped by trust, X-Forwarded-For appended to), Host (pass or rewrite).
_LINES = ("Referer: http://shop.example/cart?token=s", "X-Forwarded-For: 203.0.113.9",
          "X-Forwarded-Host: evil.example", "Connection: keep-alive")


async def _heads_of(client: Any, targets: tuple[str, ...], heads: list[bytes],
                    together: bool) -> list[bytes]:
    """The upstream heads for targets sent with _LINES: on one connection (together), or
    each on a connection of its own (no lines to reuse)."""
    heads.clear()
    conn = await Raw.open(client) if together else None
    for target in targets:
        one = conn or await Raw.open(client)
        await one.send(request(target, _LINES))
        assert (await one.reply()).status == 200
        if conn is None:
            one.close()
    if conn is not None:
        conn.close()
    return heads[:]


async def test_a_reload_between_same_line_requests_gives_the_new_configs_upstream_head(
        proxy: Any, forward_switch: Any) -> None:
    """Pinned, not broken: _upstream_head reuses a connection's last upstream field lines
    when the client's lines, method, version, route plan, scheme, authority and
    conditionals match. A reload (SIGHUP) between two such requests changes what
    request_fields makes of the same lines (Via's pseudonym, RFC 9110 §7.6.3; whether
    X-Forwarded-For is added; Host passed or rewritten) but none of the client's inputs:
    only the route plan in the key tells them apart. With the plan left out of the key
    (or compared by something a new config can equal), a keep-alive client would go on
    sending the old config's fields upstream (nginx and Varnish apply a reload to the
    next request on an open connection). Severity if broken: high (stale forwarding
    fields; Host and X-Forwarded-For are what origins route and log by)."""
    heads: list[bytes] = []

    def seen(head: bytes) -> bytes:
        heads.append(head)
        return _NO_STORE

    async with raw_origin(seen) as port:
        upstream = f"http://127.0.0.1:{port}"
        client = await proxy(upstream)
        conn = await Raw.open(client)
        for _ in range(2):  # the second by callback, its lines kept for the third
            await conn.send(request("/a", _LINES))
            assert (await conn.reply()).status == 200
        reconfigure(client.server.app, proxy_config(
            upstream, proxy={"via": "renamed", "x_forwarded_for": False,
                             "host_header": "pass"}))
        sent = forward_switch.state["sent"]
        await conn.send(request("/a", _LINES))
        assert (await conn.reply()).status == 200
        conn.close()
        assert forward_switch.state["sent"] == sent + 1  # by callback, on a kept connection
        after_reload = heads[-1]
        # What a connection of its own gets from the reloaded proxy: no lines to reuse.
        alone = await _heads_of(client, ("/a",), heads, together=False)
    assert after_reload == alone[0]
    assert b"Via: 1.1 renamed\r\n" in after_reload
    assert b"X-Forwarded-For" not in after_reload
    assert b"\r\nHost: example\r\n" in after_reload


async def test_same_lines_on_two_routes_get_each_routes_credentials_and_referer(
        proxy: Any, forward_switch: Any, tmp_path: Path) -> None:
    """Pinned, not broken: two [[routes]] to one origin, one with credentials in its
    upstream URL (sent as Basic on each of its requests) and Referer stripped, the other
    without either. A browser sends the same field lines to both (a page's resources), on
    one keep-alive connection: the reused lines must be each route's own. If the key
    lost the route plan, the second route's requests would carry the first's
    Authorization (a credential leak to another application on the origin, RFC 9110
    §11.6.2) or the Referer its route strips (W3C Referrer Policy). Severity if broken:
    high."""
    heads: list[bytes] = []

    def seen(head: bytes) -> bytes:
        heads.append(head)
        return _NO_STORE

    async with raw_origin(seen) as port:
        path = tmp_path / "cacheproxy.toml"
        path.write_text(
            f'[proxy]\nupstream = "http://127.0.0.1:{port}"\n'
            f'[cache]\ncollapse = false\n'  # (a miss that may collapse goes the task's way)
            f'[[routes]]\npath_prefix = "/a/"\n'
            f'upstream = "http://alice:secret@127.0.0.1:{port}"\n'
            f'[routes.referer]\nupstream_referer = "strip"\n')
        client = await proxy(load_config(path, env={}))
        targets = ("/b/1", "/b/1", "/a/1", "/a/1", "/b/2", "/a/2", "/b/3")
        together = await _heads_of(client, targets, heads, together=True)
        assert forward_switch.state["sent"] == len(targets) - 1  # all but the first by callback
        apart = await _heads_of(client, targets, heads, together=False)
    assert together == apart
    for target, head in zip(targets, together, strict=True):
        on_a = target.startswith("/a/")
        assert (b"Authorization: Basic " in head) is on_a
        assert (b"Referer:" in head) is not on_a


# Origin answers a pass-through relays (no-store: every request after the first goes by
# callback), with fields a serialiser or a policy could treat differently.
_HOSTILE = (
    b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n",                # repeated fields, in order
    b"Content-Length: 02\r\n",                                 # (with the one below)
    b"X-Empty:\r\nX-Trailing: v  \r\n",                        # empty value, trailing OWS
    b"Cache-Status: up; hit\r\nVia: 1.1 up\r\n",               # an upstream cache's marks
    b"date: Sat, 05 Dec 2026 06:00:00 GMT\r\n",                # a Date, in lower case
    b"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n",  # hop-by-hop
    b"connection: x-foo\r\nX-Foo: 1\r\n",                      # Connection naming a field
    b"x-cache: HIT\r\n",                                       # replaced by ours
    b"X-Text: caf\xc3\xa9 \xff\r\n",                           # UTF-8 and obs-text
    b"Access-Control-Allow-Origin: https://a.example\r\n",     # a grant (varies on Origin)
    b"Referrer-Policy: unsafe-url\r\n",                        # read by the policy
)


def _answer(extra: bytes, head_only: bool) -> bytes:
    length = b"" if b"Content-Length" in extra else b"Content-Length: 2\r\n"
    return b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\n" + length + extra + b"\r\n" \
        + (b"" if head_only else b"ok")


async def _relayed_head(proxy: Any, extra: bytes, version: str) -> bytes:
    """The head the client gets for the third request on one connection (by callback)."""
    async with raw_origin(lambda head: _answer(extra, head.startswith(b"HEAD"))) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        conn = await Raw.open(client)
        for _ in range(3):
            await conn.send(request("/p", ("Connection: keep-alive",), "GET", version))
            head = await conn.reader.readuntil(b"\r\n\r\n")
            await conn.reader.readexactly(2)
        conn.close()
    return re.sub(rb"\r\nDate: [^\r]*", b"", head)  # (this second's, where the origin sent none)


@pytest.mark.parametrize("version", ["1.1", "1.0"])
@pytest.mark.parametrize("extra", _HOSTILE)
async def test_a_relayed_head_is_begins_head_for_hostile_origin_fields(
        proxy: Any, forward_switch: Any, monkeypatch: pytest.MonkeyPatch, extra: bytes,
        version: str) -> None:
    """Pinned, not broken: a pass-through answered by callback has its head written from
    the origin's field pairs (begin_relayed) when nothing is replaced or removed, and by
    begin() over a multidict otherwise. For hostile origin fields (repeated Set-Cookie,
    an odd Content-Length form, empty values and trailing whitespace, upstream
    Cache-Status/Via/X-Cache, a lower-case Date, hop-by-hop fields and fields Connection
    names, obs-text, a CORS grant, a Referrer-Policy) and HTTP/1.0 keep-alive clients, the
    client gets the same bytes either way: RFC 9110 §7.6.1 (hop-by-hop removed), §7.6.3
    (Via appended), RFC 9211 (our member after the upstream's), §5.5 (obs-text as sent).
    Severity if broken: medium to high (a field the policy must replace or vary on goes
    out as the origin sent it; a hop-by-hop field reaches the client)."""
    made: list[bool] = []
    real = ClientConnection.begin_relayed

    def counted(self: ClientConnection, *args: Any) -> bytes | None:
        head = real(self, *args)
        made.append(head is not None)
        return head

    monkeypatch.setattr(ClientConnection, "begin_relayed", counted)
    relayed = await _relayed_head(proxy, extra, version)
    assert made, "no answer went by callback"
    # The same requests with begin_relayed declining every time: begin()'s head.
    monkeypatch.setattr(ClientConnection, "begin_relayed", lambda self, *args: None)
    assert relayed == await _relayed_head(proxy, extra, version)
    # Neither path lets a hop-by-hop field, or one Connection names, through (§7.6.1).
    for gone in (b"\r\nkeep-alive: timeout", b"\r\nproxy-connection:", b"\r\nx-foo:"):
        assert gone not in relayed.lower()
    # The pairs path is taken exactly where nothing is replaced, removed or read.
    begin_needed = any(name in extra.lower() for name in (
        b"x-cache", b"access-control-allow-origin", b"referrer-policy"))
    assert all(made) is not begin_needed and any(made) is not begin_needed
