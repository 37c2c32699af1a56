"""Review perfobs3: a miss's observation (its Outcome, Observer.record, the JSON line and
the counts) in fewer Python calls and objects, with the same values. These tests pin
that each cheaper form is the same as the one it stands in for."""

from __future__ import annotations

import dataclasses

import pytest

from cacheproxy.http.flow import Forward
from cacheproxy.observe.outcome import Outcome, forwarded_outcome, note_lookup, routed_outcome


@pytest.mark.parametrize("reason,stored", [
    ("uri-miss", False), ("stale", True), ("bypass", False), ("method", True),
    ("request", False),
])
def test_forwarded_outcome_is_routed_outcome_noted(reason: str, stored: bool) -> None:
    """forwarded_outcome (a quick miss's Outcome in one call, not routed_outcome then
    note_lookup) must equal the two, every field: a field added to Outcome and forgotten
    there would be unset (an AttributeError in the request log, a lost line), and a
    status other than note_lookup's would show a wrong cache column (MISS / EXPIRED /
    BYPASS, nginx's $upstream_cache_status) and Cache-Status fwd. Severity: low (a
    guard)."""
    fwd = Forward(reason, "GET", stored=object() if stored else None)  # type: ignore[arg-type]
    made = forwarded_outcome(3.5, "example.com", "/a?b=1", "api", frozenset({"t"}), fwd)
    expected = routed_outcome(3.5, "example.com", "/a?b=1", "api", frozenset({"t"}))
    note_lookup(expected, fwd)
    for field in dataclasses.fields(Outcome):
        assert getattr(made, field.name) == getattr(expected, field.name), field.name
    assert made == expected
