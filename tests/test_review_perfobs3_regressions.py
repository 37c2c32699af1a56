"""Review perfobs3: a miss's observation (its Outcome, Observer.record, the JSON line and
the counts) in fewer Python calls and objects, with the same values. These tests pin
that each cheaper form is the same as the one it stands in for."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from support import read_json_log, until

from cacheproxy.http.flow import Forward
from cacheproxy.observe.outcome import Outcome, forwarded_outcome, note_lookup, routed_outcome
from cacheproxy.proxy.server import OBSERVER


@pytest.mark.parametrize("reason,stored", [
    ("uri-miss", False), ("stale", True), ("bypass", False), ("method", True),
    ("request", False),
])
def test_forwarded_outcome_is_routed_outcome_noted(reason: str, stored: bool) -> None:
    """forwarded_outcome (a quick miss's Outcome in one call, not routed_outcome then
    note_lookup) must equal the two, every field: a field added to Outcome and forgotten
    there would be unset (an AttributeError in the request log, a lost line), and a
    status other than note_lookup's would show a wrong cache column (MISS / EXPIRED /
    BYPASS, nginx's $upstream_cache_status) and Cache-Status fwd. Severity: low (a
    guard)."""
    fwd = Forward(reason, "GET", stored=object() if stored else None)  # type: ignore[arg-type]
    made = forwarded_outcome(3.5, "example.com", "/a?b=1", "api", frozenset({"t"}), fwd)
    expected = routed_outcome(3.5, "example.com", "/a?b=1", "api", frozenset({"t"}))
    note_lookup(expected, fwd)
    for field in dataclasses.fields(Outcome):
        assert getattr(made, field.name) == getattr(expected, field.name), field.name
    assert made == expected


async def test_a_pass_through_recorded_with_a_send_gathered_is_settled_in_that_iteration(
        origin: Any, proxy: Any, tmp_path: Path) -> None:
    """A request recorded while the listener's answers wait to be sent schedules no settle
    of its own (Observer.sender): the listener's send_gathered settles the request log's
    batch after its sends. Were it not to, the pass-through's line and counts would wait
    for some later request's callback: an idle proxy's log would lag (a `tail -f` shows
    nothing; the log pipeline gets the line late or at shutdown). Nothing else runs here
    after the answers: the batch must empty by itself. Severity: medium (a guard)."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="x" * 100, headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_get("/pass", page)
    client = await proxy(await origin(app), log={"path": str(tmp_path / "requests.log")})
    observer = client.server.app[OBSERVER]
    for _ in range(3):  # (kept alive: the quick path's miss after the first)
        async with client.get("/pass") as resp:
            assert resp.status == 200
            assert await resp.read() == b"x" * 100
        assert await until(lambda: not observer._pending)
    lines = [line for line in await read_json_log(client) if line["path"] == "/pass"]
    assert [line["cache"] for line in lines] == ["MISS"] * 3, lines
