"""A TCP proxy on loopback that adds a fixed delay to every request on its way in.

Used to bench stoker against an S3 server that is a network away (S3 in a region is
10–30 ms a request) when the only server here is moto_server on the same machine:
each read from a client is forwarded to the server ``delay_s`` later, in order, so a
request/response round trip takes ``delay_s`` more and concurrent requests overlap
their waits, as on a real network. Replies pass straight back.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit


async def _pipe_delayed(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float
) -> None:
    loop = asyncio.get_running_loop()
    pending: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def forward() -> None:
        while True:
            due, data = await pending.get()
            if not data:
                break
            await asyncio.sleep(max(0.0, due - loop.time()))
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(forward())
    try:
        while data := await reader.read(65536):
            pending.put_nowait((loop.time() + delay_s, data))
    finally:
        pending.put_nowait((0.0, b""))
        await sender
        writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


@contextmanager
def delayed(endpoint: str, delay_ms: float) -> Iterator[str]:
    """A proxy to ``endpoint`` (http://host:port) adding ``delay_ms`` to each request;
    yields the proxy's own http:// endpoint. Runs on a thread of this process."""
    target = urlsplit(endpoint)
    ready: threading.Event = threading.Event()
    state: dict[str, object] = {}

    async def serve() -> None:
        async def handle(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
            s_reader, s_writer = await asyncio.open_connection(target.hostname, target.port)
            await asyncio.gather(
                _pipe_delayed(c_reader, s_writer, delay_ms / 1000),
                _pipe(s_reader, c_writer),
                return_exceptions=True,
            )

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        state["port"] = server.sockets[0].getsockname()[1]
        state["stop"] = asyncio.Event()
        ready.set()
        async with server:
            await state["stop"].wait()  # type: ignore[attr-defined]

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield f"http://127.0.0.1:{state['port']}"
    finally:
        loop.call_soon_threadsafe(state["stop"].set)  # type: ignore[attr-defined]
        thread.join(5)
