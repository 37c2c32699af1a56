"""Step 3: what a conditional client gets from a response the cache holds
(RFC 9111 §4.3.2; RFC 9110 §13.1.1, §13.1.3, §13.2.2, §15.4.5)."""

from __future__ import annotations

from dataclasses import dataclass

from cacheproxy.http.conditional import is_not_modified, not_modified_fields
from cacheproxy.http.flow.decisions import Fields
from cacheproxy.http.flow.facts import RequestFacts
from cacheproxy.http.ranges import Partial, Unsatisfiable, if_range_holds, parse_ranges
from cacheproxy.http.stored import CachedResponse


@dataclass(frozen=True, slots=True)
class NotModified:
    """The client's copy is current: 304 with the fields a 200 would have had (§15.4.5)."""

    fields: Fields


def client_answer(entry: CachedResponse, req: RequestFacts) -> NotModified | None:
    """§4.3.2: the client's If-None-Match / If-Modified-Since evaluated against entry;
    None: the client gets the response whole (a HEAD without its body)."""
    if not req.validating:  # (neither field: the usual request, told without reading them)
        return None
    inm = req.if_none_match
    ims = req.if_modified_since
    if inm is None and ims is None:
        return None
    if not is_not_modified(entry, req.method, inm, ims):
        return None
    return NotModified(tuple(not_modified_fields(entry)))


def range_answer(entry: CachedResponse, req: RequestFacts, length: int | None = None
                 ) -> Partial | Unsatisfiable | None:
    """RFC 9110 §14.2: a GET's Range answered from a stored complete 200 (206, or 416),
    after If-Range (§13.1.5); None: the whole response. Several ranges of a
    content-coded response are not cut into parts (each part would lose its coding).
    length: the representation's, when entry's body is still on its way (a miss)."""
    value = req.range
    if value is None or req.method != "GET" or entry.status != 200:
        return None
    if_range = req.if_range
    if if_range is not None and not if_range_holds(if_range, entry):
        return None
    answer = parse_ranges(value, len(entry.body) if length is None else length)
    if (isinstance(answer, Partial) and len(answer.ranges) > 1
            and entry.get("Content-Encoding") is not None):
        return None
    return answer
