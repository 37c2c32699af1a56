"""Review perfread8: two memos read as a cache's and a proxy's framing reviewer would.

perfobj2 (http/flow/lookup.py): `_last_validating` keeps, beside the Forward that
validates a stored no-cache response (RFC 9111 §5.2.2.4), the last request's facts (by
identity), recently_passed and lookup's whole decision, and gives that decision back for
the same facts, route, stored response (held alone) and recently_passed, nothing waited
for and no loop. perfreans (proxy/pool.py): `Pool._again` / `_seen`,
`Connection._keep_again` / `_take_again`: an origin's answer whose bytes equal, to the
byte, the last small answer taken whole in an exchange's first read and seen twice in a
row is taken again without llhttp.

The review looked for an input each kept thing depends on that its check leaves out,
state that outlives its exchange or request, and a use after a change. The tests below
pin what was checked: the pool's kept answer fuzzed against llhttp's full parse (the
connection's observable state with the memo on and off, over answers and exchange states
drawn at random, and the next exchange on the same connection), and lookup's remembered
decision against a fresh lookup at other times for a stored no-cache response carrying
every time-dependent directive.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st
from support import raw_origin

from cacheproxy.proxy.pool import Connection, Origin, Pool

_ORIGIN = Origin("http", "127.0.0.1", 1)


# -- perfreans: the pool's kept answer against llhttp's parse ---------------------------

@st.composite
def _answer(draw: Any) -> bytes:
    """A small origin answer: framing, connection fields, version, line ends and what
    follows it in the same read drawn at random (most of it valid, some of it not)."""
    if draw(st.booleans()):  # the usual answer: HTTP/1.1, framed by its length
        status = draw(st.sampled_from([200, 304, 204]))
        body = b"" if status != 200 else draw(st.sampled_from([b"ok", b"\r\n", b""]))
        # (an interim answer before it, HTTP/1.0 kept alive, a chunked empty body: in turns)
        before = draw(st.sampled_from([b""] * 4 + [b"HTTP/1.1 103 Early\r\nLink: <a>\r\n\r\n"
                                                 ]))
        version = draw(st.sampled_from([b"1.1"] * 4 + [b"1.0"]))
        framing = b"Content-Length: %d" % len(body)
        if version == b"1.0":
            framing += b"\r\nConnection: keep-alive"
        elif status == 200 and not body and draw(st.integers(0, 3)) == 0:
            framing, body = b"Transfer-Encoding: chunked", b"0\r\n\r\n"
        return (b"%sHTTP/%s %d R\r\nETag: \"a\"\r\n%s\r\n\r\n%s%s"
                % (before, version, status, framing, body,
                   draw(st.sampled_from([b"", b"", b"\r\n"]))))
    eol = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n"]))
    version = draw(st.sampled_from([b"1.1", b"1.1", b"1.1", b"1.0", b"1.2"]))
    status = draw(st.sampled_from([200, 200, 304, 204, 404, 203, 101, 103, 500]))
    body = draw(st.sampled_from([b"", b"hello", b"\r\n", b"ab\n", b"x" * 40]))
    lines = [b"Date: Sat, 05 Dec 2026 16:00:00 GMT"]
    framing = draw(st.sampled_from(["length", "length", "none", "chunked", "wrong",
                                    "two", "zero"]))
    content = body
    if framing == "length":
        lines.append(b"Content-Length: %d" % len(body))
    elif framing == "zero":
        lines.append(b"Content-Length: 0")
        content = b""
    elif framing == "wrong":
        lines.append(b"Content-Length: %d" % (len(body) + 1))
    elif framing == "two":
        lines += [b"Content-Length: %d" % len(body)] * 2
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        content = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    connection = draw(st.sampled_from([None, None, b"keep-alive", b"close", b"upgrade",
                                       b"keep-alive, X-Hop"]))
    if connection is not None:
        lines.append(b"Connection: " + connection)
        if connection == b"upgrade":
            lines.append(b"Upgrade: h2c")
    if draw(st.booleans()):
        lines.append(b"Proxy-Connection: " + draw(st.sampled_from([b"close", b"keep-alive"])))
    if draw(st.booleans()):
        lines += [b"Set-Cookie: a=1", b"X-Hop: 1", b"ETag: \"v1\"", b"Vary: Accept"]
    head = b"HTTP/" + version + b" %d Some Reason" % status + eol
    head += b"".join(line + eol for line in lines) + eol
    after = draw(st.sampled_from([b"", b"", b"", b"\r\n", b"\n", b"X",
                                  b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]))
    return head + content + after


def _observed(conn: Connection, pool: Pool, received: list[bool]) -> tuple[Any, ...]:
    """What an exchange's users read of the connection, and what the pool keeps of it."""
    failure = conn.head_failure() if received and conn._head is not None \
        and conn._head.done() else None
    fields = conn._fields
    return (received, repr(failure), conn.status, conn.reason, conn.version,
            list(fields), dict(getattr(fields, "by_name", {}) or {}), conn.content_length,
            conn._complete, conn.whole, conn.reusable, repr(conn._lost), conn._buffered,
            list(conn._chunks), conn._head_bytes, pool.speaks_http10(_ORIGIN),
            conn.finished())


