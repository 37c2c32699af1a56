"""The admin API, /metrics, PURGE and the dashboard: answered by the proxy, never forwarded.

Access: with [admin] token set, requests need `Authorization: Bearer <token>`;
with no token, only loopback clients are answered. The dashboard page itself is
static and holds no figures, so anyone may load it: it reads ?token= from its own
URL and sends it as that header on the stats calls, which are protected."""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from importlib import resources
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final, Protocol

from aiohttp import web
from yarl import URL

from cacheproxy.config import AdminConfig, ForwardConfig, parse_listen
from cacheproxy.http.cache_key import origin_of, primary_key
from cacheproxy.observe import listing
from cacheproxy.observe.metrics import Counts, counts_of, metrics_text, summed
from cacheproxy.observe.observer import Observer
from cacheproxy.observe.outcome import Outcome
from cacheproxy.observe.stats_merged import STATS, merged, read_answer, worker_answer
from cacheproxy.policies.pac import CONTENT_TYPE as PAC_TYPE
from cacheproxy.policies.pac import pac_proxy_address, pac_script
from cacheproxy.store import Store, StoreUnavailable
from cacheproxy.store.memory import MemoryStore
from cacheproxy.store.siblings import FORGET_ALL, FORGET_KEY, FORGET_PREFIX

try:
    VERSION = version("cacheproxy")
except PackageNotFoundError:  # running from a source tree without installing
    VERSION = "0+unknown"

MAX_LISTED = 1000


def _loopback(address: str | None) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 (Python 3.11 does not call it loopback)
    return ip.is_loopback


def _loopback_name(authority: str) -> bool:
    """Is a Host a loopback name? A page on another site whose DNS name re-resolves to
    127.0.0.1 (DNS rebinding) reaches a loopback socket, but not with such a Host."""
    host = authority.rpartition("@")[2]
    host = host[1:host.index("]")] if host.startswith("[") and "]" in host else \
        host.rpartition(":")[0] if host.count(":") == 1 else host
    return host.lower().rstrip(".") == "localhost" or _loopback(host)


# Browsers say where a request comes from; the admin API only answers its own pages
# and non-browser clients (curl, Prometheus), never a request another site triggered.
_OWN_SITE = frozenset({"same-origin", "none"})
# The dashboard's page key. On proxy.listen every page the origin serves through the proxy
# is same-origin with the dashboard, so "same-origin" does not tell the dashboard's stats
# calls from a proxied page's script: the dashboard is given this key only when the user
# opened it (typed, bookmarked, reloaded: Sec-Fetch-Site "none"), never to a fetch, frame or
# window a page opens ("same-origin"), and sends it with its stats calls. Made at import,
# before --workers forks, so that every worker knows it (a worker restarted too). Random at
# each start, never derived from admin.token: anyone may load the page and read the key,
# and a key made from the token would let them try tokens offline. A dashboard left open
# over a restart is refused with reason "page-key" and says to reload it.
_PAGE_KEY: Final = secrets.token_urlsafe(24)
_KEY_SLOT = b'<meta name="cacheproxy-page-key" content="">'


def _origin_authority(origin: str) -> str | None:
    """The authority of an Origin field; None when it is no URL at all (yarl refuses a port
    such as "b" or 99999, or an unclosed IPv6 literal)."""
    try:
        return URL(origin).raw_authority
    except ValueError:
        return None


def _target_authority(request: web.Request) -> str:
    raw = request.raw_path
    if not raw.startswith("/"):  # absolute-form: its authority replaces Host
        with contextlib.suppress(ValueError):
            return URL(raw, encoded=True).raw_authority
    return request.headers.get("Host", "")


class PurgeMarks(Protocol):
    """Where a purge is noted before the store forgets it, so that a fill under way of
    what it removes does not store its older answer after (proxy/invalidations.py)."""

    def key(self, key: str, now: float) -> None: ...
    def prefix(self, prefix: str, now: float) -> None: ...
    def everything(self, now: float) -> None: ...


