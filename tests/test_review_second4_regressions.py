"""A second reader's findings on the latest merges (review "second4"): big answers' deferred
log lines (client_conn.LOG_WHEN_OUT_BYTES) and forward mode's own DNS client
(destinations.Lookups). Real servers on 127.0.0.1, as elsewhere; each test failed on the
code it was written against (9b5aa53)."""

from __future__ import annotations

import asyncio
import os

from support import (
    https_site,
    intercepted_get,
    intercepting_proxy,
    proxy_config,
    read_json_log,
    until,
)
from test_forward_mode import forward_get, origin_app
from test_review_forward2_regressions import loopback_answer
from test_review_observe_regressions import video_app

from cacheproxy.proxy.server import reconfigure


async def test_a_big_intercepted_hit_the_client_left_logs_the_bytes_it_was_sent(
        origin, proxy, tmp_path):
    """The deferred line of a big answer (client_conn.LOG_WHEN_OUT_BYTES, 877e8db) looked
    only at the transport's own buffer; inside an intercepted CONNECT that is the TLS
    transport's, and TLS encrypts what it is given at once and hands it to the TCP
    transport underneath, so the TLS buffer was empty, the line was written at once, and a
    24 MiB hit the client left after 100 KB was logged (and counted in bytes from the
    cache and the byte hit ratio) as all of it, as before the fix, for every https
    download a forward proxy with intercept_tls serves, most of the web. nginx's
    $body_bytes_sent is what went out, over TLS as over TCP. Now the TCP buffer under the
    TLS should count too, and a hit read to its end still log every byte. Severity: medium (as
    observe's finding: bytes served overstated by every aborted large https hit)."""
    size = 24 * 1024 * 1024
    site, site_ca = await https_site(video_app(size), tmp_path)
    c, ca_file = await intercepting_proxy(origin, proxy, tmp_path, site, site_ca,
                                          log=tmp_path / "requests.log")
    port, target = c.server.port, site.port

    def fetch(leave_after: int | None) -> int:
        return intercepted_get(port, target, ca_file, leave_after)
    try:
        assert await asyncio.to_thread(fetch, None) > size  # the miss stores it
        assert await asyncio.to_thread(fetch, 100_000) < 200_000
        assert await asyncio.to_thread(fetch, None) > size  # a hit read whole
        await asyncio.sleep(0.5)
        lines = [line for line in await read_json_log(c) if line["path"] == "/video"]
    finally:
        await site.close()
    assert [line["cache"] for line in lines] == ["MISS", "HIT", "HIT"], lines
    assert lines[1]["bytes"] < size // 2, lines[1]
    assert lines[2]["bytes"] == size, lines[2]


class SlowRecursor(asyncio.DatagramProtocol):
    """A recursive DNS server on 127.0.0.1 (RFC 1035 over UDP), as a LAN's or an ISP's:
    names it has cached (any name not starting with "cold") are answered at once; a name
    starting with "cold" it must first resolve from the authoritative servers, so its
    answer comes after DELAY seconds (each question answered, retransmissions too).
    Every name resolves to 127.0.0.1 (A), with no AAAA."""

    DELAY = 1.5

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        name, reply = loopback_answer(data)
        send = self.transport.sendto  # type: ignore[attr-defined]
        if name.startswith("cold"):
            asyncio.get_running_loop().call_later(self.DELAY, send, reply, addr)
        else:
            send(reply, addr)


