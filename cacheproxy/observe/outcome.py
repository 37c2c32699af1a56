"""What happened to one request: the cache's account of it, shown to the client in
Cache-Status / X-Cache and written to the request log once the response went out.

It is derived from the flow's decisions (the note_* functions below, the only places
that set the cache verdict) and from what the I/O measured (timings, bytes, whether a
store or a collapse wait really happened). Nothing reads it to choose a branch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from cacheproxy.http.cache_status import cache_status
from cacheproxy.http.flow import (
    Evict,
    Failed,
    Forward,
    Keep,
    Pass,
    PreconditionFailed,
    Refuse,
    Serve,
    ServeStale,
    Store,
    Update,
)
from cacheproxy.http.flow.decisions import Answered, Lookup

# RFC 9211 §2.2 forward reasons that pass the cache by (nginx's BYPASS).
_BYPASS = frozenset({"bypass", "method"})


# Cache-Status members made for answers without a ttl, by cache name and Outcome._inputs().
_MEMBERS: dict[tuple[str, tuple[object, ...]], str] = {}
_MAX_MEMBERS = 256
# ...and for answers from storage that went forward first, by name, the inputs and the
# ttl in whole seconds (Outcome.cache_status).
_TIMED_MEMBERS: dict[tuple[object, ...], str] = {}
# ...and the last of _MEMBERS handed out: [name, inputs, member] (one entry, three strings
# and a tuple of the eight inputs: nothing of a request's but those values).
_last_member: list[Any] = [None, (), ""]


@dataclass(slots=True)
class Outcome:
    # HIT, MISS, EXPIRED, STALE, REVALIDATED, UPDATING, BYPASS, ERROR, DENIED (nginx's words),
    # TUNNEL (a CONNECT: bytes passed through, nothing cached)
    status: str = "MISS"
    hit: bool = False            # answered from storage without going forward (RFC 9211 §2.1)
    fwd: str | None = None       # RFC 9211 §2.2 forward reason
    fwd_status: int | None = None
    stored: bool = False         # stored, or (in a header sent before the body) to be stored
    ttl: float | None = None
    collapsed: bool = False      # waited for another request's upstream answer
    went_on: bool = False        # ...and then sent one of its own (RFC 9211 §2.6: not reused)
    detail: str | None = None
    x_cache: str = "MISS"        # HIT: the body came from storage (a field, not a property
                                 # of another: one call fewer for every response's marks)
    age: float | None = None     # Age sent with a stored response
    upstream_ms: float | None = None  # time to the upstream's response head
    bytes_sent: int = 0          # body bytes sent to the client
    bytes_in: int | None = None  # bytes the client sent through a CONNECT tunnel
    route: str = "default"
    policy: str | None = None    # a CORS / Referer decision and its reason
    cache_status_sent: str = ""  # the Cache-Status member as sent
    cache_name: str = ""         # the name it was sent under
    host: str | None = None      # the authority the request was for (absolute-form too)
    target: str | None = None    # its path and query, origin-form
    secrets: frozenset[str] = frozenset()  # query parameters the log shows as REDACTED
    started: float = 0.0         # time.perf_counter() when the handler took the request
    _sent_from: tuple[object, ...] = ()  # what cache_status_sent was made from

    def cache_status(self, name: str) -> str:
        self.cache_name = name
        # (_inputs(), inlined: one call fewer for every response's marks)
        inputs = self._sent_from = (self.hit, self.fwd, self.fwd_status, self.stored,
                                    self.ttl, self.collapsed, self.went_on, self.detail)
        ttl = self.ttl
        if ttl is not None:
            if self.fwd is None:  # a hit's ttl seldom repeats: made each time
                member = self._member(name)
            else:
                # One that went forward and is served stored (a revalidation, mostly): its
                # ttl is the refreshed entry's lifetime, the same in whole seconds (all
                # RFC 9211 §2.5 shows of it) from one revalidation to the next. Keyed on
                # every input of _member, the ttl as floor() makes it (a ttl that is not
                # finite, which the member leaves out, keys as NaN: never found, made).
                key = (name, self.hit, self.fwd, self.fwd_status, self.stored, ttl // 1,
                       self.collapsed, self.went_on, self.detail)
                member = _TIMED_MEMBERS.get(key)
                if member is None:
                    member = self._member(name)
                    if len(_TIMED_MEMBERS) >= _MAX_MEMBERS:
                        _TIMED_MEMBERS.clear()
                    _TIMED_MEMBERS[key] = member
        else:  # a miss's member repeats from request to request: made once
            # The last one asked first: the same name (by identity: a route plan's) and
            # inputs compared item by item, without hashing the two tuples for the dict.
            last = _last_member
            if name is last[0] and inputs == last[1]:
                member = last[2]
            else:
                member = _MEMBERS.get((name, inputs))
                if member is None:
                    member = self._member(name)
                    if len(_MEMBERS) >= _MAX_MEMBERS:
                        _MEMBERS.clear()
                    _MEMBERS[name, inputs] = member
                _last_member[:] = name, inputs, member
        self.cache_status_sent = member
        return member

    def sent_again(self, name: str, member: str) -> None:
        """member, which cache_status(name) made for inputs equal to this Outcome's (the
        ttl in the same whole seconds), sent again with a head kept for them
        (client_conn.send_stored): recorded as cache_status records it."""
        self.cache_name = name
        self._sent_from = (self.hit, self.fwd, self.fwd_status, self.stored, self.ttl,
                           self.collapsed, self.went_on, self.detail)
        self.cache_status_sent = member

    def final_cache_status(self) -> str:
        """The member as the log shows it: what happened, which may differ from the header
        sent before the body (a fill the client aborted is not "stored")."""
        # (_inputs(), inlined: one call fewer for every request's line)
        if not self.cache_name or self._sent_from == (
                self.hit, self.fwd, self.fwd_status, self.stored, self.ttl, self.collapsed,
                self.went_on, self.detail):
            return self.cache_status_sent  # nothing changed since it was sent
        return self._member(self.cache_name)

    def _inputs(self) -> tuple[object, ...]:
        # (cache_status, sent_again, final_cache_status and Observer.record read the same
        # fields inline: change them together)
        return (self.hit, self.fwd, self.fwd_status, self.stored, self.ttl, self.collapsed,
                self.went_on, self.detail)

    def _member(self, name: str) -> str:
        return cache_status(
            name, hit=self.hit, fwd=self.fwd, fwd_status=self.fwd_status, stored=self.stored,
            ttl=self.ttl, collapsed=(not self.went_on) if self.collapsed else None,
            detail=self.detail,
        )


_new = object.__new__


def routed_outcome(started: float, host: str | None, target: str | None, route: str,
           secrets: frozenset[str], _new: Any = _new) -> Outcome:
    """Outcome(started=..., host=..., target=..., route=..., secrets=...): the Outcome of an
    origin-form request the quick path routed, made by position (every miss makes one:
    the dataclass's keyword __init__ cost about 7,200 instructions, this about 3,900).
    Every field is set here as the class's defaults say (tests/test_review_perfmiss_
    regressions.py holds the two equal, field by field)."""
    o = _new(Outcome)
    o.status = "MISS"
    o.hit = False
    o.fwd = None
    o.fwd_status = None
    o.stored = False
    o.ttl = None
    o.collapsed = False
    o.went_on = False
    o.detail = None
    o.x_cache = "MISS"
    o.age = None
    o.upstream_ms = None
    o.bytes_sent = 0
    o.bytes_in = None
    o.route = route
    o.policy = None
    o.cache_status_sent = ""
    o.cache_name = ""
    o.host = host
    o.target = target
    o.secrets = secrets
    o.started = started
    o._sent_from = ()
    return o


def forwarded_outcome(started: float, host: str | None, target: str | None, route: str,
                      secrets: frozenset[str], fwd: Forward) -> Outcome:
    """routed_outcome(...) then note_lookup(it, fwd): the Outcome of a quick miss, in one
    call (tests/test_review_perfobs3_regressions.py holds it equal to the two, field by
    field)."""
    o = routed_outcome(started, host, target, route, secrets)
    reason = o.fwd = fwd.reason
    # (note_lookup's Forward branch, inline: change both together)
    o.status = "BYPASS" if reason in _BYPASS else "EXPIRED" if fwd.stored else "MISS"
    return o


# The request's Outcome, for the request log (written once the response went out).
OUTCOME = web.RequestKey("cacheproxy.outcome", Outcome)


def note_served(o: Outcome, age: float, ttl: float) -> None:
    """A stored response answers (RFC 9211 §2.1: a hit when nothing went forward)."""
    o.hit = o.fwd is None
    o.x_cache = "HIT"
    o.age, o.ttl = age, ttl


def note_lookup(o: Outcome, d: Lookup) -> None:
    # (by exact type, the decisions having no subclasses: no call per kind tried; and a
    # request that goes forward, the kind noted here on every miss, tried first)
    if type(d) is Forward:  # (forwarded_outcome makes the same, inline)
        o.fwd = d.reason
        o.status = "BYPASS" if d.reason in _BYPASS else "EXPIRED" if d.stored else "MISS"
    elif type(d) is Serve:
        o.status = "HIT" if d.ttl > 0 else "STALE"
    elif type(d) is ServeStale:
        o.status, o.detail = "UPDATING", d.detail
    elif type(d) is Refuse:  # the cache's own 504 (only-if-cached): nothing went upstream
        o.status, o.detail = "ERROR", d.detail
    elif type(d) is PreconditionFailed:  # a 412 the stored response answered
        o.status, o.hit, o.ttl = "HIT", True, d.ttl


def note_answered(o: Outcome, d: Answered, now: float) -> None:
    """(A Refetch keeps the lookup's word: MISS for a miss, EXPIRED for a stored one.)"""
    if type(d) is Store:  # (by exact type, as note_lookup)
        o.stored = True
        o.ttl = d.entry.lifetime - d.entry.age(now)
    elif type(d) is Update:
        o.status = "REVALIDATED"
    elif type(d) is Pass:
        o.detail = d.reason
    elif type(d) is Keep or type(d) is Evict:
        o.detail = d.reason
        if d.serve is not None:
            o.status = "REVALIDATED"
    elif type(d) is ServeStale:
        o.status, o.detail = _on_error(d), d.detail


def _on_error(d: ServeStale) -> str:
    """A stored response answered for an origin that erred: STALE, or HIT when it is
    fresh (a reload the origin failed: nothing stale was served)."""
    return "HIT" if d.ttl > 0 else "STALE"


def note_failed(o: Outcome, d: Failed) -> None:
    if isinstance(d, ServeStale):
        o.status, o.detail = _on_error(d), d.detail
    else:
        o.status = "ERROR"
        if d.detail is not None:
            o.detail = d.detail
