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
