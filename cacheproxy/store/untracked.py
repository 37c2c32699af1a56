"""What the memory store holds is kept out of the cyclic garbage collector's walk.

CPython's collector stops the process and walks every tracked object of the old
generation in a full collection, and it runs one each time the objects that outlived
the young collections have grown that generation by a quarter. Every stored response
is such an object: while bench/gc_pause.py filled the store with 200,000 of them, the
proxy stopped for 156-211 ms on average per full collection (250-453 ms the longest);
with them and their dict untracked, and what exists at start frozen (proxy/server.py),
5.5-9.6 ms (11-16).

A stored response cannot be part of a reference cycle: it is frozen, and holds only
strings, bytes, numbers, tuples of strings, and its directives (frozen, of the same
kinds). The collector has nothing to find there, so it is told not to look: the
response is still freed by reference counting the moment the store lets it go.
Python has no call for this; PyObject_GC_UnTrack is the C API's (documented, and safe
on an object already untracked). Where ctypes cannot reach it, nothing changes.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from cacheproxy.http.stored import CachedResponse


def _c_untrack() -> Callable[[object], None] | None:
    try:  # (a prototype of our own: pythonapi's shared one is left as it is)
        import ctypes

        return ctypes.PYFUNCTYPE(None, ctypes.py_object)(  # type: ignore[no-any-return]
            ("PyObject_GC_UnTrack", ctypes.pythonapi))
    except (ImportError, AttributeError):  # no ctypes, or no C API exported
        return None


_UNTRACK = _c_untrack()


def untrack_response(entry: CachedResponse, *, directives: bool = True) -> None:
    """A response about to be stored, and its directives (directives False: those of a
    response stored already, untracked then). (Tuples of strings, as its fields are, the
    collector untracks by itself.)"""
    if _UNTRACK is not None:
        _UNTRACK(entry)
        if directives:
            _UNTRACK(entry.directives)


def untrack_container(held: tuple[CachedResponse, ...] | dict[str, Any]) -> None:
    """A tuple of stored responses (a key's variants: the collector never untracks a
    tuple of objects of a collected type), or the dict that holds them. Neither has a
    cycle: their items are strings and untracked responses."""
    if _UNTRACK is not None:
        _UNTRACK(held)


class _Holder(Protocol):
    _held: dict[str, Any]


# The stores whose dict is untracked before each collection (keep_untracked).
_HOLDERS: weakref.WeakSet[_Holder] = weakref.WeakSet()


def _untrack_held(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        try:
            for holder in list(_HOLDERS):
                untrack_container(holder._held)
        except Exception:
            # (A collection that started at the recursion limit: no stack left for the C
            # call. This collection walks the dict; the next one untracks it. A callback
            # must not raise: its error would only be printed as unraisable.)
            pass


def keep_untracked(holder: _Holder) -> None:
    """holder's dict of stored responses is untracked at the start of every collection,
    young ones included: CPython tracks a dict again whenever an object of a collected
    type is set in it, and the memory store sets one on every hit (its LRU order), so
    untracking after each set would cost a C call per hit. (Walking that dict took 8-10
    ms per full collection at 200,000 entries.)"""
    if _UNTRACK is None:
        return
    _HOLDERS.add(holder)
    if _untrack_held not in gc.callbacks:
        gc.callbacks.append(_untrack_held)