async def test_a_name_a_recursive_resolver_answers_in_a_second_and_a_half_is_not_a_502(
        proxy, origin):
    """Forward mode's lookups are c-ares's (9b5aa53), whose timeout per try is not the one
    it is given once the server has answered a few questions: it is five times the
    server's average latency, 250 ms at least (c-ares 1.34, ares_metrics.c), doubled per
    retry; with `tries=2` a name was given up after about 0.75 s. Against a recursive
    resolver that answers the names it has cached in a millisecond, any name it must
    resolve first (a site not visited lately, its authoritative servers far away: half a
    second to a few seconds is common) was a 502 "DNS failure (Timeout while contacting
    DNS servers)" long before proxy.connect_timeout (5 s), where getaddrinfo (glibc's
    resolver: 5 s a try) waited for it, and so do Squid (dns_timeout 30 s) and nginx
    (resolver_timeout 30 s). README: a name whose DNS does not answer is a 504 within
    proxy.connect_timeout. Here, after five names answered at once, a name answered in
    1.5 s. Severity: high (in forward mode the first request for many a site fails)."""
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        SlowRecursor, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        site = await origin(origin_app("site"))
        client = await proxy(site, proxy={"connect_timeout": 5},
                             forward={"enabled": True, "resolver": [f"127.0.0.1:{port}"],
                                      "allow_hosts": ["*.example"]})
        for i in range(5):  # names the resolver has cached: its latency, a millisecond
            status, _, _ = await forward_get(client.port, f"http://warm{i}.example:{site.port}/")
            assert status == 200
        status, _, body = await forward_get(client.port, f"http://cold.example:{site.port}/a")
    finally:
        transport.close()
    assert (status, body) == (200, b"site /a")


async def test_reloads_that_change_the_lookups_leave_no_resolver_behind(proxy, origin):
    """Each reload (SIGHUP) whose proxy.connect_timeout or forward.resolver differs made
    Lookups retire its c-ares resolver and make another at the next lookup; the retired
    ones were closed only when the application stopped. Each is a pycares channel with
    its own event thread, an inotify instance (resolv.conf watched) and its sockets: a
    deployment that reloads a changed config often (a config manager's SIGHUP, a
    connect_timeout tuned) gains a thread per such reload for the life of the process,
    and past fs.inotify.max_user_instances (128 for the user by default) no resolver can
    watch resolv.conf. A resolver a reload replaced is done with once the lookups it
    began are (within connect_timeout). Severity: low (reloads are rare)."""
    # Two recursors to switch between: proxy.connect_timeout, which the lookups also
    # take, is restart-only (a reload keeps the running value), so forward.resolver is
    # what a reload changes here.
    loop = asyncio.get_running_loop()
    transports = [(await loop.create_datagram_endpoint(
        SlowRecursor, local_addr=("127.0.0.1", 0)))[0] for _ in range(2)]
    ports = [t.get_extra_info("sockname")[1] for t in transports]

    def forward(i: int) -> dict[str, object]:
        return {"enabled": True, "resolver": [f"127.0.0.1:{ports[i % 2]}"],
                "allow_hosts": ["*.example"]}

    def threads() -> int:
        return len(os.listdir("/proc/self/task"))
    try:
        site = await origin(origin_app("site"))
        url = str(site.make_url("")).rstrip("/")
        client = await proxy(site, proxy={"connect_timeout": 10}, forward=forward(0))
        assert (await forward_get(client.port, f"http://w.example:{site.port}/"))[0] == 200
        before = threads()
        for i in range(12):
            reconfigure(client.server.app, proxy_config(
                url, proxy={"connect_timeout": 10}, forward=forward(i + 1)))
            status, _, _ = await forward_get(client.port, f"http://w{i}.example:{site.port}/")
            assert status == 200
        # (a retired resolver's thread ends soon after its close: later on a loaded machine)
        await until(lambda: threads() - before <= 2, timeout=5)
        after = threads()
        # A lookup under way when its resolver is replaced still ends on it, answered.
        cold = asyncio.create_task(forward_get(client.port, f"http://cold.example:{site.port}/"))
        await asyncio.sleep(0.3)
        reconfigure(client.server.app, proxy_config(
            url, proxy={"connect_timeout": 10}, forward=forward(1)))
        assert (await forward_get(client.port, f"http://w.example:{site.port}/"))[0] == 200
        assert (await cold)[0] == 200
    finally:
        for transport in transports:
            transport.close()
    assert after - before <= 2, (before, after)
