"""Stored responses since they were slimmed (stored.py CachedResponse: names apart,
one time for the age, validators read from the fields) and the memory store's LRU
order went into its one dict: what a second reader found, kept as tests."""

from __future__ import annotations

import asyncio
import random

import pytest
from aiohttp import web
from support import cache_status
from test_proxy_caching import Origin

from cacheproxy.http.cache_control import ResponseDirectives
from cacheproxy.http.stored import CachedResponse, Heuristics, make_stored_response

T0 = 1_704_067_200.0


async def _waiter_case(origin, proxy, cache):  # type: ignore[no-untyped-def]
    """A stored 200; then two no-cache requests collapse on the origin answers 403
    (not stored: the stored 200 stays). The waiter asked for validation: it must
    not get the stored 200 without a validation (RFC 9111 §5.2.1.4)."""
    mode = {"fail": False}

    async def handle(request: web.Request) -> web.Response:
        if mode["fail"]:
            await asyncio.sleep(0.3)
            return web.Response(status=403, text="denied now")
        return web.Response(text="v1", headers={"Cache-Control": "max-age=600"})
    o = Origin(r=handle)
    c = await proxy(await origin(o.app), cache=cache)
    assert (await (await c.get("/r")).text()) == "v1"
    mode["fail"] = True
    nc = {"Cache-Control": "no-cache"}
    leader = asyncio.ensure_future(c.get("/r", headers=nc))
    await asyncio.sleep(0.05)
    waiter = await c.get("/r", headers=nc)
    return (await leader).status, waiter.status, cache_status(waiter)


async def test_collapsed_no_cache_waiter_memory_store(origin, proxy):
    assert (await _waiter_case(origin, proxy, {}))[:2] == (403, 403)


@pytest.mark.parametrize("layer", [{"memory_layer_bytes": 0}, {"memory_layer_ttl": 0.1}],
                         ids=["redis-only", "layer-ttl-shorter-than-the-wait"])
async def test_collapsed_no_cache_waiter_redis_store(origin, proxy, redis_server, layer):
    """Redis reads a new object on every look: the waiter's second look compares the
    response by value with what its first look found, not by identity."""
    cache = {"store": "redis", "redis_url": redis_server.url, **layer}
    leader, waiter, status = await _waiter_case(origin, proxy, cache)
    assert (leader, waiter) == (403, 403), status


def _entry(pairs, excluded=frozenset(), request_time=T0, response_time=T0):  # type: ignore[no-untyped-def]
    return make_stored_response(
        key="k", vary=(), vary_values=(), status=200, pairs=pairs, body=b"x",
        request_time=request_time, response_time=response_time, shared=True,
        heuristics=Heuristics(), excluded=excluded)


def test_modified_at_without_a_valid_date_is_the_time_of_receipt():
    """§4.3.2: no Last-Modified, no valid Date: the time it was received (not born,
    which is receipt minus Age): the invalid Date is replaced by that time (RFC 9110
    §6.6.1), so an If-Modified-Since between the two is not answered 304."""
    e = _entry([("Age", "500"), ("Date", "garbage"), ("Cache-Control", "max-age=600")])
    assert e.modified_at == T0 and e.born == T0 - 500
    assert e.get("Date") == "Mon, 01 Jan 2024 00:00:00 GMT"


def test_constructor_with_whole_int_times():
    """The constructor takes int times (float-typed, but ints are floats to mypy);
    on Python 3.11 int has no is_integer()."""
    CachedResponse(key="k", vary=(), vary_values=(), status=200, headers=(), body=b"",
                   response_time=1000, initial_age=0, lifetime=60,
                   directives=ResponseDirectives())


