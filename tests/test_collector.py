"""What the proxy keeps out of the cyclic garbage collector's way (README, "Garbage
collection pauses"): serve() freezes what exists at start, so nothing frozen may later
become garbage that only the collector could free, and a reload replaces part of it;
with --workers the supervisor freezes what the workers inherit."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import signal
import subprocess
import sys
import threading
import time
import weakref

from processes import clean_env
from support import proxy_for_toml as start
from test_policies_proxy import ROUTES, Site

from cacheproxy.config import Config
from cacheproxy.observe.sink import FLUSH_SECONDS
from cacheproxy.proxy.server import OBSERVER, reconfigure


async def test_what_a_reload_replaces_needs_no_collector(origin, proxy, tmp_path):
    main, api, cdn = Site("main"), Site("api"), Site("cdn")
    c = await start(origin, proxy, tmp_path, ROUTES, main=main, api=api, cdn=cdn)
    assert (await c.get("/n", headers={"Host": "api.example"})).headers["X-Site"] == "api"
    old: Config = c.app_proxy.config
    # Routes, policies, log sink (a new file, another format), admin token: all replaced.
    new = dataclasses.replace(
        old, routes=(), log=dataclasses.replace(old.log, path=str(tmp_path / "new.log"),
                                                 format="text"),
        admin=dataclasses.replace(old.admin, token="another"))
    del old
    sink = weakref.ref(c.server.app[OBSERVER].sink)
    gc.collect()
    gc.disable()  # (no collection in between: what is unreachable after, a reload made)
    try:
        reconfigure(c.server.app, new)
        for thread in threading.enumerate():  # the old sink is closed on a thread of its own
            if thread.name == "cacheproxy-log-close":
                thread.join(5)
        await asyncio.sleep(2 * FLUSH_SECONDS)  # and its last flush timer has run
        assert sink() is None  # freed by reference counting
        gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds stays in gc.garbage
        gc.collect()
        ours = [type(o).__qualname__ for o in gc.garbage  # ours, or holding ours
                if any(_ours(x) for x in (o, *gc.get_referents(o)))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert ours == []  # nothing a reload let go of waited for the collector
    resp = await c.get("/m", headers={"Host": "api.example"})
    assert resp.headers["X-Site"] == "main"  # the reload took


def _ours(obj: object) -> bool:
    return type(obj).__module__.startswith("cacheproxy")


_SUPERVISED = """
import gc, sys, time
from cacheproxy.config import load_config
from cacheproxy.proxy.workers import Supervisor

def serve_one(config, reload, *, reuse_port, port, upstream, announce, siblings):
    with open(sys.argv[1], "w") as out:  # what the worker found frozen, before anything
        out.write(str(gc.get_freeze_count()))
    time.sleep(60)

config = load_config(None, env={"CACHEPROXY_PROXY_UPSTREAM": "http://127.0.0.1:9",
                                "CACHEPROXY_PROXY_LISTEN": "127.0.0.1:0",
                                "CACHEPROXY_PROXY_WORKERS": "1"})
Supervisor(config, None, serve_one).run()
"""


def test_workers_start_with_what_they_inherit_frozen(tmp_path):
    """--workers: the supervisor freezes what it has before forking, so that the workers'
    collections leave those pages shared (README, "Garbage collection pauses")."""
    found = tmp_path / "frozen"
    proc = subprocess.Popen([sys.executable, "-c", _SUPERVISED, str(found)],
                            env=clean_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not (found.exists() and found.read_text()) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
        assert int(found.read_text()) > 10_000  # the modules alone are more
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
