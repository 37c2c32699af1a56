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


class _Clock:
    """time for collapse.py: monotonic() as the test sets it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_a_hit_for_pass_mark_lasts_pass_seconds_from_its_last_marking(monkeypatch) -> None:
    """Performance (perfdecide): Driver.decided marks a URL hit-for-pass on every
    pass-through; a mark already there for the same variant only has its time moved.
    The expiry rule this must keep (Varnish's hit-for-pass object lives for its TTL from
    the last pass): a URL marked again stays marked PASS_SECONDS from its last marking,
    not from its first, and a mark not renewed ends then. A mark that expired from its
    first marking would send a URL passed on every request back into collapsing, its
    clients queued behind each other (RFC 9111 §4: only a storable answer may answer
    collapsed requests). Severity if broken: medium (waves of serialized requests)."""
    from cacheproxy.proxy import collapse
    from cacheproxy.proxy.collapse import PASS_SECONDS, Collapser

    clock = _Clock()
    monkeypatch.setattr(collapse, "time", clock)
    c = Collapser(5.0)
    c.mark_pass("k", ((), ()))
    clock.now += PASS_SECONDS - 1
    c.mark_pass("k", ((), ()))  # marked again: its time moves
    clock.now += PASS_SECONDS - 1
    assert c.passes("k"), "a mark renewed expired from its first marking"
    assert c.passes("k", {}), "a mark for every request did not hold for a request"
    clock.now += 2
    assert not c.passes("k"), "a mark outlived PASS_SECONDS from its last marking"
    assert not c._pass, "an expired mark was kept"
