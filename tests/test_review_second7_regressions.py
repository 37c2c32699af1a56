"""Second reading (second7) of this session's merges: `cacheproxy stop` and the
`<pid_file>.json` sidecar (with --workers, two servers, read-only places), the Public Suffix
List check of credentialed CORS catch-alls (IDN, upper case, trailing dot, ports, `*.`
alone), the clock-lag WARNING, requests pipelined behind `Upgrade: h2c` (Content-Length 0,
HEAD, `Expect: 100-continue`, HTTP/1.0, a CONNECT or a WebSocket handshake behind it, cuts),
TLS slices, and with --workers the relay of purges between the workers' memory stores
(a POST storm) and /metrics summed over the workers (a worker stopped, restarted). Real
`cacheproxy serve` processes in front of aiohttp origins on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import aiohttp
from test_review_workers_regressions import (
    _scrape,
    fill_until_owed,
    requests_total,
    scraped_workers,
)

from cacheproxy.proxy.siblings import MAX_MESSAGE, Relay
from cacheproxy.store.siblings import FORGET_ALL


async def _scrape_within(base: str, seconds: float) -> dict[str, float] | None:
    """/metrics, or None when no answer came in time (the worker reached is stopped)."""
    try:
        return await asyncio.wait_for(_scrape(base), seconds)
    except (TimeoutError, aiohttp.ClientError):
        return None


async def test_metrics_keep_a_worker_that_does_not_answer_in_time_at_its_last_figures(
        origin: Any, tmp_path: Any) -> None:
    """With --workers, the worker a scrape reaches sums the counters of the workers that
    answer within 0.5 s; one that did not (busy in a long pause, stopped, restarting) was
    left out of the sum. What an operator saw: cacheproxy_requests_total 40, then 23 while
    a worker was held up, then 40 again: to Prometheus a counter reset and a jump, so
    rate() and increase() read phantom traffic (here 23 requests that never happened, at
    every such scrape) and alerts on error rates fired. A counter must not go down (the
    OpenMetrics counter type); prometheus_client's multiprocess mode keeps the figures of a
    process it cannot read for the same reason. Now every worker keeps each other worker's
    last answer (answers go to every worker, not only the asker) and sums it for one that
    does not answer in time; cacheproxy_processes_counted still says how many answered.
    Severity: medium (spurious rates and alerts with --workers whenever a worker is slow)."""
    async with scraped_workers(origin, tmp_path) as (_, _, base, workers):
        os.kill(workers[0], signal.SIGSTOP)
        try:
            answered = []
            for _ in range(40):  # scrapes reaching the stopped worker wait; the other answers
                if (metrics := await _scrape_within(base, 1.5)) is not None:
                    answered.append((requests_total(metrics),
                                     metrics["cacheproxy_processes_counted"]))
                    if len(answered) == 3:
                        break
            assert answered == [(40, 1)] * 3, answered
        finally:
            os.kill(workers[0], signal.SIGCONT)


def test_the_supervisor_wakes_for_room_to_send_an_owed_clear() -> None:
    """A worker too busy to read its channel (a long pause, SIGSTOP, a CPU-starved host)
    while another answered a purge storm is owed a "forget everything" once its channel has
    room again. The supervisor waited only for channels to read (and its 1 s timeout), so
    the clear went at its next wake-up. What a user saw (--workers 2, a worker stopped
    during 3,000 purges, the last of /page, then resumed): the resumed worker served the
    purged /page (X-Cache: HIT, the old body) to every request for 0.95 s, though the purge
    had answered 200; with the fix, not once in two runs and once 2 ms after in a third (its
    own requests read before its channel). README: "never a purge lost". nginx's workers
    share one cache zone: a purge there is at once everyone's. Now the supervisor waits for
    room in a channel owed a clear as it waits for messages (Relay.wait), so the clear goes
    as soon as the worker has read some of what waited. Severity: low-medium (a window of
    up to a second of serving purged content after a stall)."""
    relay = Relay(2)
    ends = [relay.open(0), relay.open(1)]
    try:
        fill_until_owed(relay, ends)
        assert relay.wait([], 0) == []  # no room yet: nothing to do
        while True:  # worker 1 reads again
            try:
                ends[1].recv(MAX_MESSAGE)
            except BlockingIOError:
                break
        owed = relay.ends[1]
        assert owed is not None
        # The supervisor wakes for the room (were it not woken, this waits 30 s for nothing
        # and finds nothing ready), and the clear goes.
        assert relay.wait([], 30.0) == [owed.fileno()]
        relay.pass_on()
        assert ends[1].recv(MAX_MESSAGE) == FORGET_ALL and 1 not in relay.owed
    finally:
        relay.close_all()
        for end in ends:
            end.close()
