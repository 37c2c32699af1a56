"""A documentation review of today's README changes (docs2): each test names the README's
words, what the proxy did instead, why it matters and how much (high / medium / low)."""

from __future__ import annotations

import asyncio
import signal

from processes import clean_env, start_serve, stop
from test_review_lifecycle_regressions import _head, _origin


async def test_a_head_arriving_after_a_body_at_sigterm_is_answered(origin, tmp_path):
    """README, SIGTERM: "A request whose head was still arriving at the SIGTERM is read and
    answered too (with `Connection: close`, as nginx does)". Not when its first bytes came
    in the same read as the end of the request before it that had a body (a POST with
    `Content-Length` and the next request sent behind it): the proxy counted no bytes of
    a next head then (it cannot tell where a body ended; the parser can), took the
    connection for idle at the stop and closed it without an answer, so the client could
    not tell that request from one lost (RFC 9112 §9.3.1: for a non-idempotent request it
    must not just send it again). nginx answers it. Severity: low (a client must pipeline
    behind a request with a body, and be slow with the rest of the head)."""
    up, _ = await _origin(origin, slow=0.1)
    env = clean_env(CACHEPROXY_PROXY_SHUTDOWN_TIMEOUT="3")
    proc, port = await start_serve("--upstream", up, cwd=tmp_path, env=env)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /fast HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n\r\nabc"
                     b"GET /fast HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert (await _head(reader))[":status"] == "200"
        await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        writer.write(b"\r\n")  # the rest of the head
        answer = await _head(reader)
        assert (answer[":status"], answer.get("connection")) == ("200", "close")
        writer.close()
    finally:
        code, err = await stop(proc)
    assert code == 0 and "Traceback" not in err
