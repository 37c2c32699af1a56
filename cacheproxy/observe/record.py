"""One request-log line: the record, its two formats, and reading it back.

JSON Lines (the default) is for machines; the text format reads like nginx's
"combined" log with the cache's fields appended as key=value. Both carry the
same fields and `parse_line` reads either, so `cacheproxy logs` works on both.
Sans I/O: no clock, no files.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

# nginx's $upstream_cache_status words, plus DENIED for a policy refusal.
CACHE_STATUSES = (
    "HIT", "MISS", "EXPIRED", "STALE", "REVALIDATED", "UPDATING", "BYPASS", "ERROR", "DENIED",
    "TUNNEL",
)
# Answered from storage without the origin sending a body: what a hit ratio counts.
HIT_STATUSES = frozenset({"HIT", "STALE", "REVALIDATED", "UPDATING"})
# The body came from the origin ("bytes from the origin"); ERROR and DENIED are the proxy's.
ORIGIN_STATUSES = frozenset({"MISS", "EXPIRED", "BYPASS"})


@dataclass(slots=True)
class LogRecord:
    time: float                  # when the request arrived, seconds since the epoch
    client: str                  # the client's address
    method: str
    host: str                    # the Host the client asked for
    path: str                    # path and query, as requested
    status: int                  # status sent to the client
    cache: str                   # one of CACHE_STATUSES
    bytes: int                   # body bytes sent to the client
    total_ms: float              # from request to the last byte handed to the socket
    age: int | None = None       # Age sent, when served from storage
    ttl: int | None = None       # freshness left (negative when stale)
    upstream_status: int | None = None
    upstream_ms: float | None = None  # time to the upstream's response head
    collapsed: bool = False      # waited for another request to the same URL
    route: str = "default"
    policy: str | None = None    # a CORS / Referer decision and its reason: "referer deny: ..."
    protocol: str = "HTTP/1.1"
    referer: str | None = None
    user_agent: str | None = None
    cache_status: str = ""       # the RFC 9211 Cache-Status member sent
    bytes_in: int | None = None  # a CONNECT tunnel: bytes from the client (bytes: to it)


_FIELDS = tuple(f.name for f in fields(LogRecord))


def from_origin(r: LogRecord) -> bool:
    """Its body is "bytes from the origin": a MISS, EXPIRED or BYPASS answer the origin
    sent, not one the proxy made for a request it passes the cache by (a PURGE's, a CORS
    preflight's: no upstream status)."""
    return r.cache in ORIGIN_STATUSES and r.upstream_status is not None


@lru_cache(maxsize=4)
def _second(seconds: int, fmt: str) -> str:
    """A formatted second; log lines come in order, so this is nearly always cached."""
    return datetime.fromtimestamp(seconds, UTC).strftime(fmt)


_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))
_last_second: tuple[int, str] = (0, "1970-01-01T00:00:00")  # (read and set whole: threads)


def iso_time(t: float) -> str:
    """UTC with milliseconds: 2026-11-23T17:30:00.123Z (the text format keeps seconds).
    The log writes one per line, in order: the second's part is kept from the last."""
    global _last_second
    seconds, ms = divmod(round(t * 1000), 1000)
    last = _last_second
    if last[0] != seconds:
        last = _last_second = (seconds, _second(seconds, "%Y-%m-%dT%H:%M:%S"))
    return last[1] + _MILLIS[ms]


_encode = json.encoder.encode_basestring  # C-accelerated; non-ASCII kept as is
# C1 controls (U+0080-U+009F) are control characters too: a terminal that shows the log
# (`tail -f`, `docker logs`) takes U+009B as CSI, as it takes ESC [. A client puts them in
# User-Agent, Referer (obs-text, RFC 9110 §5.5) or a refused Host. So are, for readers of
# the log rather than terminals, the line and paragraph separators U+2028 and U+2029 (a
# line break to Python's str.splitlines() and to editors: a forged second line) and the
# bidirectional controls (U+061C, U+200E/F, U+202A-E, U+2066-9: they reorder what a
# terminal or editor shows of the rest of the line, CVE-2021-42574). Both formats write
# them escaped: nginx escapes every byte over 0x7E.
_INVISIBLE = "\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069"
_C1 = re.compile(f"[\x80-\x9f{_INVISIBLE}]")


def _escape(value: str) -> str:
    """A JSON string; C1 controls written \\u0085, the same value (RFC 8259 §7), and the
    line separators and bidirectional controls as well."""
    out = _encode(value)
    if value.isascii() or _C1.search(out) is None:
        return out
    return _C1.sub(lambda m: f"\\u{ord(m.group()):04x}", out)


