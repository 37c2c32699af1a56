"""Step 2: the upstream answered: what happens to the store, and what the client gets
(RFC 9111 §3, §3.2, §4.3.3-§4.3.4, §4.4; RFC 5861 §4; RFC 9110 §7.6.1)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from cacheproxy.http.cache_control import ResponseDirectives, parse_response_directives
from cacheproxy.http.cache_key import vary_fields, vary_values
from cacheproxy.http.dates import parse_http_date
from cacheproxy.http.fields import FieldList, values_of
from cacheproxy.http.flow.client import client_answer, range_answer
from cacheproxy.http.flow.decisions import (
    Answered,
    Evict,
    Forward,
    Freshen,
    Keep,
    Pass,
    Refetch,
    Store,
    Update,
)
from cacheproxy.http.flow.facts import CacheSettings, RequestFacts
from cacheproxy.http.flow.failure import stale_on_error
from cacheproxy.http.invalidation import SAFE_METHODS, invalidated_uris, same_origin_key
from cacheproxy.http.ranges import Partial
from cacheproxy.http.reuse import STALE_IF_ERROR_STATUSES
from cacheproxy.http.revalidation import (
    date_only,
    has_validator,
    head_matches,
    merge_304,
    selects,
)
from cacheproxy.http.storability import (
    Verdict,
    excluded_fields,
    is_event_stream,
    storability,
)
from cacheproxy.http.stored import (
    CachedResponse,
    all_values,
    first_value,
    make_stored_response,
    refreshed,
    with_date,
)
from cacheproxy.http.targeted import Governing, governing

Pairs = list[tuple[str, str]]


def answered(
    fwd: Forward,
    status: int,
    fields: Pairs,
    length: int | None,
    req: RequestFacts,
    route: CacheSettings,
    key: str,
    request_time: float,
    response_time: float,
) -> Answered:
    """The upstream's answer (status, fields, Content-Length) to what fwd sent. (By
    position or keyword: the driver passes them by position, as every miss comes here.)"""
    last = _last_pass
    if last is not None and last[0] is route and type(fields) is FieldList \
            and (last[1] is fwd or last[1] == fwd) and last[2] == status \
            and (last[3] is req or last[4] == req[2:7]):
        # The decision on the last answer that was not stored (a Pass), taken again when
        # every input it was made from is the same (_last_pass says which): a URL passed
        # on per request (no-store, private) gets the same answer each time, decided
        # once, not governed, parsed and judged again. Compared part by part, the
        # usual ones by identity (the quick path hands out the same route, Forward and
        # facts for the same request), and the answer's fields the verdict reads by
        # value; the rare ones (Expires, Set-Cookie, Vary, the targeted fields) in one
        # isdisjoint when the remembered answer had none of them.
        by_name = fields.by_name
        get = by_name.get
        if get("cache-control") == last[5] and (
                last[6] is _UNREAD or get("content-type") == last[6]) and (
                last[8].isdisjoint(by_name) if last[7] is None
                else tuple(map(get, last[9])) == last[7]):
            return last[10]
    seen = None
    if fwd.stored is not None:
        if status == 304:
            # _validated's Update for the same stored response and the same inputs, handed
            # out again (_last_update says which; here, not in _validated: two calls fewer
            # on every such 304, and _for_a_range leaves an Update as it is).
            last = _last_update
            if last is not None and last[0] is fwd.stored and last[1] is route \
                    and last[2] is req.directives and last[3] == req.authorization \
                    and last[4] is date_only and fwd.may_store and not fwd.siblings \
                    and last[5] == fields and last[6] <= request_time <= response_time:
                return last[7]
    elif fwd.may_store and type(fields) is FieldList:
        seen = fields  # (a Pass decided from them is remembered: _remember_pass)
    if fwd.head_of is not None and status == 200 and fwd.method == "HEAD":
        return _head_answered(fwd.head_of, fields, req, route, request_time, response_time)
    d = _answered(fwd, status, fields, length, req, route, key, request_time, response_time,
                  seen)
    # (req.range is None without req.bypass: read first, no property call per answer)
    if not req.bypass or req.range is None or not fwd.strips_client_conditionals:
        return d
    return _for_a_range(d, status, length, req)


def in_background(d: Answered, status: int, stored: CachedResponse | None) -> Answered:
    """What the answer to a background refresh (RFC 5861 §3), which no client waits for,
    does to the store: as any answer's (d), but a 5xx is taken "as if the server failed
    to respond" (RFC 9111 §4.3.3): the stored response stays, and the clients of the
    stale-while-revalidate window go on getting it, whatever freshness the error page
    carries (Varnish's VCL abandons a background fetch's 5xx)."""
    if status >= 500 and isinstance(d, Store):
        return Pass("status") if stored is None else Keep(stored, "status")
    return d


def grant_varies(fields: Pairs) -> Pairs:
    """Fetch §3.2 (CORS protocol and HTTP caches): a kept Access-Control-Allow-Origin that
    names an origin was made for the request's Origin, so the response varies on it, said
    or not: one origin's grant is then never selected for another's request. Applied to
    what is stored (a 304's or a HEAD's fields merged first, §3.2: their Vary, or its
    absence, must not stand for the stored one). A FieldList stays one, index and all."""
    grant = values_of(fields, "access-control-allow-origin")
    if not grant or all(v.strip() == "*" for v in grant):
        return fields
    vary = [m.strip().lower() for v in values_of(fields, "vary") for m in v.split(",")]
    if "origin" in vary or "*" in vary:
        return fields
    if type(fields) is FieldList:
        by_name = dict(fields.by_name)
        by_name["vary"] = [*by_name.get("vary", ()), "Origin"]
        return FieldList.indexed([*fields, ("Vary", "Origin")], by_name)
    return [*fields, ("Vary", "Origin")]


def _merged(stored: CachedResponse, fields: Pairs, route: CacheSettings) -> FieldList:
    """§3.2: a 304's fields merged into a stored response (with Vary: Origin for a grant
    that names an origin, in CORS passthrough)."""
    merged = FieldList(merge_304(stored, fields))
    return grant_varies(merged) if route.grant_varies else merged  # type: ignore[return-value]


def _in_stored_order(vary: tuple[str, ...] | None, stored: CachedResponse
                     ) -> tuple[str, ...] | None:
    """§4.1: the fields a 304's (or a HEAD's) merged Vary names, in the stored response's
    order when they are the same fields: a variant is told apart by its fields and their
    values (variant_id, in order), and the same fields in another order (a 304 naming
    fewer, the stored rest kept after them: revalidation._vary_kept) would store a second
    copy of the one variant beside the first."""
    if vary is not None and vary != stored.vary and frozenset(vary) == frozenset(stored.vary):
        return stored.vary
    return vary


def still_held(was: CachedResponse, held: tuple[CachedResponse, ...] | None) -> bool:
    """Whether the store still holds was, as read at lookup (compared by value: the Redis
    store reads new objects): a response a 304 or a HEAD's 200 freshens (§4.3.4, §4.3.5)
    is put only then. One stored since, from a newer answer, has not their validator to
    be selected by; one removed since (an invalidation, a purge) must not come back."""
    return any((v.variant[1], v.born, v.values) == (was.variant[1], was.born, was.values)
               for v in held or ())


def refresh_may_store(refreshed: CachedResponse, new: CachedResponse,
                      held: tuple[CachedResponse, ...] | None) -> bool:
    """RFC 5861 §3: a background refresh's new response (whole, its body come) replaces
    the response it refreshed only where the store still holds that one, or holds none of
    the new one's variant (§4.1), or only ones older by Date (§4: of several, the most
    recent by Date is the one to use). A response stored meanwhile from a foreground
    request sent after the refresh (a reload) is not overwritten by the refresh's older
    answer, as a 304 that comes late does not (freshened_still_held)."""
    if still_held(refreshed, held):
        return True
    date = parse_http_date(new.get("date")) or 0.0
    return all((parse_http_date(v.get("date")) or 0.0) < date for v in held or ()
               if (v.vary, v.vary_values) == (new.vary, new.vary_values))


def freshened_still_held(d: Update, held: tuple[CachedResponse, ...] | None
                         ) -> list[CachedResponse]:
    """§4.3.4: of the responses d's 304 freshened (the one validated, then d.others),
    those to store: where the store still holds the response as read at lookup (compared
    by value: the Redis store reads new objects). One stored since, from a newer answer,
    has not the 304's validator to be selected by: an older response freshened must not
    replace it; nor come back after an invalidation or a purge removed it."""
    was = d.stored
    if not d.others and held is not None and len(held) == 1 and held[0] is was:
        # The usual: the one variant held is the very response read at lookup (the memory
        # store's), so equal by value too: no key made and hashed per revalidation.
        return [d.entry]
    # (vary_values read as variant[1]: no call per response, on every revalidation)
    now = {(v.variant[1], v.born, v.values) for v in held or ()}
    return [new for was, new in ((d.stored, d.entry), *d.others)
            if (was.variant[1], was.born, was.values) in now]


def _for_a_range(d: Answered, status: int, length: int | None, req: RequestFacts
                 ) -> Answered:
    """RFC 9110 §14.2: the cache asked for the whole representation to answer a Range
    from it. A 200 it stores is read whole first (its length known, so it fits), then
    the range is cut from storage, or one range from the stream as it comes (Store.part:
    a media element's first `bytes=0-` starts before the file has arrived); one it will
    not store, or of unknown length, is asked for again with the client's Range, as the
    origin's to answer."""
    if isinstance(d, Store) and status == 200:
        if length is None:
            return Refetch(Forward("bypass", "GET"), outdates=d.outdates)
        part = None
        if client_answer(d.entry, req) is None:  # (§13.2.2: a 304 comes before a 206)
            answer = range_answer(d.entry, req, length)
            if answer is None:
                # The whole 200 is the client's answer (an If-Range that does not hold,
                # a Range ignored): it streams as any miss's does.
                return d
            if isinstance(answer, Partial) and len(answer.ranges) == 1:
                part = answer
        return replace(d, whole_first=True, part=part)
    if isinstance(d, Pass | Keep) and status == 200 and (isinstance(d, Pass)
                                                          or d.serve is None):
        # (its hit-for-pass kept: the URL's next Range goes as it is at once)
        return Refetch(Forward("bypass", "GET"), hit_for_pass=d.hit_for_pass)
    return d


def _answered(
    fwd: Forward, status: int, fields: Pairs, length: int | None, req: RequestFacts,
    route: CacheSettings, key: str, request_time: float, response_time: float,
    seen: FieldList | None = None,
) -> Answered:
    stored = fwd.stored
    if stored is not None and status == 304:
        return _validated(fwd, stored, fields, req, route, request_time, response_time)
    if stored is not None and status in STALE_IF_ERROR_STATUSES:
        stale = stale_on_error(stored, req, route, response_time)  # RFC 5861 §4
        if stale is not None:
            return stale
    if fwd.method not in SAFE_METHODS:  # §4.4: a non-error answer invalidates
        content_location = first_value(fields, "content-location")
        keys = tuple(invalidated_uris(fwd.method, status, key, first_value(fields, "location"),
                                      content_location))
        if fwd.method == "POST" and keys and same_origin_key(key, content_location) == key:
            # RFC 9110 §9.3.3: the answer may be the URI's new representation, for GET.
            d = _new_representation(fwd, None, status, fields, length, req, route, key,
                                    request_time, response_time, names_target=True)
            if isinstance(d, Store):
                return replace(d, invalidates=keys)
        return Evict(keys, "invalidated", invalidation=True) if keys else Pass(None)
    if not fwd.may_store:
        if stored is None and fwd.reason in ("bypass", "method"):
            return Pass(None)
        return _not_stored(stored, status, _NO_STORE_BY_REQUEST, req, key)
    return _new_representation(fwd, stored, status, fields, length, req, route, key,
                               request_time, response_time, seen=seen)


def _new_representation(
    fwd: Forward, stored: CachedResponse | None, status: int, fields: Pairs,
    length: int | None, req: RequestFacts, route: CacheSettings, key: str,
    request_time: float, response_time: float, *, names_target: bool = False,
    seen: FieldList | None = None,
) -> Store | Keep | Evict | Pass:
    """§3: a full response, stored when it may be (in place of stored, if any). seen:
    the answer's fields as received, when a Pass made from them may be remembered
    (answered; fields may gain grant_varies' Vary here)."""
    if route.grant_varies:
        fields = grant_varies(fields)
    # (a FieldList's index read in place: most answers have no Vary, and need no call)
    named = fields.by_name.get("vary") if type(fields) is FieldList else values_of(fields,
                                                                                 "vary")
    vary = vary_fields(", ".join(named)) if named else ()
    verdict, directives = _storable(fwd.method, status, fields, vary is None, req, route,
                                    names_target)
    typed = verdict.storable  # (Content-Type read only then: answered's memo says so)
    if typed and is_event_stream(first_value(fields, "content-type")):
        verdict = _EVENT_STREAM
    if not verdict.storable or vary is None:
        d = _not_stored(stored, status, verdict, req, key)
        if seen is not None and not req.bypass and type(d) is Pass:
            # (with req.bypass, answered's answer is _for_a_range's, not this one)
            _remember_pass(route, fwd, status, req, seen, d, typed)
        return d
    if req.nominated.intersection(vary):
        # RFC 9110 §7.6.1: the client's Connection made a field it varies on hop-by-hop, so
        # the origin did not see it: the answer was not made for this variant (§4.1).
        return _not_stored(stored, status, _CONNECTION_NOMINATED, req,
                           key)
    if route.rewritten.intersection(vary):
        return _not_stored(stored, status, _VARY_FORWARDED, req, key)
    if length is not None and length > route.max_object_bytes:
        return _not_stored(stored, status, _TOO_BIG, req, key)
    entry = make_stored_response(
        key=key, vary=vary, vary_values=vary_values(vary, req.selecting), status=status,
        pairs=fields, body=b"", request_time=request_time, response_time=response_time,
        shared=route.shared, heuristics=route.heuristics,
        excluded=excluded_fields(directives, route.policy) | route.excluded,
        targeting=route.targeting,
    )
    if not _reusable(entry):
        return _not_stored(stored, status, _NOT_REUSABLE, req, key)
    # (as _not_stored's Evict: a 200, any client's; one with credentials evicts nothing)
    return Store(entry, replaces=stored,
                 outdates=stored is not None and status == 200 and not req.credentials)


# What decides answered's answer when the answer is not stored and nothing is (a Pass,
# from _new_representation's verdict), for the one-entry memo there: the route (its store
# policy, targeting and grant_varies: by identity), the Forward (what was sent: its method,
# may_store, nothing validated), the status, the request's directives (§5.2.1: no-store;
# parsed once per value, so mostly compared by identity), Authorization (§3.5),
# credentials (hit-for-pass), has_body and bypass (RFC 9110 §14.2: a Range's answer is
# another decision), and the answer's fields the verdict reads: Cache-Control and the
# route's targeted fields (§5.2.2; RFC 9213: governing), Expires (§4.2.1), Set-Cookie
# (§3), Vary (§4.1: Vary: *) and Content-Type (the event stream). Not
# Access-Control-Allow-Origin: grant_varies adds Vary: Origin, which makes no Vary: * and
# changes no verdict. The rest (the request's Connection and selecting fields, the
# answer's length) counts only for an answer that may be stored, which is never
# remembered. One entry: a route passing a URL on per request finds its own; any other
# answer compares and goes on. It holds: (route, Forward, status, the RequestFacts (for
# its identity: one request's head, as the quick path's own memo holds), their [2:7],
# Cache-Control's values, Content-Type's (_UNREAD: not read, as by a verdict that was not
# storable, which the event stream's check follows), the rare fields' values (None: none
# of them), _rare_names(route) as a set and in order, the Pass).
_last_pass: tuple[object, ...] | None = None
assert RequestFacts._fields[2:7] == ("directives", "authorization", "credentials",
                                     "has_body", "bypass")  # (answered's req[2:7])
# The fields the verdict reads that nearly no answer has: Expires (§4.2.1), Set-Cookie
# (§3), Vary (§4.1), then the route's targeted fields (RFC 9213), in order and as a set;
# by the targeted fields (a route's configured list: the bound is only a guard).
_RARE = ("expires", "set-cookie", "vary")
_RARE_NAMES: dict[tuple[str, ...], tuple[tuple[str, ...], frozenset[str]]] = {}


def _rare_names(route: CacheSettings) -> tuple[tuple[str, ...], frozenset[str]]:
    targeted = route.targeting.fields
    names = _RARE_NAMES.get(targeted)
    if names is None:
        names = (*_RARE, *targeted), frozenset((*_RARE, *targeted))
        if len(_RARE_NAMES) < 64:
            _RARE_NAMES[targeted] = names
    return names


def _remember_pass(route: CacheSettings, fwd: Forward, status: int, req: RequestFacts,
                   fields: FieldList, d: Pass, typed: bool) -> None:
    """_last_pass: d, and every input it was decided from (fields: as received; typed:
    whether Content-Type was read, which only a storable verdict does)."""
    global _last_pass
    by_name = fields.by_name
    get = by_name.get
    names, rare_set = _rare_names(route)
    rare = None if rare_set.isdisjoint(by_name) else tuple(map(get, names))
    _last_pass = (route, fwd, status, req, req[2:7], get("cache-control"),
                  get("content-type") if typed else _UNREAD, rare, rare_set, names, d)


_UNREAD = object()  # (_last_pass: a field the decision did not read)


# §4.1: the answer varies on a field this proxy writes for each client (X-Forwarded-For:
# its address), which the request's own fields cannot match: no stored response would
# be selected for the client it was made for alone (Varnish keys it on the rewritten value).
_VARY_FORWARDED = Verdict(False, "vary-forwarded")
_EVENT_STREAM = Verdict(False, "event-stream")  # (is_event_stream)
# (made once: a frozen Verdict costs some 5,000 instructions to make)
_NO_STORE_BY_REQUEST = Verdict(False, "no-store", by_request=True)  # §5.2.1.5
_CONNECTION_NOMINATED = Verdict(False, "connection-nominated", by_request=True)
_TOO_BIG = Verdict(False, "too-big")
_NOT_REUSABLE = Verdict(False, "not-reusable")


def _storable(
    method: str, status: int, fields: Pairs, vary_star: bool, req: RequestFacts,
    route: CacheSettings, names_target: bool = False, *, rules: Governing | None = None,
    directives: ResponseDirectives | None = None,
) -> tuple[Verdict, ResponseDirectives]:
    """§3, with the directives this cache follows (RFC 9213 §2.2: a targeted field's,
    which set Cache-Control and Expires aside). rules, directives: governing(fields) and
    its parsed Cache-Control, when the caller has them already."""
    if rules is None:
        rules = governing(fields, route.targeting)
    if directives is None:
        directives = parse_response_directives(rules.cache_control)
    if type(fields) is FieldList:  # (its index read in place: two calls fewer per answer)
        by_name = fields.by_name
        has_expires = rules.expires_applies and bool(by_name.get("expires"))
        has_set_cookie = bool(by_name.get("set-cookie"))
    else:
        has_expires = rules.expires_applies and first_value(fields, "expires") is not None
        has_set_cookie = first_value(fields, "set-cookie") is not None
    # (by position, in storability's order: ten keywords cost every answer a thousand
    # instructions more)
    return storability(method, status, req.directives, directives, req.authorization,
                       has_expires, has_set_cookie, vary_star, route.policy,
                       names_target), directives


def _reusable(entry: CachedResponse) -> bool:
    """No freshness and nothing to revalidate with: storing it would be waste."""
    d = entry.directives
    return entry.lifetime > 0 or has_validator(entry) or bool(
        d.stale_if_error or d.stale_while_revalidate)


def _not_stored(
    stored: CachedResponse | None, status: int, verdict: Verdict, req: RequestFacts, key: str,
    serve: CachedResponse | None = None,
) -> Keep | Evict | Pass:
    """Only the response's own reasons may remove what is stored (§5.2.1.5: a request's
    no-store "does not apply to the already stored response"): a new representation
    (200) that may not be stored replaces the stored ones by removing them. Not when the
    request carried credentials: a private answer made for one user (§3.5) says nothing
    of the shared one, and any client could otherwise evict it."""
    reason = verdict.reason
    # Only when the reason holds for any request for the URL.
    anyones = not (verdict.by_request or req.credentials or req.directives.no_store)
    erred = status >= 500  # the origin's state, not the URL's (Pass.erred)
    hit_for_pass = anyones and not erred
    if stored is None:
        # (a frozen value, the same for the same reason: made once, not per pass-through)
        made = _PASSES.get((reason, hit_for_pass, erred))
        if made is None:
            made = Pass(reason, hit_for_pass, erred)
            if len(_PASSES) < _PASSES_MAX:
                _PASSES[reason, hit_for_pass, erred] = made
        return made
    if anyones and (status == 200 or serve is not None):
        return Evict((key,), reason, serve, hit_for_pass)
    return Keep(stored, reason, serve, hit_for_pass, erred)


# Pass decisions by (reason, hit_for_pass, erred): the reasons are the Verdicts' few
# names, so the bound is only a guard.
_PASSES: dict[tuple[str, bool, bool], Pass] = {}
_PASSES_MAX = 64


def _head_answered(
    stored: CachedResponse, fields: Pairs, req: RequestFacts, route: CacheSettings,
    request_time: float, response_time: float,
) -> Freshen | Evict | Pass:
    """§4.3.5: a 200 to a HEAD updates the stored GET response it could have chosen (its
    fields as a 304's would, §3.2) when validators and Content-Length match; otherwise that
    response is stale. The HEAD's answer goes to the client as it is."""
    if req.directives.no_store:  # §5.2.1.5: no part of a response to it is stored
        return Pass(None)
    if not head_matches(stored, fields):
        return Freshen(stored.replace(lifetime=0.0), stored)
    # §3.2; with its index by name: the rules below look fields up in it
    merged = _merged(stored, with_date(fields, response_time), route)
    vary = _in_stored_order(vary_fields(all_values(merged, "vary")), stored)
    verdict, directives = _storable("GET", stored.status, merged, vary is None, req, route)
    if verdict.storable and vary is not None and route.rewritten.intersection(vary):
        verdict = _VARY_FORWARDED
    if not verdict.storable or vary is None:
        # The request's reason leaves it be; the response's (no-store, private, ...) evicts,
        # unless the request carried credentials: an answer made for one user says
        # nothing of the shared one (§3.5; as _not_stored for a GET).
        return Pass(verdict.reason) if verdict.by_request or req.credentials else Evict(
            (stored.key,), verdict.reason)
    return Freshen(make_stored_response(
        key=stored.key, vary=vary, vary_values=vary_values(vary, req.selecting),
        status=stored.status, pairs=merged, body=stored.body, request_time=request_time,
        response_time=response_time, shared=route.shared, heuristics=route.heuristics,
        excluded=excluded_fields(directives, route.policy) | route.excluded,
        targeting=route.targeting,
    ), stored)


def _validated(
    fwd: Forward, stored: CachedResponse, fields: Pairs, req: RequestFacts,
    route: CacheSettings, request_time: float, response_time: float,
) -> Answered:
    """§4.3.3-§4.3.4: a 304 freshens the stored response it selects; the merged response
    is judged like a new one (§3): a 304 may bring Set-Cookie, private fields or no-store."""
    m = _merged_304(stored, fields, response_time, route, date_only)
    if m is None:  # §4.3.4: a 304 for another representation
        return Refetch(Forward(fwd.reason, "GET" if fwd.may_store else req.method,
                               may_store=fwd.may_store))
    fields, merged, date_changed, rules, vary = m
    if date_changed:
        view = refreshed(
            stored, merged, request_time=request_time, response_time=response_time,
            shared=route.shared, heuristics=route.heuristics, targeting=route.targeting,
            rules=rules)
    else:
        view = make_stored_response(
            key=stored.key, vary=stored.vary, vary_values=stored.vary_values,
            status=stored.status, pairs=merged, body=stored.body, request_time=request_time,
            response_time=response_time, shared=route.shared, heuristics=route.heuristics,
            targeting=route.targeting, rules=rules,
        )
    if not fwd.may_store:
        return _not_stored(stored, 304, _NO_STORE_BY_REQUEST, req, stored.key, view)
    verdict, excluded = _judged(m, stored.status, req, route, view.directives)
    vary = _in_stored_order(vary, stored)
    if verdict.storable and vary is not None and route.rewritten.intersection(vary):
        verdict = _VARY_FORWARDED
    if not verdict.storable or vary is None:
        return _not_stored(stored, 304, verdict, req, stored.key, view)
    if len(stored.body) > route.max_object_bytes:
        return _not_stored(stored, 304, _TOO_BIG, req, stored.key, view)
    values = vary_values(vary, req.selecting)
    if not excluded and (vary, values) == stored.variant:
        entry = view  # made from the very same inputs: the same response
    else:
        entry = make_stored_response(
            key=stored.key, vary=vary, vary_values=values, status=stored.status,
            pairs=merged, body=stored.body, request_time=request_time,
            response_time=response_time, shared=route.shared, heuristics=route.heuristics,
            excluded=excluded, targeting=route.targeting, rules=rules,
        )
    if not _reusable(entry):
        return _not_stored(stored, 304, _NOT_REUSABLE, req, stored.key, view)
    if not fwd.siblings:  # (the usual: no other variant has the stored strong tag)
        d = Update(view, entry, stored)
        if entry is stored and not vary and m is _last_merged_made() \
                and merged.by_name.get("age") is None:
            _remember_update(stored, route, req, fields, d)
        return d
    tag = first_value(fields, "etag")
    if tag is None or tag.startswith("W/"):
        return Update(view, entry, stored)
    # §4.3.4: the 304's strong entity tag identifies every stored response that has it.
    others = tuple(
        (other, make_stored_response(
            key=other.key, vary=other.vary, vary_values=other.vary_values,
            status=other.status, pairs=_merged(other, fields, route), body=other.body,
            request_time=request_time, response_time=response_time, shared=route.shared,
            heuristics=route.heuristics, excluded=excluded, targeting=route.targeting))
        for other in fwd.siblings if other.etag == tag)
    return Update(view, entry, stored, others)


# The last Update that refreshed a stored response into itself (a 304 repeating its Date
# and changing nothing: refreshed), with every input it was decided from, for the next
# 304 to the same stored response to be handed it again (answered) rather than merged, judged and
# refreshed anew (a URL revalidated on every request): the stored response (compared by
# identity, as the memory store holds it; held, as the Update holds it, so only with a
# body of up to _UPDATE_BODY_MAX: what outlives an eviction, beside cache.max_bytes, is
# that much at most), the route's
# settings (§3 storability, heuristics, targeting, max_object_bytes, rewritten), the
# request's directives (§5.2.1, parsed once per value: identity) and Authorization (§3.5),
# the merge rule (date_only as _validated reads it), the 304's fields as received (by
# value: §4.3.4 selection and §3.2 merge), and the stored Date, which is the stored
# response's born: a refresh at these times is born there too (§4.2.3, no Age field:
# corrected_initial_age is then response_time - Date, apparent_age being at least the
# response delay, and born the Date itself) when it was requested at or after that Date
# and answered after it was requested (the figures are exact: the times are within a
# factor two of each other); at other times refreshed decides in full. Only when
# the Forward may store and validated no sibling variants (§4.3.4, others), and the
# stored response has no Vary (vary_values reads the request's fields): the Update then
# depends on nothing else. One entry, so bounded.
_last_update: tuple[CachedResponse, CacheSettings, object, bool, object, list[object],
                    float, Update] | None = None
_UPDATE_BODY_MAX = 64 * 1024


def _remember_update(stored: CachedResponse, route: CacheSettings, req: RequestFacts,
                     fields: Pairs, d: Update) -> None:
    if len(stored.body) > _UPDATE_BODY_MAX:
        return
    date = parse_http_date(stored.field("date"))
    if date is None or date != stored.born:
        return
    global _last_update
    _last_update = (stored, route, req.directives, req.authorization, date_only,
                    list(fields), date, d)


def _last_merged_made() -> _Merged304 | None:
    last = _last_merged
    return None if last is None else last[6]


# What a 304's fields make of a stored response's (§3.2, §4.3.4), before the request and
# the times are considered (a plain tuple: made on every 304 the memo below misses):
# the 304's fields with a Date (with_date), by name; the stored response's with the
# 304's merged in (read, never changed); whether only the Date changed (date_only: the
# entry is refreshed); the directives followed (RFC 9213 §2.2, governing); and
# vary_fields of the merged Vary (None: Vary: *).
_Merged304 = tuple[FieldList, FieldList, bool, Governing, "tuple[str, ...] | None"]


# The last _Merged304 made, with what it was made from: the stored field tuples (held,
# so compared by identity), the route's targeting and grant_varies, the merge rule, the
# 304's fields as received (compared by value) and the result.
_last_merged: tuple[tuple[str, ...], tuple[str, ...], object, bool, object, list[object],
                    _Merged304] | None = None


def _merged_304(stored: CachedResponse, fields: Pairs, response_time: float,
                route: CacheSettings, rule: Callable[[CachedResponse, FieldList],
                                                     FieldList | None]
                ) -> _Merged304 | None:
    """§4.3.4: whether the 304 (fields) selects stored (None: it does not), and the
    fields stored then takes. Remembered for the last stored field tuples, route
    settings and 304 fields: a URL revalidated on every request gets the same 304, and
    the entry it refreshes holds the very tuples of the one before (stored.refreshed)
    while the 304's Date repeats the stored one; its fields are then compared as they
    came, not selected, dated, merged and read again (bench/instructions.py: a
    revalidation 492,000 -> 471,000 instructions). rule: date_only as the caller reads
    it (part of the key: tests/rfc/test_refresh_rule.py swaps it for the full merge)."""
    global _last_merged
    last = _last_merged
    if last is not None and last[0] is stored.values and last[1] is stored.names \
            and last[2] is route.targeting and last[3] == route.grant_varies \
            and last[4] is rule and last[5] == fields:
        return last[6]
    received = fields
    if type(fields) is not FieldList:  # (by name, from here on: selects too)
        fields = FieldList(fields)
    if not selects(stored, fields):
        return None
    dated = with_date(fields, response_time)
    if type(dated) is not FieldList:
        dated = FieldList(dated)
    merged = rule(stored, dated)
    if merged is not None and route.grant_varies and grant_varies(merged) is not merged:
        merged = None  # (a stored grant without Vary: Origin: not only Date changes)
    date_changed = merged is not None  # the common 304: only Date changes
    if merged is None:
        # §3.2; with its index by name: the rules below look fields up in it
        merged = _merged(stored, dated, route)
    made = (dated, merged, date_changed, governing(merged, route.targeting),
            vary_fields(all_values(merged, "vary")))
    # Kept when the refreshed entry keeps the stored tuples (a 304 repeating the stored
    # Date: refreshed), for the next 304 to find: one that changes them leaves a stored
    # response that nothing will revalidate again as it was read (the one stored next
    # holds new tuples). Not for a 304 without a valid Date: with_date gave it the time
    # of receipt, which differs each time.
    if date_changed and dated is fields and dated.by_name["date"][0] == stored.field("date"):
        _last_merged = (stored.values, stored.names, route.targeting, route.grant_varies,
                        rule, list(received), made)
    return made


# The last _judged: what it was judged from (the _Merged304 itself, held, and the rest by
# identity or value) and its verdict and excluded fields.
_last_judged: tuple[_Merged304, int, object, bool, CacheSettings, ResponseDirectives,
                    Verdict, frozenset[str]] | None = None


def _judged(m: _Merged304, status: int, req: RequestFacts, route: CacheSettings,
            directives: ResponseDirectives) -> tuple[Verdict, frozenset[str]]:
    """§3 for the merged response of a 304 (m, of a stored response of this status):
    whether it may be stored, and the fields left out of it (excluded_fields and the
    route's). Remembered for the last m, request directives and Authorization, route and
    directives (which the 304's step takes again for a 304 repeating the last one,
    _merged_304, and for the requests of the same directives: refreshed hands out the
    same directives object for the same figures), rather than judged per 304 (about 8,000
    instructions)."""
    global _last_judged
    last = _last_judged
    if last is not None and last[0] is m and last[1] == status \
            and last[2] is req.directives and last[3] == req.authorization \
            and last[4] is route and last[5] is directives:
        return last[6], last[7]
    merged, rules, vary = m[1], m[3], m[4]
    verdict, _ = _storable("GET", status, merged, vary is None, req, route, rules=rules,
                           directives=directives)
    excluded = excluded_fields(directives, route.policy) | route.excluded
    _last_judged = (m, status, req.directives, req.authorization, route, directives,
                    verdict, excluded)
    return verdict, excluded
