"""The pooled upstream client and how its failures become 502 / 504."""

from __future__ import annotations

import asyncio

import aiohttp

from cacheproxy.config import ProxyConfig


def make_session(config: ProxyConfig) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=config.max_connections, limit_per_host=0, ttl_dns_cache=60,
        enable_cleanup_closed=False, force_close=False,
    )
    timeout = aiohttp.ClientTimeout(
        total=None, connect=None,
        sock_connect=config.connect_timeout, sock_read=config.read_timeout,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,  # bodies pass byte for byte; Content-Encoding is end-to-end
        skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        cookie_jar=aiohttp.DummyCookieJar(),  # a proxy never keeps cookies
        trust_env=False,
        read_bufsize=2**16,
        max_field_size=65536,
        max_line_size=65536,
    )


class UpstreamError(Exception):
    """The upstream could not give a response: status is what the client gets."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def classify(exc: BaseException) -> UpstreamError:
    """Timeouts are 504 (Gateway Timeout), everything else 502 (Bad Gateway)."""
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return UpstreamError(504, "upstream timed out")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamError(502, "upstream unreachable")
    if isinstance(exc, aiohttp.ClientResponseError):
        return UpstreamError(502, "upstream sent an invalid response")
    return UpstreamError(502, "upstream connection failed")