# Escaped forms of the values that repeat line after line (client, host, route, user
# agent, Cache-Status member...): looked up rather than escaped again. Bounded: in number,
# and to short ASCII values (one byte a character: at most about 2.5 MB held); a long or
# non-ASCII User-Agent is escaped each time.
_ESCAPED: dict[str, str] = {}
_ESCAPED_KEPT, _ESCAPED_LONGEST = 4096, 256


def _e(value: str) -> str:
    found = _ESCAPED.get(value)
    if found is None:
        found = _escape(value)
        if len(found) <= _ESCAPED_LONGEST and value.isascii():
            if len(_ESCAPED) >= _ESCAPED_KEPT:
                _ESCAPED.clear()
            _ESCAPED[value] = found
    return found


def _jn(value: float | None) -> str:
    return "null" if value is None else repr(value)


def to_json(record: LogRecord) -> str:
    r = record
    return f'{{"time":"{iso_time(r.time)}","client":{_ESCAPED.get(r.client) or _e(r.client)},' \
           f'{json_middle(r)}{_jn(r.total_ms)}{json_tail(r)}'


# A line is written in three parts around the two fields that differ between lines of
# the same request and answer (the client, the duration): HitLines keeps the other two.
def json_middle(r: LogRecord) -> str:
    """From "method" up to the value of "total_ms". Path is escaped each time (mostly
    new); the others, looked up (_ESCAPED: _e only for a value not there, so one call per
    value on the line of every miss, not two)."""
    e = _ESCAPED.get
    return (f'"method":{e(r.method) or _e(r.method)},"host":{e(r.host) or _e(r.host)},'
            f'"path":{_escape(r.path)},"status":{r.status},'
            f'"cache":{e(r.cache) or _e(r.cache)},"bytes":{r.bytes},"total_ms":')


def json_tail(r: LogRecord) -> str:
    """After the value of "total_ms", to the end. Fields that may be null, inlined."""
    e = _ESCAPED.get  # (as json_middle)
    age, ttl, up, up_ms = r.age, r.ttl, r.upstream_status, r.upstream_ms
    policy, referer, agent = r.policy, r.referer, r.user_agent
    tail = (
        f',"age":{"null" if age is None else age},"ttl":{"null" if ttl is None else ttl},'
        f'"upstream_status":{"null" if up is None else up},'
        f'"upstream_ms":{"null" if up_ms is None else repr(up_ms)},'
        f'"collapsed":{"true" if r.collapsed else "false"},'
        f'"route":{e(r.route) or _e(r.route)},'
        f'"policy":{"null" if policy is None else _escape(policy)},'
        f'"protocol":{e(r.protocol) or _e(r.protocol)},'
        f'"referer":{"null" if referer is None else _escape(referer)},'
        f'"user_agent":{"null" if agent is None else e(agent) or _e(agent)},'
        f'"cache_status":{e(r.cache_status) or _e(r.cache_status)}'
    )
    # A tunnel's line also says what the client sent through it.
    return f"{tail}}}" if r.bytes_in is None else f'{tail},"bytes_in":{r.bytes_in}}}'


# A request's fields as the observer reads them when it ends (observer.record), in
# LogRecord's order, but total_ms and upstream_ms not yet rounded: a miss's line and its
# counts are made from them, and its LogRecord only if the stats API asks for it.
Fields = list[Any]


def ms_json(ms: float) -> str:
    """repr(round(ms, 3)), as a line writes milliseconds, for half its cost: f"{ms:.3f}" makes
    the same correctly rounded digits as round(ms, 3) (both are dtoa's mode 3), and the
    shortest repr of that float is those digits without trailing zeros, but for what repr
    needs more than 15 digits for (1e12 ms and over: 31 years) or does not write as a
    number."""
    if 0 <= ms < 1e12:  # (15 digits at most: each such decimal is one float's repr)
        text = f"{ms:.3f}"
        if text[-1] != "0":  # (nine in ten: nothing to strip)
            return text
        text = text.rstrip("0")
        return text + "0" if text[-1] == "." else text
    return repr(round(ms, 3))


def record_of(f: Fields) -> LogRecord:
    """The record of observer.record's fields: to_json(record_of(f)) == json_line(f)."""
    up_ms = f[12]
    return LogRecord(f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], round(f[8], 3), f[9],
                     f[10], f[11], None if up_ms is None else round(up_ms, 3), *f[13:])


