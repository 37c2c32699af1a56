"""Review "perfread10": a reader of perfdist2's tables for the upstream request head
(62a1cac, 9ff4baa, bfea53f): forwarding.name_class/_CLASSES, request_field_parts,
_own_fields and the proxy's own fields kept per policy (OwnFields), sent_referer/_REFERERS,
exchange.request_head_parts, handler._fields/field_parts and client_conn._upstream_head.

Looked at: that what goes upstream is what the rules made before for every input
(hop-by-hop and Connection-named fields in any case, repeated and in lists; Host from the
key's authority or the client's; the X-Forwarded-* family, Forwarded and X-Real-IP with
and without trust_forwarded; Max-Forwards; Via; Surrogate-Capability; conditionals on a
fill; Expect; the Referer policies), with the tables warm across policies and inputs;
the tables' keys (every input of _own_fields is the policy or the key; a Referer entry
holds its policy, so its id is never reused while it is kept); the head made of parts
against request_head. Found: the proxy's own fields were bounded per policy only, and
forward mode makes a policy per origin (up to 4,096), so the bound as a whole was some
1.7 GiB.
"""

from __future__ import annotations

import gc
import itertools
import random
import tracemalloc
from typing import Any

from support import proxy_config
from test_review_perfdist2_regressions import NAMES, REFERERS, VALUES, _as_before

from cacheproxy.proxy import forwarding
from cacheproxy.proxy.forwarding import ForwardPolicy, request_fields
from cacheproxy.proxy.routing import Plans


def test_the_own_fields_kept_for_forward_modes_origins_stay_bounded_as_a_whole() -> None:
    """What was wrong: the proxy's own fields (Host, X-Forwarded-For/-Proto, Via) were
    kept per ForwardPolicy, 512 entries each, by client address; forward mode makes a
    plan, and so a policy, per origin a client names (Plans.forward_to, up to
    MAX_FORWARDED_PLANS = 4,096). A forward proxy whose users (or one IPv6 client with
    many source addresses of its /64) visit many origins held up to 4,096 x 512 entries
    of some 875 bytes: about 1.7 GiB, where the README says "under 1 KB each, 512 per
    policy" as if a few policies existed. What a user saw: the forward proxy's memory
    growing by hundreds of MiB with its clients and origins, never given back. Peer:
    Squid and nginx keep no per-client state per origin. Severity: medium (memory bounded
    only in theory; no wrong bytes sent). Here 40 origins x 500 clients: before, some
    18 MB kept; the table is now one for every policy, bounded as a whole."""
    config = proxy_config("http://127.0.0.1:1", forward={"enabled": True})
    plans = Plans.build(config, "http://127.0.0.1:1")
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for site in range(40):
            plan = plans.forward_to("http", f"site{site}.test", 80)
            for client in range(500):
                ip = f"2001:db8::{client:x}"
                out = dict(request_fields(
                    [("Accept", "*/*"), ("X-Forwarded-For", "203.0.113.9")],
                    policy=plan.forward, version=(1, 1), client_ip=ip, scheme="http",
                    host=f"site{site}.test", content=False))
                assert out["X-Forwarded-For"] == ip  # (the forged one never goes)
                assert out["Host"] == f"site{site}.test"
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(plans.forwarded) == 40
    assert kept < 6 * 2**20, f"{kept / 2**20:.1f} MiB kept for 40 origins' own fields"
    assert len(forwarding._OWN_KEPT) <= forwarding.OWN_KEPT_MAX


