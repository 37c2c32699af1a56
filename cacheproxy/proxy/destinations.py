"""Forward mode's lookups, and its check of what a name resolved to, with the one fact
the sans-I/O rule (policies/forward.py, address_refusal) cannot know: whether an address
is this machine's. A listener on 0.0.0.0 or :: is reached by every address of the
machine, its LAN ones too, which neither the config nor any name lists."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable
from typing import Any, TypeVar

try:  # c-ares: lookups on the event loop, as Squid's and nginx's own DNS clients
    import aiodns
except ImportError:  # pragma: no cover  (a dependency; without it, the loop's resolver)
    aiodns = None

from cacheproxy.policies.forward import (
    ForwardAccess,
    Refused,
    address_refusal,
    listens_everywhere,
)

P = TypeVar("P", bound=asyncio.BaseProtocol)


def address_refused(access: ForwardAccess, name: str, address: str, port: int
                    ) -> Refused | None:
    """address_refusal, told whether address is this machine's when a listener on port
    takes every address (asked only then)."""
    local = listens_everywhere(access, port) and this_machine(address)
    return address_refusal(access, name, address, port, local)


def this_machine(address: str) -> bool:
    """Is address one of this machine's? Only a local address can be bound to (the kernel
    answers EADDRNOTAVAIL otherwise): one system call, no lookup, nothing sent."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True


MIN_TRY_SECONDS = 0.25  # c-ares's shortest timeout of a try (its MIN_TIMEOUT_MS)


class Lookups:
    """The names forward clients ask for, looked up by c-ares (aiodns) on the event loop,
    not by getaddrinfo in the loop's few resolver threads (uvloop: libuv's 4): a page that
    names a few hosts whose DNS never answers held every thread, and every other lookup,
    the routes' upstreams' included, waited behind them (504s past connect_timeout). Here
    a slow name delays only the requests for it. c-ares reads /etc/hosts, then asks the
    servers of /etc/resolv.conf, or forward.resolver's (as Squid's dns_nameservers); it
    knows no other name service of nsswitch.conf (mDNS, LDAP), as Squid's client does
    not. The routes' own upstreams, which the operator names, keep the system's lookup."""

    def __init__(self, servers: tuple[str, ...] = (), timeout: float = 5.0) -> None:
        self.servers = servers
        self.timeout = timeout
        self._resolver: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Replaced by a reload: each closed once the lookups it began are done (a
        # pycares channel holds a thread, an inotify watch and sockets), or with the app.
        self._retired: list[Any] = []
        self._flying: dict[Any, int] = {}  # resolver: its lookups under way

    def configure(self, servers: tuple[str, ...], timeout: float) -> None:
        """A reload's settings: the next lookup makes a resolver with them (those under
        way finish on the one they began on)."""
        if (servers, timeout) != (self.servers, self.timeout):
            self.servers, self.timeout = servers, timeout
            self._retire()

    def _retire(self) -> None:
        if self._resolver is not None:
            self._retired.append(self._resolver)
            self._resolver = None

    async def _close_idle(self) -> None:
        """The retired resolvers no lookup uses any more, closed."""
        idle = [r for r in self._retired if r not in self._flying]
        if idle:
            self._retired = [r for r in self._retired if r in self._flying]
            for resolver in idle:
                await resolver.close()

    async def close(self) -> None:
        """With the application: c-ares's lookups still under way are cancelled (their
        answers would come from its thread to a loop that is gone)."""
        resolvers, self._retired = [*self._retired, self._resolver], []
        self._resolver = None
        for resolver in resolvers:
            if resolver is not None:
                await resolver.close()

    async def addresses(self, host: str, port: int) -> list[str]:
        """host's addresses, each once, in the resolver's order (socket.gaierror: none)."""
        loop = asyncio.get_running_loop()
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return [host]  # (an address: nothing to look up)
        if aiodns is None:
            return await resolved(loop, host, port)
        if self._retired:
            await self._close_idle()
        if self._resolver is None or self._loop is not loop:
            self._retire()
            self._resolver = aiodns.DNSResolver(
                nameservers=list(self.servers) or None, loop=loop,
                timeout=max(0.5, self.timeout / 2), tries=_tries(self.timeout))
            self._loop = loop
        resolver = self._resolver
        self._flying[resolver] = self._flying.get(resolver, 0) + 1
        try:
            result = await resolver.getaddrinfo(host, port=port, type=socket.SOCK_STREAM)
        except aiodns.error.DNSError as exc:
            message = exc.args[1] if len(exc.args) > 1 else "DNS lookup failed"
            raise socket.gaierror(socket.EAI_NONAME, str(message)) from None
        finally:
            if (left := self._flying.pop(resolver) - 1) > 0:
                self._flying[resolver] = left
            elif resolver is not self._resolver and self._retired:
                await self._close_idle()
        addresses = list(dict.fromkeys(
            node.addr[0].decode("ascii") if isinstance(node.addr[0], bytes)
            else str(node.addr[0]) for node in result.nodes))
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, "no address")
        return addresses


def _tries(seconds: float) -> int:
    """Tries enough for a lookup to last `seconds` (connect_timeout ends it, a 504). c-ares
    gives a try not the timeout it is given once a server has answered a few questions,
    but five times its average latency, 250 ms at least, doubled per retry (c-ares 1.34,
    ares_metrics.c): two tries gave up after 0.75 s on a name a recursive resolver answers
    in a second, where glibc waits 5 s a try, Squid's dns_timeout and nginx's
    resolver_timeout 30 s."""
    tries, total = 1, MIN_TRY_SECONDS
    while total < seconds:
        tries += 1
        total += MIN_TRY_SECONDS * 2 ** (tries - 1)
    return max(2, tries)


async def resolved(loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[str]:
    """host's addresses, each once, in the resolver's order (socket.gaierror: none)."""
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise socket.gaierror(socket.EAI_NONAME, "no address")
    return addresses


async def connect_first(loop: asyncio.AbstractEventLoop, factory: Callable[[], P],
                        addresses: list[str], port: int, **options: Any
                        ) -> tuple[asyncio.BaseTransport, P]:
    """A connection to the first of addresses that takes one (vetted addresses: connected
    to as they are, not by a name looked up again); the last one's OSError if none does."""
    for address in addresses[:-1]:
        try:
            return await loop.create_connection(factory, address, port, **options)
        except OSError:
            continue
    return await loop.create_connection(factory, addresses[-1], port, **options)
