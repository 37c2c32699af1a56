"""A second reader of the day's merges (review-referer, -logs, -unsafe, -varyref, -bounds,
-abort, -cli and the lead's collapse-per-variant and pid-file lock), looking for what two
merged changes do together: a collapsed leader whose client leaves while it waits for an
upstream connection (review-abort) against the waiters' stale-if-error (RFC 5861 §4);
the per-variant collapse slot against hit-for-pass marks, Vary: Referer and Redis'
Selectable; the memo bounds against the stored-entry accounting; the signals held at
start; the pid file's lock.

Each test failed on the code it was written against (commit c92c24e), unless its docstring
says it guards what was found right. Real servers on 127.0.0.1 (aiohttp origins, the
real proxy through tests/conftest.py's fixtures)."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from support import cache_status, read_json_log, until

from cacheproxy import pidfile
from cacheproxy.lifetime import StartError


async def _send(port: int, target: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


def _reset(writer: asyncio.StreamWriter) -> None:
    """The client goes with a reset (SO_LINGER 0)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


async def test_a_leader_whose_client_left_before_it_had_a_connection_is_no_error_for_its_waiters(
        origin: Any, proxy: Any) -> None:
    """A stored response, stale, with stale-if-error; every upstream connection in use
    (proxy.max_connections). A request for it (the collapse leader, validating) waits for
    a connection, a second waits behind it, and the leader's client leaves. Since
    review-abort (8541d3b) such a leader is given up before it is sent, and its waiters
    were told "the leader failed": the waiter was answered the stale copy under
    stale-if-error (Cache-Status fwd=stale, detail=stale-if-error) though the origin
    never failed nor was even asked; before, the leader went on and the waiter got the
    new response. RFC 5861 §4 allows the stale copy "when an error is encountered"; a
    client leaving is none (nginx's proxy_cache_lock waiters go on to the origin when the
    lock holder's client leaves). Now the waiter goes upstream itself (one waiter tries
    again, as behind a leader that got no answer) and is answered the origin's new
    response. Severity: medium (stale content served, counted as an origin error, under
    load: exactly when connections are all in use)."""
    hold, held = asyncio.Event(), asyncio.Event()
    version = {"n": 0}

    async def slow(request: web.Request) -> web.Response:
        held.set()
        await hold.wait()
        return web.Response(text="slow", headers={"Cache-Control": "no-store"})

    async def page(request: web.Request) -> web.Response:
        version["n"] += 1
        # Stale on arrival (Age past max-age), usable on error for 600 s more
        return web.Response(text=f"v{version['n']}", headers={
            "Cache-Control": "max-age=60, stale-if-error=600", "Age": "120"})

    app = web.Application()
    app.router.add_get("/slow", slow)
    app.router.add_get("/page", page)
    server = await origin(app)
    client = await proxy(server, proxy={"max_connections": 1})
    first = await client.get("/page")
    assert await first.text() == "v1"
    _, holder = await _send(client.port, "/slow")  # the one connection, held
    await asyncio.wait_for(held.wait(), 5)
    _, leader = await _send(client.port, "/page")  # validates: waits for a connection
    collapser = client.app_proxy.driver.collapser
    slot = (str(client.make_url("/page")), None)
    assert await until(lambda: slot in collapser._inflight)
    led = collapser._inflight[slot]
    waiter = asyncio.ensure_future(client.get("/page"))
    assert await until(lambda: bool(led._callbacks))
    _reset(leader)  # the leader's client leaves: nothing is sent for it
    assert await until(led.done)  # its waiter is told
    hold.set()  # (then the connection is free for whoever goes upstream)
    resp = await asyncio.wait_for(waiter, 5)
    body = await resp.text()
    holder.close()
    # The origin's new response (v2, or v3 before: the departed leader's request took v2)
    assert body != "v1", cache_status(resp)
    assert "fwd-status=200" in cache_status(resp)


async def test_waiters_of_a_leader_whose_client_left_after_sending_get_its_stored_answer(
        origin: Any, proxy: Any, tmp_path: Any) -> None:
    """Guards what was found right: the other half of the test above. A collapse leader
    that was sent upstream, then lost its client (a reset), is logged 499 at once since
    review-abort (2b0a291), and its fetch goes on for the next client (nginx with
    proxy_cache, Varnish): its waiter is answered the stored answer of that one upstream
    request, collapsed, not sent upstream again nor answered from storage on error."""
    answer, asked = asyncio.Event(), asyncio.Event()
    calls = {"n": 0}

    async def page(request: web.Request) -> web.Response:
        calls["n"] += 1
        asked.set()
        await answer.wait()
        return web.Response(text=f"v{calls['n']}", headers={
            "Cache-Control": "max-age=600, stale-if-error=600"})

    app = web.Application()
    app.router.add_get("/page", page)
    client = await proxy(await origin(app), log={"path": str(tmp_path / "r.log")})
    collapser = client.app_proxy.driver.collapser
    slot = (str(client.make_url("/page")), None)
    _, leader = await _send(client.port, "/page")
    await asyncio.wait_for(asked.wait(), 5)  # sent upstream
    led = collapser._inflight[slot]
    waiter = asyncio.ensure_future(client.get("/page"))
    assert await until(lambda: bool(led._callbacks))
    _reset(leader)
    for _ in range(300):  # its line (499) is written when its client leaves
        if [line["status"] for line in await read_json_log(client)] == [499]:
            break
        await asyncio.sleep(0.01)
    assert [line["status"] for line in await read_json_log(client)] == [499]
    answer.set()
    resp = await asyncio.wait_for(waiter, 5)
    assert (await resp.text(), calls["n"]) == ("v1", 1)
    assert "collapsed" in cache_status(resp) and "stale" not in cache_status(resp)


