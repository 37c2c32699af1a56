"""An origin's HTTP/1.x status line, x above 1, read as HTTP/1.1, wherever it begins.

RFC 9110 §2.5: a recipient of a message of a major version it implements and a higher
minor version SHOULD process it as the highest minor version it conforms to (nginx reads
`HTTP/1.2 200` from its upstream as 1.1). llhttp refuses it ("Invalid HTTP version"), so
the minor digit is rewritten before llhttp sees it; and only at the places where a status
line may begin in an exchange's bytes (RFC 9112 §4, §6.1): the first byte of the answer,
and the byte after each interim (1xx) answer's header section, which has no content
(RFC 9110 §15.2). The bytes may be split anywhere by TCP: the state carries from one read
to the next. Nothing after the final answer's status line is looked at (its header
values, its body): a body that holds `HTTP/1.2` goes on unchanged.

A state is an int:
- 0..6: at the start of a status line, that many bytes of `HTTP/1.` matched (at 0, CR
  and LF are skipped, as llhttp skips them before a message);
- 7: the minor digit is next; 8: the space after it; 9: the status code's first digit;
- IN_LINE, AFTER_LF, AFTER_LF_CR: in an interim answer's header section, looking for its
  end (an empty line: LF, then LF or CR LF; RFC 9112 §2.2, a bare LF ends a line as for
  llhttp's lenient_optional_cr_before_lf);
- DONE: the final answer's status line is past (or the bytes are no status line: llhttp
  refuses them itself); nothing more is rewritten in this exchange.
"""

from __future__ import annotations

from typing import Final

START: Final = 0
DONE: Final = -1
IN_LINE: Final = 10
AFTER_LF: Final = 11
AFTER_LF_CR: Final = 12
_PREFIX: Final = b"HTTP/1."
_CR: Final = 0x0D
_LF: Final = 0x0A


def read_as_1_1(data: bytes, state: int) -> tuple[bytes, int]:
    """data as llhttp is to get it (a copy only when a digit was rewritten), and the
    state after it. state: where the bytes before data left off (START for an answer's
    first read)."""
    rewritten: bytearray | None = None
    pos, end = 0, len(data)
    while pos < end:
        if state < 7:
            byte = data[pos]
            if state == START and byte in (_CR, _LF):
                pos += 1
                continue
            if state < 0 or byte != _PREFIX[state]:
                state = DONE  # no HTTP/1.x status line: llhttp's to refuse
                break
            state += 1
        elif state == 7:
            if 0x32 <= data[pos] <= 0x39:  # "2".."9": read as "1"
                if rewritten is None:
                    rewritten = bytearray(data)
                rewritten[pos] = 0x31
            state = 8
        elif state == 8:
            if data[pos] != 0x20:
                state = DONE
                break
            state = 9
        elif state == 9:
            if data[pos] != 0x31:  # a final answer: its fields and body are not looked at
                state = DONE
                break
            state = IN_LINE
        elif state == IN_LINE:
            lf = data.find(b"\n", pos)
            if lf < 0:
                break
            pos = lf
            state = AFTER_LF
        else:  # AFTER_LF, AFTER_LF_CR
            byte = data[pos]
            if byte == _LF:
                state = START  # the interim answer ended: the next status line begins
            elif byte == _CR and state == AFTER_LF:
                state = AFTER_LF_CR
            else:
                state = IN_LINE
        pos += 1
    return (data if rewritten is None else bytes(rewritten)), state
