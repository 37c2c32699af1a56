"""A stored response as bytes, for a store outside the process (Redis).

Layout: MAGIC + VERSION (1 byte) + header length (4 bytes, big-endian) + the header
as JSON (ASCII) + the body, raw. No pickle: a shared store is only as trusted as
everyone who can write to it, and decoding must not run code. The directives are not
written: they are parsed again from the stored Cache-Control values, unless those do
not give them back (Cache-Control itself named by Connection or private="...").
"""

from __future__ import annotations

import gc
import json
import math
import struct
import sys
from dataclasses import fields
from typing import Any

from cacheproxy.http.abnf import TOKEN_RE
from cacheproxy.http.cache_control import ResponseDirectives, parse_response_directives
from cacheproxy.http.stored import CachedResponse

MAGIC = b"CPR"
VERSION = 1
_PREFIX = struct.Struct(">3sBI")
_INTERN_MAX = 128  # as in http/stored.py: front-layer copies share repeated values
_DEFAULTS = ResponseDirectives()


def encode(entry: CachedResponse) -> bytes:
    headers = entry.headers  # (made from the entry's names and values: once)
    header: dict[str, Any] = {
        "key": entry.key, "vary": entry.vary, "vary_values": entry.vary_values,
        "status": entry.status, "headers": headers,
        "response_time": entry.born, "initial_age": 0.0,  # (the same age: born)
        "lifetime": entry.lifetime, "etag": entry.etag, "last_modified": entry.last_modified,
        # size: figured from the rest when read (CachedResponse.size); still written, for
        # readers of this format version that take it from here.
        "modified_at": entry.modified_at, "size": entry.size,
        "body_bytes": len(entry.body),  # a record cut short is told from a whole one
    }
    if _directives(headers) != entry.directives:
        header["directives"] = {f.name: getattr(entry.directives, f.name)
                                for f in fields(ResponseDirectives)
                                if getattr(entry.directives, f.name) != getattr(_DEFAULTS, f.name)}
    # ensure_ascii: header values may hold lone surrogates (undecodable bytes, kept by
    # surrogateescape), which UTF-8 cannot encode but \u escapes carry.
    text = json.dumps(header, separators=(",", ":")).encode("ascii")
    return _PREFIX.pack(MAGIC, VERSION, len(text)) + text + entry.body


