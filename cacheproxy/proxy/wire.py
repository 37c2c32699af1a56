"""A response head as bytes on the wire (RFC 9112 §2.1: start line, field lines, an
empty line)."""

from __future__ import annotations

from http import HTTPStatus

from aiohttp.http_writer import _serialize_headers
from multidict import CIMultiDict, CIMultiDictProxy

Fields = CIMultiDict[str] | CIMultiDictProxy[str]
REASONS = {s.value: s.phrase for s in HTTPStatus}  # the standard reason phrases


def encode_head(start_line: str, fields: Fields) -> bytes:
    """The head, blank line included. Field values decoded as UTF-8 with surrogateescape
    (proxy/pool.py) go back as the bytes received: obs-text is valid in a field value
    (RFC 9110 §5.5), and an origin's Latin-1 filename must reach the client as sent.
    aiohttp's serialiser (C, the fast path for ASCII heads) would drop those bytes.
    A CR or LF in a line is refused (no response splitting) by both."""
    # (One join and one scan, both in C: a loop over the values costs a µs per head. An
    # origin's reason phrase may have obs-text too.)
    if start_line.isascii() and "".join(fields.values()).isascii():
        return _serialize_headers(start_line, fields)
    lines = [f"{name}: {value}\r\n" for name, value in fields.items()]
    text = f"{start_line}\r\n{''.join(lines)}\r\n"
    ends = len(lines) + 2
    if text.count("\n") != ends or text.count("\r") != ends:
        raise ValueError("a CR or LF in a response field")
    return text.encode("utf-8", "surrogateescape")
