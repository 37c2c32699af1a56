"""What the public HTTP caching test suite (http-cache-tests 0.4.5) checks, through the
running proxy: a real origin on 127.0.0.1, the proxy in front, a real client. Grouped by
RFC section; a test named after a suite test carries its id after the double underscore.
The whole suite itself runs in tests/test_cache_tests_suite.py."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
from aiohttp import web
from multidict import CIMultiDict
from support import read_json_log

Pairs = list[tuple[str, str]]


def counting(pairs: Callable[[int], Pairs], body: str = "body") -> tuple[web.Application,
                                                                         Counter[str]]:
    """An origin at /r whose n-th answer (from 1) has the fields pairs(n)."""
    calls: Counter[str] = Counter()

    async def handle(request: web.Request) -> web.Response:
        calls[request.method] += 1
        n = sum(calls.values())
        return web.Response(text=f"{body} {n}", headers=CIMultiDict(pairs(n)))

    app = web.Application()
    app.router.add_route("*", "/r", handle)
    return app, calls


# -- RFC 9111 §5.1 Age, §4.2.1 invalid freshness information --------------------------------

@pytest.mark.parametrize("ages", [
    ["abc"], ["-7200"], ["7200.0"], ["7200,0"], ["0,7200"], ["7200", "0"], ["0", "7200"],
    ["0, 0"], ["0", "0"], ["3600, 3600"], ["7200;foo=bar"], ["7200;foo=111"],
], ids=lambda ages: " / ".join(ages))
async def test_s5_1_an_invalid_age_makes_the_response_stale__age_parse(origin, proxy, ages):
    app, calls = counting(lambda n: [("Cache-Control", "max-age=3600"),
                                     *(("Age", age) for age in ages)])
    c = await proxy(await origin(app))
    assert (await c.get("/r")).status == 200
    again = await c.get("/r")
    assert again.headers["X-Cache"] == "MISS" and await again.text() == "body 2"
    assert calls["GET"] == 2


async def test_s5_1_a_valid_age_is_counted__freshness_max_age_age(origin, proxy):
    app, calls = counting(lambda n: [("Cache-Control", "max-age=3600"), ("Age", "100")])
    c = await proxy(await origin(app))
    await c.get("/r")
    hit = await c.get("/r")
    assert hit.headers["X-Cache"] == "HIT" and 100 <= int(hit.headers["Age"]) <= 102
    assert calls["GET"] == 1


# -- RFC 9111 §3.2 Updating stored header fields ---------------------------------------------

def validating(first: Pairs, on_304: Pairs) -> tuple[web.Application, list[web.Request]]:
    """An origin at /r: a 200 with first (stale at once: Age 5 > max-age=1, ETag "v1"),
    then a 304 with on_304 to every request that carries If-None-Match."""
    seen: list[web.Request] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request)
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304, headers=CIMultiDict(
                [("ETag", '"v1"'), ("Cache-Control", "max-age=60"), *on_304]))
        return web.Response(body=b"stored", headers=CIMultiDict(
            [("ETag", '"v1"'), ("Cache-Control", "max-age=1"), ("Age", "5"), *first]))

    app = web.Application()
    app.router.add_get("/r", handle)
    return app, seen


@pytest.mark.parametrize(("name", "first", "second"), [
    ("Content-Encoding", "aaa", "bbb"),
    ("Content-MD5", "rL0Y20zC+Fzt72VPzMSk2A==", "N7UdGUp1E+RbVvZSTy1R8g=="),
    ("Content-Range", "bytes 0-5/6", "bytes 0-9/10"),
])
async def test_s3_2_a_304_keeps_fields_the_content_depends_on__304_etag_update_response(
    origin, proxy, name, first, second
):
    app, seen = validating([(name, first)], [(name, second), ("X-Updated", "yes")])
    c = await proxy(await origin(app))
    assert (await c.get("/r")).headers[name] == first
    validated = await c.get("/r")  # stale: revalidated, the origin says 304
    assert "fwd-status=304" in validated.headers["Cache-Status"]
    assert validated.headers[name] == first and validated.headers["X-Updated"] == "yes"
    assert await validated.read() == b"stored"
    hit = await c.get("/r")  # freshened by the 304 (max-age=60)
    assert hit.headers["X-Cache"] == "HIT" and hit.headers[name] == first
    assert hit.headers["X-Updated"] == "yes" and len(seen) == 2


# -- RFC 9213 targeted cache control; Surrogate-Control (W3C Edge Architecture 1.0) --------

async def test_rfc9213_cdn_cache_control_gives_the_proxy_a_longer_lifetime(origin, proxy):
    # Age 100: stale by Cache-Control (max-age=10), fresh by CDN-Cache-Control (600).
    app, calls = counting(lambda n: [("Cache-Control", "public, max-age=10"),
                                     ("CDN-Cache-Control", "max-age=600"), ("Age", "100")])
    c = await proxy(await origin(app))
    await c.get("/r")
    hit = await c.get("/r")
    assert hit.headers["X-Cache"] == "HIT" and calls["GET"] == 1
    # The client gets both as sent: the browser's lifetime, and the CDN's for a CDN in front.
    assert hit.headers["Cache-Control"] == "public, max-age=10"
    assert hit.headers["CDN-Cache-Control"] == "max-age=600"


async def test_rfc9213_cdn_cache_control_no_store_wins_over_cache_control(origin, proxy):
    app, calls = counting(lambda n: [("Cache-Control", "max-age=600"),
                                     ("CDN-Cache-Control", "no-store")])
    c = await proxy(await origin(app))
    await c.get("/r")
    assert (await c.get("/r")).headers["X-Cache"] == "MISS" and calls["GET"] == 2


async def test_rfc9213_strip_targeted_removes_cdn_cache_control(origin, proxy):
    app, _ = counting(lambda n: [("Cache-Control", "max-age=10"),
                                 ("CDN-Cache-Control", "max-age=600")])
    c = await proxy(await origin(app), cache={"strip_targeted": True})
    for _ in range(2):  # a miss and a hit
        resp = await c.get("/r")
        assert "CDN-Cache-Control" not in resp.headers
        assert resp.headers["Cache-Control"] == "max-age=10"


async def test_surrogate_control_is_followed_announced_and_removed__surrogate_fresh_cc_nostore(
    origin, proxy
):
    seen: list[str | None] = []

    async def handle(request: web.Request) -> web.Response:
        capability = request.headers.get("Surrogate-Capability")
        seen.append(capability)
        device = (capability or "").partition("=")[0]
        return web.Response(text="ok", headers={
            "Cache-Control": "no-store", "Surrogate-Control": f"max-age=10000;{device}"})

    app = web.Application()
    app.router.add_get("/r", handle)
    c = await proxy(await origin(app), proxy={"via": "edge-1"})
    miss = await c.get("/r")
    hit = await c.get("/r")
    assert seen == ['edge-1="Surrogate/1.0"']
    assert (miss.headers["X-Cache"], hit.headers["X-Cache"]) == ("MISS", "HIT")
    for resp in (miss, hit):
        assert "Surrogate-Control" not in resp.headers
        assert resp.headers["Cache-Control"] == "no-store"


async def test_surrogate_capability_appends_to_the_clients(origin, proxy):
    """Behind a surrogate the operator runs (proxy.trust_forwarded): its claim is kept.
    Any other client's is dropped, as the forwarding fields are (review-poison)."""
    seen: list[list[str]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.headers.getall("Surrogate-Capability", []))
        return web.Response(text="ok", headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_get("/r", handle)
    c = await proxy(await origin(app), proxy={"trust_forwarded": True})
    await c.get("/r", headers={"Surrogate-Capability": 'cdn="Surrogate/1.0"'})
    assert seen == [['cdn="Surrogate/1.0"', 'cacheproxy="Surrogate/1.0"']]


async def test_surrogate_control_no_store_wins__surrogate_no_store_cc_fresh(origin, proxy):
    app, calls = counting(lambda n: [("Cache-Control", "max-age=10000"),
                                     ("Surrogate-Control", "no-store")])
    c = await proxy(await origin(app))
    await c.get("/r")
    assert (await c.get("/r")).headers["X-Cache"] == "MISS" and calls["GET"] == 2


async def test_without_targeted_fields_surrogate_control_is_neither_followed_nor_removed(
    origin, proxy
):
    app, calls = counting(lambda n: [("Cache-Control", "max-age=10000"),
                                     ("Surrogate-Control", "no-store")])
    c = await proxy(await origin(app), cache={"targeted_fields": ()})
    await c.get("/r")
    hit = await c.get("/r")
    assert hit.headers["X-Cache"] == "HIT" and calls["GET"] == 1
    assert hit.headers["Surrogate-Control"] == "no-store"


async def test_surrogate_control_of_a_304_freshens_and_stays_out_of_the_answer(origin, proxy):
    app, seen = validating([("Surrogate-Control", "max-age=1")],
                           [("Surrogate-Control", "max-age=600")])
    c = await proxy(await origin(app))
    await c.get("/r")
    validated = await c.get("/r")
    assert "fwd-status=304" in validated.headers["Cache-Status"]
    hit = await c.get("/r")
    # Fresh for the 304's Surrogate-Control max-age=600, not its Cache-Control max-age=60.
    assert hit.headers["X-Cache"] == "HIT" and len(seen) == 2
    assert int(hit.headers["Cache-Status"].rpartition("ttl=")[2]) > 500
    for resp in (validated, hit):
        assert "Surrogate-Control" not in resp.headers
        assert resp.headers["Cache-Control"] == "max-age=60"


async def test_rfc9213_the_demo_targeted_resource(origin, proxy):
    from cacheproxy.demo.origin import make_demo_app
    c = await proxy(await origin(make_demo_app()))
    await c.get("/targeted")
    hit = await c.get("/targeted")
    assert hit.headers["X-Cache"] == "HIT" and hit.headers["Cache-Control"] == "public, max-age=10"
    assert int(hit.headers["Cache-Status"].rpartition("ttl=")[2]) > 500  # CDN-Cache-Control's


# -- RFC 9111 §4.3.5 Freshening responses with HEAD -----------------------------------------

def head_origin(etag_on_head: str, get_cc: str) -> tuple[web.Application, list[str]]:
    """/r: a GET gets a 200 (ETag "v1", Template-A 1, get_cc); a HEAD a 200 with
    etag_on_head, Template-A 2 and max-age=1000."""
    methods: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        methods.append(request.method)
        if request.method == "HEAD":
            return web.Response(headers={
                "ETag": etag_on_head, "Template-A": "2", "Cache-Control": "max-age=1000"})
        return web.Response(body=b"stored", headers={
            "ETag": '"v1"', "Template-A": "1", "Cache-Control": get_cc})

    app = web.Application()
    app.router.add_route("*", "/r", handle)
    return app, methods


async def test_s4_3_5_a_head_sent_as_head_updates_the_stored_get__head_200_update(
    origin, proxy
):
    app, methods = head_origin('"v1"', "max-age=0")  # stale at once
    c = await proxy(await origin(app))
    await c.get("/r")
    # If-Match on a stale response is the origin's to evaluate: the HEAD goes as HEAD.
    head = await c.head("/r", headers={"If-Match": '"v1"'})
    assert head.status == 200 and head.headers["Template-A"] == "2"
    hit = await c.get("/r")
    assert hit.headers["X-Cache"] == "HIT" and hit.headers["Template-A"] == "2"
    assert await hit.read() == b"stored" and methods == ["GET", "HEAD"]


async def test_s4_3_5_a_head_for_another_representation_makes_the_stored_get_stale(
    origin, proxy
):
    app, methods = head_origin('"v2"', "max-age=600")  # fresh: a hit but for the HEAD
    c = await proxy(await origin(app))
    await c.get("/r")
    # Validation asked for (max-age=0) with If-Match: the origin's, sent as HEAD.
    await c.head("/r", headers={"If-Match": '"v1"', "Cache-Control": "max-age=0"})
    again = await c.get("/r")
    assert again.headers["X-Cache"] == "MISS" and methods == ["GET", "HEAD", "GET"]


# -- RFC 9110 §13.2 preconditions, evaluated by the cache (RFC 9111 §4.3.2) ----------------

LAST_MODIFIED = "Sun, 31 Dec 2023 23:00:00 GMT"


@pytest.mark.parametrize(("fields", "status"), [
    ({"If-Match": '"v1"'}, 200), ({"If-Match": '"v2"'}, 412), ({"If-Match": "*"}, 200),
    ({"If-Unmodified-Since": LAST_MODIFIED}, 200),
    ({"If-Unmodified-Since": "Sat, 30 Dec 2023 00:00:00 GMT"}, 412),
])
async def test_s13_2_2_preconditions_on_a_fresh_response_are_answered_here(
    origin, proxy, fields, status
):
    app, calls = counting(lambda n: [("Cache-Control", "max-age=600"), ("ETag", '"v1"'),
                                     ("Last-Modified", LAST_MODIFIED)])
    c = await proxy(await origin(app))
    await c.get("/r")
    for method in ("GET", "HEAD"):
        resp = await c.request(method, "/r", headers=fields)
        assert resp.status == status, method
        assert "cacheproxy; hit" in resp.headers["Cache-Status"]
    assert calls["GET"] == 1  # the origin saw the first request only


async def test_s13_2_2_a_precondition_without_a_fresh_response_is_the_origins(origin, proxy):
    seen: list[str | None] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.headers.get("If-Match"))
        if request.headers.get("If-Match", '"v1"') != '"v1"':
            return web.Response(status=412)
        return web.Response(text="v1", headers={"ETag": '"v1"', "Cache-Control": "max-age=0"})

    app = web.Application()
    app.router.add_get("/r", handle)
    c = await proxy(await origin(app))
    assert (await c.get("/r", headers={"If-Match": '"v2"'})).status == 412  # a miss
    await c.get("/r")  # stored, stale at once
    assert (await c.get("/r", headers={"If-Match": '"v2"'})).status == 412  # stale
    assert seen == ['"v2"', None, '"v2"']