def _run(steps: list[tuple[int, bool, list[bytes]]], tls: bool, http10: bool,
         memo: bool) -> list[tuple[Any, ...]]:
    """steps on one pool: (connection, to HEAD, the reads); a connection the pool does
    not take back (release) is replaced by a new one. memo False: the kept answer is
    dropped after every read (llhttp parses everything)."""
    loop = asyncio.new_event_loop()
    try:
        pool = Pool(8, 1.0, 30.0)
        pool._loop = loop
        if http10:
            pool.heard(_ORIGIN, "1.0")
        conns: dict[int, Connection] = {}
        seen: list[tuple[Any, ...]] = []
        for which, head_only, reads in steps:
            conn = conns.get(which)
            if conn is None:
                conn = conns[which] = Connection(pool, _ORIGIN)
                transport = mock.Mock()
                transport.get_extra_info.side_effect = \
                    lambda name, tls=tls: object() if tls and name == "ssl_object" else None
                transport.is_closing.return_value = False
                transport.get_write_buffer_size.return_value = 0
                conn.connection_made(transport)
            received: list[bool] = []
            interims: list[Any] = []
            conn.send_quick(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", head_only,
                            functools.partial(received.append, True), 5.0,
                            lambda *interim, got=interims: got.append(interim))
            for data in reads:
                conn.data_received(data)
                if not memo:
                    pool._again = None
            seen.append((_observed(conn, pool, received), interims))
            if conn.whole:
                conn.take_body()
            pool.release(conn)  # (pooled again only when reusable and read whole)
            if conn._head is not None:  # (closed: not pooled)
                del conns[which]
        return seen
    finally:
        loop.close()


