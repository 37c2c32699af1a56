"""Review perfquick2: the steps from the pool's answer to the client's write (a
pass-through answered by callback: proxy/quick_forward.py, Driver.decided,
ClientConnection.forwarded). A client connection now renews one QuickForward for its
requests instead of making one per request; these tests pin what that must not change."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from test_client_plane import Raw

from cacheproxy.proxy.quick_forward import QuickForward

BIG = b"x" * (3 * 1024 * 1024)  # more than one read: handed to the driver's relay


def _origin() -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == "slow":
            await asyncio.sleep(0.3)
        body = BIG if name == "big" else name.encode()
        return web.Response(body=body, headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_route("GET", "/{name}", answer)
    return app


async def test_a_renewed_quick_forward_is_waited_for_after_one_handed_to_a_task(
        proxy: Any, origin: Any, forward_switch: Any, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    """What could break: a client connection keeps its QuickForward for its next
    request (renew), but one handed to a task is settled by that task's end, later. Were
    it renewed for the connection's next request, that settle could mark the new request
    done, and a graceful stop would close the connection under it (the client would get
    nothing, or a cut answer, where nginx answers what it has begun before it quits).
    So a handed-off one is never renewed: the next request gets a new one, and a stop
    waits for it. Severity if broken: medium (lost answers at every graceful restart)."""
    used: list[QuickForward] = []
    start = QuickForward.start

    def counted(self: QuickForward, head: bytes) -> None:
        used.append(self)
        start(self, head)

    monkeypatch.setattr(QuickForward, "start", counted)
    c = await proxy(await origin(_origin()))
    for name in ("one", "two", "big", "three", "four", "slow"):  # known not to be stored,
        assert (await c.get(f"/{name}")).status == 200  # (and an idle connection to send on)
    conn = await Raw.open(c)
    head = b"GET /%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n"
    for name in (b"one", b"two"):
        await conn.send(head % (name, c.port))
        assert (await conn.reply()).body == name
    assert len(used) == 2 and used[0] is used[1]  # renewed, not made again
    await conn.send(head % (b"big", c.port))
    assert (await conn.reply()).body == BIG  # streamed by Exchange.relay, in a task
    for name in (b"three", b"four"):  # (on the full path while the task serves them)
        await conn.send(head % (name, c.port))
        assert (await conn.reply()).body == name
    forward_switch.state["sent"] = 0
    await conn.send(head % (b"slow", c.port))
    for _ in range(100):  # (until it is sent by callback: the origin holds it 0.3 s)
        if forward_switch.state["sent"]:
            break
        await asyncio.sleep(0.01)
    assert forward_switch.state["sent"] == 1
    assert used[-1] is not used[0]  # the handed-off one is the task's, not renewed
    stop = asyncio.ensure_future(c.server.runner.server.shutdown(5))
    reply = await conn.reply()
    assert reply.status == 200 and reply.body == b"slow"
    await stop
    conn.close()
