"""Review of a fresh hit's observation (perfhit5): Observer.record_hit and _settle_hit, the
hit slots, and the line written from a slot's template (record.templated_line).

A hit's slot is now found again without its key when the hit's inputs are the last one's
and its Age and ttl fall in the same whole seconds; a line's time text is kept for the
millisecond it writes. These tests hold both to the line and counts made in full
(_hit_record), where a memo that ignored an input would show: a whole second crossed, a
field that differs in one place, the slots cleared or the log reconfigured between hits."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import HttpVersion
from multidict import CIMultiDict, CIMultiDictProxy

from cacheproxy.config import LogConfig
from cacheproxy.observe import observer as observer_module
from cacheproxy.observe.observer import Observer, _hit_fields, _hit_record
from cacheproxy.observe.record import parse_line, to_json
from cacheproxy.observe.stats import Stats

WALL = 1_764_950_400.25  # time.time() at settle


# time.time() and time.perf_counter() for the observer: every hit ended at 100.0, before
# the settle that reads both.
_CLOCK = SimpleNamespace(time=lambda: WALL, perf_counter=lambda: 100.0)


def _msg(referer: str | None = None, agent: str | None = "curl/8",
         method: str = "GET", version: tuple[int, int] = (1, 1)) -> SimpleNamespace:
    fields = CIMultiDict(Host="a.example")
    if referer is not None:
        fields["Referer"] = referer
    if agent is not None:
        fields["User-Agent"] = agent
    return SimpleNamespace(method=method, version=HttpVersion(*version),
                           headers=CIMultiDictProxy(fields))


def _hit(msg: Any = None, *, host: str = "a.example", path: str = "/p",
         route: str = "default", secrets: frozenset[str] = frozenset(), status: int = 200,
         sent: int = 7, age: float = 1.5, ttl: float = 60.5, member: str = "c; hit",
         started: float = 99.0) -> tuple[Any, ...]:
    return (msg or _msg(), "::1", host, path, route, secrets, status, sent, age, ttl,
            member, started)


def _settled(observer: Observer, hits: list[tuple[Any, ...]], written: list[str]
             ) -> list[str]:
    """Settle hits one at a time (written gets their lines); the lines made in full from
    the same parts (_hit_record, as test_observe.py's template test)."""
    expected: list[str] = []

    async def run() -> None:
        for hit in hits:
            observer.record_hit(*hit)
            parts = observer._pending[-1][0]
            expected.append(to_json(_hit_record(_hit_fields(parts), WALL, 100.0)))
            observer.settle()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(observer_module, "time", _CLOCK)
        asyncio.run(run())
    return expected


def _observer() -> tuple[Observer, list[str]]:
    written: list[str] = []
    observer = Observer(LogConfig(format="off"), 0.0)
    observer.sink, observer.format = _sink(written), to_json
    return observer, written


def _sink(written: list[str]) -> Any:
    return SimpleNamespace(write_many=written.extend, flush=lambda: None, close=lambda: None)


def test_a_hit_like_the_last_but_for_one_input_gets_its_own_line_and_counts():
    """Hits settled one after another, each like the one before but for one input of its
    slot (the Age or ttl across a whole second, either way; the Referer, User-Agent, method,
    version, host, path, route, secrets, status, bytes, Cache-Status member): each line and
    the counts must be those made in full. A slot found again by the last hit's inputs
    that ignored one of them would write the last hit's value (a wrong Age, ttl, host... in
    the log, and /stats' per-route and per-host counts under the wrong name). Severity:
    medium (the request log and /stats wrong for a hit, the answer unaffected)."""
    same = _msg()
    hits = [
        _hit(same), _hit(same), _hit(same, age=1.999), _hit(same, age=2.0),
        _hit(same, age=1.0), _hit(same, age=0.999), _hit(same, age=0.0),
        _hit(same, age=-0.5), _hit(same, age=0.5), _hit(same, age=-1.5), _hit(same, age=-0.5),
        _hit(same, ttl=60.999), _hit(same, ttl=61.0), _hit(same, ttl=60.0),
        _hit(same, ttl=59.999), _hit(same, ttl=0.5), _hit(same, ttl=-0.0),
        _hit(same, ttl=-0.5), _hit(same, ttl=-1.0), _hit(same, ttl=-1.5),
        _hit(_msg(referer="https://r.example/?token=t")),
        _hit(_msg(referer="https://r.example/?token=t"), secrets=frozenset({"token"})),
        _hit(_msg(agent=None)), _hit(_msg(agent="curl/9")), _hit(_msg(method="HEAD")),
        _hit(_msg(version=(1, 0))), _hit(host="b.example"), _hit(path="/q"),
        _hit(route="other"), _hit(status=203), _hit(sent=8), _hit(member="c; hit; ttl=60"),
        _hit(same),
    ]
    observer, written = _observer()
    expected = _settled(observer, hits, written)
    assert written == expected
    counts = Stats(0.0)
    for line in expected:
        record = parse_line(line)
        assert record is not None
        counts.add(record)
    got = observer.stats
    assert [got.requests, got.by_route_cache, got.bytes_from_cache] == \
        [counts.requests, counts.by_route_cache, counts.bytes_from_cache]
    assert got.snapshot(0.0, {}, "v")["hosts"] == counts.snapshot(0.0, {}, "v")["hosts"]


def test_the_last_hits_slot_is_let_go_with_the_slots():
    """When the observer lets its hit slots go (a [log] reconfigured; more than it keeps),
    the slot remembered for the last hit goes with them: a reconfigured log's next hit of
    the same request must not be written from a slot made for the old [log], and the
    memo must not hold a slot the observer no longer keeps. Severity: low."""
    observer, written = _observer()
    _settled(observer, [_hit()], written)
    kept = observer._last_hit[-1]
    assert kept is not None and kept in observer._slots.values()
    observer.reconfigure(LogConfig(format="off"))
    assert observer._last_hit[-1] is None
    observer.sink, observer.format = _sink(written), to_json
    expected = _settled(observer, [_hit()], written)
    assert written[-1] == expected[-1]
    assert observer._last_hit[-1] is not kept
