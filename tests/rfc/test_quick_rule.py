"""plain_serve (the rule proxy/quick.py answers plain GETs by) against lookup(): for any
stored response without Vary and any moment, a GET without DECISIVE_FIELDS is served by
lookup() exactly when plain_serve says so, with the same age and ttl."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from cacheproxy.http.flow import (
    CacheSettings,
    Serve,
    lookup,
    plain_serve,
    request_facts,
)
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
    request_fields=st.lists(st.sampled_from(PLAIN_FIELDS), max_size=4),
    elapsed=st.floats(0, 400),
    shared=st.booleans(),
)
def test_lookup_serves_a_plain_get_exactly_when_plain_serve_says(
        directives: list[str], age_field: int | None, expires: bool,
        request_fields: list[tuple[str, str]], elapsed: float, shared: bool) -> None:
    pairs = [("Date", "Mon, 01 Jan 2024 00:00:00 GMT"), ("Last-Modified",
                                                       "Sun, 31 Dec 2023 00:00:00 GMT")]
    if directives:
        pairs.append(("Cache-Control", ", ".join(directives)))
    if age_field is not None:
        pairs.append(("Age", str(age_field)))
    if expires:
        pairs.append(("Expires", "Mon, 01 Jan 2024 00:01:00 GMT"))
    headers = CIMultiDictProxy(CIMultiDict(request_fields))
    entry = make_stored_response(
        key="http://example/a", vary=(), vary_values=(), status=200, pairs=pairs,
        body=b"x", request_time=T0, response_time=T0, shared=shared,
        heuristics=Heuristics())
    now = T0 + elapsed
    route = CacheSettings(policy=StorePolicy(shared=shared))
    d = lookup(request_facts("GET", headers, has_body=False), (entry,), now=now, route=route)
    served = plain_serve(entry, now)
    if served is None:
        assert not isinstance(d, Serve)
    else:
        assert isinstance(d, Serve) and (d.entry, d.age, d.ttl) == (entry, *served)


def test_plain_serve_serves_a_fresh_entry_and_not_a_stale_or_no_cache_one() -> None:
    def entry(cache_control: str) -> object:
        return make_stored_response(
            key="k", vary=(), vary_values=(), status=200,
            pairs=[("Cache-Control", cache_control)], body=b"", request_time=T0,
            response_time=T0, shared=True, heuristics=Heuristics())
    assert plain_serve(entry("max-age=60"), T0 + 10) == (10.0, 50.0)  # type: ignore[arg-type]
    assert plain_serve(entry("max-age=60"), T0 + 61) is None  # type: ignore[arg-type]
    assert plain_serve(entry("max-age=60, no-cache"), T0) is None  # type: ignore[arg-type]
