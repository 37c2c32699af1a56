"""A second reader's findings on fb8f70f..67787e8 (forward mode's address checks).

Each test failed on 67787e8; its docstring says what happened, what should happen and why.
Real servers on 127.0.0.1, as elsewhere."""

from __future__ import annotations

import dataclasses
import logging
import socket

import pytest
from aiohttp import web
from support import read_json_log
from test_forward_mode import forward_get, origin_app

from cacheproxy.proxy.pool import Origin


def _uncached_app(name: str) -> web.Application:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=f"{name} {request.path}",
                            headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    return app


async def test_a_name_refused_by_its_address_is_logged_denied_not_an_upstream_error(
        proxy, origin, tmp_path, caplog):
    """`GET http://localhost:<port>/` with deny_hosts = ["127.0.0.1"] is refused once the
    name is resolved (pool vet), but the refusal travelled as an UpstreamError: the log line
    said `"cache": "ERROR"` with no `policy`, and the process log a WARNING "upstream
    http://localhost:<port> failed ... answered 403", one per refused request. The same
    refusal of `CONNECT localhost:<port>` is `DENIED` with the reason in `policy`, as every
    forward refusal is (README: DENIED, "refused by a policy"; the reason in `policy`)."""
    service = await origin(origin_app("internal"))
    upstream = await origin(origin_app("upstream"))
    client = await proxy(upstream, forward={"enabled": True, "deny_hosts": ["127.0.0.1"]},
                         log={"path": str(tmp_path / "requests.log")})
    caplog.set_level(logging.INFO, logger="cacheproxy")
    status, _, body = await forward_get(client.port, f"http://localhost:{service.port}/admin")
    assert status == 403 and b"internal" not in body
    [line] = [r for r in await read_json_log(client) if r["method"] == "GET"]
    assert line["cache"] == "DENIED", line
    assert "resolves to 127.0.0.1" in (line["policy"] or ""), line
    assert not [r for r in caplog.records if "failed for GET" in r.getMessage()]


async def test_a_reload_that_denies_an_address_applies_to_pooled_connections(proxy, origin):
    """The address check runs when a connection is made; a keep-alive connection to
    localhost:<port> made before a reload that puts 127.0.0.1 in deny_hosts stayed in the
    pool and carried the next request there (200 from the now denied service, for as long
    as the connection stays idle-alive). A reload applies to the next request, as it does
    inside intercepted tunnels (10c85bb): the pooled connection is not one to reuse."""
    service = await origin(_uncached_app("internal"))
    upstream = await origin(origin_app("upstream"))
    client = await proxy(upstream, forward={"enabled": True})
    url = f"http://localhost:{service.port}"
    assert (await forward_get(client.port, f"{url}/before"))[0] == 200
    cacheproxy = client.app_proxy
    config = cacheproxy.config
    cacheproxy.reconfigure(dataclasses.replace(
        config, forward=dataclasses.replace(config.forward, deny_hosts=("127.0.0.1",))))
    status, _, body = await forward_get(client.port, f"{url}/after")
    assert status == 403 and b"internal" not in body, (status, body)


def _this_machines_address() -> str:
    """A non-loopback address of this machine (the one it would send from; a UDP socket's
    connect() sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("198.51.100.1", 9))
        except OSError:
            return ""
        address = str(s.getsockname()[0])
    return "" if address.startswith("127.") or address == "0.0.0.0" else address


async def test_an_address_of_this_machine_is_a_loop_for_a_wildcard_listener(proxy, origin):
    """With proxy.listen = 0.0.0.0:<port> (the README's LAN and docker setups), every
    address of the machine reaches the listener, but only 0.0.0.0 and loopback were taken
    for it: `GET http://<its LAN address>:<port>/`, or any name resolving to that address
    (in a container, its own host name: Docker's /etc/hosts maps it to eth0's address),
    passed the address check, to be sent to the proxy itself (a loop: no Via check stops
    it). README: "A request naming the proxy's own listener ... (its
    address, ..., or any name that resolves to one of them) is **508 Loop Detected**".
    Checked without sending anything: the vet the pool runs on the resolved address."""
    address = _this_machines_address()
    if not address:
        pytest.skip("no non-loopback IPv4 address here")
    upstream = await origin(origin_app("upstream"))
    client = await proxy(upstream, proxy={"listen": "0.0.0.0:0"},
                         forward={"enabled": True, "open": True})
    cacheproxy = client.app_proxy
    cacheproxy.forward_access(client.port)  # (as the listener's first request makes it)
    for host in ("vm.example", address):
        check = cacheproxy._vet(Origin("http", host, client.port))
        assert check is not None
        refused = check(address)
        assert refused is not None and refused.status == 508, (host, refused)
        other_port = cacheproxy._vet(Origin("http", host, client.port + 1))
        assert other_port is not None and other_port(address) is None  # another service