# -- RFC 9110 §14 Range requests from a stored complete response ---------------------------

async def ranged_proxy(origin, proxy, **fields: str):  # type: ignore[no-untyped-def]
    app, calls = counting(lambda n: [("Cache-Control", "max-age=3600"), ("ETag", '"v1"'),
                                     ("Content-Type", "text/plain"), *fields.items()],
                          body="0123456789")  # "0123456789 1": 12 bytes
    c = await proxy(await origin(app))
    await c.get("/r")
    return c, calls


@pytest.mark.parametrize(("value", "content_range", "body"), [
    ("bytes=0-1", "bytes 0-1/12", b"01"),
    ("bytes=5-", "bytes 5-11/12", b"56789 1"),
    ("bytes=-3", "bytes 9-11/12", b"9 1"),
])
async def test_s14_2_a_range_of_a_stored_response__partial_store_complete_reuse_partial(
    origin, proxy, value, content_range, body
):
    c, calls = await ranged_proxy(origin, proxy)
    resp = await c.get("/r", headers={"Range": value})
    assert resp.status == 206 and resp.headers["X-Cache"] == "HIT"
    assert resp.headers["Content-Range"] == content_range and await resp.read() == body
    assert resp.headers["Content-Length"] == str(len(body)) and resp.headers["ETag"] == '"v1"'
    assert calls["GET"] == 1


