"""Make docs/forward-dashboard.png: the dashboard after a browser used cacheproxy as its proxy.

    .venv/bin/python docs/screenshot_forward.py [--out docs/forward-dashboard.png]

What it runs, all on 127.0.0.1 (nothing leaves the machine):
- `cacheproxy serve` as a user starts it, with `[forward] enabled = true` and
  `allow_hosts = ["localhost"]`, in front of its demo origin (reverse mode, beside it);
- an http site and an https site (aiohttp; the https one with a certificate from a CA of
  its own, made here) named `localhost` on ports of their own;
- Debian's headless Chromium with `--proxy-server` pointed at the proxy: it browses the
  http site in a few fresh profiles (misses, then hits; a reload revalidates), the https
  site (CONNECT tunnels: interception is off), and a host outside allow_hosts (403);
  Chromium's own background requests are refused by allow_hosts and show as DENIED;
- a few requests for the demo origin's /max-age straight to the proxy (reverse mode);
then a second Chromium (no proxy) opens the dashboard at 1280x800 and takes the picture.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from aiohttp import web
from playwright.async_api import Browser, async_playwright

from cacheproxy.tls.ca import LocalCA, spki_sha256

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]

SHOP = """<!doctype html><html><head><title>shop</title>
<link rel="stylesheet" href="/assets/app.css"><script src="/assets/app.js"></script></head>
<body><h1>shop</h1><img src="/assets/logo.svg" alt="logo"><img src="/assets/photo.svg" alt="">
</body></html>"""
SVG = (b'<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20">'
       b'<rect width="40" height="20" fill="#3fb950"/></svg>')
# path: (body, content type, Cache-Control); an ETag on each, a 304 for a matching one
SITE = {
    "/shop": (SHOP.encode(), "text/html", "no-cache"),
    "/assets/app.css": (b"h1 { color: #58a6ff; }", "text/css", "public, max-age=3600"),
    "/assets/app.js": (b"fetch('/api/cart');", "text/javascript", "public, max-age=3600"),
    "/assets/logo.svg": (SVG, "image/svg+xml", "public, max-age=86400"),
    "/assets/photo.svg": (SVG * 40, "image/svg+xml", "public, max-age=86400"),
    "/api/cart": (b'{"items": 2}', "application/json", "no-store"),
}


def site_app() -> web.Application:
    async def serve(request: web.Request) -> web.Response:
        if request.path not in SITE:
            return web.Response(status=404, headers={"Cache-Control": "no-store"})
        body, content_type, cache_control = SITE[request.path]
        fields = {"Cache-Control": cache_control, "ETag": f'"{len(body)}"'}
        if request.headers.get("If-None-Match") == fields["ETag"]:
            return web.Response(status=304, headers=fields)
        return web.Response(body=body, content_type=content_type, headers=fields)

    app = web.Application()
    app.router.add_get("/{tail:.*}", serve)
    return app


@contextlib.asynccontextmanager
async def site(tls: object = None) -> AsyncIterator[int]:
    runner = web.AppRunner(site_app(), access_log=None)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)  # type: ignore[arg-type]
    await tcp.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def cacheproxy(workdir: Path, connect_port: int) -> Iterator[int]:
    """`cacheproxy serve` with forward mode on, as a user runs it; yields its port."""
    port = free_port()
    config = workdir / "cacheproxy.toml"
    config.write_text(f"""
[proxy]
listen = "127.0.0.1:{port}"

[forward]
enabled = true
allow_hosts = ["localhost"]
connect_ports = [443, {connect_port}]
""")
    command = [sys.executable, "-m", "cacheproxy", "serve", "--config", str(config),
               "--log-file", str(workdir / "requests.log")]
    proc = subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_cacheproxy/healthz", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("cacheproxy did not start") from None
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


async def browse(browser: Browser, http_port: int, https_port: int) -> None:
    shop = f"http://localhost:{http_port}/shop"
    for visit in range(4):  # four visitors, each with an empty browser cache
        context = await browser.new_context()
        page = await context.new_page()
        await page.goto(shop)
        if visit == 0:
            await page.reload()  # F5: Cache-Control: max-age=0 for the page
        await page.goto(f"https://localhost:{https_port}/shop")  # a tunnel: bytes only
        await page.wait_for_timeout(200)  # its fetch()
        await context.close()
    page = await (await browser.new_context()).new_page()
    await page.goto("http://elsewhere.example/")  # outside allow_hosts: 403
    await page.context.close()


async def main(out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="cacheproxy-shot-") as tmp:
        workdir = Path(tmp)
        origin_ca = LocalCA.load_or_create(workdir / "origin-ca")
        async with site() as http_port, site(origin_ca.server_context("localhost")) as https_port:
            with cacheproxy(workdir, https_port) as proxy_port:
                async with async_playwright() as p:
                    browser = await p.chromium.launch(executable_path=CHROMIUM, args=[
                        *CHROMIUM_ARGS, f"--proxy-server=http://127.0.0.1:{proxy_port}",
                        "--proxy-bypass-list=<-loopback>",
                        # the https site's own CA, trusted for this run only
                        f"--ignore-certificate-errors-spki-list="
                        f"{spki_sha256(origin_ca.certificate)}"])
                    await browse(browser, http_port, https_port)
                    await browser.close()
                    for _ in range(3):  # reverse mode, beside it: the demo origin
                        with urllib.request.urlopen(
                                f"http://127.0.0.1:{proxy_port}/max-age") as response:
                            response.read()
                    await asyncio.sleep(0.5)  # the last tunnels close
                    viewer = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                    page = await viewer.new_page(viewport={"width": 1280, "height": 800})
                    await page.goto(f"http://127.0.0.1:{proxy_port}/_cacheproxy/dashboard")
                    await page.get_by_test_id("host-row").first.wait_for()
                    await page.wait_for_timeout(600)  # the bars' transitions
                    await page.screenshot(path=str(out), full_page=True, animations="disabled")
                    await viewer.close()
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "forward-dashboard.png")
    asyncio.run(main(parser.parse_args().out.resolve()))
