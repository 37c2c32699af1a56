"""Forward mode as a browser meets it: Debian's headless Chromium with its proxy setting
pointed at a running proxy (issue 12), http and https, read back from the proxy's JSON log.

How the browser is pointed at the proxy: `--proxy-server=http://127.0.0.1:PORT` plus
`--proxy-bypass-list=<-loopback>` (without it Chromium sends localhost and 127.0.0.1
DIRECT, and every origin here is on loopback).

Why the origins are named `localhost`: with a proxy, Chromium resolves no origin name
itself; it writes the name into the request line (`GET http://localhost:P/page`) or the
CONNECT (`CONNECT localhost:P`) and the proxy resolves it with the system resolver. So
`--host-resolver-rules` would change nothing here, and a name only Chromium maps (say
`site.test`) would reach the proxy unresolvable. `localhost` is a name the proxy resolves
to 127.0.0.1 where the origins listen, and the name their certificates carry; each origin
has a port of its own (the proxy's own port would be the proxy's own site). A name nobody resolves
(`elsewhere.test`) serves for the refusals: it is refused before any lookup.

Chromium sends requests of its own through the proxy (update.googleapis.com,
accounts.google.com, connectivitycheck.gstatic.com, ...): `forward.allow_hosts =
["localhost"]` refuses them, and every assertion reads only the lines of the host under
test. Its favicon request is left out too.

A browser that cannot start fails these tests: they never skip.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from browser import chromium
from playwright.async_api import Browser, Error, Page, Response
from support import read_json_log

from cacheproxy.tls.ca import LocalCA, spki_sha256

ASSETS = ("/page", "/style.css", "/logo.svg")
PAGE = ('<!doctype html><html><head><title>forward</title>'
        '<link rel="stylesheet" href="/style.css"></head>'
        '<body><p id="styled">styled</p><img id="logo" src="/logo.svg" alt="logo"></body></html>')
RESOURCES = {
    "/page": (PAGE.encode(), "text/html"),
    "/style.css": (b"#styled { color: rgb(255, 0, 0); }", "text/css"),
    "/logo.svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="3" height="2">'
                  b'<rect width="3" height="2" fill="red"/></svg>', "image/svg+xml"),
}


class Site:
    """The origin: /page with a stylesheet and an image, each storable for a minute with an
    ETag; a matching If-None-Match gets a 304, so a revalidation shows as one. It records
    the path and fields of every request that reached it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.app = web.Application()
        self.app.router.add_get("/{tail:.*}", self.serve)

    async def serve(self, request: web.Request) -> web.Response:
        if request.path not in RESOURCES:  # /favicon.ico
            return web.Response(status=404, headers={"Cache-Control": "no-store"})
        self.seen.append((request.path, dict(request.headers)))
        body, content_type = RESOURCES[request.path]
        fields = {"Cache-Control": "max-age=60", "ETag": f'"{request.path.strip("/")}-1"'}
        if request.headers.get("If-None-Match") == fields["ETag"]:
            return web.Response(status=304, headers=fields)
        return web.Response(body=body, content_type=content_type, headers=fields)

    def paths(self) -> list[str]:
        return [path for path, _ in self.seen]


@contextlib.asynccontextmanager
async def https_site(tmp_path: Path) -> AsyncIterator[tuple[Site, TestServer, LocalCA]]:
    """The same site over TLS on 127.0.0.1, its certificate (for "localhost") from a CA of
    its own, which neither Chromium nor the proxy trusts unless told to."""
    ca = LocalCA.load_or_create(tmp_path / "origin-ca")
    site = Site()
    server = TestServer(site.app, host="127.0.0.1")
    await server.start_server(ssl=ca.server_context("localhost"))
    try:
        yield site, server, ca
    finally:
        await server.close()