async def test_s14_6_several_ranges_are_multipart_byteranges(origin, proxy):
    c, _ = await ranged_proxy(origin, proxy)
    resp = await c.get("/r", headers={"Range": "bytes=0-1, 4-5"})
    assert resp.status == 206
    content_type = resp.headers["Content-Type"]
    assert content_type.startswith("multipart/byteranges; boundary=")
    boundary = content_type.partition("boundary=")[2]
    body = await resp.read()
    assert body.count(f"--{boundary}".encode()) == 3
    assert b"Content-Range: bytes 0-1/12\r\n\r\n01" in body
    assert b"Content-Range: bytes 4-5/12\r\n\r\n45" in body
    assert b"Content-Type: text/plain" in body


async def test_s15_5_17_an_unsatisfiable_range_is_416(origin, proxy):
    c, calls = await ranged_proxy(origin, proxy)
    resp = await c.get("/r", headers={"Range": "bytes=50-"})
    assert resp.status == 416 and resp.headers["Content-Range"] == "bytes */12"
    assert await resp.read() == b"" and calls["GET"] == 1
    # Not the stored 200's freshness and validators: a cache further on would store the
    # 416 under the URL (RFC 9111 §3) and could answer requests without a Range with it.
    assert not {"Cache-Control", "Expires", "ETag", "Content-Type"} & set(resp.headers)
    assert resp.headers["X-Cache"] == "HIT" and "Age" in resp.headers


