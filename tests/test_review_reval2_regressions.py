"""Review reval2: the revalidation's lookup and the 304's remaining reads, by instructions
(bench/instructions.py on /reval, and callgrind on each step alone). Its changes are of
cost, not of rule: the Action members read as module names; parse_etag, governing's
plain Cache-Control and the validators a revalidation sends (validating_fields)
remembered for values up to a bound, longer ones worked out each time; the 304's step
skipping reads it did not need.

These tests pin what the memos rely on: a value on either side of a memo's bound gives
what the unremembered rule gives, the first time and again, and a stored response whose
validators and Cache-Control are longer than the bounds revalidates through the real
proxy as a short one does. They were written with the change, and import its memos, so
they do not run on the code before it; no behaviour was meant to change."""

from __future__ import annotations

from email.utils import formatdate

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from support import cache_status

from cacheproxy.http.fields import FieldList
from cacheproxy.http.revalidation import (
    _validating_fields,
    conditional_fields,
    validating_fields,
)
from cacheproxy.http.stored import Heuristics, make_stored_response
from cacheproxy.http.targeted import Governing, Targeting, governing
from cacheproxy.http.validators import _parse_etag, parse_etag

T0 = 1_704_067_200.0
LM = formatdate(T0 - 3600, usegmt=True)
_TAG_CHARS = st.text(st.sampled_from('aZ09-W/" \t,'), max_size=300)


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(st.none(), _TAG_CHARS))
def test_parse_etag_remembered_gives_what_parsing_gives(value: str | None) -> None:
    """parse_etag remembers tags up to 128 characters: for any value, short or long, valid
    or not, it gives what the parse itself gives, the first time and again (RFC 9110
    §8.8.3; §4.3.4 of RFC 9111 selects a stored response by it). Severity, were it to
    fail: a 304 freshening a response it does not select, or the reverse (high)."""
    expected = _parse_etag.__wrapped__(value)
    assert parse_etag(value) == expected
    assert parse_etag(value) == expected


@settings(max_examples=200, deadline=None)
@given(tag=st.one_of(st.none(), st.text("av1", min_size=1, max_size=250).map(
    lambda s: f'"{s}"')), modified=st.sampled_from((None, LM, "not a date")))
def test_validating_fields_are_the_conditional_fields(tag: str | None,
                                                       modified: str | None) -> None:
    """The validators a revalidation sends (§4.3.1), remembered per pair up to 192
    characters, are conditional_fields' for that response, whatever the lengths, the
    first time and again. Severity: a revalidation sending another response's validators
    gets a 304 that does not apply (high)."""
    fields = [("Date", formatdate(T0, usegmt=True)), ("Cache-Control", "no-cache")]
    if tag is not None:
        fields.append(("ETag", tag))
    if modified is not None:
        fields.append(("Last-Modified", modified))
    entry = make_stored_response(
        key="http://o/x", vary=(), vary_values=(), status=200, pairs=fields, body=b"b",
        request_time=T0, response_time=T0, shared=True, heuristics=Heuristics())
    expected = tuple(conditional_fields(entry))
    assert validating_fields(entry) == expected
    assert validating_fields(entry) == expected
    assert expected == _validating_fields.__wrapped__(*entry.validators())


@pytest.mark.parametrize("length", [10, 128, 129, 400])
def test_governing_remembered_cache_control_at_any_length(length: int) -> None:
    """governing() hands out one Governing per Cache-Control value up to 128 characters:
    on either side of the bound, and for a list as for pairs, it is the value's own
    (RFC 9213 §2.2: Cache-Control governs when no targeted field applies), and a
    targeted field still sets it aside. Severity: another response's directives govern
    (high)."""
    cc = ("max-age=60, " + "x" * length)[:length]
    for pairs in ([("Cache-Control", cc)], FieldList([("Cache-Control", cc)])):
        for _ in range(2):
            assert governing(pairs, Targeting()) == Governing(cc)
    both = FieldList([("Cache-Control", cc), ("CDN-Cache-Control", "max-age=5")])
    assert governing(both, Targeting()) == Governing("max-age=5", "cdn-cache-control")
    assert governing(FieldList([("Date", LM)]), Targeting()) == Governing(None)


@pytest.mark.parametrize("tag_chars", [8, 300])
async def test_long_validators_revalidate_through_the_proxy(origin, proxy, tag_chars):  # type: ignore[no-untyped-def]
    """A no-cache response (§5.2.2.4) whose ETag, Last-Modified and Cache-Control are past
    the memos' bounds (128, 192 characters) revalidates as one with short ones: each
    reuse sends its own validators (§4.3.1), the 304 selects it (§4.3.4) and freshens
    it. Severity: a long-tagged URL served from another's validators, or refetched
    whole on every request (medium)."""
    tag = '"' + "t" * tag_chars + '"'
    cc = "no-cache, " + ", ".join(f"ext{i}=value{i}" for i in range(20))
    seen: list[tuple[str | None, str | None]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append((request.headers.get("If-None-Match"),
                     request.headers.get("If-Modified-Since")))
        headers = {"ETag": tag, "Cache-Control": cc, "Last-Modified": LM}
        if request.headers.get("If-None-Match") == tag:
            return web.Response(status=304, headers=headers)
        return web.Response(text="full body", headers=headers)

    app = web.Application()
    app.router.add_get("/r", handle)
    c = await proxy(await origin(app))
    first = await c.get("/r")
    assert "stored" in cache_status(first)
    for _ in range(2):
        again = await c.get("/r")
        assert again.status == 200 and await again.text() == "full body"
        assert "fwd=stale; fwd-status=304" in cache_status(again)
    assert seen == [(None, None), (tag, LM), (tag, LM)]
