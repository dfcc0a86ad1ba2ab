"""An asyncio client for many concurrent narrations: a minimal HTTP/1.1 client (so that the
POST costs what the server costs, not what a client library adds) and a WebSocket listener
(the `websockets` package) that timestamps every frame.

Times are ``time.time()`` so that they compare with the timestamps the server stores
(session and chunk rows); all processes run on this one machine and clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import struct
import time
import uuid
from dataclasses import dataclass, field
from http.cookies import SimpleCookie

import websockets

HTTP_TIMEOUT = 60.0

# With `--patch trace`, the client's own steps (time.time(), label), written beside the
# server's timelines (bench/trace.py --start "client.post >").
TRACE: list[tuple[float, str]] | None = None


class BenchError(Exception):
    pass


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


class Http:
    """One browser: cookies (CSRF token, session) shared by its requests and sockets.
    ``keep_alive``: its requests share one connection, as a browser's do with the page's
    server (what a round trip costs matters once there is one: see bench/netdelay.py)."""

    def __init__(self, host: str, port: int, *, keep_alive: bool = False) -> None:
        self.host, self.port, self.keep_alive = host, port, keep_alive
        self.cookies: dict[str, str] = {}
        self._connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def close(self) -> None:
        if self._connection is not None:
            self._connection[1].close()
            self._connection = None

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def cookie_header(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.cookies.items())

    async def request(self, method: str, path: str, body: dict | None = None) -> Response:
        data = json.dumps(body).encode() if body is not None else b""
        lines = [
            f"{method} {path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Connection: keep-alive" if self.keep_alive else "Connection: close",
            f"Content-Length: {len(data)}",
        ]
        if body is not None:
            lines.append("Content-Type: application/json")
        if self.cookies:
            lines.append(f"Cookie: {self.cookie_header}")
        if method != "GET" and "csrftoken" in self.cookies:
            lines.append(f"X-CSRFToken: {self.cookies['csrftoken']}")
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + data
        if self._connection is not None:
            try:
                return await self._exchange(*self._connection, raw)
            except (ConnectionError, asyncio.IncompleteReadError, IndexError):
                self._connection = None  # the server closed the idle connection: reopen
        return await self._exchange(*await asyncio.open_connection(self.host, self.port), raw)

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes
    ) -> Response:
        keep = False
        try:
            writer.write(raw)
            if TRACE is not None and raw.startswith(b"POST"):
                TRACE.append((time.time(), "client.sent"))
            await writer.drain()
            response = await asyncio.wait_for(self._read(reader), HTTP_TIMEOUT)
            keep = self.keep_alive and response.headers.get("connection", "") != "close"
            return response
        finally:
            if keep:
                self._connection = (reader, writer)
            else:
                self._connection = None
                writer.close()

    async def _read(self, reader: asyncio.StreamReader) -> Response:
        status = int((await reader.readline()).split()[1])
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip()
            if name == "set-cookie":
                for morsel in SimpleCookie(value).values():
                    self.cookies[morsel.key] = morsel.value
            headers[name] = value
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            body = await self._dechunk(reader)
        else:
            body = await reader.read()
        return Response(status, headers, body)

    @staticmethod
    async def _dechunk(reader: asyncio.StreamReader) -> bytes:
        parts = []
        while size := int((await reader.readline()).split(b";")[0], 16):
            parts.append(await reader.readexactly(size))
            await reader.readline()
        await reader.readline()
        return b"".join(parts)

    async def ensure_csrf(self) -> None:
        if "csrftoken" not in self.cookies:
            await self.request("GET", "/api/tts/voices/")

    async def create(self, text: str, voice: str, session_id: str | None = None) -> dict:
        body = {"text": text, "voice": voice}
        if session_id is not None:
            body["id"] = session_id
        response = await self.request("POST", "/api/tts/sessions/", body)
        if response.status != 201:
            raise BenchError(f"POST -> {response.status}: {response.body[:300]!r}")
        return response.json()


@dataclass
class Listen:
    """What one socket saw, with the arrival time of every frame."""

    session_id: str
    t_connect: float = 0.0  # before the handshake
    t_open: float = 0.0  # handshake done
    t_session: float | None = None  # the `session` frame: the consumer has joined the group
    session_frame: dict | None = None
    arrivals: dict[int, float] = field(default_factory=dict)  # seq -> its first audio's arrival
    sizes: dict[int, int] = field(default_factory=dict)  # seq -> PCM bytes
    digests: dict[int, int] = field(default_factory=dict)  # seq -> hash of the PCM
    held: dict[int, list[bytes]] = field(default_factory=dict)  # seq -> parts, not yet whole
    parts_due: dict[int, int] = field(default_factory=dict)  # seq -> binary frames it has
    cushions: dict[int, int] = field(default_factory=dict)  # seq -> cushion_ms (live chunks)
    duplicates: int = 0
    done: dict | None = None
    error: dict | None = None
    t_end: float | None = None

    @property
    def t_first(self) -> float | None:
        return min(self.arrivals.values()) if self.arrivals else None

    @property
    def complete(self) -> bool:
        total = (self.done or {}).get("total_chunks")
        return total is not None and sorted(self.digests) == list(range(total))


def ws_url(
    http: Http, session_id: str, after: int = -1, *, pending: bool = False, parts: bool = False
) -> str:
    query = f"after={after}" + ("&pending=1" if pending else "") + ("&parts=1" if parts else "")
    return f"ws://{http.host}:{http.port}/ws/tts/{session_id}/?{query}"


async def listen(
    http: Http,
    session_id: str,
    *,
    timeout: float,
    ready: asyncio.Event | None = None,
    keep_pcm: bool = False,
    on_first: asyncio.Event | None = None,
    pending: bool = False,
    cancel_after: int | None = None,
    parts: bool = False,
    on_open: asyncio.Event | None = None,
) -> Listen:
    """Follow a session to ``done`` (or a fatal error). ``ready`` is set once the session
    frame arrived (the consumer has joined the group). ``pending``: the session may not
    exist yet (its POST is in flight). ``cancel_after``: cancel the session once this many
    chunks arrived (a long text's first audio, without waiting for the rest). ``parts``:
    each chunk's audio in parts (?parts=1); a chunk arrives with its first part.
    ``on_open`` is set once the handshake is done."""
    result = Listen(session_id)
    result.t_connect = time.time()
    async with asyncio.timeout(timeout):
        async with websockets.connect(
            ws_url(http, session_id, pending=pending, parts=parts),
            origin=http.origin,
            additional_headers={"Cookie": http.cookie_header},
            max_size=None,
            open_timeout=timeout,
            ping_interval=None,
        ) as ws:
            result.t_open = time.time()
            if on_open is not None:
                on_open.set()
            async for message in ws:
                now = time.time()
                if isinstance(message, bytes):
                    _on_audio(result, message, now)
                    if cancel_after is not None and len(result.arrivals) == cancel_after:
                        cancel_after = None  # once
                        await ws.send(json.dumps({"type": "cancel"}))
                    if on_first is not None and not on_first.is_set():
                        on_first.set()
                    continue
                frame = json.loads(message)
                kind = frame.get("type")
                if kind == "chunk":
                    result.parts_due[frame["seq"]] = frame.get("parts", 1)
                    if "cushion_ms" in frame:
                        result.cushions[frame["seq"]] = frame["cushion_ms"]
                elif kind == "session":
                    result.session_frame, result.t_session = frame, now
                    if ready is not None:
                        ready.set()
                elif kind == "done" or (kind == "error" and frame.get("fatal")):
                    result.done = frame if kind == "done" else None
                    result.error = frame if kind == "error" else None
                    result.t_end = now
                    break
    return result


def _on_audio(result: Listen, message: bytes, now: float) -> None:
    seq = struct.unpack_from("<I", message)[0]
    result.arrivals.setdefault(seq, now)
    held = result.held.setdefault(seq, [])
    held.append(message[4:])
    if len(held) < result.parts_due.get(seq, 1):
        return
    pcm = b"".join(result.held.pop(seq))
    if seq in result.digests:  # the whole chunk again
        result.duplicates += 1
        return
    result.sizes[seq], result.digests[seq] = len(pcm), hash(pcm)


@dataclass
class Narration:
    """One POST and the socket that follows it, timed from just before the POST."""

    voice: str
    text: str
    t_post: float = 0.0
    t_created: float = 0.0  # 201 received
    session_id: str = ""
    stream: Listen | None = None
    cookies: dict[str, str] = field(default_factory=dict)  # the owner's, to listen again

    @property
    def ttfa_ms(self) -> float | None:
        first = self.stream.t_first if self.stream else None
        return None if first is None else (first - self.t_post) * 1000


async def narrate(
    http: Http,
    text: str,
    voice: str,
    *,
    timeout: float,
    early: bool = True,
    cancel_after: int | None = None,
    parts: bool = False,
    warm_s: float | None = None,
) -> Narration:
    """As the player does: choose the session's id, open its socket (?pending=1) and POST at
    once, then follow to the end. A socket refused before the POST's reply (a browser
    with no session cookie yet: the POST gives it one) is opened again after it.
    ``early=False``: POST, then open the socket once the reply is in (the older flow).
    ``warm_s``: open the socket first, as the player does when the pointer comes onto Play,
    and POST this long after its handshake (TTFA is still timed from the POST).
    ``cancel_after``, ``parts``: see listen."""
    result = Narration(voice=voice, text=text)
    chosen = str(uuid.uuid4()) if early else None
    follow = functools.partial(
        listen, http, timeout=timeout, cancel_after=cancel_after, parts=parts
    )
    opened = None
    if early and warm_s is not None:
        is_open = asyncio.Event()
        opened = asyncio.create_task(follow(chosen, pending=True, on_open=is_open))
        handshake = asyncio.create_task(is_open.wait())
        await asyncio.wait({opened, handshake}, return_when=asyncio.FIRST_COMPLETED)
        handshake.cancel()  # refused or failed: the POST goes now, as below
        await asyncio.sleep(warm_s)
    result.t_post = time.time()
    if early and opened is None:
        opened = asyncio.create_task(follow(chosen, pending=True))
    try:
        created = await http.create(text, voice, chosen)
    except BaseException:
        if opened is not None:
            opened.cancel()
        raise
    result.t_created = time.time()
    result.session_id, result.cookies = created["id"], dict(http.cookies)
    if opened is not None:
        with contextlib.suppress(websockets.WebSocketException):  # refused, or dropped
            result.stream = await opened
    if result.stream is None:
        result.stream = await follow(result.session_id)
    if TRACE is not None:
        stream = result.stream
        TRACE.append((result.t_post, "client.post >"))
        TRACE.append((result.t_created, "client.created"))
        TRACE.append((stream.t_open, "client.ws_open"))
        if stream.t_first is not None:
            TRACE.append((stream.t_first, "client.frame"))
    return result