def json_line(f: Fields) -> str:
    """to_json(record_of(f)), written from the fields (the line of a miss of no shape the
    observer keeps: no record is made for it). tests/test_observe.py holds the two to the
    same line. What
    repeats from miss to miss (all but time, client, path, bytes and the two durations)
    is written once per such shape and kept (_MISS_LINES): about 40 % of the line's
    instructions (callgrind), for a dict lookup of a 15-field key."""
    (when, client, method, host, path, status, cache, sent, total_ms, age, ttl, up, up_ms,
     collapsed, route, policy, protocol, referer, agent, member, bytes_in) = f
    # (the key: every field the kept parts are written from)
    key = (method, host, status, cache, age, ttl, up, collapsed, route,
           policy, protocol, referer, agent, member, bytes_in)
    parts = _MISS_LINES.get(key)
    if parts is None:
        parts = _miss_parts(key)
    # (_escape(path), inline for an ASCII path: a call fewer per line)
    escaped = _encode(path)
    if not path.isascii() and _C1.search(escaped) is not None:
        escaped = _escape(path)
    return miss_line((f'{parts[0]}{escaped}{parts[1]}{sent}{parts[2]}', parts[3], parts[4]),
                     when, client, total_ms, up_ms)


def miss_line(template: tuple[str, str, str], when: float, client: str, total_ms: float,
              up_ms: float | None) -> str:
    """A miss's line from its template (from "method" up to the value of "total_ms", from
    there up to the value of "upstream_ms", and the rest: json_line's parts, or a miss
    shape's, observer.py) and the four fields that differ between lines of one template:
    the time and the durations written as to_json writes them (iso_time, ms_json)."""
    # iso_time and ms_json, their usual cases inlined (a call each is about a tenth of
    # the line): the time within the second iso_time wrote last, and a duration whose
    # third decimal is not 0 (ms_json's own first answer). The rest goes to them.
    seconds, ms = divmod(round(when * 1000), 1000)
    last = _last_second
    stamp = last[1] + _MILLIS[ms] if last[0] == seconds else iso_time(when)
    total = f"{total_ms:.3f}"
    if total[-1] == "0" or not 0 <= total_ms < 1e12:
        total = ms_json(total_ms)
    if up_ms is None:
        upstream = "null"
    else:
        upstream = f"{up_ms:.3f}"
        if upstream[-1] == "0" or not 0 <= up_ms < 1e12:
            upstream = ms_json(up_ms)
    return (f'{{"time":"{stamp}","client":{_ESCAPED.get(client) or _e(client)},'
            f'{template[0]}{total}{template[1]}{upstream}{template[2]}')


def miss_template(r: LogRecord) -> tuple[str, str, str]:
    """miss_line's template of a record: to_json(r) but its time, client and durations."""
    head, upstream, tail = json_tail(r).partition('"upstream_ms":')
    tail = tail[tail.index(","):]  # (after the value: a number or null, then ,"collapsed")
    return json_middle(r), f"{head}{upstream}", tail


# A miss line's parts by shape (json_line's key). Bounded: at most _MISS_KEPT shapes, of
# at most _MISS_LONGEST characters each (a longer one, a long Referer or User-Agent, is
# written each time and not kept): some 2 KB each with its key, about 4 MB in all.
_MISS_LINES: dict[tuple[object, ...], tuple[str, str, str, str, str]] = {}
_MISS_KEPT, _MISS_LONGEST = 2048, 1024


def _miss_parts(key: tuple[object, ...]) -> tuple[str, str, str, str, str]:
    (method, host, status, cache, age, ttl, up, collapsed, route, policy,
     protocol, referer, agent, member, bytes_in) = key
    e = _ESCAPED.get  # (as json_middle)
    end = "}" if bytes_in is None else f',"bytes_in":{bytes_in}}}'
    parts = (
        f'"method":{e(method) or _e(method)},"host":{e(host) or _e(host)},"path":',
        f',"status":{status},"cache":{e(cache) or _e(cache)},"bytes":',
        ',"total_ms":',
        f',"age":{"null" if age is None else age},"ttl":{"null" if ttl is None else ttl},'
        f'"upstream_status":{"null" if up is None else up},"upstream_ms":',
        f',"collapsed":{"true" if collapsed else "false"},'
        f'"route":{e(route) or _e(route)},'
        f'"policy":{"null" if policy is None else _escape(policy)},'
        f'"protocol":{e(protocol) or _e(protocol)},'
        f'"referer":{"null" if referer is None else _escape(referer)},'
        f'"user_agent":{"null" if agent is None else e(agent) or _e(agent)},'
        f'"cache_status":{e(member) or _e(member)}{end}',
    )
    if sum(map(len, parts)) <= _MISS_LONGEST:
        if len(_MISS_LINES) >= _MISS_KEPT:
            _MISS_LINES.clear()
        _MISS_LINES[key] = parts
    return parts


