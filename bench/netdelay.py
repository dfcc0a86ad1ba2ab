"""A TCP proxy that delays every byte by half a round trip each way, so that loopback
benchmarks can show what a real network's latency does to each flow (the browser's
socket opened before or after the POST's reply). Loopback itself has none.

By default the link is ideal: bytes keep their order and the link its bandwidth, and
each read is released at its arrival time plus the delay, independently of the reads
before it. With a ``Link``, each direction is also a TCP sender on a path of that
bandwidth that starts in slow start: at most a congestion window of bytes in flight,
the window starting at RFC 6928's ten segments and growing by every byte acknowledged
(a round trip after it was sent), and falling back towards ten segments after an idle
spell (Linux's ``tcp_slow_start_after_idle``). Loopback's own TCP has neither: its
window opens at once, so without the model a first chunk of 150 KB arrives half a round
trip after it was sent, where a fresh connection on a real path needs three more.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

SEGMENT = 1448  # a TCP segment's payload on a 1,500-byte MTU path with timestamps
INITIAL_WINDOW = 10 * SEGMENT  # RFC 6928 (Linux's default since 2.6.39)
MAX_WINDOW = 4 << 20  # the receive window's ceiling (Linux's tcp_rmem max is 6 MB)
RTO_MIN_S = 0.2  # Linux's TCP_RTO_MIN


@dataclass(frozen=True)
class Link:
    """A network path's bottleneck bandwidth, for a sender in slow start."""

    mbit: float
    # Linux's net.ipv4.tcp_slow_start_after_idle (on by default): a connection idle for
    # more than an RTO has its window halved for every RTO of idle, down to ten segments.
    idle_restart: bool = True

    @property
    def bytes_per_s(self) -> float:
        return self.mbit * 1e6 / 8

    @property
    def label(self) -> str:
        """For a benchmark row's name."""
        kept = "" if self.idle_restart else ", window kept when idle"
        return f"{self.mbit:g} Mbit/s from slow start{kept}"


COALESCE_S = 0.001  # segments arriving within this of a piece's first go out with it


class _Sender:
    """One direction of a TCP connection over a ``Link``, in simulated time: when each
    byte that the application wrote reaches the other end. Segment by segment: each is
    serialized at the link's rate once the window has room for it, arrives half a round
    trip later, and is acknowledged half a round trip after that; in slow start every
    byte acknowledged opens the window by as much, while the sender uses the window
    (Linux grows it only when the sender is limited by it). No loss, no pacing: what is
    modelled is the standard slow start (Reno, CUBIC), not BBR's."""

    def __init__(self, link: Link, one_way_s: float) -> None:
        self.link, self.one_way = link, one_way_s
        self.rto = 2 * one_way_s + RTO_MIN_S
        self.window = INITIAL_WINDOW
        self.in_flight: collections.deque[tuple[float, int]] = collections.deque()  # (acked, n)
        self.flying = 0
        self.peak = 0  # the most in flight since the connection was last idle
        self.free = 0.0  # when the link has serialized everything sent so far
        self.last_sent: float | None = None

    def _acknowledged(self, now: float) -> None:
        while self.in_flight and self.in_flight[0][0] <= now:
            _, n = self.in_flight.popleft()
            self.flying -= n
            if self.window < 2 * self.peak:  # limited by the window: slow start opens it
                self.window = min(MAX_WINDOW, self.window + n)

    def _restart_if_idle(self, now: float) -> None:
        if self.flying or self.last_sent is None:
            return
        self.peak = 0
        idle = now - self.last_sent
        if self.link.idle_restart and idle > self.rto:
            self.window = max(INITIAL_WINDOW, self.window >> int(idle / self.rto))

    def send(self, written: float, size: int) -> list[tuple[float, int]]:
        """(arrival time, bytes) of each piece of ``size`` bytes written at ``written``: its
        segments, those that arrive within COALESCE_S of each other together."""
        self._acknowledged(written)
        self._restart_if_idle(written)
        pieces: list[list] = []  # [first arrival, last arrival, bytes]
        now, left = written, size
        while left:
            n = min(SEGMENT, left)
            start = max(now, self.free)
            self._acknowledged(start)
            if self.flying + n > self.window:  # wait for the next acknowledgement
                now = self.in_flight[0][0]
                continue
            self.free = self.last_sent = start + n / self.link.bytes_per_s
            arrival = self.free + self.one_way
            self.in_flight.append((arrival + self.one_way, n))
            self.flying += n
            self.peak = max(self.peak, self.flying)
            if pieces and arrival - pieces[-1][0] < COALESCE_S:
                pieces[-1][1:] = [arrival, pieces[-1][2] + n]
            else:
                pieces.append([arrival, arrival, n])
            left -= n
        return [(last, n) for _, last, n in pieces]


