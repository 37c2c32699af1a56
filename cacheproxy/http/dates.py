"""HTTP-date parsing and formatting (RFC 9110 §5.6.7)."""

from __future__ import annotations

import calendar
import re
from email.utils import formatdate
from functools import lru_cache

_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
_DAY = r"(?:mon|tue|wed|thu|fri|sat|sun)[a-z]*"
_TIME = r"(\d{2}):(\d{2}):(\d{2})"
# ASCII: the grammar's DIGIT and whitespace are ASCII (RFC 5234 B.1), not any Unicode digit.
_FLAGS = re.IGNORECASE | re.ASCII
# IMF-fixdate "Sun, 06 Nov 1994 08:49:37 GMT"; the space before GMT is optional
# because real servers omit it (RFC 9110 §5.6.7: recipients parse leniently).
_IMF = re.compile(rf"{_DAY},\s*(\d{{1,2}})[ -]([a-z]{{3}})[ -](\d{{4}})\s+{_TIME}\s*gmt", _FLAGS)
# obsolete RFC 850 form "Sunday, 06-Nov-94 08:49:37 GMT"
_RFC850 = re.compile(rf"{_DAY},\s*(\d{{1,2}})-([a-z]{{3}})-(\d{{2}})\s+{_TIME}\s*gmt", _FLAGS)
# ANSI C asctime() form "Sun Nov  6 08:49:37 1994"
_ASCTIME = re.compile(rf"{_DAY}\s+([a-z]{{3}})\s+(\d{{1,2}})\s+{_TIME}\s+(\d{{4}})", _FLAGS)


def _timestamp(year: int, month: str, day: int, hh: int, mm: int, ss: int) -> float | None:
    mon = _MONTHS.get(month.lower())
    if mon is None or not (1 <= day <= 31 and hh <= 23 and mm <= 59 and ss <= 60):
        return None
    try:
        if day > calendar.monthrange(year, mon)[1]:  # "31 Feb" is no date, not 3 March
            return None
        return float(calendar.timegm((year, mon, day, hh, mm, min(ss, 59), 0, 0, 0)))
    except (ValueError, OverflowError):
        return None


# Values memoised up to this length (an HTTP-date is 29 characters; RFC 850's longest,
# 37): the table holds its keys, and a Date or If-Modified-Since an origin or client makes
# up may be 128 KiB (4,096 of them held 512 MB, counted nowhere).
_MEMO_CHARS = 64


def parse_http_date(value: str | None) -> float | None:
    """Seconds since the epoch, or None when the value is not an HTTP-date."""
    if value is not None and len(value) > _MEMO_CHARS:
        return _parse_http_date.__wrapped__(value)
    return _parse_http_date(value)


@lru_cache(maxsize=4096)
def _parse_http_date(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if m := _IMF.fullmatch(value):
        d, mon, y, hh, mm, ss = m.groups()
        return _timestamp(int(y), mon, int(d), int(hh), int(mm), int(ss))
    if m := _RFC850.fullmatch(value):
        d, mon, yy, hh, mm, ss = m.groups()
        # §5.6.7 reads a two-digit year more than 50 years in the future as the past
        # century's; until 2020 that was this pivot at 70. Kept as nginx, Squid, curl and
        # Python's email.utils keep it: "Thu, 01-Jan-70 00:00:00 GMT" is how many servers
        # say "already expired", which the rule from 2026 on would read as 2070.
        year = 2000 + int(yy) if int(yy) < 70 else 1900 + int(yy)
        return _timestamp(year, mon, int(d), int(hh), int(mm), int(ss))
    if m := _ASCTIME.fullmatch(value):
        mon, d, hh, mm, ss, y = m.groups()
        return _timestamp(int(y), mon, int(d), int(hh), int(mm), int(ss))
    return None


def format_http_date(timestamp: float) -> str:
    """IMF-fixdate, the form senders must generate (§5.6.7)."""
    return formatdate(timestamp, usegmt=True)
