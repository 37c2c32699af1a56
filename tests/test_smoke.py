"""A first end-to-end look: a miss is stored and the next request is a hit."""

from aiohttp import web
from support import cache_status


async def test_miss_then_hit(origin, proxy):
    calls = 0

    async def page(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.Response(text="hello", headers={"Cache-Control": "max-age=60"})

    app = web.Application()
    app.router.add_get("/page", page)
    client = await proxy(await origin(app))
    first = await client.get("/page")
    assert first.status == 200 and await first.text() == "hello"
    assert first.headers["X-Cache"] == "MISS"
    assert "fwd=uri-miss" in cache_status(first) and "stored" in cache_status(first)
    second = await client.get("/page")
    assert await second.text() == "hello"
    assert second.headers["X-Cache"] == "HIT"
    assert cache_status(second).startswith("cacheproxy; hit")
    assert second.headers["Age"] == "0"
    assert calls == 1
