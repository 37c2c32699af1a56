"""What a client speaks in an intercepted CONNECT tunnel (forward.intercept_tls), told from
its first bytes before any is read (a peek): TLS, HTTP/1.1, or something else. Sans I/O.

TLS is what the proxy ends itself only when the protocol inside may be HTTP/1.x: a
ClientHello whose ALPN offers only others (`h2` alone, as gRPC clients send) is
"other", tunnelled to the site, which may speak it (RFC 7301 §3.2: a server speaking none
of them must refuse; the site need not).

The client speaks first in TLS (its ClientHello) and in HTTP (its request line), so those
bytes are there to look at once it sends; a protocol whose server speaks first (SMTP,
MySQL) sends nothing and is not told apart (its client waits until the peek times out)."""

from __future__ import annotations

import re
from typing import Literal

Spoken = Literal["tls", "http", "other"]

# The bytes looked at, at most: a request line as long as the parser reads (8,190 bytes).
PEEK_BYTES = 8192

# RFC 8446 §5.1: a TLSPlaintext record, handshake (22), legacy_record_version 0x0301
# (0x0300 to 0x0304 are accepted, as clients of SSL 3.0 to TLS 1.3 wrote there).
_HANDSHAKE = 0x16
# RFC 8446 §4.1.2: a ClientHello (1); RFC 7301 §3.1: its ALPN extension (16).
_CLIENT_HELLO = 1
_ALPN = 16
# The protocols the proxy serves inside TLS (tls/ca.py selects http/1.1).
_SERVED = frozenset({b"http/1.1", b"http/1.0"})
# RFC 9112 §3: method SP request-target SP HTTP-version CRLF (empty lines before it are
# ignored, §2.2); the target is any visible characters here, the parser judges it. Only
# HTTP/1.x: HTTP/2's prior-knowledge preface (`PRI * HTTP/2.0`, RFC 9113 §3.4; plaintext
# gRPC behind a proxy) looks like a request line, but the HTTP/1 parser cannot serve it.
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]"
_REQUEST_LINE = re.compile(rb"[\r\n]*" + _TOKEN + rb"+ [\x21-\x7e]+ HTTP/1\.[0-9]\r?\n")
# A request line cut short: what could still become one with the bytes still to come.
_BEGUN_LINE = re.compile(
    rb"[\r\n]*" + _TOKEN + rb"*(?: [\x21-\x7e]*(?: H(?:T(?:T(?:P(?:/(?:1(?:\.(?:[0-9]"
    rb"\r?)?)?)?)?)?)?)?)?)?")


def spoken(head: bytes) -> Spoken | None:
    """What the first bytes a client sent (head, peeked) are: a TLS ClientHello's record
    ("tls"), an HTTP request line ("http"), or neither ("other"); None while too few
    bytes have come to tell (more are awaited)."""
    if not head:
        return None
    if head[0] == _HANDSHAKE:
        if len(head) < 3:
            return None
        if head[1] != 3 or head[2] > 4:
            return "other"
        end = 5 + int.from_bytes(head[3:5]) if len(head) >= 5 else PEEK_BYTES
        if len(head) < min(end, PEEK_BYTES):
            return None  # the record with the ClientHello is still coming
        offered = offered_protocols(head[5:end])
        return "other" if offered and not _SERVED.intersection(offered) else "tls"
    if _REQUEST_LINE.match(head):
        return "http"
    if b"\n" not in head.lstrip(b"\r\n") and len(head) < PEEK_BYTES \
            and _BEGUN_LINE.fullmatch(head):
        return None
    return "other"


def offered_protocols(record: bytes) -> list[bytes] | None:
    """The protocols a ClientHello (record: its TLS record's content) offers by ALPN (RFC
    7301 §3.1), in order; None when it offers none, or is not whole or not well formed
    here (the handshake decides then)."""
    try:
        if record[0] != _CLIENT_HELLO:
            return None
        end = min(4 + int.from_bytes(record[1:4]), len(record))
        pos = 4 + 2 + 32  # legacy_version, random (RFC 8446 §4.1.2)
        pos += 1 + record[pos]  # legacy_session_id
        pos += 2 + int.from_bytes(record[pos:pos + 2])  # cipher_suites
        pos += 1 + record[pos]  # legacy_compression_methods
        extensions_end = min(pos + 2 + int.from_bytes(record[pos:pos + 2]), end)
        pos += 2
        while pos + 4 <= extensions_end:
            kind = int.from_bytes(record[pos:pos + 2])
            size = int.from_bytes(record[pos + 2:pos + 4])
            pos += 4
            if kind == _ALPN:
                if pos + size > extensions_end:
                    return None
                names, at = [], pos + 2  # (a ProtocolNameList: its length, then names)
                while at < pos + size:
                    names.append(record[at + 1:at + 1 + record[at]])
                    at += 1 + record[at]
                return names or None
            pos += size
    except IndexError:
        return None
    return None
