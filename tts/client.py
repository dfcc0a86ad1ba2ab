"""A small reference client: start a narration (or follow one), survive dropped
connections by resuming with ``after``, and write the WAV.

    python -m tts.client --url http://127.0.0.1:8000 --text "Hello there." --out hello.wav
    python -m tts.client --url http://127.0.0.1:8000 --session <id> --out narration.wav

With ``parts=True`` (``--parts``) the socket sends each chunk's audio in parts (?parts=1);
this client joins them and keeps a chunk once it is whole, so a connection that drops
inside a chunk resumes before it. A player would schedule each part as it comes.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import struct
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tts.audio import wav_bytes

SILENCE_S = 10.0


class ClientError(Exception):
    pass


@dataclass
class Stream:
    """What one session's stream delivered, in seq order, across reconnects."""

    session: dict | None = None
    chunks: dict[int, dict] = field(default_factory=dict)
    audio: dict[int, bytes] = field(default_factory=dict)
    parts: dict[int, list[bytes]] = field(default_factory=dict)  # of chunks not whole yet
    statuses: list[dict] = field(default_factory=list)
    done: dict | None = None
    error: dict | None = None
    connections: int = 0
    duplicates: int = 0

    @property
    def last_contiguous(self) -> int:
        seq = -1
        while seq + 1 in self.audio:
            seq += 1
        return seq

    @property
    def pcm(self) -> bytes:
        return b"".join(self.audio[seq] for seq in sorted(self.audio))

    @property
    def sample_rate(self) -> int:
        return next(iter(self.chunks.values()))["sample_rate"] if self.chunks else 22050


