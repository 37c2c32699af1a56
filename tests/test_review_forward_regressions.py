"""A reviewer's findings on forward mode (absolute-form requests, CONNECT, interception).

Each test failed on the code it was written against (commit fb8f70f); its docstring says
what happened, what should happen and why. Real servers on 127.0.0.1, as elsewhere."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import ssl
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from support import read_json_log
from test_forward_mode import forward_get, head_and_body, origin_app, raw

from cacheproxy.config import Config, ForwardConfig
from cacheproxy.policies.forward import (
    ForwardAccess,
    Refused,
    address_refusal,
    connect_decision,
    target_decision,
)
from cacheproxy.proxy.server import CONTROL
from cacheproxy.tls.ca import LocalCA


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def admin_listener(proxy, origin):
    """A proxy with admin.listen on a port of its own, that listener started as
    `cacheproxy serve` starts it (proxy/server.py, _start_control)."""
    upstream = await origin(origin_app("upstream"))
    port = free_port()
    client = await proxy(upstream, admin={"listen": f"127.0.0.1:{port}"},
                         forward={"enabled": True, "allow_hosts": ["localhost", "127.0.0.1"],
                                  "connect_ports": [443, port]})
    runner = web.AppRunner(client.server.app[CONTROL])
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield client, port
    finally:
        await runner.cleanup()


async def test_the_admin_listener_is_not_reached_through_forward_mode(admin_listener):
    """admin.listen puts the admin API on an address of its own; with no token it answers
    loopback clients only. A forward request for http://localhost:<admin port>/ reached
    it from the proxy itself, a loopback client, so any client of the proxy (one on the
    LAN too, with proxy.listen = 0.0.0.0 and the README's allow_hosts = ["localhost"])
    could list the entries (every user's URLs) and POST .../clear without a token: it got
    the stats JSON and {"cleared": 0}. The admin listener is this proxy itself, as its
    own listener is: 508 Loop Detected (README "Who may go where"), as for the proxy's
    port; Squid refuses such requests by default (`http_access deny to_localhost`)."""
    client, port = admin_listener
    for host in ("localhost", "127.0.0.1"):
        status, _, body = await forward_get(client.port,
                                            f"http://{host}:{port}/_cacheproxy/stats")
        assert status == 508 and b"by_cache" not in body, (host, status, body)
    reader, writer = await raw(client.port, f"POST http://localhost:{port}/_cacheproxy/clear "
                               f"HTTP/1.1\r\nHost: localhost:{port}\r\nContent-Length: 0\r\n"
                               "Connection: close\r\n\r\n".encode())
    status, _, body = await head_and_body(reader)
    writer.close()
    assert status == 508 and b"cleared" not in body, (status, body)
    # CONNECT to it (connect_ports names the port) is refused the same way.
    reader, writer = await raw(client.port, f"CONNECT localhost:{port} HTTP/1.1\r\n"
                               f"Host: localhost:{port}\r\n\r\n".encode())
    status, _, _ = await head_and_body(reader)
    writer.close()
    assert status == 508


def test_the_admin_listener_counts_as_the_proxy_itself_in_the_gate() -> None:
    """The same, sans I/O: ForwardAccess knows the other listeners of the process."""
    access = ForwardAccess.from_config(Config().forward, "127.0.0.1", 8080,
                                       other_listeners=[("127.0.0.1", 9090)])
    decision = target_decision(access, "http", "localhost:9090")
    assert isinstance(decision, Refused) and decision.status == 508
    assert not isinstance(target_decision(access, "http", "localhost:9091"), Refused)


async def test_a_forwarded_site_gets_no_cors_grant_of_the_reverse_route(proxy, origin):
    """[cors] is written for the reverse upstream's pages (a dev app's API). Forward mode
    applied it to every site a client named: a credentialed GET of another site's page
    (a bank's account page, Cache-Control: private, a Cookie) came back with
    Access-Control-Allow-Origin: http://app.test and -Allow-Credentials: true, so a
    script on app.test could read, through the proxy, any site the user is logged in to
    (the Fetch standard's CORS check is the only thing that stops it); in "override" mode
    a site's own grant was also removed. A forward proxy (Squid, or any browser's own
    network stack) never makes CORS grants for the sites it relays. Not fixed here: the
    README ("with every caching rule and policy of reverse mode") says this is meant, so
    it needs a decision (no CORS/Referer gate for forward plans, or a [forward] section
    of their own)."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="account of the logged-in user",
                            headers={"Cache-Control": "private"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    bank = await origin(app)
    upstream = await origin(origin_app("upstream"))
    client = await proxy(upstream, forward={"enabled": True},
                         cors={"allow_origins": ["http://app.test"], "allow_credentials": True})
    status, headers, body = await forward_get(
        client.port, f"http://localhost:{bank.port}/account", "Origin: http://app.test",
        "Cookie: session=1")
    assert (status, body) == (200, b"account of the logged-in user")
    assert "access-control-allow-origin" not in headers, headers
    assert "access-control-allow-credentials" not in headers, headers


async def intercepting_proxy(proxy, origin, https_site, tmp_path: Path, **sections):
    """A proxy intercepting TLS for the https_site, its CA in tmp_path/proxy-ca; the
    client, and the CA's folder."""
    server, site_ca, _ = https_site
    upstream = await origin(origin_app("upstream"))
    ca_dir = tmp_path / "proxy-ca"
    client = await proxy(upstream, proxy={"upstream_ca_file": site_ca},
                         forward={"enabled": True, "intercept_tls": True,
                                  "connect_ports": [server.port], "ca_dir": str(ca_dir)},
                         **sections)
    return client, ca_dir, upstream


@pytest.fixture
async def https_site(origin, tmp_path: Path):
    """An https origin on 127.0.0.1 (certificate for "localhost" from a CA of its own) that
    records the X-Forwarded-Proto and Host of each request."""
    seen: list[tuple[str, str | None]] = []

    async def page(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("X-Forwarded-Proto")))
        return web.Response(text=f"secure {request.path}",
                            headers={"Cache-Control": "max-age=60"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    site_ca = LocalCA.load_or_create(tmp_path / "site-ca")
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=site_ca.server_context("localhost"))
    try:
        yield server, str(site_ca.cert_path), seen
    finally:
        await server.close()


async def _intercepted(client, ca_dir: Path, port: int
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await raw(client.port, f"CONNECT localhost:{port} HTTP/1.1\r\n"
                               f"Host: localhost:{port}\r\n\r\n".encode())
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(
        b"HTTP/1.1 200")
    await writer.start_tls(ssl.create_default_context(cafile=str(ca_dir / "ca-cert.pem")),
                           server_hostname="localhost")
    return reader, writer


async def test_x_forwarded_proto_is_the_scheme_of_the_url_stored(proxy, origin, https_site,
                                                                 tmp_path: Path):
    """`GET https://site/x` sent to the proxy in plain text (curl -x, an HTTP/1.1 client
    told to use a proxy for https without CONNECT) is fetched over TLS and stored under
    the https://site/x key, the key an intercepted CONNECT's request for the same URL
    uses; but the origin was told X-Forwarded-Proto: http (the client's leg), where the
    intercepted request tells it https. Origins build links and redirects from that
    field (Django's SECURE_PROXY_SSL_HEADER, Rails' force_ssl: a 301 to https://site/x,
    stored under https://site/x itself), so one client's plain request could store an
    answer made for http under the https URL that every intercepted client is then
    served. README "Which resource": the key is everything the origin sees that selects
    the response; so the field must say the scheme of the key: https."""
    server, _, seen = https_site
    client, ca_dir, _ = await intercepting_proxy(proxy, origin, https_site, tmp_path)
    status, _, body = await forward_get(client.port, f"https://localhost:{server.port}/plain")
    assert (status, body) == (200, b"secure /plain")
    reader, writer = await _intercepted(client, ca_dir, server.port)
    writer.write(f"GET /tunnel HTTP/1.1\r\nHost: localhost:{server.port}\r\n"
                 "Connection: close\r\n\r\n".encode())
    status, _, body = await head_and_body(reader)
    writer.close()
    assert (status, body) == (200, b"secure /tunnel")
    assert seen == [("/plain", "https"), ("/tunnel", "https")]


async def test_an_intercepted_requests_log_line_names_the_host_it_went_to(
        proxy, origin, https_site, tmp_path: Path):
    """Inside an intercepted CONNECT to localhost:<site>, a request whose Host (or
    absolute-form target) names some other authority still goes to the tunnel's origin
    and is stored under its https key (rightly); but its log line's `host` was the
    client's Host, `localhost:<other port>` or `127.0.0.1:<proxy port>`, so the log,
    the dashboard's Hosts table and `cacheproxy logs` put it under a site it never
    reached. README "What the log shows": a forward request's line names the host it
    was for."""
    server = https_site[0]
    client, ca_dir, upstream = await intercepting_proxy(
        proxy, origin, https_site, tmp_path, log={"path": str(tmp_path / "requests.log")})
    reader, writer = await _intercepted(client, ca_dir, server.port)
    writer.write(f"GET /a HTTP/1.1\r\nHost: localhost:{upstream.port}\r\n\r\n".encode())
    assert (await head_and_body(reader))[2] == b"secure /a"
    writer.write(f"GET http://127.0.0.1:{client.port}/b HTTP/1.1\r\nHost: x\r\n"
                 "Connection: close\r\n\r\n".encode())
    assert (await head_and_body(reader))[2] == b"secure /b"
    writer.close()
    lines = [r for r in await read_json_log(client) if r["method"] == "GET"]
    assert [(r["host"], r["path"]) for r in lines] == [
        (f"localhost:{server.port}", "/a"), (f"localhost:{server.port}", "/b")]


def test_absolute_form_to_a_port_squid_calls_unsafe_is_refused() -> None:
    """forward.connect_ports limits CONNECT, but an absolute-form request went to any port
    of an allowed host: `POST http://mail.example:25/` with a body of SMTP commands
    is relayed (cross-protocol: the origin reads the request's lines as its own
    protocol's), as are :22, :110, :143 ... Squid's default configuration refuses them
    (`http_access deny !Safe_ports`: 80, 21, 443, 70, 210, 280, 488, 591, 777 and
    1025-65535). Not fixed here: which ports is a config decision (a forward.http_ports,
    or Squid's list as the default)."""
    access = ForwardAccess.from_config(Config().forward, "127.0.0.1", 8080)
    for port in (25, 22, 110, 143):
        decision = target_decision(access, "http", f"mail.example:{port}")
        assert isinstance(decision, Refused) and decision.status == 403, port
    for port in (80, 443, 8081):
        assert not isinstance(target_decision(access, "http", f"site.example:{port}"),
                              Refused), port


async def test_the_unspecified_address_does_not_slip_past_deny_hosts(proxy, origin):
    """deny_hosts = ["127.0.0.1", "localhost"] is how an operator keeps clients off this
    machine's own services. `CONNECT 0.0.0.0:<port>` and `GET http://0.0.0.0:<port>/`
    went through: Linux connects a socket to 0.0.0.0 to the local host, so they reached
    a service bound to 127.0.0.1 (the "0.0.0.0 day" that Chromium and Firefox now block).
    RFC 1122 §3.2.1.3 and RFC 4291 §2.5.2: the unspecified address is never a destination;
    it is refused (unless it names this proxy itself: 508, as before)."""
    service = await origin(origin_app("internal"))
    upstream = await origin(origin_app("upstream"))
    client = await proxy(upstream, forward={"enabled": True,
                                            "deny_hosts": ["127.0.0.1", "localhost", "::1"],
                                            "connect_ports": [service.port]})
    status, _, body = await forward_get(client.port, f"http://0.0.0.0:{service.port}/admin")
    assert status in (400, 403) and b"internal" not in body, (status, body)
    reader, writer = await raw(client.port, f"CONNECT 0.0.0.0:{service.port} HTTP/1.1\r\n"
                               f"Host: 0.0.0.0:{service.port}\r\n\r\n".encode())
    status, _, _ = await head_and_body(reader)
    writer.close()
    assert status in (400, 403), status
    status, _, _ = await forward_get(client.port, f"http://0.0.0.0:{client.port}/")
    assert status == 508  # this proxy itself, still


def test_an_ipv6_zone_id_does_not_slip_past_deny_hosts() -> None:
    """`CONNECT [::1%1]:443` was Allowed with deny_hosts = ["::1"]: canonical_host kept the
    zone ("::1%1"), which no rule names, and getaddrinfo connects it to ::1. A zone ID
    (RFC 6874) only means something on the client's own machine, and RFC 9110 §4.2's
    authority (RFC 3986 §3.2.2 IP-literal) has none: 400, as an absolute-form target
    with one already gets."""
    forward = dataclasses.replace(Config().forward, deny_hosts=("::1",), connect_ports=(443,))
    access = ForwardAccess.from_config(forward, "127.0.0.1", 8080)
    for authority in ("[::1%1]:443", "[::1%lo]:443", "[::1%25lo]:443", "[fe80::1%1]:443"):
        decision = connect_decision(access, authority)
        assert isinstance(decision, Refused) and decision.status in (400, 403), authority


async def test_a_forward_requests_log_host_is_the_host_it_went_to(proxy, origin, tmp_path):
    """`GET http://LOCALHOST.:<port>/x` and `GET http://localhost:<port>/x` go to the same
    origin and share one entry (the key is canonical), but their log lines said
    `LOCALHOST.:<port>` and `localhost:<port>`: the dashboard's Hosts table and
    `cacheproxy logs` counted one site as two (and a client could fill the table with
    spellings of one host). The line names the host as it was reached, as the key does."""
    site = await origin(origin_app("site"))
    upstream = await origin(origin_app("upstream"))
    client = await proxy(upstream, forward={"enabled": True},
                         log={"path": str(tmp_path / "requests.log")})
    for host in ("LOCALHOST.", "localhost", "LocalHost"):
        status, _, _ = await forward_get(client.port, f"http://{host}:{site.port}/x")
        assert status == 200
    lines = [r for r in await read_json_log(client) if r["method"] == "GET"]
    assert [r["host"] for r in lines] == [f"localhost:{site.port}"] * 3
    assert [r["cache"] for r in lines] == ["MISS", "HIT", "HIT"]


async def test_a_name_for_a_denied_address_does_not_slip_past_deny_hosts(proxy, origin):
    """deny_hosts = ["127.0.0.1"] was matched against the name the client wrote, never
    against the address connected to: any name that resolves to 127.0.0.1 (localhost,
    this machine's host name, /etc/hosts entries, public names such as *.localtest.me, a
    rebinding domain) reached a service on 127.0.0.1, as `GET http://<name>:<port>/` and
    as `CONNECT <name>:<port>`. Squid's `dst` rules are checked on the resolved address;
    so are they now, before connecting (and the address vetted is the one connected to)."""
    service = await origin(origin_app("internal"))
    upstream = await origin(origin_app("upstream"))
    client = await proxy(upstream, forward={"enabled": True, "deny_hosts": ["127.0.0.1"],
                                            "connect_ports": [service.port]})
    status, _, body = await forward_get(client.port, f"http://localhost:{service.port}/admin")
    assert status == 403 and b"internal" not in body, (status, body)
    assert b"resolves to 127.0.0.1" in body
    reader, writer = await raw(client.port, f"CONNECT localhost:{service.port} HTTP/1.1\r\n"
                               f"Host: localhost:{service.port}\r\n\r\n".encode())
    status, _, _ = await head_and_body(reader)
    writer.close()
    assert status == 403
    # Not denied: the same name reaches it (the check is on the address, not any name).
    open_client = await proxy(upstream, forward={"enabled": True, "deny_hosts": ["10.0.0.1"]})
    status, _, body = await forward_get(open_client.port,
                                        f"http://localhost:{service.port}/admin")
    assert (status, body) == (200, b"internal /admin")


def test_an_address_of_this_proxy_is_a_loop_whatever_name_reached_it() -> None:
    """A name that resolves to an address of the proxy's own listener (on its port) is a
    loop (508), and a name for 0.0.0.0 or :: (a DNS blocklist's answer, which Linux
    connects to this machine) is refused; other addresses pass."""
    access = ForwardAccess.from_config(ForwardConfig(enabled=True), "127.0.0.1", 8080)
    loop = address_refusal(access, "vm", "127.0.0.1", 8080)
    assert loop is not None and loop.status == 508
    assert address_refusal(access, "vm", "127.0.1.1", 8080).status == 508  # (127/8)
    assert address_refusal(access, "vm", "127.0.0.1", 8081) is None  # another port
    assert address_refusal(access, "ads.example", "0.0.0.0", 80).status == 403
    assert address_refusal(access, "ads.example", "::", 80).status == 403
    assert address_refusal(access, "example.com", "93.184.216.34", 80) is None


async def test_a_descriptor_limit_below_max_client_connections_is_said_at_start(tmp_path):
    """Each client connection takes a descriptor, and a CONNECT tunnel (or a miss) one
    more to its origin. Started with `ulimit -n 256` and the default
    max_client_connections (10,000), the proxy said nothing; with 400 clients opening
    tunnels, 216 were accepted and closed at once (libuv's EMFILE handling: the client
    reads EOF) and 122 got 502 "Too many open files", and no line ever named the cause
    or the setting. nginx warns at start: "worker_connections exceed open file resource
    limit". Expected: one WARNING at start naming proxy.max_client_connections and the
    limit (or the soft limit raised towards the hard one)."""
    import resource

    from processes import accepting, clean_env, free_port, stop

    port = free_port()

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cacheproxy", "serve", "--listen", f"127.0.0.1:{port}",
        "--upstream", "http://127.0.0.1:9", cwd=tmp_path,
        env=clean_env(CACHEPROXY_FORWARD_ENABLED="true"), preexec_fn=low_limit,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        start_new_session=True)
    try:
        await accepting(port)
    finally:
        _, err = await stop(proc)
    assert "max_client_connections" in err and "256" in err, err


async def test_a_host_with_a_label_over_63_octets_is_a_400_not_a_crash(proxy, origin, caplog):
    """A DNS label has at most 63 octets (RFC 1035 §2.3.4); the gate let
    `aaaa…(64).invalid` through, and getaddrinfo's IDNA encoding then raised UnicodeError
    ("label empty or too long"), no OSError: `GET http://<it>/` got a 500 "internal proxy
    error" with a traceback in the log, and `CONNECT <it>:443` a bare close with an ERROR
    "client connection failed" and its traceback. A bad input is an answer, not a crash
    (DESIGN.md): 400, as for any other invalid host. (Nothing is looked up: the name is
    refused before any resolver is asked.)"""
    caplog.set_level(logging.INFO, logger="cacheproxy")
    upstream = await origin(origin_app("upstream"))
    client = await proxy(upstream, forward={"enabled": True, "allow_hosts": ["*.invalid"]})
    name = "a" * 64 + ".invalid"
    status, _, _ = await forward_get(client.port, f"http://{name}/")
    assert status == 400
    reader, writer = await raw(client.port, f"CONNECT {name}:443 HTTP/1.1\r\n"
                               f"Host: {name}:443\r\n\r\n".encode())
    line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    assert line.startswith(b"HTTP/1.1 400"), line
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]


async def test_the_pac_file_sends_the_admin_listeners_pages_direct(admin_listener):
    """With admin.listen, the PAC file is served there, but it sent only proxy.listen's
    pages DIRECT: the dashboard at the admin address went to the proxy whenever
    allow_hosts covers that host. Now that the proxy refuses to reach its own admin
    listener (508, above), the PAC must send those pages DIRECT, as README says of the
    proxy's own pages ("the proxy's own pages go DIRECT")."""
    from test_forward_pac import find_proxy

    _, port = admin_listener
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{port}/_cacheproxy/proxy.pac") as resp:
        assert resp.status == 200
        script = await resp.text()
    answers = find_proxy(script, [f"http://127.0.0.1:{port}/_cacheproxy/dashboard",
                                  "http://localhost:1/page"])
    assert answers[0] == "DIRECT", answers
    assert answers[1].startswith("PROXY "), answers


async def test_a_reload_that_refuses_a_host_applies_inside_open_intercepted_tunnels(
        proxy, origin, https_site, tmp_path: Path):
    """The gate ran once, at CONNECT: after a reload (SIGHUP) that put the host in
    deny_hosts, or turned forward mode off, each request inside an intercepted tunnel
    opened before it still went to the origin and was stored (a busy client keeps such a
    connection open for good). Plain absolute-form requests are checked one by one, and
    Squid applies http_access to each request of a bumped (intercepted) connection: each
    request inside is checked against the config in force, 403 once refused."""
    server, _, seen = https_site
    client, ca_dir, _ = await intercepting_proxy(proxy, origin, https_site, tmp_path)
    reader, writer = await _intercepted(client, ca_dir, server.port)
    writer.write(f"GET /before HTTP/1.1\r\nHost: localhost:{server.port}\r\n\r\n".encode())
    assert (await head_and_body(reader))[0] == 200
    cacheproxy = client.app_proxy
    config = cacheproxy.config
    cacheproxy.reconfigure(dataclasses.replace(
        config, forward=dataclasses.replace(config.forward, deny_hosts=("localhost",))))
    writer.write(f"GET /after HTTP/1.1\r\nHost: localhost:{server.port}\r\n"
                 "Connection: close\r\n\r\n".encode())
    status, _, _ = await head_and_body(reader)
    writer.close()
    assert status == 403
    assert [path for path, _ in seen] == ["/before"]


async def test_a_tunnels_log_host_is_the_host_it_went_to(proxy, origin, tmp_path):
    """As for absolute-form requests: `CONNECT LOCALHOST.:<port>` and `CONNECT
    localhost:<port>` open tunnels to the same place, but their lines said
    `LOCALHOST.:<port>` and `localhost:<port>`, two rows of the Hosts table. The line's
    host is the authority as connected to (`path` keeps what the client wrote)."""
    service = await origin(origin_app("tls-ish"))
    upstream = await origin(origin_app("upstream"))
    client = await proxy(upstream, forward={"enabled": True, "connect_ports": [service.port]},
                         log={"path": str(tmp_path / "requests.log")})
    for host in ("LOCALHOST.", "localhost"):
        reader, writer = await raw(client.port, f"CONNECT {host}:{service.port} HTTP/1.1\r\n"
                                   f"Host: {host}:{service.port}\r\n\r\n".encode())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        writer.close()
    lines: list[dict[str, object]] = []
    for _ in range(100):
        lines = [r for r in await read_json_log(client) if r["method"] == "CONNECT"]
        if len(lines) == 2:
            break
        await asyncio.sleep(0.02)
    assert sorted(str(r["host"]) for r in lines) == [f"localhost:{service.port}"] * 2
    assert sorted(str(r["path"]) for r in lines) == [f"LOCALHOST.:{service.port}",
                                                    f"localhost:{service.port}"]


def test_an_international_deny_rule_names_the_host_browsers_ask_for() -> None:
    """deny_hosts = ["straße.de"] was kept as "strasse.de" (Python's "idna" codec is IDNA
    2003, which maps ß to ss), but browsers (UTS #46 non-transitional, as the WHATWG URL
    standard says) ask for xn--strae-oqa.de, another domain: the rule refused a host
    nobody asked for and let the one it names through. The same for ς, and the zero-width
    joiners. Patterns are made as browsers make hosts (IDNA 2008 with UTS #46)."""
    from cacheproxy.config.values import parse_host_patterns

    assert parse_host_patterns(["straße.de", "*.faß.de"]) == ("xn--strae-oqa.de",
                                                              "*.xn--fa-hia.de")
    forward = dataclasses.replace(Config().forward,
                                  deny_hosts=parse_host_patterns(["straße.de"]))
    access = ForwardAccess.from_config(forward, "127.0.0.1", 8080)
    decision = target_decision(access, "http", "xn--strae-oqa.de")
    assert isinstance(decision, Refused) and decision.status == 403


async def test_a_forwarded_site_s_cdn_directives_are_not_this_caches(proxy, origin):
    """cache.targeted_fields (CDN-Cache-Control, Surrogate-Control) let the origin behind
    a reverse proxy speak to it as its CDN or surrogate. Forward mode applied them to
    every site a client named, and announced itself to each as a surrogate
    (Surrogate-Capability): a site answering `Cache-Control: private, no-store` with
    `CDN-Cache-Control: max-age=600` (its CDN keys, and purges, what it caches) had
    Alice's page stored and served to Bob, a HIT, for ten minutes. A forward proxy is
    none of the sites' CDNs: RFC 9213 §2 targets CDN-Cache-Control at "caches that are
    part of a CDN" serving that origin, and Edge Architecture §1 Surrogate-Control at
    gateways operated for it. Forward plans follow Cache-Control alone."""
    seen: list[str | None] = []

    async def page(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Surrogate-Capability"))
        return web.Response(text=f"page of {request.headers.get('Cookie')}",
                            headers={"Cache-Control": "private, no-store",
                                     "CDN-Cache-Control": "max-age=600",
                                     "Surrogate-Control": "max-age=600"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    site = await origin(app)
    upstream = await origin(origin_app("upstream"))
    client = await proxy(upstream, forward={"enabled": True})
    url = f"http://localhost:{site.port}/me"
    _, _, alice = await forward_get(client.port, url, "Cookie: user=alice")
    _, headers, bob = await forward_get(client.port, url, "Cookie: user=bob")
    assert (alice, bob) == (b"page of user=alice", b"page of user=bob"), headers
    assert seen == [None, None]


async def test_an_absolute_form_request_for_a_name_of_this_proxy_is_a_loop(proxy, origin):
    """`GET http://<name>:<proxy port>/x` for a name that resolves to the proxy was sent to
    the proxy itself, arrived there in origin-form, was answered by the *reverse* upstream,
    and that answer was stored as http://<name>:<port>/x#forward. Now the name's address
    is checked before connecting: 508, as for CONNECT. (The machine's host name is such a
    name where it resolves to a loopback address, as Debian's /etc/hosts makes it.)"""
    name = socket.gethostname()
    try:
        address = socket.gethostbyname(name)
    except OSError:
        address = ""
    if not address.startswith("127."):
        pytest.skip(f"the host name {name!r} does not resolve to a loopback address here "
                    "(test_an_address_of_this_proxy_is_a_loop_whatever_name_reached_it "
                    "covers the rule)")
    upstream = await origin(origin_app("upstream"))
    client = await proxy(upstream, forward={"enabled": True})
    status, _, body = await forward_get(client.port, f"http://{name}:{client.port}/x")
    assert status == 508 and b"upstream" not in body, (status, body)
