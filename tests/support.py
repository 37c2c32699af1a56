"""Helpers for the proxy tests (a module of its own: "conftest" is ambiguous once
tests/rfc/ has one too)."""

from __future__ import annotations

import dataclasses
from typing import Any

from cacheproxy.config import Config


def proxy_config(upstream: str, **sections: dict[str, Any]) -> Config:
    """The default config pointed at upstream, with settings changed per section:
    proxy_config(url, cache={"shared": False}, admin={"token": "t"})."""
    config = Config()
    changes = {name: dataclasses.replace(getattr(config, name), **values)
               for name, values in sections.items()}
    changes["proxy"] = dataclasses.replace(changes.get("proxy", config.proxy), upstream=upstream)
    return dataclasses.replace(config, **changes)


def cache_status(resp: Any) -> str:
    """The proxy's own Cache-Status member (the last one)."""
    return resp.headers.getall("Cache-Status")[-1]
