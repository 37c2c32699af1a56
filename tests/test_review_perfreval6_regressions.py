"""Review perfreval6 (issue 10: revalidation >= 1.5x Squid's req/s on one core): a
revalidation's own steps and its reply from storage (quick_forward._perform, the driver's
validated_now / reply_validated / served, respond.stored_response and fresh_fields,
downstream.replayed, client_conn's _send_answer / _send_replay / _replay_head,
Outcome.cache_status).

What changed: a 304 answered where it was read makes no UpstreamResponse (the driver
pools the connection again itself), and when served's answer would be the stored response
whole (a GET without validators of its own or a Range), the client connection writes it
as a replay without an Answer (client_conn.send_stored), with the whole head kept for the
next revalidated reply made from the same entry, route plan, HTTP version, Connection, Age
second and Cache-Status inputs. These tests pin what that kept head must never do: answer
a request that needs another answer (a 304 to the client's own validators, a Range, a
HEAD, a CORS grant), outlive the stored response it was made from, or leave the request
log's Cache-Status different from the one sent. Severity, were they to fail: high (a
client's 304 or 206 answered with a whole 200, another representation's body or ETag
replayed, a cross-origin reader refused); low for the log."""

from __future__ import annotations

import time
from email.utils import formatdate
from pathlib import Path
from typing import Any

from support import cache_status, raw_origin, read_json_log


