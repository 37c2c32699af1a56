"""Review referer: hotlink protection, Referrer-Policy and secrets in Referer, read as an
attacker and as a browser reads them (W3C Referrer Policy, the Fetch standard's referrer
steps, nginx's valid_referers).

What was looked at, with a real proxy in front of real origins: the hotlink gate against
hostile Referers (look-alike hosts, userinfo, trailing dots, case, ports, IDN, non-http(s)
and invalid Referers, several Referer fields), on hits, 304s, HEAD and Range requests; the
Referrer-Policy the proxy sets on every kind of answer, beside an origin's own; the Referer
forwarded upstream and the request log with secret parameters in every spelling a server
reads; and, in headless Chromium, what the browser then sends a cross-site page. A test
whose docstring gives a defect failed before its fix; "what held" tests pin checks that
passed. (The Vary: Referer defect found here is fixed by review varyref, whose tests are in
test_review_varyref_regressions.py.)
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from browser import chromium
from support import proxy_for_toml as start
from support import raw_get, read_json_log
from test_browser_policies import HOSTS_ON_LOOPBACK, Tabs, Upstream, base
from test_config import load_error


class Origin:
    """An origin answering every path with a cacheable page carrying `fields`, and keeping
    the Referer fields each request came with."""

    def __init__(self, **fields: str) -> None:
        self.fields = fields
        self.referers: list[list[str]] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.answer)

    async def answer(self, request: web.Request) -> web.Response:
        self.referers.append(request.headers.getall("Referer", []))
        return web.Response(text="ok", headers={"Cache-Control": "public, max-age=60",
                                                **self.fields})


NO_REFERRER = '[proxy]\nupstream = "{up}"\n[referer]\npolicy = "no-referrer"\n'


# --- Referrer-Policy ---------------------------------------------------------------------------


@pytest.mark.parametrize("upstream_value", ["nonsense", "", "strict-origin-when-crossorigin",
                                            "unsafe_url, no_referrer"])
async def test_an_upstream_referrer_policy_no_browser_understands_does_not_hide_ours(
        origin, proxy, tmp_path, upstream_value):
    """With `policy_override = false` (the default) the proxy kept any upstream
    Referrer-Policy field and added none of its own, even one with no token a browser
    knows (an empty value, a typo such as `strict-origin-when-crossorigin`). W3C Referrer
    Policy §8.1 (parse a referrer policy from a Referrer-Policy header): the browser takes
    the last *known* token and, finding none, falls back to its default policy. So an
    operator who set `policy = "no-referrer"` (or `same-origin`) to keep the session ids in
    their URLs from other sites saw browsers send cross-site Referers anyway (the origin,
    or with older defaults, `no-referrer-when-downgrade`, the whole URL) from every page
    whose origin had a broken field. README promises the proxy's policy on "responses that
    have none", and such a response has none in effect. Now an upstream field without a
    known token counts as none: it is replaced by the proxy's, on misses and hits alike.
    Severity: medium (a configured privacy guarantee silently not applied)."""
    up = Origin(**{"Referrer-Policy": upstream_value})
    c = await start(origin, proxy, tmp_path, NO_REFERRER, up=up)
    miss = await c.get("/page")
    hit = await c.get("/page")
    assert hit.headers["X-Cache"] == "HIT"
    for resp in (miss, hit):
        assert resp.headers.getall("Referrer-Policy") == ["no-referrer"]


@pytest.mark.parametrize("upstream_value", ["unsafe-url", "nonsense, unsafe-url",
                                            "Unsafe-URL", "same-origin, nonsense"])
async def test_an_upstream_referrer_policy_a_browser_applies_is_still_kept(
        origin, proxy, tmp_path, upstream_value):
    """The other side of the fix above: an upstream field with a token the browser applies
    (Chromium compares them caselessly) is the origin's own policy, kept unless
    policy_override is set (README). Severity: none (it held; kept as the fix's bound)."""
    up = Origin(**{"Referrer-Policy": upstream_value})
    c = await start(origin, proxy, tmp_path, NO_REFERRER, up=up)
    assert (await c.get("/page")).headers.getall("Referrer-Policy") == [upstream_value]
    hit = await c.get("/page")
    assert hit.headers["X-Cache"] == "HIT"
    assert hit.headers.getall("Referrer-Policy") == [upstream_value]


async def test_chromium_sends_no_referer_when_the_origins_policy_is_one_it_ignores(
        origin, proxy):
    """The browser's side of the first test: a page whose origin sent
    `Referrer-Policy: strict-origin-when-crossorigin` (a typo) through a proxy configured
    with `policy = "no-referrer"`. Chromium ignored the field and used its default, so the
    cross-origin link sent `Referer: http://127.0.0.1:PORT/` to the other site; with the
    proxy's policy in place it sends none. Severity: medium (as above)."""
    upstream = Upstream()
    upstream.page_policy = "strict-origin-when-crossorigin"
    client = await proxy(await origin(upstream.app), referer={"policy": "no-referrer"})
    upstream.link = base(client, "localhost") + "/next"  # another origin, through the proxy
    async with chromium(HOSTS_ON_LOOPBACK) as browser:
        tab = await Tabs(browser).open(f"{base(client)}/page?gsid=SECRET")
        async with tab.page.expect_request(lambda r: urlsplit(r.url).path == "/next") as info:
            await tab.page.click("#next")
        await tab.page.wait_for_selector("#arrived")
        sent = (await (await info.value).all_headers()).get("referer")
    assert sent is None
    assert [seen.headers.get("Referer") for seen in upstream.requests("/next")] == [None]


# --- secrets in the Referer, upstream and in the log --------------------------------------------


@pytest.mark.parametrize("secret", ["token[]=S3CRET", "token[0]=S3CRET", "session[id]=S3CRET",
                                    "+token=S3CRET", "%20token=S3CRET",
                                    "access.token=S3CRET", "token%5B%5D=S3CRET"])
async def test_a_secret_parameter_spelled_as_servers_read_it_is_stripped_and_redacted(
        origin, proxy, tmp_path, secret):
    """`strip_params` matched a parameter's name exactly (after %-decoding and lower-casing),
    so `?token[]=...` went upstream in the Referer and into the request log whole. PHP reads
    `token[]=x` and `token[0]=x` as the parameter `token` (an array), and so do Rails/Rack
    (`session[id]` is `params[:session][:id]`) and Node's qs; PHP drops leading spaces
    from a name, so `+token=` is `token` to it too. A page URL with such a parameter leaked
    its session id to the upstream in Referer (the seed notes' case) and to the log file.
    Now a name is read as those servers read it: `+` as a space, leading/trailing spaces
    dropped, the part before `[` taken, and `.` read as `_` as PHP reads it (`access.token`
    is its `access_token`). Severity: low (the page must spell its secret
    parameter so; the leak is then whole)."""
    up = Origin()
    log = tmp_path / "log.json"
    c = await start(origin, proxy, tmp_path,
                    '[proxy]\nupstream = "{up}"\n[log]\n' f'path = "{log}"\n', up=up)
    referer = f"https://mail.example/inbox?x=1&{secret}&y=2"
    resp = await c.get(f"/p?{secret}", headers={"Referer": referer})
    assert resp.status == 200
    assert up.referers[-1] == ["https://mail.example/inbox?x=1&y=2"]
    line = (await read_json_log(c))[-1]
    assert "S3CRET" not in line["referer"] and "REDACTED" in line["referer"]
    assert "S3CRET" not in line["path"] and "REDACTED" in line["path"]


async def test_several_referer_fields_are_each_stripped(origin, proxy, tmp_path):
    """What held: a client sending two Referer fields (no browser does; RFC 9110 §10.1.3
    has one) gets each one's secrets stripped before it goes upstream, and the hotlink gate
    reads the first, as nginx does. Severity: none (checked, held)."""
    up = Origin()
    c = await start(origin, proxy, tmp_path, '[proxy]\nupstream = "{up}"\n', up=up)
    status, _, _ = await raw_get(c, "/two", "Referer: https://m.example/p?a=1&token=S1",
                                 "Referer: https://m.example/q?sid=S2")
    assert status == 200
    assert up.referers[-1] == ["https://m.example/p?a=1", "https://m.example/q"]


# --- hotlink protection: what held -------------------------------------------------------------

HOTLINK = """
[proxy]
upstream = "{up}"
[referer]
protect_paths = ["/images/"]
valid_referers = ["none", "blocked", "server_names", "*.friend.example", "bücher.example"]
"""


@pytest.mark.parametrize(("referer", "status"), [
    ("https://a.friend.example/", 200),
    ("HTTPS://A.FRIEND.EXAMPLE:8443/x", 200),  # hosts caseless, any port, either scheme
    ("http://a.friend.example./", 200),  # a trailing dot names the same host
    ("https://xn--bcher-kva.example/", 200),  # a browser sends an IDN in punycode
    ("https://shop.example/page", 200),  # server_names: the Host asked for
    ("https://friend.example/", 403),  # *.friend.example is subdomains only
    ("https://a.friend.example.evil.com/", 403),
    ("https://evilfriend.example/", 403),
    ("https://evil.com/a.friend.example", 403),
    ("https://a.friend.example@evil.com/", 403),  # userinfo is not the host
    ("https://evil.com?@a.friend.example", 403),
    ("https://evil.com#@a.friend.example", 403),
    ("https://a.friend.example%2eevil.com/", 403),
    ("https://shop.example.evil.com/", 403),
    ("https://b%C3%BCcher.example/", 403),  # not what a browser sends for an IDN
])
async def test_hostile_referers_meet_the_hotlink_gate_as_nginx_reads_them(
        origin, proxy, tmp_path, referer, status):
    """What held: look-alike hosts, userinfo, a query or fragment holding the allowed name,
    and case, port and trailing-dot spellings are read as the URL's host, on a GET, a HEAD,
    a Range request and a conditional one, and a refusal is never the stored image.
    Severity: none (checked, held)."""
    up = Origin()
    c = await start(origin, proxy, tmp_path, HOTLINK, up=up)
    assert (await raw_get(c, "/images/a.png", host="shop.example"))[0] == 200  # stored
    for fields in ([], ["Range: bytes=0-1"], ['If-None-Match: "x"']):
        got, head, body = await raw_get(c, "/images/a.png", f"Referer: {referer}", *fields,
                                        host="shop.example")
        assert got == status or (status == 200 and got in (206, 304)), fields
        if got == 403:
            assert head["cache-control"] == "no-store" and body != b"ok"
    got, _, body = await raw_get(c, "/images/a.png", f"Referer: {referer}", method="HEAD",
                                 host="shop.example")
    assert got == status and body == b""


async def test_every_answer_of_a_protected_route_carries_the_policy(origin, proxy, tmp_path):
    """What held: the proxy's Referrer-Policy is on the refusal (403), a hit, a 206 and a
    416, and its own 502. A 304 carries none (not in override mode): it would replace, in
    the browser's stored copy, the policy the 200 gave it, the origin's own included
    (test_review_redbot_regressions). Severity: none (checked, held)."""
    up = Origin(ETag='"e"')
    c = await start(origin, proxy, tmp_path, HOTLINK + 'policy = "same-origin"\n', up=up)
    seen: dict[str, Any] = {}
    for name, fields in [("miss", []), ("hit", []), ("304", ['If-None-Match: "e"']),
                         ("206", ["Range: bytes=0-1"]), ("416", ["Range: bytes=9-"]),
                         ("403", ["Referer: https://evil.example/"])]:
        got, head, _ = await raw_get(c, "/images/a.png", *fields, host="shop.example")
        seen[name] = (got, head.get("referrer-policy"))
    assert seen == {"miss": (200, "same-origin"), "hit": (200, "same-origin"),
                    "304": (304, None), "206": (206, "same-origin"),
                    "416": (416, "same-origin"), "403": (403, "same-origin")}


async def test_vary_referer_keys_on_the_referer_the_upstream_saw(origin, proxy, tmp_path):
    """An upstream answering `Vary: Referer` selected its response on the Referer the proxy
    forwarded, secrets stripped; the proxy keyed the stored variant on the client's own
    Referer instead. So the secret (`?token=...`) sits in the store (in Redis too) and in
    the admin API's `entries` listing (`"vary": {"referer": ...}`), and two pages that
    differ only in their session id are two misses for one and the same upstream answer.
    RFC 9111 §4.1 lets a cache normalise selecting values "in a way that is known to have
    identical semantics": here, as the proxy itself forwards them (now so). Severity: low
    (admin API only; an origin varying on Referer is rare)."""
    up = Origin(Vary="Referer")
    c = await start(origin, proxy, tmp_path, '[proxy]\nupstream = "{up}"\n', up=up)
    for secret in ("S3CRET1", "S3CRET2"):
        status, _, _ = await raw_get(c, "/v", f"Referer: https://m.example/p?token={secret}&x=1")
        assert status == 200
    assert up.referers == [["https://m.example/p?x=1"]] * 2 or len(up.referers) == 1
    listing = await (await c.get("/_cacheproxy/entries")).text()
    assert "S3CRET" not in listing
    assert len(up.referers) == 1  # the second page was the stored answer


async def test_a_strip_params_entry_written_with_brackets_strips_the_parameter(
        origin, proxy, tmp_path):
    """Follow-up to the reading of names as PHP does: an operator who had listed
    `strip_params = ["token[]"]` (the spelling their PHP pages use) would have had it match
    no parameter once names are read before their `[`. Entries are now read the same way,
    so "token[]" strips `token[]=`, `token[0]=` and `token=`; an entry with no name before
    `[` is refused at start naming the key. Severity: low."""
    up = Origin()
    c = await start(origin, proxy, tmp_path,
                    '[proxy]\nupstream = "{up}"\n[referer]\nstrip_params = ["token[]"]\n', up=up)
    for n, secret in enumerate(["token[]=S", "token%5B0%5D=S", "Token=S"]):
        await c.get(f"/p{n}", headers={"Referer": f"https://m.example/?{secret}&x=1"})
        assert up.referers[-1] == ["https://m.example/?x=1"], secret
    refused = load_error(tmp_path, '[proxy]\nupstream = "http://127.0.0.1:9"\n[referer]\n'
                                   'strip_params = ["[id]"]\n')
    assert refused.key == "referer.strip_params"


def test_a_valid_referers_entry_written_as_a_url_is_refused_saying_so(tmp_path):
    """`valid_referers = ["https://good.example"]` (a URL, as allow_origins entries are
    written) stopped the start with "expected a host name ... got 'https:'", which reads as
    if the proxy had misparsed the entry. nginx's entries, and ours, are a host with an
    optional path; the message now says to drop the scheme and names the host to write.
    Severity: low (a config message that misleads)."""
    refused = load_error(tmp_path, '[proxy]\nupstream = "http://127.0.0.1:9"\n[referer]\n'
                                   'valid_referers = ["https://good.example"]\n')
    assert refused.key == "referer.valid_referers"
    assert "without a scheme ('good.example'" in str(refused)
