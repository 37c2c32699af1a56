"""The TLS client context for https origins: the system's CAs plus proxy.upstream_ca_file."""

from __future__ import annotations

import ssl


def upstream_ssl_context(ca_file: str = "") -> ssl.SSLContext:
    """A context that verifies origins (certificate chain and host name) against the system
    CAs and, when `ca_file` is not "", the PEM certificates in it as well (a company CA, or
    the one that signed a local test origin). The config loader has read the file once
    already, so an error here means it changed since (ssl.SSLError, OSError)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca_file:
        context.load_verify_locations(cafile=ca_file)  # added to the defaults, not replacing
    return context