class DelayProxy:
    def __init__(
        self,
        target_port: int,
        rtt_ms: float,
        host: str = "127.0.0.1",
        link: Link | None = None,
        idle_close_s: float = 0.0,
    ) -> None:
        self.host, self.target_port, self.delay = host, target_port, rtt_ms / 2000
        self.link = link
        # An HTTP connection idle this long is closed, as a proxy's or server's keep-alive
        # timeout closes it (0: never); a WebSocket's is not.
        self.idle_close_s = idle_close_s
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
            seen = {"at": time.monotonic(), "websocket": False}
            watch = None
            if self.idle_close_s:
                watch = asyncio.create_task(self._close_when_idle(seen, writer, up_writer))
            await asyncio.gather(
                self._pipe(reader, up_writer, seen, client=True),
                self._pipe(up_reader, writer, seen),
                return_exceptions=True,
            )
            if watch is not None:
                watch.cancel()
        except (OSError, asyncio.CancelledError):  # no server, or the bench is over
            writer.close()

    async def _close_when_idle(self, seen: dict, *writers: asyncio.StreamWriter) -> None:
        while not seen["websocket"]:
            idle = time.monotonic() - seen["at"]
            if idle >= self.idle_close_s:
                for writer in writers:
                    with contextlib.suppress(Exception):
                        writer.close()
                return
            await asyncio.sleep(min(0.1, self.idle_close_s - idle))

    def _arrivals(self, sender: _Sender | None, data: bytes) -> list[tuple[float, bytes]]:
        now = time.monotonic()
        if sender is None:
            return [(now + self.delay, data)]
        out, at = [], 0
        for arrival, n in sender.send(now, len(data)):
            out.append((arrival, data[at : at + n]))
            at += n
        return out

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        seen: dict | None = None,
        *,
        client: bool = False,
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = _Sender(self.link, self.delay) if self.link else None

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

        releasing = asyncio.create_task(release())
        try:
            while data := await reader.read(65536):
                if seen is not None:
                    seen["at"] = time.monotonic()
                    if client and b"upgrade: websocket" in data[:4096].lower():
                        seen["websocket"] = True
                for piece in self._arrivals(sender, data):
                    queue.put_nowait(piece)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            last = sender.free + self.delay if sender else 0.0  # after the last piece
            queue.put_nowait((max(time.monotonic() + self.delay, last), b""))
            with contextlib.suppress(Exception):
                await releasing


async def through(
    stack: contextlib.AsyncExitStack, port: int, rtt_ms: float, link: Link | None = None
) -> int:
    """The port at which to reach ``port``: a DelayProxy's, kept open by ``stack``, when
    there is a path to model (a round trip, a link), else ``port`` itself."""
    if not (rtt_ms or link):
        return port
    return (await stack.enter_async_context(DelayProxy(port, rtt_ms, link=link))).port


@contextlib.contextmanager
def proxy_thread(
    target_port: int, rtt_ms: float, link: Link | None = None, idle_close_s: float = 0.0
) -> Iterator[int]:
    """A DelayProxy on an event loop of its own thread, for a client that is not asyncio
    (Playwright's browser): yields its port. Leaving stops the loop, which cancels the
    connections' pipes (asyncio.run)."""
    started: concurrent.futures.Future = concurrent.futures.Future()

    async def serve() -> None:
        try:
            stop = asyncio.Event()
            async with DelayProxy(
                target_port, rtt_ms, link=link, idle_close_s=idle_close_s
            ) as proxy:
                started.set_result((asyncio.get_running_loop(), stop, proxy.port))
                await stop.wait()
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise

    thread = threading.Thread(target=asyncio.run, args=(serve(),), name="netdelay", daemon=True)
    thread.start()
    loop, stop, port = started.result(10)
    try:
        yield port
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
