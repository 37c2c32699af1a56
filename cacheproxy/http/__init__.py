"""The HTTP caching rules, sans I/O.

Plain functions over small immutable values: no aiohttp, no asyncio, no clock
reads (the time is always an argument). Each rule names the RFC section it
implements; read alongside RFC 9111 (HTTP Caching), RFC 9110 (HTTP Semantics),
RFC 5861 (stale-while-revalidate, stale-if-error) and RFC 9211 (Cache-Status).
"""