@st.composite
def _steps(draw: Any) -> tuple[list[tuple[int, bool, list[bytes]]], bool, bool]:
    # (mostly the first answer, so that it is seen twice in a row, kept and taken)
    answers = draw(st.lists(_answer(), min_size=1, max_size=3))
    steps = []
    for _ in range(draw(st.integers(3, 12))):
        data = answers[0] if draw(st.integers(0, 3)) else draw(st.sampled_from(answers))
        cut = draw(st.sampled_from([None] * 6 + [1, len(data) // 2, len(data) - 1]))
        reads = [data] if not cut or cut >= len(data) else [data[:cut], data[cut:]]
        if draw(st.integers(0, 5)) == 0:
            reads.append(b"\r\n")  # a later read in the same exchange
        steps.append((draw(st.integers(0, 1)), draw(st.integers(0, 3)) == 0, reads))
    return steps, draw(st.booleans()), draw(st.booleans())


@settings(max_examples=1000, deadline=None)
@given(_steps())
def test_the_kept_answer_leaves_what_llhttp_would(drawn: Any) -> None:
    """What was at stake: the pool's kept answer (perfreans) sets at once the state that
    llhttp's parse of the same bytes would leave: the status, reason, version, fields and
    their index, Content-Length, the body queued once, complete, reusable, the pool's
    HTTP/1.0 note, the head's bytes counted; and it leaves llhttp where the parse would
    (the next exchange on the connection is parsed the same). Had any input the parse
    reads been left out of the check (the exchange to HEAD, TLS, the bytes past the end,
    a split read, a Connection or Proxy-Connection field, HTTP/1.0 or 1.2, a 204/304 with
    a body, an interim answer, chunked framing), a user saw another answer's status or
    body, a body cut or run on (RFC 9112 §6.3), or a connection reused that the origin
    closes (§9.3). Fuzzed: the same steps with the memo on and off give the same
    observations. Severity: high, were it broken (it is not: this pins it)."""
    steps, tls, http10 = drawn
    assert _run(steps, tls, http10, memo=True) == _run(steps, tls, http10, memo=False)


def test_the_fuzz_reaches_the_kept_answer() -> None:
    """The fuzz above compares something: a usual answer seen twice in a row is kept, and
    taken on the third exchange (else the comparison would be of two full parses)."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    took: list[int] = []
    real = Connection._take_again

    def counting(self: Connection, again: Any) -> None:
        took.append(1)
        real(self, again)

    with mock.patch.object(Connection, "_take_again", counting):
        on = _run([(0, False, [answer])] * 4, False, False, memo=True)
    assert len(took) == 2
    assert on == _run([(0, False, [answer])] * 4, False, False, memo=False)


# -- perfobj2: lookup's remembered decision for a stored no-cache response ---------------

_T0 = 1_704_067_200.0  # Mon, 01 Jan 2024 00:00:00 GMT
_KEY = "http://example/r"


@st.composite
def _validated(draw: Any) -> tuple[Any, ...]:
    """A stored response that demands validation (no-cache, mostly, with every
    time-dependent directive beside it at random), the facts of one request for it (its
    own directives, preconditions, Range, HEAD), and times to ask at, before and past
    every window."""
    from multidict import CIMultiDict

    from cacheproxy.http.fields import FieldList
    from cacheproxy.http.flow import request_facts
    from cacheproxy.http.stored import Heuristics, make_stored_response

    # (no-cache left out at times: the memo must then not answer for the time)
    cc = [*draw(st.sampled_from([["no-cache"]] * 4 + [[]])), *draw(st.lists(st.sampled_from(
        ["max-age=60", "s-maxage=30", "must-revalidate", "proxy-revalidate", "public",
         "stale-while-revalidate=100", "stale-if-error=100", "max-age=0"]),
        max_size=3, unique=True))]
    pairs = [("Date", "Mon, 01 Jan 2024 00:00:00 GMT"), ("Cache-Control", ", ".join(cc)),
             ("ETag", '"v1"'), ("Last-Modified", "Sun, 31 Dec 2023 00:00:00 GMT")]
    if draw(st.booleans()):
        pairs.append(("Age", draw(st.sampled_from(["5", "90", "1000"]))))
    stored = make_stored_response(
        key=_KEY, vary=(), vary_values=(), status=200, pairs=FieldList(pairs), body=b"b",
        request_time=_T0, response_time=_T0, shared=True, heuristics=Heuristics())
    asked = draw(st.lists(st.sampled_from(
        ["max-stale", "max-stale=50", "min-fresh=10", "only-if-cached", "no-cache",
         "max-age=0", "max-age=100", "stale-if-error=500", "no-store"]),
        max_size=2, unique=True))
    fields = [("Host", "example")]
    if asked:
        fields.append(("Cache-Control", ", ".join(asked)))
    for name, value in draw(st.lists(st.sampled_from(
            [("If-Match", '"v1"'), ("If-Match", '"v2"'), ("If-None-Match", '"v1"'),
             ("Range", "bytes=0-0"), ("Authorization", "Basic eDp5"),
             ("If-Unmodified-Since", "Sat, 30 Dec 2023 00:00:00 GMT")]),
            max_size=2, unique_by=lambda f: f[0])):
        fields.append((name, value))
    method = draw(st.sampled_from(["GET", "GET", "HEAD"]))
    req = request_facts(method, CIMultiDict(fields), has_body=False)
    times = draw(st.lists(st.sampled_from([-5.0, 0.0, 1.0, 29.0, 59.0, 61.0, 120.0, 200.0,
                                           1_000.0, 86_400.0]), min_size=2, max_size=5))
    passed = draw(st.lists(st.booleans(), min_size=len(times), max_size=len(times)))
    return stored, req, times, passed


@settings(max_examples=300, deadline=None)
@given(_validated())
def test_the_remembered_validation_is_what_lookup_decides_at_any_time(drawn: Any) -> None:
    """What was at stake: lookup's remembered decision (perfobj2) leaves the time out of
    its key, on the ground that a no-cache response is validated whatever its age (RFC
    9111 §5.2.2.4, before any freshness), and that the request's preconditions (RFC 9110
    §13.2.2) and Range (§14.2) are read from the facts alone. Were any part of the
    decision time-dependent for such a response (stale-while-revalidate, RFC 5861 §3;
    must-revalidate, §5.2.2.2; a client's max-stale or min-fresh, §5.2.1; an Age past the
    freshness lifetime; only-if-cached, §5.2.1.7), a user saw a stale response served or
    refused (504) by the decision made at another time. Fuzzed: the same facts object
    asked at times before and past every window, with recently_passed changing, against a
    lookup with nothing remembered. Severity: high, were it broken (it is not: this pins
    it)."""
    import importlib

    from cacheproxy.http.flow import CacheSettings
    from cacheproxy.http.flow.lookup import lookup

    module = importlib.import_module("cacheproxy.http.flow.lookup")
    stored, req, times, passed = drawn
    route = CacheSettings()
    module._last_validating = None
    for offset, recently_passed in zip(times, passed, strict=True):
        now = _T0 + offset
        remembered = lookup(req, (stored,), now=now, route=route,
                            recently_passed=recently_passed)
        held = module._last_validating
        module._last_validating = None
        fresh = lookup(req, (stored,), now=now, route=route, recently_passed=recently_passed)
        assert remembered == fresh, (offset, recently_passed)
        module._last_validating = held


# -- both, through the proxy -------------------------------------------------------------

async def test_a_304_taken_again_then_one_that_changes_the_stored_fields(proxy: Any) -> None:
    """What was at stake: a stored no-cache response is validated on every request
    (RFC 9111 §5.2.2.4): lookup hands out its remembered Forward and conditional fields
    (perfobj2), and the origin's 304, the same to the byte, is taken from the pool's kept
    answer (perfreans). Then the origin's 304 carries a new Last-Modified and a new field
    value (same ETag): §4.3.4 updates the stored response with them (§3.2), so the client
    gets the new field, and the next validation sends the new Last-Modified
    (If-Modified-Since, §4.3.1), not the remembered one. Had either memo outlived the
    stored response it was made for (the Forward by the facts, the 304's fields shared
    between exchanges), a user saw the old field, or the origin was asked with the old
    date. Severity: high, were it broken (it is not: this pins it)."""
    etag = b'ETag: "v"\r\n'
    old = b"Last-Modified: Sun, 31 Dec 2023 00:00:00 GMT\r\nX-Version: 1\r\n"
    new = b"Last-Modified: Mon, 01 Jan 2024 00:00:00 GMT\r\nX-Version: 2\r\n"
    full = (b"HTTP/1.1 200 OK\r\nCache-Control: no-cache\r\n" + etag + old
            + b"Content-Length: 2\r\n\r\nok")
    same = b"HTTP/1.1 304 Not Modified\r\n" + etag + old + b"\r\n"
    changed = b"HTTP/1.1 304 Not Modified\r\n" + etag + new + b"\r\n"
    answers = [full, same, same, same, same, changed, same.replace(old, new),
               same.replace(old, new)]
    heads: list[bytes] = []

    def answer(head: bytes) -> bytes:
        heads.append(head)
        return answers.pop(0)

    took: list[int] = []
    real = Connection._take_again

    def counting(self: Connection, again: Any) -> None:
        took.append(1)
        real(self, again)

    async with raw_origin(answer) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        seen = []
        with mock.patch.object(Connection, "_take_again", counting):
            for _ in range(8):
                resp = await client.get("/r")
                seen.append((resp.status, resp.headers["X-Version"], await resp.read()))
    assert seen == [(200, "1", b"ok")] * 5 + [(200, "2", b"ok")] * 3
    assert took  # (the repeated 304 was taken from the kept answer)
    sent = [h.lower() for h in heads]
    assert all(b"if-modified-since: sun, 31 dec 2023" in h for h in sent[1:6])
    assert all(b"if-modified-since: mon, 01 jan 2024" in h for h in sent[6:]), sent[6:]
