"""cache.fill_buffer_bytes (issue 10): the bodies being filled share one memory budget per
process. A fill that would pass it streams through unstored (detail=fill-budget), whole,
and the budget is given back whatever way a fill ends."""

from __future__ import annotations

import asyncio

from aiohttp import web
from support import cache_status, read_json_log

MiB = 1024 * 1024


def big_app() -> web.Application:
    async def sized(request: web.Request) -> web.StreamResponse:
        size = int(request.query["size"])
        headers = {"Cache-Control": "max-age=60"}
        if "chunked" not in request.query:
            headers["Content-Length"] = str(size)
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(request)
        for start in range(0, size, 65536):
            await resp.write(b"x" * min(65536, size - start))
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/big", sized)
    return app


async def test_a_fill_announced_beyond_the_budget_streams_through_unstored(origin, proxy):
    c = await proxy(await origin(big_app()), cache={"fill_buffer_bytes": MiB})
    for _ in range(2):
        resp = await c.get("/big", params={"size": str(2 * MiB)})
        assert len(await resp.read()) == 2 * MiB
        status = cache_status(resp)
        assert "fwd=uri-miss" in status and "detail=fill-budget" in status
        assert "stored" not in status
    assert c.app_proxy.exchange.budget.held == 0


async def test_a_chunked_fill_that_outgrows_the_budget_is_let_go(origin, proxy, tmp_path):
    """No length announced: the fill starts, is given up when it passes the budget, and the
    log says so (the header, sent first, could not)."""
    c = await proxy(await origin(big_app()), cache={"fill_buffer_bytes": MiB},
                    log={"path": str(tmp_path / "log")})
    resp = await c.get("/big", params={"size": str(2 * MiB), "chunked": "1"})
    assert len(await resp.read()) == 2 * MiB
    assert c.app_proxy.store.stats().entries == 0
    assert c.app_proxy.exchange.budget.held == 0
    again = await c.get("/big", params={"size": str(2 * MiB), "chunked": "1"})
    assert "fwd=uri-miss" in cache_status(again)
    await again.read()
    lines = await read_json_log(c)
    assert lines and all("detail=fill-budget" in line["cache_status"] for line in lines)
    assert not any("stored" in line["cache_status"] for line in lines)


async def test_concurrent_fills_share_the_budget(origin, proxy):
    """Four 2 MiB misses at once with 3 MiB for all fills: every client gets its whole
    body, what fits is stored, and nothing stays held."""
    c = await proxy(await origin(big_app()), cache={"fill_buffer_bytes": 3 * MiB})

    async def one(n: int) -> tuple[int, str]:
        resp = await c.get("/big", params={"size": str(2 * MiB), "n": str(n)})
        return len(await resp.read()), cache_status(resp)

    results = await asyncio.gather(*(one(n) for n in range(4)))
    assert all(size == 2 * MiB for size, _ in results)
    assert 1 <= c.app_proxy.store.stats().entries < 4
    assert c.app_proxy.exchange.budget.held == 0
