"""WebSocket through the proxy (RFC 9110 §7.8 Upgrade, RFC 6455 §4): which requests
are passed on as an upgrade, and which 101 answers are switched to. Sans I/O.

A tunnel opens only on the origin's own 101 that completes the handshake the client
asked for: an origin that answers anything else (a 426, a 200 ignoring the Upgrade)
gets no tunnel, or the bytes after it would reach the origin as requests this proxy
never saw (the "WebSocket smuggling" of a front proxy that trusts the request alone)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping

# RFC 6455 §1.3: the GUID the server appends to the client's key before hashing.
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _tokens(values: Iterable[str]) -> list[str]:
    return [t.strip(" \t").lower() for v in values for t in v.split(",") if t.strip(" \t")]


def websocket_key(method: str, version: tuple[int, int], fields: Mapping[str, str],
                  all_values: Iterable[str], has_body: bool) -> str | None:
    """The Sec-WebSocket-Key of an opening handshake to pass on (RFC 6455 §4.1: a GET of
    HTTP/1.1 or later, `Upgrade: websocket`, the `upgrade` connection option, one key),
    else None: the request goes on as any other, its Upgrade removed as a hop-by-hop
    field (RFC 9110 §7.8: a server may ignore it; one received in HTTP/1.0 it must).
    fields: Upgrade and Connection, each with all its lines joined (RFC 9110 §5.3);
    all_values: every Sec-WebSocket-Key field line's value."""
    if method != "GET" or version < (1, 1) or has_body:
        return None
    if _tokens([fields.get("Upgrade", "")]) != ["websocket"] \
            or "upgrade" not in _tokens([fields.get("Connection", "")]):
        return None
    keys = list(all_values)
    if len(keys) != 1 or not keys[0].strip():
        return None
    return keys[0].strip()


def accept_value(key: str) -> str:
    """RFC 6455 §4.2.2: the Sec-WebSocket-Accept a server answers key with."""
    # (The key as received: fields are decoded with surrogateescape, as aiohttp does.)
    digest = hashlib.sha1(key.encode("utf-8", "surrogateescape") + _GUID,
                          usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")


def refused_switch(key: str, fields: Iterable[tuple[str, str]]) -> str | None:
    """Why the origin's 101 to a handshake with key cannot be switched to (a 502), or
    None. RFC 9110 §7.8: a server switches only to a protocol the client named, and says
    which in Upgrade; RFC 6455 §4.1: the client fails the connection unless Upgrade is
    websocket, Connection has upgrade and Sec-WebSocket-Accept matches its key."""
    upgrade: list[str] = []
    connection: list[str] = []
    accepts: list[str] = []
    for name, value in fields:
        lk = name.lower()
        if lk == "upgrade":
            upgrade.append(value)
        elif lk == "connection":
            connection.append(value)
        elif lk == "sec-websocket-accept":
            accepts.append(value.strip(" \t"))
    if _tokens(upgrade) != ["websocket"]:
        return "a 101 switching to another protocol than websocket"
    if "upgrade" not in _tokens(connection):
        return "a 101 without the upgrade connection option"
    if accepts != [accept_value(key)]:
        return "a 101 whose Sec-WebSocket-Accept does not answer the key"
    return None