def via_proxy(client: TestClient, *args: str) -> contextlib.AbstractAsyncContextManager[Browser]:
    """Chromium with its proxy setting pointed at the proxy, loopback included."""
    return chromium(f"--proxy-server=http://127.0.0.1:{client.port}",
                    "--proxy-bypass-list=<-loopback>", *args)


async def new_page(browser: Browser) -> Page:
    """A page in a new context: own cookies, an empty HTTP cache. A page that cannot load
    fails in 10 s, not Playwright's 30."""
    context = await browser.new_context()
    context.set_default_timeout(10_000)
    return await context.new_page()


async def load(browser: Browser, url: str) -> tuple[Page, Response]:
    """url in a new context: it loaded, its stylesheet applied and its image decoded."""
    page = await new_page(browser)
    response = await page.goto(url)
    assert response is not None and response.status == 200, url
    await assert_assets_applied(page)
    return page, response


async def assert_assets_applied(page: Page) -> None:
    color, width = await page.evaluate("""() => [
        getComputedStyle(document.getElementById("styled")).color,
        document.getElementById("logo").naturalWidth]""")
    assert (color, width) == ("rgb(255, 0, 0)", 3)


async def lines_for(client: TestClient, authority: str) -> list[dict[str, Any]]:
    """The proxy's JSON log lines for one host (Chromium's own requests left out)."""
    return [line for line in await read_json_log(client)
            if line["host"] == authority and line["path"] != "/favicon.ico"]


def by_path(lines: list[dict[str, Any]]) -> dict[str, str]:
    return {line["path"]: line["cache"] for line in lines if line["method"] == "GET"}


async def settled_lines(client: TestClient, authority: str, count: int) -> list[dict[str, Any]]:
    """The host's lines once there are count of them: a CONNECT's is written when its
    tunnel closes, which may be just after the browser's context did."""
    for _ in range(100):
        lines = await lines_for(client, authority)
        if len(lines) >= count:
            return lines
        await asyncio.sleep(0.05)
    return lines


FORWARD = {"enabled": True, "allow_hosts": ["localhost"]}


@pytest.fixture
async def site(origin: Any) -> tuple[Site, TestServer]:
    s = Site()
    return s, await origin(s.app)


# --- a. http: MISS, a reload revalidates, a new navigation hits ---------------------------


async def test_http_page_first_load_misses_reload_revalidates_new_navigation_hits(
        proxy: Any, site: tuple[Site, TestServer], tmp_path: Path) -> None:
    s, server = site
    client = await proxy(server, forward=FORWARD, log={"path": str(tmp_path / "log")})
    authority = f"localhost:{server.port}"
    url = f"http://{authority}/page"
    async with via_proxy(client) as browser:
        # First load: nothing stored anywhere; each resource fetched once and stored.
        page, _ = await load(browser, url)
        first = await lines_for(client, authority)
        assert by_path(first) == dict.fromkeys(ASSETS, "MISS")
        assert all(line["upstream_status"] == 200 and "stored" in line["cache_status"]
                   for line in first)
        assert s.paths() == list(ASSETS)

        # Reload (F5): Chromium asks for the page again with Cache-Control: max-age=0 and
        # its validator. The proxy revalidates its fresh copy with the origin (RFC 9111
        # §5.2.1.1; Cache-Status fwd=request: the request's directives sent it forward), the
        # origin's 304 freshens it, and the browser gets a 304 for its own copy. The
        # stylesheet and image came from Chromium's memory cache (a normal reload
        # revalidates only the main resource): whatever asked, the origin saw no asset.
        response = await page.reload()
        assert response is not None and response.status == 200
        await assert_assets_applied(page)
        reload = (await lines_for(client, authority))[len(first):]
        [revalidated] = [r for r in reload if r["path"] == "/page"]
        assert (revalidated["status"], revalidated["cache"], revalidated["upstream_status"]) \
            == (304, "REVALIDATED", 304)
        assert "fwd=request" in revalidated["cache_status"]
        assert s.paths() == [*ASSETS, "/page"]
        _, fields = s.seen[-1]
        assert fields.get("Cache-Control") == "max-age=0"  # the reload's directive
        assert fields.get("If-None-Match") == '"page-1"'
        assert all(r["path"] == "/page" or r["cache"] == "HIT" for r in reload)
        seen = len(await lines_for(client, authority))

        # The address bar, same profile: Chromium's own HTTP cache answers everything
        # (fresh for 60 s); neither the proxy nor the origin hears of it.
        response = await page.goto(url)
        assert response is not None and response.status == 200
        await assert_assets_applied(page)
        assert len(await lines_for(client, authority)) == seen

        # A new navigation in a fresh profile (another browser, another user): the proxy's
        # store answers the page and its assets; the origin is not asked.
        _, response = await load(browser, url)
        again = (await lines_for(client, authority))[seen:]
        assert by_path(again) == dict.fromkeys(ASSETS, "HIT")
        assert all(r["upstream_status"] is None for r in again)
        assert s.paths() == [*ASSETS, "/page"]
        head = await response.all_headers()  # what the browser was told
    assert head["x-cache"] == "HIT" and head["cache-status"].startswith("cacheproxy; hit")


