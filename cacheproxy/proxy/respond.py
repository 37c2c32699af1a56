"""Responses the proxy makes itself: replays of stored responses and errors."""

from __future__ import annotations

import secrets
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

from multidict import CIMultiDict, CIMultiDictProxy

from cacheproxy.http.flow import NotModified
from cacheproxy.http.ranges import Partial, Unsatisfiable, content_range, multipart_byteranges
from cacheproxy.http.stored import CachedResponse
from cacheproxy.observe.outcome import Outcome
from cacheproxy.proxy.downstream import Answer, Replay, text_answer

K = TypeVar("K")
V = TypeVar("V")


def mark(headers: CIMultiDict[str], outcome: Outcome, cache_name: str, via: str) -> None:
    """Fields the cache adds to every response it forwards or makes (stored_response
    adds the same ones its own way)."""
    headers.add("Via", via)  # RFC 9110 §7.6.3
    headers.add("Cache-Status", outcome.cache_status(cache_name))  # RFC 9211: appended
    headers["X-Cache"] = outcome.x_cache


class EntryMemo(Generic[K, V]):
    """Values made from recently replayed entries (and a key of the caller's), bounded in
    number, the oldest going first. Entries are held weakly: one the store evicts is not
    kept alive here, and a new entry at a reused id() is told apart."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._values: dict[tuple[int, K], tuple[weakref.ref[CachedResponse], V]] = {}

    def get(self, entry: CachedResponse, key: K, make: Callable[[], V]) -> V:
        memo_key = (id(entry), key)
        found = self._values.get(memo_key)
        if found is not None and found[0]() is entry:
            return found[1]
        value = make()
        if len(self._values) >= self.size:
            del self._values[next(iter(self._values))]
        self._values[memo_key] = (weakref.ref(entry), value)
        return value


class HeaderBlocks:
    """Ready-made field blocks for recently replayed entries. Copying a CIMultiDict is a
    fast C copy; building one from pairs hashes every name again."""

    def __init__(self, size: int = 4096) -> None:
        self._memo: EntryMemo[None, CIMultiDictProxy[str]] = EntryMemo(size)

    def get(self, entry: CachedResponse) -> CIMultiDictProxy[str]:
        return self._memo.get(entry, None, lambda: _block(entry))


def entry_fields(entry: CachedResponse) -> CIMultiDict[str]:
    """The entry's stored fields as a new multidict."""
    flat = entry.headers
    return CIMultiDict(zip(flat[::2], flat[1::2], strict=True))


def _block(entry: CachedResponse) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(entry_fields(entry))


def fresh_fields(age: float, member: str, x_cache: str, via: str
                 ) -> tuple[tuple[str, str], ...]:
    """The fields a replay of a stored response gets fresh for each request; member is
    its Cache-Status member (Outcome.cache_status)."""
    return (("Age", str(int(age))),  # RFC 9111 §5.1: required when served from cache
            ("Via", via),  # RFC 9110 §7.6.3
            ("Cache-Status", member),  # RFC 9211: appended
            ("X-Cache", x_cache))


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
    fresh = fresh_fields(age, outcome.cache_status(cache_name), outcome.x_cache, via)
    if not_modified is not None:
        response = Answer(304, CIMultiDict(not_modified.fields))
    elif part is not None:
        response = _ranged(entry, blocks.get(entry), part)
    elif method == "HEAD":
        response = Answer(entry.status, CIMultiDict(blocks.get(entry)), entry.body)
        if "Content-Length" not in response.headers:
            response.headers["Content-Length"] = str(len(entry.body))  # HEAD: the GET's length
    else:
        return Answer(entry.status, body=entry.body, replay=Replay(entry, blocks.get,
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
