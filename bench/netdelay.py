"""A TCP proxy that delays every byte by half a round trip each way, so that loopback
benchmarks can show what a real network's latency does to each flow (the browser's
socket opened before or after the POST's reply). Loopback itself has none.

Bytes keep their order and the link its bandwidth: each read is released at its arrival
time plus the delay, independently of the reads before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time


class DelayProxy:
    def __init__(self, target_port: int, rtt_ms: float, host: str = "127.0.0.1") -> None:
        self.host, self.target_port, self.delay = host, target_port, rtt_ms / 2000
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def __aenter__(self) -> DelayProxy:
        self.server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.server is not None
        self.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.sleep(self.delay * 2)  # the TCP handshake's round trip
            up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
            await asyncio.gather(
                self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
            )
        except (OSError, asyncio.CancelledError):  # no server, or the bench is over
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def release() -> None:
            while True:
                due, data = await queue.get()
                if (wait := due - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
            with contextlib.suppress(Exception):
                writer.close()

        sender = asyncio.create_task(release())
        try:
            while data := await reader.read(65536):
                queue.put_nowait((time.monotonic() + self.delay, data))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            queue.put_nowait((time.monotonic() + self.delay, b""))
            with contextlib.suppress(Exception):
                await sender
