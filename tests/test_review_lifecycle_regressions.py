"""Review (lifecycle): what happens to requests in flight when the operator acts on a
running `cacheproxy serve` (SIGTERM, SIGHUP, SIGINT, --workers). Each test runs the real
process in front of an aiohttp origin on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import pytest
from aiohttp import web
from processes import clean_env, start_serve, stop


async def _origin(origin: object, slow: float = 1.0) -> tuple[str, asyncio.Event]:
    """/slow answers after `slow` seconds (arrived is set when it comes), /fast at once;
    neither is stored."""
    arrived = asyncio.Event()

    async def answer(request: web.Request) -> web.Response:
        if request.match_info["name"] == "slow":
            arrived.set()
            await asyncio.sleep(slow)
        return web.Response(text="done", headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_route("*", "/{name}", answer)
    server = await origin(app)  # type: ignore[operator]
    return str(server.make_url("")).rstrip("/"), arrived


async def _head(reader: asyncio.StreamReader) -> dict[str, str]:
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode()
    status, *lines = head.strip().split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    fields[":status"] = status.split()[1]
    await reader.readexactly(int(fields["content-length"]))
    return fields


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGINT], ids=["SIGHUP", "SIGINT"])
async def test_a_reload_or_interrupt_while_it_stops_still_ends_in_a_clean_exit(
        origin, tmp_path, sig):
    """A SIGHUP (`cacheproxy reload` from a logrotate postrotate or a deploy script,
    `docker compose kill -s HUP`) or a second Ctrl-C that lands while the process stops
    killed it by that signal: exit status -1 / -2 (129 / 130 to a shell, a failure to
    Docker's and systemd's restart policies) instead of the clean 0 the README promises for
    a graceful stop. The SIGTERM handler's end blocked SIGTERM only; the loop's handlers
    for SIGHUP and SIGINT go with the loop, leaving their default action (terminate) for
    the last moments of the exit. nginx, sent HUP while it quits, goes on quitting (tried:
    1.22). Severity: low (the requests were answered; the exit status, and what a
    supervisor makes of it, are wrong)."""
    up, _ = await _origin(origin, slow=0.1)
    proc, _ = await start_serve("--upstream", up, cwd=tmp_path)
    proc.send_signal(signal.SIGTERM)
    while proc.returncode is None:  # again and again, until it is gone
        with contextlib.suppress(ProcessLookupError):  # (os.kill: send_signal would reap
            os.kill(proc.pid, sig)  # it, ahead of asyncio's child watcher)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 0.002)
    code, err = await stop(proc)
    assert code == 0, f"exit status {code} (killed by {signal.Signals(-code).name})" \
        if code < 0 else f"exit status {code}"
    assert "Traceback" not in err


@pytest.mark.parametrize("warm", [False, True], ids=["full-path", "quick-forward"])
async def test_the_answer_to_a_request_in_flight_at_sigterm_says_connection_close(
        origin, tmp_path, warm):
    """SIGTERM while a keep-alive client's request is at the origin: its answer went out
    without `Connection: close`, and the proxy closed the connection right after it. The
    client, told the connection stays open, sends its next request on it (here a POST)
    and gets a reset: a request it cannot know was not processed, and that it must not
    retry by itself when it is not idempotent (RFC 9112 §9.3.1). RFC 9112 §9.6: a server
    that is going to close says `close` in the response. nginx (`nginx -s quit`, tried:
    1.22) answers the request in flight with `Connection: close`. Severity: medium (every
    rolling restart drops such follow-up requests)."""
    up, arrived = await _origin(origin)
    env = clean_env(CACHEPROXY_PROXY_SHUTDOWN_TIMEOUT="5")
    proc, port = await start_serve("--upstream", up, cwd=tmp_path, env=env)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if warm:  # an idle pooled connection: the miss is sent by callback (quick forward)
            writer.write(b"GET /fast HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert (await _head(reader))[":status"] == "200"
        writer.write(b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await asyncio.wait_for(arrived.wait(), 10)
        proc.send_signal(signal.SIGTERM)
        fields = await _head(reader)
        assert fields[":status"] == "200"
        assert fields.get("connection") == "close", \
            "the connection closes after this answer, and the answer does not say so"
        writer.close()
    finally:
        code, err = await stop(proc)
    assert code == 0 and "Traceback" not in err


@pytest.mark.parametrize("kept_alive", [False, True], ids=["new-connection", "kept-alive"])
async def test_a_request_whose_head_is_arriving_at_sigterm_is_answered(
        origin, tmp_path, kept_alive):
    """A POST whose head was half received when SIGTERM came (a large head in two
    segments, a slow link) is dropped: the connection is closed as idle, and the client
    sees it end with no answer, for a request it cannot tell was not processed and must
    not retry by itself (RFC 9112 §9.3.1). The README: requests in flight get
    proxy.shutdown_timeout to finish, and only an idle keep-alive connection is closed
    without an answer. nginx (`nginx -s quit`, tried: 1.22) answers such a request, on a new
    connection and on a kept-alive one. Severity: low (a head usually arrives in one
    segment; the window is the stop's first moment)."""
    up, _ = await _origin(origin)
    env = clean_env(CACHEPROXY_PROXY_SHUTDOWN_TIMEOUT="5")
    proc, port = await start_serve("--upstream", up, cwd=tmp_path, env=env)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if kept_alive:
            writer.write(b"GET /fast HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert (await _head(reader))[":status"] == "200"
        writer.write(b"POST /fast HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        await asyncio.sleep(0.2)  # (read by the proxy: half a head)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        with contextlib.suppress(ConnectionError):
            writer.write(b"Content-Length: 2\r\n\r\nhi")
        try:
            fields = await _head(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            fields = {":status": "none: the connection closed without an answer"}
        assert fields[":status"] == "200"
        assert fields.get("connection") == "close"
        writer.close()
    finally:
        code, err = await stop(proc)
    assert code == 0 and "Traceback" not in err


@pytest.mark.parametrize("how", ["SIGTERM twice", "SIGINT then SIGTERM", "workers: group"])
async def test_a_stop_signal_repeated_during_the_drain_lets_requests_in_flight_finish(
        origin, tmp_path, how):
    """A second SIGTERM (or a SIGINT then a SIGTERM) while the process drains cut every
    request in flight at once: the connection closed with no answer, no 503, where the
    README says "a SIGTERM repeated meanwhile changes nothing". The loop's handler
    cancelled the serving task again, and this time the cancel landed in its drain. With
    --workers it happens on every stop that signals the whole group: systemd's default
    KillMode=control-group sends SIGTERM to every process of the service, Ctrl-C in a
    terminal SIGINT to every process of the foreground group, and the supervisor then
    passes its own SIGTERM on: each worker gets two. Severity: high (with --workers under
    systemd, every stop or restart drops all requests in flight)."""
    up, arrived = await _origin(origin, slow=1.0)
    env = clean_env(CACHEPROXY_PROXY_SHUTDOWN_TIMEOUT="5")
    workers = ("--workers", "2") if how.startswith("workers") else ()
    proc, port = await start_serve("--upstream", up, *workers, cwd=tmp_path, env=env)
    try:
        if workers:
            await asyncio.sleep(1.0)  # (both workers listening)
        streams = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        for _, writer in streams:
            writer.write(b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await asyncio.wait_for(arrived.wait(), 10)
        await asyncio.sleep(0.2)
        if how == "SIGTERM twice":
            sent = [(proc.pid, signal.SIGTERM), (proc.pid, signal.SIGTERM)]
        elif how == "SIGINT then SIGTERM":
            sent = [(proc.pid, signal.SIGINT), (proc.pid, signal.SIGTERM)]
        else:  # systemd's stop: SIGTERM to the group (parent and workers)
            sent = [(-proc.pid, signal.SIGTERM)]
        for pid, sig in sent:
            if pid < 0:
                os.killpg(-pid, sig)
            else:
                os.kill(pid, sig)
            await asyncio.sleep(0.2)
        statuses = []
        for reader, writer in streams:
            try:
                statuses.append((await _head(reader))[":status"])
            except (asyncio.IncompleteReadError, ConnectionError):
                statuses.append("closed without an answer")
            writer.close()
        assert statuses == ["200"] * 4
    finally:
        code, err = await stop(proc)
    assert code == 0 and "Traceback" not in err


async def test_a_head_that_never_ends_holds_the_stop_no_longer_than_its_timeout(
        origin, tmp_path):
    """The other side of answering a head that was arriving at SIGTERM: one whose rest
    never comes holds the drain only up to proxy.shutdown_timeout; then its connection
    closes and the process exits 0."""
    import time

    up, _ = await _origin(origin)
    env = clean_env(CACHEPROXY_PROXY_SHUTDOWN_TIMEOUT="1")
    proc, port = await start_serve("--upstream", up, cwd=tmp_path, env=env)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /fast HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    await asyncio.sleep(0.2)
    started = time.monotonic()
    code, err = await stop(proc)
    took = time.monotonic() - started
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing sent
    writer.close()
    assert code == 0 and "Traceback" not in err
    assert 0.8 < took < 4, took