class Workers(Protocol):
    """--workers: the other workers, asked through the supervisor (proxy/siblings.py)."""

    others: int

    def ask(self, question: bytes = b"") -> Awaitable[list[bytes]]: ...


class Admin:
    def __init__(self, config: AdminConfig, store: Store, observer: Observer) -> None:
        self.config = config
        self.store = store
        self.observer = observer
        self._page: bytes | None = None
        # The proxy's own keying (scheme, Host, target) -> key; set by the application.
        self.key_for: Callable[[str, str, str], str] | None = None
        self._forward: tuple[ForwardConfig, str] | None = None  # set_forward()
        self.marks: PurgeMarks | None = None  # set by the application
        # --workers: the other workers' Counts, and whether they share the store (Redis)
        self.siblings: Callable[[], Awaitable[list[Counts]]] | None = None
        self.shared_store = False
        self.workers: Workers | None = None  # --workers: the others, to ask (purge, stats)
        self.route_names: tuple[str, ...] = ()  # [[routes]] and default (/metrics)

    def set_forward(self, forward: ForwardConfig, listen: str) -> None:
        """What proxy.pac describes: [forward] and proxy.listen; the application sets it at
        start and again on reload."""
        self._forward = (forward, listen)

    def reconfigure(self, config: AdminConfig) -> None:
        """SIGHUP: a new token applies at once; the paths are routes, fixed at start."""
        self.config = replace(config, prefix=self.config.prefix,
                              metrics_path=self.config.metrics_path)

    def routes(self, app: web.Application) -> None:
        p = self.config.prefix
        app.router.add_get(p + "stats", self.stats)
        app.router.add_get(p + "entries", self.entries)
        app.router.add_get(p + "entry", self.entry)
        app.router.add_post(p + "purge", self.purge_api)
        app.router.add_post(p + "clear", self.clear)
        app.router.add_get(p + "dashboard", self.dashboard)
        app.router.add_get(p + "proxy.pac", self.pac)
        if self.config.metrics_path:
            app.router.add_get(self.config.metrics_path, self.metrics)
            # Its other methods are the proxy's too (405), never the origin's: one path,
            # one server (nginx's stub_status answers 405 likewise).
            app.router.add_route("*", self.config.metrics_path, self.unknown)
        # Anything else under the prefix is the proxy's too: never forwarded.
        app.router.add_route("*", p + "{tail:.*}", self.unknown)

    # -- access -------------------------------------------------------------

    def denied(self, request: web.Request, pages: bool = False) -> web.Response | None:
        """None when the request may use the admin API; else the refusal. pages: the
        dashboard's page may ask it (stats); the rest is for curl and Prometheus."""
        h = request.headers
        origin = h.get("Origin")
        origin_authority = None if origin is None else _origin_authority(origin)
        if origin is not None and origin_authority is None:
            # No browser sends that: whoever did is refused like a cross-site request.
            return _json({"error": "admin API: an unparsable Origin is refused"}, 403)
        if h.get("Sec-Fetch-Site", "none") not in _OWN_SITE or (
                origin is not None and origin_authority != _target_authority(request)):
            return _json({"error": "admin API: cross-site requests are refused"}, 403)
        if not pages and (origin is not None or h.get("Sec-Fetch-Site", "none") != "none"):
            # On proxy.listen every page the origin serves is same-origin with the API, so
            # a browser's "same-origin" does not mean the dashboard: what the dashboard does
            # not ask for is refused to every page (fetch and forms send Origin on POST);
            # curl sends neither, an address typed in the browser "none".
            return _json({"error": "admin API: only the dashboard's stats are answered "
                                   "to a web page"}, 403)
        token = self.config.token
        if not token:
            if _loopback(request.remote) and _loopback_name(_target_authority(request)):
                return None
            return _json({"error": "admin API: loopback clients only, by a loopback name "
                                   "(no [admin] token set)"}, 403)
        scheme, _, given = h.get("Authorization", "").partition(" ")
        given = given.lstrip(" ")  # (RFC 9110 §11.4: 1*SP after the scheme)
        # RFC 9110 §11.1: the scheme is case-insensitive; the token is compared in constant time.
        if scheme.lower() == "bearer" and hmac.compare_digest(
                given.encode("utf-8", "surrogateescape"), token.encode()):
            return None
        return _json({"error": "admin API: a valid bearer token is required"}, 401,
                     {"WWW-Authenticate": 'Bearer realm="cacheproxy"'})

    # -- endpoints ----------------------------------------------------------

    async def stats(self, request: web.Request) -> web.Response:
        if (refusal := self.denied(request, pages=True)) is not None:
            return refusal
        h = request.headers
        if (h.get("Origin") is not None or h.get("Sec-Fetch-Site", "none") != "none") \
                and not hmac.compare_digest(h.get("X-Cacheproxy-Page", "").encode(
                    "utf-8", "surrogateescape"), _PAGE_KEY.encode()):
            # A page's request without the dashboard's key: another page of the proxy's
            # origin (its last log lines are other clients' requests), or the dashboard
            # opened by a page rather than by the user.
            # (reason: the dashboard tells a key of an earlier start from its token's refusal)
            return _json({"error": "admin API: stats are answered to a web page only when "
                                   "it is the dashboard opened from the address bar",
                          "reason": "page-key"}, 403)
        own = self.snapshot()
        if self.workers is None:
            return _json({**own, "processes_counted": 1, "workers": 1})
        # --workers: the server's figures, not those of the worker this call reached (the
        # dashboard's numbers jumped between workers at every refresh).
        asked = await self.workers.ask(STATS)
        others = [a for a in map(read_answer, asked) if a is not None]
        return _json(merged((own, self.observer.stats.bytes_other), others,
                            self.shared_store, self.workers.others + 1))

    def snapshot(self) -> dict[str, Any]:
        """This process's stats (a worker's answer to another's STATS: stats_json)."""
        store = self.store.stats()
        # (--workers' memory store, which tells the others what it forgets, is "memory"
        # as cache.store names it; the Redis store is "layered", its memory layer ahead)
        backend = type(self.store).__name__.removesuffix("Store").removeprefix("Siblings")
        store_info = {"backend": backend.lower(),
                      "entries": store.entries, "bytes": store.bytes,
                      "max_bytes": store.max_bytes, "evictions": store.evictions}
        return self.observer.stats.snapshot(time.time(), store_info, VERSION)

    def stats_json(self) -> bytes:
        return worker_answer(self.snapshot(), self.observer.stats.bytes_other)

    async def entries(self, request: web.Request) -> web.Response:
        """GET entries?prefix=URL-prefix&limit=N: stored keys with their variants."""
        if (refusal := self.denied(request)) is not None:
            return refusal
        try:
            readings = _readings(request, "prefix") if "prefix" in request.query else [""]
            # "": all; a path: both schemes' keys, as a purge of it (_keys)
            each = [self._keys(request, given, exact=False) if given else [""]
                    for given in readings]
            limit = min(int(request.query.get("limit", "100")), MAX_LISTED)
        except ValueError as exc:
            return _json({"error": f"bad prefix or limit: {exc}"}, 400)
        if self._asking() is not None:  # --workers: every worker's store
            return _json(await self._everyones(each, limit, False))
        now = time.time()
        try:
            keys: list[str] = []
            for prefixes in each:  # (the first reading that lists any)
                for prefix in prefixes:
                    keys += await self.store.keys(prefix, limit - len(keys))
                    if len(keys) >= limit:
                        break
                if keys:
                    break
        except StoreUnavailable as exc:
            return _unavailable(exc)
        listed = [{"key": key, "variants": [_describe(v, now, False)
                                            for v in await self.store.get(key)]}
                  for key in keys]
        return _json({"entries": [e for e in listed if e["variants"]], "limit": limit})

    async def entry(self, request: web.Request) -> web.Response:
        """GET entry?url=URL: one key's variants, with their stored fields."""
        if (refusal := self.denied(request)) is not None:
            return refusal
        try:
            keys = [key for given in _readings(request, "url")  # (a path: both schemes')
                    for key in self._keys(request, given)]
        except (KeyError, ValueError):
            return _json({"error": "give ?url=<a URL, or a path starting with />"}, 400)
        if self._asking() is not None:  # --workers: every worker's store
            found = await self._everyones([keys], len(keys), True, with_fields=True)
            held = {e["key"]: e["variants"] for e in found.pop("entries")}
            key = next((k for k in keys if k in held), keys[0])
            if key not in held:
                return _json({"key": key, "error": "not in the cache", **found}, 404)
            return _json({"key": key, "variants": held[key], **found})
        for key in keys:  # the first stored, as entries?prefix= lists them
            if variants := await self.store.get(key):
                break
        key = keys[0] if not variants else key
        if not variants and not getattr(self.store, "available", True):
            return _unavailable(StoreUnavailable("the shared store is unavailable"))
        if not variants:
            return _json({"key": key, "error": "not in the cache"}, 404)
        now = time.time()
        return _json({"key": key, "variants": [_describe(v, now, True) for v in variants]})

    async def purge_api(self, request: web.Request) -> web.Response:
        """POST purge?url=URL (one URL, all variants) or purge?prefix=URL-prefix."""
        if (refusal := self.denied(request)) is not None:
            return refusal
        try:
            if "url" in request.query:
                each = [self._keys(request, given) for given in _readings(request, "url")]
                purged = 0
                counted = self._counted()
                for keys in each:  # (the first reading that names a stored key)
                    for key in keys:
                        purged += await self._delete(key, counted)
                    if purged:
                        break
                return _json({"purged": purged, "key": keys[0], **counted},
                             200 if purged else 404)
            if "prefix" in request.query:  # "" is no prefix: "clear" empties everything
                each = [self._keys(request, given, exact=False)
                        for given in _readings(request, "prefix")]
                purged = 0
                counted = self._counted()
                for prefixes in each:
                    for prefix in prefixes:
                        if self.marks is not None:
                            self.marks.prefix(prefix, time.perf_counter())
                        purged += await self._everywhere(
                            FORGET_PREFIX + _bytes(prefix),
                            lambda p=prefix: self.store.delete_prefix(p), counted)
                    if purged:
                        break
                return _json({"purged": purged, "prefix": prefixes[0], **counted})
        except ValueError as exc:
            return _json({"error": str(exc)}, 400)
        except StoreUnavailable as exc:
            return _unavailable(exc)
        return _json({"error": "give ?url=<URL or /path> or ?prefix=<URL or /path prefix>"}, 400)

    async def clear(self, request: web.Request) -> web.Response:
        if (refusal := self.denied(request)) is not None:
            return refusal
        if self.marks is not None:
            self.marks.everything(time.perf_counter())
        counted = self._counted()
        try:
            cleared = await self._everywhere(FORGET_ALL, self.store.clear, counted)
        except StoreUnavailable as exc:
            return _unavailable(exc)
        return _json({"cleared": cleared, **counted})

    async def purge_method(self, request: web.Request, keys: list[str], outcome: Outcome
                           ) -> web.Response:
        """The PURGE method on a URL (as Varnish and Squid take it): 200 or 404. keys: the
        URL's, the first as the request was keyed (behind a trusted front, the other
        scheme's too)."""
        if (refusal := self.denied(request)) is not None:
            outcome.status = "DENIED"
            return refusal
        purged = 0
        counted = self._counted()
        try:
            for key in keys:
                purged += await self._delete(key, counted)
        except StoreUnavailable as exc:
            outcome.status = "ERROR"
            return _unavailable(exc)
        return _json({"purged": purged, "key": keys[0], **counted}, 200 if purged else 404)

    # -- --workers: what every worker holds ----------------------------------

    async def _everyones(self, each: list[list[str]], limit: int, exact: bool,
                         with_fields: bool = False) -> dict[str, Any]:
        """entries / entry with --workers and the memory store: every worker's store
        (observe/listing.py), asked of the others, merged with this one's."""
        assert self.workers is not None and isinstance(self.store, MemoryStore)
        asked = self.workers.ask(listing.question(each, limit, exact))
        own = listing.listed_now(self.store, each, limit, exact, self._describer(with_fields),
                                 time.time(), os.getpid())
        entries, counted, incomplete = listing.merged(own, await asked, limit)
        return {"entries": entries, "limit": limit, "processes_counted": counted,
                "workers": self.workers.others + 1, **({"incomplete": True} if incomplete
                                                       else {})}

    @staticmethod
    def _describer(with_fields: bool) -> listing.Describe:
        return lambda entry, now: _describe(entry, now, with_fields)

    def listing_json(self, asked: bytes) -> bytes:
        """Another worker's LIST question (listing.py), answered from this one's store."""
        if not isinstance(self.store, MemoryStore):
            return b""
        try:
            with_fields = bool(json.loads(asked).get("exact"))
        except (ValueError, AttributeError):
            return b""
        return listing.answer(self.store, asked, self._describer(with_fields), time.time(),
                              os.getpid())

    # -- a purge's count, the server's ---------------------------------------

    def _asking(self) -> Workers | None:
        """The other workers to ask what a purge dropped: with --workers and the memory
        store (each worker's own); Redis is one store, whose count is the whole answer."""
        return None if self.shared_store else self.workers

    def _counted(self) -> dict[str, int]:
        """What an answer adds with --workers and the memory store: how many processes
        its count is of (updated by _everywhere: the fewest any step heard), of how many."""
        workers = self._asking()
        if workers is None:
            return {}
        return {"processes_counted": workers.others + 1, "workers": workers.others + 1}

    async def _delete(self, key: str, counted: dict[str, int]) -> int:
        if self.marks is not None:
            self.marks.key(key, time.perf_counter())
        return await self._everywhere(FORGET_KEY + _bytes(key),
                                      lambda: self._deleted(key), counted)

    async def _deleted(self, key: str) -> int:
        return int(await self.store.delete(key))

    async def _everywhere(self, question: bytes, here: Callable[[], Awaitable[int]],
                          counted: dict[str, int]) -> int:
        """here() (this worker's store), plus what each other worker dropped of the same
        (with --workers and the memory store): a purge's answer is the server's, as with
        one process or one Redis store; a worker that holds the page while the answering
        one does not made `purge?url=` say 404 when it did purge. Asked before here()
        runs, so the others drop it on the question, before the telling that follows
        (store/siblings.py) finds it gone. A worker that does not answer within
        siblings.GATHER_SECONDS still forgets it (the telling), uncounted."""
        workers = self._asking()
        if workers is None:
            return await here()
        asked = workers.ask(question)
        try:
            n = await here()
        finally:
            answers = [int(a) for a in await asked if a.isdigit()]
        counted["processes_counted"] = min(counted["processes_counted"], 1 + len(answers))
        return n + sum(answers)

    async def dashboard(self, request: web.Request) -> web.Response:
        if self._page is None:
            self._page = resources.files("cacheproxy.observe").joinpath(
                "dashboard.html").read_bytes()
        page = self._page
        h = request.headers
        # A service worker's navigation preload (its header, on the browser's own request)
        # hands the answer to the worker, a proxied site's script on the single listener.
        if h.get("Sec-Fetch-Site", "none") == "none" \
                and "Service-Worker-Navigation-Preload" not in h:
            page = page.replace(_KEY_SLOT, _KEY_SLOT[:-2] + _PAGE_KEY.encode() + b'">', 1)
        return web.Response(body=page, content_type="text/html", charset="utf-8",
                            headers=_PAGE_HEADERS)

    async def pac(self, request: web.Request) -> web.Response:
        """The PAC file pointing a browser at this proxy (forward mode). Like the dashboard
        page, anyone may load it: a browser fetches it without credentials, and it holds
        nothing but the proxy's address and forward.allow_hosts / deny_hosts."""
        if self._forward is None or not self._forward[0].enabled:
            return _json({"error": "no proxy.pac: forward mode is off (forward.enabled)"}, 404)
        forward, listen = self._forward
        host, port = parse_listen(listen)
        on_listener = not self.config.listen  # else served on admin.listen's own address
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        try:
            address = pac_proxy_address(
                host, port, _target_authority(request), on_listener=on_listener,
                local_port=sockname[1] if on_listener and sockname else None)
        except ValueError as exc:
            return _json({"error": f"no proxy.pac: {exc}"}, 400)
        body = pac_script(address, forward.allow_hosts, forward.deny_hosts,
                          None if on_listener else _target_authority(request))
        return web.Response(body=body.encode("ascii"),  # json.dumps escapes the rest
                            headers={**_PRIVATE, "Content-Type": PAC_TYPE})

    async def metrics(self, request: web.Request) -> web.Response:
        if (refusal := self.denied(request)) is not None:
            return refusal
        counts = counts_of(self.observer.stats, self.store.stats(),
                           self.observer.connections())
        if self.siblings is not None:  # the server's figures, not this worker's alone
            counts = summed(counts, await self.siblings(), self.shared_store)
        body, content_type = metrics_text(counts, self.route_names)
        return web.Response(body=body, headers={**_PRIVATE, "Content-Type": content_type})

    async def unknown(self, request: web.Request) -> web.Response:
        if (refusal := self.denied(request, pages=True)) is not None:
            return refusal
        allowed = sorted({route.method for resource in request.app.router.resources()
                          if isinstance(resource, web.PlainResource)
                          and resource.canonical == request.path for route in resource
                          if route.method != "*"})
        if allowed:  # an endpoint, another method (RFC 9110 §15.5.6: 405, with Allow)
            return _json({"error": f"{request.path} takes {', '.join(allowed)}, not "
                                   f"{request.method}"}, 405, {"Allow": ", ".join(allowed)})
        return _json({"error": f"no admin endpoint {request.path}",
                      "endpoints": ["stats", "entries", "entry", "purge", "clear", "dashboard",
                                    "proxy.pac"]},
                     404)

    def _keys(self, request: web.Request, url: str, exact: bool = True) -> list[str]:
        """The keys a purge of what an operator typed covers: a full URL's one; a path's
        under both schemes, since behind a trusted TLS front (proxy.trust_forwarded) the
        entries of https clients are keyed https (RFC 9111 §2: the target URI), and the
        operator's path names the resource whatever scheme its clients used."""
        first = self._key(request, url, exact)
        if not url.startswith("/"):
            return [first]
        other = self._key(request, url, exact, "https" if request.scheme == "http" else "http")
        return [first] if other == first else [first, other]

    def _key(self, request: web.Request, url: str, exact: bool = True,
             scheme: str | None = None) -> str:
        """A cache key from what an operator typed: a full URL, or a path on this host,
        keyed as the proxy keys a request for it (key_for: the route's upstream, unless
        Host is passed). Raises ValueError for what is neither."""
        if url.startswith(("http://", "https://")):
            parsed = URL(url, encoded=True)
            if not parsed.raw_host:
                raise ValueError(f"no host in {url!r}")
            scheme, authority = parsed.scheme, parsed.raw_authority
            # A prefix is kept as typed after "scheme://authority" (yarl would normalise it).
            # A listed key of a private route ends in "#private:<route>": kept as listed.
            fragment = f"#{parsed.raw_fragment}" if parsed.raw_fragment else ""
            # yarl drops an empty query's "?", which the key keeps: "/q?" is not "/q"
            # (RFC 3986 §6.2.3), and the request for it was stored under "/q?".
            empty_query = not parsed.raw_query_string and "?" in url.partition("#")[0]
            target = parsed.raw_path_qs + ("?" if empty_query else "") + fragment if exact else \
                url[len(parsed.scheme) + 3 + len(authority):] or "/"
        elif url.startswith("/"):
            scheme, authority, target = scheme or request.scheme, _target_authority(request), url
        else:
            raise ValueError(f"expected a URL or a path starting with '/', got {url!r}")
        if self.key_for is not None:
            key = self.key_for(scheme, authority, target)
            # A route's suffix ("#private:<route>", "#forward") ends a whole URL's key: glued
            # to a prefix, it would name no key at all. (One typed with its "#" is kept.)
            return key if exact or "#" in target else key.partition("#")[0]
        return primary_key(scheme, authority, target) if exact else \
            origin_of(scheme, authority) + target


