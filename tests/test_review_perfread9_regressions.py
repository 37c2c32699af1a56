"""Review perfread9: the request-head memo (server_protocol.HeadMemo) read for smuggling.

What was looked at: _FallbackParser.feed_data's memo hit and its usual feed (where the memo
is armed and recorded), _count_unseen and message_consumed, head_memo's key, and
ClientConnection._make_parser, data_received and _serve, against every state a feed may
start from: after a body (Content-Length, chunked with a trailer field, an Expect whose body
never came), a 400, a pipelined burst up to the queue's bound, an h2c, websocket or CONNECT
upgrade, the Python parser's takeover (an unknown method), a close (HTTP/1.0 with and
without keep-alive), and HTTP/2's connection preface; and what the shared message object
meets later (the quick path's memos, _declined, _planned, the request log). The memo is
the process's: one connection's read arms it, another's is answered from it. So the
differential fuzz here runs several wrappers sharing one memo, each beside a wrapper
without one that reads the very same bytes.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from test_client_plane import Raw
from test_review_h2clients_regressions import _H2C
from test_review_perfrehead_regressions import (
    _CHUNKS,
    _ask,
    _echo,
    _head,
    _memo,
    _parsers,
    _seen,
)
from test_server_protocol import RAW_SMUGGLING, SMUGGLING, request, smuggling_request

from cacheproxy.proxy.server_protocol import HeadMemo, _FallbackParser

_PREFACE = b"PRI * HTTP/2.0\r\n\r\n"  # HTTP/2's preface up to its "SM" (RFC 9113 §3.4)


async def test_an_http2_preface_behind_a_request_is_never_the_head_memos(
        proxy: Any, origin: Any) -> None:
    """What was wrong: a read of one request and then HTTP/2's connection preface up to its
    empty line (`PRI * HTTP/2.0` CRLF CRLF, RFC 9113 §3.4) passed for the usual read (one
    message, ending in an empty line): llhttp gives no message for the preface and waits
    for its "SM", so it is not between messages, yet the wrapper armed the head memo. The
    next read whose bytes were the memo's (this connection's head again, kept by any
    connection) was handed its message without llhttp, and answered; llhttp, never fed
    it, refuses it (a 400, the connection closed), as it does without the memo. Worse, the
    read itself was kept as the memo's, so another connection sending it was answered with
    llhttp at a fresh start, not in the preface, and its next request served where llhttp
    refuses it. What a user saw: requests after a stray preface answered on one connection
    and refused on another, by which heads other clients sent (the proxy's framing not a
    function of the connection's bytes). Peer: nginx refuses the preface line on an HTTP/1.1
    connection (400) and reads nothing after. Severity: low (no body framing changes: the
    requests answered were whole; but the parser and the wrapper disagree on the stream).
    Since, the preface behind a request gets its 400 at once and nothing after it is read
    (test_an_http2_preface_behind_a_request_in_one_read_gets_its_400_at_once), and such a
    read is never the memo's; the wrapper-level fuzz below pins the memo's side."""
    c = await proxy(await origin(_echo()))
    same = _head(c.port, b"/a", b"X-N: 1")
    first, other, third = await Raw.open(c), await Raw.open(c), await Raw.open(c)
    try:
        assert await _ask(first, same + _PREFACE) == (200, "GET /a 1 0")
        assert await _ask(other, same) == (200, "GET /a 1 0")  # (keeps `same` as the memo's)
        assert _memo().last[0] == same
        assert (await first.reply()).status == 400  # the preface's; nothing after is read
        assert await first.closed_within(5)
        # The same read on a connection of its own: never kept as the memo's, refused alike.
        assert await _ask(third, same + _PREFACE) == (200, "GET /a 1 0")
        assert (await third.reply()).status == 400
        assert await third.closed_within(5)
        assert _memo().last[0] == same
        assert await _ask(other, same) == (200, "GET /a 1 0")  # (its connection goes on)
    finally:
        for raw in (first, other, third):
            raw.close()


def _pair(loop: asyncio.AbstractEventLoop, memo: HeadMemo) -> tuple[_FallbackParser, ...]:
    """A wrapper as ClientConnection makes it, on the shared memo, and one without a memo
    (the reference: what llhttp reads)."""
    return _parsers(loop, memo)


_H = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
_MORE = [
    _H + _PREFACE,  # the preface behind a request, in one read
    b"\r\n" + _H + _PREFACE,
    _H + b"\r\n" + _PREFACE,
    _PREFACE,
    b"SM\r\n\r\n",
    _H + b"PRI * HTTP/2.0\r\n",  # the preface in pieces
    b"GET /a HTTP/1.1\r\nHost: h\r\nX: PRI * HTTP/2.0\r\n\r\n",  # a field value
    b"GET /a HTTP/1.1\r\nHost: h\r\nPRI * HTTP/2.0\r\n\r\n",  # a field line
    b"\r\n",
    _H + b"\r\n\r\n",  # empty lines after a request (RFC 9112 §2.2)
    b"\r\n\r\n" + _H,
    _H + b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n",
    _H + _H + _PREFACE,  # behind a pipelined pair
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 19\r\n\r\n\n" + _PREFACE,  # a body
    _H * 9,  # past the queue's bound (8 here)
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
    b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\n\r\n",
    b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    b"0\r\nX-T: 2\r\n\r\n",
    b"GET /w HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
    b"GET /u HTTP/1.1\r\nHost: h\r\n" + _H2C + b"Content-Length: 2\r\n\r\nxy" + _H,
    b"GET /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: h\r\nHost: g\r\n\r\n",
    b"GET /a HTTP/1.1\r\n Host: h\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n",
    b"FOO /f HTTP/1.1\r\nHost: h\r\n\r\n" + _H,
    b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
]


async def test_memos_shared_by_connections_hand_out_what_llhttp_reads() -> None:
    """What this pins: the memo is the process's, so one connection's read is answered
    from another's; a hit must then be exactly what llhttp would read on the connection
    it comes on. Over random interleavings of reads on three connections sharing one memo
    (the benign head and smuggling shapes: a request and HTTP/2's preface in one read, in
    pieces, empty lines, a pipelined burst past the queue's bound, an Expect whose body
    never comes, chunked bodies with trailer fields, websocket, CONNECT and h2c upgrades,
    CL with TE, two Hosts, obs-fold, a bare CR, an unknown method, HTTP/1.0 keep-alive),
    messages consumed at random, and the end of a connection, each wrapper on the memo
    gives every feed what a wrapper without one gives on the same bytes: the same
    messages field by field, the same errors, the same word on its state. Severity if
    broken: high (a message for bytes llhttp would refuse or frame otherwise)."""
    loop = asyncio.get_running_loop()
    rng = random.Random(9112)
    chunks = _CHUNKS[:3] * 4 + _CHUNKS + [_H] * 8 + _MORE
    hits = 0
    for _ in range(150):
        memo = HeadMemo()
        conns = [_pair(loop, memo) for _ in range(3)]
        for _ in range(rng.randrange(4, 24)):
            i = rng.randrange(3)
            mine, plain = conns[i]
            for _ in range(rng.randrange(0, 3)):
                mine.message_consumed()
                plain.message_consumed()
            if rng.random() < 0.05:  # the connection ends; a new one comes
                outcomes = []
                for parser in (mine, plain):
                    try:
                        outcomes.append(("eof", parser.feed_eof() is None))
                    except Exception as exc:  # (compared: the same error for both)
                        outcomes.append(("error", type(exc)))
                assert outcomes[0] == outcomes[1]
                conns[i] = _pair(loop, memo)
                continue
            data = rng.choice(chunks)
            waiting = mine._unseen is not None
            seen = _seen(mine, data)
            hits += not waiting and mine._unseen is not None
            assert seen == _seen(plain, data), (i, data)
            if seen[0] == "error" or seen[1]:
                # (A 400 ends the connection; after a switch (CONNECT, websocket) the
                # bytes are the tunnel's, never fed to the parser: ClientConnection._tail.)
                conns[i] = _pair(loop, memo)
    assert hits > 50  # (the memo was used)


def _shapes() -> list[tuple[str, bytes, bytes]]:
    """test_server_protocol's smuggling shapes, each with a benign request of the same
    method, target and Host (the attack's bytes begin with its request line and Host)."""
    return [(f"{shape} {method.decode()}", smuggling_request(shape, method),
             request(method + b" /s"))
            for shape in (*SMUGGLING, *RAW_SMUGGLING) for method in (b"GET", b"POST", b"FOO")]


@pytest.mark.parametrize(("name", "attack", "benign"), _shapes(), ids=lambda v: str(v)[:40])
async def test_smuggling_shapes_after_the_memo_are_read_as_llhttp_reads_them(
        name: str, attack: bytes, benign: bytes) -> None:
    """What this pins: every smuggling shape of tests/test_server_protocol.py (duplicate and
    malformed Content-Length, Transfer-Encoding variants, chunk-size tricks, obs-fold,
    bare CR and LF, NUL, a second Host, a missing Host, HTTP/3.0, a control byte in the
    target), with a method llhttp knows and one it lacks, sent where the memo holds the
    benign head of the same line and Host (kept by another connection): after that head
    answered from the memo, with it still waiting (not consumed), behind it in one read,
    twice on fresh connections, and split where it stops being the benign head. Each read
    gives exactly what a wrapper without the memo gives (the same messages, the same
    refusal). Severity if broken: high (request smuggling)."""
    loop = asyncio.get_running_loop()
    split = next(i for i, (a, b) in enumerate(zip(attack, benign, strict=False)) if a != b)
    sequences: list[list[bytes | None]] = [  # (None: the oldest message is consumed)
        [benign, None, benign, None, attack],
        [benign, None, benign, attack],
        [attack, None, attack],
        [benign, None, benign + attack],
        [benign, None, attack[:split], attack[split:]],
        [attack[:split], attack[split:], None, benign],
    ]
    for sequence in sequences:
        memo = HeadMemo()
        keeper, _ = _pair(loop, memo)
        keeper.feed_data(benign)  # (another connection: the memo holds the benign head)
        keeper.message_consumed()
        mine, plain = _pair(loop, memo)
        hits = 0
        for data in sequence:
            if data is None:
                mine.message_consumed()
                plain.message_consumed()
                continue
            waiting = mine._unseen is not None
            seen = _seen(mine, data)
            hits += not waiting and mine._unseen is not None
            assert seen == _seen(plain, data), (name, sequence.index(data))
            if seen[0] == "error" or seen[1]:
                break
        kept = memo.last[0]
        if benign.startswith(b"FOO "):  # (the Python parser's: never the memo's)
            assert kept is None and not hits
            continue
        assert hits or sequence[0] is not benign  # (the memo was used)
        # The memo holds a head llhttp reads as one request from a fresh start, nothing of
        # the attack's.
        assert kept is not None and len(_seen(_pair(loop, HeadMemo())[1], kept)[0]) == 1


@pytest.mark.parametrize("shape", ["Content-Length + Transfer-Encoding",
                                   "duplicate Content-Length, different", "obs-fold, space",
                                   "duplicate Host", "missing Host"])
async def test_a_smuggling_shape_right_after_its_benign_head_from_the_memo_is_400(
        proxy: Any, origin: Any, shape: str) -> None:
    """What this pins, through the proxy: a client sends a benign head twice (the second
    answered from the memo, the first kept there by another connection), then a smuggling
    shape of the same request line and Host, and again on a fresh connection: each time a
    400 and the connection closed (nothing after it read), as without the memo; the
    benign head is answered again on another connection. Peer: nginx and Varnish refuse
    these shapes (400) and close. Severity if broken: high (request smuggling)."""
    c = await proxy(await origin(_echo()))
    benign = _head(c.port, b"/s", method=b"POST")  # (the attack's line and Host)
    attack = smuggling_request(shape, b"POST").replace(
        b"Host: example", b"Host: 127.0.0.1:%d" % c.port, 1)
    keeper = await Raw.open(c)
    try:
        assert await _ask(keeper, benign) == (200, "POST /s - 0")
        for before in (2, 0):
            raw = await Raw.open(c)
            try:
                for _ in range(before):
                    assert await _ask(raw, benign) == (200, "POST /s - 0")
                await raw.send(attack)
                assert (await raw.reply()).status == 400
                assert await raw.closed_within(5)
            finally:
                raw.close()
        assert _memo().last[0] == benign
        assert await _ask(keeper, benign) == (200, "POST /s - 0")
    finally:
        keeper.close()


async def test_an_http2_preface_behind_a_request_in_one_read_gets_its_400_at_once(
        proxy: Any, origin: Any) -> None:
    """What was wrong: HTTP/2's prior-knowledge preface cut before its "SM" line (`PRI *
    HTTP/2.0` CRLF CRLF, RFC 9113 §3.4) gets a 400 at once when it starts a read, but in
    the same read behind a request it passed for the usual read: the request was answered
    and then nothing: llhttp waited for the "SM", the connection stayed open on
    keepalive_timeout (75 s), not even client_header_timeout, and the preface got no
    answer nor log line until the client sent more. What a user saw: a client speaking
    HTTP/2 with prior knowledge after an HTTP/1.1 request hung instead of being told (the
    README says the preface gets a 400 at once, after the answers to the requests before
    it in the same read). Peer: nginx answers the preface line on an HTTP/1.1 connection
    with a 400 at once and closes. Severity: low."""
    c = await proxy(await origin(_echo()))
    raw = await Raw.open(c)
    try:
        await raw.send(_head(c.port, b"/a", b"X-N: 1") + _PREFACE)
        first = await raw.reply()
        assert (first.status, first.headers["x-echo"]) == (200, "GET /a 1 0")
        assert (await raw.reply()).status == 400  # (nothing more sent)
        assert await raw.closed_within(5)
    finally:
        raw.close()


async def test_a_field_value_ending_like_the_preface_line_is_no_preface(
        proxy: Any, origin: Any) -> None:
    """What this pins: the preface's refusal behind a request (above) is for the preface's
    own line, after the header section's empty line; a request whose last field's value
    ends with `PRI * HTTP/2.0` (a field value may hold any visible text, RFC 9110 §5.5) is
    a request like any other, answered on a connection that stays open, and the head memo
    keeps it. Severity if broken: medium (such a request answered, then a 400 and the
    connection closed for nothing)."""
    c = await proxy(await origin(_echo()))
    head = _head(c.port, b"/a", b"X-N: PRI * HTTP/2.0")
    raw = await Raw.open(c)
    try:
        for _ in range(3):
            assert await _ask(raw, head) == (200, "GET /a PRI * HTTP/2.0 0")
        assert _memo().last[0] == head
    finally:
        raw.close()


async def test_an_http2_preface_behind_pipelined_requests_gets_its_400_at_once(
        proxy: Any, origin: Any) -> None:
    """What was wrong: as for one request, so behind two or more in one read (or a request
    with a body, then one without): the requests were answered, and the preface line
    (`PRI * HTTP/2.0` CRLF CRLF, cut before its "SM", RFC 9113 §3.4) got nothing: llhttp
    waits for the "SM", and the wrapper took the read's last empty line for a message
    boundary. What a user saw: the connection hung open until keepalive_timeout. Now the
    requests' answers, then the preface's 400, and the connection closes (as nginx
    refuses the line). A body that ends with the preface's text is a body: its request is
    answered and the connection goes on. Severity: low."""
    c = await proxy(await origin(_echo()))
    same = _head(c.port, b"/a", b"X-N: 1")
    post = _head(c.port, b"/p", b"X-N: 2", b"Content-Length: 19", method=b"POST")
    raw = await Raw.open(c)
    try:
        await raw.send(post + b"\n" + _PREFACE + same + _PREFACE)
        answers = [await raw.reply(), await raw.reply()]
        assert [(r.status, r.headers["x-echo"]) for r in answers] == [
            (200, "POST /p 2 19"), (200, "GET /a 1 0")]
        assert (await raw.reply()).status == 400  # (nothing more sent)
        assert await raw.closed_within(5)
    finally:
        raw.close()
    raw = await Raw.open(c)
    try:
        await raw.send(same + post + b"\n" + _PREFACE)  # (the body ends like the preface)
        answers = [await raw.reply(), await raw.reply()]
        assert [(r.status, r.headers["x-echo"]) for r in answers] == [
            (200, "GET /a 1 0"), (200, "POST /p 2 19")]
        assert await _ask(raw, same) == (200, "GET /a 1 0")
    finally:
        raw.close()
