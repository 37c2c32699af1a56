"""Upstream faults a reviewer injected (branch review-faults); each test fails on the code
it was written against. Origins are raw sockets on 127.0.0.1; clients raw sockets too,
where an upload has to be paused or read while it is still being sent."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

OK = b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 2\r\n\r\nhi"

# handler(reader, writer, request head) -> keep the connection open for another request
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[bool]]


@contextlib.asynccontextmanager
async def scripted_origin(handler: Handler) -> AsyncIterator[str]:
    """An origin that hands each request head to handler (which reads the body, or not)."""
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            while await handler(reader, writer, await reader.readuntil(b"\r\n\r\n")):
                pass
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # (cancelled at the end of the test: ends quietly)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for task in tasks:
            task.cancel()


def _path(head: bytes) -> bytes:
    return head.split(b" ", 2)[1]


async def _read_response(reader: asyncio.StreamReader, timeout: float) -> tuple[int, bytes]:
    async with asyncio.timeout(timeout):
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return int(head.split(b" ")[1]), await reader.readexactly(length)


# -- F1: a connection closed with request-body bytes still unsent is never closed ------------

async def test_an_upload_the_origin_stopped_reading_does_not_hold_its_connection_forever(proxy):
    """The origin reads the request head of an upload, then neither reads the body nor
    answers (a hung worker). After read_timeout the proxy answers 504 ("timeout sending
    the request body") and closes the upstream connection: Connection.close() calls
    transport.close(), which waits for the write buffer to drain, and it never does. The
    socket stays open, and in the pool's count, for as long as the origin keeps it: with
    max_connections = 1 every later miss gets 503. nginx closes the socket (close(2)),
    whatever the kernel still holds unsent."""
    async def handler(reader, writer, head) -> bool:
        if _path(head) == b"/ok":
            writer.write(OK)
            return True
        await asyncio.sleep(3600)  # /stall: reads nothing more, answers nothing
        return False

    async with scripted_origin(handler) as upstream:
        c = await proxy(upstream, proxy={"read_timeout": 0.5, "max_connections": 1,
                                         "connect_timeout": 1.0})
        reader, writer = await asyncio.open_connection("127.0.0.1", c.server.port)
        size = 16 * 1024 * 1024
        writer.write(b"POST /stall HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size)

        async def upload() -> None:
            block = b"u" * 65536
            with contextlib.suppress(ConnectionError):
                for _ in range(size // len(block)):
                    writer.write(block)
                    await writer.drain()

        sending = asyncio.create_task(upload())
        status, body = await _read_response(reader, 10)
        assert status == 504 and b"timeout sending the request body" in body
        await asyncio.wait_for(sending, 15)
        writer.close()

        pool = c.app_proxy.exchange.pool
        deadline = time.monotonic() + 2
        while pool.in_use and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert pool.in_use == 0, "the upstream connection of the 504 is still open"
        resp = await c.get("/ok")
        assert resp.status == 200, (resp.status, await resp.text())


# -- F2: a cancelled upload pump takes the request body's reader state with it ---------------

async def test_an_early_answer_to_a_paused_upload_leaves_the_connection_usable(proxy):
    """The origin answers (413, keep-alive, reading and dropping the body itself) while the
    client has paused its upload. Exchange.relay releases the connection; the upload's
    task, waiting in the client's StreamReader.readany(), is cancelled, and the client
    connection at once starts reading and dropping the rest of the body (_linger) on that
    same StreamReader while the cancelled task still holds its waiter: readany() raises
    RuntimeError ("called while another coroutine is already waiting"), the connection is
    closed with "client connection failed" logged, or (when the cancellation lands after
    _linger's wait began) the cancelled task clears _linger's waiter and the connection
    stalls for LINGER_SECONDS (10 s) before it is closed. The client's next request on the
    connection is lost either way; nginx (and aiohttp's own server) discard the rest of
    the body and answer it."""
    async def handler(reader, writer, head) -> bool:
        if _path(head) == b"/ok":
            writer.write(OK)
            return True
        writer.write(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):  # drops the body, as servers do
                pass
        return False

    async with scripted_origin(handler) as upstream:
        c = await proxy(upstream)
        reader, writer = await asyncio.open_connection("127.0.0.1", c.server.port)
        size = 100_000
        writer.write(b"POST /early HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size
                     + b"u" * 1000)
        status, _ = await _read_response(reader, 5)
        assert status == 413
        await asyncio.sleep(0.1)
        # The rest of the body, then the next request on the same connection.
        writer.write(b"u" * (size - 1000) + b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
        try:
            status, body = await _read_response(reader, 3)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError) as exc:
            raise AssertionError(f"the next request was not answered: {exc!r}") from None
        assert (status, body) == (200, b"hi")
        writer.close()


# -- F3: read_timeout bounds the whole head, not the time between its bytes -----------------

async def test_an_answer_head_trickling_in_slower_than_read_timeout_in_total_is_answered(proxy):
    """README: proxy.read_timeout is "seconds between bytes from the origin before 504"
    (nginx's proxy_read_timeout: "only between two successive read operations, not for
    the transmission of the whole response"). The answer's head is waited for with one
    timer from the request's end (Connection._await_head, and send_quick's _read_until),
    which bytes arriving do not move: an origin sending its head a byte every 50 ms, never
    silent for more than 50 ms, gets a 504 at read_timeout."""
    answer = (b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nX-Pad: " + b"p" * 10
              + b"\r\nContent-Length: 2\r\n\r\nhi")

    async def handler(reader, writer, head) -> bool:
        for i in range(len(answer)):
            writer.write(answer[i:i + 1])
            await writer.drain()
            await asyncio.sleep(0.05)
        return True

    async with scripted_origin(handler) as upstream:
        c = await proxy(upstream, proxy={"read_timeout": 1.0})
        resp = await c.get("/slow")
        assert resp.status == 200, (resp.status, await resp.text())
        assert await resp.read() == b"hi"
