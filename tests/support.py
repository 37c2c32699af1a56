"""Helpers for the proxy tests (a module of its own: "conftest" is ambiguous once
tests/rfc/ has one too)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
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
async def raw_origin(answer: Callable[[bytes], bytes | Sequence[bytes | None]],
                     connections: list[int] | None = None) -> AsyncIterator[int]:
    """An origin on 127.0.0.1 that sends bytes of the test's choosing (what aiohttp would
    tidy or refuse): answer(request head) gives each response on a keep-alive
    connection, or a list of pieces written 0.05 s apart (reads the proxy gets apart; a
    None piece closes the connection there). connections, if given, gets a 1 appended
    per connection accepted. Yields the port."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if connections is not None:
            connections.append(1)
        try:
            while True:
                pieces = answer(await reader.readuntil(b"\r\n\r\n"))
                for i, piece in enumerate([pieces] if isinstance(pieces, bytes) else pieces):
                    if piece is None:
                        return
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


def dns_reply(query: bytes, a: tuple[str, ...] = (), aaaa: tuple[str, ...] = ()
              ) -> tuple[str, bytes]:
    """The name a DNS query (RFC 1035 §4.1) asks about, and the reply that resolves it to
    the A records `a` (an A question) or the AAAA records `aaaa` (RFC 3596), none for any
    other type: what the test nameservers on loopback answer."""
    end = query.index(b"\x00", 12) + 5  # the question: its name, type and class
    question, labels, i = query[12:end], [], 0
    while question[i]:
        labels.append(question[i + 1:i + 1 + question[i]].decode())
        i += question[i] + 1
    qtype = struct.unpack("!H", question[-4:-2])[0]
    family, rtype, size, records = (socket.AF_INET, 1, 4, a) if qtype == 1 else \
        (socket.AF_INET6, 28, 16, aaaa) if qtype == 28 else (socket.AF_INET, 1, 4, ())
    answer = b"".join(b"\xc0\x0c" + struct.pack("!HHIH", rtype, 1, 60, size)
                      + socket.inet_pton(family, address) for address in records)
    return ".".join(labels), (query[:2] + b"\x81\x80"
                              + struct.pack("!HHHH", 1, len(records), 0, 0)
                              + question + answer)


async def raw_get(client: Any, target: str, *fields: str, method: str = "GET",
                  host: str = "example.test") -> tuple[int, dict[str, str], bytes]:
    """One request with exactly this target, Host and fields (as aiohttp's client would
    not write them), on a connection of its own: the status, the fields (lower-cased
    names), the body."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close", *fields]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *field_lines = head.decode("latin-1").split("\r\n")
    fields_out = {}
    for line in field_lines:
        name, _, value = line.partition(":")
        fields_out[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), fields_out, body


@contextlib.contextmanager
def dropping_syns(host: str = "0.0.0.0", port: int = 0, reach: str = "127.0.0.1"
                  ) -> Iterator[int]:
    """A port on host that takes no connection and refuses none: a listener whose accept
    queue is full (filled through reach), so the kernel drops each new SYN, as from a
    host that is down, a firewall that drops, or an IPv6 route that leads nowhere (an
    IPv6 host is bound IPv6-only: the IPv4 port stays free). Yields the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    held: list[socket.socket] = []
    try:
        listener.bind((host, port))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(2):  # fill the queue (backlog 0 takes one)
            filler = socket.socket(family, socket.SOCK_STREAM)
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect((reach, port))
            held.append(filler)
        time.sleep(0.1)
        yield port
    finally:
        for sock in (*held, listener):
            sock.close()


async def https_site(app: Any, tmp_path: Path) -> tuple[Any, Any]:
    """app served over https on 127.0.0.1 as `localhost`, under a CA of its own
    (tmp_path/site-ca): (the aiohttp TestServer, the LocalCA)."""
    from aiohttp.test_utils import TestServer

    from cacheproxy.tls.ca import LocalCA

    site_ca = LocalCA.load_or_create(tmp_path / "site-ca")
    site = TestServer(app, host="127.0.0.1")
    await site.start_server(ssl=site_ca.server_context("localhost"))
    return site, site_ca


async def intercepting_proxy(origin: Any, proxy: Any, tmp_path: Path, site: Any, site_ca: Any,
                             log: Path | None = None, **settings: Any) -> tuple[Any, str]:
    """The proxy in forward mode intercepting CONNECTs to the https site (https_site),
    bodies up to 32 MiB stored; `settings`: more [proxy] ones. (Its client, the proxy
    CA's certificate file.)"""
    from aiohttp import web

    ca_dir = tmp_path / "proxy-ca"
    logged = {"log": {"path": str(log)}} if log is not None else {}
    c = await proxy(await origin(web.Application()), **logged,
                    cache={"max_object_bytes": 32 * 1024 * 1024},
                    proxy={"upstream_ca_file": str(site_ca.cert_path), **settings},
                    forward={"enabled": True, "intercept_tls": True,
                             "connect_ports": [site.port], "ca_dir": str(ca_dir)})
    return c, str(ca_dir / "ca-cert.pem")


def intercepting_config(tmp_path: Path, site_port: int, site_ca_cert: str | Path,
                        proxy: str = "", log: Path | None = None) -> tuple[Path, Path]:
    """A config file for `cacheproxy serve` intercepting CONNECTs to an https site on
    localhost:site_port (whose CA is site_ca_cert), bodies up to 32 MiB stored; `proxy`:
    more [proxy] lines. (The file, the proxy CA's certificate file.)"""
    ca_dir = tmp_path / "proxy-ca"
    logged = f'[log]\npath = "{log}"\n' if log is not None else ""
    config = tmp_path / "cacheproxy.toml"
    config.write_text(
        f'[proxy]\nupstream = "http://127.0.0.1:9"\nupstream_ca_file = "{site_ca_cert}"\n'
        f"{proxy}[cache]\nmax_object_bytes = {32 * 1024 * 1024}\n{logged}"
        f'[forward]\nenabled = true\nintercept_tls = true\nconnect_ports = [{site_port}]\n'
        f'ca_dir = "{ca_dir}"\n')
    return config, ca_dir / "ca-cert.pem"


def intercepted_tls(port: int, target: int, ca_file: str | Path,
                    rcvbuf: int | None = None) -> ssl.SSLSocket:
    """A client's TLS socket inside an intercepted CONNECT (forward.intercept_tls) to
    localhost:target through the proxy on port, its certificate checked against the proxy's
    CA; rcvbuf: a small receive buffer, set before connecting, so the proxy's writes back
    up."""
    s = socket.socket()
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    s.sendall(f"CONNECT localhost:{target} HTTP/1.1\r\nHost: localhost:{target}\r\n"
              "\r\n".encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += s.recv(1)
    return ssl.create_default_context(cafile=str(ca_file)).wrap_socket(
        s, server_hostname="localhost")


def intercepted_get(port: int, target: int, ca_file: str | Path, leave_after: int | None) -> int:
    """GET /video through an intercepted CONNECT to localhost:target, reading leave_after
    bytes (None: to the end), then a reset; the bytes read."""
    t = intercepted_tls(port, target, ca_file, rcvbuf=16384)
    t.sendall(f"GET /video HTTP/1.1\r\nHost: localhost:{target}\r\n"
              "Connection: close\r\n\r\n".encode())
    got = 0
    while leave_after is None or got < leave_after:
        chunk = t.recv(65536)
        if not chunk:
            break
        got += len(chunk)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    t.close()  # a reset: the client is gone
    return got
