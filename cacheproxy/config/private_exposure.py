"""Is a private cache within reach of several users? (RFC 9111 §3, §3.5, §5.2.2.7)

`cache.shared = false` makes a private cache: it stores what a shared cache must not (an
answer marked `private`, an answer to a request with `Authorization`) and serves it to
whoever asks next for the URL. That is right for one user's cache (a developer's
browser pointed at a loopback listener) and a leak of one user's pages to another once
other machines can connect, or once the store is Redis, which every replica reads. Said
once at start, as a WARNING: nothing here can tell that only one person connects."""

from __future__ import annotations

from cacheproxy.config.sections import Config
from cacheproxy.config.values import is_loopback_host, parse_listen


def private_cache_exposure(config: Config) -> str | None:
    """The warning to give at start, or None: no private cache, or one user's only."""
    private = ["cache.shared"] if not config.cache.shared else []
    private += [f"routes[{i}].cache.shared" for i, route in enumerate(config.routes)
                if not route.cache.shared and config.cache.shared]
    if not private:
        return None
    host, _ = parse_listen(config.proxy.listen)
    reach = []
    if not is_loopback_host(host):
        reach.append(f"proxy.listen ({config.proxy.listen}) is reachable from other machines")
    if config.cache.store == "redis":
        reach.append('cache.store = "redis" is read by every replica')
    if not reach:
        return None
    return (f"{', '.join(private)} = false (a private cache: answers marked private and "
            f"answers to Authorization are stored and served to whoever asks next) and "
            f"{' and '.join(reach)}: one user's private pages can reach another. Keep a "
            "private cache on a loopback proxy.listen with the memory store, or set it to "
            "true")