class HitLines:
    """JSON lines of fresh hits, from templates. Lines of the same URL, answer, Age, ttl
    and client software differ only in time, client and duration: the rest of the line
    (json_middle, json_tail) is kept per such shape (a hot object makes one a second).
    Bounded: at most `kept` templates, of at most `longest` characters each (a long path,
    Referer or User-Agent is written each time), so some 2 KB each with their shape and
    about 5 MB in all. to_json of the same record is the same line (tests/test_observe.py)."""

    def __init__(self, kept: int = 2048, longest: int = 1024) -> None:
        self._kept, self._longest = kept, longest
        self._templates: dict[tuple[object, ...], tuple[str, str]] = {}

    def line(self, shape: tuple[object, ...], when: float, client: str, total_ms: float,
             record: Callable[..., LogRecord], *args: object) -> str:
        """The line of a hit of this shape (a hashable tuple of all that the record's
        fields but time, client and total_ms are made from); record(*args) makes the
        record, when no template has the shape yet. total_ms is written as the record's
        (ms_json: rounded or not, the same text)."""
        templates = self._templates
        found = templates.get(shape)
        if found is None:
            r = record(*args)
            found = (json_middle(r), json_tail(r))
            if len(found[0]) + len(found[1]) <= self._longest:
                if len(templates) >= self._kept:
                    templates.clear()
                templates[shape] = found
        return templated_line(found, when, client, total_ms)


def templated_line(template: tuple[str, str], when: float, client: str, total_ms: float) -> str:
    """A line from its template (json_middle and json_tail of its record) and the three
    fields that differ between lines of one template."""
    return f'{{"time":"{iso_time(when)}","client":{_ESCAPED.get(client) or _e(client)},' \
           f'{template[0]}{ms_json(total_ms)}{template[1]}'


