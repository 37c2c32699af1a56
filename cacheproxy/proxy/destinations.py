"""Forward mode's check of what a name resolved to, with the one fact the sans-I/O rule
(policies/forward.py, address_refusal) cannot know: whether an address is this machine's.
A listener on 0.0.0.0 or :: is reached by every address of the machine, its LAN ones too,
which neither the config nor any name lists."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any, TypeVar

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