# --- b. https through a CONNECT tunnel -----------------------------------------------------


async def test_https_page_loads_through_a_connect_tunnel_the_proxy_cannot_read(
        proxy: Any, site: tuple[Site, TestServer], tmp_path: Path) -> None:
    _, server = site
    async with https_site(tmp_path) as (secure, tls_server, origin_ca):
        authority = f"localhost:{tls_server.port}"
        client = await proxy(server, forward={**FORWARD, "connect_ports": [tls_server.port]},
                             log={"path": str(tmp_path / "log")})
        # Chromium trusts the origin's certificate (its CA's SPKI is in the served chain):
        # TLS runs end to end, through the proxy.
        spki = spki_sha256(origin_ca.certificate)
        async with via_proxy(client, f"--ignore-certificate-errors-spki-list={spki}") as browser:
            page, _ = await load(browser, f"https://{authority}/page")
            await page.context.close()  # its connections, and so the tunnels, close
            lines = await settled_lines(client, authority, 1)
        # The origin answered everything itself, over TLS; the proxy saw only bytes.
        assert sorted(secure.paths()) == sorted(ASSETS)
        assert lines and all((r["method"], r["status"], r["cache"]) == ("CONNECT", 200, "TUNNEL")
                             for r in lines), lines
        assert sum(r["bytes"] for r in lines) > sum(len(b) for b, _ in RESOURCES.values())
        assert all(r["bytes_in"] > 0 and r["policy"] is None for r in lines)
        entries = await (await client.get("/_cacheproxy/entries")).json()
        assert not [e for e in entries["entries"] if authority in e["key"]]  # nothing stored


# --- c. https intercepted: the proxy's CA trusted, cached like http ------------------------


