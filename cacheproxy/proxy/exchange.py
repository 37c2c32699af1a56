"""One exchange with the upstream: send, stream the answer back, and store
the body when it is complete and within the object-size limit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from cacheproxy.http.cache_control import RequestDirectives, parse_response_directives
from cacheproxy.http.cache_key import vary_fields, vary_values
from cacheproxy.http.conditional import is_not_modified, not_modified_fields
from cacheproxy.http.fields import Headers, combined_value, end_to_end
from cacheproxy.http.revalidation import has_validator
from cacheproxy.http.storability import StorePolicy, excluded_fields, storability
from cacheproxy.http.stored import (
    CachedResponse,
    Heuristics,
    all_values,
    first_value,
    make_stored_response,
)
from cacheproxy.proxy.forwarding import via_value
from cacheproxy.proxy.outcome import Outcome
from cacheproxy.proxy.respond import mark
from cacheproxy.proxy.upstream import UpstreamError, classify
from cacheproxy.store import Store, discard

log = logging.getLogger("cacheproxy")

_UPSTREAM_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)


@dataclass(slots=True)
class Fill:
    """A response we may store: under which key, for which request."""

    key: str
    request: RequestDirectives
    request_headers: Headers
    release: Callable[[], None] | None = None  # wakes collapsed waiters

    def done(self) -> None:
        """The store decision is final: let the waiters look (once)."""
        release, self.release = self.release, None
        if release is not None:
            release()


class Exchange:
    def __init__(
        self, session: aiohttp.ClientSession, store: Store, policy: StorePolicy,
        heuristics: Heuristics, max_object_bytes: int, cache_name: str,
        strip_fields: frozenset[str] = frozenset(),
    ) -> None:
        # cache_name is also the Via pseudonym (proxy.via)
        self.session = session
        self.store = store
        self.policy = policy
        self.heuristics = heuristics
        self.max_object = max_object_bytes
        self.cache_name = cache_name
        self.strip_fields = strip_fields  # lower-case names never stored (a policy adds them)

    async def send(
        self, method: str, url: str, fields: list[tuple[str, str]], body: object,
        outcome: Outcome | None = None,
    ) -> aiohttp.ClientResponse:
        started = time.monotonic()
        try:
            resp = await self.session.request(
                method, URL(url, encoded=True), headers=CIMultiDict(fields), data=body,
                allow_redirects=False,
            )
        except _UPSTREAM_ERRORS as exc:
            raise classify(exc) from exc
        if outcome is not None:
            outcome.upstream_ms = (time.monotonic() - started) * 1000
        return resp

    def plan(
        self, method: str, status: int, pairs: list[tuple[str, str]], length: int | None,
        fill: Fill, request_time: float, outcome: Outcome,
    ) -> CachedResponse | None:
        """§3: the entry to store once the body is in (body still empty), or None."""
        directives = parse_response_directives(all_values(pairs, "cache-control"))
        vary = vary_fields(all_values(pairs, "vary"))
        verdict = storability(
            method=method, status=status, request=fill.request, response=directives,
            has_authorization="Authorization" in fill.request_headers,  # type: ignore[operator]
            has_expires=first_value(pairs, "expires") is not None,
            has_set_cookie=first_value(pairs, "set-cookie") is not None,
            vary_star=vary is None, policy=self.policy,
        )
        if not verdict.storable or vary is None:
            outcome.detail = verdict.reason
            return None
        if length is not None and length > self.max_object:
            outcome.detail = "too-big"
            return None
        entry = make_stored_response(
            key=fill.key, vary=vary, vary_values=vary_values(vary, fill.request_headers),
            status=status, pairs=pairs, body=b"", request_time=request_time,
            response_time=time.time(), shared=self.policy.shared, heuristics=self.heuristics,
            excluded=excluded_fields(directives, self.policy) | self.strip_fields,
        )
        reusable = entry.lifetime > 0 or has_validator(entry) or (
            directives.stale_if_error or directives.stale_while_revalidate)
        if not reusable:  # no freshness and nothing to revalidate with: storing is waste
            outcome.detail = "not-reusable"
            return None
        outcome.stored = True
        outcome.ttl = entry.lifetime - entry.initial_age
        return entry

    async def put(self, entry: CachedResponse, body: bytes) -> None:
        await self.store.put(replace(entry, body=body, size=entry.size + len(body)))

    def via(self, resp: aiohttp.ClientResponse) -> str:
        """RFC 9110 §7.6.3: the protocol the response was received with."""
        return via_value((resp.version.major, resp.version.minor), self.cache_name)

    def _plan_response(
        self, method: str, resp: aiohttp.ClientResponse, fill: Fill, request_time: float,
        outcome: Outcome,
    ) -> CachedResponse | None:
        return self.plan(method, resp.status, list(resp.headers.items()), resp.content_length,
                         fill, request_time, outcome)

    async def relay(
        self, request: web.Request, resp: aiohttp.ClientResponse, outcome: Outcome,
        fill: Fill | None, request_time: float, replaces: CachedResponse | None = None,
        upstream_method: str | None = None,
    ) -> web.StreamResponse:
        """Stream the upstream response to the client, keeping a copy to store.
        upstream_method: what was sent, when it differs (a HEAD revalidated with GET:
        the body is stored but not sent, RFC 9110 §9.3.2)."""
        outcome.fwd_status = resp.status
        send_body = request.method != "HEAD"
        entry = None
        if fill is not None:
            method = upstream_method or request.method
            entry = self._plan_response(method, resp, fill, request_time, outcome)
            if entry is None:
                fill.done()
                if replaces is not None and resp.status == 200:
                    await discard(self.store, fill.key)  # the new representation is not storable
        if entry is not None and fill is not None and self._client_has_current(request, entry):
            return await self._not_modified(request, resp, outcome, fill, entry)
        headers = CIMultiDict(end_to_end(resp.headers.items()))
        mark(headers, outcome, self.cache_name, self.via(resp))
        out = web.StreamResponse(status=resp.status, reason=resp.reason, headers=headers)
        try:
            await out.prepare(request)
        except ConnectionError:
            resp.close()
            if fill is not None:
                fill.done()
            return out
        chunks: list[bytes] | None = [] if entry is not None else None
        size = 0
        while send_body or chunks is not None:  # a HEAD reads the body only to store it
            try:
                chunk = await resp.content.readany()
            except _UPSTREAM_ERRORS as exc:
                # The body broke off: store nothing, and end the client's message
                # abnormally so it cannot mistake the truncated body for a whole one.
                log.warning("upstream body for %s broke off: %s", request.path, classify(exc))
                resp.close()
                if fill is not None:
                    fill.done()
                outcome.status, outcome.stored = "ERROR", False
                if request.transport is not None:
                    request.transport.close()
                return out
            if not chunk:
                break
            if chunks is not None:
                size += len(chunk)
                if size <= self.max_object:
                    chunks.append(chunk)
                else:  # bigger than announced: stream on, store nothing
                    chunks = None
                    outcome.stored = False
                    if fill is not None:
                        fill.done()
            if not send_body:
                continue  # (and stops once nothing will be stored)
            try:
                await out.write(chunk)
                outcome.bytes_sent += len(chunk)
            except ConnectionError:  # the client went away
                resp.close()
                if fill is not None:
                    fill.done()
                return out
        if send_body or chunks is not None:
            resp.release()
        else:
            resp.close()  # a HEAD with nothing to store: the rest of the body is not wanted
        if entry is not None and chunks is not None:
            await self.put(entry, b"".join(chunks))
        if fill is not None:
            fill.done()
        with contextlib.suppress(ConnectionError):  # the client left at the very end
            await out.write_eof()
        return out

    def _client_has_current(self, request: web.Request, entry: CachedResponse) -> bool:
        """The client's own validators (stripped upstream) are answered here (§4.3.2)."""
        h = request.headers
        inm, ims = combined_value(h, "If-None-Match"), h.get("If-Modified-Since")
        if inm is None and ims is None:
            return False
        return is_not_modified(entry, request.method, inm, ims)

    async def _not_modified(
        self, request: web.Request, resp: aiohttp.ClientResponse, outcome: Outcome, fill: Fill,
        entry: CachedResponse,
    ) -> web.StreamResponse:
        headers = CIMultiDict(not_modified_fields(entry))
        # The cookie is this client's even when the stored copy leaves it out ("strip").
        for name, value in resp.headers.items():
            if name.lower() == "set-cookie":
                headers.add(name, value)
        mark(headers, outcome, self.cache_name, self.via(resp))
        out = web.Response(status=304, headers=headers)
        await self.consume(resp, fill, 0.0, planned=entry)
        return out

    async def consume(
        self, resp: aiohttp.ClientResponse, fill: Fill, request_time: float,
        replaces: CachedResponse | None = None, planned: CachedResponse | None = None,
    ) -> None:
        """Read a response with no client waiting for it, and store it if allowed."""
        entry = planned or self._plan_response("GET", resp, fill, request_time, Outcome())
        try:
            if entry is None:
                if replaces is not None and resp.status == 200:
                    await discard(self.store, fill.key)
                resp.close()
                return
            chunks: list[bytes] = []
            size = 0
            try:
                while chunk := await resp.content.readany():
                    size += len(chunk)
                    if size > self.max_object:
                        resp.close()
                        return
                    chunks.append(chunk)
            except _UPSTREAM_ERRORS as exc:
                resp.close()
                raise classify(exc) from exc
            resp.release()
            await self.put(entry, b"".join(chunks))
        finally:
            fill.done()


__all__ = ["Exchange", "Fill", "UpstreamError"]
