"""Property tests (hypothesis) for every parser in cacheproxy.http: no input makes
one raise, and the real properties hold (round trips, bounds, idempotence).

Examples are limited so the whole module runs in a couple of seconds.
"""

from __future__ import annotations

import calendar
import math
import re
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from cacheproxy.http.cache_control import (
    MAX_DELTA,
    RequestDirectives,
    ResponseDirectives,
    parse_request_directives,
    parse_response_directives,
)
from cacheproxy.http.cache_key import normalise, primary_key, vary_fields
from cacheproxy.http.cache_status import cache_status
from cacheproxy.http.conditional import is_not_modified, not_modified_fields
from cacheproxy.http.dates import format_http_date, parse_http_date
from cacheproxy.http.fields import (
    HOP_BY_HOP,
    FieldList,
    connection_options,
    end_to_end,
    split_list,
    split_quoted,
    values_of,
)
from cacheproxy.http.freshness import parse_age
from cacheproxy.http.invalidation import invalidated_uris
from cacheproxy.http.reuse import decide_reuse, may_serve_stale_on_error
from cacheproxy.http.revalidation import conditional_fields, merge_304, selects
from cacheproxy.http.stored import Heuristics, all_values, first_value, make_stored_response
from cacheproxy.http.validators import ETag, none_match, parse_etag, parse_etag_list

FAST = settings(max_examples=150, deadline=None)
T0 = 1_704_067_200.0

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
VCHAR = "".join(chr(c) for c in range(0x21, 0x7F))
tokens = st.text(alphabet=TCHAR, min_size=1, max_size=12)
# Field-value-ish text: mostly the characters headers are made of, sometimes anything.
header_text = st.one_of(
    st.text(alphabet=VCHAR + ' \t"\\,;=', max_size=60),
    st.text(max_size=40),
)

DIRECTIVE_NAMES = [
    "max-age", "s-maxage", "public", "private", "no-cache", "no-store", "must-revalidate",
    "proxy-revalidate", "must-understand", "immutable", "stale-while-revalidate",
    "stale-if-error", "max-stale", "min-fresh", "only-if-cached", "x-ext",
]
arguments = st.one_of(
    st.integers(min_value=-5, max_value=10**22).map(str),
    tokens,
    header_text,
    header_text.map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'),
)
directive = st.tuples(
    st.sampled_from(DIRECTIVE_NAMES).map(lambda n: n.upper() if len(n) % 3 == 0 else n),
    st.none() | arguments,
).map(lambda na: na[0] if na[1] is None else f"{na[0]}={na[1]}")
cache_control_values = st.one_of(
    header_text,
    st.lists(directive, max_size=6).map(", ".join),
    st.lists(st.one_of(directive, header_text), max_size=4).map(",".join),
)


def delta_ok(value: int | None) -> bool:
    return value is None or (type(value) is int and 0 <= value <= MAX_DELTA)


# -- RFC 9110 §5.6.7 dates -------------------------------------------------------

@FAST
@given(st.text(max_size=60) | header_text)
def test_s5_6_7_parse_http_date_never_raises(value: str) -> None:
    got = parse_http_date(value)
    assert got is None or (isinstance(got, float) and math.isfinite(got))


@FAST
@given(st.integers(min_value=-62135596800, max_value=253402300799))
def test_s5_6_7_format_then_parse_gives_back_the_second(seconds: int) -> None:
    """Every second from year 1 to 9999 survives format_http_date -> parse_http_date."""
    text = format_http_date(seconds)
    assert re.fullmatch(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT", text)
    assert parse_http_date(text) == seconds


@FAST
@given(st.floats(min_value=-1e10, max_value=2.5e11, allow_nan=False))
def test_s5_6_7_format_drops_the_fraction(timestamp: float) -> None:
    """The whole second at or before the instant (datetime rounds to the microsecond
    first, so an instant within 1 µs of the next second may name that one)."""
    back = parse_http_date(format_http_date(timestamp))
    assert back is not None
    assert back in (math.floor(timestamp), math.floor(timestamp + 1e-6))


_utc_datetimes = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2049, 12, 31, 23, 59, 59)
).map(lambda d: d.replace(microsecond=0, tzinfo=UTC))


