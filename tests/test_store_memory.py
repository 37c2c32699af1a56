"""The in-memory LRU store: bounded by bytes, one entry per Vary variant."""

from __future__ import annotations

import asyncio
import gc
import weakref

from hypothesis import given, settings
from hypothesis import strategies as st

from cacheproxy.http.cache_control import ResponseDirectives
from cacheproxy.http.fields import FieldList
from cacheproxy.http.stored import (
    ENTRY_OVERHEAD,
    CachedResponse,
    Heuristics,
    make_stored_response,
    refreshed,
)
from cacheproxy.proxy.respond import EntryMemo
from cacheproxy.store import MemoryStore
from cacheproxy.store.memory import MAX_VARIANTS
from cacheproxy.store.serial import decode, encode


def entry(key: str, body: bytes = b"x" * 1000,
          vary: tuple[str, ...] = (), values: tuple[str | None, ...] = ()) -> CachedResponse:
    return make_stored_response(
        key=key, vary=vary, vary_values=values, status=200,
        pairs=[("Cache-Control", "max-age=60")], body=body, request_time=0.0,
        response_time=0.0, shared=True, heuristics=Heuristics(),
    )


async def test_get_put_delete_and_stats():
    store = MemoryStore(max_bytes=1 << 20)
    assert await store.get("k") == ()
    e = entry("k")
    assert await store.put(e)
    assert await store.get("k") == (e,)
    stats = store.stats()
    assert stats.entries == 1 and stats.bytes == e.size and stats.max_bytes == 1 << 20
    assert e.size >= len(e.body) + ENTRY_OVERHEAD  # bookkeeping counts toward the bound
    assert await store.delete("k") and not await store.delete("k")
    assert store.stats().entries == 0 and store.stats().bytes == 0


async def test_total_bytes_stay_bounded_and_least_recent_goes_first():
    one = entry("probe").size
    store = MemoryStore(max_bytes=one * 3)
    for key in ("a", "b", "c"):
        await store.put(entry(key))
    await store.get("a")  # a is now the most recently used
    await store.put(entry("d"))
    assert await store.get("b") == ()  # b was least recently used
    assert await store.get("a") != () and await store.get("d") != ()
    stats = store.stats()
    assert stats.bytes <= stats.max_bytes and stats.entries == 3 and stats.evictions == 1


async def test_an_entry_larger_than_the_store_is_refused():
    store = MemoryStore(max_bytes=2000)
    assert not await store.put(entry("big", b"x" * 5000))
    assert await store.get("big") == () and store.stats().entries == 0


async def test_variants_share_a_key_and_replace_their_own_kind():
    store = MemoryStore(max_bytes=1 << 20)
    en = entry("k", b"hello", ("accept-language",), ("en",))
    fr = entry("k", b"bonjour", ("accept-language",), ("fr",))
    en2 = entry("k", b"hi", ("accept-language",), ("en",))
    for e in (en, fr, en2):
        await store.put(e)
    assert await store.get("k") == (en2, fr)  # newest first; en replaced by en2
    assert store.stats().entries == 2


async def test_variants_per_key_are_capped():
    store = MemoryStore(max_bytes=1 << 22)
    for i in range(MAX_VARIANTS + 5):
        await store.put(entry("k", b"v", ("user-agent",), (f"agent{i}",)))
    variants = await store.get("k")
    assert len(variants) == MAX_VARIANTS
    assert variants[0].vary_values == (f"agent{MAX_VARIANTS + 4}",)
    assert store.stats().entries == MAX_VARIANTS
    assert store.stats().evictions == 5  # (the oldest, past the bound: counted)


async def test_clear_empties_without_counting_evictions():
    store = MemoryStore(max_bytes=1 << 20)
    for key in "abc":
        await store.put(entry(key))
    await store.clear()
    stats = store.stats()
    assert stats.entries == 0 and stats.bytes == 0 and stats.evictions == 0


