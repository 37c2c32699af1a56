"""What a client speaks in an intercepted CONNECT tunnel (forward.intercept_tls), told from
its first bytes before any is read (a peek): TLS, HTTP/1.1, or something else. Sans I/O.

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
        return "tls" if head[1] == 3 and head[2] <= 4 else "other"
    if _REQUEST_LINE.match(head):
        return "http"
    if b"\n" not in head.lstrip(b"\r\n") and len(head) < PEEK_BYTES \
            and _BEGUN_LINE.fullmatch(head):
        return None
    return "other"
