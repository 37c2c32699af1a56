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
    if ":" not in address:
        return _bindable(socket.AF_INET, (address, 0))
    if not ipaddress.IPv6Address(address).is_link_local:
        return _bindable(socket.AF_INET6, (address, 0))
    # RFC 4007 §6: a link-local address is bound only with its zone (EINVAL without one),
    # while a connection to it without one reaches this machine all the same: each
    # interface is asked.
    return any(_bindable(socket.AF_INET6, (address, 0, 0, index))
               for index, _ in socket.if_nameindex())


def _bindable(family: socket.AddressFamily, address: tuple[Any, ...]) -> bool:
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind(address)
    except OSError:
        return False
    return True


MIN_TRY_SECONDS = 0.25  # c-ares's shortest timeout of a try (its MIN_TIMEOUT_MS)
# Lookups made through one resolver before the next lookup takes a new one (the old one
# closed once its lookups are done, as on a reload). c-ares keeps every answer for its TTL
# (up to an hour) in a query cache that pycares gives no bound to: some 3 KB a name, and
# the names are the clients' (a page can make the browser ask for any number of a
# wildcard domain's): 50,000 names held 129 MB, growing as fast as names came. A new
# resolver starts with an empty cache: at most this many answers are held (RSS levelled
# at +55 MB over 60,000 names), for the usual names asked of the nameserver again once
# per 10,000 lookups.
LOOKUPS_PER_RESOLVER = 10_000


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
        self._made = 0  # lookups made through the current resolver (LOOKUPS_PER_RESOLVER)

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
        if self._resolver is None or self._loop is not loop \
                or self._made >= LOOKUPS_PER_RESOLVER:
            self._retire()
            self._resolver = aiodns.DNSResolver(
                nameservers=list(self.servers) or None, loop=loop,
                timeout=max(0.5, self.timeout / 2), tries=_tries(self.timeout))
            self._loop = loop
            self._made = 0
        self._made += 1
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


# RFC 8305 §5: the Connection Attempt Delay, its recommended value: the next address is
# tried when the one before has neither connected nor failed by then.
ATTEMPT_DELAY = 0.25
# At most this many attempts under way at once, the oldest given up for the next (curl's
# cf-ip-happy limit): every attempt kept until connect_timeout held a socket per 250 ms,
# twenty for a name whose many addresses drop SYNs (any name a forward client asks for).
MAX_ATTEMPTS = 6


def interleaved(addresses: list[str]) -> list[str]:
    """RFC 8305 §4: the addresses with their families alternating, the first address's
    family first, each family in the resolver's order (IPv6 then IPv4 then IPv6 ...)."""
    first_v6 = ":" in addresses[0]
    same = [a for a in addresses if (":" in a) == first_v6]
    other = [a for a in addresses if (":" in a) != first_v6]
    mixed = [a for pair in zip(same, other, strict=False) for a in pair]
    rest = same[len(other):] if len(same) > len(other) else other[len(same):]
    return mixed + rest


async def connect_first(loop: asyncio.AbstractEventLoop, factory: Callable[[], P],
                        addresses: list[str], port: int, **options: Any
                        ) -> tuple[asyncio.BaseTransport, P]:
    """A connection to the first of addresses that takes one (vetted addresses: connected
    to as they are, not by a name looked up again); the last failure's OSError if none
    does. Happy Eyeballs (RFC 8305 §5): an address that neither answers nor fails within
    ATTEMPT_DELAY (an IPv6 route that drops packets) does not hold the next one back for
    the whole connect timeout; the attempts overlap (MAX_ATTEMPTS at most) and the first
    connected wins."""
    if len(addresses) == 1:
        return await loop.create_connection(factory, addresses[0], port, **options)
    waiting = interleaved(addresses)
    # (A dict: the attempts in the order they began, the oldest first.)
    attempts: dict[asyncio.Task[tuple[asyncio.BaseTransport, P]], None] = {}
    failure: OSError | None = None
    try:
        while waiting or attempts:
            if waiting:
                if len(attempts) >= MAX_ATTEMPTS:
                    oldest = next(iter(attempts))
                    del attempts[oldest]
                    _give_up(oldest)
                attempts[loop.create_task(
                    loop.create_connection(factory, waiting.pop(0), port, **options))] = None
            done, _ = await asyncio.wait(
                attempts, timeout=ATTEMPT_DELAY if waiting else None,
                return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                del attempts[task]
            connected = [t.result() for t in done if t.exception() is None]
            for task in done:
                if (exc := task.exception()) is not None:
                    if not isinstance(exc, OSError):
                        raise exc
                    failure = exc  # §5: a failure starts the next attempt at once
            if connected:
                for transport, _ in connected[1:]:
                    _drop(transport)
                return connected[0]
        assert failure is not None
        raise failure
    finally:
        for task in attempts:  # the others, still connecting: never used
            _give_up(task)


def _give_up(task: asyncio.Task[tuple[asyncio.BaseTransport, Any]]) -> None:
    task.cancel()
    task.add_done_callback(_close_late)


def _close_late(task: asyncio.Task[tuple[asyncio.BaseTransport, Any]]) -> None:
    """A losing attempt that connected all the same: closed, not leaked."""
    if not task.cancelled() and task.exception() is None:
        _drop(task.result()[0])


def _drop(transport: asyncio.BaseTransport) -> None:
    """Close a losing attempt's connection without its protocol hearing of it: a tunnel's
    end (TunnelEnd) closes its client when its connection is lost, which would end the
    CONNECT the winning attempt carries. A protocol with timers of its own (a TunnelEnd's
    idle timer, armed at connection_made) is told to stand them down: the loop would
    keep it, and the winner's client it refers to, until they fired."""
    protocol = transport.get_protocol()
    transport.set_protocol(asyncio.Protocol())
    transport.close()
    stand_down = getattr(protocol, "stand_down", None)
    if stand_down is not None:
        stand_down()
