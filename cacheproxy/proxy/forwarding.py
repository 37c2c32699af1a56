"""Which fields go upstream and back (RFC 9110 §7.6: Via, hop-by-hop; X-Forwarded-*)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from cacheproxy.http.fields import HOP_BY_HOP, connection_options, end_to_end
from cacheproxy.http.front_scheme import x_forwarded_proto
from cacheproxy.http.revalidation import CLIENT_FILL_FIELDS
from cacheproxy.policies.referer import RefererPolicy, forwarded_referer

# Fields this proxy sets itself on every upstream request.
_OWN = frozenset({"host", "x-forwarded-proto", "x-forwarded-host", "max-forwards"})
_DROP = _OWN | {"x-forwarded-for"}
# A request whose answer may be stored: the cache's conditionals replace the client's; and
# no method override goes with it, which frameworks honour (Symfony, Rails, Express's
# method-override): a GET sent as a DELETE or POST has its error stored under the URL for
# everyone (the "HTTP Method Override" cache-poisoned DoS, Nguyen et al., CCS 2019).
_METHOD_OVERRIDES = frozenset({"x-http-method-override", "x-http-method", "x-method-override"})
_DROP_FILLING = _DROP | CLIENT_FILL_FIELDS | _METHOD_OVERRIDES
_EXPECT = frozenset({"expect"})


# Other names frameworks read the scheme from, as X-Forwarded-Proto: Tornado's xheaders
# (X-Scheme, read before X-Forwarded-Proto), CodeIgniter's is_https() (Front-End-Https);
# what surrogates say they can do (Edge Architecture §2.1): an origin told ESI is
# processed sends ESI markup (Symfony's render_esi), which this cache stores unprocessed;
# and the path a front proxy rewrote from (IIS's X-Original-URL, X-Rewrite-URL), which
# Symfony and Zend serve instead of the request's: /admin stored under /.
_OTHER_FIELDS = frozenset({"x-scheme", "front-end-https", "surrogate-capability",
                           "x-original-url", "x-rewrite-url"})


# What earlier proxies say about the client and its request (RFC 7239 Forwarded, the
# X-Forwarded-* family, X-Real-IP, and the fields above). Any client can forge them, and
# origins build URLs from them (X-Forwarded-Host, -Proto, -Prefix, X-Scheme): untrusted,
# they would poison the entry the answer is stored under, which does not key on them.
# A name is of the family when it is here or begins with _FAMILY_PREFIX.
_FAMILY = frozenset({"forwarded", "x-real-ip"}) | _OTHER_FIELDS
_FAMILY_PREFIX = "x-forwarded-"


class OwnFields(tuple[tuple[str, str], ...]):
    """The fields this proxy adds to a request (_own_fields), with their lines as a head
    carries them ("Name: value" joined by CRLF; None when one holds a CR or LF, which
    the head's maker refuses): kept per policy, they are formatted once, not per request
    (exchange.request_head_parts)."""

    lines: str | None
    count: int

    def __new__(cls, pairs: Iterable[tuple[str, str]], lines: bool) -> OwnFields:
        own = super().__new__(cls, pairs)
        clean = lines and not any("\r" in n + v or "\n" in n + v for n, v in own)
        own.lines = "\r\n".join([f"{n}: {v}" for n, v in own]) if clean else None
        own.count = len(own)
        return own


@dataclass(frozen=True, slots=True)
class ForwardPolicy:
    via: str                 # pseudonym (RFC 9110 §7.6.3)
    upstream_host: str       # Host to send when rewriting
    pass_host: bool          # send the client's Host instead
    x_forwarded_for: bool
    x_forwarded_proto: bool
    x_forwarded_host: bool
    # keep the client's forwarding family (behind our proxy); its scheme is the request's
    trust_forwarded: bool = False
    # Edge Architecture §3: this surrogate's Surrogate-Capability member, appended
    surrogate_capability: str | None = None


# The fields _own_fields made for a request that brought none of its own (no prior
# X-Forwarded-For or -Proto, no Max-Forwards), by the policy's id and the other inputs they
# are made of (version, client address, scheme, authority), with the policy itself (held,
# its id is never another's; checked by identity, so a reload's new policies make their
# own): the same few come again and again. One table for every policy, bounded as a whole:
# forward mode makes a policy per origin (routing.MAX_FORWARDED_PLANS, 4,096), and a
# table per policy would hold up to 4,096 x 512 entries (some 1.7 GiB). OWN_KEPT_MAX of
# them, each a tuple of at most six short pairs and their lines (under 1 KB with its key:
# about 4 MB at most), emptied when full.
_OWN_KEPT: dict[tuple[int, tuple[int, int], str | None, str, str | None],
                tuple[ForwardPolicy, OwnFields]] = {}
OWN_KEPT_MAX = 4096
# Only for an authority of at most this many characters: it is in the key and in up to
# three of the fields (Host, X-Forwarded-Host), and a client chooses its length (a Host of
# some 6 KB on every POST filled the table with 80 MB: test_review_second2_regressions).
_OWN_HOST_MAX = 256


@lru_cache(maxsize=64)
def via_value(version: tuple[int, int], pseudonym: str) -> str:
    """§7.6.3: protocol version (name omitted for HTTP) and the received-by pseudonym."""
    major, minor = version
    return f"{major}.{minor} {pseudonym}"


# What a field's name alone says of it in request_fields, whatever the request and the
# route (the rules below apply each class with the request's inputs: strip_conditionals,
# content, version, the policy's trust, the Referer policy).
_HOP, _CONNECTION, _HOST, _XFF, _XFP, _MF, _OWN_OTHER = range(7)
_FILL, _EXPECT_NAME, _REFERER, _FAMILY_NAME, _KEEP = range(7, 12)


def _name_class(lk: str) -> int:
    """The class of a lowercased field name (request_fields reads it in this order: a name
    in two sets is of the first: hop-by-hop, the proxy's own, then the rest)."""
    if lk in HOP_BY_HOP:
        return _CONNECTION if lk == "connection" else _HOP
    if lk in _DROP:
        return {"host": _HOST, "x-forwarded-for": _XFF, "x-forwarded-proto": _XFP,
                "max-forwards": _MF}.get(lk, _OWN_OTHER)
    if lk in _DROP_FILLING:
        return _FILL
    if lk in _EXPECT:
        return _EXPECT_NAME
    if lk == "referer":
        return _REFERER
    if lk in _FAMILY or lk.startswith(_FAMILY_PREFIX):
        return _FAMILY_NAME
    return _KEEP


# Each field name's class, by the name as received (llhttp gives a known name in one
# spelling, so a client's few dozen names come again and again): made once per name, not
# lowered and looked up in five sets per field of every request. Bounded: names of at most
# _NAME_MAX characters, _NAMES of them (some 1,024 x ~150 bytes: about 150 KB at most),
# emptied when full (a client inventing names cannot grow it).
_CLASSES: dict[str, int] = {}
_NAMES = 1024
_NAME_MAX = 64


def name_class(name: str) -> int:
    """_name_class of name, kept in _CLASSES."""
    c = _CLASSES.get(name)
    if c is None:
        c = _name_class(name.lower())
        if len(name) <= _NAME_MAX:
            if len(_CLASSES) >= _NAMES:
                _CLASSES.clear()
            _CLASSES[name] = c
    return c


# What forwarded_referer made of a Referer under a policy, by (the policy's id, the value),
# with the policy itself (held, its id is never another's; checked by identity): a page's
# subresources all carry its URL, under the few policies of a config. Bounded: _REFERERS_MAX
# values of at most _REFERER_MAX characters (with what was made of each, under 300 KB),
# emptied when full.
_REFERERS: dict[tuple[int, str], tuple[RefererPolicy, str | None]] = {}
_REFERERS_MAX = 256
_REFERER_MAX = 512


def sent_referer(policy: RefererPolicy, value: str) -> str | None:
    """forwarded_referer(policy, value), kept in _REFERERS."""
    key = (id(policy), value)
    kept = _REFERERS.get(key)
    if kept is not None and kept[0] is policy:
        return kept[1]
    sent = forwarded_referer(policy, value)
    if len(value) <= _REFERER_MAX:
        if len(_REFERERS) >= _REFERERS_MAX:
            _REFERERS.clear()
        _REFERERS[key] = (policy, sent)
    return sent


def request_fields(
    pairs: Collection[tuple[str, str]],
    *,
    policy: ForwardPolicy,
    version: tuple[int, int],
    client_ip: str | None,
    scheme: str,
    strip_conditionals: bool = False,
    extra: Sequence[tuple[str, str]] | None = None,
    host: str | None = None,
    max_forwards: int | None = None,
    referer: RefererPolicy | None = None,
    content: bool = True,
) -> list[tuple[str, str]]:
    """The request fields to send upstream, in order: request_field_parts's, joined."""
    out, own = request_field_parts(
        pairs, policy=policy, version=version, client_ip=client_ip, scheme=scheme,
        strip_conditionals=strip_conditionals, host=host, max_forwards=max_forwards,
        referer=referer, content=content)
    out += own
    if extra:
        out += extra
    return out


def request_field_parts(
    pairs: Collection[tuple[str, str]],  # (read twice when Connection names a field)
    *,
    policy: ForwardPolicy,
    version: tuple[int, int],
    client_ip: str | None,
    scheme: str,
    strip_conditionals: bool = False,
    host: str | None = None,
    max_forwards: int | None = None,
    referer: RefererPolicy | None = None,
    content: bool = True,
) -> tuple[list[tuple[str, str]], OwnFields]:
    """The request fields to send upstream, in two parts: the client's (as they go) and
    the proxy's own, sent after them (then the cache's conditionals). host: the
    authority the request is for (the cache key's), which the upstream Host is made from
    whatever the client's Connection field nominated (RFC 9112 §3.2.2, RFC 9110 §7.2);
    max_forwards: what the client sent, decremented here (RFC 9110 §7.6.2); referer: the
    route's Referer policy, which decides what the upstream sees of the client's Referer
    (no fragment or userinfo ever, trimmed, stripped of secret parameters, or removed);
    content: whether the request has content (a body); scheme: the one the request is
    for, as the key names it (this hop's, or a trusted front proxy's,
    http/front_scheme.py), sent as X-Forwarded-Proto.

    Expect goes on only with content from an HTTP/1.1 client: RFC 9110 §10.1.1, "A
    client MUST NOT generate a 100-continue expectation in a request that does not
    include content", and a server MUST ignore one from HTTP/1.0."""
    trusted = policy.trust_forwarded
    strip = strip_conditionals
    send_expect = content and version >= (1, 1)
    client_host: str | None = None
    # (tuples grown in the rare requests that bring any: no four lists made per request)
    prior_xff: tuple[str, ...] = ()
    prior_proto: tuple[str, ...] = ()
    prior_mf: tuple[tuple[str, str], ...] = ()
    connection: tuple[str, ...] = ()
    out: list[tuple[str, str]] = []
    classes = _CLASSES
    # One pass, each name's class read from a table (every miss runs it): the hop-by-hop
    # fields skipped here as end_to_end skips them (§7.6.1); the fields a Connection line
    # names, below.
    for k, v in pairs:
        c = classes.get(k)
        if c is None:
            c = name_class(k)
        if c == _KEEP:
            out.append((k, v))
        elif c >= _FILL:
            # the cache's conditionals replace the client's (and no method override goes)
            # when the answer may be stored; Expect only with content from HTTP/1.1
            if c == _REFERER:
                if referer is None:
                    out.append((k, v))
                else:
                    kept = sent_referer(referer, v)
                    if kept is not None:
                        out.append((k, kept))
            elif (not strip if c == _FILL else send_expect if c == _EXPECT_NAME
                  else trusted):
                out.append((k, v))
        elif c == _CONNECTION:
            connection += (v,)
        elif c == _HOST:
            if client_host is None:
                client_host = v
        elif c == _XFF:
            if trusted:
                prior_xff += (v,)
        elif c == _XFP:
            if trusted:
                prior_proto += (v,)
        elif c == _MF:
            prior_mf += ((k, v),)
    if connection and not HOP_BY_HOP.issuperset(connection_options(connection)):
        # (rare: "Connection: keep-alive" names none but hop-by-hop ones) Connection names
        # end-to-end fields, which go too, wherever they stood: made again without them.
        return request_field_parts(
            end_to_end(pairs), policy=policy, version=version, client_ip=client_ip,
            scheme=scheme, strip_conditionals=strip_conditionals, host=host,
            max_forwards=max_forwards, referer=referer, content=content)
    if host is None:
        host = client_host
    if prior_xff or prior_proto or prior_mf or max_forwards is not None:
        return out, _own_fields(policy, version, client_ip, scheme, host, prior_xff,
                                prior_proto, max_forwards, prior_mf)
    # (the usual request: nothing of these from the client; made once, below)
    key = (id(policy), version, client_ip, scheme, host)
    kept = _OWN_KEPT.get(key)
    if kept is not None and kept[0] is policy:
        return out, kept[1]
    own = _own_fields(policy, version, client_ip, scheme, host, (), (), None, (), True)
    if host is None or len(host) <= _OWN_HOST_MAX:  # (the bound in bytes: a client's Host)
        if len(_OWN_KEPT) >= OWN_KEPT_MAX:
            _OWN_KEPT.clear()
        _OWN_KEPT[key] = (policy, own)
    return out, own


def _own_fields(policy: ForwardPolicy, version: tuple[int, int], client_ip: str | None,
                scheme: str, host: str | None, prior_xff: Sequence[str],
                prior_proto: Sequence[str], max_forwards: int | None,
                prior_mf: Sequence[tuple[str, str]], kept: bool = False) -> OwnFields:
    """The fields this proxy sets on the request (request_fields), after the client's;
    kept: their lines made too (they are kept for other requests)."""
    out = [("Host", host if policy.pass_host and host else policy.upstream_host)]
    if policy.x_forwarded_for and client_ip:
        out.append(("X-Forwarded-For", ", ".join([*prior_xff, client_ip])))
    elif prior_xff:
        out.extend(("X-Forwarded-For", v) for v in prior_xff)
    # The scheme the key names, one value: this hop's, or what the trusted front said (then
    # kept when this proxy adds none of its own); never a member the key did not take.
    if policy.x_forwarded_proto or (prior_proto and x_forwarded_proto(prior_proto) == scheme):
        out.append(("X-Forwarded-Proto", scheme))
    if policy.x_forwarded_host and host:
        out.append(("X-Forwarded-Host", host))
    if max_forwards is not None:
        out.append(("Max-Forwards", str(max_forwards - 1)))
    else:
        out.extend(prior_mf)  # only OPTIONS and TRACE count it down
    out.append(("Via", via_value(version, policy.via)))
    if policy.surrogate_capability:  # a member of its own: the list grows (RFC 9110 §5.3)
        out.append(("Surrogate-Capability", policy.surrogate_capability))
    return OwnFields(out, kept)
