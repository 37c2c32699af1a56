"""How the upstream's failures become 502 / 503 / 504 (RFC 9110 §15.6)."""

from __future__ import annotations


class UpstreamError(Exception):
    """The upstream gave no usable response: status is what the client gets (502 refused,
    reset or broken framing; 503 no pooled connection free in time; 504 timed out), reason
    a short cause for the client and the log."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Refusal(UpstreamError):
    """Not a failure of the upstream: forward mode refused the origin once its name was
    resolved (deny_hosts naming the address, a loop; CacheProxy._vet). The client gets the
    refusal, the log says DENIED with the reason as policy, as for a name refused as
    written; no stale copy stands in for it (stale-if-error is for an origin that failed)."""
