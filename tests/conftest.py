"""Shared fixtures: real aiohttp origins and the proxy in front, on 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import settings
from processes import kill_leftovers
from redis_server import RedisServer
from support import proxy_config

from cacheproxy.config import Config
from cacheproxy.proxy.client_conn import ClientConnection
from cacheproxy.proxy.listener import LeanRunner
from cacheproxy.proxy.server import OBSERVER, PROXY, make_app
from cacheproxy.proxy.server_protocol import ProxyAppRunner

ProxyFactory = Callable[..., Awaitable[TestClient]]

# CI replays the same property-test examples each run (a new counterexample should be
# found by a developer, not fail a submission at random); local runs keep exploring.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")



@pytest.fixture(autouse=True)
def _no_leftover_processes() -> Any:
    """A `cacheproxy serve` a failed test did not stop is killed, with its workers."""
    yield
    kill_leftovers()


class ProxyTestServer(TestServer):
    """A TestServer on the runner `cacheproxy serve` uses."""

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        if OBSERVER in self.app:  # a proxy: on the lean data plane, as `cacheproxy serve` runs
            kwargs.update(self.app[OBSERVER].runner_args())
            return LeanRunner(self.app, **kwargs)
        return ProxyAppRunner(self.app, **kwargs)


@pytest.fixture
def origin(aiohttp_client: Any) -> Callable[[web.Application], Awaitable[TestServer]]:
    """Start an aiohttp app as an origin on 127.0.0.1 (any method token accepted)."""
    async def start(app: web.Application) -> TestServer:
        server = ProxyTestServer(app, host="127.0.0.1")
        await aiohttp_client(server)  # starts it, and closes it at teardown
        return server
    return start


@pytest.fixture
def proxy(aiohttp_server: Any, aiohttp_client: Any) -> ProxyFactory:
    """proxy(upstream, proxy={...}, cache={...}) -> a client of a running proxy; or
    proxy(config) for a whole Config (routes need load_config's checks).

    upstream is a TestServer or a URL. The proxy listens on a real socket; the
    CacheProxy is at client.app_proxy for tests that inspect the store.
    """
    async def start(upstream: TestServer | str | Config, **sections: dict[str, Any]
                    ) -> TestClient:
        if isinstance(upstream, Config):  # a whole config, e.g. load_config() of a TOML file
            app = make_app(upstream)
        else:
            url = str(upstream.make_url("")).rstrip("/") if isinstance(upstream, TestServer) \
                else upstream
            app = make_app(proxy_config(url, **sections))
        # aiohttp_client starts the server and closes it at teardown.
        client = await aiohttp_client(ProxyTestServer(app, host="127.0.0.1"),
                                      auto_decompress=False)
        client.app_proxy = app[PROXY]  # type: ignore[attr-defined]
        return client
    return start


# --- Redis: a real redis-server per test (tests/redis_server.py) ---------------------------

@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A running redis-server on a free port; fails (never skips) when it is not installed."""
    try:
        server = RedisServer()
    except FileNotFoundError as exc:
        pytest.fail(str(exc))
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- quick forwards (proxy/quick_forward.py) ---------------------------------------------

@pytest.fixture
def forward_switch(monkeypatch: pytest.MonkeyPatch) -> Any:
    """switch(False) sends misses the task's way; sent counts the quick forwards."""
    real = ClientConnection._forward
    state = {"on": True, "sent": 0}

    def counted(self: ClientConnection, msg: Any, planned: Any, started: float) -> bool:
        if not state["on"]:
            return False
        sent = real(self, msg, planned, started)
        state["sent"] += sent
        return sent

    monkeypatch.setattr(ClientConnection, "_forward", counted)

    def switch(on: bool) -> None:
        state["on"] = on

    switch.state = state  # type: ignore[attr-defined]
    return switch