class _Servers:
    """Threads standing in for `cacheproxy serve` processes around one pid file: each has
    a pid of its own (os.getpid, per thread), is "running" while listed in alive, and may
    be held at a hook of pidfile's (before its read of the file, before its write). Locks
    taken through separate open descriptions conflict within one process as between two
    (flock, Linux), so the claims race as separate processes' would."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.local = threading.local()
        self.alive: set[int] = set()
        self.holds: dict[tuple[int, str], tuple[threading.Event, threading.Event]] = {}
        self.claimed: list[int] = []
        self.refused: list[int] = []
        real_read, real_write = pidfile.read_pid, pidfile._write
        real_getpid = pidfile.os.getpid  # (the os module's: the test's own thread keeps it)
        monkeypatch.setattr(pidfile.os, "getpid",
                            lambda: getattr(self.local, "pid", None) or real_getpid())
        monkeypatch.setattr(pidfile, "_is_cacheproxy", lambda pid: pid in self.alive)

        def read_pid(path: str) -> int | None:
            self._hold("read")
            return real_read(path)

        def write(path: str, text: str) -> None:
            if not path.endswith(".json"):
                self._hold("write")
            real_write(path, text)

        monkeypatch.setattr(pidfile, "read_pid", read_pid)
        monkeypatch.setattr(pidfile, "_write", write)

    def hold(self, pid: int, where: str) -> tuple[threading.Event, threading.Event]:
        """(reached, go): pid stops at where until go is set."""
        events = self.holds[(pid, where)] = (threading.Event(), threading.Event())
        return events

    def _hold(self, where: str) -> None:
        events = self.holds.pop((self.local.pid, where), None)
        if events is not None:
            events[0].set()
            events[1].wait(10)

    def run(self, pid: int, step: Any) -> threading.Thread:
        def body() -> None:
            self.local.pid = pid
            step()

        thread = threading.Thread(target=body, daemon=True)
        thread.start()
        return thread

    def claim(self, pid: int, path: Path) -> threading.Thread:
        def step() -> None:
            try:
                pidfile.claim(str(path), 8.0)
            except StartError:
                self.refused.append(pid)
            else:
                self.claimed.append(pid)
                self.alive.add(pid)
        return self.run(pid, step)

    def stop(self, pid: int, path: Path) -> threading.Thread:
        def step() -> None:
            pidfile.release(str(path))
            self.alive.discard(pid)
        return self.run(pid, step)


def test_two_servers_starting_as_the_running_one_stops_are_not_both_let_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """c92c24e's lock is taken on the pid file as found, but the file is replaced (the
    claim's atomic write) and removed (the stopping server's release, which took no lock).
    A start that locked the running server's file, then that server's stop removing it,
    and a second start: the second created a new file and locked that, so the two starts
    held two locks, both read the (new, empty) file as free, and both ran (the file
    naming one; the other out of reach of `stop` and `reload`, and, with --workers, both
    on the port by SO_REUSEPORT). A restart (stop, then start) racing a second start, a
    deploy script's and a process manager's, does this. Now a lock counts only on the
    file still at the path (else it is taken again, on the file there), and a release
    removes the file under the lock. Severity: low (a start race, as c92c24e's)."""
    path = tmp_path / "cp.pid"
    servers = _Servers(monkeypatch)
    monkeypatch.setattr(pidfile, "_RELEASE_WAIT", 30.0, raising=False)  # (not in the way)
    servers.claim(1001, path).join(5)  # the running server
    assert servers.claimed == [1001]
    first_locked, first_reads = servers.hold(1002, "read")
    first = servers.claim(1002, path)
    assert first_locked.wait(5)  # it holds the lock of 1001's file
    stopping = servers.stop(1001, path)
    stopping.join(0.5)  # (done at once when it takes no lock; else it waits for 1002's)
    second_checked, second_writes = servers.hold(1003, "write")
    second = servers.claim(1003, path)
    second_checked.wait(0.5)  # (it found the file free; or it waits on a lock)
    first_reads.set()
    second_writes.set()
    for thread in (first, stopping, second):
        thread.join(5)
    assert len(servers.claimed) + len(servers.refused) == 3
    assert len(servers.claimed) <= 2, (servers.claimed, servers.refused)  # 1001 and one
    assert not {1002, 1003} <= set(servers.claimed), (servers.claimed, path.read_text())
