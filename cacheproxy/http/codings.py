"""Content codings and the request's Accept-Encoding (RFC 9110 §8.4, §12.5.3)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cacheproxy.http.fields import Headers, combined_value, split_list

if TYPE_CHECKING:
    from cacheproxy.http.stored import CachedResponse

# §8.4.1.1, §8.4.1.3: a recipient SHOULD take x-compress and x-gzip for compress and gzip.
_ALIASES = {"x-gzip": "gzip", "x-compress": "compress"}
# The compressions origins apply per request, by what Accept-Encoding lists (IANA's HTTP
# Content Coding Registry; RFC 7932 br, RFC 8878 zstd, RFC 9842 dcb and dcz, which
# Chromium lists when it holds a dictionary). Another coding (an unregistered one, as
# the public cache-tests suite stores) is not negotiated: no client lists it, and the
# origin sends it whatever the request says, so going forward changes nothing.
NEGOTIATED = frozenset({"gzip", "deflate", "br", "zstd", "compress", "dcb", "dcz"})


def _coding(name: str) -> str:
    name = name.strip().lower()
    return _ALIASES.get(name, name)


def _weight(params: str) -> float:
    """§12.4.2: the member's q (1 without one); an invalid one counts as 0 (refused)."""
    for param in params.split(";"):
        name, eq, value = param.partition("=")
        if eq and name.strip().lower() == "q":
            try:
                q = float(value.strip())
            except ValueError:
                return 0.0
            return q if 0.0 <= q <= 1.0 else 0.0
    return 1.0


def accepts(accept_encoding: str | None, codings: list[str]) -> bool:
    """§12.5.3: does a request with this Accept-Encoding take content coded with these
    codings (identity aside)? Without the field §12.5.3 calls every coding acceptable,
    but the clients that send none (curl, Java's and .NET's HTTP clients) decode none:
    only identity is, as Varnish's http_gzip_support and nginx's gunzip module are
    documented to read it (they decode gzip for a client without "gzip" listed)."""
    coded = [c for c in map(_coding, codings) if c and c != "identity"]
    if not coded:
        return True
    if accept_encoding is None:
        return False
    weights: dict[str, float] = {}
    for member in split_list(accept_encoding):
        name, _, params = member.partition(";")
        weights.setdefault(_coding(name), _weight(params))
    star = weights.get("*", 0.0)  # §12.5.3: a coding not listed, nor "*", is not acceptable
    return all(weights.get(c, star) > 0.0 for c in coded)


_uncoded: tuple[str, ...] | None = None  # coding_refused's last names without Content-Encoding


def coding_refused(entry: CachedResponse, headers: Headers) -> bool:
    """Would the stored response reach a client that does not accept its compression?
    Only when it does not vary on Accept-Encoding (§4.1 of RFC 9111 otherwise chose it
    for this very value): an origin that compresses per request but forgets the Vary."""
    global _uncoded
    names = entry.names
    if names is _uncoded:  # (the last shape found without one: a refreshed entry keeps it)
        return False
    if entry.field("content-encoding") is None:
        _uncoded = names  # (whether one is there depends on the names alone)
        return False
    if "accept-encoding" in entry.vary:
        return False
    codings = [c for name, value in zip(entry.names, entry.values, strict=True)
               if name.lower() == "content-encoding"
               for c in map(_coding, split_list(value)) if c in NEGOTIATED]
    return not accepts(combined_value(headers, "Accept-Encoding"), codings)


def transfer_coding_names(values: list[str]) -> list[str]:
    """RFC 9112 §7: the coding names a Transfer-Encoding lists, lower-cased, without
    their parameters (`transfer-coding = token *( OWS ";" OWS transfer-parameter )`,
    a parameter's quoted value may hold a comma)."""
    return [member.partition(";")[0].rstrip(" \t").lower()
            for member in split_list(", ".join(values))]
