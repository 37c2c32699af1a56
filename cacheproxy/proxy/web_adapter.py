"""The proxy served by aiohttp.web: an aiohttp handler's request becomes the driver's
ClientMessage (web.Request fits it), its Downstream streams through a StreamResponse,
and an Answer becomes a web.Response. `cacheproxy serve` runs the lean data plane
(proxy/client_conn.py); this keeps the proxy usable as a route of an aiohttp app."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web
from multidict import CIMultiDict

from cacheproxy.proxy.downstream import Answer, reset


class WebDownstream:
    """A Downstream on aiohttp's StreamResponse."""

    def __init__(self, request: web.Request, send_timeout: float) -> None:
        self.request = request
        self.send_timeout = send_timeout
        self.response: web.StreamResponse | None = None

    async def start(self, status: int, reason: str | None, headers: CIMultiDict[str],
                    head_only: bool) -> None:
        self.response = web.StreamResponse(status=status, reason=reason, headers=headers)
        await self.response.prepare(self.request)

    async def write(self, data: bytes) -> None:
        assert self.response is not None
        async with asyncio.timeout(self.send_timeout):
            await self.response.write(data)

    async def finish(self) -> None:
        assert self.response is not None
        await self.response.write_eof()

    def interim(self, status: int, reason: str, fields: list[tuple[str, str]]) -> None:
        """Not passed on: aiohttp's response has no way to send a 1xx before itself."""

    def watch_gone(self, gone: Callable[[], None] | None) -> None:
        """Not watched: aiohttp's server tells a handler of a lost client at its next
        write."""

    @property
    def left(self) -> bool:
        transport = self.request.transport
        return transport is None or transport.is_closing()

    def abort(self) -> None:
        transport, response = self.request.transport, self.response
        if transport is None:
            return
        # (aiohttp chunks an answer of unknown length to HTTP/1.1 by itself, in prepare())
        framed = response is None or response.content_length is not None \
            or "chunked" in response.headers.get("Transfer-Encoding", "").lower()
        if framed:
            transport.close()
        else:  # delimited by the close: a FIN would say it is whole (RFC 9112 §6.3, §8)
            reset(transport)


def web_response(answer: Answer) -> web.Response:
    return web.Response(status=answer.status, reason=answer.reason, headers=answer.fields(),
                        body=answer.body or None)


def answer_of(response: web.Response) -> Answer:
    """A response an aiohttp handler made (the admin API's PURGE answer) as an Answer."""
    body = response.body
    return Answer(response.status, CIMultiDict(response.headers),
                  body if isinstance(body, bytes) else b"", response.reason)
