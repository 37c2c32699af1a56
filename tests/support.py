"""Helpers for the proxy tests (a module of its own: "conftest" is ambiguous once
tests/rfc/ has one too)."""

from __future__ import annotations

import dataclasses
from typing import Any

from cacheproxy.config import CacheConfig, Config, ProxyConfig


def proxy_config(upstream: str, *, proxy: dict[str, Any] | None = None,
                 cache: dict[str, Any] | None = None) -> Config:
    """The default config pointed at upstream, with some settings changed."""
    return Config(
        proxy=dataclasses.replace(ProxyConfig(), upstream=upstream, **(proxy or {})),
        cache=dataclasses.replace(CacheConfig(), **(cache or {})),
    )


def cache_status(resp: Any) -> str:
    """The proxy's own Cache-Status member (the last one)."""
    return resp.headers.getall("Cache-Status")[-1]
