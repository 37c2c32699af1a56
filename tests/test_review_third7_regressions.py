"""Third reading (third7) of this session's merges, where two changes meet: the --workers
channel (relayed forgets, ASK/ANSWER questions, COUNTED broadcast, owed clears) with real
`cacheproxy serve --workers N` processes; the collapse changes (waiters behind a 5xx, a
waiter whose client left) against Range, Vary and streaming; the h2c recovery in the
request parser against pipelining and the head limits; the upstream pool's trailer
allowance against a reused connection's next answer; the `<pid_file>.json` sidecar with
--workers. Origins are aiohttp apps or raw sockets on 127.0.0.1 sending exact bytes."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from typing import Any

import pytest
from processes import _listeners
from support import until
from test_review_fuzz_regressions import trailer_then_next_request
from test_review_workers_regressions import (
    _scrape,
    _workers_of,
    requests_total,
    scraped_workers,
)

from cacheproxy.observe.metrics import Counts, counts_of, summed
from cacheproxy.observe.stats import Stats
from cacheproxy.proxy.invalidations import Invalidations
from cacheproxy.proxy.siblings import Relay, Siblings
from cacheproxy.store.base import StoreStats


@pytest.mark.parametrize("trailer", [b"Connection: close\r\n",
                                     b"Connection: keep-alive, close\r\n",
                                     b"Proxy-Connection: close\r\n"])
async def test_a_connection_close_in_a_trailer_section_does_not_fail_the_next_request(
        proxy: Any, trailer: bytes) -> None:
    """What was wrong: the fuzz review made the pool drop a connection whose answer had
    Content-Length or Transfer-Encoding in its trailer section, but llhttp also takes
    `Connection: close` (and `Proxy-Connection`) from a trailer into the message's flags:
    the pool kept the connection (the origin kept it open), and the next request sent on
    it, any client's, any URL, was answered 502 "bad framing (Data after `Connection:
    close`)". What a user saw: one origin answer with an odd trailer failed another
    user's next request. RFC 9110 §6.5.1 (a trailer carries no framing or connection
    options; §7.6.1); nginx ignores trailers. Now a trailer naming any field llhttp keeps
    the connection by makes it not reused. Severity: medium (one answer fails another
    request; rare origins)."""
    await trailer_then_next_request(proxy, trailer, cache_control=b"no-store")


async def test_metrics_do_not_go_down_when_a_worker_is_restarted(
        origin: Any, tmp_path: Any) -> None:
    """With --workers, a worker that died (OOM-killed, a crash) and was restarted in its
    slot answered scrapes with counters from zero, and the other workers dropped its
    predecessor's last figures for them: cacheproxy_requests_total went from 40 to about
    20 (seen with 3 workers: 34, then 20) and stayed there. That is not a reset to
    Prometheus (a reset goes to zero): it adds the whole new value as an increase, so
    rate() and increase() read the restarted sum as new traffic (here 20 requests that
    never happened; on a server that answered a million, hundreds of thousands), and
    error-rate alerts fire at every worker restart. prometheus_client's multiprocess mode
    keeps a dead process's counters in the sum for the same reason. Now the supervisor
    hands a restarted worker its predecessor's last answer, which it counts as a retired
    process's figures (counters only; its store is gone). Severity: medium (phantom
    rates and alerts at every worker restart)."""
    async with scraped_workers(origin, tmp_path) as (proc, port, base, workers):
        os.kill(workers[1], signal.SIGKILL)
        assert await until(lambda: len(set(_workers_of(proc.pid)) - set(workers)) == 1
                           and _listeners(port) == 2, 15)
        totals = [requests_total(await _scrape(base)) for _ in range(20)]
        assert min(totals) >= 40, totals


async def test_a_worker_a_scrape_reaches_tells_the_others_its_figures() -> None:
    """With --workers, each worker kept the others' figures only from their answers to
    its own scrapes' questions; a worker that a scrape reached directly showed newer
    figures of its own and told nobody. When it then did not answer a scrape in time
    (busy, stopped), the worker asked summed it at those older figures: the total went
    down (here 50 + 1 requests, then 10 + 1), which Prometheus reads as 11 new requests.
    Now a worker a scrape reaches also tells its own figures (a COUNTED for no question).
    The channel is the real one (Relay and two workers' Siblings on socketpairs), in one
    process. Severity: low (needs a scrape to hit one worker and the next to miss it)."""
    relay = Relay(2)
    loop = asyncio.get_running_loop()
    ends = [relay.open(0), relay.open(1)]
    for end in relay.waitables():
        loop.add_reader(end, relay.pass_on)
    figures = [10, 1]
    sibs = [Siblings(end, 2) for end in ends]
    for i, sib in enumerate(sibs):
        sib.listen(Invalidations(), lambda i=i: _counts(figures[i]))
    try:
        assert len(await sibs[1].counters()) == 1  # worker 1's scrape: worker 0 said 10
        figures[0] = 50
        others = await sibs[0].counters()  # a scrape of worker 0: 50 of its own, shown
        assert summed(_counts(50), others, False).by_route_cache[("default", "HIT")] == 51
        loop.remove_reader(sibs[0].channel.end)
        sibs[0].channel.end.close()  # worker 0 answers no more (stopped, busy)
        total = summed(_counts(1), await sibs[1].counters(), False)
        assert total.by_route_cache[("default", "HIT")] == 51  # not 11
    finally:
        for end in relay.waitables():
            loop.remove_reader(end)
        relay.close_all()
        loop.remove_reader(sibs[1].channel.end)
        sibs[1].channel.end.close()


def _counts(hits: int) -> Counts:
    counts = counts_of(Stats(0.0), StoreStats(0, 0, 0, 0))
    return dataclasses.replace(counts, by_route_cache={("default", "HIT"): hits})
