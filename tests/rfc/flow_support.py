"""Builders for the request-flow tests: request facts from plain fields, a route's cache
settings, and the answered() step with the fixed clock."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from cacheproxy.http.flow import CacheSettings, Forward, RequestFacts, answered, request_facts

T0 = 1_704_067_200.0  # Mon, 01 Jan 2024 00:00:00 GMT
KEY = "http://example.com/resource"
ROUTE = CacheSettings()

Fields = Mapping[str, str] | Sequence[tuple[str, str]]


def facts(method: str = "GET", fields: Fields = (), *, body: bool = False) -> RequestFacts:
    pairs = list(fields.items()) if isinstance(fields, Mapping) else list(fields)
    return request_facts(method, CIMultiDictProxy(CIMultiDict(pairs)), has_body=body)


def answer(
    fwd: Forward, status: int = 200, fields: Fields = (), *, req: RequestFacts | None = None,
    route: CacheSettings = ROUTE, length: int | None = None, at: float = T0,
) -> Any:
    pairs = list(fields.items()) if isinstance(fields, Mapping) else list(fields)
    return answered(fwd, status=status, fields=pairs, length=length, req=req or facts(),
                    route=route, key=KEY, request_time=at, response_time=at)
