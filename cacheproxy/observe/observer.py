"""One place where a finished request becomes a log line, counters and metrics.

It is aiohttp's access-log hook (called once the response has gone out), so every
request is logged: those the proxy's handler answered (which leave their Outcome on
the request), the admin API's, and those aiohttp's HTTP parser refused (400) before
any handler ran.

A request's record is made when it ends; it is counted and formatted at the end of
that event-loop iteration, together with the others that ended in it (settle). One
tight loop over a batch costs about half of what the same work costs spread between
the requests' I/O, where each one finds the CPU's caches cold (README, "The request log").
Whatever reads the counters settles first, so they are never behind."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.hdrs import HOST, REFERER, USER_AGENT

from cacheproxy.config import LogConfig
from cacheproxy.observe import gc_pauses
from cacheproxy.observe.outcome import OUTCOME, Outcome
from cacheproxy.observe.record import (
    Fields,
    HitLines,
    LogRecord,
    json_line,
    json_middle,
    json_tail,
    miss_line,
    miss_template,
    record_of,
    templated_line,
    to_json,
    to_text,
)
from cacheproxy.observe.sink import LogSink
from cacheproxy.observe.stats import HitSlot, MissSlot, Stats
from cacheproxy.policies.referer import redact

log = logging.getLogger("cacheproxy")
# HttpVersion is a named tuple; 0.0 is a refused head's whose request line was not read
# whole (proxy/client_conn.py _UNREAD).
_PROTOCOLS = {(1, 1): "HTTP/1.1", (1, 0): "HTTP/1.0", (0, 0): "-"}


class Observer:
    def __init__(self, config: LogConfig, started: float,
                 admin_paths: tuple[str, ...] = ()) -> None:
        self._stats = Stats(started)
        # (not yet settled)
        self._pending: list[tuple[Fields | LogRecord | _HitParts | _MissParts, bool]] = []
        self.admin_paths = admin_paths  # logged for the audit trail, not counted as traffic
        self.format = to_text if config.format == "text" else to_json
        self.sink: LogSink | None = None if config.format == "off" else LogSink(config.path)
        self._hit_lines = HitLines()  # (a hit of no slot: one whose line is long)
        self._slots: dict[tuple[object, ...], HitSlot] = {}  # fresh hits' by _settle_hit's key
        # The slot of the last fresh hit settled, with what it was found for: the key's
        # inputs but Age and ttl, and the ranges of Age and ttl whose whole seconds the key
        # holds (_settle_hit). One entry, a slot _slots holds (or held until a clear).
        self._last_hit: tuple[Any, ...] = _NO_LAST_HIT
        self._miss_slots: dict[tuple[object, ...], MissSlot] = {}  # the others', by record's
        # Keys of misses seen once (_new_miss_slot): a slot is made for a shape seen again,
        # so misses of distinct URLs (a crawl, a cache being filled) keep no slot each.
        self._miss_once: dict[tuple[object, ...], None] = {}
        # The proxy listener's client connections, for /metrics: (open now, the most
        # allowed, closed at that limit since start); set by the listener, read per scrape.
        self.connections: Callable[[], tuple[int, int, int]] = lambda: (0, 0, 0)
        # The proxy listener (set by it): while its list `gathered` is not empty, its
        # send_gathered is due at this loop iteration's end, and settles this batch after
        # its sends; the batch's first record then schedules no callback of its own (one
        # per request when requests come one at a time: about 3,000 instructions each).
        self.sender: Any = None
        # The query parameters every route's referer.strip_params names (the proxy's, made
        # anew at a reload): what an admin call's line redacts, no route being chosen.
        self.secrets: Callable[[], frozenset[str]] = frozenset
        gc_pauses.install()  # for /metrics: this process's collector pauses

    @property
    def stats(self) -> Stats:
        """The counters, with every request recorded so far in them."""
        self.settle()
        self._stats.settle_slots()
        return self._stats

    def runner_args(self, control: bool = False) -> dict[str, Any]:
        """What an AppRunner needs to call record() for every request. control: admin.listen's
        runner, where every request is an admin call (none is the proxy's traffic)."""
        observer = self

        class RequestLog(AbstractAccessLogger):
            def log(self, request: Any, response: web.StreamResponse, duration: float) -> None:
                observer.log_request(request, response, duration, control)

        return {"access_log_class": RequestLog,
                "access_log": logging.getLogger("cacheproxy.requests")}

    def log_request(self, request: Any, response: web.StreamResponse, duration: float,
                    control: bool = False) -> None:
        """A request aiohttp's server answered (the admin API, or the proxy served as an
        aiohttp handler). control: it came to admin.listen."""
        outcome = request.get(OUTCOME)
        if isinstance(response, web.Response):  # made here: the body is known
            body = response.body
            sent = isinstance(body, bytes) and request.method != "HEAD" \
                and response.status not in (204, 304)
            if outcome is not None:
                outcome.bytes_sent = len(body) if sent else 0  # type: ignore[arg-type]
        if outcome is not None:
            self.record(request, response.status, outcome, duration)
            return
        # The admin API, or a request the HTTP parser refused.
        # On admin.listen a path of no endpoint (a scanner's) is not traffic either: counted,
        # its 404s would show in the proxy's errors and hit ratio.
        admin = control or request.path.startswith(self.admin_paths)
        outcome = Outcome(status=_unhandled_status(request, response.status),
                          secrets=self.secrets())
        if admin:  # no query logged: a dashboard URL may carry a token
            outcome.route, outcome.target = "admin", request.path
        if isinstance(response, web.Response) and sent:
            outcome.bytes_sent = len(body)  # type: ignore[arg-type]
        self.record(request, response.status, outcome, duration, counted=not admin)

    def record(
        self, request: Any, status: int, outcome: Outcome, duration: float,
        counted: bool = True,
    ) -> None:
        """One line for a finished request: its counters, and the log line. Its fields
        are read now (record.Fields); the line and counts are made with the batch."""
        if outcome.started:  # the loop clock counts whole milliseconds (uvloop): finer here
            duration = time.perf_counter() - outcome.started
        h = request.headers
        version = request.version
        secrets = outcome.secrets
        age, ttl = outcome.age, outcome.ttl
        referer = h.get(REFERER)
        target = outcome.target or request.raw_path
        host = outcome.host or h.get(HOST, "-")
        agent = h.get(USER_AGENT)
        # (outcome.final_cache_status(), inlined: a call fewer per request)
        member = outcome.cache_status_sent
        if not outcome.cache_name or outcome._sent_from != (
                outcome.hit, outcome.fwd, outcome.fwd_status, outcome.stored, ttl,
                outcome.collapsed, outcome.went_on, outcome.detail):
            member = outcome.final_cache_status()
        age = None if age is None else int(age)
        ttl = None if ttl is None else int(ttl // 1)
        if counted and outcome.bytes_in is None and (self.sink is None
                                                     or self.format is to_json):
            # A miss of a shape seen before: its line from the shape's template, its
            # counts in the shape's slot (MissSlot). The key: every column of the line
            # but time, client, total_ms and upstream_ms (the path and the Referer as
            # sent, with the secrets they are redacted of). Not a tunnel's (bytes_in).
            key = (request.method, version, host, target, secrets, status, outcome.status,
                   outcome.bytes_sent, age, ttl, outcome.fwd_status, outcome.collapsed,
                   outcome.route, outcome.policy, referer, agent, member)
            slot = self._miss_slots.get(key)
            if slot is None:
                slot = self._new_miss_slot(key)
            if slot is not None:
                entry = (slot, time.time() - duration, request.remote or "-",
                         duration * 1000, outcome.upstream_ms)
                if self._pending:  # (_add's, but for the batch's first)
                    self._pending.append((entry, True))
                else:
                    self._add(entry, True)
                return
        if secrets or "@" in target:  # (else redact's answer is the target as it is)
            target = redact(target, secrets)  # type: ignore[assignment]
        fields = [
            time.time() - duration, request.remote or "-", request.method, host,
            target or "-",
            status, outcome.status, outcome.bytes_sent, duration * 1000, age, ttl,
            outcome.fwd_status, outcome.upstream_ms,
            outcome.collapsed, outcome.route, outcome.policy,
            _PROTOCOLS.get(version) or f"HTTP/{version.major}.{version.minor}",
            None if referer is None else redact(referer, secrets),
            agent, member, outcome.bytes_in,
        ]
        pending = self._pending
        if pending:  # (_add's, inline: a call fewer for every request but a batch's first)
            pending.append((fields, counted))
        else:
            self._add(fields, counted)

    def _new_miss_slot(self, key: tuple[Any, ...]) -> MissSlot | None:
        """The slot of misses of record()'s key, kept; None when its values are too long to
        keep (bounded as the hits' slots: at most _SLOTS_KEPT, of about _SLOT_LONGEST
        characters)."""
        if sum(len(v) for v in key if type(v) is str) > _SLOT_LONGEST:
            return None
        once = self._miss_once
        if once.pop(key, 0) is not None:  # (0: not seen before; None: seen once)
            # The first of its shape: its line is written from its fields, and its key
            # kept (at most _ONCE_KEPT keys, of at most _SLOT_LONGEST characters each).
            if len(once) >= _ONCE_KEPT:
                once.clear()
            once[key] = None
            return None
        (method, version, host, target, secrets, status, cache, sent, age, ttl, up,
         collapsed, route, policy, referer, agent, member) = key
        if secrets or "@" in target:
            target = redact(target, secrets)
        fields = [
            0.0, "-", method, host, target or "-", status, cache, sent, 0.0, age, ttl, up,
            None, collapsed, route, policy,
            _PROTOCOLS.get(version) or f"HTTP/{version.major}.{version.minor}",
            None if referer is None else redact(referer, secrets), agent, member, None]
        template = None
        if self.sink is not None:
            template = miss_template(record_of(fields))
            if sum(map(len, template)) > _SLOT_LONGEST:
                template = None
        slots = self._miss_slots
        if len(slots) >= _SLOTS_KEPT:
            slots.clear()  # (a slot's waiting counts are in Stats' list of them)
        slot = slots[key] = MissSlot(fields, template)
        return slot

    def record_hit(
        self, msg: Any, remote: str | None, host: str, path: str, route: str,
        secrets: frozenset[str], status: int, sent: int, age: float, ttl: float,
        member: str, started: float,
    ) -> None:
        """The line record() writes for a fresh hit (the Outcome of note_served with
        nothing forward), from its parts: the quick path's plain hits make no Outcome.
        path is the target as logged (redacted). The record itself is made with the
        batch (settle): only the time the request ended is taken now."""
        parts = (msg, remote, host, path, route, secrets, status, sent, age, ttl, member,
                 started, time.perf_counter())
        if self._pending:  # (_add's, but for the batch's first)
            self._pending.append((parts, True))
        else:
            self._add(parts, True)

    def upstream_answered(self, upstream_ms: float) -> None:
        """A request sent upstream on no client's behalf (a stale-while-revalidate
        refresh, RFC 5861 §3): no log line of its own, but the origin answered it, so
        its time counts among the upstream responses (/metrics)."""
        self._stats.add_upstream(upstream_ms)

    def _add(self, record: Fields | LogRecord | _HitParts | _MissParts,
             counted: bool) -> None:
        pending = self._pending
        if not pending:
            sender = self.sender
            if sender is not None and sender.gathered:  # (its send_gathered settles)
                pending.append((record, counted))
                return
            try:
                asyncio.get_running_loop().call_soon(self.settle)
            except RuntimeError:  # no loop (a caller outside the server): settle now
                pending.append((record, counted))
                self.settle()
                return
        pending.append((record, counted))

    def settle(self) -> None:
        """Count and write the records made since the last call, in order."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        stats, sink, format = self._stats, self.sink, self.format
        add, add_fields, add_miss = stats.add, stats.add_fields, stats.add_slot_miss
        # A fresh hit's JSON line is made from a template (HitLines), another's from its
        # fields (json_line), and their record only if the stats API shows it; the text
        # format is written from the record.
        lean = sink is None or format is to_json
        lines: list[str] = []
        wall = now = 0.0  # (read for the batch's first hit: a miss's line needs neither)
        for record, counted in pending:
            try:
                if type(record) is list:  # record()'s fields
                    if lean:
                        if counted:
                            add_fields(record)
                        if sink is not None:
                            lines.append(json_line(record))
                        continue
                    record = record_of(record)
                elif type(record) is tuple:  # record_hit's parts, or record()'s
                    if type(record[0]) is MissSlot:  # record()'s of a shape kept
                        slot, when, client, total_ms, up_ms = record
                        if lean:
                            add_miss(slot, when, up_ms,
                                     (MissSlot.record_of, slot, when, client, total_ms, up_ms))
                            if sink is not None:
                                template = slot.template
                                lines.append(
                                    json_line(slot.fields_of(when, client, total_ms, up_ms))
                                    if template is None else
                                    miss_line(template, when, client, total_ms, up_ms))
                            continue
                        record = slot.record_of(when, client, total_ms, up_ms)
                        # (the text format, set since: written from the record)
                    else:
                        if not now:
                            wall, now = time.time(), time.perf_counter()
                        if lean:
                            self._settle_hit(record, counted, wall, now, lines)
                            continue
                        record = _hit_record(_hit_fields(record), wall, now)
                if counted:
                    add(record)
                if sink is not None:
                    lines.append(format(record))
            except Exception:  # a bug of ours loses this line, not the batch
                log.exception("request log: a record could not be counted or written")
        if lines:
            sink.write_many(lines)  # type: ignore[union-attr]

    def _settle_hit(self, parts: _HitParts, counted: bool, wall: float, now: float,
                    lines: list[str]) -> None:
        """What settle does with record_hit's parts: the same counts and line as with
        _hit_record's record (tests/test_observe.py). Hits of one shape (all that the line
        is made of but time, client and duration) share a slot: its line's template, and
        its counts until they are read (Stats.add_slot_hit)."""
        (msg, remote, host, path, route, secrets, status, sent, age, ttl, member, started,
         ended) = parts
        h = msg.headers
        # The slot's key: these, and Age and ttl in whole seconds (the Referer as sent, with
        # the secrets it is redacted of: redacted once a slot).
        inputs = (msg.method, msg.version, h.get(REFERER), h.get(USER_AGENT), host, path,
                  route, secrets, status, sent, member)
        last = self._last_hit
        # The same inputs as the last hit's, its Age and ttl within the seconds of its key
        # (int(age), int(ttl // 1)): its slot, the key's hash and int()s not made again.
        if inputs == last[0] and last[1] <= age < last[2] and last[3] <= ttl < last[4]:
            slot = last[5]
        else:
            whole_age, whole_ttl = int(age), int(ttl // 1)
            key = (*inputs, whole_age, whole_ttl)
            slot = self._slots.get(key)
            if slot is None:
                slot = self._new_slot(key, parts)
                if slot is None:  # too long to keep
                    self._settle_hit_slowly(parts, counted, wall, now, lines)
                    return
            # The ranges whose floats int() makes these seconds of: [n, n + 1) for an Age
            # of n >= 0 (int() of a negative one is not its floor: none kept), and the
            # ttl's floor. Bounds past 2**53 make an empty range; NaN is in none.
            self._last_hit = (inputs, float(whole_age) if whole_age >= 0 else _INF,
                              whole_age + 1.0, float(whole_ttl), whole_ttl + 1.0, slot)
        client = remote or "-"
        when = wall - (now - started)
        if counted:
            self._stats.add_slot_hit(
                slot, when, (_slot_record, slot.shape, client, started, ended, wall, now))
        if self.sink is not None:
            template = slot.template
            if template is None:  # (a line too long for a template: made each time)
                lines.append(to_json(_slot_record(slot.shape, client, started, ended, wall,
                                                  now)))
            else:
                lines.append(templated_line(template, when, client, (ended - started) * 1000))

    def _new_slot(self, key: tuple[Any, ...], parts: _HitParts) -> HitSlot | None:
        """A slot for hits of this key, kept; None when its values are too long to keep
        (bounded as HitLines: at most _SLOTS_KEPT, of about _SLOT_LONGEST characters)."""
        if sum(len(v) for v in key if type(v) is str) > _SLOT_LONGEST:
            return None
        fields = _hit_fields(parts)
        shape = fields[:12]
        template = None
        if self.sink is not None:
            r = _hit_record(fields, 0.0, 0.0)
            template = (json_middle(r), json_tail(r))
            if len(template[0]) + len(template[1]) > _SLOT_LONGEST:
                template = None
        slots = self._slots
        if len(slots) >= _SLOTS_KEPT:
            slots.clear()  # (a slot's waiting counts are in Stats' list of them)
            self._last_hit = _NO_LAST_HIT
        slot = slots[key] = HitSlot(shape[6], shape[4], shape[8], shape, template)
        return slot

    def _settle_hit_slowly(self, parts: _HitParts, counted: bool, wall: float, now: float,
                           lines: list[str]) -> None:
        """_settle_hit of a hit of no slot: counted and written at once."""
        fields = _hit_fields(parts)  # (what can fail, before anything is counted)
        # shape: all that the line is made of but time, client and total_ms.
        shape, (client, started, ended) = fields[:12], fields[12:]
        host, route, sent = shape[4], shape[6], shape[8]
        when = wall - (now - started)
        if counted:  # (the record, if asked for, from the fields: not from the request)
            self._stats.add_hit(when, route, host, sent, partial(_hit_record, fields, wall, now))
        if self.sink is not None:
            lines.append(self._hit_lines.line(
                shape, when, client, (ended - started) * 1000,
                _hit_record, fields, wall, now))

    def reconfigure(self, config: LogConfig) -> None:
        """SIGHUP with a changed [log]: a new sink when the path or format changed,
        else the same file reopened (logrotate). Raises OSError, keeping the old
        sink, when the new file cannot be opened."""
        self.settle()  # what was recorded goes where the old [log] said
        old = self.sink
        if config.format == "off":
            self.sink = None
        elif old is None or old.path != config.path:
            self.sink = LogSink(config.path)  # may raise: nothing changed yet
        else:
            old.reopen()
            old = None
        self.format = to_text if config.format == "text" else to_json
        self._slots.clear()  # their templates were made for the old format
        self._last_hit = _NO_LAST_HIT
        self._miss_slots.clear()
        self._miss_once.clear()
        if old is not None:
            old.flush()
            # close() joins the writer thread: not on the loop.
            threading.Thread(target=old.close, name="cacheproxy-log-close", daemon=True).start()

    def reopen(self) -> None:  # SIGHUP
        self.settle()
        if self.sink is not None:
            self.sink.reopen()

    def flush(self) -> None:
        """Hand every line recorded so far to the writer thread."""
        self.settle()
        if self.sink is not None:
            self.sink.flush()

    def close(self) -> None:
        self.settle()
        if self.sink is not None:
            self.sink.close()


# record_hit's parts: msg, remote, host, path, route, secrets, status, sent, age, ttl,
# member, started, ended (time.perf_counter()).
_HitParts = tuple[Any, ...]
# record()'s of a miss of a kept shape: its MissSlot, the time it began (time.time()), the
# client, total_ms and upstream_ms.
_MissParts = tuple[Any, ...]
# _hit_fields: method, version, referer (redacted), user agent, host, path, route, status,
# sent, age, ttl (whole seconds), member, client, started, ended.
_HitFields = tuple[Any, ...]


def _hit_fields(parts: _HitParts) -> _HitFields:
    """What a hit's line is made of: record_hit's parts with the request replaced by what
    the line reads of it (a record made later keeps no other field of the request)."""
    (msg, remote, host, path, route, secrets, status, sent, age, ttl, member, started,
     ended) = parts
    h = msg.headers
    referer = h.get(REFERER)
    return (msg.method, msg.version, redact(referer, secrets),
            h.get(USER_AGENT), host, path, route, status, sent, int(age), int(ttl // 1),
            member, remote or "-", started, ended)


_INF = float("inf")
_NO_LAST_HIT: tuple[Any, ...] = ((), _INF, _INF, _INF, _INF, None)  # (ranges no float is in)

# Hit slots kept, and the characters of a slot's values and of its template at most:
# some 2 KB each with its key, about 5 MB in all.
_SLOTS_KEPT, _SLOT_LONGEST = 2048, 1024
# Keys of misses seen once kept (_new_miss_slot), at most: about 300 bytes each.
_ONCE_KEPT = 256


def _slot_record(shape: tuple[Any, ...], client: str, started: float, ended: float,
                 wall: float, now: float) -> LogRecord:
    return _hit_record((*shape, client, started, ended), wall, now)


def _hit_record(fields: _HitFields, wall: float, now: float) -> LogRecord:
    """record_hit's line, made at settle time: wall and now are time.time() and
    time.perf_counter() read together then, so the request's start in wall-clock time is
    wall - (now - started)."""
    (method, version, referer, agent, host, path, route, status, sent, age, ttl, member,
     client, started, ended) = fields
    return LogRecord(
        wall - (now - started), client, method, host, path, status, "HIT", sent,
        round((ended - started) * 1000, 3), age, ttl, None, None, False, route, None,
        _PROTOCOLS.get(version) or f"HTTP/{version.major}.{version.minor}", referer, agent,
        member, None)


def _unhandled_status(request: Any, status: int) -> str:
    if status in (401, 403):
        return "DENIED"  # the admin API refused it
    return "ERROR" if status >= 400 else "BYPASS"
