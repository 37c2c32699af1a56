"""Which upstream, cache rules and policies a request gets: the [[routes]] table.

Routes are tried in order and the first whose host pattern and path prefix both match wins;
none matching means the default route: [proxy] upstream with the top-level sections. The
config loader has already refused routes that could never match, so order is the whole rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cacheproxy.config.entries import host_matches, normalize_path
from cacheproxy.policies import request_host
from cacheproxy.policies.cors import CorsPolicy
from cacheproxy.policies.referer import RefererPolicy

if TYPE_CHECKING:
    from cacheproxy.config import CacheConfig, Config, RouteConfig


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request goes and the rules it goes by, compiled once per config."""

    name: str  # for the log: "routes[1]" or "default"
    index: int | None  # None for the default route
    host: str  # the parsed host pattern: "" (any), "example.com" or "*.example.com"
    path_prefix: str
    upstream: str
    cache: CacheConfig
    cors: CorsPolicy
    referer: RefererPolicy

    def matches(self, host: str, path: str) -> bool:
        """`host` as request_host() gives it, `path` as normalize_path() gives it."""
        return host_matches(self.host, host) and path.startswith(self.path_prefix)


def route_name(index: int) -> str:
    """A [[routes]] entry's name in the log and in /metrics' route label."""
    return f"routes[{index}]"


def route_names(config: Config) -> tuple[str, ...]:
    """Every route's name, the default's first."""
    return ("default", *map(route_name, range(len(config.routes))))


def compile_route(route: RouteConfig, index: int) -> Route:
    return Route(
        name=route_name(index),
        index=index,
        host=route.host,
        path_prefix=route.path_prefix,
        upstream=route.upstream,
        cache=route.cache,
        cors=CorsPolicy.from_config(route.cors),
        referer=RefererPolicy.from_config(route.referer),
    )


@dataclass(frozen=True, slots=True)
class RouteTable:
    routes: tuple[Route, ...]
    default: Route

    @classmethod
    def from_config(cls, config: Config) -> RouteTable:
        default = Route(
            name="default",
            index=None,
            host="",
            path_prefix="/",
            upstream=config.proxy.upstream,
            cache=config.cache,
            cors=CorsPolicy.from_config(config.cors),
            referer=RefererPolicy.from_config(config.referer),
        )
        return cls(tuple(compile_route(r, i) for i, r in enumerate(config.routes)), default)

    def match(self, host: str, path: str) -> Route:
        """The first route for this Host field (any case, with a port or an [IPv6] literal)
        and request path (its query ignored; dot segments and "//" resolved first, as the
        upstream would resolve them); the default route when none matches."""
        host, path = request_host(host), normalize_path(path)
        for route in self.routes:
            if route.matches(host, path):
                return route
        return self.default
