"""End to end: a real daphne, a real `runworker` process and the real Redis."""

from __future__ import annotations

import io
import json
import wave

import pytest

from tests.conftest import ARTIFACTS
from tts.client import NarrationClient
from tts.models import TTSChunk

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TEXT = (
    "The storm came in from the west just after four. By five the gulls had gone quiet. "
    "Mara stood at the kitchen window and counted the seconds between the flashes and the "
    "thunder. Twelve, then nine, then six. Her father was still out on the rocks."
)


def stored_pcm(session_id: str) -> list[bytes]:
    return [
        bytes(c.audio.pcm)
        for c in TTSChunk.objects.filter(session_id=session_id)
        .order_by("seq")
        .select_related("audio")
    ]


def test_a_post_streams_every_chunk_in_order_then_done(live_stack):
    client = NarrationClient(live_stack.base_url)
    session_id = client.create(text=TEXT)["id"]
    result = client.stream(session_id, timeout=60)
    assert result.error is None, result.error
    assert result.done is not None
    total = result.done["total_chunks"]
    assert total >= 4
    assert sorted(result.audio) == list(range(total))
    assert result.duplicates == 0
    assert [result.audio[s] for s in range(total)] == stored_pcm(session_id)
    assert result.session["sample_rate"] in (None, 22050)
    for seq, frame in result.chunks.items():
        assert TEXT[frame["char_start"] : frame["char_end"]] == frame["text"]
        assert frame["samples"] * 2 == len(result.audio[seq])

    late = client.stream(session_id, timeout=30)
    assert late.pcm == result.pcm and late.done is not None

    with wave.open(io.BytesIO(client.audio(session_id))) as wav:
        assert wav.getframerate() == 22050 and wav.getnchannels() == 1
        assert wav.readframes(wav.getnframes()) == result.pcm


def test_a_client_that_drops_resumes_with_after(live_stack):
    client = NarrationClient(live_stack.base_url)
    session_id = client.create(text=TEXT)["id"]
    result = client.stream(session_id, drop_after_chunks=2, timeout=60)
    assert result.connections >= 2
    assert result.duplicates == 0
    assert result.pcm == b"".join(stored_pcm(session_id))


def _frames(sock) -> list[tuple[int, bytes]]:
    """Every WebSocket frame the server has sent so far, (opcode, payload), up to its close."""
    import struct

    data, frames = b"", []
    while not frames or frames[-1][0] != 0x8:
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
        while len(data) >= 2:
            size, start = data[1] & 0x7F, 2
            if size == 126:
                size, start = struct.unpack(">H", data[2:4])[0], 4
            elif size == 127:
                size, start = struct.unpack(">Q", data[2:10])[0], 10
            if len(data) < start + size:
                break
            frames.append((data[0] & 0x0F, data[start : start + size]))
            data = data[start + size :]
    return frames


def test_a_client_slow_to_answer_the_close_gets_the_whole_stream_and_a_clean_close(live_stack):
    """The server closes after `done` and waits for the client's answer. autobahn's timers
    round a deadline down to a whole second, so daphne's 1 s wait used to end anywhere
    from 0 to 1 s after its close frame, with a TCP reset: a client that had not read the
    end of the stream yet lost it (a browser saw 1006). This client reads nothing for
    1.2 s after the handshake, then finds everything, and the connection still open."""
    import base64
    import os
    import socket as sockets
    import struct
    import time
    from urllib.parse import urlparse

    client = NarrationClient(live_stack.base_url)
    session_id = client.create(text=TEXT)["id"]
    assert client.stream(session_id, timeout=60).done is not None  # completed: a reopen
    url = urlparse(live_stack.base_url)
    sock = sockets.create_connection((url.hostname, url.port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws/tts/{session_id}/?after=-1 HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nOrigin: {live_stack.base_url}\r\n"
            f"Cookie: sessionid={client._cookie('sessionid')}\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    time.sleep(1.2)  # the server has sent everything and its close frame by now
    sock.settimeout(2)
    frames = _frames(sock)  # a reset server: ConnectionResetError
    texts = [json.loads(payload) for opcode, payload in frames if opcode == 0x1]
    assert texts[0]["type"] == "session" and texts[-1]["type"] == "done"
    assert len([1 for opcode, _ in frames if opcode == 0x2]) == texts[-1]["total_chunks"]
    assert frames[-1][0] == 0x8 and struct.unpack(">H", frames[-1][1][:2])[0] == 1000
    mask = os.urandom(4)
    reply = bytes(b ^ mask[i % 4] for i, b in enumerate(struct.pack(">H", 1000)))
    sock.sendall(bytes([0x88, 0x80 | 2]) + mask + reply)  # the client's answer, masked
    sock.close()


@pytest.fixture(scope="module")
def coqui_stack(django_db_setup, django_db_blocker, tmp_path_factory):
    """A worker that narrates with a tiny Coqui VITS (random weights), loaded and warmed
    through the real TTS(model_path=..., config_path=...) path when the worker starts."""
    from scripts.stack import Stack
    from tests.conftest import private_stack_env
    from tts.testing import build_vits

    model_path, config_path = build_vits(tmp_path_factory.mktemp("tiny-vits"))
    env = private_stack_env(
        TTS_COQUI_MODEL_PATH=str(model_path),
        TTS_COQUI_CONFIG_PATH=str(config_path),
        TTS_PRELOAD_VOICES="coqui-local",
    )
    with django_db_blocker.unblock():
        stack = Stack(env=env, workers=1, log_dir=ARTIFACTS / "logs-coqui").start()
    yield stack
    stack.stop()


def test_a_coqui_voice_streams_end_to_end(coqui_stack):
    client = NarrationClient(coqui_stack.base_url)
    voices = {
        v["id"]: v for v in json.loads(client.request("GET", "/api/tts/voices/")[1])["voices"]
    }
    assert voices["coqui-local"]["available"] is True
    session_id = client.create(text=TEXT, voice="coqui-local")["id"]
    result = client.stream(session_id, timeout=120)
    assert result.error is None, result.error
    assert sorted(result.audio) == list(range(result.done["total_chunks"]))
    assert all(frame["sample_rate"] == 22050 for frame in result.chunks.values())
    assert [result.audio[s] for s in sorted(result.audio)] == stored_pcm(session_id)
    log = (ARTIFACTS / "logs-coqui" / "worker-0.log").read_text()
    assert "voice coqui-local ready" in log
