"""Helpers for the proxy tests (a module of its own: "conftest" is ambiguous once
tests/rfc/ has one too)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

from cacheproxy.config import Config


def proxy_config(upstream: str, **sections: dict[str, Any]) -> Config:
    """The default config pointed at upstream, with settings changed per section:
    proxy_config(url, cache={"shared": False}, admin={"token": "t"})."""
    config = Config()
    changes = {name: dataclasses.replace(getattr(config, name), **values)
               for name, values in sections.items()}
    changes["proxy"] = dataclasses.replace(changes.get("proxy", config.proxy), upstream=upstream)
    return dataclasses.replace(config, **changes)


def cache_status(resp: Any) -> str:
    """The proxy's own Cache-Status member (the last one)."""
    return resp.headers.getall("Cache-Status")[-1]


@contextlib.asynccontextmanager
async def raw_origin(answer: Callable[[bytes], bytes]) -> AsyncIterator[int]:
    """An origin on 127.0.0.1 that sends bytes of the test's choosing (what aiohttp would
    tidy or refuse): answer(request head) gives each response on a keep-alive
    connection. Yields the port."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                writer.write(answer(await reader.readuntil(b"\r\n\r\n")))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