@FAST
@given(_utc_datetimes)
def test_s5_6_7_all_three_formats_name_the_same_instant(moment: datetime) -> None:
    """IMF-fixdate, RFC 850 (years 1990-2049, where the 50-year rule is unambiguous
    for decades yet) and asctime() give the same timestamp."""
    expected = float(calendar.timegm(moment.timetuple()))
    imf = moment.strftime("%a, %d %b %Y %H:%M:%S GMT")
    rfc850 = moment.strftime("%A, %d-%b-%y %H:%M:%S GMT")
    asctime = f"{moment:%a %b} {moment.day:2d} {moment:%H:%M:%S %Y}"
    assert parse_http_date(imf) == expected
    assert parse_http_date(rfc850) == expected
    assert parse_http_date(asctime) == expected
    assert parse_http_date(imf.replace(" GMT", "GMT")) == expected  # the seed's form


# -- RFC 9110 §8.8.3 entity tags, §13.1.2 If-None-Match ----------------------------

ETAGC = "!" + "".join(chr(c) for c in range(0x23, 0x7F)) + "\x80\xa0\xe9\xff"
opaque_tags = st.text(alphabet=ETAGC, max_size=20).map(lambda s: f'"{s}"')
entity_tags = st.builds(ETag, st.booleans(), opaque_tags)


def etag_text(tag: ETag) -> str:
    return ("W/" if tag.weak else "") + tag.opaque


@FAST
@given(st.none() | header_text)
def test_s8_8_3_parse_etag_never_raises(value: str | None) -> None:
    got = parse_etag(value)
    assert got is None or (got.opaque.startswith('"') and got.opaque.endswith('"'))


@FAST
@given(entity_tags, st.sampled_from(["", " ", "\t", "  "]))
def test_s8_8_3_parse_etag_returns_a_valid_entity_tag(tag: ETag, ows: str) -> None:
    assert parse_etag(ows + etag_text(tag) + ows) == tag


@FAST
@given(st.lists(entity_tags, min_size=1, max_size=5), st.sampled_from([",", ", ", " , "]))
def test_s13_1_2_etag_lists_round_trip(tags: list[ETag], sep: str) -> None:
    field = sep.join(etag_text(t) for t in tags)
    assert parse_etag_list(field) == tags
    for t in tags:
        assert none_match(field, etag_text(t))  # weak comparison ignores W/


@FAST
@given(header_text, st.none() | header_text)
def test_s13_1_2_none_match_never_raises(if_none_match: str, etag: str | None) -> None:
    assert none_match(if_none_match, etag) in (True, False)
    tags = parse_etag_list(if_none_match)
    assert tags is None or all(isinstance(t, ETag) for t in tags)


# -- RFC 9110 §5.6.1 lists -------------------------------------------------------------

_qdtext = st.text(alphabet=VCHAR.replace('"', "").replace("\\", "") + " \t,", max_size=10)
_quoted_pair = st.sampled_from(VCHAR + " ").map(lambda c: "\\" + c)
quoted_strings = st.lists(st.one_of(_qdtext, _quoted_pair), max_size=4).map(
    lambda parts: '"' + "".join(parts) + '"')
list_members = st.one_of(
    tokens,
    quoted_strings,
    st.tuples(tokens, st.one_of(tokens, quoted_strings)).map("=".join),
)


@FAST
@given(st.text(max_size=60) | header_text)
def test_s5_6_1_split_list_never_returns_empty_or_padded_members(value: str) -> None:
    for member in split_list(value):
        assert member
        assert member == member.strip()


@FAST
@given(st.text(alphabet=' ,\t\\a"b\u00a0', max_size=30) | st.text(max_size=60) | header_text)
def test_s5_6_1_split_list_without_quotes_splits_as_the_character_loop(value: str) -> None:
    """The shortcut for lists without a quoted string gives the full parser's members."""
    assert split_list(value) == split_quoted(value)


@FAST
@given(st.lists(list_members, max_size=6), st.data())
def test_s5_6_1_split_list_keeps_quoted_commas(members: list[str], data: st.DataObject) -> None:
    """Joined with any OWS and empty elements, the members come back whole."""
    sep = st.sampled_from([",", ", ", " ,", " , ", ",,", ", ,\t", "\t,"])
    field = data.draw(st.sampled_from(["", " ", ", "]))
    for i, member in enumerate(members):
        field += (data.draw(sep) if i else "") + member
    assert split_list(field) == members


@FAST
@given(st.lists(st.tuples(header_text, header_text), max_size=6))
def test_rfc9110_s7_6_1_end_to_end_never_raises(pairs: list[tuple[str, str]]) -> None:
    kept = end_to_end(pairs)
    assert all(k.lower() not in ("connection", "keep-alive", "transfer-encoding")
               for k, _ in kept)


