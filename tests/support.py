"""Helpers for the proxy tests (a module of its own: "conftest" is ambiguous once
tests/rfc/ has one too)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from cacheproxy.config import Config, load_config
from cacheproxy.proxy.server import OBSERVER


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
async def raw_origin(answer: Callable[[bytes], bytes | list[bytes]]) -> AsyncIterator[int]:
    """An origin on 127.0.0.1 that sends bytes of the test's choosing (what aiohttp would
    tidy or refuse): answer(request head) gives each response on a keep-alive
    connection, or a list of pieces written 0.05 s apart (reads the proxy gets apart).
    Yields the port."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                pieces = answer(await reader.readuntil(b"\r\n\r\n"))
                for i, piece in enumerate([pieces] if isinstance(pieces, bytes) else pieces):
                    if i:
                        await asyncio.sleep(0.05)
                    writer.write(piece)
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


async def proxy_for_toml(origin: Any, proxy: Any, tmp_path: Path, toml: str,
                         **sites: Any) -> Any:
    """The proxy for a TOML config (loaded with every check a user's file gets) whose
    {name} placeholders are the URLs of the sites' apps (objects with an .app), started
    as origins."""
    urls = {name: str((await origin(site.app)).make_url("")).rstrip("/")
            for name, site in sites.items()}
    path = tmp_path / "cacheproxy.toml"
    path.write_text(toml.format(**urls))
    return await proxy(load_config(path, env={}))


async def read_json_log(client: Any) -> list[dict[str, Any]]:
    """The request log's lines so far (its file), parsed: the sink writes from a thread."""
    observer = client.server.app[OBSERVER]
    observer.flush()  # what was recorded, to the writer thread
    sink = observer.sink
    assert await asyncio.to_thread(sink.wait_written)
    return [json.loads(line) for line in Path(sink.path).read_text().splitlines()]


async def until(predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
    """Poll predicate until it holds (True) or timeout seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def echo_server(upper: bool = False) -> tuple[asyncio.AbstractServer, int]:
    """A TCP server on 127.0.0.1 that sends back what it reads (upper-cased if asked),
    for CONNECT tunnels; and its port. Close the server when done."""
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data.upper() if upper else data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]
