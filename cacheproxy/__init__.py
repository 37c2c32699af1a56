"""cacheproxy: an HTTP caching reverse proxy on aiohttp that follows RFC 9111."""