def test_entries_share_the_values_that_repeat_and_not_the_others():
    """Date, Last-Modified, Content-Length and the freshness figures that repeat are one
    object for every entry made from equal ones (memory per entry, bench/memory.py);
    values unique to a response are not kept in the shared table."""
    date = 1796266800.0  # Thu, 03 Dec 2026 03:00:00 GMT

    def made(n: int, request_time: float = date + 0.25) -> CachedResponse:
        pairs = [("Date", "Thu, 03 Dec 2026 03:00:00 GMT"),
                 ("Last-Modified", "Sat, 01 Nov 2026 00:00:00 GMT"),
                 ("Content-Length", "1000"), ("ETag", f'"item-{n}"'),
                 ("Cache-Control", "max-age=60"), ("X-Long", "y" * 200)]
        # Fresh string objects, as a parser makes them.
        pairs = [(k.encode().decode(), v.encode().decode()) for k, v in pairs]
        return make_stored_response(
            key=f"k{n}", vary=(), vary_values=(), status=200, pairs=pairs, body=b"x",
            request_time=request_time, response_time=request_time + 0.01 * n, shared=True,
            heuristics=Heuristics())

    a, b = made(1), made(2)
    for i in range(0, len(a.headers), 2):
        name = a.headers[i]
        same = a.headers[i + 1] is b.headers[i + 1]
        assert same == (name not in ("ETag", "X-Long")), name
        assert a.headers[i + 1] == b.headers[i + 1] or name == "ETag"
    assert a.last_modified is b.last_modified and a.last_modified is a.get("Last-Modified")
    assert a.lifetime is b.lifetime and a.modified_at == b.modified_at
    # One tuple of names for the entries with the same fields in the same order.
    assert a.names is b.names and a.values is not b.values
    # Born at their Date (received after it, without Age): one whole-second object.
    assert a.born == date and a.born is b.born
    # A request sent before the Date's second (a clock ahead): born when it was sent,
    # a time of its own, not kept in the shared table.
    c = made(3, request_time=date - 0.5)
    assert c.born == date - 0.5 and c.born is not made(4, request_time=date - 0.5).born


def test_the_shared_table_is_bounded():
    from cacheproxy.http import stored

    same = stored._same
    for n in range(stored._SAME_KEPT * 3):
        assert same(f"value {n}") == f"value {n}"
        assert same.cache_info().currsize <= stored._SAME_KEPT
    first = same(b"again".decode())
    assert same(b"again".decode()) is first


# Operations on a store against a model of it: an ordered dict of key -> variants, oldest
# use first, bounded by the sum of the responses' sizes.
_op = st.one_of(
    st.tuples(st.just("put"), st.sampled_from("abcdef"), st.sampled_from(("", "en", "fr")),
              st.integers(0, 3000)),
    st.tuples(st.just("get"), st.sampled_from("abcdef")),
    st.tuples(st.just("delete"), st.sampled_from("abcdef")),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_op, max_size=40), st.integers(3000, 12000))
def test_the_store_keeps_its_byte_count_and_lru_order_as_a_model_does(
        ops: list[tuple], max_bytes: int) -> None:
    store = MemoryStore(max_bytes=max_bytes)
    model: dict[str, tuple[CachedResponse, ...]] = {}
    evictions = 0

    def size(variants: tuple[CachedResponse, ...]) -> int:
        return sum(v.size for v in variants)

    for op in ops:
        key = op[1]
        if op[0] == "put":
            vary = ("accept-language",) if op[2] else ()
            e = entry(key, b"x" * op[3], vary, (op[2],) if op[2] else ())
            stored = store.put_now(e)
            if e.size > max_bytes:
                assert not stored
                continue
            assert stored
            old = model.pop(key, ())
            variants = (e, *(v for v in old if v.vary_values != e.vary_values))
            evictions += max(0, len(variants) - MAX_VARIANTS)  # (the variant bound's too)
            variants = variants[:MAX_VARIANTS]
            while size(variants) > max_bytes:
                variants = variants[:-1]
                evictions += 1  # (responses evicted, as entries counts them)
            while sum(map(size, model.values())) + size(variants) > max_bytes:
                evictions += len(model.pop(next(iter(model))))  # the LRU key goes
            model[key] = variants
        elif op[0] == "get":
            if key in model:
                model[key] = model.pop(key)  # now the most recently used
            assert store.peek(key) == model.get(key, ())
        else:
            assert asyncio.run(store.delete(key)) == (model.pop(key, None) is not None)
        stats = store.stats()
        assert stats.bytes == sum(map(size, model.values())) <= max_bytes
        assert stats.entries == sum(map(len, model.values()))
        assert stats.evictions == evictions
    assert sorted(asyncio.run(store.keys())) == sorted(model)
    for key, variants in model.items():  # (which were evicted: the gets above tell)
        assert store.peek(key) == variants


