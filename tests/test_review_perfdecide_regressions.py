"""Review perfdecide: the flow's decision on a pass-through's answer (Driver.decided,
answered's remembered Pass, the hit-for-pass mark). answered() now compares its last
Pass's inputs part by part (the route, Forward and request facts by identity first, the
answer's Cache-Control and Content-Type by value, and Expires, Set-Cookie, Vary and the
targeted fields in one check when the remembered answer had none of them, else by
value). The tests pin, through the real proxy, that an answer differing from the
remembered one only in one of those rarer fields is decided afresh (perfflow2's tests
pin a targeted field added and a Content-Type changed)."""

from __future__ import annotations

from test_review_perfflow2_regressions import _ok, _sequence


async def test_a_pass_remembered_with_a_rare_field_is_not_taken_without_it(proxy) -> None:
    """Performance (perfdecide): a Pass remembered from an answer that had Set-Cookie
    (RFC 9111 §3, this shared cache's set_cookie = "bypass") or Vary: * (§4.1) must not
    answer for the same answer without it: that one is stored, and the request after it
    is a hit. Comparing only the fields most answers carry (Cache-Control, Content-Type)
    would pass on, uncached, a URL the origin asks to cache. Severity if broken: high."""
    for rare in ("Set-Cookie: a=1", "Vary: *"):
        seen = await _sequence(proxy, [
            _ok("Cache-Control: max-age=60", rare),
            _ok("Cache-Control: max-age=60"),
        ], [(), (), ()])
        assert seen == ["MISS", "MISS", "HIT"], rare


async def test_a_pass_remembered_is_not_taken_for_another_rare_value(proxy) -> None:
    """Performance (perfdecide): an answer whose Vary names a field (Vary: Accept,
    storable) after one whose Vary was * (not storable, §4.1) is decided afresh and
    stored: the same rare field present with another value is another input.
    Severity if broken: high (a cacheable URL passed on uncached)."""
    seen = await _sequence(proxy, [
        _ok("Cache-Control: max-age=60", "Vary: *"),
        _ok("Cache-Control: max-age=60", "Vary: Accept"),
    ], [(), (), ()])
    assert seen == ["MISS", "MISS", "HIT"]
