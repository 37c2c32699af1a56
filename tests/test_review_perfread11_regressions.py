"""Review perfread11: a second reading of perfdist4's three commits (e1acd53, 5085ef2,
b19b258): QuickHits.hit keeping the last request's lines by identity with a plain word
read late (_UNREAD, _plain_now), lookup's inline memo of facts of their own, and
_FallbackParser's usual feed comparing the preface's tail as a slice.

What the review looked at: whether one raw_headers object can stand for another request's
lines (another connection's, after a reload, pipelined, with a body, an upgrade, a HEAD,
an Expect, a Via loop; the empty tuple, which CPython shares, belongs to heads without a
Host, which no route takes); whether the lazy word is ever read from other lines than the
ones its list holds, or kept across a reload; the in-place list (last[7] left from other
facts while last[6] is None: recently_passed is a bool, never None); lookup's 8-tuple
(the same parts as _remember_looked_up's); the slice against bytes.endswith for bytes,
bytearray and reads shorter than the preface line. Nothing was found wrong: these tests
pin the paths the earlier tests left unexercised (a word left unread on the memo path and
read later, when the entry turns fresh; the same message after a reload renaming the
cache; the slice over bytearray and short reads).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.http_exceptions import BadHttpMessage
from support import proxy_config
from test_client_plane import Raw
from test_quick_hits import origin_app, request
from test_review_perfdist4_regressions import (  # (spied: perfdist4's fixture)
    _OLD_PLAIN,
    _old_lines,
    _parsed,
    _quick_hits,
    spied,  # noqa: F401
)
from test_review_perfrehead_regressions import _fields, _parsers

from cacheproxy.proxy import quick
from cacheproxy.proxy.quick import Plain
from cacheproxy.proxy.routed import Planned
from cacheproxy.proxy.server import reconfigure
from cacheproxy.proxy.server_protocol import _PREFACE_LINE, HeadMemo


@pytest.fixture
def asked(request: pytest.FixtureRequest) -> list[tuple[Any, Any]]:
    """perfdist4's spied: (message, what QuickHits.hit made of it) per request."""
    return request.getfixturevalue("spied")  # type: ignore[no-any-return]

LATE_FIELDS: tuple[tuple[str, ...], ...] = (
    (),
    ("X-Request-Id: 1",),
    ("Origin: http://elsewhere.example",),
    ("Cache-Control: max-age=0",),
    ("Pragma: no-cache",),
    ("Cookie: a=1",),
    ('If-None-Match: "v1"',),
    ("Range: bytes=0-3",),
    ("Accept-Encoding: gzip",),
)


async def _ask(client: Any, data: bytes, pipelined_behind: bytes | None = None) -> Any:
    conn = await Raw.open(client)
    try:
        if pipelined_behind is not None:
            await conn.send(pipelined_behind + data)
            await conn.reply()
        else:
            await conn.send(data)
        reply = await conn.reply()
        return reply.status, reply.body, reply.headers.get("x-cache"), \
            reply.headers.get("access-control-allow-origin"), reply.headers.get("vary")
    finally:
        conn.close()


@pytest.mark.parametrize("n, fields", list(enumerate(LATE_FIELDS)))
async def test_a_word_left_unread_is_read_from_its_own_lines_when_the_entry_turns_fresh(
        proxy: Any, origin: Any, asked: list[tuple[Any, Any]], n: int,
        fields: tuple[str, ...]) -> None:
    """The word on the lines (_plain_word: none of DECISIVE_FIELDS nor Origin) is kept
    _UNREAD with the lines while no plain GET candidate asks. Here a head goes forward
    first (its key holds nothing: the word stays unread), the response is stored fresh,
    and the very same head bytes come again on another connection: HeadMemo hands out the
    same message, so hit() takes the memo path with the word still unread, and must read
    it then, from these lines. What could go wrong: an unread word taken as plain on the
    memo path would replay the stored response for an Origin (no CORS grant, RFC 9111 §4
    with the Fetch standard's CORS), a Cache-Control: max-age=0 or Pragma (RFC 9111
    §5.2.1.1/§5.4, a revalidation), a conditional (RFC 9110 §13.2.2, a 304) or a Range
    (§14.2, a 206). The answer must be a Plain replay exactly where the old _lines said
    plain, and equal to the answer for the same head parsed anew (pipelined). Severity if
    broken: high (another request's answer). Found fine: a test that pins it."""
    client = await proxy(await origin(origin_app()))
    head = request(f"/late{n}", fields)
    first = await _ask(client, head)  # the key holds nothing: it goes forward, is stored
    went = [(msg, found) for msg, found in asked if msg.path == f"/late{n}"]
    assert len(went) == 1 and isinstance(went[0][1], Planned), went
    lines = went[0][0].raw_headers
    (hits,) = _quick_hits(client)
    assert hits._last[0] is lines and hits._last[8] == quick._UNREAD  # (never asked)
    asked.clear()
    again = await _ask(client, head)
    (msg, found), = [(m, f) for m, f in asked if m.path == f"/late{n}"]
    # HeadMemo's message again: the memo path, with the word unread until now.
    assert msg.raw_headers is lines
    plain = _old_lines(msg.headers, "cacheproxy") == _OLD_PLAIN
    assert isinstance(found, Plain) == plain, (fields, found)
    assert hits._last[8] == (quick._PLAIN if plain else quick._OTHER)
    anew = await _ask(client, head, pipelined_behind=request("/fresh", ()))
    assert again == anew, (fields, first, again, anew)
    if plain:
        assert again[2] == "HIT"