class NarrationClient:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    # HTTP ------------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json", "Referer": self.base_url + "/"}
        token = self._cookie("csrftoken")
        if method != "GET":
            if token is None:
                self.request("GET", "/api/tts/voices/")
                token = self._cookie("csrftoken")
            headers["X-CSRFToken"] = token or ""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers=headers
        )
        try:
            with self.opener.open(req, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def _cookie(self, name: str) -> str | None:
        return next((c.value for c in self.cookies if c.name == name), None)

    def create(
        self, *, text: str | None = None, scene: int | None = None, voice: str | None = None
    ) -> dict:
        body = {k: v for k, v in {"text": text, "scene": scene, "voice": voice}.items() if v}
        status, payload = self.request("POST", "/api/tts/sessions/", body)
        if status != 201:
            raise ClientError(f"HTTP {status}: {payload.decode(errors='replace')}")
        return json.loads(payload)

    def session(self, session_id: str) -> dict:
        status, payload = self.request("GET", f"/api/tts/sessions/{session_id}/")
        if status != 200:
            raise ClientError(f"HTTP {status}: {payload.decode(errors='replace')}")
        return json.loads(payload)

    def audio(self, session_id: str) -> bytes:
        status, payload = self.request("GET", f"/api/tts/sessions/{session_id}/audio.wav")
        if status != 200:
            raise ClientError(f"HTTP {status}: {payload.decode(errors='replace')}")
        return payload

    # Socket ----------------------------------------------------------------------------------

    def ws_url(self, session_id: str, after: int, *, parts: bool = False) -> str:
        parsed = urlparse(self.base_url)
        scheme = "wss" if parsed.scheme == "https" else "ws"
        flags = "&parts=1" if parts else ""
        return f"{scheme}://{parsed.netloc}/ws/tts/{session_id}/?after={after}{flags}"

    def stream(
        self,
        session_id: str,
        *,
        drop_after_chunks: int | None = None,
        max_reconnects: int = 30,
        timeout: float = 120,
        parts: bool = False,
    ) -> Stream:
        """Follow a session to its end, reconnecting with ``after`` when the connection drops.
        ``drop_after_chunks`` closes the first connection after that many binary frames
        (tests); ``parts``: ask for each chunk's audio in parts."""
        result, deadline, failures = Stream(), time.monotonic() + timeout, 0
        while result.done is None and result.error is None:
            if time.monotonic() > deadline:
                raise ClientError(f"session {session_id} did not finish in {timeout} s")
            try:
                drop = drop_after_chunks if result.connections == 0 else None
                self._listen(session_id, result, drop, deadline, parts)
                failures = 0
            except (OSError, ConnectionClosed, TimeoutError) as exc:
                failures += 1
                if failures > max_reconnects:
                    raise ClientError(f"gave up after {failures} failed connections") from exc
                time.sleep(min(2.0, 0.05 * 2**failures))
        return result

    def _listen(
        self, session_id: str, result: Stream, drop: int | None, deadline: float, parts: bool
    ) -> None:
        cookie = "; ".join(f"{c.name}={c.value}" for c in self.cookies)
        headers = {"Cookie": cookie} if cookie else {}
        result.parts.clear()  # a chunk cut off inside comes again, whole, on the next socket
        url = self.ws_url(session_id, result.last_contiguous, parts=parts)
        with connect(
            url, origin=self.base_url, additional_headers=headers, max_size=None, open_timeout=10
        ) as ws:
            result.connections += 1
            received = 0
            while True:
                message = self._recv(ws, deadline)
                if isinstance(message, bytes):
                    self._on_audio(result, message)
                    received += 1
                    if drop is not None and received >= drop:
                        return  # leave abruptly; the caller reconnects with after=
                    continue
                if self._on_frame(result, json.loads(message)):
                    return

    @staticmethod
    def _recv(ws, deadline: float) -> str | bytes:
        """The next message. After SILENCE_S of quiet, ping; a connection that answers
        nothing for another SILENCE_S is dead (TimeoutError, and the caller reconnects)."""
        for attempt in range(2):
            timeout = min(SILENCE_S, deadline - time.monotonic())
            if timeout <= 0:
                raise TimeoutError("deadline passed")
            try:
                return ws.recv(timeout=timeout)
            except TimeoutError:
                if attempt == 0:
                    ws.send(json.dumps({"type": "ping"}))
        raise TimeoutError("no answer to ping")

    @staticmethod
    def _on_audio(result: Stream, message: bytes) -> None:
        seq = struct.unpack("<I", message[:4])[0]
        parts = result.parts.setdefault(seq, [])
        parts.append(message[4:])
        if len(parts) < result.chunks.get(seq, {}).get("parts", 1):
            return  # more of this chunk is on its way
        del result.parts[seq]
        if seq in result.audio:
            result.duplicates += 1
        result.audio[seq] = b"".join(parts)

    @staticmethod
    def _on_frame(result: Stream, frame: dict) -> bool:
        kind = frame.get("type")
        if kind == "session":
            result.session = frame
        elif kind == "chunk":
            result.chunks[frame["seq"]] = frame
        elif kind == "status":
            result.statuses.append(frame)
        elif kind == "done":
            result.done = frame
            return True
        elif kind == "error" and frame.get("fatal"):
            result.error = frame
            return True
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tts.client", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text")
    source.add_argument("--session")
    parser.add_argument("--voice")
    parser.add_argument("--out", type=Path, default=Path("narration.wav"))
    parser.add_argument(
        "--parts", action="store_true", help="ask for each chunk's audio in parts (?parts=1)"
    )
    args = parser.parse_args(argv)
    client = NarrationClient(args.url)
    try:
        session_id = args.session or client.create(text=args.text, voice=args.voice)["id"]
        result = client.stream(session_id, parts=args.parts)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if result.error:
        print(f"error: {result.error['code']}: {result.error['message']}", file=sys.stderr)
    args.out.write_bytes(wav_bytes(result.pcm, result.sample_rate))
    print(
        f"{session_id}: {len(result.audio)} chunks, {result.connections} connection(s) "
        f"-> {args.out}"
    )
    return 1 if result.error else 0


if __name__ == "__main__":
    sys.exit(main())
