"""Hits as bytes: the head of a stored response, encoded once per entry, route and HTTP
version, so a replay writes its status line and stored fields without building them.

What changes per request is written fresh after it: Age, Via, Cache-Status, X-Cache
(downstream.Replay.fresh), Date when the origin sent none, and Connection. The route's
outbound policies are applied to the block as they apply to a request without Origin
(Referrer-Policy, the targeted fields removed, CORS override's Vary and stripped
fields); a request with Origin gets its CORS grant on the full path instead."""

from __future__ import annotations

from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from cacheproxy.http.stored import CachedResponse
from cacheproxy.proxy.policy_steps import outbound_fields
from cacheproxy.proxy.respond import EntryMemo, entry_fields
from cacheproxy.proxy.routing import PLAN, RoutePlan
from cacheproxy.proxy.wire import REASONS, encode_head

_EMPTY: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
# What the memoised heads may hold together: 4096 heads of a few hundred bytes (the
# usual) fit some times over; heads of many large field sections are made again instead.
MAX_HEAD_BYTES = 8 * 1024 * 1024


class _WithoutOrigin:
    """The request outbound_fields reads, for a block: the route's plan, no fields."""

    __slots__ = ("_state",)
    headers = _EMPTY

    def __init__(self, plan: RoutePlan) -> None:
        self._state = {PLAN: plan}

    def get(self, key: Any, default: Any = None) -> Any:
        return self._state.get(key, default)


class ReplayBlocks:
    """Encoded heads of recently replayed entries, per route plan and HTTP version (a
    reload builds new plans, and with them new heads). A head goes when its entry is
    freed (EntryMemo), and all of them together stay within max_bytes: a head carries
    its entry's fields again, up to 128 KiB of them, in memory cache.max_bytes does not
    count."""

    def __init__(self, size: int = 4096, max_bytes: int = MAX_HEAD_BYTES) -> None:
        self._memo: EntryMemo[tuple[int, Any], tuple[bytes, bool, RoutePlan]] = EntryMemo(
            size, max_bytes, _head_bytes)
        # The last head encoded, with what it was made from: an entry refreshed by a 304
        # that repeated the stored fields (stored.refreshed) holds the very same field
        # tuple, so a URL revalidated on every request is encoded once, not per request.
        self._last: tuple[tuple[str, ...], tuple[str, ...], int, int, RoutePlan, Any, bytes,
                          bool, str] | None = None

    @property
    def bytes(self) -> int:
        """What the heads held weigh (their encoded bytes)."""
        return self._memo.bytes

    def __len__(self) -> int:
        return len(self._memo)

    def head(self, entry: CachedResponse, plan: RoutePlan, version: Any
             ) -> tuple[bytes, bool]:
        """The status line and stored fields with CRLFs, without the blank line; and
        whether the block has a Date."""
        # The last head made, when it was made from the same fields (the very tuples),
        # status, length, plan and version: a response refreshed by a 304 that repeated
        # its fields is answered with it, and not kept in the memo as well (a weak
        # reference made and dropped per revalidation); replayed again once another head
        # was made, it is encoded and kept then.
        last = self._last
        if last is not None and last[1] is entry.names and last[2] == entry.status \
                and last[4] is plan and last[5] == version and last[3] == len(entry.body):
            if last[0] is entry.values:
                return last[6], last[7]
            if last[8] == entry.key:
                # The same URL refreshed by a 304 with a Date of its own (one revalidated
                # less often than once a second: the usual case): the same head but for
                # the Date line, rewritten rather than the whole head encoded again. (A
                # hit of another URL of the same shape goes on to the memo at once.)
                spliced = _date_spliced(last[6], entry, last[0])
                if spliced is not None:
                    self._last = (entry.values, *last[1:6], spliced, last[7], last[8])
                    return spliced, last[7]
        key = (id(plan), version)
        found = self._memo.find(entry, key)
        # (The plan is held with its head, so no new plan, with other outbound policies,
        # is made at its id() while the head is kept; compared all the same, as the key
        # is only its id().)
        if found is None or found[2] is not plan:
            made = self._encode(entry, plan, version)
            self._last = (entry.values, entry.names, entry.status, len(entry.body), plan,
                          version, *made, entry.key)
            found = self._memo.keep(entry, key, (*made, plan))
        return found[0], found[1]

    def _encode(self, entry: CachedResponse, plan: RoutePlan, version: Any
                ) -> tuple[bytes, bool]:
        headers = entry_fields(entry)  # not the block memo: an entry replayed once needs none
        status = entry.status
        outbound_fields(_WithoutOrigin(plan), headers, status)  # type: ignore[arg-type]
        headers.popall("Connection", None)
        headers.popall("Transfer-Encoding", None)
        if status < 200 or status in (204, 304):
            # RFC 9110 §8.6: never in a 1xx or 204; in a 304 only as the selected
            # representation's length, which the stored body is not (none is stored).
            headers.popall("Content-Length", None)
        else:
            headers["Content-Length"] = str(len(entry.body))
        line = f"HTTP/1.1 {entry.status} {REASONS.get(entry.status, '')}"  # RFC 9110 §6.2
        return encode_head(line, headers)[:-2], "Date" in headers


def _date_spliced(head: bytes, entry: CachedResponse, was: tuple[str, ...]) -> bytes | None:
    """head, encoded from the same field names with the values was, made over for entry
    when the only value that differs is the (first) Date's and its line is in head once
    as it was stored (outbound policies leave Date be); else None: encoded anew."""
    at = entry.position("date")
    if at is None:
        return None
    values = entry.values
    if values[at + 1:] != was[at + 1:] or values[:at] != was[:at]:
        return None
    name, old, new = entry.names[at], was[at], values[at]
    if not (name.isascii() and old.isascii() and new.isascii()) \
            or "\r" in new or "\n" in new:  # (as encode_head refuses: no splitting)
        return None
    line = f"\r\n{name}: {old}\r\n".encode()
    if head.count(line) != 1:
        return None
    return head.replace(line, f"\r\n{name}: {new}\r\n".encode())


def _head_bytes(value: tuple[bytes, bool, RoutePlan]) -> int:
    return len(value[0])