def _revalidated_origin(tags: dict[str, str], date: str) -> Any:
    """An origin of one no-cache URL (RFC 9111 §5.2.2.4: validated on every use) that
    answers a conditional request for its current tag with a 304 repeating the stored
    Date (the kept memos' case), else a 200 with body tags["body"]."""
    def answer(head: bytes) -> bytes:
        tag, body = tags["tag"], tags["body"]
        if f"if-none-match: {tag}".encode() in head.lower():
            return (f"HTTP/1.1 304 Not Modified\r\nDate: {date}\r\nCache-Control: no-cache"
                    f"\r\nETag: {tag}\r\n\r\n").encode()
        return (f"HTTP/1.1 200 OK\r\nDate: {date}\r\nCache-Control: no-cache\r\n"
                f"ETag: {tag}\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()
    return answer


async def test_a_kept_revalidated_head_answers_no_other_kind_of_request(
        proxy: Any, tmp_path: Path) -> None:
    """RFC 9111 §4.3.2 (a client's own validators get a 304), RFC 9110 §14.2 (a Range
    gets a 206), §9.3.2 (a HEAD gets no body), the Fetch standard's CORS protocol (an
    allowed Origin gets Access-Control-Allow-Origin): each is decided on the revalidated
    response by the driver's reply step (served). Between revalidations answered from the
    kept head (the same URL, Age second and Cache-Status), each such request must get its
    own answer, not the kept 200 head; and every log line's Cache-Status is the one its
    client was sent (nginx and Squid log what they sent)."""
    date = formatdate(time.time(), usegmt=True)
    tags = {"tag": '"v1"', "body": "body"}
    allowed = "http://app.example"
    async with raw_origin(_revalidated_origin(tags, date)) as port:
        client = await proxy(f"http://127.0.0.1:{port}", cors={"allow_origins": (allowed,)},
                             log={"path": str(tmp_path / "log")})
        assert await (await client.get("/r")).read() == b"body"
        sent: list[str] = []

        async def whole() -> None:
            for _ in range(2):  # (the second from the head kept by the first)
                resp = await client.get("/r")
                assert (resp.status, await resp.read()) == (200, b"body")
                assert resp.headers["Content-Length"] == "4" and resp.headers["ETag"] == '"v1"'
                assert "Access-Control-Allow-Origin" not in resp.headers
                assert resp.headers["X-Cache"] == "HIT" and "Age" in resp.headers
                assert "fwd=stale; fwd-status=304; stored" in cache_status(resp)
                sent.append(cache_status(resp))

        await whole()
        resp = await client.get("/r", headers={"If-None-Match": '"v1"'})
        assert (resp.status, await resp.read()) == (304, b"")
        sent.append(cache_status(resp))
        await whole()
        resp = await client.get("/r", headers={"Range": "bytes=0-1"})
        assert (resp.status, await resp.read()) == (206, b"bo")
        assert resp.headers["Content-Range"] == "bytes 0-1/4"
        sent.append(cache_status(resp))
        await whole()
        resp = await client.head("/r")
        assert (resp.status, await resp.read()) == (200, b"")
        assert resp.headers["Content-Length"] == "4"
        sent.append(cache_status(resp))
        await whole()
        resp = await client.get("/r", headers={"Origin": allowed})
        assert (resp.status, await resp.read()) == (200, b"body")
        assert resp.headers["Access-Control-Allow-Origin"] == allowed
        sent.append(cache_status(resp))
        await whole()
        logged = [line["cache_status"] for line in await read_json_log(client)][1:]
        assert logged == sent


async def test_a_kept_revalidated_head_follows_the_stored_response(proxy: Any) -> None:
    """RFC 9111 §4.3.3: a 200 to a revalidation replaces the stored response, and the
    next 304 validates that one. The head kept from the replies before (made from the old
    entry: its ETag and Content-Length) must not answer for the new one: the client would
    get the new body under the old validator, or a body cut to the old length."""
    date = formatdate(time.time(), usegmt=True)
    tags = {"tag": '"v1"', "body": "body"}
    async with raw_origin(_revalidated_origin(tags, date)) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        assert await (await client.get("/r")).read() == b"body"
        for tag, body in (('"v1"', "body"), ('"v2"', "a longer body"), ('"v3"', "b")):
            tags["tag"], tags["body"] = tag, body
            resp = await client.get("/r")  # the 200 of a new tag, stored (v1: a 304)
            assert await resp.read() == body.encode()
            # (on the same keep-alive connection: the next tag's first revalidated reply
            # has the same inputs as the head kept by the last one, but the entry)
            for _ in range(2):
                resp = await client.get("/r")
                assert (resp.status, await resp.read()) == (200, body.encode())
                assert resp.headers["ETag"] == tag
                assert resp.headers["Content-Length"] == str(len(body))
                assert "fwd-status=304" in cache_status(resp)


def _entry(key: str, accept: str | None = None) -> Any:
    from cacheproxy.http.stored import Heuristics, make_stored_response
    t0 = 1_704_067_200.0
    return make_stored_response(
        key=key, vary=("accept",) if accept else (), vary_values=(accept,) if accept else (),
        status=200, pairs=[("Date", formatdate(t0, usegmt=True)), ("ETag", '"v1"')],
        body=b"abc", request_time=t0, response_time=t0, shared=True,
        heuristics=Heuristics())


async def test_touching_the_held_response_is_putting_it_again_and_nothing_else() -> None:
    """RFC 9111 §4.3.4 (a 304 updates the stored response it validated, where the store
    still holds it as read: never an older one back over a newer one). The driver now
    asks the memory store once (touch_held) whether the key still holds the very response
    a 304 refreshed into itself: that must be what peek and put_now of it did (marked
    recently used, nothing counted or evicted), and a response the key does not hold
    alone by identity (replaced meanwhile by an equal copy, or the key holding variants)
    must be left to the full put (False, nothing changed). Severity, were it to fail:
    medium (a fresh response evicted first, or a stale one put back)."""
    from cacheproxy.store.memory import MemoryStore

    one = _entry("http://o/probe").size
    store = MemoryStore(max_bytes=one * 3)
    a, b, c = _entry("http://o/a"), _entry("http://o/b"), _entry("http://o/c")
    for e in (a, b, c):
        assert store.put_now(e)
    before = store.stats()
    assert store.touch_held(a)  # a: now the most recently used, b the least
    assert store.stats() == before
    copy = b.replace(body=bytes(b.body))  # equal, another object: not what was read
    assert not store.touch_held(copy) and store.peek("http://o/b") == (b,)
    assert store.put_now(_entry("http://o/d"))  # evicts the least recently used: c
    assert store.peek("http://o/c") == () and store.peek("http://o/a") == (a,)
    html, text = _entry("http://o/v", "text/html"), _entry("http://o/v", "text/plain")
    assert store.put_now(html) and store.put_now(text)
    assert not store.touch_held(text) and not store.touch_held(html)
    assert set(store.peek("http://o/v")) == {html, text}
