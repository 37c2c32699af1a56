"""store/redis.py when Redis dies or hangs: the request path goes on (a miss, "not
stored"), purges say they failed, the log says so once per interval, and caching
resumes by itself when Redis is back."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from redis_server import RedisServer
from test_store_redis import make_entry, redis_cache

from cacheproxy.store import RedisStore, StoreUnavailable

TIMEOUT, RETRY = 0.2, 0.3


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    s = RedisStore(redis_cache(redis_server, redis_timeout=TIMEOUT, redis_retry_interval=RETRY))
    await s.start()
    yield s
    await s.close()


def outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "cacheproxy.store" and not r.getMessage().startswith("redis has no")]


async def wait_until_available(store: RedisStore, within: float) -> float:
    """Seconds until the store is up again, with no request traffic."""
    start = time.monotonic()
    async with asyncio.timeout(within):
        while not store.available:
            await asyncio.sleep(0.02)
    return time.monotonic() - start


async def test_killed_redis_is_a_fast_miss_and_purges_raise(
        store: RedisStore, redis_server: RedisServer) -> None:
    await store.put(make_entry())
    redis_server.stop()
    start = time.monotonic()
    assert await store.get("http://o/a") == ()
    assert await store.put(make_entry()) is False
    assert time.monotonic() - start < TIMEOUT
    assert not store.available
    for purge in (store.delete("http://o/a"), store.delete_prefix("http://o/"), store.clear(),
                  store.keys()):
        with pytest.raises(StoreUnavailable):
            await purge
    assert not await store.ping()


async def test_a_hung_redis_costs_one_timeout_then_nothing(
        store: RedisStore, redis_server: RedisServer) -> None:
    await store.put(make_entry())
    redis_server.pause()
    try:
        start = time.monotonic()
        assert await store.get("http://o/a") == ()
        assert TIMEOUT <= time.monotonic() - start < TIMEOUT + 0.3
        # Down: the next ones do not wait at all. At most one reaches Redis, the retry
        # interval's probe (RETRY after the failure, which a slow machine may reach by
        # now); the others are answered "unavailable" at once. Counted, not timed.
        admitted: list[bool] = []
        admit = store._health.admit
        store._health.admit = lambda: admitted.append(admit()) or admitted[-1]  # type: ignore[method-assign]
        assert await asyncio.gather(*(store.get("http://o/a") for _ in range(50))) == [()] * 50
        store._health.admit = admit  # type: ignore[method-assign]
        assert len(admitted) >= 50 and admitted.count(True) <= 1, admitted
    finally:
        redis_server.resume()
    await wait_until_available(store, RETRY + TIMEOUT + 0.5)
    assert len(await store.get("http://o/a")) == 1  # it was only slow: the entry is there


async def test_one_log_line_per_interval_and_recovery_by_itself(
        store: RedisStore, redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "cacheproxy.store")
    redis_server.stop()
    for _ in range(100):
        await store.get("http://o/a")
    [line] = outage_lines(caplog)
    assert line.startswith(f"redis store unavailable (ConnectionError: Error 111 connecting "
                           f"to 127.0.0.1:{redis_server.port}")
    assert line.endswith("): requests go to the origin uncached until it returns")
    await asyncio.sleep(RETRY + 0.05)
    for _ in range(100):
        await store.put(make_entry())
    lines = outage_lines(caplog)
    assert len(lines) == 2
    assert lines[1].startswith("redis store still unavailable (ConnectionError: ")
    assert lines[1].endswith(", 99 operations skipped")  # the gets after the first one

    redis_server.start()
    took = await wait_until_available(store, RETRY + 1.0)  # the stats task probes
    assert took <= RETRY + 0.3
    assert outage_lines(caplog)[-1].startswith("redis store is back after ")
    assert await store.put(make_entry())
    assert len(await store.get("http://o/a")) == 1


async def test_traffic_finds_redis_back_within_an_interval(
        store: RedisStore, redis_server: RedisServer) -> None:
    redis_server.stop()
    assert await store.get("http://o/a") == ()
    redis_server.start()
    deadline = time.monotonic() + RETRY + 0.5
    while not await store.put(make_entry()):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert len(await store.get("http://o/a")) == 1


async def test_down_at_boot_then_up(redis_server: RedisServer,
                                    caplog: pytest.LogCaptureFixture) -> None:
    redis_server.stop()
    store = RedisStore(redis_cache(redis_server, redis_timeout=TIMEOUT,
                                   redis_retry_interval=RETRY))
    await store.start()  # does not fail
    try:
        assert not store.available
        assert len(outage_lines(caplog)) == 1
        redis_server.start()
        await wait_until_available(store, RETRY + 1.0)
        assert await store.put(make_entry())
    finally:
        await store.close()


async def test_a_refused_command_is_not_an_outage(
        store: RedisStore, redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    from redis.asyncio import Redis
    raw = Redis.from_url(redis_server.url)
    await raw.config_set("maxmemory", 1)  # noeviction (the default): every write is refused
    try:
        assert await store.put(make_entry()) is False
        assert await store.put(make_entry()) is False
        assert store.available
        refused = [m for m in outage_lines(caplog) if "refused" in m]
        assert len(refused) == 1 and "maxmemory" in refused[0]
    finally:
        await raw.config_set("maxmemory", 0)
        await raw.aclose()
    assert await store.put(make_entry())


@pytest.mark.parametrize("password", [None, "wrong"])
async def test_a_wrong_or_missing_redis_password_says_where_to_look(
        redis_server: RedisServer, caplog: pytest.LogCaptureFixture,
        password: str | None) -> None:
    """A Redis with requirepass and a URL without its password (or with another) is an
    outage like any (served uncached, readyz down), but the line says what to check:
    redis-py's words for it (NOAUTH, HELLO "must be called with the client already
    authenticated", "invalid username-password pair") name no setting."""
    import redis

    admin = redis.Redis(host="127.0.0.1", port=redis_server.port)
    admin.config_set("requirepass", "s3cret")
    admin.close()
    caplog.set_level(logging.INFO, "cacheproxy.store")
    url = redis_server.url if password is None else \
        redis_server.url.replace("redis://", f"redis://:{password}@")
    store = RedisStore(replace(redis_cache(redis_server, redis_timeout=TIMEOUT,
                                           redis_retry_interval=RETRY), redis_url=url))
    try:
        await store.start()
        await store.get("http://o/a")
        lines = outage_lines(caplog)
        assert lines and lines[0].startswith("redis store unavailable (")
        assert "; check the password in cache.redis_url" in lines[0], lines
        assert "wrong" not in " ".join(lines)  # (the password itself is never written)
    finally:
        await store.close()