def test_request_fields_decides_as_before_with_the_tables_shared_across_inputs() -> None:
    """Coverage (passed before the fix, pins it after): perfdist2's oracle test makes a
    fresh ForwardPolicy per example, so the kept own fields never saw another input's
    request. Here 64 policies (every combination of pass_host, X-Forwarded-For/-Proto/
    -Host, trust_forwarded, Surrogate-Capability) serve 4,000 random requests in turn,
    with the tables warm: names in odd cases (hOsT, X-FORWARDED-FOR), Connection lists
    naming Host, X-Forwarded-For, Referer or hop-by-hop fields, a name over 64
    characters, an empty client address or Host, Max-Forwards with and without a count.
    Each is the former rule's answer (RFC 9110 §7.6.1-§7.6.3, §10.1.1). Severity had it
    failed: high (one client's address or Host sent for another's)."""
    rng = random.Random(10)
    policies = [ForwardPolicy(via="cp", upstream_host="o.test", pass_host=ph,
                              x_forwarded_for=xf, x_forwarded_proto=xp,
                              x_forwarded_host=xh, trust_forwarded=t,
                              surrogate_capability='cp="ESI/1.0"' if s else None)
                for ph, xf, xp, xh, t, s in itertools.product([False, True], repeat=6)]
    names = [*NAMES, "X-FORWARDED-FOR", "hOsT", "MAX-FORWARDS", "x-forwarded-host",
             "Authorization", "X-Method-Override", "FORWARDED", "x-forwarded-" + "z" * 70]
    values = [*VALUES, "Host, X-Forwarded-For", "max-forwards", "close, Referer",
              "x-real-ip,keep-alive", "", "https://u:p@r.test/x;jsessionid=1?token=2"]
    for _ in range(4000):
        pairs = [(rng.choice(names), rng.choice(values)) for _ in range(rng.randrange(7))]
        args: dict[str, Any] = dict(
            policy=rng.choice(policies), version=rng.choice([(1, 0), (1, 1)]),
            client_ip=rng.choice([None, "", "192.0.2.1", "192.0.2.2", "::1"]),
            scheme=rng.choice(["http", "https"]), strip_conditionals=rng.random() < .5,
            extra=rng.choice([None, (("If-None-Match", '"v"'),)]),
            host=rng.choice([None, "", "a.test", "b.test:81"]),
            max_forwards=rng.choice([None, None, 0, 3]), referer=rng.choice(REFERERS),
            content=rng.random() < .5)
        assert request_fields(pairs, **args) == _as_before(pairs, **args), (pairs, args)


def test_a_policy_at_a_colliding_id_does_not_take_anothers_kept_fields_or_referer(
        monkeypatch: Any) -> None:
    """Coverage of the fix above and of bfea53f: the kept own fields and the kept Referer
    are keyed by the policy's id(), which a new policy may take once an old one is freed
    (a reload); the entry holds its policy and is read only for that very object. Here
    id() is made to collide for every object (as it may): two routes' policies (another
    upstream Host and pseudonym, X-Forwarded-For off) and two Referer policies ("keep"
    then "strip") still each get their own answer. RFC 9110 §7.6.3 (Via), W3C Referrer
    Policy. Severity had it failed: high (one route's Host or a stripped session id sent
    for another)."""
    from cacheproxy.policies.referer import RefererPolicy

    monkeypatch.setattr(forwarding, "id", lambda obj: 0, raising=False)
    one = ForwardPolicy(via="one", upstream_host="one.test", pass_host=False,
                        x_forwarded_for=True, x_forwarded_proto=False, x_forwarded_host=False)
    two = ForwardPolicy(via="two", upstream_host="two.test", pass_host=False,
                        x_forwarded_for=False, x_forwarded_proto=False, x_forwarded_host=False)
    keep, strip = RefererPolicy(), RefererPolicy(upstream_referer="strip")
    referer = "https://shop.test/cart?item=1"
    for _ in range(2):  # (cold, then warm)
        for policy, ref, expected in ((one, keep, {"Referer": referer, "Host": "one.test",
                                                   "X-Forwarded-For": "192.0.2.1",
                                                   "Via": "1.1 one"}),
                                      (two, strip, {"Host": "two.test", "Via": "1.1 two"})):
            out = dict(request_fields([("Referer", referer)], policy=policy,
                                      version=(1, 1), client_ip="192.0.2.1", scheme="http",
                                      host="a.test", referer=ref, content=False))
            assert out == expected
