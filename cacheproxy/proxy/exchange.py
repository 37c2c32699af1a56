"""The upstream exchange's I/O: send a request on the pooled session, stream the answer
to the client, and store the body when the flow decided to (Store) and it arrives whole
within the object-size limit. It performs decisions; it makes none."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from cacheproxy.config import ProxyConfig
from cacheproxy.http.fields import end_to_end
from cacheproxy.http.flow import NotModified
from cacheproxy.http.stored import CachedResponse
from cacheproxy.observe.outcome import Outcome
from cacheproxy.proxy.forwarding import via_value
from cacheproxy.proxy.respond import mark
from cacheproxy.proxy.upstream import UpstreamError, classify, make_session
from cacheproxy.store import Store

log = logging.getLogger("cacheproxy")

_UPSTREAM_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)


def _nothing() -> None:
    pass


class Exchange:
    """One per proxy: the pooled upstream session, the store and the Via pseudonym."""

    session: aiohttp.ClientSession  # made by start(), inside the application's loop

    def __init__(self, config: ProxyConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.cache_name = config.via  # also the Via pseudonym (proxy.via)

    async def start(self) -> None:
        self.session = make_session(self.config)

    async def close(self) -> None:
        await self.session.close()

    async def send(
        self, method: str, url: str, fields: list[tuple[str, str]], body: object,
        outcome: Outcome | None = None,
    ) -> aiohttp.ClientResponse:
        started = time.perf_counter()
        try:
            resp = await self.session.request(
                method, URL(url, encoded=True), headers=CIMultiDict(fields), data=body,
                allow_redirects=False,
            )
        except _UPSTREAM_ERRORS as exc:
            raise classify(exc) from exc
        if outcome is not None:
            outcome.upstream_ms = (time.perf_counter() - started) * 1000
            outcome.fwd_status = resp.status
        return resp

    async def put(self, entry: CachedResponse, body: bytes) -> bool:
        return await self.store.put(replace(entry, body=body, size=entry.size + len(body)))

    def via(self, resp: aiohttp.ClientResponse) -> str:
        """RFC 9110 §7.6.3: the protocol the response was received with."""
        return via_value((resp.version.major, resp.version.minor), self.cache_name)

    async def relay(
        self, request: web.Request, resp: aiohttp.ClientResponse, outcome: Outcome,
        store: CachedResponse | None, max_object: int, release: Callable[[], None] = _nothing,
    ) -> web.StreamResponse:
        """Stream the upstream response to the client; with store (the Store decision's
        entry), keep a copy and store it once whole. release wakes collapsed waiters once
        the store is settled either way. A HEAD client gets no body (its request may
        have been sent as GET so that the answer could be stored, RFC 9110 §9.3.2)."""
        if store is None:
            release()
        send_body = request.method != "HEAD"
        headers = CIMultiDict(end_to_end(resp.headers.items()))
        mark(headers, outcome, self.cache_name, self.via(resp))
        out = web.StreamResponse(status=resp.status, reason=resp.reason, headers=headers)
        try:
            await out.prepare(request)
        except ConnectionError:
            return self._abandon(resp, outcome, release, out)
        chunks: list[bytes] | None = [] if store is not None else None
        size = 0
        while send_body or chunks is not None:  # a HEAD reads the body only to store it
            try:
                chunk = await resp.content.readany()
            except _UPSTREAM_ERRORS as exc:
                # The body broke off: store nothing, and end the client's message
                # abnormally so it cannot mistake the truncated body for a whole one.
                log.warning("upstream body for %s broke off: %s", request.path,
                            classify(exc).reason)
                outcome.status = "ERROR"
                if request.transport is not None:
                    request.transport.close()
                return self._abandon(resp, outcome, release, out)
            if not chunk:
                break
            if chunks is not None:
                size += len(chunk)
                if size <= max_object:
                    chunks.append(chunk)
                else:  # bigger than announced: stream on, store nothing
                    chunks = None
                    outcome.stored = False
                    release()
            if not send_body:
                continue  # (and stops once nothing will be stored)
            try:
                await out.write(chunk)
                outcome.bytes_sent += len(chunk)
            except ConnectionError:  # the client went away: the fill goes with it
                return self._abandon(resp, outcome, release, out)
        if send_body or chunks is not None:
            resp.release()
        else:
            resp.close()  # a HEAD with nothing to store: the rest of the body is not wanted
        if store is not None and chunks is not None:
            outcome.stored = await self.put(store, b"".join(chunks))
        release()
        with contextlib.suppress(ConnectionError):  # the client left at the very end
            await out.write_eof()
        return out

    @staticmethod
    def _abandon(
        resp: aiohttp.ClientResponse, outcome: Outcome, release: Callable[[], None],
        out: web.StreamResponse,
    ) -> web.StreamResponse:
        resp.close()
        outcome.stored = False  # the log says what happened: nothing was stored
        release()
        return out

    async def not_modified(
        self, resp: aiohttp.ClientResponse, outcome: Outcome, answer: NotModified,
        store: CachedResponse, max_object: int, release: Callable[[], None],
    ) -> web.Response:
        """The client's own validators (stripped upstream) match what is being stored:
        304 (§4.3.2), once the body is in the store."""
        headers = CIMultiDict(answer.fields)
        # The cookie is this client's even when the stored copy leaves it out ("strip").
        for name, value in resp.headers.items():
            if name.lower() == "set-cookie":
                headers.add(name, value)
        try:
            outcome.stored = await self.consume(resp, store, max_object)
        finally:
            release()
        mark(headers, outcome, self.cache_name, self.via(resp))
        return web.Response(status=304, headers=headers)

    async def consume(
        self, resp: aiohttp.ClientResponse, store: CachedResponse, max_object: int
    ) -> bool:
        """Read a response no client is waiting for and store it; True once stored."""
        chunks: list[bytes] = []
        size = 0
        try:
            while chunk := await resp.content.readany():
                size += len(chunk)
                if size > max_object:
                    resp.close()
                    return False
                chunks.append(chunk)
        except _UPSTREAM_ERRORS as exc:
            resp.close()
            raise classify(exc) from exc
        resp.release()
        return await self.put(store, b"".join(chunks))


__all__ = ["Exchange", "UpstreamError"]
