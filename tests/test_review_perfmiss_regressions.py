"""Review perfmiss: what a miss's record costs (the Outcome the data plane makes for
it, Observer.record and its JSON log line), made cheaper with the same values: these
tests pin that the cheaper forms are the same as the ones they stand in for."""

from __future__ import annotations

import dataclasses

import pytest

from cacheproxy.observe.outcome import Outcome, routed_outcome


@pytest.mark.parametrize("host,target,route,secrets", [
    ("example.com", "/a?b=1", "default", frozenset()),
    (None, None, "api", frozenset({"token", "sid"})),
])
def test_routed_outcome_is_the_dataclass_made_by_keyword(
        host: str | None, target: str | None, route: str, secrets: frozenset[str]) -> None:
    """routed_outcome (made by position, object.__new__ and one store per slot: some
    3,300 fewer instructions per miss) must equal Outcome(...) by keyword, every field:
    a field added to Outcome with a default and forgotten there would be unset (an
    AttributeError in the request log, a lost line). Severity: low (a guard)."""
    made = routed_outcome(12.5, host, target, route, secrets)
    expected = Outcome(started=12.5, host=host, target=target, route=route, secrets=secrets)
    for field in dataclasses.fields(Outcome):
        assert getattr(made, field.name) == getattr(expected, field.name), field.name
    assert made == expected
    assert type(made) is Outcome


def test_miss_lines_from_kept_parts_are_the_records_lines() -> None:
    """json_line writes what repeats between misses from parts kept per shape
    (_MISS_LINES): lines of one shape but other paths, sizes, durations, clients and
    times, and of shapes too long to keep, must be to_json's of the same record, byte
    for byte, and the kept shapes stay bounded. Severity: medium (a wrong field in a log
    line that `cacheproxy logs`, the stats API and a user's log pipeline read)."""
    import random

    from cacheproxy.observe import record as r

    rng = random.Random(9111)
    shapes = [
        ["GET", "example.com", 200, "MISS", None, None, 200, False, "default", None,
         "HTTP/1.1", None, "curl/8", "cacheproxy; fwd=uri-miss", None],
        ["HEAD", "h\u0085", 304, "EXPIRED", 3, -2, 304, True, "api", "referer deny: x",
         "HTTP/1.0", "https://a/?t=REDACTED", None, "cacheproxy; fwd=stale", None],
        ["CONNECT", "x:443", 200, "TUNNEL", None, None, None, False, "default", None,
         "HTTP/1.1", "r" * 2000, "\u202eagent", "cacheproxy; fwd=bypass", 77],
    ]
    kept = r._MISS_KEPT
    r._MISS_KEPT = 2
    r._MISS_LINES.clear()  # (other tests' shapes: the bound holds from an insert on)
    try:
        for i in range(300):
            (method, host, status, cache, age, ttl, up, collapsed, route, policy, protocol,
             referer, agent, member, bytes_in) = rng.choice(shapes)
            up_ms = None if up is None or i % 3 == 0 else rng.uniform(0, 5000)
            f = [1_764_900_000 + rng.uniform(0, 86_400), f"10.0.0.{i % 7}", method, host,
                 f"/p/{i}?q=\u00e9" if i % 2 else "/", status, cache, rng.randrange(1 << 40),
                 rng.choice([0.0005, 0.0625, 1e12, rng.uniform(0, 1e4)]), age, ttl, up,
                 up_ms, collapsed, route, policy, protocol, referer, agent, member, bytes_in]
            assert r.json_line(f) == r.to_json(r.record_of(f))
            assert len(r._MISS_LINES) <= 2
    finally:
        r._MISS_KEPT = kept
        r._MISS_LINES.clear()
