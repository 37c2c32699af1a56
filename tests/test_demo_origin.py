"""The bundled demo origin: each route's caching headers, its conditionals, and its counters."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from cacheproxy.demo.origin import (
    ASSETS,
    RESOURCES,
    best_language,
    etag_matches,
    http_date,
    make_demo_app,
    start_demo_origin,
)

Client = TestClient[Any, Any]
ClientFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
async def client(aiohttp_client: ClientFactory) -> Client:
    return await aiohttp_client(make_demo_app())


def assert_not_modified(resp: aiohttp.ClientResponse, etag: str | None) -> None:
    # RFC 9110 §15.4.5: a 304 carries Date, and ETag/Cache-Control when a 200 would.
    assert resp.status == 304
    assert "Date" in resp.headers
    assert resp.headers.get("ETag") == etag


# --- Freshness headers -------------------------------------------------------------------


async def test_max_age(client: Client) -> None:
    resp = await client.get("/max-age")
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "public, max-age=60"
    assert "Generated at" in await resp.text()


async def test_expires_is_thirty_seconds_after_date(client: Client) -> None:
    resp = await client.get("/expires")
    assert "Cache-Control" not in resp.headers
    date = parsedate_to_datetime(resp.headers["Date"])
    expires = parsedate_to_datetime(resp.headers["Expires"])
    assert expires - date == timedelta(seconds=30)
    assert resp.headers["Expires"].endswith(" GMT")  # IMF-fixdate, RFC 9110 §5.6.7


@pytest.mark.parametrize(
    ("path", "cache_control"),
    [
        ("/private", "private, max-age=60"),
        ("/no-store", "no-store"),
        ("/stale", "max-age=5, stale-while-revalidate=30, stale-if-error=300"),
        ("/targeted", "public, max-age=10"),
        ("/echo", "no-store"),
    ],
)
async def test_cache_control(client: Client, path: str, cache_control: str) -> None:
    resp = await client.get(path)
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == cache_control


async def test_private_mentions_the_user_cookie(client: Client) -> None:
    resp = await client.get("/private", headers={"Cookie": "user=alice"})
    assert "alice" in await resp.text()
    resp = await client.get("/private")
    assert "anonymous" in await resp.text()


async def test_set_cookie(client: Client) -> None:
    resp = await client.get("/set-cookie")
    assert resp.headers["Cache-Control"] == "max-age=60"
    assert resp.headers.getall("Set-Cookie") == ["demo=1; Path=/"]


@pytest.mark.parametrize(
    ("accept_language", "greeting", "lang"),
    [
        (None, "Hello", "en"),
        ("fr", "Bonjour", "fr"),
        ("de-DE,de;q=0.9", "Hallo", "de"),
        ("de;q=0.5, fr;q=0.9", "Bonjour", "fr"),
        ("fr;q=0, *", "Hello", "en"),
        ("ja, es", "Hello", "en"),
        ("fr;q=banana, de", "Hallo", "de"),
    ],
)
async def test_vary_accept_language(
    client: Client, accept_language: str | None, greeting: str, lang: str
) -> None:
    headers = {"Accept-Language": accept_language} if accept_language else {}
    resp = await client.get("/vary", headers=headers)
    assert resp.headers["Vary"] == "Accept-Language"
    assert resp.headers["Cache-Control"] == "max-age=60"
    assert resp.headers["Content-Language"] == lang
    assert (await resp.text()).startswith(greeting)


# --- RFC 9110 §13.1.2 If-None-Match --------------------------------------------------------


async def test_no_cache_etag_200(client: Client) -> None:
    resp = await client.get("/no-cache-etag")
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-cache"
    etag = resp.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"')  # strong


@pytest.mark.parametrize(
    "if_none_match", ['"demo-v1"', "*", 'W/"demo-v1"', '"other", "demo-v1"', '"a",W/"demo-v1"']
)
async def test_if_none_match_hits_give_304(client: Client, if_none_match: str) -> None:
    resp = await client.get("/no-cache-etag", headers={"If-None-Match": if_none_match})
    assert_not_modified(resp, '"demo-v1"')
    assert resp.headers["Cache-Control"] == "no-cache"
    assert await resp.read() == b""


@pytest.mark.parametrize("if_none_match", ['"other"', '"demo-v2", W/"x"', "garbage", ""])
async def test_if_none_match_misses_give_200(client: Client, if_none_match: str) -> None:
    resp = await client.get("/no-cache-etag", headers={"If-None-Match": if_none_match})
    assert resp.status == 200
    assert await resp.text()


def test_etag_matches_is_weak_comparison() -> None:
    # RFC 9110 §8.8.3.2: weak comparison ignores W/ on either side.
    assert etag_matches('W/"x"', '"x"')
    assert etag_matches('"x"', 'W/"x"')
    assert not etag_matches('"xy"', '"x"')
    assert etag_matches(" * ", '"anything"')


# --- RFC 9110 §13.1.3 If-Modified-Since ----------------------------------------------------


async def test_last_modified_only(client: Client) -> None:
    resp = await client.get("/last-modified")
    assert resp.status == 200
    assert "Cache-Control" not in resp.headers
    assert "Expires" not in resp.headers
    assert "ETag" not in resp.headers
    age = parsedate_to_datetime(resp.headers["Date"]) - parsedate_to_datetime(
        resp.headers["Last-Modified"]
    )
    # An hour before app start: old enough for heuristic freshness (RFC 9111 §4.2.2).
    assert timedelta(minutes=59) < age < timedelta(minutes=70)


async def test_if_modified_since(client: Client) -> None:
    last_modified = (await client.get("/last-modified")).headers["Last-Modified"]
    when = parsedate_to_datetime(last_modified)

    resp = await client.get("/last-modified", headers={"If-Modified-Since": last_modified})
    assert_not_modified(resp, None)
    assert resp.headers["Last-Modified"] == last_modified

    later = http_date(when + timedelta(minutes=5))
    resp = await client.get("/last-modified", headers={"If-Modified-Since": later})
    assert resp.status == 304

    older = http_date(when - timedelta(seconds=1))
    resp = await client.get("/last-modified", headers={"If-Modified-Since": older})
    assert resp.status == 200

    # Not a valid HTTP-date: the field is ignored (§13.1.3).
    resp = await client.get("/last-modified", headers={"If-Modified-Since": "yesterday-ish"})
    assert resp.status == 200


async def test_if_none_match_overrides_if_modified_since(client: Client) -> None:
    last_modified = (await client.get("/last-modified")).headers["Last-Modified"]
    headers = {"If-Modified-Since": last_modified, "If-None-Match": '"nope"'}
    resp = await client.get("/last-modified", headers=headers)
    assert resp.status == 200  # §13.1.3: If-Modified-Since ignored beside If-None-Match


# --- Counters ----------------------------------------------------------------------------


async def test_origin_count_per_path(client: Client) -> None:
    for expected in ("1", "2", "3"):
        resp = await client.get("/max-age")
        assert resp.headers["X-Origin-Count"] == expected
    resp = await client.get("/no-store")
    assert resp.headers["X-Origin-Count"] == "1"
    # 304s are served by the origin too.
    resp = await client.get("/no-cache-etag", headers={"If-None-Match": "*"})
    assert resp.headers["X-Origin-Count"] == "1"


async def test_counters_are_per_app(aiohttp_client: ClientFactory) -> None:
    first = await aiohttp_client(make_demo_app())
    second = await aiohttp_client(make_demo_app())
    await first.get("/max-age")
    resp = await second.get("/max-age")
    assert resp.headers["X-Origin-Count"] == "1"


async def test_unknown_path_is_404_and_uncounted(client: Client) -> None:
    resp = await client.get("/nope")
    assert resp.status == 404
    assert "X-Origin-Count" not in resp.headers


# --- /slow and /big ----------------------------------------------------------------------


async def test_slow(client: Client) -> None:
    started = time.monotonic()
    resp = await client.get("/slow?ms=50")
    assert resp.status == 200
    assert time.monotonic() - started >= 0.045  # a lower bound only; sleeps never end early
    assert resp.headers["Cache-Control"] == "max-age=10"
    assert "50 ms" in await resp.text()


async def test_slow_bad_input(client: Client) -> None:
    assert (await client.get("/slow?ms=soon")).status == 400
    resp = await client.get("/slow?ms=-5")  # clamped to 0
    assert resp.status == 200
    assert "0 ms" in await resp.text()


async def test_big_exact_size(client: Client) -> None:
    resp = await client.get("/big?size=200000")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == "200000"
    assert resp.headers["Cache-Control"] == "max-age=60"
    assert "Transfer-Encoding" not in resp.headers
    body = await resp.read()
    assert len(body) == 200000
    assert body == (b"cacheproxy-demo\n" * 12500)  # the pattern continues across chunks


async def test_big_default_and_head(client: Client) -> None:
    resp = await client.get("/big")
    assert len(await resp.read()) == 1 << 20
    resp = await client.head("/big?size=12345")
    assert resp.headers["Content-Length"] == "12345"
    assert await resp.read() == b""


async def test_big_bad_size(client: Client) -> None:
    assert (await client.get("/big?size=lots")).status == 400
    resp = await client.get("/big?size=0")
    assert resp.status == 200
    assert await resp.read() == b""


# --- Assets ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ASSETS))
async def test_assets_are_immutable(client: Client, name: str) -> None:
    resp = await client.get(f"/assets/{name}")
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert resp.content_type == ASSETS[name][0]
    etag = resp.headers["ETag"]
    resp = await client.get(f"/assets/{name}", headers={"If-None-Match": etag})
    assert_not_modified(resp, etag)


# --- /echo -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH"])
async def test_echo(client: Client, method: str) -> None:
    body = b"x" * 1234 if method != "GET" else b""
    headers = {"X-First": "1", "X-Second": "2"}
    resp = await client.request(method, "/echo?a=1&b=2", data=body, headers=headers)
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    report = json.loads(await resp.text())
    assert report["method"] == method
    assert report["path_qs"] == "/echo?a=1&b=2"
    assert report["body_length"] == len(body)
    names = [name for name, _ in report["headers"]]
    assert ["X-First", "1"] in report["headers"]
    assert names.index("X-First") < names.index("X-Second")


async def test_echo_with_a_body_cut_short_logs_no_error(
        caplog: pytest.LogCaptureFixture) -> None:
    """A body that stops before its Content-Length (the proxy abandons an upload when its
    client leaves or stalls) is no error of the demo origin's: it used to log ERROR and a
    traceback on the proxy's stderr (serve runs the demo in the same process)."""
    runner, port = await start_demo_origin("127.0.0.1", 0)
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()
        await asyncio.sleep(0.2)
    finally:
        await runner.cleanup()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


