"""Field-level helpers: lists, hop-by-hop fields (RFC 9110 §5.6.1, §7.6.1)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

# §7.6.1: fields meaningful only for a single connection; never forwarded or stored.
# The Proxy-* authentication fields are for the next hop alone (§11.7.1, §11.7.3, §11.7.4);
# RFC 9111 §3.1 names all three as fields a cache MUST NOT store. HTTP2-Settings goes with
# an h2c Upgrade of the same hop (RFC 9113 §3.2.1: connection-specific), named or not in
# Connection (§7.6.1: removed "whether or not they appear as a connection-option").
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer",
    "transfer-encoding", "upgrade", "proxy-authorization", "proxy-authenticate",
    "proxy-authentication-info", "http2-settings",
})


class Headers(Protocol):
    """What the rules need of a header collection (multidict's CIMultiDict fits)."""

    def get(self, key: str, default: None = None) -> str | None: ...
    def getall(self, key: str, default: list[str]) -> list[str]: ...


def split_list(value: str) -> list[str]:
    """Members of a comma-separated list (§5.6.1), commas inside quoted strings kept."""
    if '"' not in value:  # no quoted string: every comma separates (the usual case)
        return [item for part in value.split(",") if (item := part.strip())]
    return split_quoted(value)


def split_quoted(value: str, sep: str = ",") -> list[str]:
    """split_list, character by character: for lists with quoted strings (sep: the
    separator outside them, "," for a list, ";" for RFC 7239's pairs)."""
    items: list[str] = []
    buf: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            items.append("".join(buf).strip())
            buf = []
            continue
        buf.append(ch)
    items.append("".join(buf).strip())
    return [item for item in items if item]


# RFC 9110 §7.6.3: Via is there "for avoiding request loops". A request whose Via names this
# proxy this many times is going round one; a chain of instances that share a pseudonym
# (the default `cacheproxy`) is shorter than this.
LOOP_HOPS = 8


def times_via(via: Iterable[str], pseudonym: str) -> int:
    """How many times the Via values name pseudonym (received-by, §7.6.3)."""
    name = pseudonym.lower()
    seen = 0
    for value in via:
        for member in value.split(","):  # (a comma in a comment splits it: no received-by)
            parts = member.split(None, 2)
            if len(parts) > 1 and parts[1].lower() == name:
                seen += 1
    return seen


def loops_back(via: Iterable[str], pseudonym: str) -> bool:
    """Whether the Via values name pseudonym LOOP_HOPS times: a loop."""
    return times_via(via, pseudonym) >= LOOP_HOPS


def combined_value(headers: Headers, name: str) -> str | None:
    """All field lines of one name joined with ", " (§5.3), None when absent."""
    values = headers.getall(name, [])
    if not values:
        return None
    return values[0] if len(values) == 1 else ", ".join(values)


def connection_options(values: Iterable[str]) -> frozenset[str]:
    """Field names listed in Connection, which are hop-by-hop too (§7.6.1)."""
    return frozenset(tok.lower() for value in values for tok in split_list(value))


class FieldList(list[tuple[str, str]]):
    """A message's fields as received, in order, with their values by lower-cased name,
    made once: the rules that look a field up by name (values_of) read that instead of
    lowering every name again."""

    __slots__ = ("by_name",)

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        super().__init__(pairs)
        by_name: dict[str, list[str]] = {}
        for k, v in self:  # (every answer from upstream is indexed: no call but lower()
            lk = k.lower()  # for a name met once)
            if lk in by_name:
                by_name[lk].append(v)
            else:
                by_name[lk] = [v]
        self.by_name = by_name

    @classmethod
    def indexed(cls, pairs: list[tuple[str, str]], by_name: dict[str, list[str]]
                ) -> FieldList:
        """pairs with their index already made (by_name, as __init__ would make it)."""
        made = cls.__new__(cls)
        list.extend(made, pairs)
        made.by_name = by_name
        return made


def values_of(pairs: Iterable[tuple[str, str]], name: str) -> list[str]:
    """The values of the fields named name (lower-case), in order."""
    if type(pairs) is FieldList:
        return pairs.by_name.get(name) or []
    return [v for k, v in pairs if k.lower() == name]


def end_to_end(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The pairs minus hop-by-hop fields and the fields Connection names (§7.6.1)."""
    if type(pairs) is FieldList and HOP_BY_HOP.isdisjoint(pairs.by_name):
        return list(pairs)  # none to remove (no Connection field names any)
    kept: list[tuple[str, str, str]] = []
    connection: list[str] = []
    for k, v in pairs:  # one pass, each name lowered once: this runs on every exchange
        lk = k.lower()
        if lk in HOP_BY_HOP:
            if lk == "connection":
                connection.append(v)
        else:
            kept.append((k, v, lk))
    if not connection:
        return [(k, v) for k, v, _ in kept]
    named = connection_options(connection)
    return [(k, v) for k, v, lk in kept if lk not in named]