@pytest.mark.parametrize(("if_range", "status"), [('"v1"', 206), ('"v0"', 200)])
async def test_s13_1_5_if_range(origin, proxy, if_range, status):
    c, calls = await ranged_proxy(origin, proxy)
    resp = await c.get("/r", headers={"Range": "bytes=0-1", "If-Range": if_range})
    assert resp.status == status and resp.headers["X-Cache"] == "HIT" and calls["GET"] == 1


async def test_s13_2_2_if_none_match_comes_before_the_range(origin, proxy):
    c, _ = await ranged_proxy(origin, proxy)
    resp = await c.get("/r", headers={"Range": "bytes=0-1", "If-None-Match": '"v1"'})
    assert resp.status == 304


# -- RFC 9111 §4.4 invalidation of Location / Content-Location --------------------------------

@pytest.mark.parametrize("shared", [True, False])  # a private cache keys apart ("#private:")
async def test_s4_4_location_and_content_location_name_stored_entries(origin, proxy, shared):
    calls: Counter[str] = Counter()

    async def handle(request: web.Request) -> web.Response:
        calls[request.method + " " + request.path] += 1
        if request.method == "POST":
            # An absolute URL as the client's Host names it (X-Forwarded-Host), upper-case.
            client_host = request.headers["X-Forwarded-Host"].upper()
            return web.Response(status=201, headers={
                "Location": "/b", "Content-Location": f"HTTP://{client_host}/c"})
        return web.Response(text=request.path, headers={"Cache-Control": "max-age=600"})

    app = web.Application()
    app.router.add_route("*", "/{name}", handle)
    c = await proxy(await origin(app), cache={"shared": shared})
    for path in ("/a", "/b", "/c"):
        await c.get(path)
    assert (await c.post("/a", data=b"x")).status == 201
    for path in ("/a", "/b", "/c"):
        assert (await c.get(path)).headers["X-Cache"] == "MISS", path
    assert calls["GET /b"] == calls["GET /c"] == 2