def test_replace_takes_both_times_or_neither():
    """Only born (their difference) is held, so one of the two times alone cannot be
    replaced the way a dataclass would (the other kept): it is refused."""
    e = _entry([("Age", "100"), ("Cache-Control", "max-age=600")])  # age T0: 100
    assert e.age(T0) == 100
    with pytest.raises(TypeError):
        e.replace(initial_age=10.0)
    with pytest.raises(TypeError):
        e.replace(response_time=T0 + 5)
    assert e.replace(response_time=T0 + 5, initial_age=10.0).age(T0 + 5) == 10
    assert e.replace(body=b"y").age(T0) == 100 and e.replace(body=b"y").values is e.values


def test_a_clock_set_back_makes_the_age_smaller_by_as_much():
    """Only born is held: with the clock 60 s back, an entry received with Age 100 is
    40 s old (before the entries were slimmed, never below its initial age)."""
    e = _entry([("Age", "100"), ("Cache-Control", "max-age=120")])
    assert e.age(T0 - 60) == 40  # parent: 100 (ttl 20); now ttl 80


def test_a_validator_not_stored_is_no_validator():
    """An ETag the origin named private (not stored) or a Connection option is not
    used to revalidate: validators are read from the stored fields."""
    e = _entry([("Cache-Control", 'max-age=60, private="etag"'), ("ETag", '"a"')],
               excluded=frozenset({"etag"}))
    assert e.etag is None
    e = _entry([("Connection", "ETag"), ("ETag", '"a"')])
    assert e.etag is None


def test_lru_matches_a_model_with_one_key_walks(monkeypatch):
    import cacheproxy.store.memory as memory
    from cacheproxy.store import MemoryStore
    monkeypatch.setattr(memory, "_FRONT", 1)
    one = make_stored_response(key="k00", vary=(), vary_values=(), status=200,
                               pairs=[("Cache-Control", "max-age=60")], body=b"x",
                               request_time=T0, response_time=T0, shared=True,
                               heuristics=Heuristics()).size
    store = MemoryStore(one * 7)
    model: dict[str, None] = {}
    rnd = random.Random(3)
    for _ in range(5000):
        k, op = f"k{rnd.randrange(30):02d}", rnd.random()
        if op < 0.5:
            e = make_stored_response(key=k, vary=(), vary_values=(), status=200,
                                     pairs=[("Cache-Control", "max-age=60")], body=b"x",
                                     request_time=T0, response_time=T0, shared=True,
                                     heuristics=Heuristics())
            store.put_now(e)
            model.pop(k, None)
            model[k] = None
            while len(model) > 7:
                del model[next(iter(model))]
        elif op < 0.9:
            if store.peek(k):
                model[k] = model.pop(k)
        else:
            asyncio.run(store.delete(k))
            model.pop(k, None)
        assert list(store._held) == list(model)


async def test_redis_keeps_the_variant_just_put_even_when_it_came_with_age(redis_server):
    """The Lua script keeps the MAX_VARIANTS put last (its ARGV[3] is the put's time),
    not the youngest by age: a variant received just now with Age (from a CDN) stays,
    as put() says."""
    import time
    from dataclasses import replace

    from cacheproxy.config import CacheConfig
    from cacheproxy.store import RedisStore
    from cacheproxy.store.memory import MAX_VARIANTS

    store = RedisStore(replace(CacheConfig(), store="redis", redis_url=redis_server.url))
    await store.start()
    try:
        now = time.time()

        def variant(i: int, age: str = "0", at: float = now - 10) -> CachedResponse:
            return make_stored_response(
                key="http://o/v", vary=("x",), vary_values=(f"v{i}",), status=200,
                pairs=[("Cache-Control", "max-age=86400"), ("Vary", "X"), ("Age", age)],
                body=b"b", request_time=at, response_time=at, shared=True,
                heuristics=Heuristics())
        for i in range(MAX_VARIANTS):
            assert await store.put(variant(i))
        assert await store.put(variant(99, age="3600", at=now))  # stored, it says
        held = [v.vary_values for v in await store.get("http://o/v")]
        assert ("v99",) in held, held
    finally:
        await store.close()