def test_eviction_takes_exactly_the_least_recently_used_across_its_walks(monkeypatch) -> None:
    """Eviction takes its candidates from walks of the dict's front (store/memory.py
    _FRONT keys at a time); keys used, put again or deleted after a walk are struck off,
    so the order evicted stays the model's exact LRU order over thousands of operations
    with walks of 5 keys."""
    import random

    import cacheproxy.store.memory as memory

    monkeypatch.setattr(memory, "_FRONT", 5)
    one = entry("k000").size
    store = MemoryStore(max_bytes=one * 40)
    model: dict[str, None] = {}
    rnd = random.Random(7)
    evicted = 0
    for _ in range(6000):
        key, op = f"k{rnd.randrange(120):03d}", rnd.random()
        if op < 0.45:
            assert store.put_now(entry(key))
            model.pop(key, None)
            while len(model) >= 40:
                del model[next(iter(model))]
                evicted += 1
            model[key] = None
        elif op < 0.9:
            assert bool(store.peek(key)) == (key in model)
            if key in model:
                model[key] = model.pop(key)
        else:
            assert asyncio.run(store.delete(key)) == (model.pop(key, 0) is None)
        assert list(store._held) == list(model)
    assert store.stats().evictions == evicted > 1000


# -- kept out of the cyclic collector's walk (store/untracked.py) -------------------------

async def test_what_the_store_holds_is_not_walked_by_the_collector_and_still_freed():
    store = MemoryStore(max_bytes=1 << 20)
    one, en, de = entry("one"), *(entry("v", vary=("accept-language",), values=(lang,))
                                  for lang in ("en", "de"))
    for e in (one, en, de):
        assert await store.put(e)
    held = store._held["v"]
    assert isinstance(held, tuple) and not gc.is_tracked(held)  # a key's variants
    for e in (one, en, de):
        assert not gc.is_tracked(e) and not gc.is_tracked(e.directives)
    # The dict of them: CPython tracks it again on each set, a hit's included (its LRU
    # order); each collection untracks it before it walks anything.
    assert store.peek("one") == (one,) and gc.is_tracked(store._held)
    gc.collect(0)
    assert not gc.is_tracked(store._held)
    assert await store.get("one") == (one,) and await store.get("v") == (de, en)

    # Freed by reference counting alone once the store lets go: deleted, or replaced.
    gone = weakref.ref(one)
    variant = weakref.ref(en)
    del one, en, de, held
    gc.disable()
    try:
        assert await store.delete("one")
        assert gone() is None
        await store.put(entry("v", vary=("accept-language",), values=("en",)))  # replaced
        assert variant() is None
    finally:
        gc.enable()


_ATOMIC = (str, bytes, int, float, bool, type(None))


