"""The rest of a chunked answer's trailer section, after llhttp refused a framing field
in it (http/trailer_section.py): stands in for the connection's parser, which llhttp
leaves in an error state, until the section's empty line; then the message is complete,
and bytes after it are bytes past the message (RFC 9112 §6.3), as llhttp would say."""

from __future__ import annotations

from typing import Protocol

import httptools

from cacheproxy.http.trailer_section import section_end


class _Receiver(Protocol):
    def on_message_complete(self) -> None: ...


class TrailerSkip:
    """feed_data() trailer_section.section_bytes of the read, then each read
    after; the status and version of the answer stay readable as from llhttp."""

    def __init__(self, receiver: _Receiver, status: int, version: str) -> None:
        self._receiver = receiver
        self._status = status
        self._version = version
        self._tail = b""  # the last bytes searched: an empty line may span two reads
        self._done = False

    def get_status_code(self) -> int:
        return self._status

    def get_http_version(self) -> str:
        return self._version

    def feed_data(self, data: bytes) -> None:
        if self._done:
            raise httptools.HttpParserError("bytes past the end of the message")
        buffer = self._tail + data
        end = section_end(buffer)
        if end < 0:
            self._tail = buffer[-2:]
            return
        self._done = True
        self._receiver.on_message_complete()
        if end < len(buffer):
            raise httptools.HttpParserError("bytes past the end of the message")
