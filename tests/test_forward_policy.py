"""Forward mode's gate (cacheproxy.policies.forward): hosts and ports a client may reach,
loops back to the proxy, and the proxy-only fields that never travel upstream."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from cacheproxy.config import ForwardConfig
from cacheproxy.http.fields import HOP_BY_HOP
from cacheproxy.policies.forward import (
    CONSUMED_FIELDS,
    Allowed,
    ForwardAccess,
    Refused,
    canonical_host,
    connect_decision,
    names_own_listener,
    split_authority,
    target_decision,
)


def access(listen: str = "127.0.0.1", port: int = 8080, also: tuple[str, ...] = (),
           **forward: Any) -> ForwardAccess:
    return ForwardAccess.from_config(ForwardConfig(**forward), listen, port, also)


# --- allow_hosts and deny_hosts -----------------------------------------------------------------


def test_every_host_by_default() -> None:
    assert target_decision(access(), "http", "example.com") == Allowed("example.com", 80)
    assert target_decision(access(), "HTTPS", "Example.COM.") == Allowed("example.com", 443)
    assert target_decision(access(), "http", "[2001:db8::1]:8000") == Allowed("2001:db8::1",
                                                                              8000)


def test_allow_hosts_patterns() -> None:
    gate = access(allow_hosts=("example.com", "*.example.org", "10.0.0.7"))
    assert isinstance(target_decision(gate, "http", "example.com:8081"), Allowed)
    # (forward.http_ports, Squid's Safe_ports by default: 81 is none of them)
    assert target_decision(gate, "http", "example.com:81") == Refused(
        403, "port 81 is not allowed (forward.http_ports)")
    assert isinstance(target_decision(gate, "http", "cdn.example.org"), Allowed)
    assert isinstance(target_decision(gate, "http", "a.b.example.org"), Allowed)
    assert isinstance(target_decision(gate, "http", "10.0.0.7"), Allowed)
    for host in ("example.org", "www.example.com", "evil-example.org", "10.0.0.8"):
        refused = target_decision(gate, "http", host)
        assert refused == Refused(403, f"{host} is not among the hosts this proxy reaches "
                                       "(forward.allow_hosts)")


def test_deny_wins() -> None:
    gate = access(allow_hosts=("*.example.org",), deny_hosts=("ads.example.org",))
    refused = target_decision(gate, "http", "ADS.example.org")
    assert refused == Refused(403, "ads.example.org is refused by this proxy "
                                   "(forward.deny_hosts)")
    assert isinstance(target_decision(gate, "http", "www.example.org"), Allowed)
    everything = access(deny_hosts=("*",))
    assert target_decision(everything, "http", "example.com").status == 403


def test_numeric_ipv4_forms_cannot_slip_past_a_rule() -> None:
    gate = access(deny_hosts=("10.0.0.7",))
    for form in ("10.0.0.7", "0xa.0.0.7", "012.0.0.7", "167772167", "10.7", "10.0.7",
                 "[::ffff:10.0.0.7]"):
        assert target_decision(gate, "http", form).status == 403, form


@pytest.mark.parametrize(("host", "canonical"), [
    ("Example.COM.", "example.com"), ("bücher.example", "xn--bcher-kva.example"),
    ("0x7f.1", "127.0.0.1"), ("2130706433", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"),
    ("[::1]", "::1"), ("[0:0::1]", "::1"), ("1.2.3.4.5", ""), ("256.1.1.1", ""),
    ("09.1.1.1", ""), ("a b", ""), ("", ""), ("exa mple.com", ""), ("[zz::1]", ""),
])
def test_canonical_host(host: str, canonical: str) -> None:
    assert canonical_host(host) == canonical


@pytest.mark.parametrize(("authority", "parts"), [
    ("example.com", ("example.com", None)), ("example.com:", ("example.com", None)),
    ("example.com:8080", ("example.com", 8080)), ("[::1]:443", ("[::1]", 443)),
    ("[::1]", ("[::1]", None)), ("user:pw@example.com", None), ("example.com:0", None),
    ("example.com:65536", None), ("example.com:http", None), ("[::1]x", None), ("", None),
    (":80", None), ("[::1", None),
])
def test_split_authority(authority: str, parts: tuple[str, int | None] | None) -> None:
    assert split_authority(authority) == parts


@pytest.mark.parametrize(("scheme", "authority"), [
    ("http", ""), ("http", "user:secret@example.com"), ("http", "exa mple.com"),
    ("ftp", "example.com"), ("http", "example.com:99999"),
])
def test_invalid_targets_are_400(scheme: str, authority: str) -> None:
    assert target_decision(access(), scheme, authority).status == 400


# --- CONNECT ------------------------------------------------------------------------------------


def test_connect_to_an_allowed_host_and_port() -> None:
    assert connect_decision(access(), "Example.com:443") == Allowed("example.com", 443)
    assert connect_decision(access(), "[2001:db8::1]:443") == Allowed("2001:db8::1", 443)


def test_connect_ports() -> None:
    refused = connect_decision(access(), "example.com:22")
    assert refused == Refused(403, "CONNECT to port 22 is not allowed (forward.connect_ports)")
    wider = access(connect_ports=(443, 8443))
    assert connect_decision(wider, "example.com:8443") == Allowed("example.com", 8443)
    assert connect_decision(access(connect_ports=()), "example.com:443").status == 403


def test_connect_honours_the_host_lists() -> None:
    gate = access(allow_hosts=("*.example.com",), deny_hosts=("admin.example.com",))
    assert connect_decision(gate, "www.example.com:443") == Allowed("www.example.com", 443)
    assert connect_decision(gate, "admin.example.com:443").status == 403
    assert connect_decision(gate, "example.net:443").status == 403


@pytest.mark.parametrize("authority", ["example.com", "example.com:", "/path", "a@b:443",
                                       "[::1:443", ""])
def test_connect_needs_host_and_port(authority: str) -> None:
    refused = connect_decision(access(), authority)
    assert isinstance(refused, Refused) and refused.status == 400
    assert "CONNECT takes host:port" in refused.reason


# --- loops back to the proxy --------------------------------------------------------------------


@pytest.mark.parametrize("authority", [
    "127.0.0.1:8080", "localhost:8080", "LOCALHOST.:8080", "app.localhost:8080",
    "[::1]:8080", "0.0.0.0:8080", "[::]:8080", "127.1:8080", "0x7f000001:8080",
    "[::ffff:127.0.0.1]:8080", "127.0.0.2:8080",
])
def test_a_loopback_listener_is_reached_by_every_loopback_name(authority: str) -> None:
    gate = access("127.0.0.1", 8080, connect_ports=(443, 8080))
    refused = target_decision(gate, "http", authority)
    assert isinstance(refused, Refused) and refused.status == 508
    assert "is this proxy itself" in refused.reason
    assert connect_decision(gate, authority).status == 508


def test_a_loop_is_found_before_the_port_or_host_rules() -> None:
    gate = access("127.0.0.1", 8080, allow_hosts=("example.com",))
    assert connect_decision(gate, "127.0.0.1:8080").status == 508
    assert target_decision(gate, "http", "localhost:8080").status == 508


def test_the_default_port_counts() -> None:
    gate = access("0.0.0.0", 80)
    assert target_decision(gate, "http", "localhost").status == 508
    assert isinstance(target_decision(gate, "https", "localhost"), Allowed)  # port 443


def test_other_ports_and_hosts_are_no_loop() -> None:
    gate = access("127.0.0.1", 8080)
    assert target_decision(gate, "http", "127.0.0.1:8081") == Allowed("127.0.0.1", 8081)
    assert target_decision(gate, "http", "192.0.2.1:8080") == Allowed("192.0.2.1", 8080)


def test_a_wildcard_listener_is_also_reached_by_the_names_the_caller_knows() -> None:
    gate = access("0.0.0.0", 3128, also=("proxy.lan", "192.0.2.10", "[2001:db8::10]"))
    for authority in ("proxy.lan:3128", "192.0.2.10:3128", "[2001:db8::10]:3128",
                      "localhost:3128", "0.0.0.0:3128"):
        assert target_decision(gate, "http", authority).status == 508, authority
    assert isinstance(target_decision(gate, "http", "192.0.2.11:3128"), Allowed)


def test_a_listener_on_one_address() -> None:
    gate = access("192.0.2.10", 3128)
    assert target_decision(gate, "http", "192.0.2.10:3128").status == 508
    # Not listening on loopback: 127.0.0.1:3128 is another server.
    assert isinstance(target_decision(gate, "http", "127.0.0.1:3128"), Allowed)


def test_a_peer_address_seen_after_connecting() -> None:
    # A name that resolves to this machine: the caller checks the address it connected to.
    gate = access("127.0.0.1", 8080)
    assert names_own_listener(gate, "127.0.0.1", 8080)
    assert not names_own_listener(gate, "127.0.0.1", 8081)
    assert not names_own_listener(gate, "not a host", 8080)


# --- Proxy-Authorization and Proxy-Connection are consumed --------------------------------------


def test_consumed_fields_are_hop_by_hop() -> None:
    assert {"proxy-authorization", "proxy-connection"} == CONSUMED_FIELDS
    assert CONSUMED_FIELDS <= HOP_BY_HOP


async def test_the_origin_never_sees_the_proxy_fields(origin, proxy) -> None:
    seen: list[dict[str, str]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append({k.lower(): v for k, v in request.headers.items()})
        return web.Response(text="ok", headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    client = await proxy(await origin(app))
    sent = {"Proxy-Authorization": "Basic dXNlcjpzZWNyZXQ=", "Proxy-Connection": "keep-alive"}
    for method in ("GET", "POST", "HEAD"):
        resp = await client.request(method, "/page", headers=sent)
        assert resp.status == 200
    # Named in Connection as well, and written in odd case: still consumed.
    resp = await client.get("/named", headers={
        "PROXY-AUTHORIZATION": "Bearer t", "proxy-connection": "close",
        "Connection": "keep-alive, Proxy-Authorization"})
    assert resp.status == 200
    assert len(seen) == 4
    for headers in seen:
        assert not CONSUMED_FIELDS & headers.keys(), headers