hop_names = st.sampled_from(["Connection", "connection", "Keep-Alive", "TE", "X-Hop", "x-hop",
                             "Upgrade", "X-Kept", "Transfer-Encoding"])


@FAST
@given(st.lists(st.tuples(hop_names | header_text,
                          st.sampled_from(["x-hop", "X-Hop, close", "keep-alive", "x-kept,"])
                          | header_text), max_size=8))
def test_rfc9110_s7_6_1_end_to_end_drops_exactly_the_hop_by_hop_fields(
        pairs: list[tuple[str, str]]) -> None:
    """Every pair kept but the hop-by-hop ones and those any Connection line names,
    wherever it stands, in order."""
    named = connection_options(v for k, v in pairs if k.lower() == "connection")
    expected = [(k, v) for k, v in pairs if k.lower() not in HOP_BY_HOP and k.lower() not in named]
    assert end_to_end(pairs) == expected
    assert end_to_end(FieldList(pairs)) == expected  # with its index (a received answer)


@FAST
@given(st.lists(st.tuples(hop_names | header_text | st.sampled_from(["Vary", "vary", "ETag"]),
                          header_text), max_size=8),
       st.sampled_from(["vary", "etag", "connection", "x-hop", "absent"]))
def test_a_field_lists_index_answers_as_a_scan_does(pairs: list[tuple[str, str]], name: str
                                                    ) -> None:
    """FieldList (the pool's received answer) looks fields up by name as the scan of the
    same pairs does: first_value, all_values, values_of."""
    indexed = FieldList(pairs)
    assert indexed == pairs
    assert values_of(indexed, name) == values_of(pairs, name) \
        == [v for k, v in pairs if k.lower() == name]
    assert first_value(indexed, name) == first_value(pairs, name)
    assert all_values(indexed, name) == all_values(pairs, name)


# -- RFC 9111 §5.2 Cache-Control, §5.4 Pragma ----------------------------------------------

@FAST
@given(st.none() | cache_control_values)
def test_s5_2_2_response_directives_are_always_well_formed(value: str | None) -> None:
    d = parse_response_directives(value)
    assert isinstance(d, ResponseDirectives)
    for delta in (d.max_age, d.s_maxage, d.stale_while_revalidate, d.stale_if_error):
        assert delta_ok(delta)
    assert all(f and f == f.strip() and f == f.lower() for f in d.private_fields)


@FAST
@given(st.none() | cache_control_values, st.none() | cache_control_values)
def test_s5_2_1_request_directives_are_always_well_formed(
    value: str | None, pragma: str | None
) -> None:
    d = parse_request_directives(value, pragma)
    assert isinstance(d, RequestDirectives)
    for delta in (d.max_age, d.max_stale, d.min_fresh, d.stale_if_error):
        assert delta_ok(delta)
    if value:  # §5.4: Pragma only counts without Cache-Control
        assert d == parse_request_directives(value)


@FAST
@given(st.integers(min_value=0, max_value=10**25), st.booleans(), st.booleans())
def test_s1_2_2_max_age_reads_any_delta_capped_at_2_31(
    seconds: int, quoted: bool, upper: bool
) -> None:
    arg = f'"{seconds}"' if quoted else str(seconds)
    name = "MAX-AGE" if upper else "max-age"
    assert parse_response_directives(f"{name}={arg}").max_age == min(seconds, MAX_DELTA)
    assert parse_request_directives(f"{name}={arg}").max_age == min(seconds, MAX_DELTA)


@FAST
@given(st.integers(min_value=0, max_value=10**6), cache_control_values)
def test_s4_2_1_first_max_age_wins_whatever_follows(seconds: int, rest: str) -> None:
    assert parse_response_directives(f"max-age={seconds}, {rest}").max_age == seconds


# -- RFC 9111 §4.1 Vary, §2 keys -----------------------------------------------------

@FAST
@given(st.none() | header_text)
def test_s4_1_vary_normalisation_is_idempotent(vary: str | None) -> None:
    fields = vary_fields(vary)
    if fields is None:
        return
    assert all(f and f == f.lower() for f in fields)
    assert len(set(fields)) == len(fields)
    assert vary_fields(", ".join(fields)) == fields


@FAST
@given(st.sampled_from(["accept", "accept-encoding", "user-agent", "x-any"]),
       st.none() | header_text)
