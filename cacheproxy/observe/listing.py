"""entries and entry with --workers and the memory store: what every worker holds.

Each worker caches in its own memory, so `entries` listed, and `entry?url=` looked up,
the store of the worker a call reached: "not in the cache" (404) while another worker
served the page as a hit, a listing that changed at every call. The worker a call
reaches asks the others (proxy/siblings.py, the question LIST) to list from their own
store what it lists from its own, and merges the lists here: a key any worker holds is
listed once, with every worker's variants, each saying the worker (pid) that holds it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from cacheproxy.store.memory import MemoryStore

LIST = b"l"  # the question: "list these keys or prefixes from your store"
# What one worker answers, at most (a datagram): past it, the last keys it lists are left
# out (the listing says "incomplete").
MAX_ANSWER = 128 * 1024

Describe = Callable[[Any, float], dict[str, Any]]  # (a stored response, now) -> its JSON


def question(each: list[list[str]], limit: int, exact: bool) -> bytes:
    """each: the operator's readings, each a list of keys (exact) or prefixes; the first
    reading that lists any is the answer (admin.py _readings)."""
    return LIST + json.dumps({"each": each, "limit": limit, "exact": exact}).encode()


def listed_now(store: MemoryStore, each: list[list[str]], limit: int, exact: bool,
               describe: Describe, now: float, pid: int) -> list[dict[str, Any]]:
    """What this worker's store holds of `each`: [{"key", "variants"}], each variant
    with the pid of the worker that holds it."""
    keys: list[str] = []
    for given in each:
        for name in given:
            if len(keys) >= limit:
                break
            keys += ([name] if store.peek(name) else []) if exact else \
                store.keys_now(name, limit - len(keys))
        if keys:
            break
    return [{"key": key, "variants": [{**describe(v, now), "pid": pid}
                                      for v in store.peek(key)]} for key in keys]


def answer(store: MemoryStore, asked: bytes, describe: Describe, now: float,
           pid: int) -> bytes:
    """A worker's answer to LIST + asked, within MAX_ANSWER; b"" to what it cannot read.
    (An entry's stored fields, with an exact question: entry?url= shows them.)"""
    try:
        q = json.loads(asked)
        each, limit, exact = q["each"], int(q["limit"]), bool(q["exact"])
    except (ValueError, TypeError, KeyError):
        return b""
    listed = listed_now(store, each, limit, exact, describe, now, pid)
    data = json.dumps(listed, separators=(",", ":")).encode()
    while len(data) > MAX_ANSWER and listed:
        listed = listed[:len(listed) // 2]
        data = json.dumps([*listed, {"incomplete": True}], separators=(",", ":")).encode()
    return data


def merged(own: list[dict[str, Any]], answers: list[bytes], limit: int
           ) -> tuple[list[dict[str, Any]], int, bool]:
    """Every worker's listing as one: a key once, its variants those of every worker
    (own first), at most limit keys. Also: the workers counted (own included) and whether
    one left keys out (its answer too big)."""
    by_key: dict[str, list[dict[str, Any]]] = {}
    for entry in own:
        by_key.setdefault(entry["key"], []).extend(entry["variants"])
    counted, incomplete = 1, False
    for data in answers:
        try:
            listed = json.loads(data)
        except ValueError:
            continue
        if not isinstance(listed, list):
            continue
        counted += 1
        for entry in listed:
            if entry.get("incomplete"):
                incomplete = True
            elif "key" in entry:
                by_key.setdefault(entry["key"], []).extend(entry["variants"])
    keys = list(by_key)[:limit]
    return [{"key": key, "variants": by_key[key]} for key in keys], counted, incomplete
