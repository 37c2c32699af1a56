"""`--workers N`: N processes serving one port, for more than one core.

Each worker is a whole proxy (its own event loop, upstream pool and, with the memory store,
its own cache; with store = "redis" they share one) bound to the same port with SO_REUSEPORT,
so the kernel spreads connections over them. This parent process does no HTTP: it holds the
port (a bound socket that never listens, so port 0 resolves once for all), starts the demo
origin when no upstream is set, passes SIGHUP on (each worker reloads its config) and SIGTERM
(each finishes its requests in flight), restarts a worker that dies unexpectedly, and passes
on what one worker's memory store forgets (a purge, an invalidation) to the others
(proxy/siblings.py).

What a worker runs is given to `supervise` (server.run_one): this module knows processes, not
the proxy, so the server imports it and not the other way round.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

from cacheproxy.config import Config, ConfigError, parse_listen
from cacheproxy.lifetime import DEMO_HINT, LISTEN_HINT, StartError, listen_error
from cacheproxy.observe.sink import open_log_file
from cacheproxy.proxy.siblings import Relay

log = logging.getLogger("cacheproxy")

# A worker that keeps dying at start (a port it cannot bind, a bug) is not restarted forever.
MAX_QUICK_DEATHS = 5
QUICK_DEATH_SECONDS = 2.0
# A worker's exit status when it cannot start (a StartError: admin.listen in use, a log.path
# it cannot open), after saying why in one line: every other one would fail the same way, so
# the supervisor stops, as a single process that cannot start does (exit 1).
START_FAILED = 3
# A demo origin that died is started again, at most this often (seconds).
DEMO_RESTART_SECONDS = 1.0

# fork: workers inherit the loaded config and its reload function (a closure) as they are.
_mp = multiprocessing.get_context("fork")


# Held back while a process is forked, and in the new process until its event loop has
# handlers for them: a SIGHUP or SIGTERM in between would otherwise kill it (default action).
SIGNALS = frozenset({signal.SIGHUP, signal.SIGTERM, signal.SIGINT})


class ServeOne(Protocol):
    """One worker's whole life: a proxy on the reserved port until SIGTERM."""

    def __call__(self, config: Config, reload: Callable[[], Config] | None, *,
                 reuse_port: bool, port: int, upstream: str | None,
                 announce: bool, siblings: socket.socket | None) -> None: ...


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, never-listening SO_REUSEPORT socket: it fixes the port (0 picks one) while
    the workers bind theirs beside it; only listening sockets get connections. A port that
    anything else holds (another --workers instance too) is refused first: a socket without
    SO_REUSEPORT cannot join theirs."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))  # OSError "Address already in use": exit 1, one line
        port = probe.getsockname()[1]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _freeze_what_children_inherit() -> None:
    """A forked child shares its parent's memory until it writes to a page, and a
    collection writes to every object it walks: what the workers inherit is frozen
    first, so their collections leave it shared (the gc module's advice for a fork
    without exec). Measured with --workers 2: 14 MiB of private memory per worker instead
    of 26 (README, "Garbage collection pauses")."""
    gc.collect()
    gc.freeze()


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _stop_with_parent(parent: int) -> None:
    """SIGTERM (a graceful stop) when the supervisor dies, even by SIGKILL: orphaned
    workers would hold the port, unsupervised, and the next start would find it in use.
    Linux only (prctl); elsewhere they outlive it as before."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    if prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0 and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)  # it died before prctl: stop all the same


def _worker(serve_one: ServeOne, config: Config, reload: Callable[[], Config] | None,
            port: int, upstream: str | None, announce: bool, parent: int,
            siblings: socket.socket, relay: Relay) -> None:
    for sig in SIGNALS:  # still blocked (fork); serve() unblocks them once handled
        signal.signal(sig, signal.SIG_DFL)
    _stop_with_parent(parent)
    relay.close_all()  # (the supervisor's ends, inherited)
    try:
        serve_one(config, reload, reuse_port=True, port=port, upstream=upstream,
                  announce=announce, siblings=siblings)
    except StartError as exc:  # one line, as `cacheproxy serve` says it, not a traceback
        print(f"cacheproxy: {' '.join(str(exc).splitlines())}", file=sys.stderr, flush=True)
        sys.exit(START_FAILED)
    finally:
        logging.shutdown()  # (multiprocessing ends with os._exit: lines still queued go)


def _demo(config: Config, ready: Any, parent: int) -> None:
    for sig in SIGNALS:  # still blocked (fork); run_demo_origin unblocks them once handled
        signal.signal(sig, signal.SIG_DFL)
    _stop_with_parent(parent)
    from cacheproxy.demo.origin import run_demo_origin

    try:
        run_demo_origin(config.demo, ready=ready.send, hint=DEMO_HINT)
    except StartError as exc:  # said by the parent, in one line
        ready.send(exc)


# (running, reloaded, the demo origin's URL or "") -> what a worker started from now on
# runs: the reloaded config with the running one's settings that a reload does not change,
# checked as the workers check it (server.settle_reload; raises ConfigError, OSError).
Settle = Callable[[Config, Config, str], Config]


class Supervisor:
    def __init__(self, config: Config, reload: Callable[[], Config] | None,
                 serve_one: ServeOne, settle: Settle | None = None) -> None:
        self.config = config
        self.reload = reload
        self.serve_one = serve_one
        self.settle = settle
        self.workers: list[BaseProcess] = []
        self.started: dict[int, float] = {}
        self.quick_deaths = 0
        self.stopping = False
        self.hangup = False
        self.relay = Relay(config.proxy.workers)
        self.demo: BaseProcess | None = None  # the demo origin, when no upstream is set
        self.demo_upstream = ""  # its URL, once started (a reload may then empty upstream)
        self.demo_listen = ""  # where it listens (its port, once bound: kept on restart)
        self.demo_due = 0.0  # when a dead demo origin may be started again (monotonic)
        self.demo_said = False  # its death is said (once: then each failed restart)

    def run(self) -> int:
        host, port = parse_listen(self.config.proxy.listen)
        try:
            holder = reserve_port(host, port)
        except OSError as exc:
            raise listen_error("proxy.listen", self.config.proxy.listen, exc,
                               LISTEN_HINT) from None
        port = holder.getsockname()[1]
        if self.config.log.path and self.config.log.format != "off":
            try:  # said once, here, rather than by every worker as each fails to open it
                open_log_file(self.config.log.path).close()
            except OSError:
                holder.close()
                raise
        _freeze_what_children_inherit()
        self.demo, upstream = self._start_demo()
        self.demo_upstream = upstream or ""
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, self._hup)
        # A signal wakes the wait in _watch at once (Python retries an interrupted wait).
        self._wakeup, wakeup_w = socket.socketpair()
        self._wakeup.setblocking(False)
        wakeup_w.setblocking(False)
        signal.set_wakeup_fd(wakeup_w.fileno())
        # Held since before the pid file was written (server.run): handled from now on.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        try:
            for slot in range(self.config.proxy.workers):
                # The first says what is said once (an unreachable upstream).
                self.workers.append(self._start(slot, port, upstream, not self.workers))
            log.info("%d workers on %s:%d (SO_REUSEPORT)", len(self.workers), host, port)
            return self._watch(port, upstream)
        finally:
            signal.set_wakeup_fd(-1)
            self._stop_all(self.demo)
            self.relay.close_all()
            holder.close()
            self._wakeup.close()
            wakeup_w.close()

    def _start_demo(self) -> tuple[BaseProcess | None, str | None]:
        if self.config.proxy.upstream:
            return None, None
        receive, send = _mp.Pipe(duplex=False)
        config = self.config
        if self.demo_listen:  # a restart: where the workers send their requests
            config = dataclasses.replace(config, demo=dataclasses.replace(
                config.demo, listen=self.demo_listen))
        self.demo_due = time.monotonic() + DEMO_RESTART_SECONDS
        demo = _mp.Process(target=_demo, args=(config, send, os.getpid()),
                           name="cacheproxy-demo")
        _fork(demo)
        if not receive.poll(10):
            demo.kill()
            demo.join()  # (reaped: the supervisor may go on, and start it again)
            raise OSError("the demo origin did not start")
        demo_host, _ = parse_listen(self.config.demo.listen)
        demo_port = receive.recv()
        if isinstance(demo_port, StartError):
            demo.join(5)
            raise demo_port
        host = f"[{demo_host}]" if ":" in demo_host else demo_host
        self.demo_listen = f"{host}:{demo_port}"
        return demo, f"http://{host}:{demo_port}"

    def _keep_demo(self) -> None:
        """The demo origin, started again when it died (killed, OOM): every worker sends
        its requests there, and without it answered 502 until the server restarted. On
        the same address (the port it had, even when demo.listen says 0); at most once a
        second (DEMO_RESTART_SECONDS), and while it cannot start, said each time."""
        demo = self.demo
        if demo is None or demo.is_alive() or time.monotonic() < self.demo_due:
            return
        if not self.demo_said:
            log.error("the demo origin (pid %s) exited with %s; starting another", demo.pid,
                      demo.exitcode)
            self.demo_said = True
        try:
            self.demo, _ = self._start_demo()
        except (StartError, OSError) as exc:
            log.error("the demo origin could not start again (%s); its requests get 502 "
                      "until it does; trying again in %ss", exc, DEMO_RESTART_SECONDS)
            return  # (self.demo: the dead one, tried again when due)
        self.demo_said = False

    def _start(self, slot: int, port: int, upstream: str | None,
               announce: bool = False) -> BaseProcess:
        siblings = self.relay.open(slot)
        worker = _mp.Process(
            target=_worker,
            args=(self.serve_one, self.config, self.reload, port, upstream, announce,
                  os.getpid(), siblings, self.relay),
            name="cacheproxy-worker")
        try:
            _fork(worker)
        finally:
            siblings.close()  # (the worker's end, now in the worker)
        assert worker.pid is not None
        self.started[worker.pid] = time.monotonic()
        return worker

    def _watch(self, port: int, upstream: str | None) -> int:
        while not self.stopping:
            if self.hangup:
                self.hangup = False
                if self._reload():
                    for worker in self.workers:
                        _signal(worker, signal.SIGHUP)
            demo = [self.demo.sentinel] if self.demo is not None and self.demo.is_alive() \
                else []
            self.relay.wait([*(w.sentinel for w in self.workers), self._wakeup, *demo],
                            timeout=1.0)
            with contextlib.suppress(BlockingIOError):
                self._wakeup.recv(512)
            self.relay.pass_on()
            if not self.stopping:
                self._keep_demo()
            for i, worker in enumerate(self.workers):
                if worker.is_alive() or self.stopping:
                    continue
                assert worker.pid is not None
                lived = time.monotonic() - self.started.pop(worker.pid, 0.0)
                if worker.exitcode == START_FAILED:  # it said why
                    log.error("a worker could not start; stopping")
                    return 1
                log.error("worker %d exited with %s; starting another", worker.pid,
                          worker.exitcode)
                if lived >= QUICK_DEATH_SECONDS:
                    self.quick_deaths = 0  # it ran: not a start that keeps failing
                else:
                    self.quick_deaths += 1
                    if self.quick_deaths >= MAX_QUICK_DEATHS:
                        log.error("workers keep dying at start; giving up")
                        return 1
                self.workers[i] = self._start(i, port, upstream)
        return 0

    def _reload(self) -> bool:
        """The config a worker started from now on gets: the one SIGHUP loads (each running
        worker then reloads its own and logs what it finds), but with the running settings
        that take effect at the next restart: a worker restarted after a crash must share
        the store and the rest with the workers still running. False when it is refused:
        the workers, whose checks include these (server.reconfigure), would refuse the same
        file for the same reason, each in a line of its own (N + 1 lines for one mistake);
        they are not signalled, and this one line speaks for all."""
        if self.reload is None:
            return True  # (SIGHUP still reopens each worker's request log)
        try:
            new = self.reload()
            self.config = new if self.settle is None \
                else self.settle(self.config, new, self.demo_upstream)
        except (ConfigError, OSError) as exc:
            log.error("reload refused, the running configuration stays (every worker's): %s",
                      exc)
            return False
        return True

    def _stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _hup(self, signum: int, frame: object) -> None:
        self.hangup = True

    def _stop_all(self, demo: BaseProcess | None) -> None:
        for worker in self.workers:
            _signal(worker, signal.SIGTERM)
        deadline = time.monotonic() + self.config.proxy.shutdown_timeout + 1
        for worker in self.workers:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                worker.kill()
                worker.join()
        if demo is not None:
            _signal(demo, signal.SIGTERM)
            demo.join(5)
            if demo.is_alive():
                demo.kill()


def _fork(process: BaseProcess) -> None:
    """Start process with SIGNALS blocked, so they wait for its loop's handlers."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        process.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _signal(process: BaseProcess, sig: int) -> None:
    if process.pid is not None and process.is_alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, sig)


def supervise(config: Config, reload: Callable[[], Config] | None, serve_one: ServeOne,
              settle: Settle | None = None) -> None:
    """Run `config.proxy.workers` processes of `serve_one` on one port until SIGTERM."""
    code = Supervisor(config, reload, serve_one, settle).run()
    if code:
        sys.exit(code)