def _bytes(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")  # keys from raw request targets


def _readings(request: web.Request, name: str) -> list[str]:
    """Query parameter name (url, prefix) as the operator may have meant it: decoded, as
    any query value, and as typed. A request target holds no raw non-ASCII, space or
    control character (RFC 9112 §3.2), so a decoded "/caf%C3%A9" or "/c++" can name no
    key: such a value is only taken as typed. One whose decoded form can name a key is
    ambiguous: "/a%2Fb" or "/100%25" pasted from the entries list names that key (keys
    keep a target byte for byte), typed to mean "/a/b" it names another; the decoded
    reading comes first, as before, the typed one next. KeyError when it is absent."""
    value = request.query[name]
    typed = [t for given, _, t in (pair.partition("=") for pair in
                                   request.rel_url.raw_query_string.split("&"))
             if given == name and all("!" <= c <= "~" for c in t)]
    if not all("!" <= c <= "~" for c in value):
        return typed[:1] or [value]
    return [value] + [t for t in typed[:1] if t != value]


# Request fields that carry one user's credentials (RFC 9110 §11.6.2, §11.7.2; RFC 6265
# §5.4): an answer that varies on one is kept per value, and the listing names the field
# without its value, so no session or password leaves in an admin answer (RFC 9111 §7.3).
_CREDENTIALS = frozenset({"authorization", "cookie", "proxy-authorization"})


def _describe(entry: Any, now: float, with_fields: bool) -> dict[str, Any]:
    age = entry.age(now)
    out: dict[str, Any] = {
        "status": entry.status, "age": int(age), "ttl": int((entry.lifetime - age) // 1),
        "size": entry.size, "body_bytes": len(entry.body), "etag": entry.etag,
        "last_modified": entry.last_modified,
        "vary": {name: "***" if value is not None and name.lower() in _CREDENTIALS
                 else value for name, value in zip(entry.vary, entry.vary_values,
                                                   strict=True)},
    }
    if with_fields:
        out["fields"] = entry.header_pairs()
    return out


# Admin answers are nobody's to cache, and a token in the dashboard's URL must not
# leave in a Referer (e.g. of the browser's favicon request, forwarded upstream).
_PRIVATE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
# The dashboard is never framed (a proxied page's frame of it gets no key either; this keeps
# clickjacking out too): frame-ancestors works only as a header, X-Frame-Options for older
# browsers.
_PAGE_HEADERS = {**_PRIVATE, "Content-Security-Policy": "frame-ancestors 'none'",
                 "X-Frame-Options": "DENY"}


def _unavailable(exc: StoreUnavailable) -> web.Response:
    """A purge or listing the shared store could not do: say so, never report it done."""
    return _json({"error": f"store unavailable, try again: {exc}"}, 503, {"Retry-After": "2"})


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers={**_PRIVATE, **(headers or {})})