def decode(data: bytes) -> CachedResponse:
    """The entry encode() wrote; ValueError for anything else (another version included)."""
    if len(data) < _PREFIX.size:
        raise ValueError(f"stored entry: {len(data)} bytes is too short for its prefix")
    magic, version, length = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise ValueError(f"stored entry: bad magic {magic!r}")
    if version != VERSION:
        raise ValueError(f"stored entry: format version {version}, this build reads {VERSION}")
    end = _PREFIX.size + length
    if len(data) < end:
        raise ValueError(f"stored entry: truncated header ({len(data) - _PREFIX.size} of "
                         f"{length} bytes)")
    # No collection while the header is parsed: a damaged one nested thousands deep takes
    # json to the recursion limit, and a collection there runs the gc callbacks
    # (store/untracked.py, observe/gc_pauses.py) with no stack left for them.
    collecting = gc.isenabled()
    gc.disable()
    try:
        h = json.loads(data[_PREFIX.size:end])
    except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, or nested too deep
        raise ValueError(f"stored entry: header is not JSON ({type(exc).__name__})") from exc
    finally:
        if collecting:
            gc.enable()
    body = bytes(data[end:])
    if isinstance(h, dict) and h.get("body_bytes", len(body)) != len(body):
        raise ValueError(f"stored entry: body of {len(body)} bytes, "
                         f"{h['body_bytes']!r} were written")
    try:
        return _entry(h, body)
    except (KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise ValueError(f"stored entry: malformed header ({type(exc).__name__}: {exc})") \
            from exc


def check_servable(entry: CachedResponse) -> None:
    """ValueError unless entry is one the cache could have stored and can replay: a final
    status it stores (RFC 9111 §3: not 1xx, 206 or 304; three digits), field names that are
    tokens (RFC 9110 §5.1) and values without CR, LF or NUL (§5.5). decode() gives back
    whatever encode() was given; a record read from a shared store is checked here too, so
    that a damaged or foreign one that happens to be well-typed is a miss, never a malformed
    answer (an invalid status line, a split field) on the hit path."""
    status = entry.status
    if not 200 <= status <= 999 or status in (206, 304):
        raise ValueError(f"stored entry: status {status} is not one the cache stores")
    names, values = entry.names, "".join(entry.values)
    if not all(names) or TOKEN_RE.fullmatch("".join(names)) is None:
        raise ValueError("stored entry: a field name is not a token")
    if "\r" in values or "\n" in values or "\0" in values:
        raise ValueError("stored entry: a field value holds CR, LF or NUL")
    # A body cut short (a record without body_bytes, written before it was) would go out
    # whole-looking, its Content-Length made from it: the stored field must agree
    # (RFC 9111 §3.1: only a complete response is reused as one).
    length = len(entry.body)
    for name, value in zip(names, entry.values, strict=True):
        if name.lower() != "content-length":
            continue
        given = [v.strip() for v in value.split(",")]
        if any(v.isascii() and v.isdigit() and int(v) != length for v in given):
            raise ValueError(f"stored entry: Content-Length {value} for a body of "
                             f"{length} bytes")


def _entry(h: dict[str, Any], body: bytes) -> CachedResponse:
    # Written for readers of this format that take them from here; this one reads them
    # from the fields, but refuses an entry whose copies are of the wrong type all the
    # same (a damaged or foreign entry).
    _opt_str(h["etag"]), _opt_str(h["last_modified"]), _num(h["modified_at"])
    headers = tuple(_intern(_str(x)) for x in h["headers"])
    if len(headers) % 2:
        raise ValueError("stored entry: odd number of header items")
    vary = tuple(_intern(_str(x)) for x in h["vary"])
    vary_values = tuple(None if x is None else _str(x) for x in h["vary_values"])
    if len(vary) != len(vary_values):
        raise ValueError("stored entry: vary and vary_values differ in length")
    directives = _given_directives(h["directives"]) if "directives" in h \
        else _directives(headers)
    return CachedResponse(
        key=_str(h["key"]), vary=vary, vary_values=vary_values, status=_int(h["status"]),
        headers=headers, body=body, response_time=_num(h["response_time"]),
        initial_age=_num(h["initial_age"]), lifetime=_num(h["lifetime"]),
        directives=directives,
    )


def _directives(headers: tuple[str, ...]) -> ResponseDirectives:
    values = [headers[i + 1] for i in range(0, len(headers), 2)
              if headers[i].lower() == "cache-control"]
    return parse_response_directives(", ".join(values) if values else None)


def _given_directives(d: dict[str, Any]) -> ResponseDirectives:
    """Checked field by field: a wrong type here would fail later, on the hit path."""
    values: dict[str, Any] = {}
    for name, value in d.items():
        default = getattr(_DEFAULTS, name)  # AttributeError: not a directive
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"stored entry: directive {name} is not a boolean")
        elif name == "private_fields":
            value = tuple(_str(x) for x in value)
        elif value is not None:
            value = _int(value)
        values[name] = value
    return ResponseDirectives(**values)


def _str(x: Any) -> str:
    if not isinstance(x, str):
        raise ValueError(f"stored entry: expected a string, got {type(x).__name__}")
    return x


def _opt_str(x: Any) -> str | None:
    return None if x is None else _str(x)


def _int(x: Any) -> int:
    if not isinstance(x, int) or isinstance(x, bool):
        raise ValueError(f"stored entry: expected an integer, got {type(x).__name__}")
    return x


def _num(x: Any) -> float:
    # Finite: no response this build stores has an infinite time or age (delta-seconds are
    # capped, RFC 9111 §1.2.2), and one read as such would be fresh forever.
    if not isinstance(x, int | float) or isinstance(x, bool) or not math.isfinite(x):
        raise ValueError(f"stored entry: expected a finite number, got {x!r}")
    return float(x)


def _intern(s: str) -> str:
    return sys.intern(s) if len(s) <= _INTERN_MAX else s
