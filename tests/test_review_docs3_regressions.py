"""Findings of a review of today's README sections against what the code does (review-docs3):
the cache key's spelling rules, proxy.listen with IPv6 and admin.listen's overlap check,
proxy.trust_forwarded's scheme in the key and the admin purge, the WebSocket handshake's
Cache-Status. Real proxy in front of an aiohttp origin, both on 127.0.0.1. The tests of a
defect failed on the code they were written against (0d960eb); those that pin behaviour
the README words differently say which sentence to change."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from support import raw_get
from test_review_keys_regressions import echo_app

from cacheproxy.config import load_config

# -- 1. an IPv6 literal in Host is keyed as written, not compressed ---------------------------


async def test_an_ipv6_literal_host_is_keyed_and_forwarded_in_its_compressed_form(
        origin: Any, proxy: Any) -> None:
    """README, "Which resource": the Host in the key and in X-Forwarded-Host is "lower-cased
    and without the scheme's default port, an empty port too (`host:`), and an IPv6 literal
    in its compressed form". The last was not done: `Host: [0:0::1]:8080` was keyed (and
    sent upstream as X-Forwarded-Host) as written, so it missed the entry `[::1]:8080`
    filled, one address under two keys (RFC 4291 §2.2 / RFC 5952: one address; RFC 3986
    §6.2.2.1 case, §6.2.3 port normalisation; browsers send the compressed form). Routes,
    CORS and the PAC file already compare the compressed form (0e2f08a, 055ddcb).
    Severity: low (a miss and a second copy, and an X-Forwarded-Host spelling the origin
    may not list; never another site's answer)."""
    c = await proxy(await origin(echo_app()))
    status, fields, _ = await raw_get(c, "/p", host="[::1]:8080")
    assert status == 200 and fields["x-cache"] == "MISS"
    status, fields, _ = await raw_get(c, "/p", host="[0:0::1]:8080")
    assert status == 200 and fields["x-cache"] == "HIT", fields
    _, _, body = await raw_get(c, "/q", host="[0:0:0::1]:8080")
    assert json.loads(body)["xfh"] == "[::1]:8080"


# -- 2. admin.listen beside an IPv6-only [::] listener ---------------------------------------


def test_admin_listen_on_an_ipv4_address_beside_an_ipv6_only_wildcard_is_accepted(
        tmp_path: Path) -> None:
    """README: `"[::]:8080"` listens on IPv6 only (as nginx's `listen [::]:8080`), and
    admin.listen is a config error only on "the same address as proxy.listen ..., however
    spelled (`localhost` and `127.0.0.1`, a wildcard covering it)". [::] covers no IPv4
    address (the proxy binds it with IPV6_V6ONLY: 127.0.0.1 on the same port binds
    beside it), yet proxy.listen = "[::]:P" with admin.listen = "127.0.0.1:P" stopped the
    start ("must differ from proxy.listen"): "::" was taken as covering every address.
    The ones that do overlap stay refused. Severity: low (a valid layout refused at start,
    with a message that contradicts the README)."""
    empty = tmp_path / "cacheproxy.toml"
    empty.write_text("")

    def check(listen: str, admin: str) -> str | None:
        try:
            load_config(empty, env={}, overrides={
                "proxy.listen": listen, "admin.listen": admin,
                "proxy.upstream": "http://127.0.0.1:9"})
        except Exception as exc:  # ConfigError
            return str(exc)
        return None

    assert check("[::]:18080", "127.0.0.1:18080") is None
    assert check("0.0.0.0:18080", "[::1]:18080") is None
    for listen, admin in [("[::]:18080", "[::1]:18080"), ("0.0.0.0:18080", "127.0.0.1:18080"),
                          ("127.0.0.1:18080", "localhost:18080"),
                          ("[0:0::0]:18080", "[::1]:18080")]:
        refused = check(listen, admin)
        assert refused is not None and refused.startswith("admin.listen"), (listen, admin)


# -- 3. behind a trusted TLS front, the admin purge of a path misses the https entry -----------


async def test_a_path_purge_reaches_the_entries_a_trusted_front_keyed_https(
        origin: Any, proxy: Any) -> None:
    """With proxy.trust_forwarded = true the front's scheme is part of the key
    (`https://host/...`), which is what every entry is keyed by behind a TLS terminator.
    README, admin API: `purge?url=/max-age` purges "one URL (all variants)", `purge?prefix=`
    by prefix, and "URLs may be given in full or as a path on the proxy's host". A path
    was keyed with the listener's own scheme (http) only: the purge answered 404 and the
    prefix purge {"purged": 0} while https clients went on getting the old page until it
    expired. An operator purging after a deploy types a path (Varnish's and nginx's purges
    are by path too). Severity: medium (a purge that silently does not happen)."""
    c = await proxy(await origin(echo_app()), proxy={"trust_forwarded": True})
    https = "X-Forwarded-Proto: https"
    host = f"{c.server.host}:{c.server.port}"  # the purge's path is on the proxy's host
    for path in ("/a/one", "/a/two"):
        await raw_get(c, path, https, host=host)
        _, fields, _ = await raw_get(c, path, https, host=host)
        assert fields["x-cache"] == "HIT"
    # entries?prefix=/a/ lists them as a purge of the path finds them (both schemes)
    r = await c.get("/_cacheproxy/entries", params={"prefix": "/a/"})
    assert sorted(e["key"] for e in (await r.json())["entries"]) == \
        [f"https://{host}/a/one", f"https://{host}/a/two"]
    r = await c.post("/_cacheproxy/purge", params={"url": "/a/one"})
    assert r.status == 200, await r.text()
    r = await c.post("/_cacheproxy/purge", params={"prefix": "/a/"})
    assert (await r.json())["purged"] == 1
    for path in ("/a/one", "/a/two"):
        _, fields, _ = await raw_get(c, path, https, host=host)
        assert fields["x-cache"] == "MISS", path


# -- 4. README: the 101 of a WebSocket carries no Cache-Status --------------------------------


async def test_a_websocket_101_carries_no_cache_status_but_a_refused_handshake_does(
        origin: Any, proxy: Any) -> None:
    """Pins what the code does; README's WebSocket section should be reworded. It says a
    handshake goes on "past the cache (`Cache-Status: cacheproxy; fwd=bypass`: nothing is
    looked up or stored)", but the 101 the client gets has no Cache-Status (and its log
    line's cache_status is ""): only an answer other than 101 (relayed as a pass-through)
    says `fwd=bypass`. Suggested: "past the cache (nothing is looked up or stored; an
    answer other than 101 says `Cache-Status: cacheproxy; fwd=bypass`)". Severity: low
    (documentation)."""
    c = await proxy(await origin(echo_app()))
    key = base64.b64encode(b"0123456789abcdef").decode()
    accept = base64.b64encode(hashlib.sha1(
        (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
    reader, writer = await asyncio.open_connection(c.server.host, c.server.port)
    writer.write((f"GET /ws HTTP/1.1\r\nHost: example.test\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    assert head.startswith(b"HTTP/1.1 101 ") and accept.encode() in head
    assert b"cache-status" not in head.lower()
    # A handshake the origin does not switch for: relayed, and says it bypassed the cache.
    status, fields, _ = await raw_get(c, "/plain", "Upgrade: websocket",
                                      "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                                      "Sec-WebSocket-Version: 13")
    assert status == 200 and fields["cache-status"].startswith("cacheproxy; fwd=bypass")


# -- 5. README: Forwarded proto= alone is not turned into X-Forwarded-Proto --------------------


async def test_a_trusted_forwarded_proto_is_keyed_but_sent_as_x_forwarded_proto_only_if_on(
        origin: Any, proxy: Any) -> None:
    """Pins what the code does; README's proxy.trust_forwarded row should be narrowed. It
    says the front's scheme (X-Forwarded-Proto's last member, "else proto= of the last
    Forwarded element") is "sent upstream as the one X-Forwarded-Proto value (even with
    x_forwarded_proto = false)". With x_forwarded_proto = false and a front that sends
    only `Forwarded: proto=https`, no X-Forwarded-Proto goes upstream (the trusted
    Forwarded field itself does, unchanged); the key is https's as documented. The "even
    with x_forwarded_proto = false" holds for a front's X-Forwarded-Proto only.
    Suggested: "sent upstream as the one X-Forwarded-Proto value (with x_forwarded_proto =
    false, only when the front sent X-Forwarded-Proto; its Forwarded goes on as it is)".
    Severity: low (documentation)."""
    c = await proxy(await origin(echo_app()),
                    proxy={"trust_forwarded": True, "x_forwarded_proto": False})
    _, _, body = await raw_get(c, "/f", "Forwarded: for=1.2.3.4;proto=https")
    seen = json.loads(body)
    assert seen["xfp"] == [] and seen["forwarded"] == "for=1.2.3.4;proto=https"
    _, _, body = await raw_get(c, "/x", "X-Forwarded-Proto: https")
    assert json.loads(body)["xfp"] == ["https"]
    r = await c.get("/_cacheproxy/entries")
    keys = [e["key"] for e in (await r.json())["entries"]]
    assert "https://example.test/f" in keys, keys
