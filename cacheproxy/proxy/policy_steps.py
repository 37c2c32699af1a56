"""The CORS and Referer policies applied around the cache. `cacheproxy.policies` decides;
this module applies its decisions to requests and responses:

- inbound, before the cache lookup: the hotlink gate (a refused request never sees a stored
  asset) and CORS preflights, which the proxy answers itself;
- towards the upstream: the Referer it may see (trimmed, stripped of secret parameters),
  applied as the request's fields are made (forwarding.request_fields), on every route:
  a user:password@ and a fragment are dropped whatever strip_params holds;
- outbound, on every response of a proxied request as its head is sent: the CORS grant
  for the request's Origin and Referrer-Policy. The proxy's are never stored, so a response
  fetched for origin A is never replayed to origin B with A's grant. The upstream's own CORS
  fields are stored as it sent them (one naming an origin with Vary: Origin) and the route's
  cors.mode applies to them here, as each response goes out: a reload switching it changes
  the next hit.
"""

from __future__ import annotations

from collections.abc import Container

from aiohttp import web
from multidict import CIMultiDict

from cacheproxy.observe.outcome import OUTCOME, Outcome
from cacheproxy.policies.cors import RESPONSE_FIELDS, Denial, is_preflight, merge_vary, preflight
from cacheproxy.policies.cors import outbound as cors_outbound
from cacheproxy.policies.referer import names_a_policy, refusal, response_policy_fields
from cacheproxy.proxy.downstream import Answer, ClientMessage, text_answer
from cacheproxy.proxy.respond import mark
from cacheproxy.proxy.routing import PLAN, RoutePlan

ANSWERED_HERE = web.RequestKey("cacheproxy.preflight", bool)  # carries its own CORS fields


def inbound(
    request: ClientMessage, plan: RoutePlan, outcome: Outcome, target: str, authority: str,
    cache_name: str, via: str,
) -> Answer | None:
    """The answer to a request the policies stop or answer themselves, else None."""
    route = plan.route
    h = request.headers
    if route.referer.protect_paths:  # nginx valid_referers, before any cache lookup
        denied = refusal(route.referer, target, h.get("Referer"), authority, route.host)
        if denied is not None:
            outcome.status = "DENIED"
            outcome.policy = outcome.detail = denied.reason
            headers = CIMultiDict(denied.fields)
            mark(headers, outcome, cache_name, via)
            return Answer(denied.status, headers, denied.body)
    cors = route.cors
    origin = h.get("Origin")
    if cors.enabled and is_preflight(request.method, origin,
                                     h.get("Access-Control-Request-Method")):
        # Fetch §3.2.3: the proxy answers the preflight; the upstream never sees it.
        assert origin is not None
        answer = preflight(cors, origin, h["Access-Control-Request-Method"],
                           h.get("Access-Control-Request-Headers"),
                           h.get("Access-Control-Request-Private-Network") == "true")
        request[ANSWERED_HERE] = True
        if isinstance(answer, Denial):
            outcome.status = "DENIED"
            outcome.policy = outcome.detail = answer.reason
            headers = CIMultiDict({"Cache-Control": "no-store", "Vary": "Origin"})
            mark(headers, outcome, cache_name, via)
            return text_answer(403, f"403 CORS preflight refused ({answer.reason})\n", headers)
        outcome.status, outcome.policy = "BYPASS", "cors-preflight"
        headers = CIMultiDict(answer.fields)
        mark(headers, outcome, cache_name, via)
        return Answer(204, headers)
    return None


async def outbound(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """aiohttp on_response_prepare (the proxy served by aiohttp.web): as outbound_fields."""
    outbound_fields(request, response.headers, response.status)


def outbound_fields(request: ClientMessage, headers: CIMultiDict[str], status: int) -> None:
    """The CORS grant and Referrer-Policy, on the way out (for a response of status), and
    the targeted fields this cache consumed removed."""
    plan = request.get(PLAN)
    if plan is None:  # the admin API, or a request refused before routing
        return
    added = appended_fields(plan, headers, status)
    if added is not None:  # (the common case: nothing read, nothing removed)
        headers.extend(added)
        return
    route = plan.route
    for name in plan.removed:  # consumed by this cache (Surrogate-Control), RFC 9213 §2.2
        if name in headers:  # (a look-up, no call, for the many answers without)
            headers.popall(name, None)
    cors = route.cors
    if cors.enabled and not request.get(ANSWERED_HERE):
        origin = request.headers.get("Origin")
        grant = headers.getall("Access-Control-Allow-Origin", ())
        upstream_has_cors = any(name in headers for name in RESPONSE_FIELDS)
        step = cors_outbound(cors, origin, upstream_has_cors,
                             any(value.strip() != "*" for value in grant))
        if step is not None:
            if step.strip_upstream:
                for name in RESPONSE_FIELDS:
                    headers.popall(name, None)
            headers.extend(step.add)
            if step.vary:
                _vary_on_origin(headers)
            # (passthrough with the upstream's own CORS fields: its answer, not a refusal)
            passed = upstream_has_cors and not cors.override
            if origin is not None and not step.add and not passed \
                    and not _same_origin(origin, request):
                outcome = request.get(OUTCOME)
                if outcome is not None and outcome.policy is None:
                    outcome.policy = "cors-origin"  # no grant: the browser withholds it
    elif not cors.enabled and "Access-Control-Allow-Origin" in headers \
            and any(v.strip() != "*" for v in headers.getall("Access-Control-Allow-Origin")):
        # CORS off: the upstream's grant goes on as it is, and one naming an origin varies
        # on it (Fetch §3.2), as when it is stored (grant_varies): a cache further on, the
        # browser's too, must not replay it to another origin (README).
        _vary_on_origin(headers)
    # (an upstream field no browser applies sets no policy: ours replaces it, §8.1)
    upstream_policy = "Referrer-Policy" in headers \
        and names_a_policy(headers.getall("Referrer-Policy"))
    policy = response_policy_fields(route.referer, upstream_policy, status=status)
    if policy:  # W3C Referrer Policy §4.1: ours, where none was set or when overriding
        headers.popall("Referrer-Policy", None)
        headers.extend(policy)


def appended_fields(plan: RoutePlan, names: Container[str], status: int
                    ) -> list[tuple[str, str]] | None:
    """What outbound_fields does to a response whose fields hold names (lower-cased, or a
    CIMultiDict) when all it does is append: the fields it appends (our Referrer-Policy,
    W3C Referrer Policy §4.1). None when it has more to do: CORS on, a field this cache
    consumed (RFC 9213 §2.2), or one it reads (an upstream's CORS grant, Fetch §3.2; its
    Referrer-Policy)."""
    route = plan.route
    if route.cors.enabled or "access-control-allow-origin" in names \
            or "referrer-policy" in names:
        return None
    for name in plan.removed:
        if name in names:
            return None
    return response_policy_fields(route.referer, False, status=status)


def _vary_on_origin(headers: CIMultiDict[str]) -> None:
    vary = merge_vary(headers.getall("Vary", ()))
    headers.popall("Vary", None)
    headers["Vary"] = vary


def _same_origin(origin: str, request: ClientMessage) -> bool:
    """Browsers send Origin on same-origin POSTs too; those need no grant."""
    return origin.partition("://")[2].lower() == request.headers.get("Host", "").lower()