async def test_intercepted_https_page_is_cached_and_hits_on_a_new_navigation(
        proxy: Any, site: tuple[Site, TestServer], tmp_path: Path) -> None:
    _, server = site
    async with https_site(tmp_path) as (secure, tls_server, origin_ca):
        authority = f"localhost:{tls_server.port}"
        ca_dir = tmp_path / "proxy-ca"
        # What `cacheproxy ca` prints: the CA's SPKI hash. Chromium takes a hash of a
        # certificate in the chain the server sends (a chain without the CA fails here);
        # the proxy sends its leaf and the CA after it (the shared leaf key's hash would
        # do as well). The origin's CA is trusted by the proxy only
        # (proxy.upstream_ca_file), never by Chromium: the page can load only if the proxy
        # ended TLS itself.
        spki = spki_sha256(LocalCA.load_or_create(ca_dir).certificate)
        client = await proxy(server, proxy={"upstream_ca_file": str(origin_ca.cert_path)},
                             forward={**FORWARD, "connect_ports": [tls_server.port],
                                      "intercept_tls": True, "ca_dir": str(ca_dir)},
                             log={"path": str(tmp_path / "log")})
        async with via_proxy(client, f"--ignore-certificate-errors-spki-list={spki}") as browser:
            first, _ = await load(browser, f"https://{authority}/page")
            await first.context.close()
            seen = len(await lines_for(client, authority))
            await load(browser, f"https://{authority}/page")  # a new profile: an empty cache
        lines = await lines_for(client, authority)
        connects = [r for r in lines if r["method"] == "CONNECT"]
        assert connects and all((r["cache"], r["policy"]) == ("TUNNEL", "intercepted")
                                for r in connects), [
            (r["status"], r["cache"], r["policy"], r.get("cache_status")) for r in connects]
        assert by_path(lines[:seen]) == dict.fromkeys(ASSETS, "MISS")
        assert by_path(lines[seen:]) == dict.fromkeys(ASSETS, "HIT")
        assert secure.paths() == list(ASSETS)  # once each, over verified TLS
        entries = await (await client.get("/_cacheproxy/entries")).json()
        keys = {e["key"] for e in entries["entries"]}
        assert {f"https://{authority}{path}#forward" for path in ASSETS} <= keys


async def test_without_trusting_the_proxy_ca_an_intercepted_page_does_not_load(
        proxy: Any, site: tuple[Site, TestServer], tmp_path: Path) -> None:
    """The control for the test above: the certificate Chromium meets is the proxy's."""
    _, server = site
    async with https_site(tmp_path) as (secure, tls_server, origin_ca):
        client = await proxy(server, proxy={"upstream_ca_file": str(origin_ca.cert_path)},
                             forward={**FORWARD, "connect_ports": [tls_server.port],
                                      "intercept_tls": True, "ca_dir": str(tmp_path / "ca")})
        spki = spki_sha256(origin_ca.certificate)  # the origin's: no use when intercepted
        async with via_proxy(client, f"--ignore-certificate-errors-spki-list={spki}") as browser:
            page = await new_page(browser)
            with pytest.raises(Error, match="ERR_CERT_AUTHORITY_INVALID"):
                await page.goto(f"https://localhost:{tls_server.port}/page")
        assert secure.seen == []


# --- d. refusals ---------------------------------------------------------------------------


async def test_hosts_outside_allow_hosts_and_ports_outside_connect_ports_are_refused(
        proxy: Any, site: tuple[Site, TestServer], tmp_path: Path) -> None:
    s, server = site
    client = await proxy(server, forward=FORWARD,  # connect_ports: [443]
                         log={"path": str(tmp_path / "log")})
    async with via_proxy(client) as browser:
        page = await new_page(browser)
        for url in ("http://elsewhere.test/page", f"http://127.0.0.1:{server.port}/page"):
            response = await page.goto(url)  # Chromium shows the proxy's answer
            assert response is not None and response.status == 403, url
            assert "forward.allow_hosts" in await page.inner_text("body")
        # CONNECT to the origin's port: not in connect_ports, refused before any connection.
        with pytest.raises(Error, match="ERR_TUNNEL_CONNECTION_FAILED"):
            await page.goto(f"https://localhost:{server.port}/page")
    assert s.seen == []  # nothing reached the origin
    for authority in ("elsewhere.test", f"127.0.0.1:{server.port}"):
        [line] = await lines_for(client, authority)
        assert (line["status"], line["cache"]) == (403, "DENIED")
        assert "forward.allow_hosts" in line["policy"]
    connects = await lines_for(client, f"localhost:{server.port}")  # Chromium may retry
    assert connects and all(
        (r["method"], r["status"], r["cache"]) == ("CONNECT", 403, "DENIED")
        and "forward.connect_ports" in r["policy"] for r in connects), connects
