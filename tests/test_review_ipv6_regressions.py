"""Defects found reviewing cacheproxy over IPv6: listeners on [::1] and [::], origins on
::1, v6 literals in Host, in absolute-form targets and in CONNECT, names with AAAA records.

Each test failed on the code it was written against (commit 44c1706), or is marked xfail
(strict) with the reason it stays; its docstring says what was wrong, why it matters and
how much. Real servers on the loopback addresses (127.0.0.1 and ::1), as elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from processes import clean_env
from support import dns_reply, dropping_syns
from test_forward_mode import forward_get, origin_app
from test_forward_pac import find_proxy

from cacheproxy.config import load_config
from cacheproxy.proxy.destinations import _close_late
from cacheproxy.proxy.tunnel import TunnelEnd

# --- a DNS server on loopback that answers A and AAAA as told -----------------------------------


class Nameserver(asyncio.DatagramProtocol):
    """A DNS server on 127.0.0.1 (RFC 1035 over UDP): every name has the A record `a` and
    the AAAA record `aaaa` (RFC 3596), each when not None."""

    def __init__(self, a: str | None, aaaa: str | None) -> None:
        self.a, self.aaaa = a, aaaa

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        _, reply = dns_reply(data, a=(self.a,) if self.a else (),
                             aaaa=(self.aaaa,) if self.aaaa else ())
        self.transport.sendto(reply, addr)  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def nameserver(a: str | None, aaaa: str | None) -> AsyncIterator[int]:
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: Nameserver(a, aaaa), local_addr=("127.0.0.1", 0))
    try:
        yield transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


# --- forward mode: a name with A and AAAA, the AAAA unreachable ----------------------------------


async def test_a_name_whose_ipv6_address_drops_connections_is_reached_over_ipv4(proxy, origin):
    """Forward mode connected to a name's addresses one after the other, each attempt
    allowed the whole of proxy.connect_timeout (connect_first), and the AAAA address comes
    first (c-ares sorts by RFC 6724). On a network whose IPv6 leads nowhere (a route that
    drops packets, a firewall that drops SYNs: common on home and hotel networks), every
    dual-stack site answered 504 after connect_timeout, though its IPv4 address answers at
    once. RFC 8305 (Happy Eyeballs v2) §5: start the next address after 250 ms without
    waiting for the first to fail; browsers, curl, Squid (happy_eyeballs_connect_timeout)
    and Python's own create_connection(happy_eyeballs_delay) do. Severity: medium (forward
    mode unusable for dual-stack sites on such networks; reverse mode's upstream is the
    operator's choice)."""
    site = await origin(origin_app("site"))  # on 127.0.0.1
    async with nameserver("127.0.0.1", "::1") as dns:
        client = await proxy(f"http://127.0.0.1:{site.port}", proxy={"connect_timeout": 3.0},
                             forward={"enabled": True, "resolver": [f"127.0.0.1:{dns}"],
                                      "allow_hosts": ["dual.example"]})
        with dropping_syns("::1", site.port, "::1"):
            started = time.monotonic()
            status, _, body = await forward_get(client.port, f"http://dual.example:{site.port}/a")
            took = time.monotonic() - started
    assert (status, body) == (200, b"site /a"), (status, body, took)
    assert took < 1.5, took


# --- forward.deny_hosts written as an IPv4-mapped IPv6 address ---------------------------------


async def test_a_deny_hosts_entry_written_as_an_ipv4_mapped_address_refuses_it(
        proxy, origin, tmp_path):
    """forward.deny_hosts = ["::ffff:127.0.0.1"] was kept as "::ffff:7f00:1", while the
    request's host is compared as canonical_host() makes it, which reads an IPv4-mapped
    address as the IPv4 address it is ("127.0.0.1", so that "[::ffff:127.0.0.1]" cannot
    slip past a rule for 127.0.0.1). The entry could then match nothing: neither
    http://[::ffff:127.0.0.1]:PORT/ nor http://127.0.0.1:PORT/ was refused, and the
    operator's deny rule was silently void (the start said nothing). RFC 4291 §2.5.5.2:
    the mapped form is the IPv4 address; Squid's dst ACLs match a mapped address against
    its IPv4 form. Severity: low (an unusual way to write the address, but a deny rule that
    does nothing is unsafe, and allow_hosts written so refused what it names)."""
    site = await origin(origin_app("site"))
    config = tmp_path / "cacheproxy.toml"
    config.write_text(f'[proxy]\nupstream = "http://127.0.0.1:{site.port}"\n'
                      '[forward]\nenabled = true\ndeny_hosts = ["::ffff:127.0.0.1"]\n')
    client = await proxy(load_config(config, env={}))
    for url in (f"http://[::ffff:127.0.0.1]:{site.port}/a", f"http://127.0.0.1:{site.port}/b"):
        status, _, body = await forward_get(client.port, url)
        assert status == 403, (url, status, body)