@settings(max_examples=150, deadline=None)
@given(
    fields=st.lists(st.tuples(st.sampled_from(["ETag", "Last-Modified", "Date", "X-Any",
                                               "Content-Type", "Expires", "Age"]),
                              st.text(max_size=40)), max_size=8),
    cc=st.sampled_from(["max-age=60", "s-maxage=5, public", "no-cache=\"set-cookie\"",
                        "private=\"x-a, x-b\", max-age=9", "stale-while-revalidate=30, max-age=1",
                        "must-revalidate, proxy-revalidate, immutable, max-age=100"]),
    vary=st.lists(st.sampled_from(["accept", "accept-language", "cookie"]), max_size=2),
    made=st.sampled_from(["answer", "redis", "refreshed", "replaced"]),
)
def test_a_stored_response_reaches_no_object_that_could_lead_back_to_it(
        fields: list[tuple[str, str]], cc: str, vary: list[str], made: str) -> None:
    """Why untracking is safe: from a response, as made from any answer, read back from
    Redis, refreshed by a 304 or copied with another body, only immutable atoms (of
    exactly their built-in types), tuples and its frozen directives are reachable, so it
    can be in no reference cycle the collector would have had to find."""
    e = make_stored_response(
        key="http://o/a", vary=tuple(vary), vary_values=tuple("v" for _ in vary), status=200,
        pairs=[("Cache-Control", cc), *fields], body=b"b", request_time=1.0,
        response_time=2.0, shared=True, heuristics=Heuristics())
    if made == "redis":
        e = decode(encode(e))
    elif made == "refreshed":
        merged = FieldList([*e.header_pairs(), ("Date", "Thu, 03 Dec 2026 17:00:00 GMT")])
        e = refreshed(e, merged, request_time=3.0, response_time=4.0, shared=True,
                      heuristics=Heuristics())
    elif made == "replaced":
        e = e.replace(body=bytes(bytearray(b"new")))
    seen, todo = set(), [e]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or type(obj) in _ATOMIC:
            continue
        seen.add(id(obj))
        assert type(obj) in (CachedResponse, ResponseDirectives, tuple), type(obj)
        todo += [r for r in gc.get_referents(obj) if not isinstance(r, type)]


# -- values memoised per entry (proxy/respond.py EntryMemo) follow the store ------------

async def test_memoised_values_go_when_the_store_frees_their_entry() -> None:
    """A value made from an entry (a hit's encoded head) goes the moment the store lets
    the entry go, by reference counting alone; the values held stay within the memo's
    bytes; and the memo itself, dropped, needs no collector (nothing of it is in a
    cycle)."""
    store = MemoryStore(max_bytes=3 * entry("k0").size)
    memo: EntryMemo[None, bytes] = EntryMemo(size=100, max_bytes=2500, weigh=len)
    gc.disable()
    try:
        for i in range(3):
            await store.put(entry(f"k{i}"))
            (held,) = store.peek(f"k{i}")
            assert memo.keep(held, None, b"h" * 1000) == b"h" * 1000
            assert memo.find(held, None) == b"h" * 1000
            del held
        assert len(memo) == 2 and memo.bytes == 2000  # the oldest went for the third
        await store.put(entry("k3"))  # k0 evicted: nothing memoised for it
        assert len(memo) == 2
        await store.put(entry("k4"))  # k1 evicted: its value goes with it
        assert len(memo) == 1 and memo.bytes == 1000
        assert await store.delete("k2")
        assert len(memo) == 0 and memo.bytes == 0
        (held,) = store.peek("k3")
        assert memo.keep(held, None, b"h" * 3000) and len(memo) == 0  # past the bound
        memo.keep(held, None, b"h")
        gone = weakref.ref(memo)
        del memo
        assert gone() is None
        del held
        await store.clear()  # (entries outliving the memo that held values of them)
    finally:
        gc.enable()


async def test_putting_the_entry_held_again_marks_it_recently_used_and_counts_nothing():
    """A 304 that changed nothing refreshes the stored response into itself
    (stored.refreshed): putting it again must neither count its bytes twice nor lose the
    LRU order's step (it was just used), nor evict anything."""
    one = entry("probe").size
    store = MemoryStore(max_bytes=one * 3)
    a, b, c = entry("a"), entry("b"), entry("c")
    for e in (a, b, c):
        await store.put(e)
    before = store.stats()
    assert store.put_now(a)  # a: now the most recently used, b the least
    after = store.stats()
    assert (after.entries, after.bytes, after.evictions) == (
        before.entries, before.bytes, before.evictions)
    await store.put(entry("d"))
    assert await store.get("b") == () and await store.get("a") == (a,)
    assert store.stats().entries == 3 and store.stats().evictions == 1
