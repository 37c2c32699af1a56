"""Starting and stopping the proxy: the aiohttp application and its runner."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time

from aiohttp import web, web_urldispatcher

from cacheproxy.config import Config, parse_listen
from cacheproxy.demo.origin import start_demo_origin
from cacheproxy.observe.admin import Admin
from cacheproxy.observe.observer import Observer
from cacheproxy.proxy.handler import CacheProxy
from cacheproxy.proxy.server_protocol import ProxyAppRunner
from cacheproxy.store import MemoryStore, Store

log = logging.getLogger("cacheproxy")
PROXY = web.AppKey("proxy", CacheProxy)
OBSERVER = web.AppKey("observer", Observer)


class AnyTarget(web_urldispatcher.DynamicResource):
    """Matches every request target, "*" (asterisk-form) included, which path
    patterns cannot (they must start with "/")."""

    def _match(self, path: str) -> dict[str, str]:
        return {}


def make_store(config: Config) -> Store:
    return MemoryStore(config.cache.max_bytes)


def make_app(
    config: Config, upstream: str | None = None, store: Store | None = None
) -> web.Application:
    """The proxy as an aiohttp application: one catch-all route, any method.
    upstream defaults to proxy.upstream (serve passes the demo origin's URL)."""
    store = store if store is not None else make_store(config)
    proxy = CacheProxy(config, upstream or config.proxy.upstream, store)
    admin_paths = (config.admin.prefix, *filter(None, [config.admin.metrics_path]))
    observer = Observer(config.log, time.time(), admin_paths)
    admin = Admin(config.admin, store, observer)
    proxy.purge = admin.purge_method
    app = web.Application()
    app[PROXY], app[OBSERVER] = proxy, observer
    app.cleanup_ctx.append(proxy.context)
    app.on_cleanup.append(lambda _: _close(observer))
    admin.routes(app)  # exact paths: the router tries them before the catch-all
    target = AnyTarget("/{tail:.*}")
    app.router.register_resource(target)
    target.add_route("*", proxy.handle)
    return app


async def _close(observer: Observer) -> None:
    observer.close()


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(config: Config) -> None:
    """Run until cancelled. With no upstream, the bundled demo origin is started first."""
    upstream = config.proxy.upstream
    demo = None
    if not upstream:
        demo_host, demo_port = parse_listen(config.demo.listen)
        demo, demo_port = await start_demo_origin(demo_host, demo_port)
        upstream = _url(demo_host, demo_port)
        log.info("demo origin on %s (set proxy.upstream to proxy your own)", upstream)
    # ProxyAppRunner: aiohttp's runner, but any method token is accepted (RFC 9110 §9.1).
    app = make_app(config, upstream)
    runner = ProxyAppRunner(app, **app[OBSERVER].runner_args())
    await runner.setup()
    try:
        host, port = parse_listen(config.proxy.listen)
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        log.info("cacheproxy listening on %s -> %s", _url(host, bound), upstream)
        # SIGHUP: reopen the request log file (after logrotate moved it).
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGHUP, runner.app[OBSERVER].reopen)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        if demo is not None:
            await demo.cleanup()


def run(config: Config) -> None:
    """Blocking entry point for `cacheproxy serve`; SIGTERM and SIGINT stop it."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stderr)

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await serve(config)

    try:
        import uvloop  # the faster loop when installed (pyproject: not on Windows)
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
