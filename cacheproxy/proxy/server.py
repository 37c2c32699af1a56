"""Starting and stopping the proxy: the aiohttp application and its runner."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import resource
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web, web_urldispatcher

from cacheproxy import pidfile
from cacheproxy.config import Config, ConfigError, masked_url, parse_listen
from cacheproxy.config.private_exposure import private_cache_exposure
from cacheproxy.config.sections import check_forward
from cacheproxy.demo.origin import start_demo_origin
from cacheproxy.lifetime import (
    DEMO_HINT,
    LISTEN_HINT,
    StartError,
    listen_error,
    run_until_stopped,
)
from cacheproxy.observe import gc_pauses
from cacheproxy.observe.admin import Admin
from cacheproxy.observe.diagnostics import StderrHandler
from cacheproxy.observe.health import Health, upstream_problem
from cacheproxy.observe.metrics import counts_of
from cacheproxy.observe.observer import Observer
from cacheproxy.observe.sink import LogFileError, open_log_file
from cacheproxy.policies.routes import route_names
from cacheproxy.proxy.handler import CacheProxy, check_plans
from cacheproxy.proxy.listener import LEAN, LeanRunner, Plane
from cacheproxy.proxy.policy_steps import outbound
from cacheproxy.proxy.siblings import Siblings
from cacheproxy.proxy.wire import ControlRunner
from cacheproxy.proxy.workers import supervise
from cacheproxy.store import LayeredStore, Store, build_store

log = logging.getLogger("cacheproxy")
STOP_AND_RELOAD = frozenset({signal.SIGHUP, signal.SIGTERM, signal.SIGINT})
PROXY = web.AppKey("proxy", CacheProxy)
OBSERVER = web.AppKey("observer", Observer)
ADMIN = web.AppKey("admin", Admin)
HEALTH = web.AppKey("health", Health)
STARTED_WITH = web.AppKey("started_with", Config)
CONTROL = web.AppKey("control", web.Application)  # the admin app when admin.listen is set


class AnyTarget(web_urldispatcher.DynamicResource):
    """Matches every request target, "*" (asterisk-form) included, which path
    patterns cannot (they must start with "/")."""

    def _match(self, path: str) -> dict[str, str]:
        return {}


def make_app(
    config: Config, upstream: str | None = None, store: Store | None = None
) -> web.Application:
    """The proxy as an aiohttp application: one catch-all route, any method.
    upstream defaults to proxy.upstream (serve passes the demo origin's URL)."""
    store = store if store is not None else build_store(config.cache)
    proxy = CacheProxy(config, upstream or config.proxy.upstream, store)
    admin_paths = (config.admin.prefix, *filter(None, [config.admin.metrics_path]))
    observer = Observer(config.log, time.time(), admin_paths)
    observer.secrets = lambda: proxy.plans.secrets  # (the plans a reload made)
    admin = Admin(config.admin, store, observer)
    admin.set_forward(config.forward, config.proxy.listen)  # proxy.pac
    admin.route_names = route_names(config)
    proxy.purge = admin.purge_method
    proxy.driver.upstream_answered = observer.upstream_answered
    admin.key_for = proxy.cache_key
    admin.marks = proxy.exchange.invalidations
    if isinstance(store, LayeredStore):  # other replicas' invalidations and purges, too
        store.heard = proxy.exchange.invalidations.heard
    health = Health(proxy.upstreams, getattr(store, "ping", None))
    app = web.Application()
    app[PROXY], app[OBSERVER], app[ADMIN], app[HEALTH] = proxy, observer, admin, health
    app[STARTED_WITH] = config  # what restart-only settings stay at, whatever reloads say
    app.on_response_prepare.append(outbound)  # CORS grant, Referrer-Policy: after the cache
    app.cleanup_ctx.append(_store_context(store))
    app.cleanup_ctx.append(proxy.context)
    app.on_cleanup.append(lambda _: _close(observer))
    separate = bool(config.admin.listen)
    app[LEAN] = Plane(proxy, observer, () if separate else (config.admin.prefix,),
                      "" if separate else config.admin.metrics_path)
    # The control plane: on the proxy's listener, or (admin.listen) an app of its own.
    control = app
    if config.admin.listen:
        control = app[CONTROL] = web.Application()
    health.routes(control, config.admin.prefix)
    admin.routes(control)  # exact paths: the router tries them before the catch-all
    target = AnyTarget("/{tail:.*}")
    app.router.register_resource(target)
    target.add_route("*", proxy.handle)
    return app


def _store_context(store: Store) -> Callable[[web.Application], AsyncIterator[None]]:
    """The store's connections (Redis) live as long as the app."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        await store.start()
        yield
        await store.close()

    return context


async def _close(observer: Observer) -> None:
    observer.close()


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(
    config: Config, reload: Callable[[], Config] | None = None, *, reuse_port: bool = False,
    port: int | None = None, upstream: str | None = None, announce: bool = True,
    siblings: socket.socket | None = None,
) -> None:
    """Run until cancelled, then stop gracefully (proxy.shutdown_timeout). With no upstream,
    the bundled demo origin is started first. SIGHUP calls reload() for a new config and
    applies it (see reconfigure). --workers processes pass reuse_port, the port the parent
    resolved, the demo origin's URL when it runs the demo, and their channel to the other
    workers (siblings: what one's memory store forgets all forget; /metrics sums them)."""
    demo_url = upstream or ""  # the supervisor's demo origin (--workers), when it runs one
    upstream = upstream or config.proxy.upstream
    demo = None
    if not upstream and not config.catch_all_route:  # then proxy.upstream is never used
        demo_host, demo_port = parse_listen(config.demo.listen)
        demo, demo_port = await start_demo_origin(demo_host, demo_port, DEMO_HINT)
        upstream = demo_url = _url(demo_host, demo_port)
        log.info("demo origin on %s (set proxy.upstream to proxy your own)", upstream)
    descriptor_room(config.proxy.max_client_connections, say=announce)
    if announce and (exposed := private_cache_exposure(config)) is not None:
        log.warning("%s", exposed)
    # The lean data plane; the admin API is the aiohttp application's (listener.py).
    others = Siblings(siblings, config.proxy.workers) if siblings is not None else None
    store = others.memory_store(config) if others is not None else None
    try:
        app = make_app(config, upstream, store)
    except LogFileError as exc:  # one line naming log.path (a worker's too), exit 1
        if demo is not None:
            await demo.cleanup()
        raise StartError(str(exc)) from None
    # A reload may empty proxy.upstream only while a demo origin runs (a worker restarted
    # after a reload that set proxy.upstream still has the supervisor's).
    app[PROXY].demo_upstream = demo_url.rstrip("/")
    if others is not None:
        _join(app, others, config)
    runner = LeanRunner(app, shutdown_timeout=config.proxy.shutdown_timeout,
                            **app[OBSERVER].runner_args())
    await runner.setup()
    _freeze_the_start()
    host, listen_port = parse_listen(config.proxy.listen)
    port = listen_port if port is None else port
    try:  # a port in use ends the start here, before anything says "stopping"
        await web.TCPSite(runner, host, port, backlog=1024, reuse_port=reuse_port or None).start()
    except BaseException as exc:
        await runner.cleanup()
        if demo is not None:
            await demo.cleanup()
        if isinstance(exc, OSError):
            raise listen_error("proxy.listen", config.proxy.listen, exc, LISTEN_HINT) from None
        raise
    try:
        control = await _start_control(app, config, reuse_port)
    except BaseException:
        await runner.cleanup()
        if demo is not None:
            await demo.cleanup()
        raise
    # Said once: with --workers, by the first worker only (announce).
    checking = asyncio.ensure_future(
        warn_unreachable(app[PROXY].upstreams() if announce else ()))
    try:
        bound = runner.addresses[0][1] if runner.addresses else port
        log.info("cacheproxy listening on %s -> %s", _url(host, bound), masked_url(upstream))
        loop = asyncio.get_running_loop()
        if reload is not None:
            loop.add_signal_handler(signal.SIGHUP, _reloader(app, reload))
        else:  # at least reopen the request log file (after logrotate moved it)
            loop.add_signal_handler(signal.SIGHUP, app[OBSERVER].reopen)
        # Held back since the start (run_one, or the fork of a worker): handled from now on.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_AND_RELOAD)
        await asyncio.Event().wait()
    finally:
        checking.cancel()
        # Stop accepting; requests in flight get shutdown_timeout seconds to finish.
        app[HEALTH].draining = True
        log.info("stopping: finishing requests in flight (at most %ss)",
                 config.proxy.shutdown_timeout)
        if control is not None:  # admin.listen answers while the proxy drains (readyz
            await _drain(runner, config.proxy.shutdown_timeout)  # 503), then goes
            await control.cleanup()
        await runner.cleanup()
        if demo is not None:
            await demo.cleanup()


def _join(app: web.Application, others: Siblings, config: Config) -> None:
    """--workers: hear the other workers (proxy/siblings.py), and sum their counters into
    /metrics (the Redis store's figures are every worker's already: not summed)."""
    admin, observer = app[ADMIN], app[OBSERVER]
    others.listen(app[PROXY].exchange.invalidations,
                  lambda: counts_of(observer.stats, admin.store.stats(),
                                    observer.connections()))
    admin.siblings = others.counters
    admin.workers = others
    others.stats = admin.stats_json
    others.listing = admin.listing_json
    admin.shared_store = config.cache.store == "redis"


async def _drain(runner: LeanRunner, timeout: float) -> None:
    """What runner.cleanup() does first: stop listening, let requests in flight finish
    (timeout), close the connections; its application (store, log) stays up."""
    for site in list(runner.sites):
        await site.stop()
    listener = runner.server
    if listener is not None:
        listener.pre_shutdown()
        await listener.shutdown(timeout)


def _freeze_the_start() -> None:
    """What exists once the proxy is set up lives as long as the process (modules,
    configuration, the store's LRU order): the collector need not walk it again
    (gc.freeze), some 58,000 objects it took 30-70 ms to walk on the bench VM. A full
    collection then walks what came after: a few thousand objects, since stored
    responses and their dict are untracked (store/untracked.py; README, "Garbage
    collection pauses"). Before listening, so that no request waits for this one.
    What a reload replaces is freed by reference counting, never left to the
    collector (tests/test_collector.py)."""
    with gc_pauses.untimed():
        gc.collect()
        gc_pauses.freeze()


async def _start_control(
    app: web.Application, config: Config, reuse_port: bool
) -> web.AppRunner | None:
    """admin.listen: the admin API, /metrics, the dashboard and the health checks on an
    address of their own (the proxy's listener then forwards every path)."""
    if CONTROL not in app:
        return None
    runner = ControlRunner(app[CONTROL], shutdown_timeout=config.proxy.shutdown_timeout,
                           **app[OBSERVER].runner_args(control=True))
    await runner.setup()
    host, port = parse_listen(config.admin.listen)
    try:
        await web.TCPSite(runner, host, port, reuse_port=reuse_port or None).start()
    except OSError as exc:
        await runner.cleanup()
        raise listen_error("admin.listen", config.admin.listen, exc, "") from None
    bound = runner.addresses[0][1] if runner.addresses else port
    log.info("admin API, /metrics and health checks on %s", _url(host, bound))
    return runner


def descriptor_room(max_client_connections: int, say: bool = True) -> None:
    """A client connection takes a descriptor, and its tunnel (CONNECT) or upstream
    connection one more: the soft RLIMIT_NOFILE is raised towards the hard one as far as
    that needs. A limit below max_client_connections itself is said once, naming the
    setting, as nginx says "worker_connections exceed open file resource limit" (past
    the limit, libuv accepts and closes new connections, and nothing else says so)."""
    want = 2 * max_client_connections + 64  # (+ the store, the log, the listeners)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft < max_client_connections and say:
        log.warning("the open file limit (ulimit -n) is %d, below proxy.max_client_connections"
                    " (%d; a tunnel or a miss takes two): past it new connections are closed "
                    "as they arrive. Raise the limit or lower proxy.max_client_connections",
                    soft, max_client_connections)


async def warn_unreachable(upstreams: tuple[str, ...]) -> None:
    """Say once at start which upstream does not accept a connection (the proxy serves
    anyway: requests to it get 502 until it does, and readyz reports it)."""
    problems = await asyncio.gather(*(upstream_problem(url) for url in upstreams))
    for url, problem in zip(upstreams, problems, strict=True):
        if problem is not None:
            log.warning("upstream %s is not reachable: %s; serving anyway (its requests get "
                        "502 until it answers; readyz reports it)", masked_url(url), problem)


def _reloader(app: web.Application, reload: Callable[[], Config]) -> Callable[[], None]:
    def on_sighup() -> None:
        try:
            new = reload()
            reconfigure(app, new)
        except (ConfigError, OSError) as exc:
            log.error("reload refused, the running configuration stays: %s", exc)
            return
        log.info("configuration reloaded")

    return on_sighup


def reconfigure(app: web.Application, new: Config) -> None:
    """Apply a new config to a running app, without dropping a connection: routes, policies,
    forwarding, cache rules, log and admin token. What needs a restart (listen address, store,
    workers, timeouts of the upstream pool, admin paths) is kept, with a warning."""
    proxy = app[PROXY]
    for key in restart_only_changes(app[STARTED_WITH], new):
        log.warning("reload: %s changed; it takes effect at the next restart", key)
    # What runs from now on: the running values of what takes effect at a restart, so that
    # nothing reads the new ones early (proxy.pac naming an address nobody listens on, a
    # CA made in the new forward.ca_dir), and checked as a whole (ConfigError, before
    # anything changes): forward.allow_hosts ["*"] is refused on the listen in use.
    new = keep_restart_only(app[STARTED_WITH], new)
    proxy.check_config(new)
    check_local_ca(new)
    app[OBSERVER].reconfigure(new.log)  # raises OSError (a log file that cannot open) first
    app[ADMIN].reconfigure(new.admin)
    app[ADMIN].set_forward(new.forward, new.proxy.listen)
    app[ADMIN].route_names = route_names(new)
    proxy.reconfigure(new)
    _resize_store(proxy.store, new.cache.max_bytes)


def _resize_store(store: Store, max_bytes: int) -> None:
    """The memory store's new bound, at once (MemoryStore.resize); a store without one
    (Redis, whose bound is its maxmemory) kept its own: restart_only_changes said so."""
    resize = getattr(store, "resize", None)
    if resize is None or store.stats().max_bytes == max_bytes:
        return
    gone = resize(max_bytes)
    log.info("reload: cache.max_bytes is now %d bytes%s", max_bytes,
             f"; {gone} least recently used URLs evicted to fit" if gone else "")


# Settings a running process cannot change: sockets, store, processes, the upstream pool.
RESTART_ONLY = (
    "proxy.listen", "proxy.workers", "proxy.connect_timeout", "proxy.read_timeout",
    "proxy.send_timeout",
    "proxy.max_connections", "proxy.shutdown_timeout", "proxy.upstream_keepalive_timeout",
    "proxy.pid_file", "proxy.upstream_ca_file",
    "cache.store", "cache.redis_url", "cache.redis_prefix", "cache.redis_timeout",
    "cache.redis_retry_interval", "cache.memory_layer_bytes",
    "cache.memory_layer_ttl", "cache.fill_buffer_bytes", "demo.listen", "admin.prefix",
    "admin.metrics_path", "admin.listen", "forward.ca_dir",
)
# cache.max_bytes bounds the memory store at once (MemoryStore.resize); the Redis store's
# bound is Redis's own maxmemory (the figure its stats show without one): a restart.
RESTART_ONLY_WITH_REDIS = ("cache.max_bytes",)


def restart_only_changes(old: Config, new: Config) -> list[str]:
    changed = []
    for key in RESTART_ONLY + (RESTART_ONLY_WITH_REDIS if old.cache.store == "redis"
                               else ()):
        section, name = key.split(".")
        if getattr(getattr(old, section), name) != getattr(getattr(new, section), name):
            changed.append(key)
    return changed


def keep_restart_only(running: Config, new: Config) -> Config:
    """new, with running's values of the settings that take effect at the next restart: what
    a worker the supervisor starts after a reload runs, so that it shares the store (and
    the rest of RESTART_ONLY) with the workers still running, as the reload said."""
    kept: dict[str, dict[str, object]] = {}
    for key in restart_only_changes(running, new):
        section, name = key.split(".")
        kept.setdefault(section, {})[name] = getattr(getattr(running, section), name)
    settled = dataclasses.replace(new, **{
        section: dataclasses.replace(getattr(new, section), **values)
        for section, values in kept.items()})
    # load_config checked forward.allow_hosts against the new proxy.listen (loopback: ["*"]
    # allowed); the one in use may reach other machines, and an open proxy is never made
    # by accident (ConfigError: the reload is refused).
    check_forward(settled.forward, settled.proxy.listen)
    return settled


def settle_reload(running: Config, new: Config, demo_upstream: str) -> Config:
    """--workers: the config the supervisor adopts on SIGHUP, which every worker started
    from now on runs (a restart after a crash, an OOM kill). keep_restart_only's, checked
    first as each worker's reconfigure checks it (ConfigError, or OSError naming log.path):
    a reload the workers refuse must not become what a restarted worker runs, or the next
    worker death starts one that cannot open its log, and the server stops (exit 1).
    nginx's master likewise tests a new configuration whole before a worker gets it."""
    settled = keep_restart_only(running, new)
    check_plans(settled, demo_upstream or settled.proxy.upstream, demo_upstream)
    check_local_ca(settled)
    if settled.log.path and settled.log.format != "off":
        open_log_file(settled.log.path).close()  # (as a worker's new sink opens it)
    return settled


def check_local_ca(config: Config) -> None:
    """forward.intercept_tls: the local CA is read (made, the first time) now, so one that
    cannot be used (a key others can read, a garbled or expired file) stops the start, as a
    bad proxy.upstream_ca_file does, and not every CONNECT after a healthy-looking start.
    Made here, before any worker, it is made once."""
    forward = config.forward
    if not (forward.enabled and forward.intercept_tls):
        return
    from cacheproxy.tls.ca import CAError, LocalCA  # cryptography: only when intercepting

    directory = forward.ca_path(os.environ)
    try:
        LocalCA.load_or_create(directory)
    except CAError as exc:
        raise ConfigError("forward.ca_dir", str(exc)) from None
    except OSError as exc:
        raise ConfigError("forward.ca_dir", f"{exc.filename or directory}: "
                                            f"{exc.strerror or exc}") from None


def run(config: Config, reload: Callable[[], Config] | None = None) -> None:
    """Blocking entry point for `cacheproxy serve`; SIGTERM and SIGINT stop it gracefully.
    With proxy.workers > 1 the processes are started and watched by cacheproxy.proxy.workers."""
    check_local_ca(config)
    # Never blocking the event loop on a stderr pipe nobody drains (observe/diagnostics.py).
    # With --workers, each line says which process wrote it (as nginx's error log does):
    # the supervisor's and each worker's lines otherwise read alike (a worker's error, a
    # restart's "worker 1234 exited" then named a pid no line carried).
    pid = " [%(process)d]" if config.proxy.workers > 1 else ""
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s %(levelname)s{pid} %(message)s",
                        handlers=[StderrHandler(sys.stderr)])
    # The process `cacheproxy reload` / `stop` signal: this one (with --workers, the parent).
    pid_file = config.proxy.pid_file
    # Held from before the pid file names this process until its handlers are set (serve(),
    # or the supervisor's run()): a `kill -HUP $(cat pid_file)` as soon as the file appears
    # would otherwise end it by the default action, as nginx's handlers precede its pid file.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_AND_RELOAD)
    if pid_file:
        pidfile.claim(pid_file, config.proxy.shutdown_timeout)
    try:
        if config.proxy.workers > 1:
            supervise(config, reload, run_one, settle_reload)
            return
        run_one(config, reload)
    finally:
        if pid_file:
            pidfile.release(pid_file)


def run_one(
    config: Config, reload: Callable[[], Config] | None = None, *, reuse_port: bool = False,
    port: int | None = None, upstream: str | None = None, announce: bool = True,
    siblings: socket.socket | None = None,
) -> None:
    # SIGHUP / SIGTERM before the loop handles them would kill the process (their default
    # action): they wait, blocked, until serve() has its handlers in place.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_AND_RELOAD)

    run_until_stopped(lambda: serve(config, reload, reuse_port=reuse_port, port=port,
                                    upstream=upstream, announce=announce, siblings=siblings))
