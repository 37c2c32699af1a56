"""Review of reloading a running proxy's configuration (SIGHUP, `cacheproxy reload`), with
and without --workers, in front of real origins on 127.0.0.1.

What was looked at: requests in flight across a reload (their CORS grant, Referrer-Policy
and route stay those they started with; Via and Cache-Status too, now); collapsed waiters
arriving after a reload (served the leader's stored answer, as any stored entry is: the
README's "a reload does not purge"); a reload storm (10 SIGHUPs in a second, alternating
upstream, CORS and log.path, under 6 clients: every answer a 200, with 1 and 2 workers);
an invalid config (refused naming the key, the old one serving); the settings that take
effect at a restart (listen, workers, store, cache.max_bytes: warned, kept); log.path
changed (reopened); what a refused reload leaves behind in the --workers supervisor;
idle pooled connections to an upstream a reload no longer routes to; and stored entries
whose freshness came from a config value (cache.heuristic_*: figured when stored, as
nginx's proxy_cache_valid and Varnish's TTL are, not again at each lookup as Squid's
refresh_pattern is).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
from processes import start_serve
from support import until
from test_process_life import StderrLines
from test_review_workers_regressions import _workers_of, versioned_origin


async def test_a_reload_the_workers_refuse_is_not_what_a_restarted_worker_runs(
        origin: Any, tmp_path: Path) -> None:
    """With --workers, a reload whose log.path cannot be opened was refused by each worker
    (one line each), but the supervisor, which had not tried the file, kept the refused
    config as the one a restarted worker runs. The next worker death (an OOM kill, a
    crash) then started a worker that could not open its log: "a worker could not start;
    stopping", and the whole server exited 1, minutes or days after a reload the log said
    was refused. nginx's master checks a new configuration whole (its files opened) before
    any worker gets it, and keeps the old one for new workers when it fails. Now the
    supervisor makes the checks the workers make (log.path opened, routes built, the local
    CA, an upstream to send to) and, refusing, says so once and signals no worker.
    Severity: high (an outage, later, from a refused reload)."""
    up, _ = await versioned_origin(origin)
    config = tmp_path / "cacheproxy.toml"
    good = f'[proxy]\nupstream = "{up.make_url("")}"\n'
    config.write_text(good + f'[log]\npath = "{tmp_path / "requests.log"}"\n')
    proc, port = await start_serve("--config", str(config), "--workers", "2", cwd=tmp_path)
    err = StderrLines(proc)
    try:
        for _ in range(2):
            await err.wait_for("listening on")
        config.write_text(good + f'[log]\npath = "{tmp_path / "no" / "such" / "x.log"}"\n')
        proc.send_signal(signal.SIGHUP)
        refused = await err.wait_for("reload refused")
        assert "log.path" in refused, refused
        victim = _workers_of(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)  # an OOM kill
        await err.wait_for(f"worker {victim} exited")
        # The worker started in its place listens (3 "listening" lines), or the server
        # gives up (it exits): whichever comes first.
        assert await until(lambda: proc.returncode is not None or sum(
            "listening on" in line for line in err.lines) == 3, 15), err.lines
        assert proc.returncode is None, "".join(err.lines)
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{port}/a") as resp:
            assert resp.status == 200
    finally:
        if proc.returncode is None:
            proc.terminate()
        code = await proc.wait()
        text = await err.close()
    assert sum("reload refused" in line for line in text.splitlines()) == 1, text
    assert code == 0 and "Traceback" not in text, text
