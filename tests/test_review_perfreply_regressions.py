"""Review perfreply (issue 10: revalidation >= 1.5x Squid's req/s on one core): what a
revalidation's reply from storage costs (proxy/driver.py reply -> respond.stored_response:
the Cache-Status member, the Answer and Replay values, the replay head) and the lookup's
revalidation branch (http/flow/lookup.py, http/reuse.py decide_reuse, validating_fields).

What changed: a replay's Answer and Replay are made without their Python-level __init__
(downstream.replayed); the Cache-Status member of an answer from storage that went forward
first (a revalidation's) is remembered by every input it is made from, its ttl in whole
seconds (observe/outcome.py _TIMED_MEMBERS); the conditional fields of the last entry
revalidated, by its field tuples (http/revalidation.py validating_fields); the fresh lines
of the last replay encoded, by the lines and Connection (proxy/client_conn.py
_replay_head). These tests pin what those memos must never do: give one revalidation's
member to another whose ttl, forward status, "stored" or detail differ; send one URL's
validators for another's; repeat one answer's Connection field on another. None of them
failed before the change: no behaviour was meant to change. Severity, were they to fail:
a wrong ttl or store in Cache-Status (RFC 9211, medium); a revalidation with another
URL's validators, whose 304 would serve the wrong body (high); a client told to close a
good connection, or not told of a closing one (medium)."""

from __future__ import annotations

import math
import time
from email.utils import formatdate
from typing import Any

import pytest
from support import cache_status, raw_get, raw_origin

from cacheproxy.http.cache_status import cache_status as made_member
from cacheproxy.observe.outcome import Outcome


async def test_each_revalidation_carries_its_own_refreshed_ttl(proxy: Any) -> None:
    """RFC 9211 §2.5, RFC 9111 §4.3.4: the ttl of a response a 304 refreshed is the
    freshness the 304 gave it. The origin's 304s say "no-cache, max-age=N" with N
    changing from one to the next (and back): each answer's Cache-Status must carry its
    own 304's ttl, never the member remembered from the revalidation before it (as Squid
    and nginx report each answer's own state)."""
    date = formatdate(time.time(), usegmt=True)
    ages = [100, 100, 5000, 100, 5000, 5000, 77]
    sent: list[int] = []

    def answer(head: bytes) -> bytes:
        if b"if-none-match" not in head.lower():
            return (f"HTTP/1.1 200 OK\r\nDate: {date}\r\nCache-Control: no-cache\r\n"
                    f'ETag: "v1"\r\nContent-Length: 4\r\n\r\nbody').encode()
        n = ages[len(sent)]
        sent.append(n)
        return (f"HTTP/1.1 304 Not Modified\r\nDate: {date}\r\n"
                f'Cache-Control: no-cache, max-age={n}\r\nETag: "v1"\r\n\r\n').encode()

    async with raw_origin(answer) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        resp = await client.get("/r")
        assert await resp.read() == b"body"
        for n in ages:
            resp = await client.get("/r")
            assert await resp.read() == b"body"
            member = cache_status(resp)
            assert member.startswith("cacheproxy; fwd=stale; fwd-status=304; stored; ttl="), \
                member
            ttl = int(member.rsplit("ttl=", 1)[1])
            # (the Date is this test's start: a second or two may have gone by)
            assert n - 3 <= ttl <= n, (n, member)
        assert sent == ages


_FORWARDED = [
    dict(fwd="stale", fwd_status=304, stored=True, ttl=86399.7),
    dict(fwd="stale", fwd_status=304, stored=False, ttl=86399.7),
    dict(fwd="stale", fwd_status=304, stored=True, ttl=86398.2),
    dict(fwd="stale", fwd_status=304, stored=True, ttl=-3.5),
    dict(fwd="request", fwd_status=304, stored=True, ttl=86399.7),
    dict(fwd="stale", fwd_status=500, stored=False, ttl=-3.5, detail="stale-if-error"),
    dict(fwd="stale", fwd_status=304, stored=True, ttl=86399.7, collapsed=True),
    dict(fwd="stale", fwd_status=304, stored=True, ttl=86399.7, collapsed=True,
         went_on=True),
    dict(fwd="stale", fwd_status=304, stored=True, ttl=math.inf),
    dict(fwd="stale", fwd_status=304, stored=True, ttl=math.nan),
]


@pytest.mark.parametrize("name", ["cacheproxy", "edge-2"])
def test_a_remembered_member_is_made_from_all_its_inputs(name: str) -> None:
    """RFC 9211 §2: each member states this answer's hit, fwd, fwd-status, stored, ttl
    (in whole seconds), collapsed and detail under the cache's name. Outcomes differing
    in any one of them, asked for twice in turn (the second from the memo), each get the
    member cache_status() makes from their own values."""
    for _ in range(2):
        for inputs in _FORWARDED:
            o = Outcome()
            for field, value in inputs.items():
                setattr(o, field, value)
            collapsed = (not o.went_on) if o.collapsed else None
            assert o.cache_status(name) == made_member(
                name, hit=o.hit, fwd=o.fwd, fwd_status=o.fwd_status, stored=o.stored,
                ttl=o.ttl, collapsed=collapsed, detail=o.detail), inputs
            assert o.final_cache_status() == o.cache_status_sent


