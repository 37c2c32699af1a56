"""Responses the proxy makes itself: replays of stored responses and errors."""

from __future__ import annotations

import secrets
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

from multidict import CIMultiDict, CIMultiDictProxy

from cacheproxy.http.flow import NotModified
from cacheproxy.http.ranges import (
    NOT_ON_416,
    NOT_ON_PART,
    Partial,
    Unsatisfiable,
    content_range,
    multipart_byteranges,
)
from cacheproxy.http.stored import CachedResponse
from cacheproxy.observe.outcome import Outcome
from cacheproxy.proxy.downstream import Answer, replayed, text_answer

K = TypeVar("K")
V = TypeVar("V")
# An EntryMemo's weak reference to an entry; its key is the memo key of the entry's value.
_Ref = weakref.KeyedRef[tuple[int, K], CachedResponse]


def mark(headers: CIMultiDict[str], outcome: Outcome, cache_name: str, via: str) -> None:
    """Fields the cache adds to every response it forwards or makes (stored_response
    adds the same ones its own way)."""
    put_marks(headers, marks(outcome, cache_name, via))


def put_marks(headers: CIMultiDict[str], marked: list[tuple[str, str]]) -> None:
    """marks' fields into headers: Via and Cache-Status appended, X-Cache replacing an
    upstream's."""
    headers.extend(marked[:2])
    headers["X-Cache"] = marked[2][1]


def marks(outcome: Outcome, cache_name: str, via: str) -> list[tuple[str, str]]:
    """mark's fields, to append to fields that hold no X-Cache."""
    return marks_of(via, outcome.cache_status(cache_name), outcome.x_cache)


def marks_of(via: str, cache_status: str, x_cache: str) -> list[tuple[str, str]]:
    """marks, from the Cache-Status member the Outcome gave (Outcome.cache_status)."""
    return [("Via", via),  # RFC 9110 §7.6.3
            ("Cache-Status", cache_status),  # RFC 9211: appended
            ("X-Cache", x_cache)]


class EntryMemo(Generic[K, V]):
    """Values made from recently replayed entries (and a key of the caller's), bounded in
    number and, given weigh, in bytes, the oldest going first. Entries are held weakly,
    and a value goes the moment its entry is freed (the store evicted or replaced it): so
    what the memo holds follows the store, and values that outlived their entry, up to
    size of them, cannot hold memory that cache.max_bytes does not count (a head may carry
    128 KiB of fields). A new entry at a reused id() is told apart as well."""

    def __init__(self, size: int = 4096, max_bytes: int | None = None,
                 weigh: Callable[[V], int] | None = None) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self.bytes = 0  # what weigh says the values held weigh
        self._weigh = weigh
        # memo key: the entry's reference (whose key is the memo key), value, its weight
        self._values: dict[tuple[int, K], tuple[_Ref[K], V, int]] = {}
        # Called as an entry dies, before its id() can be reused. It holds the memo weakly:
        # memo -> record -> reference -> callback -> memo would be a cycle, left to the
        # collector when a reload drops the memo (tests/test_collector.py). Entries are
        # referred to by nothing here but weak references: they stay freed by reference
        # counting alone, as the store untracks them from the collector (store/untracked.py).
        memo = weakref.ref(self)

        def forget(ref: _Ref[K]) -> None:
            held = memo()
            if held is not None:
                held._forget(ref)

        self._callback = forget

    def find(self, entry: CachedResponse, key: K) -> V | None:
        """The value kept for entry and key, if one is."""
        found = self._values.get((id(entry), key))
        if found is not None and found[0]() is entry:
            return found[1]
        return None

    def keep(self, entry: CachedResponse, key: K, value: V) -> V:
        """Keep value for entry and key (the oldest values going to make room); value."""
        weight = 0 if self._weigh is None else self._weigh(value)
        max_bytes = self.max_bytes
        if max_bytes is not None and weight > max_bytes:
            return value  # (it alone would pass the bound: made again when asked)
        values = self._values
        memo_key = (id(entry), key)
        old = values.pop(memo_key, None)
        if old is not None:
            self.bytes -= old[2]
        while values and (len(values) >= self.size
                          or (max_bytes is not None and self.bytes + weight > max_bytes)):
            self.bytes -= values.pop(next(iter(values)))[2]
        values[memo_key] = (weakref.KeyedRef(entry, self._callback, memo_key), value, weight)
        self.bytes += weight
        return value

    def __len__(self) -> int:
        return len(self._values)

    def _forget(self, ref: _Ref[K]) -> None:
        values = self._values
        found = values.get(ref.key)
        if found is not None and found[0] is ref:  # (not a later entry's record)
            del values[ref.key]
            self.bytes -= found[2]


# Blocks are kept for entries of up to so many fields, and all of them within so many
# bytes (as replay.py's heads): a block holds a string per field name of its own and its
# own structure, ~100 bytes a field that cache.max_bytes does not count, and an origin
# sends up to 128 KiB of fields (30,000 of them). Bigger entries get theirs made when
# asked, as a replay writes every field anyway.
BLOCK_FIELDS = 64
MAX_BLOCK_BYTES = 8 * 1024 * 1024
_BLOCK_FIELD_BYTES = 100


class HeaderBlocks:
    """Ready-made field blocks for recently replayed entries. Copying a CIMultiDict is a
    fast C copy; building one from pairs hashes every name again. (A block refers to its
    entry's strings: it goes when the entry does, EntryMemo.)"""

    def __init__(self, size: int = 4096, max_bytes: int = MAX_BLOCK_BYTES) -> None:
        self._memo: EntryMemo[None, CIMultiDictProxy[str]] = EntryMemo(
            size, max_bytes, _block_bytes)

    def get(self, entry: CachedResponse) -> CIMultiDictProxy[str]:
        found = self._memo.find(entry, None)
        if found is not None:
            return found
        if len(entry.names) > BLOCK_FIELDS:
            return _block(entry)
        return self._memo.keep(entry, None, _block(entry))

    @property
    def bytes(self) -> int:
        """What the blocks held weigh (_block_bytes)."""
        return self._memo.bytes

    def __len__(self) -> int:
        return len(self._memo)


def _block_bytes(block: CIMultiDictProxy[str]) -> int:
    return len(block) * _BLOCK_FIELD_BYTES + sum(len(k) + len(v) for k, v in block.items())


def entry_fields(entry: CachedResponse) -> CIMultiDict[str]:
    """The entry's stored fields as a new multidict."""
    return CIMultiDict(zip(entry.names, entry.values, strict=True))


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
        return replayed(entry, blocks.get, fresh)
    response.headers.extend(fresh)
    return response


def _ranged(
    entry: CachedResponse, block: CIMultiDictProxy[str], part: Partial | Unsatisfiable
) -> Answer:
    """RFC 9110 §15.3.7 (206, one part or multipart/byteranges) and §15.5.17 (416)."""
    headers = CIMultiDict(block)
    headers.popall("Content-Length", None)
    if isinstance(part, Unsatisfiable):
        for name in NOT_ON_416:  # (http/ranges.py: why)
            headers.popall(name, None)
        headers["Content-Range"] = f"bytes */{part.length}"
        return Answer(416, headers)
    for name in NOT_ON_PART:  # (http/ranges.py: why)
        headers.popall(name, None)
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
