"""Builders shared by the RFC rule tests: stored responses and reuse decisions.

Time is always an argument: every test works from the fixed instant T0 and
offsets from it, never from the clock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from email.utils import formatdate

import pytest

from cacheproxy.http.cache_control import parse_request_directives
from cacheproxy.http.reuse import Reuse, decide_reuse
from cacheproxy.http.stored import CachedResponse, Heuristics, make_stored_response

T0 = 1_704_067_200.0  # Mon, 01 Jan 2024 00:00:00 GMT
KEY = "http://example.com/resource"

Fields = Mapping[str, str] | Sequence[tuple[str, str]]
StoredFactory = Callable[..., CachedResponse]
ReuseFactory = Callable[..., Reuse]


def imf(timestamp: float) -> str:
    """An IMF-fixdate made independently of the code under test."""
    return formatdate(timestamp, usegmt=True)


def _pairs(fields: Fields) -> list[tuple[str, str]]:
    return list(fields.items()) if isinstance(fields, Mapping) else list(fields)


def build_stored(
    fields: Fields = (),
    *,
    status: int = 200,
    body: bytes = b"body",
    request_time: float = T0,
    response_time: float = T0,
    shared: bool = True,
    heuristics: Heuristics | None = None,
    vary: tuple[str, ...] = (),
    vary_values: tuple[str | None, ...] = (),
    excluded: frozenset[str] = frozenset(),
) -> CachedResponse:
    return make_stored_response(
        key=KEY, vary=vary, vary_values=vary_values, status=status, pairs=_pairs(fields),
        body=body, request_time=request_time, response_time=response_time, shared=shared,
        heuristics=heuristics or Heuristics(), excluded=excluded,
    )


def reuse_of(
    entry: CachedResponse,
    now: float,
    cache_control: str | None = None,
    *,
    pragma: str | None = None,
    shared: bool = True,
) -> Reuse:
    return decide_reuse(
        lifetime=entry.lifetime, initial_age=0.0, response_time=entry.born,
        directives=entry.directives,
        request=parse_request_directives(cache_control, pragma), now=now, shared=shared,
    )


@pytest.fixture
def stored() -> StoredFactory:
    """stored({"Cache-Control": "max-age=60"}, status=200, response_time=T0, ...)."""
    return build_stored


@pytest.fixture
def reuse() -> ReuseFactory:
    """reuse(entry, now, "max-age=0", pragma=None, shared=True) -> decide_reuse's answer."""
    return reuse_of
