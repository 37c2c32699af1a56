"""Forward mode's check of what a name resolved to, with the one fact the sans-I/O rule
(policies/forward.py, address_refusal) cannot know: whether an address is this machine's.
A listener on 0.0.0.0 or :: is reached by every address of the machine, its LAN ones too,
which neither the config nor any name lists."""

from __future__ import annotations

import socket

from cacheproxy.policies.forward import (
    ForwardAccess,
    Refused,
    address_refusal,
    listens_everywhere,
)


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