# --- The index ---------------------------------------------------------------------------


async def test_index_lists_every_resource(client: Client) -> None:
    resp = await client.get("/")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert resp.headers["Cache-Control"] == "no-cache"
    page = await resp.text()
    for resource in RESOURCES:
        assert f'href="{resource.href}"' in page
    for embedded in ('href="/assets/style.css"', 'src="/assets/app.js"', 'src="/assets/logo.svg"'):
        assert embedded in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


async def test_index_etag_follows_the_counters(client: Client) -> None:
    etag = (await client.get("/")).headers["ETag"]
    resp = await client.get("/", headers={"If-None-Match": etag})
    assert_not_modified(resp, etag)

    await client.get("/max-age")
    resp = await client.get("/", headers={"If-None-Match": etag})
    assert resp.status == 200
    assert resp.headers["ETag"] != etag
    assert '<td class="n">1</td>' in await resp.text()


def test_best_language_falls_back_to_first() -> None:
    assert best_language("", ("en", "fr")) == "en"
    assert best_language("fr-CA;q=0.8, en;q=0.7", ("en", "fr")) == "fr"


# --- A real socket -----------------------------------------------------------------------


async def test_start_demo_origin_binds_a_real_port() -> None:
    runner, port = await start_demo_origin("127.0.0.1", 0)
    try:
        assert port > 0
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/max-age") as resp,
        ):
            assert resp.status == 200
            assert resp.headers["X-Origin-Count"] == "1"
    finally:
        await runner.cleanup()