async def test_the_same_message_after_a_reload_renaming_the_cache_is_decided_again(
        proxy: Any, origin: Any, asked: list[tuple[Any, Any]]) -> None:
    """The lines are kept by identity, and HeadMemo's message is the process's, not the
    config's: after a reload the very same message comes again. Its Via names a cache
    "renamed" eight times: no loop for "cacheproxy" (a Plain hit), but once proxy.via is
    "renamed", a loop (RFC 5842 §7.2 / RFC 9110 §7.6.3: the full path's 508). The memo
    path must not carry the word or route across the reload (the plans differ), so the
    Expect / Via-loop test runs again. Severity if broken: medium (a request looping
    through the proxy served as a hit instead of stopped). Found fine: pinned here."""
    up = await origin(origin_app())
    client = await proxy(up)
    head = request("/fresh", tuple("Via: 1.1 renamed" for _ in range(8)))
    await _ask(client, request("/fresh", ()))  # stored
    assert (await _ask(client, head))[:3] == (200, b"0123456789" * 20 + b"-", "HIT")
    before = [msg for msg, _ in asked if msg.raw_headers == _parsed(
        tuple("Via: 1.1 renamed" for _ in range(8))).raw_headers]
    assert len(before) == 1
    url = str(up.make_url("")).rstrip("/")
    reconfigure(client.server.app, proxy_config(url, proxy={"via": "renamed"}))
    asked.clear()
    after = await _ask(client, head)
    assert after[0] == 508, after
    (msg, found), = [(m, f) for m, f in asked if m.path == "/fresh"]
    assert msg.raw_headers is before[0].raw_headers and found is None


_H = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
READS = (
    _H,
    _H + _PREFACE_LINE[1:],  # the preface's line and its empty line behind a request
    b"GET / HTTP/1.1\r\n\r\n",  # shorter than the preface line (18 bytes)
    b"GET /\r\n\r\n",  # shorter still (HTTP/0.9's form: llhttp's answer either way)
    b"GET /a HTTP/1.1\r\nHost: h\r\nX: PRI * HTTP/2.0\r\n\r\n",  # in a field value
    b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n" + _PREFACE_LINE,  # an empty line, then it
    _H + b"xPRI * HTTP/2.0\r\n\r\n",
)


@pytest.mark.parametrize("kind", [bytes, bytearray])
@pytest.mark.parametrize("read", READS)
async def test_the_preface_tail_is_told_as_bytes_endswith_told_it(
        kind: type, read: bytes) -> None:
    """b19b258 compares data[-19:] with the preface line instead of data.endswith: for a
    read shorter than the line the slice is the whole read (never equal), and a bytearray
    slice compares equal to bytes as endswith did. The wrapper (with a head memo) must
    answer each read as one without a memo does, and give the preface's 400 at once
    exactly where endswith said the read ends with it (RFC 9113 §3.4). Severity if
    broken: medium (a preface let through, or a request lost). Found fine."""
    loop = asyncio.get_running_loop()
    wrapped, reference = _parsers(loop, HeadMemo())
    found: list[Any] = []
    for parser in (wrapped, reference):
        try:
            found.append([_fields(m) for m, _ in parser.feed_data(kind(read))[0]])
        except BadHttpMessage as exc:
            found.append([_fields(exc)])
    assert found[0] == found[1]
    refused = [f for f in found[0] if f[0] is BadHttpMessage and "preface" in f[1]]
    assert bool(refused) == bytes(read).endswith(_PREFACE_LINE), found[0]