# C0, DEL and C1 controls; and the bytes that were no UTF-8 (obs-text, read with
# surrogateescape as U+DC80-U+DCFF), written \uDCHH: a \xHH would read back as the C1
# or Latin-1 character, and written raw (the sink's backslashreplace) they read back as
# the six characters.
_ESCAPE = re.compile(r'["\\\x00-\x1f\x7f-\x9f\ud800-\udfff' + _INVISIBLE + "]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02X}" if code < 0x100 else f"\\u{code:04X}"


def _quote(value: str | None) -> str:
    """nginx escapes '"' and '\\' (and control bytes) as \\xHH inside quoted fields."""
    if value is None:
        return '"-"'
    if value == "-":
        return '"\\x2D"'  # a real "-", told apart from "none" (nginx cannot)
    if _ESCAPE.search(value) is None:
        return f'"{value}"'
    return '"' + _ESCAPE.sub(_escaped, value) + '"'


_BARE = re.compile(r'[!#-\[\]-~]+')  # printable ASCII without space, '"' or '\\'


def _word(value: str | None) -> str:
    """A key=value value: bare when it is one plain word (as nginx writes $host), quoted
    otherwise, since a rejected request's Host may hold anything."""
    if value is None:
        return "-"
    return value if value != "-" and _BARE.fullmatch(value) else _quote(value)


def _dash(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def to_text(record: LogRecord) -> str:
    """combined format + cache fields: `... "GET /a HTTP/1.1" 200 512 "ref" "ua" cache=HIT ...`"""
    r = record
    when = _second(int(r.time), "%d/%b/%Y:%H:%M:%S +0000")
    return (
        f"{r.client} - - [{when}] {_quote(f'{r.method} {r.path} {r.protocol}')} {r.status} "
        f"{r.bytes} {_quote(r.referer)} {_quote(r.user_agent)} host={_word(r.host)} "
        f"cache={r.cache} age={_dash(r.age)} ttl={_dash(r.ttl)} "
        f"upstream_status={_dash(r.upstream_status)} upstream_ms={_dash(r.upstream_ms)} "
        f"total_ms={_dash(r.total_ms)} collapsed={_dash(r.collapsed)} route={_word(r.route)} "
        f"policy={_quote(r.policy)} cache_status={_quote(r.cache_status)}"
        f"{'' if r.bytes_in is None else f' bytes_in={r.bytes_in}'}"
    )


# The key=value fields after the combined part, in the order to_text writes them.
_TEXT_EXTRA = ("host", "cache", "age", "ttl", "upstream_status", "upstream_ms", "total_ms",
               "collapsed", "route", "policy", "cache_status", "bytes_in")
_TEXT = re.compile(
    r'(?P<client>\S+) \S+ \S+ \[(?P<when>[^\]]+)\] "(?P<request>(?:[^"\\]|\\.)*)" '
    r'(?P<status>\d{3}) (?P<bytes>\d+) "(?P<referer>(?:[^"\\]|\\.)*)" '
    r'"(?P<user_agent>(?:[^"\\]|\\.)*)"(?P<extra>.*)'
)
_EXTRA = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')
_INTS = frozenset({"status", "bytes", "age", "ttl", "upstream_status", "bytes_in"})
_FLOATS = frozenset({"upstream_ms", "total_ms"})
_REQUIRED = frozenset({"status", "bytes", "total_ms"})  # numbers that may not be null / "-"
# The instants iso_time can write (years 1..9999 UTC), in the milliseconds it rounds to.
_FIRST_MS = round(datetime(1, 1, 1, tzinfo=UTC).timestamp() * 1000)
_LAST_MS = round(datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC).timestamp() * 1000)


_UNESCAPE = re.compile(r"\\x([0-9A-Fa-f]{2})|\\u([0-9A-Fa-f]{4})")


def _unquote(value: str) -> str | None:
    """A field as written by to_text: "-" (quoted or not) is None; escapes are undone."""
    if value.startswith('"') and value.endswith('"') and len(value) >= 2:
        value = value[1:-1]
        if value == "-":
            return None
        return _UNESCAPE.sub(lambda m: chr(int(m.group(1) or m.group(2), 16)), value)
    return None if value == "-" else value


def _from_text(line: str) -> LogRecord | None:
    m = _TEXT.fullmatch(line)
    if m is None:
        return None
    request = _unquote(f'"{m["request"]}"') or ""
    method, _, rest = request.partition(" ")
    path, _, protocol = rest.rpartition(" ")
    when = datetime.strptime(m["when"], "%d/%b/%Y:%H:%M:%S %z").timestamp()
    data: dict[str, object] = {
        "time": when, "client": m["client"], "method": method, "path": path,
        "protocol": protocol, "status": m["status"], "bytes": m["bytes"],
        "referer": _unquote(f'"{m["referer"]}"'), "user_agent": _unquote(f'"{m["user_agent"]}"'),
    }
    for name, value in _EXTRA.findall(m["extra"]):
        if name in _TEXT_EXTRA:
            data[name] = _unquote(value)
    return _build(data)


def _from_json(line: str) -> LogRecord | None:
    data = json.loads(line)
    if not isinstance(data, dict) or not isinstance(data.get("time"), str):
        return None
    when = datetime.fromisoformat(data["time"].replace("Z", "+00:00"))
    if when.tzinfo is None:  # the log's times are UTC, offset or not
        when = when.replace(tzinfo=UTC)
    data["time"] = when.timestamp()
    return _build(data)


def _build(data: dict[str, object]) -> LogRecord | None:
    """A record from loosely typed fields; None when a required one is missing or wrong."""
    out: dict[str, object] = {}
    for name in _FIELDS:
        if name not in data:
            continue
        value = data[name]
        if name in _INTS or name in _FLOATS:
            if value is None:
                if name in _REQUIRED:
                    return None
            elif isinstance(value, bool):  # JSON true/false: not a number here
                return None
            elif name in _INTS:
                if isinstance(value, float) and not value.is_integer():
                    return None
                value = int(value)  # type: ignore[call-overload]
            else:
                value = float(value)  # type: ignore[arg-type]
                if not math.isfinite(value):  # type: ignore[arg-type]
                    return None
        elif name == "collapsed":
            value = value in (True, "1", "true")
        out[name] = value
    record = LogRecord(**out)  # type: ignore[arg-type]
    # A time iso_time can write: an offset can carry one that parsed out of its range.
    if (not _FIRST_MS <= round(record.time * 1000) <= _LAST_MS
            or record.cache not in CACHE_STATUSES or not 0 <= record.bytes < 1 << 63
            or not all(isinstance(getattr(record, f), str)
                       for f in ("path", "host", "method", "client"))):
        return None
    return record


def parse_line(line: str) -> LogRecord | None:
    """A record from one line in either format, or None for a malformed line."""
    line = line.strip()
    if not line:
        return None
    try:
        return _from_json(line) if line.startswith("{") else _from_text(line)
    except (ValueError, TypeError, KeyError, OverflowError, RecursionError):
        return None  # RecursionError: JSON nested deeper than the parser goes
