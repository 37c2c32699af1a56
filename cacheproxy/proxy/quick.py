"""Hits answered where they were parsed: a GET or HEAD that storage answers is answered
by the connection itself, with no task and no driver run.

The decision is still the flow's: the request's facts and `lookup` (RFC 9111 §4) are the
functions the driver calls, and the answer is the driver's reply step (Driver.served:
the whole response, a 304 to the client's validators, a 206 or 416 for its Range, a
HEAD's head). A GET without DECISIVE_FIELDS on a key holding one response without Vary
is decided by `plain_serve`, lookup's exact answer for it, and replayed from the
entry's encoded head without building an Answer (unless it has an Origin: a CORS grant
is made per request, by the writer that sends an Answer's fields). What this module
decides is only whether a request needs anything the full path does beyond that; if it
might, it goes there, and the full path answers it as it always did:

- not a GET or HEAD (PURGE, OPTIONS *), or with a body, an Upgrade or an Expect;
- absolute-form or an intercepted CONNECT's request (forward mode's routing and gate);
- a request whose Via says it went round a loop (the full path's 508, hit or not);
- a route whose hotlink gate may refuse it (referer.protect_paths);
- anything but a `Serve` decision: misses, validations, stale-while-revalidate, 412s;
- a store that cannot answer without I/O (Redis without a synced memory layer).

A request lookup sends forward is still decided here once: its route, facts and
`Forward` go to the full path with it (`Planned`), which then starts at the driver's
forward step instead of routing and looking it up again, when storage still holds what
the decision was made on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from aiohttp import hdrs
from aiohttp.http_parser import RawRequestMessage
from multidict import CIMultiDictProxy, istr

from cacheproxy.http.cache_status import cache_status
from cacheproxy.http.fields import loops_back, times_via
from cacheproxy.http.flow import (
    DECISIVE_FIELDS,
    Forward,
    Serve,
    lookup,
    plain_serve,
    request_facts,
)
from cacheproxy.http.front_scheme import front_scheme
from cacheproxy.http.stored import CachedResponse
from cacheproxy.http.target import request_target
from cacheproxy.observe.outcome import Outcome, note_lookup, routed_outcome
from cacheproxy.proxy.downstream import Answer
from cacheproxy.proxy.respond import fresh_fields
from cacheproxy.proxy.routed import Planned, Route
from cacheproxy.proxy.routing import Plans, RoutePlan

if TYPE_CHECKING:
    from cacheproxy.proxy.handler import CacheProxy

MEMO_SIZE = 4096  # (Host, target) pairs whose route and key are kept
# ...holding so many characters at most (the Hosts, targets and keys): a client chooses
# their length, and 4,096 of 8 KiB Hosts and targets would hold some 150 MB.
MEMO_CHARS = 2 * 1024 * 1024
# The names as istr: multidict looks an istr up without case-folding it first (about a
# third of the time of a str, per lookup).
_DECISIVE = tuple(istr(name) for name in DECISIVE_FIELDS)
_made = tuple.__new__  # a NamedTuple made without its Python-level __new__ (every miss)
assert len(Planned._fields) == 4  # (hit() gives each by position)


def _plain(h: CIMultiDictProxy[str]) -> bool:
    """None of the fields lookup() reads (but Vary'd ones) is in h."""
    for name in _DECISIVE:  # noqa: SIM110 (a loop: no generator per request)
        if name in h:
            return False
    return True


# What the quick path knows of a request's field lines (kept with them: QuickHits._last).
_OTHER = 0  # lookup decides, from the request's facts (falsy: one test skips a Plain)
_PLAIN = 1  # none of DECISIVE_FIELDS, nor Origin: plain_serve decides a GET
# Not read yet: only a GET that plain_serve would answer asks (_plain_now), so a request
# going forward (every revalidation, miss and pass-through) skips its ten look-ups.
_UNREAD = 2


def _plain_word(h: CIMultiDictProxy[str]) -> int:
    """_PLAIN or _OTHER. (The CORS grant is made per request, by the writer that sends an
    Answer's fields: a request with an Origin is not replayed as stored.)"""
    return _PLAIN if _plain(h) and hdrs.ORIGIN not in h else _OTHER


def _plain_now(last: list[Any], h: CIMultiDictProxy[str]) -> bool:
    """The word on the lines last holds (h), read now and kept with them: _PLAIN?"""
    word = last[8] = _plain_word(h)
    return word == _PLAIN


class Plain(NamedTuple):
    """A GET plain_serve answers: the entry replayed as stored, with the fields of a
    fresh hit at (age, ttl)."""

    route: Route
    entry: CachedResponse
    age: float
    ttl: float


assert len(Plain._fields) == 4  # (hit() gives each by position)


class Quick(NamedTuple):
    """A request storage answers: its route, its account, the entry, and the answer the
    driver's reply step made (None: the entry's head and body, replayed as they are)."""

    plan: RoutePlan
    outcome: Outcome
    entry: CachedResponse
    answer: Answer | None


class QuickHits:
    def __init__(self, proxy: CacheProxy,
                 control: Callable[[RawRequestMessage], bool] = lambda msg: False) -> None:
        self.proxy = proxy
        self._control = control  # a request for the control plane (its target decides)
        self._plans: Plans | None = None
        self._routes: dict[tuple[str, ...], Route | None] = {}
        self._trusted = False  # proxy.trust_forwarded, as the plans were made with
        self._memo_chars = 0  # held by _routes (MEMO_CHARS)
        # The last request's route, facts, and lookup's decision for it on a key holding
        # nothing: [raw field lines, target, plans, route, method, facts, recently_passed,
        # decision, word on the lines], each part kept for the inputs it is made from (and
        # set in place as they are made: one list per new head). The route follows from
        # the Host and a trusted front's scheme (both among the lines), the target and
        # the plans (_route); request_facts reads the method, the fields (by
        # case-insensitive name) and the route's referer_sent alone, so the same lines
        # make the same facts. The lines are the same object: llhttp's message for the
        # same head bytes again is the very one it gave before (HeadMemo, in
        # server_protocol.py: a client on a keep-alive connection, a poller, a bench), so
        # identity tells the same lines without comparing them field by field, which
        # every request with a head of its own (an X-Request-Id) paid in full on a miss.
        # (A head equal but parsed anew, pipelined or after a body, is decided again.)
        # On a key holding no response, lookup reads the facts, the route's CacheSettings
        # and recently_passed alone (not the time, nor the key: there is no entry to age
        # or select; waited and passed_here are not set here), so the same inputs are
        # the same decision (RFC 9111 §4 still decided by lookup, once per change of any
        # of them). One entry: bounded by itself. Last, the word on the lines (_UNREAD
        # until a plain GET asks; the fields it reads are among them).
        self._last: list[Any] = [None] * 9
        self._passes = proxy.driver.collapser.passes  # (the driver's, made once)
        # The store's answer without I/O (the store is kept across reloads).
        self._peek: Callable[[str], tuple[CachedResponse, ...] | None] | None = \
            getattr(proxy.store, "peek", None)

    def hit(self, msg: RawRequestMessage, started: float) -> Quick | Plain | Planned | None:
        """How storage answers msg, if it does without the origin; Planned: it goes
        forward, as decided here; None: the full path decides."""
        method = msg.method
        if (method != "GET" and method != "HEAD") or msg.upgrade:
            return None
        h = msg.headers
        raw, path, plans = msg.raw_headers, msg.path, self.proxy.plans
        last = self._last
        if raw is last[0] and path == last[1] and plans is last[2]:
            # The same lines (Host, a trusted front's scheme) and target: the same route,
            # and the same word on them (cache_name, which Via is compared with below,
            # is the plans' config's).
            route, lines = last[3], last[8]
        else:
            if hdrs.EXPECT in h or (hdrs.VIA in h
                                    and loops_back(h.getall(hdrs.VIA), self.proxy.cache_name)):
                return None  # an Expect, or a loop: the full path's 508 (RFC 5842 §7.2)
            route, lines = self._route(h.get(hdrs.HOST), path, msg), _UNREAD
            self._last = last = [raw, path, plans, route, None, None, None, None, lines]
        if route is None:
            return None
        peek = self._peek
        variants = peek(route.key) if peek is not None else None
        if variants is None:  # only I/O can say (Redis without a synced memory layer)
            return None
        plan = route.plan
        now = time.time()
        if lines and method == "GET" and len(variants) == 1 \
                and not (entry := variants[0]).variant[0] \
                and (served := plain_serve(entry, now)) is not None \
                and (((kept := route.replayed) is not None and kept[0]() is entry)
                     or entry.field("content-encoding") is None) \
                and (lines == _PLAIN or _plain_now(last, h)):  # (_UNREAD: read it now)
            # lookup() would decide by freshness alone: plain_serve is its answer. (The
            # CORS grant is made by the writer's fields; a coded response by the client's
            # Accept-Encoding, lookup's coding_refused. An entry whose head the route
            # keeps was replayed as a Plain hit: it has no Content-Encoding.)
            return _made(Plain, (route, entry, *served))  # (Plain's __new__'s)
        cache = plan.cache
        if method == last[4]:
            facts = last[5]  # the same lines, method and route as the last request's
        else:
            facts = request_facts(method, h, has_body=False, referer_sent=cache.referer_sent)
            last[4], last[5], last[6] = method, facts, None  # (last[7]: of other facts)
        # (bypass() passes no body-less GET or HEAD by: lookup decides them all.)
        passed = self._passes(route.key, facts.selecting)
        if variants:
            d = lookup(facts, variants, now=now, route=cache, recently_passed=passed)
        elif last[6] is passed:
            d = last[7]  # a key holding nothing, decided for the same inputs
        else:
            d = lookup(facts, variants, now=now, route=cache, recently_passed=passed)
            last[6], last[7] = passed, d
        if type(d) is Forward:
            if hdrs.VIA in h and times_via(h.getall(hdrs.VIA), self.proxy.cache_name):
                # It came through this cache before: the full path decides (lookup's
                # passed_here: no collapse; at LOOP_HOPS, a loop's 508).
                return None
            return _made(Planned, (route, facts, d, variants))  # (Planned's __new__'s)
        if type(d) is not Serve:
            return None
        outcome = self._outcome(route, started)
        note_lookup(outcome, d)
        # As the driver replies (Driver.reply): the whole response, a 304, a 206 or 416.
        answer = self.proxy.driver.served(facts, outcome, d.entry, d.age, d.ttl)
        return Quick(plan, outcome, d.entry, answer)

    def still(self, planned: Planned) -> bool:
        """Whether planned still holds: the same config, and storage holds the same
        variants under its key (another request may have filled or evicted it since)."""
        peek = self._peek
        if peek is None or self.proxy.plans is not self._plans:
            return False
        now, then = peek(planned.route.key), planned.variants
        return now is not None and len(now) == len(then) \
            and all(a is b for a, b in zip(now, then, strict=True))

    @staticmethod
    def _outcome(route: Route, started: float) -> Outcome:
        """As CacheProxy._respond starts one for an origin-form request."""
        return routed_outcome(started, route.authority, route.target, route.route_name,
                              route.secrets)

    def fresh(self, entry: CachedResponse, outcome: Outcome) -> tuple[tuple[str, str], ...]:
        proxy = self.proxy
        assert outcome.age is not None
        return fresh_fields(outcome.age, outcome.cache_status(proxy.cache_name),
                            outcome.x_cache, proxy.local_via)

    def plain_fields(self, age: float, ttl: float) -> tuple[str, tuple[tuple[str, str], ...]]:
        """A Plain hit's Cache-Status member and fresh fields: what fresh_fields makes of
        the Outcome of a fresh hit (note_served: hit, from storage, nothing forward)."""
        proxy = self.proxy
        member = cache_status(proxy.cache_name, hit=True, ttl=ttl)
        return member, fresh_fields(age, member, "HIT", proxy.local_via)

    def _route(self, host: str | None, raw: str, msg: RawRequestMessage) -> Route | None:
        """As CacheProxy._respond routes an origin-form request, memoised per config;
        None for a target the full path answers (the control plane's, a hotlink gate's,
        one that is not origin-form)."""
        if host is None:
            return None
        plans = self.proxy.plans
        routes = self._routes
        if plans is not self._plans:  # a reload: new plans, new keys
            routes.clear()
            self._memo_chars = 0
            self._plans = plans
            self._trusted = plans.default.forward.trust_forwarded
        scheme = "http"
        memo: tuple[str, ...] = (host, raw)
        # A trusted front proxy's https is the request's scheme, as _respond takes it: its
        # key is another (and its fields say https); http, or no word, is this hop's.
        if self._trusted and front_scheme(msg.headers) == "https":
            scheme = "https"
            memo = (host, raw, scheme)
        try:
            return routes[memo]
        except KeyError:
            pass
        route = None
        parsed = request_target(raw, host)
        if parsed is not None and not parsed.absolute and not self._control(msg):
            plan = plans.match(parsed.authority, parsed.path)
            if not plan.route.referer.protect_paths:
                route = Route(plan, plan.cache_key(scheme, parsed.authority, parsed.path),
                               parsed.authority, parsed.path,
                               plan.route.name if plans.routed else "default", scheme)
        # (and the upstream URL a forward keeps in the route: plan.upstream + target)
        chars = len(host) + len(raw) + (0 if route is None else len(route.key)
                                         + len(route.authority) + 2 * len(route.target)
                                         + len(route.plan.upstream))
        if len(routes) >= MEMO_SIZE or self._memo_chars + chars > MEMO_CHARS:
            routes.clear()
            self._memo_chars = 0
        routes[memo] = route
        self._memo_chars += chars
        return route

