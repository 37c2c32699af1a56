"""The public HTTP caching test suite (http-cache-tests 0.4.5, behind cache-tests.fyi) run
through a real `cacheproxy serve` in front of the suite's own server, all on 127.0.0.1
(tests/cache_tests_suite.py; npm installs the suite once into a cache folder). It fails
when fewer tests pass than the bars below, measured on this code, or when the proxy had
upstream failures beyond the connections the suite drops on purpose. Deselect it with
`-m "not cache_tests_suite"`; the README (Development) lists what still fails and why."""

from __future__ import annotations

import pytest
from cache_tests_suite import run

# Measured: required 155/165, optimal 81/95 (see the README). A bar a little under the
# figures would hide a regression of one test; these are the figures themselves.
MIN_REQUIRED = 155
MIN_OPTIMAL = 81


@pytest.mark.cache_tests_suite
@pytest.mark.timeout(600)  # npm install on first use (~15 s), then the run (~25 s)
def test_http_cache_tests_suite() -> None:
    results, figures, _, _ = run()
    failed = "\n".join(f"{test_id}: {results.get(test_id)}"
                       for test_id in figures.failed_required + figures.failed_optimal)
    assert figures.required >= MIN_REQUIRED, f"{figures.summary()}\n{failed}"
    assert figures.optimal >= MIN_OPTIMAL, f"{figures.summary()}\n{failed}"
    assert figures.unexpected_errors == 0, figures.summary()