def test_s4_1_value_normalisation_is_idempotent(name: str, value: str | None) -> None:
    once = normalise(name, value)
    assert normalise(name, once) == once
    assert (once is None) is (value is None)


@FAST
@given(st.sampled_from(["http", "https"]), header_text, header_text)
def test_s2_primary_key_never_raises(scheme: str, host: str, target: str) -> None:
    key = primary_key(scheme, host, target)
    assert key.startswith(f"{scheme}://")


# -- RFC 9111 §5.1 Age, §4.2 freshness, §4.3 validation on arbitrary stored fields ---------

@FAST
@given(st.none() | header_text)
def test_s5_1_parse_age_is_a_bounded_delta(value: str | None) -> None:
    age = parse_age(value)
    assert age is None or (type(age) is int and 0 <= age <= MAX_DELTA)


date_values = st.one_of(
    header_text,
    st.integers(min_value=-10**6, max_value=10**6).map(lambda d: format_http_date(T0 + d)),
)
stored_fields = st.fixed_dictionaries({}, optional={
    "Cache-Control": cache_control_values,
    "Date": date_values,
    "Expires": date_values,
    "Last-Modified": date_values,
    "Age": header_text | st.integers(min_value=0, max_value=10**12).map(str),
    "ETag": header_text | entity_tags.map(etag_text),
    "Connection": header_text,
    "Vary": header_text,
})


@FAST
@given(stored_fields, st.integers(min_value=100, max_value=599), st.booleans(),
       st.floats(min_value=0, max_value=10**6), st.none() | cache_control_values,
       st.none() | header_text, st.none() | header_text)
def test_s4_stored_response_decisions_never_raise(
    fields: dict[str, str], status: int, shared: bool, later: float,
    request_cc: str | None, inm: str | None, ims: str | None,
) -> None:
    entry = make_stored_response(
        key="http://h/", vary=(), vary_values=(), status=status, pairs=list(fields.items()),
        body=b"", request_time=T0, response_time=T0 + 1, shared=shared,
        heuristics=Heuristics(),
    )
    assert 0 <= entry.lifetime <= MAX_DELTA
    initial_age = entry.age(T0 + 1)
    assert initial_age >= 1  # at least the response delay (§4.2.3)
    request = parse_request_directives(request_cc)
    r = decide_reuse(lifetime=entry.lifetime, initial_age=0.0,
                     response_time=entry.born, directives=entry.directives,
                     request=request, now=T0 + 1 + later, shared=shared)
    assert r.ttl == entry.lifetime - r.age
    assert math.isclose(r.age, initial_age + later, abs_tol=1e-6)
    may_serve_stale_on_error(ttl=r.ttl, directives=entry.directives, request=request,
                             shared=shared)
    is_not_modified(entry, "GET", inm, ims)
    not_modified_fields(entry)
    conditional_fields(entry)
    merged = merge_304(entry, list(fields.items()))
    assert all(k.lower() not in ("connection", "content-length") for k, _ in merged
               if (k, _) not in entry.header_pairs())
    assert selects(entry, list(fields.items())) in (True, False)


# -- RFC 9111 §4.4 invalidation ---------------------------------------------------

@FAST
@given(st.sampled_from(["POST", "PUT", "DELETE", "GET", "X"]),
       st.integers(min_value=100, max_value=599), st.none() | header_text,
       st.none() | header_text)
def test_s4_4_invalidation_never_raises_and_stays_same_origin(
    method: str, status: int, location: str | None, content_location: str | None
) -> None:
    target = "http://example.com/a/b"
    uris = invalidated_uris(method, status, target, location, content_location)
    if uris:
        assert uris[0] == target
        assert all(u.startswith("http://example.com/") for u in uris)
        assert len(set(uris)) == len(uris)


# -- RFC 9211 Cache-Status ------------------------------------------------------------

@FAST
@given(st.none() | st.floats(allow_nan=True, allow_infinity=True,
                             min_value=None, max_value=None),
       st.booleans(), st.none() | st.sampled_from(["uri-miss", "stale", "request"]))
def test_rfc9211_ttl_is_always_an_integer_or_absent(
    ttl: float | None, hit: bool, fwd: str | None
) -> None:
    value = cache_status("cacheproxy", hit=hit, fwd=fwd, ttl=ttl)
    found = re.findall(r"; ttl=(-?\d+)$", value)
    if ttl is None or not math.isfinite(ttl):
        assert "ttl=" not in value
    else:
        assert found and int(found[0]) == math.floor(ttl)