# --- proxy.listen: brackets hold an IPv6 address -----------------------------------------------


@pytest.mark.parametrize("listen", ["[localhost]:0", "[127.0.0.1]:0"])
def test_a_listen_address_in_brackets_that_is_no_ipv6_address_is_a_config_error(
        tmp_path: Path, listen: str) -> None:
    """`--listen [localhost]:8080` (or "[127.0.0.1]:8080") was taken: the brackets were
    stripped and the proxy listened on localhost. RFC 3986 §3.2.2: brackets enclose an
    IPv6 (or IPvFuture) literal and nothing else; nginx stops at `listen [localhost]:8080`
    ("invalid IPv6 address"). Writing a name or an IPv4 address in brackets is a mistake
    (a half-edited "[::1]:8080"?) that the start should name, as it names "::1:8080"
    without brackets, rather than guess. Severity: low (config validation)."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", "cacheproxy", "serve", "--listen", listen,
             "--upstream", "http://127.0.0.1:9"],
            cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=8)
    except subprocess.TimeoutExpired:
        pytest.fail(f"--listen {listen} was taken: the proxy started and served")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("cacheproxy: config error: proxy.listen: "), result.stderr
    assert "IPv6" in result.stderr, result.stderr


# --- [[routes]] host: an IPv6 literal compared as an address ------------------------------------


@pytest.mark.parametrize(("written", "sent"), [("[0:0::1]", "[::1]"), ("[::1]", "[0:0:0::1]")])
async def test_a_route_for_an_ipv6_literal_matches_every_spelling_of_that_address(
        proxy, origin, tmp_path, written, sent):
    """A route's `host = "[0:0::1]"` was compared as text with the request's Host, so it
    never matched `Host: [::1]`, the spelling every browser sends (the URL Standard
    serializes IPv6 compressed, RFC 5952); the requests went to the default upstream with
    its policies, without a word at start. The other way round, a route for "[::1]" missed
    a client that writes "[0:0:0::1]". forward.allow_hosts / deny_hosts already compare
    IPv6 addresses as addresses (canonical_host). RFC 4291 §2.2: these are one address.
    Severity: low (an operator who writes a long form gets a route that never applies)."""
    default = await origin(origin_app("default"))
    routed = await origin(origin_app("routed"))
    config = tmp_path / "cacheproxy.toml"
    config.write_text(f'[proxy]\nupstream = "http://127.0.0.1:{default.port}"\n'
                      f'[[routes]]\nhost = "{written}"\n'
                      f'upstream = "http://127.0.0.1:{routed.port}"\n')
    client = await proxy(load_config(config, env={}))
    resp = await client.get("/a", headers={"Host": f"{sent}:8080"})
    assert (resp.status, await resp.text()) == (200, "routed /a")


# --- the loop check on a [::] listener: this machine's link-local addresses ---------------------


def link_local_address() -> str | None:
    """One of this machine's IPv6 link-local addresses (fe80::/10, on an interface such as
    eth0), without its zone, as a client writes it in a URL; None when it has none."""
    try:
        rows = Path("/proc/net/if_inet6").read_text().split()
    except OSError:
        return None
    for hex_address in rows[::6]:
        if hex_address.startswith("fe8"):
            return str(ipaddress.IPv6Address(bytes.fromhex(hex_address)))
    return None


@contextlib.asynccontextmanager
async def serve_v6(listen: str, port: int, env: dict[str, str]) -> AsyncIterator[None]:
    """`cacheproxy serve --listen LISTEN`, once [::1]:port takes connections."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cacheproxy", "serve", "--listen", listen,
        env=clean_env(**env), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    try:
        for _ in range(300):
            if proc.returncode is not None:
                raise AssertionError((await proc.stderr.read()).decode())  # type: ignore[union-attr]
            try:
                _, writer = await asyncio.open_connection("::1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            break
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def test_a_request_for_this_machines_link_local_address_on_a_wildcard_listener_is_a_loop(
        origin):
    """With proxy.listen = "[::]:PORT", forward mode refuses (508) a request naming any
    address of this machine on that port, its LAN ones too (README, forward mode): each
    address is asked "is it this machine's?" by binding a socket to it. An IPv6
    link-local address (fe80::/10, which every interface with IPv6 has) cannot be bound
    without its zone (EINVAL), so it was taken for another machine's, and
    `GET http://[fe80::...]:PORT/` was connected to, by the kernel to this very listener:
    the request came back in, and went on to the reverse upstream as if a client on the
    LAN had sent it (logged twice, one MISS from client fe80::...). RFC 5842 §7.2 (508);
    Squid refuses a request to its own addresses (forwarding loop). Severity: low (one
    extra hop, not a loop without end: the second hop is origin-form; the admin API still
    refuses a client that is not loopback)."""
    head, body, _, _ = await _link_local_request(origin)
    assert head.startswith(b"HTTP/1.1 508 "), head + body


async def _link_local_request(origin) -> tuple[bytes, bytes, str, int]:
    """GET http://[this machine's link-local address]:PORT/a through a proxy on [::]:PORT:
    the answer's head and body, the address and the port."""
    address = link_local_address()
    if address is None:
        pytest.skip("this machine has no IPv6 link-local address")
    site = await origin(origin_app("site"))
    port = free_port_v6()
    async with serve_v6(f"[::]:{port}", port, {
            "CACHEPROXY_PROXY_UPSTREAM": f"http://127.0.0.1:{site.port}",
            "CACHEPROXY_FORWARD_ENABLED": "true", "CACHEPROXY_FORWARD_ALLOW_HOSTS": address}):
        reader, writer = await asyncio.open_connection("::1", port)
        writer.write(f"GET http://[{address}]:{port}/a HTTP/1.1\r\nHost: [{address}]:{port}\r\n"
                     "Connection: close\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        body = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    return head, body, address, port


async def test_a_loop_through_an_ipv6_address_is_named_with_one_pair_of_brackets(origin):
    """A request refused because the address its IPv6 literal names is this machine's
    (508) said "[[fe80::...]]:PORT is this proxy itself": the pool's check is given the
    host already bracketed for its messages, and the loop message bracketed it again. The
    client and the log line (policy) read an address that is no address. RFC 3986
    §3.2.2: one pair. Severity: low (a message)."""
    head, body, address, port = await _link_local_request(origin)
    assert head.startswith(b"HTTP/1.1 508 "), head + body
    assert f" [{address}]:{port} is this proxy itself".encode() in b" " + body, body


def free_port_v6() -> int:
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::", 0))
        return s.getsockname()[1]


# --- the PAC file of a listener written in a long IPv6 form ---------------------------------------


async def test_the_pac_file_of_a_listener_written_long_sends_its_own_pages_direct(origin):
    """proxy.listen = "[0:0::1]:PORT" (the long form of ::1) made a PAC file whose list of
    the proxy's own pages held "http://[0:0::1]:PORT/", compared as text with the URL the
    browser passes, which is always compressed ("http://[::1]:PORT/...", the URL Standard's
    IPv6 serializer). The dashboard and admin API then went through the proxy to itself,
    and got 508 (its loop check knows [::1] is itself). RFC 5952 §4: the compressed form
    is the one to write. Severity: low (a long spelling; the dashboard unreachable with
    the PAC in use)."""
    site = await origin(origin_app("site"))
    port = free_port_v6()
    async with serve_v6(f"[0:0::1]:{port}", port, {
            "CACHEPROXY_PROXY_UPSTREAM": f"http://127.0.0.1:{site.port}",
            "CACHEPROXY_FORWARD_ENABLED": "true"}):
        reader, writer = await asyncio.open_connection("::1", port)
        writer.write(f"GET /_cacheproxy/proxy.pac HTTP/1.1\r\nHost: [::1]:{port}\r\n"
                     "Connection: close\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    head, _, script = answer.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200 "), head
    assert find_proxy(script, [f"http://[::1]:{port}/_cacheproxy/",
                               "http://example.com/"]) == ["DIRECT", f"PROXY [::1]:{port}"]


@contextlib.asynccontextmanager
async def dropped_loser(idle_timeout: float
                        ) -> AsyncIterator[tuple[asyncio.Transport, TunnelEnd, asyncio.Transport]]:
    """A Happy Eyeballs loser as connect_first drops it (_close_late): a TunnelEnd whose
    connection connected, for the client of another (winning) tunnel. Yields the
    loser's transport, its TunnelEnd and that client's transport."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, client_w = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    try:
        task = loop.create_task(loop.create_connection(
            lambda: TunnelEnd(client_w.transport, idle_timeout), "127.0.0.1", port))
        transport, end = await task
        _close_late(task)
        yield transport, end, client_w.transport  # type: ignore[misc]
    finally:
        client_w.close()
        server.close()


async def test_a_losing_attempt_is_closed_without_its_protocol_hearing_of_it():
    """Happy Eyeballs' losers (connect_first) are closed, but a loser's protocol must not
    act on it: a CONNECT tunnel's end (TunnelEnd) closes its client when its connection
    is lost, which would end the tunnel the winning attempt carries."""
    async with dropped_loser(60) as (transport, end, client):
        await asyncio.sleep(0.05)
        assert transport.is_closing()
        assert not client.is_closing()  # the client's connection goes on
        assert not end.closed.done()
