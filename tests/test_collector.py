"""What the proxy keeps out of the cyclic garbage collector's way (README, "Garbage
collection pauses"): serve() freezes what exists at start, so nothing frozen may later
become garbage that only the collector could free; and a reload replaces part of it."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import threading
import weakref

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
        found = gc.collect()
    finally:
        gc.enable()
    assert found == 0  # nothing a reload let go of waited for the collector
    resp = await c.get("/m", headers={"Host": "api.example"})
    assert resp.headers["X-Site"] == "main"  # the reload took
