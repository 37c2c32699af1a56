"""Shared fixtures: real aiohttp origins and the proxy in front, on 127.0.0.1."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from cacheproxy.config import CacheConfig, Config, ProxyConfig
from cacheproxy.proxy.server import PROXY, make_app


def proxy_config(upstream: str, *, proxy: dict[str, Any] | None = None,
                 cache: dict[str, Any] | None = None) -> Config:
    """The default config pointed at upstream, with some settings changed."""
    return Config(
        proxy=dataclasses.replace(ProxyConfig(), upstream=upstream, **(proxy or {})),
        cache=dataclasses.replace(CacheConfig(), **(cache or {})),
    )


def cache_status(resp: Any) -> str:
    """The proxy's own Cache-Status member (the last one)."""
    return resp.headers.getall("Cache-Status")[-1]


ProxyFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def origin(aiohttp_server: Any) -> Callable[[web.Application], Awaitable[TestServer]]:
    """Start an aiohttp app as an origin on 127.0.0.1; returns its TestServer."""
    async def start(app: web.Application) -> TestServer:
        return await aiohttp_server(app, host="127.0.0.1")
    return start


@pytest.fixture
def proxy(aiohttp_server: Any, aiohttp_client: Any) -> ProxyFactory:
    """proxy(upstream, proxy={...}, cache={...}) -> a client of a running proxy.

    upstream is a TestServer or a URL. The proxy listens on a real socket; the
    CacheProxy is at client.app_proxy for tests that inspect the store.
    """
    async def start(upstream: TestServer | str, **sections: dict[str, Any]) -> TestClient:
        url = str(upstream.make_url("")).rstrip("/") if isinstance(upstream, TestServer) \
            else upstream
        app = make_app(proxy_config(url, **sections))
        server = await aiohttp_server(app, host="127.0.0.1")
        client = await aiohttp_client(server, auto_decompress=False)
        client.app_proxy = app[PROXY]  # type: ignore[attr-defined]
        return client
    return start
