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
