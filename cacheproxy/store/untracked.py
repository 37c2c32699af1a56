"""What the memory store holds is kept out of the cyclic garbage collector's walk.

CPython's collector stops the process and walks every tracked object of the old
generation in a full collection, and it runs one each time the objects that outlived
the young collections have grown that generation by a quarter. Every stored response
is such an object: while bench/gc_pause.py filled the store with 200,000 of them, the
proxy stopped for 211 ms on average per full collection (453 ms the longest); with them
and their dict untracked, and what exists at start frozen (proxy/server.py), 9.6 (16.3).

A stored response cannot be part of a reference cycle: it is frozen, and holds only
strings, bytes, numbers, tuples of strings, and its directives (frozen, of the same
kinds). The collector has nothing to find there, so it is told not to look: the
response is still freed by reference counting the moment the store lets it go.
Python has no call for this; PyObject_GC_UnTrack is the C API's (documented, and safe
on an object already untracked). Where ctypes cannot reach it, nothing changes.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

from cacheproxy.http.stored import CachedResponse


def _c_untrack() -> Callable[[object], None] | None:
    try:
        untrack = ctypes.pythonapi.PyObject_GC_UnTrack
    except AttributeError:  # an interpreter that does not export the C API
        return None
    untrack.argtypes = [ctypes.py_object]
    untrack.restype = None
    return untrack  # type: ignore[no-any-return]


_UNTRACK = _c_untrack()


def untrack_map(mapping: dict[str, object] | None) -> None:
    """The dict that holds the responses (cachetools' own), after each set: CPython
    tracks a dict again whenever an object of a collected type is set in it, and its
    keys and values are strings and untracked responses, so it has no cycle either.
    (The walk of its values alone took 8-10 ms per full collection at 200,000.)"""
    if _UNTRACK is not None and mapping is not None:
        _UNTRACK(mapping)


def untrack(held: CachedResponse | tuple[CachedResponse, ...]) -> None:
    """held (one response, or a key's tuple of variants) and the containers in it.

    (Tuples of strings, as the fields are, the collector untracks by itself; a tuple
    of responses it never does, since they are of a collected type.)"""
    untrack = _UNTRACK
    if untrack is None:
        return
    if isinstance(held, tuple):
        untrack(held)
    for entry in held if isinstance(held, tuple) else (held,):
        untrack(entry)
        untrack(entry.directives)
