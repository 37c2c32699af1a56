"""serves_while_fresh (the rule proxy/quick.py answers plain GETs by) against lookup():
for any stored response and any moment, a GET without DECISIVE_FIELDS that the rule
serves while fresh is served by lookup() too, with the same entry, age and ttl."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from cacheproxy.http.cache_key import vary_fields, vary_values
from cacheproxy.http.flow import (
    CacheSettings,
    Serve,
    lookup,
    request_facts,
    serves_while_fresh,
)
from cacheproxy.http.freshness import current_age
from cacheproxy.http.storability import StorePolicy
from cacheproxy.http.stored import Heuristics, make_stored_response

T0 = 1_704_067_200.0
DIRECTIVES = ("max-age=0", "max-age=60", "s-maxage=30", "no-cache", "must-revalidate",
              "public", "private", "proxy-revalidate", "stale-while-revalidate=30",
              "stale-if-error=30", "no-cache=\"Set-Cookie\"", "immutable")
PLAIN_FIELDS = (("User-Agent", "t"), ("Accept", "*/*"), ("Cookie", "a=1"),
                ("Accept-Language", "de"), ("Connection", "keep-alive"),
                ("Referer", "http://example/"))


@settings(max_examples=300, deadline=None)
@given(
    directives=st.lists(st.sampled_from(DIRECTIVES), max_size=3),
    age_field=st.one_of(st.none(), st.integers(0, 120)),
    expires=st.booleans(),
    vary=st.sampled_from([None, "Accept-Language", "Accept-Encoding"]),
    request_fields=st.lists(st.sampled_from(PLAIN_FIELDS), max_size=4),
    elapsed=st.floats(0, 400),
    shared=st.booleans(),
)
def test_a_plain_get_the_rule_serves_is_served_alike_by_lookup(
        directives: list[str], age_field: int | None, expires: bool, vary: str | None,
        request_fields: list[tuple[str, str]], elapsed: float, shared: bool) -> None:
    pairs = [("Date", "Mon, 01 Jan 2024 00:00:00 GMT"), ("Last-Modified",
                                                       "Sun, 31 Dec 2023 00:00:00 GMT")]
    if directives:
        pairs.append(("Cache-Control", ", ".join(directives)))
    if age_field is not None:
        pairs.append(("Age", str(age_field)))
    if expires:
        pairs.append(("Expires", "Mon, 01 Jan 2024 00:01:00 GMT"))
    if vary is not None:
        pairs.append(("Vary", vary))
    headers = CIMultiDictProxy(CIMultiDict(request_fields))
    names = vary_fields(vary) or ()
    entry = make_stored_response(
        key="http://example/a", vary=names, vary_values=vary_values(names, headers),
        status=200, pairs=pairs, body=b"x", request_time=T0, response_time=T0,
        shared=shared, heuristics=Heuristics())
    now = T0 + elapsed
    route = CacheSettings(policy=StorePolicy(shared=shared))
    d = lookup(request_facts("GET", headers, has_body=False), (entry,), now=now, route=route)
    age = current_age(entry.initial_age, entry.response_time, now)
    ttl = entry.lifetime - age
    if serves_while_fresh(entry) and ttl > 0:  # sound: the quick path's answer is lookup's
        assert isinstance(d, Serve) and (d.entry, d.age, d.ttl) == (entry, age, ttl)


def test_the_rule_holds_for_a_plain_entry_and_not_for_one_that_varies_or_validates() -> None:
    def entry(*pairs: tuple[str, str]) -> object:
        return make_stored_response(
            key="k", vary=("accept-language",) if ("Vary", "Accept-Language") in pairs else (),
            vary_values=(None,) if ("Vary", "Accept-Language") in pairs else (), status=200,
            pairs=list(pairs), body=b"", request_time=T0, response_time=T0, shared=True,
            heuristics=Heuristics())
    assert serves_while_fresh(entry(("Cache-Control", "max-age=60")))  # type: ignore[arg-type]
    assert not serves_while_fresh(entry(("Cache-Control", "max-age=60"),  # type: ignore[arg-type]
                                        ("Vary", "Accept-Language")))
    assert not serves_while_fresh(entry(("Cache-Control", "no-cache")))  # type: ignore[arg-type]
