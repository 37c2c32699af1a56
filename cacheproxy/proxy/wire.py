"""A response head as bytes on the wire (RFC 9112 §2.1: start line, field lines, an
empty line)."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_writer import StreamWriter, _serialize_headers
from multidict import CIMultiDict, CIMultiDictProxy

Fields = CIMultiDict[str] | CIMultiDictProxy[str]
_CRLF = "\r\n"
REASONS = {s.value: s.phrase for s in HTTPStatus}  # the standard reason phrases


def encode_head(start_line: str, fields: Fields) -> bytes:
    """The head, blank line included. Field values decoded as UTF-8 with surrogateescape
    (proxy/pool.py) go back as the bytes received: obs-text is valid in a field value
    (RFC 9110 §5.5), and an origin's Latin-1 filename must reach the client as sent.
    aiohttp's serialiser (C, the fast path for ASCII heads) would drop those bytes.
    A CR or LF in a line is refused (no response splitting) by both."""
    # (One join and one scan, both in C: a loop over the values costs a µs per head. An
    # origin's reason phrase may have obs-text too.)
    if start_line.isascii() and "".join(fields.values()).isascii():
        return _serialize_headers(start_line, fields)
    lines = [f"{name}: {value}\r\n" for name, value in fields.items()]
    text = f"{start_line}\r\n{''.join(lines)}\r\n"
    ends = len(lines) + 2
    if text.count("\n") != ends or text.count("\r") != ends:
        raise ValueError("a CR or LF in a response field")
    return text.encode("utf-8", "surrogateescape")


def encode_lines(start_line: str, lines: list[tuple[str, str]]) -> bytes:
    """encode_head for fields as (name, value) pairs: the same bytes, made by joins in C
    (no multidict, no loop in Python). A CR or LF in a line is refused as there."""
    text = f"{start_line}\r\n{_CRLF.join(map(': '.join, lines))}\r\n\r\n" if lines \
        else f"{start_line}\r\n\r\n"
    ends = len(lines) + 2 if lines else 2
    if text.count("\n") != ends or text.count("\r") != ends:
        raise ValueError("a CR or LF in a response field")
    return text.encode("utf-8", "surrogateescape")


class Http11Writer(StreamWriter):
    """aiohttp's writer, whose status line names this server's version, HTTP/1.1, to an
    HTTP/1.0 request too (RFC 9110 §6.2), as the data plane's do; aiohttp frames the
    answer by the request's version all the same. The control plane's, on proxy.listen
    (client_conn) and on admin.listen (ControlRunner)."""

    async def write_headers(self, status_line: str, headers: Any, *args: Any, **kwargs: Any
                            ) -> None:
        if status_line.startswith("HTTP/1.0 "):
            status_line = "HTTP/1.1 " + status_line[9:]
            # aiohttp leaves 1.0's default, close, unsaid; said as 1.1 it must be said
            # (RFC 9112 §9.3: the client reads persistence from the version it got).
            if "Connection" not in headers:
                headers["Connection"] = "close"
        await super().write_headers(status_line, headers, *args, **kwargs)


class ControlRunner(web.AppRunner):
    """web.AppRunner (admin.listen's) whose answers are written by Http11Writer."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        make = server.request_factory

        def request_factory(message: Any, payload: Any, protocol: Any, writer: Any,
                            task: Any) -> web.BaseRequest:
            writer.__class__ = Http11Writer  # (a subclass adding no field: same layout)
            return make(message, payload, protocol, writer, task)

        server.request_factory = request_factory
        return server
