"""What the public HTTP caching test suite (http-cache-tests 0.4.5) checks, through the
running proxy: a real origin on 127.0.0.1, the proxy in front, a real client. Grouped by
RFC section; a test named after a suite test carries its id after the double underscore.
The whole suite itself runs in tests/test_cache_tests_suite.py."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
from aiohttp import web
from multidict import CIMultiDict

Pairs = list[tuple[str, str]]


def counting(pairs: Callable[[int], Pairs], body: str = "body") -> tuple[web.Application,
                                                                         Counter[str]]:
    """An origin at /r whose n-th answer (from 1) has the fields pairs(n)."""
    calls: Counter[str] = Counter()

    async def handle(request: web.Request) -> web.Response:
        calls[request.method] += 1
        n = sum(calls.values())
        return web.Response(text=f"{body} {n}", headers=CIMultiDict(pairs(n)))

    app = web.Application()
    app.router.add_route("*", "/r", handle)
    return app, calls


# -- RFC 9111 §5.1 Age, §4.2.1 invalid freshness information --------------------------------

@pytest.mark.parametrize("ages", [
    ["abc"], ["-7200"], ["7200.0"], ["7200,0"], ["0,7200"], ["7200", "0"], ["0", "7200"],
    ["0, 0"], ["0", "0"], ["3600, 3600"], ["7200;foo=bar"], ["7200;foo=111"],
], ids=lambda ages: " / ".join(ages))
async def test_s5_1_an_invalid_age_makes_the_response_stale__age_parse(origin, proxy, ages):
    app, calls = counting(lambda n: [("Cache-Control", "max-age=3600"),
                                     *(("Age", age) for age in ages)])
    c = await proxy(await origin(app))
    assert (await c.get("/r")).status == 200
    again = await c.get("/r")
    assert again.headers["X-Cache"] == "MISS" and await again.text() == "body 2"
    assert calls["GET"] == 2


async def test_s5_1_a_valid_age_is_counted__freshness_max_age_age(origin, proxy):
    app, calls = counting(lambda n: [("Cache-Control", "max-age=3600"), ("Age", "100")])
    c = await proxy(await origin(app))
    await c.get("/r")
    hit = await c.get("/r")
    assert hit.headers["X-Cache"] == "HIT" and 100 <= int(hit.headers["Age"]) <= 102
    assert calls["GET"] == 1
