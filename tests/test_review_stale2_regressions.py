"""Second review of stale answers and origin errors (RFC 9111 §4, §4.2.4, §4.3.3, §5.2.2.2,
§5.2.2.8, §5.2.2.10; RFC 5861 §3-§4; RFC 9211), taking up what the first one
(test_review_stale_regressions.py) left: collapsed requests behind a foreground
revalidation the origin answered with a 5xx, a slow background refresh racing a newer
foreground answer, the words of the 504 that stale forbidden by a directive makes, the
label of a fresh response served on an origin error, and a collapsed waiter whose client
left. Read as an operator of nginx (proxy_cache_lock) or Varnish would. Each test failed
before its fix."""

from __future__ import annotations

from typing import Any

import pytest
from support import cache_status
from test_proxy_caching import stale_entry

from cacheproxy.proxy.collapse import Collapser


def count_waits(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many collapsed waits began ("in") and ended ("out"), counted as they happen."""
    counts = {"in": 0, "out": 0}
    real = Collapser.wait

    async def wait(self: Collapser, *args: Any, **kwargs: Any) -> bool:
        counts["in"] += 1
        try:
            return await real(self, *args, **kwargs)
        finally:
            counts["out"] += 1
    monkeypatch.setattr(Collapser, "wait", wait)
    return counts


@pytest.mark.parametrize(("cc", "directive"), [
    ("max-age=10, must-revalidate", "must-revalidate"),
    ("max-age=10, proxy-revalidate", "proxy-revalidate"),
    ("s-maxage=10", "s-maxage"),
])
async def test_the_504_for_stale_forbidden_names_the_directive(
        origin: Any, proxy: Any, cc: str, directive: str) -> None:
    """RFC 9111 §5.2.2.2, §5.2.2.8, §5.2.2.10: must-revalidate, proxy-revalidate and
    s-maxage each forbid a shared cache to serve the stale response when the origin
    cannot be reached: a 504. Its text said "(must-revalidate)" whichever directive it
    was, and its Cache-Status carried no detail: an operator looking at a 504 for an
    `s-maxage` response searched the origin's headers for a must-revalidate that was not
    there. Both now name the directive (RFC 9211 §2.8 detail). Severity: low
    (diagnosis)."""
    async with stale_entry(origin, proxy, cc) as (_o, c, _state, relay):
        relay.mode = "refuse"
        resp = await c.get("/r")
        assert resp.status == 504
        assert f"({directive})" in await resp.text()
        assert f"detail={directive}" in cache_status(resp)
