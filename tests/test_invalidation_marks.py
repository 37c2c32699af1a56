"""proxy/invalidations.py, sans I/O: the marks that keep a fill under way from being
stored after its key was invalidated (RFC 9111 §4.4) or purged."""

from __future__ import annotations

import tracemalloc

from cacheproxy.proxy.invalidations import KEY_FLOORS, MAX_KEYS, Invalidations


def test_a_mark_refuses_the_fills_sent_before_it_only():
    marks = Invalidations()
    marks.key("http://a/x", 10.0)
    assert marks.since("http://a/x", 9.0)
    assert not marks.since("http://a/x", 10.5)
    assert not marks.since("http://a/y", 9.0)


def test_long_keys_push_no_mark_out():
    """A client chooses a key's length: 400 invalidations of 16 KB keys (the count that
    pushed marks out when the keys themselves were held, bounded at 2 MiB) leave every
    other key's fill alone and keep each of their own marks."""
    marks = Invalidations()
    long = [f"http://a/post?{i}=" + "p" * 16_000 for i in range(400)]
    for i, key in enumerate(long):
        marks.key(key, 100.0 + i)
    others = [f"http://a/page{n}" for n in range(KEY_FLOORS * 4)]
    assert not any(marks.since(key, 50.0) for key in others)
    assert all(marks.since(key, 99.0) for key in long)


def test_the_marks_hold_no_keys():
    """Each key is made for its request and dropped after: 1,000 of 16 KB (16 MB) leave
    the marks' own size (the old bound held 2 MiB of them)."""
    marks = Invalidations()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1000):
            marks.key(f"http://a/{i}?" + "q" * 16_000, float(i))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 200_000, held


def test_a_mark_pushed_out_still_refuses_its_own_fill():
    """Past MAX_KEYS the oldest mark goes and raises the floor of its hash bucket: its
    key's fill sent before it is still refused; a key of another bucket is not."""
    marks = Invalidations()
    first = "http://a/first"
    marks.key(first, 1.0)
    for i in range(MAX_KEYS):
        marks.key(f"http://a/{i}", 2.0 + i)
    assert marks.since(first, 0.5)
    assert not marks.since(first, 1.5)  # sent after its mark
    bucket = hash(first) % KEY_FLOORS
    other = next(k for k in (f"http://b/{n}" for n in range(10_000))
                 if hash(k) % KEY_FLOORS != bucket)
    assert not marks.since(other, 0.5)
    same = next(k for k in (f"http://c/{n}" for n in range(1_000_000))
                if hash(k) % KEY_FLOORS == bucket)
    assert marks.since(same, 0.5)  # its bucket's floor: a rare fill refused


def test_purges_and_clear():
    marks = Invalidations()
    marks.prefix("http://a/img/", 5.0)
    assert marks.since("http://a/img/1.png", 4.0)
    assert not marks.since("http://a/css/1.css", 4.0)
    marks.key("http://a/x", 6.0)
    marks.everything(7.0)
    assert marks.since("http://a/anything", 6.5)
    assert not marks.since("http://a/x", 7.5)