def range_origin(cache_control: str, chunked: bool = False
                 ) -> tuple[web.Application, list[str | None]]:
    """/r: "0123456789"; a Range is answered (206) by the origin itself."""
    ranges: list[str | None] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        value = request.headers.get("Range")
        ranges.append(value)
        headers = {"Cache-Control": cache_control}
        if value == "bytes=0-1":
            headers["Content-Range"] = "bytes 0-1/10"
            return web.Response(status=206, body=b"01", headers=headers)
        if chunked:
            resp = web.StreamResponse(headers=headers)
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            await resp.write(b"0123456789")
            await resp.write_eof()
            return resp
        return web.Response(body=b"0123456789", headers=headers)

    app = web.Application()
    app.router.add_get("/r", handle)
    return app, ranges


async def test_s14_2_a_range_miss_fills_the_cache_then_answers_from_it(origin, proxy):
    app, ranges = range_origin("max-age=600")
    c = await proxy(await origin(app))
    first = await c.get("/r", headers={"Range": "bytes=0-1"})
    assert first.status == 206 and first.headers["Content-Range"] == "bytes 0-1/10"
    assert await first.read() == b"01" and "stored" in first.headers["Cache-Status"]
    whole = await c.get("/r")
    assert whole.headers["X-Cache"] == "HIT" and await whole.read() == b"0123456789"
    assert ranges == [None]


@pytest.mark.parametrize(("cache_control", "chunked", "sections"), [
    ("no-store", False, {}),                          # not storable
    ("max-age=600", False, {"max_object_bytes": 5}),  # too big to store
    ("max-age=600", True, {}),                        # length unknown
    ("max-age=600", False, {"fill_buffer_bytes": 5}),  # no room to read it whole
])
async def test_s14_2_a_range_the_cache_will_not_store_is_the_origins(
    origin, proxy, cache_control, chunked, sections
):
    app, ranges = range_origin(cache_control, chunked)
    c = await proxy(await origin(app), cache=sections)
    resp = await c.get("/r", headers={"Range": "bytes=0-1"})
    assert resp.status == 206 and await resp.read() == b"01"
    assert ranges == [None, "bytes=0-1"]  # asked whole first, then as the client asked