async def test_each_revalidation_sends_its_own_stored_validators(proxy: Any) -> None:
    """RFC 9111 §4.3.1: a revalidation sends the validators of the stored response it
    selected. Two URLs with their own ETag and Last-Modified are revalidated in turn, and
    /a's entity tag changes with a 200 midway: each conditional request must carry its own
    URL's current validators, never those remembered from the revalidation before it
    (http/revalidation.py validating_fields remembers the last entry's)."""
    date = formatdate(time.time(), usegmt=True)
    tags = {"/a": '"a1"', "/b": '"b1"'}
    modified = {"/a": "Mon, 01 Jan 2024 00:00:00 GMT", "/b": "Tue, 02 Jan 2024 00:00:00 GMT"}
    seen: list[tuple[str, str | None, str | None]] = []

    def answer(head: bytes) -> bytes:
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split()[1]
        fields = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])
                  if k}
        inm, ims = fields.get("if-none-match"), fields.get("if-modified-since")
        if inm is not None:
            seen.append((path, inm, ims))
        if len(seen) == 3 and path == "/a" and tags["/a"] == '"a1"':
            tags["/a"] = '"a2"'  # a new representation: a 200 with a new tag
        current = tags[path]
        if inm == current:
            return (f"HTTP/1.1 304 Not Modified\r\nDate: {date}\r\nCache-Control: no-cache"
                    f"\r\nETag: {current}\r\nLast-Modified: {modified[path]}\r\n\r\n").encode()
        return (f"HTTP/1.1 200 OK\r\nDate: {date}\r\nCache-Control: no-cache\r\n"
                f"ETag: {current}\r\nLast-Modified: {modified[path]}\r\n"
                f"Content-Length: 2\r\n\r\n{path[1]}{current[2]}").encode()

    async with raw_origin(answer) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        for path in ("/a", "/b"):
            assert (await (await client.get(path)).read()) == f"{path[1]}1".encode()
        for _ in range(3):
            for path in ("/a", "/b"):
                resp = await client.get(path)
                assert await resp.read() == f"{path[1]}{tags[path][2]}".encode()
    assert seen[:2] == [("/a", '"a1"', modified["/a"]), ("/b", '"b1"', modified["/b"])]
    assert seen[2] == ("/a", '"a1"', modified["/a"])  # (answered 200 "a2")
    assert seen[3:] == [("/b", '"b1"', modified["/b"]), ("/a", '"a2"', modified["/a"]),
                        ("/b", '"b1"', modified["/b"])], seen


async def test_each_replay_says_its_own_connection_fate(proxy: Any) -> None:
    """RFC 9112 §9.6: an answer that ends its connection says Connection: close; one on a
    connection that stays open says nothing. A revalidated URL answered in turn on a
    keep-alive connection and on connections that close (the same Age, Via,
    Cache-Status and X-Cache each time: client_conn._replay_head remembers the last
    fresh lines it encoded) must give each answer its own Connection field: a "close"
    repeated to the keep-alive client would make it drop a good connection, one left off
    the closing answers would leave a client waiting for a next response."""
    date = formatdate(time.time(), usegmt=True)

    def answer(head: bytes) -> bytes:
        if b"if-none-match" not in head.lower():
            return (f"HTTP/1.1 200 OK\r\nDate: {date}\r\nCache-Control: no-cache\r\n"
                    f'ETag: "v1"\r\nContent-Length: 4\r\n\r\nbody').encode()
        return (f"HTTP/1.1 304 Not Modified\r\nDate: {date}\r\nCache-Control: no-cache\r\n"
                f'ETag: "v1"\r\n\r\n').encode()

    async with raw_origin(answer) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        assert await (await client.get("/r")).read() == b"body"
        host = f"{client.server.host}:{client.server.port}"  # (as client.get sends it)
        for _ in range(3):
            for _ in range(2):
                resp = await client.get("/r")
                assert await resp.read() == b"body"
                assert "fwd-status=304" in cache_status(resp)
                assert "Connection" not in resp.headers, resp.headers
            for _ in range(2):
                status, fields, body = await raw_get(client, "/r", host=host)
                assert (status, body) == (200, b"body")
                assert "fwd-status=304" in fields["cache-status"], fields
                assert fields.get("connection") == "close", fields


async def test_a_coded_response_is_refused_after_an_uncoded_one_was_served(proxy: Any
                                                                            ) -> None:
    """RFC 9110 §12.5.3: a response stored gzip-coded without Vary: Accept-Encoding does
    not reach a client that does not take gzip; the origin answers it. Requests taking
    identity only go in turn to a URL stored uncoded and to one stored coded (each with a
    request directive, so the lookup decides rather than the quick path): the uncoded one
    is served from storage each time, the coded one never, but asked of the origin
    (codings.coding_refused remembers the last field names it found without
    Content-Encoding). Varnish never hands gzip to such a client."""
    sent: list[str] = []

    def answer(head: bytes) -> bytes:
        path = head.split(b" ", 2)[1].decode()
        sent.append(path)
        coded = path == "/gz"  # (pre-compressed: whatever the request takes)
        extra = "Content-Encoding: gzip\r\n" if coded else ""
        body = "GZ" if coded else "id"
        return (f"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\n{extra}"
                f"Content-Length: 2\r\n\r\n{body}").encode()

    async with raw_origin(answer) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        host = f"{client.server.host}:{client.server.port}"
        for path in ("/plain", "/gz"):  # stored: /gz coded
            status, _, _ = await raw_get(client, path, "Accept-Encoding: gzip", host=host)
            assert status == 200
        assert sent == ["/plain", "/gz"]
        for _ in range(3):
            for path in ("/plain", "/gz"):
                status, fields, _ = await raw_get(
                    client, path, "Accept-Encoding: identity", "Cache-Control: max-stale=5",
                    host=host)
                assert status == 200
                if path == "/plain":
                    assert fields["cache-status"].startswith("cacheproxy; hit;"), fields
                else:  # the origin's own answer, never the stored coded one
                    assert "fwd=miss" in fields["cache-status"], fields
        assert sent.count("/plain") == 1, sent
        assert sent.count("/gz") == 4, sent
