"""Responses the proxy makes itself: replays of stored responses and errors."""

from __future__ import annotations

import secrets
import weakref

from multidict import CIMultiDict, CIMultiDictProxy

from cacheproxy.http.flow import NotModified
from cacheproxy.http.ranges import Partial, Unsatisfiable, content_range, multipart_byteranges
from cacheproxy.http.stored import CachedResponse
from cacheproxy.observe.outcome import Outcome
from cacheproxy.proxy.downstream import Answer, Replay, text_answer


def mark(headers: CIMultiDict[str], outcome: Outcome, cache_name: str, via: str) -> None:
    """Fields the cache adds to every response it forwards or makes (stored_response
    adds the same ones its own way)."""
    headers.add("Via", via)  # RFC 9110 §7.6.3
    headers.add("Cache-Status", outcome.cache_status(cache_name))  # RFC 9211: appended
    headers["X-Cache"] = outcome.x_cache


class HeaderBlocks:
    """Ready-made field blocks for recently replayed entries, bounded in number.

    Copying a CIMultiDict is a fast C copy; building one from pairs hashes every
    name again. Entries are
    held weakly: an entry the store evicts is not kept alive here."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._blocks: dict[int, tuple[weakref.ref[CachedResponse], CIMultiDictProxy[str]]] = {}

    def get(self, entry: CachedResponse) -> CIMultiDictProxy[str]:
        found = self._blocks.get(id(entry))
        if found is not None and found[0]() is entry:
            return found[1]
        flat = entry.headers
        block = CIMultiDictProxy(CIMultiDict(zip(flat[::2], flat[1::2], strict=True)))
        if len(self._blocks) >= self.size:
            del self._blocks[next(iter(self._blocks))]  # the oldest goes
        self._blocks[id(entry)] = (weakref.ref(entry), block)
        return block


def stored_response(
    method: str,
    entry: CachedResponse,
    age: float,
    outcome: Outcome,
    cache_name: str,
    via: str,
    blocks: HeaderBlocks,
    not_modified: NotModified | None,
    part: Partial | Unsatisfiable | None = None,
) -> Answer:
    """Replay a stored response, the 304 the flow decided on (§4.3.2), or the part of it
    a Range asked for (RFC 9110 §14.2)."""
    fresh = (("Age", str(int(age))),  # RFC 9111 §5.1: required when served from cache
             ("Via", via),  # RFC 9110 §7.6.3
             ("Cache-Status", outcome.cache_status(cache_name)),  # RFC 9211: appended
             ("X-Cache", outcome.x_cache))
    if not_modified is not None:
        response = Answer(304, CIMultiDict(not_modified.fields))
    elif part is not None:
        response = _ranged(entry, blocks.get(entry), part)
    elif method == "HEAD":
        response = Answer(entry.status, CIMultiDict(blocks.get(entry)), entry.body)
        if "Content-Length" not in response.headers:
            response.headers["Content-Length"] = str(len(entry.body))  # HEAD: the GET's length
    else:
        return Answer(entry.status, body=entry.body, replay=Replay(entry, blocks.get(entry),
                                                                   fresh))
    response.headers.extend(fresh)
    return response


def _ranged(
    entry: CachedResponse, block: CIMultiDictProxy[str], part: Partial | Unsatisfiable
) -> Answer:
    """RFC 9110 §15.3.7 (206, one part or multipart/byteranges) and §15.5.17 (416)."""
    headers = CIMultiDict(block)
    headers.popall("Content-Length", None)
    if isinstance(part, Unsatisfiable):
        headers["Content-Range"] = f"bytes */{part.length}"
        return Answer(416, headers)
    if len(part.ranges) == 1:
        first, last = part.ranges[0]
        headers["Content-Range"] = content_range(first, last, part.length)
        return Answer(206, headers, entry.body[first:last + 1])
    boundary = secrets.token_hex(16)
    content_type = headers.popall("Content-Type", [None])[0]
    headers["Content-Type"] = f"multipart/byteranges; boundary={boundary}"
    body = multipart_byteranges(entry.body, part, content_type, boundary)
    return Answer(206, headers, body)


def error_response(
    status: int, message: str, outcome: Outcome, cache_name: str, via: str
) -> Answer:
    """A short plain-text answer for 502 / 504 and the like; never a traceback."""
    headers: CIMultiDict[str] = CIMultiDict({"Cache-Control": "no-store"})
    mark(headers, outcome, cache_name, via)
    return text_answer(status, f"{status} {message}\n", headers)