async def test_a_range_miss_asked_again_is_logged_as_a_miss(origin, proxy, tmp_path):
    """The second request (Refetch) keeps the lookup's word: MISS, not EXPIRED."""
    app, ranges = range_origin("no-store")
    c = await proxy(await origin(app), log={"path": str(tmp_path / "log")})
    assert (await c.get("/r", headers={"Range": "bytes=0-1"})).status == 206
    [line] = await read_json_log(c)
    assert line["cache"] == "MISS" and ranges == [None, "bytes=0-1"]


# -- RFC 9110 §9.3.3 a stored POST response answers later GETs ------------------------------

def posting(answer: Callable[[web.Request], dict[str, str]]
            ) -> tuple[web.Application, Counter[str]]:
    """/p (and /p/other): a POST answered "posted", a GET "got", with the fields answer()
    gives for the request."""
    calls: Counter[str] = Counter()

    async def handle(request: web.Request) -> web.Response:
        calls[request.method + " " + request.path] += 1
        text = "posted " + (await request.text()) if request.method == "POST" else "got"
        return web.Response(text=text, headers=answer(request))

    app = web.Application()
    app.router.add_route("*", "/p", handle)
    app.router.add_route("*", "/p/other", handle)
    return app, calls


async def test_s9_3_3_a_post_answer_naming_its_uri_answers_the_next_get__method_POST(
        origin, proxy):
    """Explicit freshness and Content-Location = the target URI (the suite sends the path)."""
    app, calls = posting(lambda r: {"Cache-Control": "max-age=600", "Content-Location": "/p"}
                         if r.method == "POST" else {"Cache-Control": "max-age=600"})
    c = await proxy(await origin(app))
    posted = await c.post("/p", data=b"12345", headers={"Content-Type": "text/plain"})
    assert await posted.text() == "posted 12345"
    assert "stored" in posted.headers["Cache-Status"]
    got = await c.get("/p")
    assert got.headers["X-Cache"] == "HIT" and await got.text() == "posted 12345"
    head = await c.head("/p")
    assert head.headers["X-Cache"] == "HIT"
    assert calls == Counter({"POST /p": 1})


async def test_s4_4_a_stored_post_answer_still_invalidates_the_other_variants(origin, proxy):
    """§4.4 then RFC 9110 §9.3.3: the URI's stored variants go before the POST's answer is
    stored as the new representation (for the POST's own variant)."""
    app, calls = posting(lambda r: {"Cache-Control": "max-age=600", "Vary": "Accept-Language",
                                    **({"Content-Location": "/p"} if r.method == "POST" else {})})
    c = await proxy(await origin(app))
    await c.get("/p", headers={"Accept-Language": "fr"})
    await c.get("/p", headers={"Accept-Language": "de"})
    await c.post("/p", data=b"x", headers={"Accept-Language": "de"})
    fr = await c.get("/p", headers={"Accept-Language": "fr"})
    assert fr.headers["X-Cache"] == "MISS" and await fr.text() == "got"
    de = await c.get("/p", headers={"Accept-Language": "de"})
    assert de.headers["X-Cache"] == "HIT" and await de.text() == "posted x"
    assert calls["GET /p"] == 3


@pytest.mark.parametrize("fields", [
    {"Cache-Control": "max-age=600", "Content-Location": "/p/other"},
    {"Cache-Control": "max-age=600"},
    {"Content-Location": "/p", "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"},
    {"Cache-Control": "max-age=600", "Content-Location": "/p", "Set-Cookie": "a=1"},
], ids=["another-location", "no-location", "no-explicit-freshness", "set-cookie"])
async def test_s9_3_3_other_post_answers_are_not_stored(origin, proxy, fields):
    app, calls = posting(lambda r: fields if r.method == "POST"
                         else {"Cache-Control": "max-age=600"})
    c = await proxy(await origin(app))
    await c.post("/p", data=b"x")
    got = await c.get("/p")
    assert got.headers["X-Cache"] == "MISS" and await got.text() == "got"
    assert calls["GET /p"] == 1
