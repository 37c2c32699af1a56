"""The end of a chunked answer's trailer section, read without llhttp once it refused a
framing field there.

RFC 9110 §6.5.1: framing fields in a trailer section are ignored (nginx does). llhttp
validates a `Content-Length` in a trailer section as in a header section ("Duplicate
Content-Length", "Invalid character in Content-Length", "Content-Length overflow",
"Empty Content-Length") and stops, every body byte already delivered. httptools says
nothing of where in the read it stopped; the section's end is found here instead
(section_bytes): after the last line of the read that names `Content-Length` (the
refused one, or one after it in the same section: either way past every body byte), or,
when the read has none (the refused line began in an earlier read), from the read's
start. The section ends at its empty line (RFC 9112 §2.1, §7.1.2; a bare LF ends a
line, as for llhttp's lenient_optional_cr_before_lf). The connection is not reused after
it, so that nothing hangs on this reading of the bytes but the one answer's completeness.
"""

from __future__ import annotations

from typing import Final

_NAMED: Final = b"\ncontent-length"


def refused_trailer_framing(reason: str) -> bool:
    """llhttp's reason for refusing a message, once its chunked body is under way, names
    a Content-Length: one in the trailer section (the head's own was checked before)."""
    return "Content-Length" in reason


def section_bytes(data: bytes) -> bytes:
    """The bytes of data, the read llhttp stopped in, that the section's end is looked
    for in."""
    at = data.lower().rfind(_NAMED)
    if at >= 0:
        return data[at:]
    if data in (b"\r", b"\n", b"\r\n"):
        # llhttp refuses an empty value at the first byte of the next line: an LF that
        # ended the refused line was the last of the read before (this one cannot hold
        # it, since no byte after an LF of its own is there to be refused at).
        return b"\n" + data
    return data


def section_end(data: bytes) -> int:
    """The offset just past the empty line that ends the section, data being section
    bytes from section_bytes on; -1: not in data."""
    ends = [at for at in (data.find(b"\n\r\n"), data.find(b"\n\n")) if at >= 0]
    if not ends:
        return -1
    at = min(ends)
    return at + (3 if data[at + 1] == 0x0D else 2)
